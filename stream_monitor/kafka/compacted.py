"""Latest value per key of a compacted topic: read from the beginning to the end offsets, then follow.

Used for the breaker topic (by routers, the CLI and the monitor itself, which must see manual overrides) and
for the monitor's state and join topics (restored when a partition is assigned). No consumer group: a reader
sees every partition (or the ones it is given), and nothing is committed. Readers use ``read_committed``:
records of aborted transactions are never seen.

Keys and values are decoded by a :class:`Codec`: by default a UTF-8 key and a JSON object (``validate``,
optional, is applied to each value); the state and join topics use the state codec
(:data:`STATE_CODEC`, see :mod:`stream_monitor.core.state`). A record the codec refuses (``ValueError``) is
logged, counted in ``skipped`` (and by reason in ``reasons``) and ignored: a compacted topic keeps a bad record
for good, and crashing on it would crash at every start.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from ..core import state
from .clients import Connection

__all__ = ["STATE_CODEC", "Codec", "CompactedTopicReader", "JsonCodec"]

logger = logging.getLogger(__name__)

_TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT,
              KafkaError.UNKNOWN_TOPIC_OR_PART}


class Codec(Protocol):
    """How a compacted topic's keys and values are read: ``ValueError`` for a record that cannot be used
    (its ``reason`` attribute, when it has one, is the class it is counted under)."""

    def key(self, raw: bytes | None) -> Hashable: ...

    def value(self, key: Any, raw: bytes) -> Any: ...


class JsonCodec:
    """A UTF-8 key and a JSON object, checked by ``validate`` (optional)."""

    def __init__(self, validate: Callable[[Any], Any] | None = None) -> None:
        self._validate = validate

    def key(self, raw: bytes | None) -> str:
        try:
            return (raw or b"").decode()
        except UnicodeDecodeError:
            raise ValueError("key is not UTF-8") from None

    def value(self, key: str, raw: bytes) -> Any:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"not a JSON object ({type(value).__name__})")
        return value if self._validate is None else self._validate(value)


class _StateCodec:
    """Keys ``(task, record key)`` and versioned values of the state and join topics (:mod:`..core.state`)."""

    def key(self, raw: bytes | None) -> tuple[state.TaskId, state.RecordKey]:
        return state.decode_key(raw)

    def value(self, key: tuple[state.TaskId, state.RecordKey], raw: bytes) -> Any:
        return state.decode_value(key[1], raw)


STATE_CODEC = _StateCodec()


class CompactedTopicReader:
    """Keeps ``latest[key] = decoded value`` (a tombstone removes the key)."""

    def __init__(self, conn: Connection, topic: str, partitions: list[int] | None = None,
                 validate: Callable[[Any], Any] | None = None, codec: Codec | None = None) -> None:
        self.topic = topic
        self.latest: dict[Any, Any] = {}
        self.skipped = 0
        self.reasons: Counter[str] = Counter()  # skipped records by reason class
        self._partitions = partitions
        self._codec = codec if codec is not None else JsonCodec(validate)
        self._consumer = conn.consumer({
            "group.id": f"stream-monitor-reader-{uuid.uuid4().hex}",  # never committed: assign(), not subscribe()
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 64 * 1024 * 1024,
            "receive.message.max.bytes": 65 * 1024 * 1024 + 1_000_000,
        })
        self._assigned = False

    def _assign(self, timeout: float) -> list[TopicPartition]:
        md = self._consumer.list_topics(self.topic, timeout=timeout)
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        wanted = sorted(meta.partitions) if self._partitions is None else sorted(
            set(self._partitions) & set(meta.partitions))
        parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in wanted]
        self._consumer.assign(parts)
        self._assigned = True
        return parts

    def sync(self, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Read everything up to the current end offsets; returns ``latest``."""
        deadline = time.monotonic() + timeout
        parts = self._assign(timeout) if not self._assigned else self._consumer.assignment()
        if not parts:
            return self.latest
        ends = {}
        for tp in parts:
            lo, hi = self._watermarks(tp.partition, deadline)
            if hi > lo:
                ends[tp.partition] = hi
        done = {p for p, hi in ends.items() if self._position(p) >= hi}
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end within {timeout:.0f}s")
            for msg in self._consumer.consume(1000, 0.5):
                self._apply(msg)
            done = {p for p, hi in ends.items() if self._position(p) >= hi}
        return self.latest

    def _watermarks(self, partition: int, deadline: float) -> tuple[int, int]:
        while True:
            try:
                return self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)
            except KafkaException as exc:
                # a topic created a moment ago may not have a leader yet: retryable until the deadline
                if not exc.args[0].retriable() and exc.args[0].code() not in _TRANSIENT or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _position(self, partition: int) -> int:
        pos = self._consumer.position([TopicPartition(self.topic, partition)])[0].offset
        return pos if pos >= 0 else -1

    def poll(self, max_messages: int = 500) -> list[tuple[str, dict[str, Any] | None]]:
        """New records since the last call (non-blocking); ``latest`` is updated too."""
        if not self._assigned and not self._assign(5.0):
            return []
        out = []
        for msg in self._consumer.consume(max_messages, 0):
            item = self._apply(msg)
            if item is not None:
                out.append(item)
        return out

    def _apply(self, msg: Any) -> tuple[str, dict[str, Any] | None] | None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                logger.warning("%s: %s", self.topic, err)
            return None
        try:
            key = self._codec.key(msg.key())
        except ValueError as exc:
            return self._skip(msg, None, exc)
        if msg.value() is None:
            self.latest.pop(key, None)
            return key, None
        try:
            value = self._codec.value(key, msg.value())
        except ValueError as exc:
            return self._skip(msg, key, exc)
        self.latest[key] = value
        return key, value

    def _skip(self, msg: Any, key: Any, exc: ValueError) -> None:
        """A malformed record is the key's latest value: the key's older value is stale, so it goes too."""
        if key is not None:
            self.latest.pop(key, None)
        self.skipped += 1
        self.reasons[getattr(exc, "reason", "invalid")] += 1
        logger.warning("%s[%d]@%d: record skipped: %s", self.topic, msg.partition(), msg.offset(), exc)
        return None

    def close(self) -> None:
        self._consumer.close()
