"""Client defaults and topic administration, in one place."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ..config import MonitorConfig

__all__ = ["STATE_MAX_BYTES", "consumer_config", "ensure_topics", "make_consumer", "make_producer", "producer_config"]

logger = logging.getLogger(__name__)

#: Reference checkpoints (bins, counts and a sample of up to ``sample_size`` rows of 8-byte values, base64)
#: exceed Kafka's default 1 MB message: 5,000 rows x 27 columns is ~1.5 MB, x 1,000 columns ~53 MB.
STATE_MAX_BYTES = 64 * 1024 * 1024


def consumer_config(cfg: MonitorConfig, bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": cfg.kafka.group_id,
        "auto.offset.reset": "earliest",
        # Offsets are *stored* by the monitor only after a batch's outputs are flushed (see runner), and the
        # stored ones are committed in the background and on close/revoke: nothing unprocessed is committed.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 1000,
        "queued.max.messages.kbytes": 65536,
        "fetch.wait.max.ms": 100,
        **cfg.kafka.consumer,
    }


def producer_config(cfg: MonitorConfig, bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",  # same partition for a key as Java clients
        "message.max.bytes": STATE_MAX_BYTES,
        **cfg.kafka.producer,
    }


def make_consumer(cfg: MonitorConfig, bootstrap: str) -> Consumer:
    return Consumer(consumer_config(cfg, bootstrap))


def make_producer(cfg: MonitorConfig, bootstrap: str) -> Producer:
    return Producer(producer_config(cfg, bootstrap))


def ensure_topics(cfg: MonitorConfig, bootstrap: str, timeout: float = 30.0) -> None:
    """Create the topics the monitor owns when missing: alerts, dead letters, breaker and state (compacted)."""
    t = cfg.topics
    wanted = {
        t.alerts: {"cleanup.policy": "delete", "retention.ms": str(14 * 86400 * 1000)},
        t.breaker: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                    "segment.ms": str(3600 * 1000)},
        t.dead_letter: {"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
        t.metrics: {"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
        t.join: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.2", "delete.retention.ms": "3600000"},
        t.state: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                  "max.message.bytes": str(STATE_MAX_BYTES)},
    }
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(name, num_partitions=t.partitions, replication_factor=t.replication_factor, config=conf)
           for name, conf in wanted.items() if name not in existing]
    if not new:
        return
    for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            logger.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
