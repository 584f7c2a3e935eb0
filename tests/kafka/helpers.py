"""Small real clients for the integration tests (no mocks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_monitor.config import MonitorConfig, parse_config
from stream_monitor.kafka.runner import MonitorService


def config(run_id: str, models: dict[str, Any], **over: Any) -> MonitorConfig:
    return parse_config(config_dict(run_id, models, **over))


def config_dict(run_id: str, models: dict[str, Any], **over: Any) -> dict[str, Any]:
    """The raw config of a test run (its own topics and group), as a YAML file would hold it."""
    raw: dict[str, Any] = {
        "kafka": {"group_id": f"monitor-{run_id}"},
        "topics": {"predictions": f"pred-{run_id}", "labels": f"labels-{run_id}", "alerts": f"alerts-{run_id}",
                   "breaker": f"breaker-{run_id}", "dead_letter": f"dlq-{run_id}", "state": f"state-{run_id}",
                   "metrics": f"metrics-{run_id}", "join": f"join-{run_id}",
                   "partitions": 1},
        "batch": {"max_messages": 2000, "timeout_s": 0.2},
        "models": models,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
    for fut in admin.create_topics([topic]).values():
        fut.result(30)


def produce(bootstrap: str, topic: str, values: Iterable[bytes | dict[str, Any]], key: bytes | None = b"m") -> int:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    n = 0
    for v in values:
        p.produce(topic, key=key, value=v if isinstance(v, bytes) else orjson.dumps(v))
        p.poll(0)
        n += 1
    assert p.flush(30) == 0
    return n


def read_all(bootstrap: str, topic: str, until: Callable[[list[Message]], bool], timeout: float = 60) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(messages)`` holds or the timeout passes."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})  # the outputs' contract: transactions
    c.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        c.close()


class Running:
    """A MonitorService in a thread, stopped (and checked for failure) on exit."""

    def __init__(self, cfg: MonitorConfig, bootstrap: str, **kwargs: Any) -> None:
        self.service = MonitorService(cfg, bootstrap, log_every_s=5, **kwargs)
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def wait_consumed(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.service.stats.messages < n and time.monotonic() < deadline:
            assert self.thread.is_alive(), f"monitor died: {self.service.failure!r}"
            time.sleep(0.1)
        assert self.service.stats.messages >= n, f"consumed {self.service.stats.messages} of {n}"

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "monitor did not stop"
        assert self.service.failure is None, f"monitor failed: {self.service.failure!r}"
