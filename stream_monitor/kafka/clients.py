"""Client defaults and topic administration, in one place."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ..config import MonitorConfig

__all__ = ["STATE_MAX_BYTES", "TopicConfigError", "check_compacted", "consumer_config", "ensure_topics",
           "make_consumer", "make_producer", "producer_config", "transactional_id"]

logger = logging.getLogger(__name__)

#: Reference checkpoints (bins, counts and a sample of up to ``sample_size`` rows of 8-byte values, base64)
#: exceed Kafka's default 1 MB message: 5,000 rows x 27 columns is ~1.5 MB, x 1,000 columns ~53 MB.
STATE_MAX_BYTES = 64 * 1024 * 1024


def consumer_config(cfg: MonitorConfig, bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
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


def producer_config(cfg: MonitorConfig, bootstrap: str, transactional: bool = True) -> dict[str, Any]:
    conf = {
        "bootstrap.servers": bootstrap,
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


def make_consumer(cfg: MonitorConfig, bootstrap: str) -> Consumer:
    return Consumer(consumer_config(cfg, bootstrap))


def make_producer(cfg: MonitorConfig, bootstrap: str, transactional: bool = True) -> Producer:
    return Producer(producer_config(cfg, bootstrap, transactional))


class TopicConfigError(RuntimeError):
    """A topic the monitor owns exists with a configuration the monitor cannot work with."""


#: Topics whose records are latest-state-per-key: they must be compacted, or state is lost to retention.
COMPACTED = ("breaker", "state", "join")


def ensure_topics(cfg: MonitorConfig, bootstrap: str, timeout: float = 30.0) -> dict[str, int]:
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
    admin = AdminClient({"bootstrap.servers": bootstrap})
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
    check_compacted(admin, [getattr(t, role) for role in COMPACTED if getattr(t, role) in existing], timeout)
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
