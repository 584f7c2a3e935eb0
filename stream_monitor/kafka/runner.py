"""The running monitor: consume a batch, hand it to the core, publish, then store offsets.

This is the whole Kafka edge of the monitoring path. One loop iteration:

1. ``consume()`` up to ``batch.max_messages`` messages;
2. decode them once (``core.events``); contract breakers are produced to the dead-letter topic with the reason
   and their source topic/partition/offset in headers;
3. ``Monitor.process`` the valid events (numpy columns, all features at once) and produce what it returns:
   alerts, breaker signals (compacted, key = model) and state checkpoints (compacted: references, alert and
   breaker state);
4. :meth:`MonitorService._checkpoint`: flush the producer and check every delivery, **then** store the batch's
   offsets. A crash anywhere before that re-delivers the batch: outputs may repeat (alert ids are
   deterministic, so consumers deduplicate), events are never skipped.

At start-up the state topic and the breaker topic are read to their end: a restarted monitor keeps its
references, its open incidents (same alert ids) and its breaker states. The breaker topic is then followed so
manual overrides (``stream-monitor breaker open|close|release``) reach the breaker state machines.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from ..config import MonitorConfig
from ..core.alerts import Alert
from ..core.events import decode_labels, decode_predictions
from ..core.monitor import BatchOutput, Monitor
from ..core.breaker import BreakerSignal
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
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    """Per partition, the offset after the last message of the batch (what a commit means)."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic(), m.partition())
        last[key] = max(last.get(key, -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


class DeliveryError(RuntimeError):
    """An output could not be written; the batch's offsets were not stored."""


class MonitorService:
    """Runs a :class:`Monitor` against Kafka until :meth:`stop` (or SIGTERM via the CLI)."""

    def __init__(self, cfg: MonitorConfig, bootstrap: str, monitor: Monitor | None = None,
                 log_every_s: float = 10.0) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.monitor = monitor or Monitor(cfg)
        self.stats = ServiceStats()
        self.log_every_s = log_every_s
        self._stop = threading.Event()
        self._delivery_errors: list[str] = []
        self._warned_topics: set[str] = set()
        self.failure: BaseException | None = None  # why run() ended, when it did not end by stop()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> ServiceStats:
        cfg = self.cfg
        ensure_topics(cfg, self.bootstrap)
        self._restore()
        self.producer = make_producer(cfg, self.bootstrap)
        consumer = make_consumer(cfg, self.bootstrap)
        topics = [cfg.topics.predictions]
        if any(m.performance.task != "none" or m.concept_drift for m in cfg.models.values()):
            topics.append(cfg.topics.labels)
        consumer.subscribe(topics)
        logger.info("consuming %s as group %s from %s", ", ".join(topics), cfg.kafka.group_id, self.bootstrap)
        last_log = time.monotonic()
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(cfg.batch.max_messages, cfg.batch.timeout_s)
                self.producer.poll(0)
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
            self.producer.flush(30)
            consumer.close()  # commits the offsets stored so far
            self._breakers.close()
            self._log_progress()
        return self.stats

    def _restore(self) -> None:
        state = CompactedTopicReader(self.bootstrap, self.cfg.topics.state)
        try:
            restored = self.monitor.restore(state.sync(timeout=60))
        finally:
            state.close()
        if restored:
            logger.info("restored from %s: %s", self.cfg.topics.state, ", ".join(sorted(restored)))
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
        labels_topic = self.cfg.topics.labels
        preds = [m for m in good if m.topic() != labels_topic]
        labels = [m for m in good if m.topic() == labels_topic] if len(preds) < len(good) else []
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
            self.producer.produce(self.cfg.topics.breaker, key=sig.model.encode(), value=orjson.dumps(sig.to_dict()),
                                  on_delivery=self._on_delivery)
            self.stats.signals += 1
            logger.warning("breaker %s -> %s (epoch %d): %s", sig.model, sig.state, sig.epoch, sig.reason)
        for report in out.reports:
            self.producer.produce(self.cfg.topics.metrics, key=report["model"].encode(), value=orjson.dumps(report),
                                  on_delivery=self._on_delivery)
        for key, value in out.checkpoints.items():
            self.producer.produce(self.cfg.topics.state, key=key.encode(), value=orjson.dumps(value),
                                  on_delivery=self._on_delivery)
        self._checkpoint(consumer, good)
        self.stats.messages += len(good)
        self.stats.batches += 1

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

    def _checkpoint(self, consumer: Any, msgs: list[Message]) -> None:
        # Order matters: outputs durable first, offsets second. flush() waits for every delivery report;
        # a failed delivery leaves the offsets unstored so the batch is consumed again after a restart.
        remaining = self.producer.flush(60)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise DeliveryError(f"{remaining} outputs undelivered, errors: {errors[:5]}")
        consumer.store_offsets(offsets=_next_offsets(msgs))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _dead_letter(self, m: Message, reason: str, stage: str = "decode") -> None:
        headers = [
            ("error.reason", reason.encode()),
            ("error.stage", stage.encode()),
            ("source.topic", (m.topic() or "").encode()),
            ("source.partition", str(m.partition()).encode()),
            ("source.offset", str(m.offset()).encode()),
        ]
        self.producer.produce(self.cfg.topics.dead_letter, value=m.value(), key=m.key(), headers=headers,
                              on_delivery=self._on_delivery)
        self.stats.dead_letters += 1
        logger.warning("dead-lettered %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), reason)

    def _publish_alert(self, a: Alert) -> None:
        self.producer.produce(self.cfg.topics.alerts, key=a.dedup_key.encode(), value=orjson.dumps(a.to_dict()),
                              on_delivery=self._on_delivery)
        self.stats.alerts += 1
        logger.info("%s alert %s: %s", a.status, a.alert_id, a.message)

    def _log_progress(self) -> None:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        logger.info("consumed %d messages (%.0f/s), %d dead letters, %d alerts, %d windows evaluated",
                    s.messages, s.messages / elapsed, s.dead_letters, s.alerts, self.monitor.counters.windows)
