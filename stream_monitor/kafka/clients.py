"""Every Kafka client of the package is built here, from one :class:`Connection`.

A :class:`Connection` is the bootstrap address plus ``kafka.connection`` (security and connection properties,
shared by every client) and knows how to build consumers, producers, admin clients and compacted-topic
reader settings: the runner, the readers of the state, join and breaker topics, :class:`~.router.BreakerClient`
and every CLI command get the same settings. librdkafka's own log lines go through Python logging (logger
``librdkafka``), with repeats of a line folded. :meth:`Connection.check` turns a failure to connect or to
authenticate into one line that says what failed and what to check, within ``kafka.connect_timeout_s``.
Secrets (``sasl.password``, ``ssl.key.password``, ``sasl.oauthbearer.*``) never reach a log line or an error.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ..config import SECRET_KEYS, MonitorConfig

__all__ = ["CONSUMER_DEFAULTS", "STATE_MAX_BYTES", "Connection", "KafkaConnectError", "TopicConfigError",
           "check_compacted", "consumer_config", "ensure_topics", "make_consumer", "producer_config", "redact",
           "transactional_id"]

logger = logging.getLogger(__name__)
rdkafka_logger = logging.getLogger("librdkafka")

#: Reference checkpoints (bins, counts and a sample of up to ``sample_size`` rows of 8-byte values, base64)
#: exceed Kafka's default 1 MB message: 5,000 rows x 27 columns is ~1.5 MB, x 1,000 columns ~53 MB.
STATE_MAX_BYTES = 64 * 1024 * 1024


class KafkaConnectError(RuntimeError):
    """Kafka could not be reached or refused our credentials; the message is one line saying what to check."""


def redact(text: str, properties: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret property replaced by ``***``."""
    for key, value in properties.items():
        if key.startswith(SECRET_KEYS) and isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return text


class _FoldRepeats(logging.Filter):
    """Let a librdkafka line through once per ``window_s`` (numbers and durations ignored when comparing)."""

    _norm = re.compile(r"\d+")

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._norm.sub("#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.window_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


rdkafka_logger.addFilter(_FoldRepeats())


@dataclass
class Connection:
    """Where and how to reach Kafka; builds every client (see the module docstring)."""

    bootstrap: str
    properties: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 30.0
    errors: list[KafkaError] = field(default_factory=list)  # global errors reported by the clients built here

    @classmethod
    def from_config(cls, cfg: MonitorConfig, bootstrap: str) -> Connection:
        return cls(bootstrap, dict(cfg.kafka.connection), cfg.kafka.connect_timeout_s)

    def _on_error(self, err: KafkaError) -> None:
        if len(self.errors) > 200:
            del self.errors[:100]
        self.errors.append(err)
        rdkafka_logger.warning("%s", redact(err.str(), self.properties))

    def config(self, role: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """Client settings: ``defaults``, the bootstrap address, the shared connection properties, then
        ``role``'s (later ones win)."""
        return {**(defaults or {}), "bootstrap.servers": self.bootstrap, **self.properties, **(role or {}),
                "logger": rdkafka_logger, "error_cb": self._on_error}

    def consumer(self, role: Mapping[str, Any]) -> Consumer:
        return Consumer(self.config(role, CONSUMER_DEFAULTS))

    def producer(self, role: Mapping[str, Any]) -> Producer:
        return Producer(self.config(role))

    def admin(self, role: Mapping[str, Any] | None = None) -> AdminClient:
        return AdminClient(self.config(role))

    def reader_config(self) -> dict[str, Any]:
        """Settings for :class:`~.compacted.CompactedTopicReader` (which adds its own consumer settings)."""
        return self.config()

    def check(self) -> None:
        """Reach the cluster within ``timeout_s`` or raise :class:`KafkaConnectError` with one clear line."""
        lines: list[str] = []
        capture = _Capture(lines)
        rdkafka_logger.addHandler(capture)
        admin = AdminClient(self.config())
        deadline = time.monotonic() + self.timeout_s
        seen_before = len(self.errors)
        try:
            while True:
                try:
                    md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                    if md.brokers:
                        return
                except KafkaException as exc:
                    self.errors.append(exc.args[0])
                admin.poll(0.1)  # serves error_cb and the log callback: the reasons arrive there
                errors = self.errors[seen_before:]
                if time.monotonic() >= deadline or self._fatal(errors) or _not_kafka(lines):
                    raise KafkaConnectError(self._explain(errors, lines))
                time.sleep(0.2)
        finally:
            rdkafka_logger.removeHandler(capture)

    @staticmethod
    def _fatal(errors: list[KafkaError]) -> bool:
        return any(e.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                                KafkaError._SSL, KafkaError._INVALID_ARG) for e in errors)

    def _explain(self, errors: list[KafkaError], lines: list[str]) -> str:
        text = " | ".join(dict.fromkeys([*(redact(e.str(), self.properties) for e in errors[-20:]),
                                         *(redact(x, self.properties) for x in lines[-20:])]))
        where = f"Kafka at {self.bootstrap}"
        proto = self.properties.get("security.protocol", "PLAINTEXT")
        if any(e.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) for e in errors) \
                or "authentication" in text.lower() and "sasl" in text.lower():
            why = (f"{where} refused our credentials: check kafka.connection sasl.username / sasl.password and "
                   f"sasl.mechanism (now {self.properties.get('sasl.mechanism', 'unset')})")
        elif _not_kafka([text]):
            why = (f"{where} answered but is not a Kafka listener (an HTTP or other server on that port?): check "
                   "--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS / kafka.bootstrap_servers and the port")
        elif "ssl" in text.lower() or "handshake" in text.lower():
            why = (f"{where}: TLS failed: check security.protocol (now {proto}), ssl.ca.location and the "
                   "client certificate settings in kafka.connection")
        elif "security.protocol" in text or "ApiVersion" in text or "Disconnected" in text:
            why = (f"{where} closed every connection: the listener may require another security.protocol than "
                   f"{proto} (SASL_SSL, SASL_PLAINTEXT, SSL), set it in kafka.connection")
        else:
            why = (f"cannot reach {where} within {self.timeout_s:.0f}s: check --bootstrap-servers / "
                   "KAFKA_BOOTSTRAP_SERVERS / kafka.bootstrap_servers, the network, and security.protocol "
                   f"(now {proto})")
        if _not_kafka([text]):  # librdkafka's advice ("increase receive.message.max.bytes") would mislead
            return why
        first = text.split(" | ")[0] if text else "no answer"
        return f"{why} (librdkafka: {first[:200]})"


def _not_kafka(lines: list[str]) -> bool:
    """librdkafka's words for a peer that does not speak Kafka (e.g. an HTTP server's reply read as a size)."""
    return any("receive.message.max.bytes" in x or "Invalid response size" in x for x in lines)


class _Capture(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.into) < 200:
            self.into.append(record.getMessage())


#: Settings of every consumer built here (a role's or the user's settings override them).
#: librdkafka stops fetching a partition whose local queue holds ``queued.max.messages.kbytes`` or
#: ``queued.min.messages`` and, by default, tries again only ``fetch.queue.backoff.ms`` = 1 s later. A consumer
#: that decodes as fast as the monitor drains a full queue (64 MB, ~80,000 events of 800 bytes) in well under
#: a second and then waits for the rest of it: measured with bench/kafka_throughput.py, a bare consume-and-decode
#: loop ran at 100-140k events/s with the default and ~350k with 20 ms, and the monitor's own rate was capped
#: at ~83k whatever its window size. 20 ms keeps the queue full at the cost of a few wake-ups per second.
CONSUMER_DEFAULTS: dict[str, Any] = {"fetch.queue.backoff.ms": 20}


def consumer_config(cfg: MonitorConfig) -> dict[str, Any]:
    """The monitor's consumer settings (the role part: :class:`Connection` adds where and how to connect)."""
    return {
        "group.id": cfg.kafka.group_id,
        "auto.offset.reset": "earliest",
        # Offsets are committed only inside the transaction that also carries the outputs and the state of
        # the events before them (see runner): never by the consumer itself.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        # Predictions and labels of a model are co-partitioned (same key, same partition count): the range
        # assignor gives partition N of both topics to the same instance, which owns the task N.
        "partition.assignment.strategy": "range",
        "queued.max.messages.kbytes": 65536,
        "fetch.wait.max.ms": 100,
        # a monitor started before its producers must not wait 5 minutes to notice the input topics
        "topic.metadata.refresh.interval.ms": 10000,
        # with a stable instance name, a restarted instance takes its partitions back at once (static
        # membership) instead of waiting for its previous incarnation's session to time out
        **({"group.instance.id": cfg.kafka.instance_id} if cfg.kafka.instance_id else {}),
        **cfg.kafka.consumer,
    }


def transactional_id(cfg: MonitorConfig) -> str:
    """This instance's ``transactional.id``: stable with ``kafka.instance_id``, unique per process without."""
    return f"stream-monitor.{cfg.kafka.group_id}.{cfg.kafka.instance_id or uuid.uuid4().hex}"


def producer_config(cfg: MonitorConfig, transactional: bool = True) -> dict[str, Any]:
    """The monitor's producer settings (the role part)."""
    conf = {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",  # same partition for a key as Java clients
        "message.max.bytes": STATE_MAX_BYTES,
        **cfg.kafka.producer,
    }
    if transactional:
        conf.setdefault("transactional.id", transactional_id(cfg))
        conf.setdefault("transaction.timeout.ms", int(cfg.kafka.transaction_timeout_s * 1000))
    return conf


def make_consumer(cfg: MonitorConfig, conn: Connection) -> Consumer:
    return conn.consumer(consumer_config(cfg))


class TopicConfigError(RuntimeError):
    """A topic the monitor owns exists with a configuration the monitor cannot work with."""


#: Topics whose records are latest-state-per-key: they must be compacted, or state is lost to retention.
COMPACTED = ("breaker", "state", "join")


def ensure_topics(cfg: MonitorConfig, conn: Connection, timeout: float = 30.0) -> dict[str, int]:
    """Create the topics the monitor owns when missing (alerts, dead letters, metrics; breaker, state and join
    compacted); refuse to run when a compacted one exists without ``cleanup.policy=compact``. Returns the
    partition count of every topic the monitor reads or writes that exists."""
    t = cfg.topics
    wanted = {
        t.alerts: {"cleanup.policy": "delete", "retention.ms": str(14 * 86400 * 1000)},
        t.breaker: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                    "segment.ms": str(3600 * 1000)},
        # the original message plus headers: allow more than an input topic's default 1 MB
        t.dead_letter: {"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000),
                        "max.message.bytes": str(8 * 1024 * 1024)},
        t.metrics: {"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
        t.join: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.2", "delete.retention.ms": "3600000"},
        t.state: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                  "max.message.bytes": str(STATE_MAX_BYTES)},
    }
    if cfg.scale_out.enabled:
        # pieces are read within seconds by the deciding task; a day covers its downtime. Sizes as the state's.
        wanted[t.panes] = {"cleanup.policy": "delete", "retention.ms": str(86400 * 1000),
                           "max.message.bytes": str(STATE_MAX_BYTES)}
        wanted[t.references] = {"cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)}
    admin = conn.admin()
    existing = admin.list_topics(timeout=timeout).topics
    new = [NewTopic(name, num_partitions=t.partitions, replication_factor=t.replication_factor, config=conf)
           for name, conf in wanted.items() if name not in existing]
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
                logger.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    compacted = [getattr(t, role) for role in COMPACTED] + ([t.references] if cfg.scale_out.enabled else [])
    check_compacted(admin, [name for name in compacted if name in existing], timeout)
    md = admin.list_topics(timeout=timeout).topics
    return {name: len(meta.partitions) for name, meta in md.items()
            if name in (*wanted, t.predictions, t.labels) and meta.error is None and meta.partitions}


def check_compacted(admin: AdminClient, topics: list[str], timeout: float = 30.0) -> None:
    """Raise :class:`TopicConfigError` naming every topic without ``cleanup.policy=compact``."""
    if not topics:
        return
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics])
    wrong = []
    for res, fut in futures.items():
        policy = fut.result(timeout=timeout).get("cleanup.policy")
        value = policy.value if policy is not None else "delete"
        if "compact" not in (value or ""):
            wrong.append(f"{res.name} (cleanup.policy={value})")
    if wrong:
        raise TopicConfigError(
            "state topics must be compacted, or their records are deleted by retention and state is lost: "
            + ", ".join(wrong) + ". Fix with: kafka-configs.sh --alter --entity-type topics --entity-name <topic> "
            "--add-config cleanup.policy=compact (a topic auto-created by the broker is not compacted)")
