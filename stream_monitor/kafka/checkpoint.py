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

**Wedged commits.** librdkafka's ``send_offsets_to_transaction()`` can block past its timeout after the group
coordinator went away, e.g. across a broker restart (confluentinc/librdkafka#5456, #5511). An offsets call
that has run for :data:`OFFSETS_STUCK_S` while the cluster has answered a metadata request for
:data:`ANSWERING_S` is deemed wedged (a healthy one returns within a second or so of the coordinator being
reachable); so is any commit still running at the watchdog (twice the transaction timeout plus 10 s). A wedged
producer is replaced by a new one with the same ``transactional.id``, whose ``init_transactions()`` fences the
old one and aborts its transaction, and the commit fails with :class:`CommitFailed`: the usual recovery (abort,
rewind to the committed offsets and state, redo) follows. While the cluster does not answer, nothing is
replaced: a new producer could not initialise, and the blocked call may yet complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # the probe's type; built by Connection

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

#: An offsets call running this long while the cluster answers is wedged (see the module doc). Healthy ones
#: take milliseconds; after a coordinator moves or loads, a few seconds.
OFFSETS_STUCK_S = 10.0
#: ... the cluster must have answered for this long: a broker that has just come back may not serve yet.
ANSWERING_S = 3.0
#: The cluster is probed (a metadata request) at most this often, once an offsets call has run this long.
PROBE_EVERY_S = 1.0
PROBE_AFTER_S = 2.0
#: A caller waiting for a commit wakes up this often to check it for a wedge and to call ``on_wait``.
WAIT_SLICE_S = 0.5
#: How long a replacement producer keeps retrying ``init_transactions()`` while the cluster is unreachable.
INIT_RETRY_S = 300.0
#: The probe's own client: it must notice the cluster is back within a second or so, not after librdkafka's
#: default reconnect backoff (up to 10 s).
PROBE_SETTINGS = {"reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 500,
                  "socket.connection.setup.timeout.ms": 2000}


@dataclass
class _InFlight:
    """A transaction commit running on its own thread."""

    worker: threading.Thread
    deadline: float  # monotonic: past it, the producer is deemed wedged
    done: Callable[[], None] | None  # the caller's bookkeeping once committed
    outcome: list[BaseException | None]  # [None] committed, [exc] failed; empty while running
    phase: str = "offsets"  # "offsets" (send_offsets_to_transaction), then "commit"; set by the worker
    phase_at: float = 0.0  # monotonic: when the phase began
    probed: float = 0.0  # monotonic: the last probe of the cluster
    answering_since: float | None = None  # monotonic: the cluster has answered every probe since


class Checkpointer:
    """The transactional producer: outputs, state records and offsets of a unit of work commit as one.

    Deliveries are checked at commit: a record the broker refused (too large, no such topic, not authorised)
    makes the commit fail, the transaction abort, and the reason reach the log.
    """

    def __init__(self, cfg: MonitorConfig, conn: Connection, on_wait: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.conn = conn
        self.on_wait = on_wait  # called about every WAIT_SLICE_S while a caller waits (e.g. a progress line)
        self.timeout_s = max(10.0, cfg.kafka.transaction_timeout_s)
        self.watchdog_s = 2 * self.timeout_s + 10  # a commit running longer is wedged (see commit())
        self.open = False
        self.errors: list[str] = []
        self._wedged: list[Producer] = []
        self._inflight: _InFlight | None = None
        self._held: list[tuple[str, dict[str, Any]]] = []  # produced while a commit was in flight
        self._held_bytes = 0
        self.blocked_s = 0.0  # seconds callers waited for commits (the rest overlapped their work)
        self.replaced = 0  # wedged producers replaced
        self._probe: AdminClient | None = None
        # One transactional.id for the process's every producer (without kafka.instance_id it is random, so it
        # is drawn once): a replacement must fence the producer it replaces, or that one's open transaction
        # would hold read_committed readers (outputs, state, offsets) until the transaction timeout.
        self._conf = producer_config(self.cfg, transactional=True)
        self.producer_id = self._conf["transactional.id"]
        self.producer = self.conn.producer(self._conf)
        self.producer.init_transactions(self.timeout_s)  # fences an earlier incarnation with the same id

    def _new_producer(self) -> None:
        """Replace the producer: ``init_transactions()`` fences the old one and aborts its open transaction.
        Retried while the cluster is unreachable (a timeout is retriable), up to :data:`INIT_RETRY_S`."""
        self.producer = self.conn.producer(self._conf)
        deadline = time.monotonic() + INIT_RETRY_S
        while True:
            try:
                self.producer.init_transactions(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                logger.warning("new transactional producer not initialised yet (%s); retrying", err.str())
                if self.on_wait is not None:
                    self.on_wait()

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
                job.phase, job.phase_at = "commit", time.monotonic()
                producer.commit_transaction(self.timeout_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(exc)

        now = time.monotonic()
        job = _InFlight(threading.Thread(target=run, name="txn-commit", daemon=True), now + self.watchdog_s, done,
                        outcome, phase_at=now)
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
        wedged = None
        if not job.outcome:
            started = time.monotonic()
            while not job.outcome:
                wedged = self._wedged_why(job)
                if wedged is not None or not block:
                    break
                job.worker.join(WAIT_SLICE_S)
                if self.on_wait is not None and not job.outcome:
                    self.on_wait()
            self.blocked_s += time.monotonic() - started
            if not job.outcome and wedged is None:
                return False  # still running, not wedged, and the caller does not wait
        self._inflight = None
        held, self._held, self._held_bytes = self._held, [], 0
        if not job.outcome:
            logger.error("transaction commit wedged (%s): replacing the producer (its work is aborted and redone)",
                         wedged)
            self._wedged.append(self.producer)  # never destroyed under a blocked call
            self.open = False
            self.replaced += 1
            self._new_producer()
            raise CommitFailed(f"commit wedged ({wedged}): producer replaced")
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

    def _wedged_why(self, job: _InFlight) -> str | None:
        """Why the commit in flight is wedged (see the module doc), or None while it may still complete."""
        now = time.monotonic()
        if now >= job.deadline:
            return f"still running after {self.watchdog_s:.0f}s"
        running = now - job.phase_at
        if job.phase != "offsets" or running < PROBE_AFTER_S:
            return None
        if now - job.probed >= PROBE_EVERY_S:
            job.probed = now
            if self._cluster_answers():
                job.answering_since = job.answering_since or now
            else:
                job.answering_since = None
        if running >= OFFSETS_STUCK_S and job.answering_since is not None \
                and now - job.answering_since >= ANSWERING_S:
            return (f"send_offsets_to_transaction running for {running:.0f}s while the cluster has answered for "
                    f"{now - job.answering_since:.0f}s")
        return None

    def _cluster_answers(self) -> bool:
        """Whether a broker answers a metadata request within a second."""
        if self._probe is None:
            self._probe = self.conn.admin(PROBE_SETTINGS)
        try:
            return bool(self._probe.list_topics(timeout=1.0).brokers)
        except KafkaException:
            return False

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
        self._probe = None
