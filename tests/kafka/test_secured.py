"""Production Kafka: a broker whose only client listener requires SASL/PLAIN, and failures that say what to do.

Every command and client the package offers runs against the secured listener with the settings in
``kafka.connection`` (one place); a client without credentials is refused (the listener enforces); failures
to connect or authenticate end with one line, a non-zero exit and no traceback, within the time bound, and
never print the password."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

import stream_monitor
from stream_monitor.cli import main
from stream_monitor.config import parse_config
from stream_monitor.kafka.clients import Connection, KafkaConnectError
from stream_monitor.kafka.router import BreakerClient
from tests.kafka.chaos import MonitorProcess
from tests.kafka.helpers import config_dict
from tests.streams import make_events, model_config

PASSWORD = "monitor-s3cret-pw"
SECURITY = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "monitor",
            "sasl.password": PASSWORD}


@pytest.fixture(scope="module")
def sasl_bootstrap():
    from stream_monitor.kafka.broker import LocalKafka, fetch_kafka_jars

    try:
        fetch_kafka_jars()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"needs Java and Maven for a broker with a SASL listener: {exc}")
    broker = LocalKafka(sasl_users={"monitor": PASSWORD})
    try:
        yield broker.start()
    finally:
        broker.stop()


def secured_config(tmp_path: Path, bootstrap: str, run_id: str, **kafka) -> tuple[Path, dict]:
    raw = config_dict(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000},
                                                 breaker={"enabled": True, "primary_version": "v1",
                                                          "fallback_version": "v0", "hold_down_s": 1e6,
                                                          "rules": [{"kinds": ["data_drift"],
                                                                     "severity": "warning"}]})},
                      kafka={"bootstrap_servers": bootstrap, "connection": dict(SECURITY),
                             "connect_timeout_s": 8, "instance_id": "secured", **kafka},
                      prometheus={"port": None})
    path = tmp_path / "secured.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


@pytest.mark.kafka
def test_every_command_and_client_works_on_a_sasl_listener(sasl_bootstrap, run_id, tmp_path, capsys):
    path, raw = secured_config(tmp_path, sasl_bootstrap, run_id)
    cfg = parse_config(raw)
    conn = Connection.from_config(cfg, sasl_bootstrap)
    conn.check()
    from confluent_kafka.admin import NewTopic

    admin = conn.admin()
    admin.create_topics([NewTopic(cfg.topics.predictions, 1, 1)])[cfg.topics.predictions].result(30)
    rng = np.random.default_rng(91)
    events = {0: make_events(1000, rng) + make_events(3000, rng, start=1000, a_mean=1.2)}
    p = conn.producer({"linger.ms": 10})
    for ev in events[0]:
        p.produce(cfg.topics.predictions, key=b"m", value=orjson.dumps(ev))
    assert p.flush(30) == 0
    proc = MonitorProcess(raw, sasl_bootstrap, tmp_path, "secured").start()  # `stream-monitor run`
    try:
        group_conn = {**SECURITY}
        deadline = time.monotonic() + 90
        client = BreakerClient(sasl_bootstrap, cfg.topics.breaker, connection=group_conn).sync()
        while client.route("m").state == "closed" and time.monotonic() < deadline:  # routers embed this
            client.poll()
            time.sleep(0.2)
        assert client.route("m").state == "open", proc.tail()
        client.close()
    finally:
        assert proc.stop() == 0, proc.tail()
    capsys.readouterr()
    assert main(["alerts", "tail", "--config", str(path), "--json", "--timeout", "6"]) == 0
    alerts = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert alerts and alerts[0]["feature"] == "a"
    assert main(["breaker", "status", "--config", str(path)]) == 0
    assert re.search(r"^m\s+open\s+epoch=1", capsys.readouterr().out, re.M)
    for action, state in (("close", "closed"), ("release", "closed"), ("open", "open")):
        args = ["breaker", action, "--config", str(path), "--model", "m"]
        assert main(args + (["--reason", "test"] if action != "release" else [])) == 0
        assert f"m: {state}" in capsys.readouterr().out
    assert main(["breaker", "open", "--config", str(path), "--model", "nope", "--reason", "x"]) == 2
    assert "not in the config" in capsys.readouterr().err
    past = tmp_path / "past.jsonl"
    past.write_bytes(b"\n".join(orjson.dumps(e) for e in events[0][:1000]))
    assert main(["reference", "build", "--config", str(path), "--model", "m", "--input", str(past),
                 "--output", str(tmp_path / "ref.json")]) == 0


@pytest.mark.kafka
def test_a_client_without_credentials_is_refused(sasl_bootstrap):
    started = time.monotonic()
    with pytest.raises(KafkaConnectError, match="security.protocol") as err:
        Connection(sasl_bootstrap, {}, timeout_s=6).check()
    assert time.monotonic() - started < 20
    assert "\n" not in str(err.value)


def run_cli(args: list[str], timeout: float = 90) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stream_monitor", *args], capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def error_lines(output: str) -> list[str]:
    """What the user reads: our lines (librdkafka's own go through logging, folded, to stderr as INFO/WARNING)."""
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.kafka
def test_a_wrong_password_is_one_line_no_traceback_and_no_secret(sasl_bootstrap, run_id, tmp_path):
    path, raw = secured_config(tmp_path, sasl_bootstrap, run_id)
    raw["kafka"]["connection"]["sasl.password"] = "wrong-" + PASSWORD
    path.write_text(yaml.safe_dump(raw))
    for args in (["run", "--config", str(path)], ["alerts", "tail", "--config", str(path), "--timeout", "5"],
                 ["breaker", "status", "--config", str(path)]):
        code, out, took = run_cli(args)
        assert code == 3, out
        assert len(error_lines(out)) == 1 and "refused our credentials" in error_lines(out)[0], out
        assert "Traceback" not in out and PASSWORD not in out, out
        assert took < 8 + 20, took


def test_an_unreachable_address_is_one_line_within_the_bound(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    raw = {"kafka": {"bootstrap_servers": f"127.0.0.1:{port}", "connect_timeout_s": 5},
           "prometheus": {"port": None}, "models": {"m": model_config()}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    for args in (["run", "--config", str(path)], ["alerts", "tail", "--config", str(path)]):
        code, out, took = run_cli(args)
        assert code == 3, out
        (line,) = error_lines(out)
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in line and "--bootstrap-servers" in line
        assert "Traceback" not in out and took < 5 + 20
        assert sum("FAIL" in x for x in out.splitlines()) <= 5, out  # librdkafka's lines folded, not a wall


def test_a_port_that_answers_http_is_named_as_such(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve() -> None:  # what an HTTP server answers a request it cannot parse
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        raw = {"kafka": {"bootstrap_servers": f"127.0.0.1:{srv.getsockname()[1]}", "connect_timeout_s": 5},
               "prometheus": {"port": None}, "models": {"m": model_config()}}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        code, out, took = run_cli(["run", "--config", str(path)])
    finally:
        srv.close()
    assert code == 3, out
    (line,) = error_lines(out)
    assert "not a Kafka listener" in line and "Traceback" not in out and took < 5 + 20
    assert "increase receive.message.max.bytes" not in line  # librdkafka's misleading advice is not ours


def test_no_kafka_client_is_built_outside_the_connection():
    """Every client gets the shared connection settings: none is constructed anywhere but in clients.py
    (the test broker launcher checks its own plaintext listener and is the one exception)."""
    root = Path(stream_monitor.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name in ("clients.py", "broker.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(Consumer|Producer|AdminClient)\(", line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
