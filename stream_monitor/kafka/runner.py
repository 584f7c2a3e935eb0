"""The running monitor: consume a batch, hand it to the core, publish, then store offsets.

This is the whole Kafka edge of the monitoring path. One loop iteration:

1. ``consume()`` up to ``batch.max_messages`` messages;
2. decode them once (``core.events``); contract breakers are produced to the dead-letter topic with the reason
   and their source topic/partition/offset in headers;
3. ``Monitor.process`` the valid events (numpy columns, all features at once) and produce what it returns:
   alerts, breaker signals (compacted, key = model) and state checkpoints (compacted: references, alert and
   breaker state);
4. :meth:`MonitorService._checkpoint`: a batch's offsets are stored only once **every output it produced has
   been acknowledged** by the broker, and only after all earlier batches' offsets (batches complete in
   order). Deliveries are awaited without blocking the next batch (``producer.poll`` serves the delivery
   reports); at most ``MAX_IN_FLIGHT`` batches wait. A crash anywhere before the store re-delivers the batch:
   outputs may repeat (alert ids are deterministic, so consumers deduplicate), events are never skipped.

At start-up the state topic and the breaker topic are read to their end: a restarted monitor keeps its
references, its open incidents (same alert ids) and its breaker states. The breaker topic is then followed so
manual overrides (``stream-monitor breaker open|close|release``) reach the breaker state machines.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from ..config import MonitorConfig
from ..core.alerts import Alert
from ..core.events import decode_labels, decode_predictions
from ..core.monitor import BatchOutput, Monitor
from ..core.breaker import BreakerSignal
from ..exporter import MonitorMetrics
from .clients import ensure_topics, make_consumer, make_producer
from .compacted import CompactedTopicReader

__all__ = ["MonitorService", "ServiceStats"]

logger = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    messages: int = 0
    dead_letters: int = 0
    alerts: int = 0
    signals: int = 0
    restored_join_entries: int = 0  # pending label-join entries read back from the changelog at start-up
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    """Per partition, the offset after the last message of the batch (what a commit means)."""
    last: dict[tuple[str | None, int], Message] = {}
    for m in msgs:  # a partition's messages arrive in offset order: the last one seen is the highest
        last[(m.topic(), m.partition())] = m
    return [TopicPartition(t, p, m.offset() + 1) for (t, p), m in last.items()]


class DeliveryError(RuntimeError):
    """An output could not be written; the batch's offsets were not stored."""


class _Batch:
    """A processed batch whose outputs are in flight: its offsets wait for their delivery reports."""

    __slots__ = ("offsets", "pending", "errors")

    def __init__(self, offsets: list[TopicPartition]) -> None:
        self.offsets = offsets
        self.pending = 0
        self.errors: list[str] = []

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.pending -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")


#: Processed batches whose outputs may be awaiting acknowledgement at once (back-pressure beyond).
MAX_IN_FLIGHT = 8

#: Generation-0 threshold of the garbage collector while the monitor runs. A batch allocates hundreds of
#: thousands of short-lived containers (decoded events); at CPython's default of 700 allocations the cyclic
#: collector runs thousands of times per batch for nothing (reference counting frees these objects). Measured
#: with bench/kafka_throughput.py: about +30 % throughput.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Apply :data:`GC_GEN0_THRESHOLD` (process-wide) and move start-up objects out of the collector's way."""
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


class MonitorService:
    """Runs a :class:`Monitor` against Kafka until :meth:`stop` (or SIGTERM via the CLI)."""

    def __init__(self, cfg: MonitorConfig, bootstrap: str, monitor: Monitor | None = None,
                 log_every_s: float = 10.0, metrics: MonitorMetrics | None = None) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.monitor = monitor or Monitor(cfg)
        self.metrics = metrics
        self.stats = ServiceStats()
        self.log_every_s = log_every_s
        self._stop = threading.Event()
        self._in_flight: deque[_Batch] = deque()
        self._warned_topics: set[str] = set()
        self.failure: BaseException | None = None  # why run() ended, when it did not end by stop()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> ServiceStats:
        cfg = self.cfg
        tune_gc()
        ensure_topics(cfg, self.bootstrap)
        self._restore()
        self.producer = make_producer(cfg, self.bootstrap)
        consumer = make_consumer(cfg, self.bootstrap)
        topics = [cfg.topics.predictions]
        self._with_labels = any(m.performance.task != "none" or m.concept_drift for m in cfg.models.values())
        if self._with_labels:
            topics.append(cfg.topics.labels)
        consumer.subscribe(topics)
        logger.info("consuming %s as group %s from %s", ", ".join(topics), cfg.kafka.group_id, self.bootstrap)
        last_log = time.monotonic()
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(cfg.batch.max_messages, cfg.batch.timeout_s)
                self.producer.poll(0)
                self._store_completed(consumer)
                for _, value in self._breakers.poll():  # manual overrides (and our own echoes, ignored)
                    if value is not None:
                        self.monitor.observe_breaker(BreakerSignal.from_dict(value))
                if msgs:
                    self._process(msgs, consumer)
                if time.monotonic() - last_log >= self.log_every_s:
                    last_log = time.monotonic()
                    self._log_progress()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            try:
                if self.producer.flush(30) == 0:  # the last batches' outputs, then their offsets
                    self._store_completed(consumer)
            except DeliveryError as exc:
                logger.error("%s", exc)
                self.failure = self.failure or exc
            finally:
                consumer.close()  # commits the offsets stored so far
                self._breakers.close()
                self.producer = None  # flushed: release the client now, not whenever the service is collected
                self._log_progress()
        if self.failure is not None:
            raise self.failure
        return self.stats

    def _restore(self) -> None:
        state = CompactedTopicReader(self.bootstrap, self.cfg.topics.state)
        try:
            checkpoints = state.sync(timeout=60)
        finally:
            state.close()
        restored = self.monitor.restore(checkpoints)
        if restored:
            logger.info("restored from %s: %s", self.cfg.topics.state, ", ".join(sorted(restored)))
        if any(mm.join is not None for mm in self.monitor.models.values()):
            changelog = CompactedTopicReader(self.bootstrap, self.cfg.topics.join)
            try:
                entries = changelog.sync(timeout=300)
            finally:
                changelog.close()
            meta = {k.partition("/")[2]: (v or {}).get("join") for k, v in checkpoints.items()
                    if k.startswith("model/")}
            pending = self.stats.restored_join_entries = self.monitor.restore_join(entries, meta)
            if pending:
                logger.info("restored %d pending label-join entries from %s", pending, self.cfg.topics.join)
        self._breakers = CompactedTopicReader(self.bootstrap, self.cfg.topics.breaker)
        for value in self._breakers.sync(timeout=60).values():
            self.monitor.observe_breaker(BreakerSignal.from_dict(value))

    def _process(self, msgs: list[Message], consumer: Any) -> None:
        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                if m.topic() not in self._warned_topics:
                    self._warned_topics.add(m.topic() or "")
                    logger.warning("topic %s does not exist yet; waiting for it", m.topic())
            else:
                logger.warning("consumer error: %s", err)
        if not good:
            return
        started = time.perf_counter()
        dead_before = self.stats.dead_letters
        preds, labels = good, []
        if self._with_labels:
            topic = self.cfg.topics.labels
            is_label = [m.topic() == topic for m in good]
            preds = [m for m, lab in zip(good, is_label) if not lab]
            labels = [m for m, lab in zip(good, is_label) if lab]
        batch = _Batch(_next_offsets(good))
        self._batch = batch
        out = self._run(preds, decode_predictions, self.monitor.process)
        if labels:
            more = self._run(labels, decode_labels, self.monitor.process_labels)
            out.alerts += more.alerts
            out.signals += more.signals
            out.reports += more.reports
            out.checkpoints.update(more.checkpoints)
        for a in out.alerts:
            self._publish_alert(a)
        for sig in out.signals:
            self._produce(self.cfg.topics.breaker, sig.model.encode(), orjson.dumps(sig.to_dict()))
            self.stats.signals += 1
            logger.warning("breaker %s -> %s (epoch %d): %s", sig.model, sig.state, sig.epoch, sig.reason)
        for report in out.reports:
            self._produce(self.cfg.topics.metrics, report["model"].encode(), orjson.dumps(report))
        for key, entry in out.join_changes.items():  # None: a tombstone, compaction drops the key
            self._produce(self.cfg.topics.join, key.encode(), None if entry is None else orjson.dumps(entry))
        for key, value in out.checkpoints.items():
            self._produce(self.cfg.topics.state, key.encode(), orjson.dumps(value))
        self._in_flight.append(batch)
        self._checkpoint(consumer)
        self.stats.messages += len(good)
        self.stats.batches += 1
        if self.metrics is not None:
            topics = {self.cfg.topics.predictions: len(preds)} | ({self.cfg.topics.labels: len(labels)} if labels else {})
            self.metrics.observe_batch(out, self.monitor, time.perf_counter() - started, topics,
                                       self.stats.dead_letters - dead_before, len(self._in_flight))

    def _run(self, msgs: list[Message], decode: Any, process: Any) -> BatchOutput:
        """Decode, dead-letter the rejects, process the rest; a failure parks the batch in the dead letters."""
        if not msgs:
            return BatchOutput()
        events, positions, rejects = decode([m.value() for m in msgs])
        for r in rejects:
            self._dead_letter(msgs[r.index], r.reason)
        try:
            return process(events)
        except Exception as exc:  # a defect must not stop monitoring of every other model
            logger.exception("processing failed; the batch goes to the dead-letter topic")
            for i in positions:
                self._dead_letter(msgs[i], f"processing error: {type(exc).__name__}: {exc}", stage="process")
            return BatchOutput()

    def _checkpoint(self, consumer: Any) -> None:
        # Order matters: outputs acknowledged first, offsets second. Batches complete in order, so a batch
        # whose outputs failed stops the store of every later one: after the restart that follows, the
        # failed batch and everything after it are consumed again.
        while len(self._in_flight) > MAX_IN_FLIGHT:
            self.producer.poll(0.1)  # back-pressure: wait for the oldest batch's acknowledgements
            self._store_completed(consumer)
        self._store_completed(consumer)

    def _store_completed(self, consumer: Any) -> None:
        while self._in_flight and self._in_flight[0].pending == 0:
            batch = self._in_flight.popleft()
            if batch.errors:
                self._in_flight.clear()
                raise DeliveryError(f"outputs of a batch were not delivered, offsets not stored: {batch.errors[:5]}")
            try:
                consumer.store_offsets(offsets=batch.offsets)
            except KafkaException as exc:  # partitions revoked meanwhile: their new owner re-reads them
                logger.warning("offsets not stored (rebalanced?): %s", exc)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """Produce one output of the current batch; its delivery report releases the batch's offsets."""
        batch = self._batch
        batch.pending += 1
        try:
            self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=batch.delivered)
        except BufferError:  # local queue full: serve delivery reports, then retry once
            self.producer.poll(1.0)
            self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=batch.delivered)
        except BaseException:
            batch.pending -= 1
            raise

    def _dead_letter(self, m: Message, reason: str, stage: str = "decode") -> None:
        headers = [
            ("error.reason", reason.encode()),
            ("error.stage", stage.encode()),
            ("source.topic", (m.topic() or "").encode()),
            ("source.partition", str(m.partition()).encode()),
            ("source.offset", str(m.offset()).encode()),
        ]
        self._produce(self.cfg.topics.dead_letter, m.key(), m.value(), headers)
        self.stats.dead_letters += 1
        logger.warning("dead-lettered %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), reason)

    def _publish_alert(self, a: Alert) -> None:
        self._produce(self.cfg.topics.alerts, a.dedup_key.encode(), orjson.dumps(a.to_dict()))
        self.stats.alerts += 1
        logger.info("%s alert %s: %s", a.status, a.alert_id, a.message)

    def _log_progress(self) -> None:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        logger.info("consumed %d messages (%.0f/s), %d dead letters, %d alerts, %d windows evaluated",
                    s.messages, s.messages / elapsed, s.dead_letters, s.alerts, self.monitor.counters.windows)
