"""A real Kafka broker for tests, CI and the demo.

:func:`kafka_broker` yields a bootstrap address, choosing in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when it is set: the user's own cluster, used as is;
2. testcontainers' Kafka container (KRaft) when a Docker engine answers;
3. Apache Kafka from Maven Central jars (:class:`LocalKafka`): resolved once with Maven into a cache folder,
   formatted with ``kafka.tools.StorageTool`` and started with ``kafka.Kafka`` as a single-node KRaft
   broker+controller on loopback, on free ports, with a fresh log dir that is removed on exit.

Run it by hand with ``stream-monitor broker`` (prints the address and serves until Ctrl-C).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "LocalKafka",
    "cache_dir",
    "docker_available",
    "fetch_kafka_jars",
    "kafka_broker",
]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
Progress = Callable[[str], None]


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says why and where the log is."""


def _say(msg: str) -> None:
    print(f"[broker] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where jars are cached: ``$STREAM_MONITOR_CACHE_DIR``, else ``./.cache/stream-monitor``."""
    env = os.environ.get("STREAM_MONITOR_CACHE_DIR")
    return Path(env) if env else Path.cwd() / ".cache" / "stream-monitor"


def fetch_kafka_jars(version: str = KAFKA_VERSION, cache: Path | None = None, progress: Progress = _say) -> Path:
    """Resolve ``org.apache.kafka:kafka_2.13:<version>`` and its runtime dependencies into a cache folder.

    Returns the folder of jars. A marker file makes later calls free; a failed or interrupted download
    leaves no marker and is retried from Maven's own cache (``~/.m2``).
    """
    root = (cache or cache_dir()) / f"kafka-{version}"
    libs = root / "libs"
    marker = root / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven ('mvn') is not on PATH: it is needed once to fetch the Kafka jars")
    root.mkdir(parents=True, exist_ok=True)
    pom = resources.files("stream_monitor.kafka").joinpath("resources/pom.xml").read_text()
    pom = pom.replace("@KAFKA_VERSION@", version).replace("@LOG4J_VERSION@", LOG4J_VERSION)
    (root / "pom.xml").write_text(pom)
    if libs.exists():
        shutil.rmtree(libs)
    progress(f"fetching Apache Kafka {version} jars with Maven into {libs} (first run only)...")
    cmd = [
        "mvn", "-B", "-f", str(root / "pom.xml"),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    fetched = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if "Downloaded from" in line:
            fetched += 1
            if fetched % 10 == 0:
                progress(f"  downloaded {fetched} files...")
    if proc.wait() != 0:
        raise BrokerError("Maven could not resolve the Kafka jars:\n" + "\n".join(tail))
    n_jars = len(list(libs.glob("*.jar")))
    progress(f"  {n_jars} jars ready ({fetched} files downloaded)")
    marker.write_text(version)
    return libs


def docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers (the docker client alone is not enough)."""
    try:
        import docker  # shipped with testcontainers
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return True
    except Exception:  # any failure to reach the engine means "no engine"
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_id() -> str:
    """16 random bytes, url-safe base64 without padding; never starting with '-', which the storage tool's
    argument parser would read as an option (as Kafka's own ``Uuid.randomUuid`` avoids)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _die_with_parent() -> None:
    # Linux only: the broker gets SIGTERM when the Python process that started it dies, even by SIGKILL,
    # so a crashed test run never leaves an orphan broker holding ports and memory.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalKafka:
    """A single-node KRaft Kafka broker+controller started from Maven jars on loopback.

    Parameters
    ----------
    version
        Apache Kafka version (``org.apache.kafka:kafka_2.13``).
    heap
        JVM ``-Xmx``; the broker needs little for tests.
    startup_timeout
        Seconds to wait for the broker to answer an admin request.
    keep_logs
        Keep the work folder (data and ``broker.log``) after stop.
    """

    def __init__(
        self,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        startup_timeout: float = 120.0,
        keep_logs: bool = False,
        progress: Progress = _say,
        sasl_users: dict[str, str] | None = None,
    ) -> None:
        self.version = version
        self.sasl_users = sasl_users  # set: the client listener requires SASL/PLAIN with these users
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.keep_logs = keep_logs
        self.progress = progress
        self.workdir: Path | None = None
        self.bootstrap_servers: str | None = None
        self.internal_bootstrap: str | None = None  # a PLAINTEXT listener for the broker's own checks
        self._command: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "broker.log" if self.workdir else None

    def _java(self, libs: Path) -> list[str]:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else (shutil.which("java") or "java")
        log4j = resources.files("stream_monitor.kafka").joinpath("resources/log4j2.properties")
        return [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]

    def start(self) -> str:
        libs = fetch_kafka_jars(self.version, progress=self.progress)
        self.workdir = Path(tempfile.mkdtemp(prefix="stream-monitor-kafka-"))
        broker_port, controller_port = _free_port(), _free_port()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.cleaner.backoff.ms": "1000",
        }
        internal_port = broker_port
        if self.sasl_users:  # clients must authenticate (SASL/PLAIN); the broker talks to itself in plaintext
            sasl_port, internal_port = broker_port, _free_port()
            users = " ".join(f'user_{u}="{pw}"' for u, pw in {"admin": "admin-secret", **self.sasl_users}.items())
            props.update({
                "listeners": f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller_port},"
                             f"INTERNAL://127.0.0.1:{internal_port}",
                "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},INTERNAL://127.0.0.1:{internal_port}",
                "inter.broker.listener.name": "INTERNAL",
                "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT,"
                                                  "INTERNAL:PLAINTEXT",
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                    'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
                    f'password="admin-secret" {users};',
            })
        self.internal_bootstrap = f"127.0.0.1:{internal_port}"
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        cluster_id = _cluster_id()
        java = self._java(libs)
        fmt = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"kafka StorageTool format failed:\n{fmt.stdout}\n{fmt.stderr}")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.progress(f"starting Kafka {self.version} on 127.0.0.1:{broker_port} (log: {self.log_path})")
        self._command = [*java, "kafka.Kafka", str(config)]
        atexit.register(self.stop)
        self.bootstrap_servers = f"127.0.0.1:{broker_port}"
        self._launch()
        return self.bootstrap_servers

    def _launch(self) -> None:
        self._proc = subprocess.Popen(self._command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def restart(self, down_s: float = 0.0, kill: bool = False) -> None:
        """Stop the broker process (SIGTERM, or SIGKILL with ``kill``), wait ``down_s``, start it again on the
        same ports and data: a broker outage as clients see it."""
        proc = self._proc
        if proc is None:
            raise BrokerError("the broker is not running")
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=60)
        time.sleep(down_s)
        self._launch()

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        admin = AdminClient({"bootstrap.servers": self.internal_bootstrap, "log_level": 0})
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"Kafka exited with code {self._proc.returncode}; log: {self.log_path}\n"
                                  + self._log_tail())
            try:
                md = admin.list_topics(timeout=2)
                if md.brokers:
                    self.progress(f"Kafka ready at {self.bootstrap_servers}")
                    return
            except Exception:  # not answering yet
                pass
            time.sleep(0.5)
        raise BrokerError(f"Kafka did not answer within {self.startup_timeout:.0f}s; log: {self.log_path}\n"
                          + self._log_tail())

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])  # type: ignore[union-attr]
        except OSError:
            return ""

    def stop(self, keep_logs: bool | None = None) -> None:
        keep = self.keep_logs if keep_logs is None else keep_logs
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def kafka_broker(progress: Progress = _say) -> Iterator[str]:
    """Yield the bootstrap address of a running broker (see the module docstring for the order)."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        progress(f"using KAFKA_BOOTSTRAP_SERVERS={env}")
        yield env
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        progress("Docker engine found: starting a Kafka container with testcontainers")
        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    progress("no KAFKA_BOOTSTRAP_SERVERS and no Docker engine: running Kafka from Maven jars")
    with LocalKafka(progress=progress) as bootstrap:
        yield bootstrap


def serve_forever(progress: Progress = _say) -> None:
    """``stream-monitor broker``: start a broker, print its address, stop it on Ctrl-C or SIGTERM."""
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    with kafka_broker(progress=progress) as bootstrap:
        print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}", flush=True)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
