"""The unit of exactly-once work: outputs, state records and consumer offsets commit in one Kafka transaction.

:class:`Checkpointer` owns the monitor's transactional producer (``transactional.id`` from
``kafka.instance_id``): the first record produced begins a transaction; :meth:`Checkpointer.commit` adds the
consumer offsets (``send_offsets_to_transaction``, fenced by the consumer group's generation) and commits. A
record the broker refuses, a fenced or wedged producer, or a timeout aborts the transaction and raises
:class:`CommitFailed`: nothing of it becomes visible to ``read_committed`` readers, and the caller redoes the
work from the last commit.

A commit may run in the background (``commit(..., wait=False)``): the caller goes on processing while the
broker completes it, and records produced meanwhile are held and go into the next transaction once it is
committed (:meth:`Checkpointer.settle`). If it fails, the caller learns it at the next ``produce``, ``settle``
or ``commit`` (:class:`CommitFailed`) and redoes everything since the last commit, the held records included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from ..config import MonitorConfig
from .clients import Connection, producer_config

__all__ = ["Checkpointer", "CommitFailed"]

logger = logging.getLogger(__name__)


class CommitFailed(RuntimeError):
    """The open transaction could not be committed: it was aborted, and the work since the last commit must be
    redone from the last committed state and offsets."""


#: Records held while a commit is in flight, beyond which producing waits for it: bounds the memory of a burst
#: (e.g. many dead letters) during one slow commit.
HOLD_RECORDS = 50_000
HOLD_BYTES = 64 << 20


@dataclass
class _InFlight:
    """A transaction commit running on its own thread."""

    worker: threading.Thread
    deadline: float  # monotonic: past it, the producer is deemed wedged
    done: Callable[[], None] | None  # the caller's bookkeeping once committed
    outcome: list[BaseException | None]  # [None] committed, [exc] failed; empty while running


class Checkpointer:
    """The transactional producer: outputs, state records and offsets of a unit of work commit as one.

    Deliveries are checked at commit: a record the broker refused (too large, no such topic, not authorised)
    makes the commit fail, the transaction abort, and the reason reach the log.
    """

    def __init__(self, cfg: MonitorConfig, conn: Connection) -> None:
        self.cfg = cfg
        self.conn = conn
        self.timeout_s = max(10.0, cfg.kafka.transaction_timeout_s)
        self.watchdog_s = 2 * self.timeout_s + 10  # a commit running longer is wedged (see commit())
        self.open = False
        self.errors: list[str] = []
        self._wedged: list[Producer] = []
        self._inflight: _InFlight | None = None
        self._held: list[tuple[str, dict[str, Any]]] = []  # produced while a commit was in flight
        self._held_bytes = 0
        self.blocked_s = 0.0  # seconds callers waited for commits (the rest overlapped their work)
        self._new_producer()

    def _new_producer(self) -> None:
        conf = producer_config(self.cfg, transactional=True)
        self.producer_id = conf["transactional.id"]
        self.producer = self.conn.producer(conf)
        self.producer.init_transactions(self.timeout_s)  # fences an earlier incarnation with the same id

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self.errors) < 20:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def _begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
            self.errors = []

    def _abort_with(self, exc: KafkaException) -> CommitFailed:
        """Abort after ``exc``; the error to raise names the refused records when there were any."""
        why = "; ".join(self.errors[:3]) or exc.args[0].str()
        self.abort(exc.args[0])
        return CommitFailed(why)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if self._inflight is not None:
            if not self._inflight.outcome and len(self._held) < HOLD_RECORDS and self._held_bytes < HOLD_BYTES:
                self._held.append((topic, kwargs))  # for the next transaction, once this one is committed
                self._held_bytes += len(value or b"") + len(key or b"")
                return
            self.settle()  # (raises CommitFailed if it failed: this record's work is redone with the rest)
        self._produce(topic, kwargs)

    def _produce(self, topic: str, kwargs: dict[str, Any]) -> None:
        self._begin()
        for _ in range(100):
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.5)
            except KafkaException as exc:  # the transaction is in error (an earlier record was refused)
                raise self._abort_with(exc) from None
        else:
            self.abort()
            raise CommitFailed(f"producer queue stayed full while producing to {topic}")
        self.producer.poll(0)

    @property
    def committing(self) -> bool:
        """A commit is in flight (not settled yet)."""
        return self._inflight is not None

    def commit(self, offsets: list[TopicPartition], group_metadata: Any, wait: bool = True,
               done: Callable[[], None] | None = None) -> None:
        """Commit the open transaction with ``offsets``, then call ``done``. ``wait``: return once committed;
        else return at once and let it complete in the background (see the module doc). Raises
        :class:`CommitFailed` after aborting (with ``wait=False``: when a later call settles it)."""
        self.settle()  # the previous one first: transactions commit in order
        self._begin()
        producer = self.producer
        # librdkafka's send_offsets_to_transaction() can block past its timeout when the group coordinator
        # goes away (confluentinc/librdkafka#5456, #5511): a watchdog replaces a wedged producer instead of
        # waiting for ever. The new producer's init_transactions() fences the old one and aborts its work.
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                if offsets:
                    producer.send_offsets_to_transaction(offsets, group_metadata, self.timeout_s)
                producer.commit_transaction(self.timeout_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(exc)

        job = _InFlight(threading.Thread(target=run, name="txn-commit", daemon=True),
                        time.monotonic() + self.watchdog_s, done, outcome)
        self._inflight = job
        job.worker.start()
        if wait:
            self.settle()

    def settle(self, block: bool = True) -> bool:
        """Take the outcome of the commit in flight, waiting for it (``block``) or not; returns whether none is
        in flight any more. A commit still running past its deadline is wedged, waiting or not. Once committed,
        the records held meanwhile begin the next transaction; if it failed, it is aborted, they are dropped and
        :class:`CommitFailed` is raised (the caller redoes the work since the last commit)."""
        job = self._inflight
        if job is None:
            return True
        if not job.outcome:
            if not block and time.monotonic() < job.deadline:
                return False
            started = time.monotonic()
            job.worker.join(max(0.0, job.deadline - started))
            self.blocked_s += time.monotonic() - started
        self._inflight = None
        held, self._held, self._held_bytes = self._held, [], 0
        if not job.outcome:
            logger.error("transaction commit stuck for %.0fs: replacing the producer (its work is aborted)",
                         self.watchdog_s)
            self._wedged.append(self.producer)  # never destroyed under a blocked call
            self.open = False
            self._new_producer()
            raise CommitFailed("commit did not return: producer replaced")
        exc = job.outcome[0]
        if exc is not None:
            if not isinstance(exc, KafkaException):
                raise exc
            raise self._abort_with(exc) from None
        self.open = False
        if job.done is not None:
            job.done()
        for topic, kwargs in held:
            self._produce(topic, kwargs)
        return True

    def abort(self, err: KafkaError | None = None) -> None:
        """Abort the open transaction (a fenced or fatally failed producer is replaced); a commit in flight is
        waited for first (if it went through, its work stays committed) and what was held for the next one is
        dropped."""
        self._held, self._held_bytes = [], 0
        try:
            self.settle()
        except CommitFailed:
            pass  # aborted already
        try:
            if err is not None and err.fatal():
                raise KafkaException(err)
            if self.open:
                self.producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            logger.warning("transactional producer unusable (%s): starting a new one", exc.args[0].str())
            self.producer.flush(0)
            self._new_producer()
        self.open = False

    def close(self) -> None:
        if self.open:
            self.abort()
        self.producer.flush(5)
        self.producer = None  # type: ignore[assignment]  # release the client now, not when collected
