"""The running monitor: the Kafka edge. Consume a batch, hand it to the core, publish, commit.

**Tasks.** Partition N of the predictions topic and partition N of the labels topic (co-partitioned: both
keyed by model, same partition count) form *task N*. Each task has its own :class:`~..core.monitor.Monitor`
(its models' windows, references, join, incidents and breakers), restored from the state topic when the
consumer group assigns the partitions and released when they are revoked. A task's state records are
written to partition ``N % partitions(state topic)`` under keys ``N/<model>/<kind>[/<part>]`` (typed and
encoded in :mod:`..core.state`), so restoring a task reads one partition, not the whole topic.

**Exactly once.** One Kafka transaction carries, for every batch since the previous commit: the outputs
(alerts, breaker signals, window reports, dead letters), the state records that changed (see
:class:`~..core.monitor.Checkpoint`) and the consumer offsets (``send_offsets_to_transaction``). It commits
every ``kafka.commit_interval_s``, right after a batch that paged (an alert or a breaker signal: see
:data:`PAGE_POLL_S`), before partitions are revoked, and on stop. Readers of the outputs and of
the state use ``isolation.level=read_committed``, so whatever happens — a crash, a rebalance, a refused output,
a broker restart — they see each batch's effects once or not at all, and a restarted or new owner of a task
resumes from state that matches its committed offsets exactly: no event counted twice or lost, the same
windows, the same alert ids. On a failed commit the transaction is aborted and every task is rewound to its
last committed state and offsets (the work is redone; nothing was visible).

**Checkpointer.** :class:`~.checkpoint.Checkpointer` owns the transactional producer: begin, produce, commit,
abort. The interval's commit completes in the background while the next batches are processed: their outputs
are held and begin the next transaction once it is committed; if it fails, the loop learns it at its next turn
and rewinds as above (the held outputs are redone with the rest). Before a revocation and on stop, the commit
is waited for.

**Decoding ahead** (``batch.decode_ahead``). While the core works on batch N, a second thread decodes batch
N+1's predictions (the compiled decoder parses without the GIL, so the two run on two CPUs). Nothing of N+1
happens before N is done: its dead letters, labels, core work, outputs and positions follow in order, on
this thread. A batch consumed but not processed has no effect: a rebalance processes it before the
revocation's commit (it was consumed before), a rewind or a replaced consumer drops it (its offsets are read
again), and on stop it is dropped uncommitted.

**Scale-out** (``scale_out.enabled``). Task N of the predictions topic is a
:class:`~..core.panes.PaneBuilder`: it hands out partial panes, produced to ``topics.panes`` keyed by model in
the same transaction as its offsets. Partition N of the panes topic is task ``pN``: a
:class:`~..core.monitor.Monitor` that merges the pieces of the models whose key lands there and decides for
them (alerts, incidents, breaker, reports), restored and committed like any task. The group's assignment moves
both kinds of task; a model has one deciding task, so one writer of its incidents and breaker.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID, Consumer, KafkaError, KafkaException,
                             Message, TopicPartition)  # clients come from .clients

from ..config import MonitorConfig
from ..core import sketches, stats
from ..core.breaker import BreakerSignal
from ..core.events import Limits, PredictionBatch, PredictionDecoder, TimeRange, decode_labels
from ..core.monitor import BatchOutput, Monitor, load_references
from ..core.panes import PaneBuilder
from ..core.reference import Reference
from ..core.state import RecordKey, TaskId, encode_key, encode_value
from ..core.windows import PaneRecord, decode_record
from ..exporter import MonitorMetrics
from .checkpoint import Checkpointer, CommitFailed
from .clients import Connection, ensure_topics, make_consumer
from .compacted import STATE_CODEC, CompactedTopicReader
from .progress import Progress

__all__ = ["MonitorService", "ServiceStats"]

logger = logging.getLogger(__name__)

#: Largest output record (alert, report, dead letter headers aside) we produce; bigger ones are trimmed.
MAX_OUTPUT_BYTES = 900_000

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


@dataclass
class ServiceStats:
    messages: int = 0  # processed in committed transactions and the open one
    dead_letters: int = 0
    alerts: int = 0
    signals: int = 0
    batches: int = 0
    windows: int = 0  # drift windows evaluated (again after a rewind)
    commits: int = 0
    page_commits: int = 0  # commits started before the interval because a batch paged (see PAGE_POLL_S)
    aborts: int = 0  # transactions aborted (then rewound and redone)
    restored_tasks: int = 0
    restored_join_entries: int = 0  # pending label-join entries read back with restored tasks
    skipped_records: int = 0  # malformed records on the compacted topics
    restore_errors: int = 0  # model checkpoints that could not be used (those models started afresh)
    started: float = field(default_factory=time.monotonic)
    # (messages, time.perf_counter(), time.thread_time()) as the last batch left them: progress stamped by the
    # loop itself, for whoever measures its rate and CPU per event from another thread (one attribute: read whole)
    progress: tuple[int, float, float] = (0, 0.0, 0.0)
    # wall time per stage of the loop (consume, decode, core, publish, commit): where a batch's time goes
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


STAGES = ("consume", "decode", "core", "publish", "commit")

#: A batch that published an alert or a breaker signal starts a commit right after it: with exactly-once, a
#: page is visible to read_committed readers only once its transaction commits, and waiting for the interval
#: (``kafka.commit_interval_s``) would add up to that much to every page. Pages are rare, so the extra
#: transactions cost little. While a page waits for a commit still in flight, ``consume()`` waits at most
#: this long, so the loop comes back to start the page's commit soon after the one in flight has settled.
PAGE_POLL_S = 0.02

#: Work processed and not committed for this long (or 3 commit intervals, if longer) is a stall: the broker is
#: away, a commit is wedged or refused. The progress line then says since when instead of a lag it cannot
#: know, and ``stream_monitor_stalled_seconds`` counts up.
STALL_S = 5.0


class ConsumerFailed(RuntimeError):
    """The consumer reported a fatal error: it must be replaced."""


@dataclass
class _Consumed:
    """A consumed batch, sorted into tasks, its predictions being decoded (on the decode thread when ahead)."""

    by_task: dict[TaskId, list[Message]]
    decoding: dict[TaskId, tuple[list[Message], list[Message], Future[PredictionBatch]]]  # predictions, labels


class MonitorService:
    """Runs the monitor against Kafka until :meth:`stop` (or SIGTERM via the CLI)."""

    def __init__(self, cfg: MonitorConfig, bootstrap: str, log_every_s: float = 10.0,
                 metrics: MonitorMetrics | None = None) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.conn = Connection.from_config(cfg, bootstrap)
        self.metrics = metrics
        self.stats = ServiceStats()
        self.log_every_s = log_every_s
        # task -> its state: N (predictions/labels partition N), pN (panes partition N, scale-out)
        self.tasks: dict[TaskId, Monitor | PaneBuilder] = {}
        self._positions: dict[tuple[str, int], int] = {}  # next offset to process, per assigned partition
        # per partition: the end offset the broker gave, and whether we were at it (see _read_to_end)
        self._ends: dict[tuple[str, int], tuple[int, bool]] = {}
        self._committed_by_us: dict[tuple[str, int], int] = {}  # what our last commit said, per partition
        # tasks revoked after a commit, reusable if nobody moved on
        self._parked: dict[TaskId, Monitor | PaneBuilder] = {}
        self._stop = threading.Event()
        self._warned_topics: set[str] = set()
        self._references = load_references(cfg)  # loaded once, shared by every task; checked like check-config
        self._with_labels = any(m.uses_labels for m in cfg.models.values())  # labels and the join changelog
        self._times = TimeRange(cfg.events.min_timestamp, cfg.events.max_future_s)
        self._limits = Limits(cfg.events.max_message_bytes, cfg.events.max_string_length)
        self._predictions = PredictionDecoder(cfg.models, self._times, limits=self._limits)
        if cfg.models and not self._predictions.compiled:
            logger.warning("the compiled decoder is not built (no C compiler when the package was installed): "
                           "decoding at about half its speed; reinstall with a C compiler for full throughput")
        if cfg.models and not stats.compiled():
            logger.warning("the compiled statistics kernel is not built (no C compiler when the package was "
                           "installed): windows are evaluated with numpy, slower, with the same decisions")
        if cfg.models and not sketches.compiled():
            logger.warning("the compiled pane kernel is not built (no C compiler when the package was installed): "
                           "panes are counted with numpy, slower, with the same counts")
        self._breaker_latest: dict[str, BreakerSignal] = {}
        self._scale_out = cfg.scale_out.enabled
        self._published_refs: dict[str, Reference] = {}  # scale-out: warm-up references on topics.references
        self._sources = 1  # scale-out: partitions of the predictions topic
        self._failures = 0
        self._unknown_names: set[str] = set()
        self._breaker_skipped = 0
        self._discard = False  # set when run() fails: nothing more is committed
        self.failure: BaseException | None = None  # why run() ended, when it did not end by stop()
        self._progress = Progress(metrics)
        self._ahead: _Consumed | None = None  # consumed, decoding, not processed yet (batch.decode_ahead)
        self.commit_on_page = True  # False: pages wait for the interval's commit (benchmarks compare the two)
        self._page_waiting = False  # a published page's records are in no commit started yet
        self._last_commit_wall = time.time()  # the last commit that went through (or the start)
        self._pending = False  # work processed and not committed yet, as of the last check
        self._stall_s = max(STALL_S, 3 * cfg.kafka.commit_interval_s)
        self._last_log = time.monotonic()
        self._decoder: ThreadPoolExecutor | None = None
        if metrics is not None:
            metrics.bind(lambda: list(self.tasks.values()))  # breaker states, pending joins: read at scrape
            metrics.bind_stalled(self._stalled_seconds)  # read at scrape: counts up while the loop is blocked

    def stop(self) -> None:
        self._stop.set()

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> ServiceStats:
        cfg = self.cfg
        tune_gc()
        self.conn.check()  # one clear line and a non-zero exit when Kafka cannot be reached
        parts = ensure_topics(cfg, self.conn)
        self._state_parts = parts.get(cfg.topics.state, 1)
        self._sources = parts.get(cfg.topics.predictions, cfg.topics.partitions)
        self._join_parts = parts.get(cfg.topics.join, 1)
        topics = [cfg.topics.predictions]
        if self._with_labels:
            topics.append(cfg.topics.labels)
            np_, nl = parts.get(cfg.topics.predictions), parts.get(cfg.topics.labels)
            if np_ and nl and np_ != nl:
                logger.warning("%s has %d partitions and %s %d: a model's labels only join its predictions when "
                               "both topics have the same partition count and key (the model name; in scale-out "
                               "mode the event id)",
                               cfg.topics.predictions, np_, cfg.topics.labels, nl)
        self._refs: CompactedTopicReader | None = None
        if self._scale_out:
            topics.append(cfg.topics.panes)
            self._refs = CompactedTopicReader(self.conn, cfg.topics.references, validate=Reference.from_dict)
            self._published_refs = {r.model: r for r in self._refs.sync(timeout=60).values()}
        self.checkpointer = Checkpointer(cfg, self.conn, on_wait=self._tick_progress)
        self._breakers = CompactedTopicReader(self.conn, cfg.topics.breaker, validate=BreakerSignal.from_dict)
        for sig in self._breakers.sync(timeout=60).values():
            self._breaker_latest[sig.model] = sig
        self._topics = topics
        self._new_consumer()
        logger.info("consuming %s as group %s from %s (exactly-once: transactional.id %s, commit every %.1fs)",
                    ", ".join(topics), cfg.kafka.group_id, self.bootstrap,
                    self.checkpointer.producer_id, cfg.kafka.commit_interval_s)
        self._last_commit_wall = time.time()
        self._last_log = last_commit = time.monotonic()
        seconds = self.stats.seconds
        if cfg.batch.decode_ahead and self._predictions.compiled:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="decode-ahead")
        try:
            while not self._stop.is_set():
                self._settle()  # before consuming: a failed commit rewinds, and the next batch comes after the seek
                t0 = time.perf_counter()
                msgs = self.consumer.consume(cfg.batch.max_messages,
                                             PAGE_POLL_S if self._page_waiting else cfg.batch.timeout_s)
                seconds["consume"] += time.perf_counter() - t0
                self._follow_breakers()
                if msgs or self._ahead is not None:
                    try:
                        consumed = self._consumed(msgs) if msgs else None
                        if self._decoder is None:
                            if consumed is not None:
                                self._process_consumed(consumed)
                        else:  # the batch before this one, then this one waits (decoding) until the next turn
                            self._process_ahead()
                            self._ahead = consumed
                    except CommitFailed as exc:  # an output was refused: aborted; redo from the last commit
                        self._failed(str(exc))
                    except ConsumerFailed as exc:
                        self._replace_consumer(str(exc))
                now = time.monotonic()
                page = self._page_commit_due()
                if page or now - last_commit >= cfg.kafka.commit_interval_s:
                    t0 = time.perf_counter()
                    if not self.checkpointer.committing:  # this commit starts: it carries every page so far
                        self._page_waiting = False
                    self._commit_or_rewind(wait=False)  # completes while the next batches are processed
                    seconds["commit"] += time.perf_counter() - t0
                    last_commit = time.monotonic()
                    self.stats.page_commits += page
                self._tick_progress()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self._ahead = None  # consumed, not processed: its offsets are not committed, the next owner reads it
            if self._decoder is not None:
                self._decoder.shutdown(wait=True)
            try:
                if self.failure is None:
                    self._commit_or_rewind(final=True)
                else:  # a batch may be half processed: its state must not be committed, abort it all
                    self._discard = True
                    self.checkpointer.abort()
            finally:
                self.consumer.close()  # revokes: nothing open to commit by now
                self._breakers.close()
                if self._refs is not None:
                    self._refs.close()
                self.checkpointer.close()
                self._log_progress()
        return self.stats

    def _new_consumer(self) -> None:
        self.consumer = make_consumer(self.cfg, self.conn)
        self.consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _replace_consumer(self, why: str) -> None:
        """A consumer in a fatal state (e.g. fenced after a coordinator moved) is closed and replaced; its
        uncommitted work is aborted and redone by the new one from the committed state and offsets."""
        logger.error("consumer failed (%s): replacing it; work since the last commit is redone", why)
        self._discard = True
        self._ahead = None
        try:
            self.checkpointer.abort()
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.close()
        finally:
            self._discard = False
        self.tasks.clear()
        self._positions.clear()
        self._parked.clear()
        self._failed(f"consumer replaced: {why}", rewind=False)  # counted like any abort; the new consumer's
        self._new_consumer()                                    # assignment restores the tasks

    # -- rebalances ------------------------------------------------------------------------------------
    def _task(self, topic: str | None, partition: int) -> TaskId:
        """The task a partition belongs to (see the module doc)."""
        return TaskId(partition, self._scale_out and topic == self.cfg.topics.panes)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tasks = sorted({self._task(tp.topic, tp.partition) for tp in partitions} - set(self.tasks))
        if not tasks:
            return
        committed = self._committed(consumer, partitions)
        reuse = [t for t in tasks if t in self._parked and all(
            committed.get((tp.topic, tp.partition)) == self._committed_by_us.get((tp.topic, tp.partition))
            for tp in partitions if self._task(tp.topic, tp.partition) == t)]
        for t in reuse:
            self.tasks[t] = self._parked.pop(t)
        self._parked.clear()
        fresh = [t for t in tasks if t not in reuse]
        if fresh:
            self._restore_tasks(fresh)
        logger.info("assigned %s: tasks %s (%d kept in memory, %d restored)",
                    ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions), tasks, len(reuse), len(fresh))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # before the partitions go, their work must be committed (unless it is being thrown away), the batch
        # consumed before this rebalance included
        ok = False
        if not self._discard:
            try:
                self._process_ahead()
            except CommitFailed as exc:  # aborted: nothing since the last commit is kept
                self._failed(str(exc), rewind=False)
            else:
                ok = self._commit_or_rewind(rewind=False)
        self._ahead = None
        gone = {self._task(tp.topic, tp.partition) for tp in partitions}
        if not ok and set(self.tasks) - gone:  # cooperative revoke of some partitions: rewind the others
            self._rewind_all(consumer, exclude=gone)
        for t in sorted(gone & set(self.tasks)):
            mon = self.tasks.pop(t)
            if ok:
                self._parked[t] = mon
        for tp in partitions:
            self._positions.pop((tp.topic, tp.partition), None)
        logger.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.warning("lost %s (session timed out): their uncommitted work is aborted",
                       ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self.checkpointer.abort()
        self._ahead = None
        self._rewind_all(consumer, exclude={self._task(tp.topic, tp.partition) for tp in partitions})
        for tp in partitions:
            self.tasks.pop(self._task(tp.topic, tp.partition), None)
            self._positions.pop((tp.topic, tp.partition), None)
        self._parked.clear()

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition],
                   required: bool = False) -> dict[tuple[str, int], int]:
        """The group's committed offsets (stable: pending transactional commits are waited for). ``required``:
        retry until the transaction timeout, then raise; else {} on failure."""
        deadline = time.monotonic() + self.cfg.kafka.transaction_timeout_s + 30
        while True:
            try:
                got = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in partitions],
                                         timeout=max(1.0, deadline - time.monotonic()))
                return {(tp.topic, tp.partition): tp.offset for tp in got}
            except KafkaException as exc:
                if not required:
                    logger.warning("committed offsets not readable (%s): restoring tasks from the state topic",
                                   exc.args[0].str())
                    return {}
                if time.monotonic() > deadline:
                    raise
                logger.warning("committed offsets not readable yet (%s); retrying", exc.args[0].str())
                time.sleep(1.0)

    def _restore_tasks(self, tasks: list[str]) -> None:
        """Build the monitors of ``tasks`` from the state and join topics (read_committed, to their end)."""
        cfg = self.cfg
        timeout = cfg.kafka.transaction_timeout_s + 60  # a dead instance's open transaction ends by then
        state = self._read(cfg.topics.state, sorted({t.number % self._state_parts for t in tasks}), timeout)
        join = (self._read(cfg.topics.join, sorted({t.number % self._join_parts for t in tasks}), timeout)
                if self._with_labels else {})
        per_task: dict[TaskId, tuple[dict[RecordKey, Any], dict[RecordKey, Any]]] = {t: ({}, {}) for t in tasks}
        for (task, key), value in (state | join).items():
            if task in per_task:
                per_task[task][key.topic == "join"][key] = value
        for t in tasks:
            st, jn = per_task[t]
            mon: Monitor | PaneBuilder
            if self._scale_out and t.merged:
                mon = Monitor(cfg, self._references, merged=True, sources=self._sources)
                restored = mon.restore(st, jn)
                for ref in self._published_refs.values():
                    mon.adopt_reference(ref)
            elif self._scale_out:
                refs = {**self._published_refs, **self._references}
                mon = PaneBuilder(cfg, t.number, self._sources, refs)
                restored = mon.restore(st, jn, refs)
            else:
                mon = Monitor(cfg, self._references)
                restored = mon.restore(st, jn)
            for sig in self._breaker_latest.values():
                mon.observe_breaker(sig)
            self.tasks[t] = mon
            self.stats.restored_tasks += 1
            self.stats.restored_join_entries += sum(mm.join.pending for mm in mon.models.values() if mm.join)
            if restored:
                logger.info("task %s: restored %s from %s", t, ", ".join(restored), cfg.topics.state)
            self.stats.restore_errors += mon.counters.restore_errors
            if mon.counters.restore_errors and self.metrics is not None:
                self.metrics.checkpoint_errors.inc(mon.counters.restore_errors)

    def _read(self, topic: str, partitions: list[int], timeout: float) -> dict[tuple[TaskId, RecordKey], Any]:
        """The state records of a state or join topic's partitions (unusable ones are skipped and counted)."""
        reader = CompactedTopicReader(self.conn, topic, partitions=partitions, codec=STATE_CODEC)
        try:
            latest = reader.sync(timeout=timeout)
        finally:
            reader.close()
        self._count_skipped(reader.skipped)
        return latest

    def _count_skipped(self, n: int) -> None:
        """Malformed records skipped on a compacted topic: in the stats and in /metrics."""
        if n:
            self.stats.skipped_records += n
            if self.metrics is not None:
                self.metrics.checkpoint_errors.inc(n)

    # -- commits ---------------------------------------------------------------------------------------
    def _commit_or_rewind(self, rewind: bool = True, final: bool = False, wait: bool = True) -> bool:
        """Commit outputs, changed state and offsets as one transaction. On failure the transaction is aborted
        and (``rewind``) every task goes back to its last committed state and offsets; returns success.

        Without ``wait`` the commit completes in the background while processing goes on (outputs produced
        meanwhile are held for the next transaction, see :class:`Checkpointer`): its outcome is taken by
        :meth:`_settle` or the next commit; if the previous commit is still running, this one waits for the
        next interval."""
        cp = self.checkpointer
        try:
            if not cp.settle(block=wait):
                return True
            dirty = any(mm.dirty for mon in self.tasks.values() for mm in mon.models.values())
            if not cp.open and not dirty and self._positions.items() <= self._committed_by_us.items():
                return True
            for t, mon in self.tasks.items():
                changes = mon.checkpoint()
                for model, record in changes.outputs:  # scale-out: pieces for the model's deciding task
                    cp.produce(self.cfg.topics.panes, model.encode(), orjson.dumps(record))
                for key, value in changes.records.items():  # None: a tombstone, compaction drops the key
                    topic, parts = ((self.cfg.topics.join, self._join_parts) if key.topic == "join"
                                    else (self.cfg.topics.state, self._state_parts))
                    cp.produce(topic, encode_key(t, key), encode_value(key, value), partition=t.number % parts)
            positions = dict(self._positions)
            offsets = [TopicPartition(topic, p, off) for (topic, p), off in positions.items()]
            cp.commit(offsets, self.consumer.consumer_group_metadata(), wait=wait,
                      done=functools.partial(self._committed_now, positions))
        except (CommitFailed, KafkaException) as exc:
            if isinstance(exc, KafkaException):
                cp.abort(exc.args[0])
            self._failed(str(exc), rewind=rewind and not final)
            return False
        return True

    def _committed_now(self, positions: dict[tuple[str, int], int]) -> None:
        """A transaction went through: its offsets are the group's."""
        self._last_commit_wall = time.time()
        if self.metrics is not None:
            self.metrics.last_commit.set(self._last_commit_wall)
        self._failures = 0
        self.stats.commits += 1
        self._committed_by_us.update(positions)

    def _page_commit_due(self) -> bool:
        """Whether a page waits and its commit can start now: none in flight, or the one in flight has settled
        (its outcome is taken here; a failure rewinds, and the redone batch pages again)."""
        if not self._page_waiting:
            return False
        if self.checkpointer.committing:
            self._settle()
        return self._page_waiting and not self.checkpointer.committing

    def _settle(self) -> None:
        """Take the outcome of a commit running in the background, if it has one (a failure rewinds)."""
        try:
            self.checkpointer.settle(block=False)
        except CommitFailed as exc:
            self._failed(str(exc))

    def _failed(self, why: str, rewind: bool = True) -> None:
        """A transaction was aborted: count it, say why, and (``rewind``) redo the work from the last commit
        after a backoff that grows with consecutive failures (an operator may be fixing the cause)."""
        self.stats.aborts += 1
        self._failures += 1
        if self.metrics is not None:
            self.metrics.transaction_aborts.inc()
        logger.error("transaction aborted (%s); %s", why, "nothing of it was visible, redoing the work since the "
                     "last commit" if rewind else "nothing of it was visible")
        if rewind:
            self._rewind_all(self.consumer)
            self._stop.wait(min(30.0, 0.5 * 2 ** min(self._failures - 1, 6)))

    def _rewind_all(self, consumer: Consumer, exclude: set[TaskId] | None = None) -> None:
        """Every task back to its last committed state; the consumer back to the committed offsets."""
        assigned = [tp for tp in consumer.assignment() if self._task(tp.topic, tp.partition) not in (exclude or set())]
        tasks = sorted({self._task(tp.topic, tp.partition) for tp in assigned})
        for t in tasks:
            self.tasks.pop(t, None)
        self._ahead = None  # consumed before the rewind: read again from the committed offsets
        self._positions.clear()
        self._parked.clear()
        if not tasks:
            return
        committed = self._committed(consumer, assigned, required=True)  # never guess where to resume
        self._restore_tasks(tasks)
        reset = OFFSET_END if str(self.cfg.kafka.consumer.get("auto.offset.reset", "earliest")) in (
            "latest", "largest", "end") else OFFSET_BEGINNING
        for tp in assigned:
            off = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
            target = TopicPartition(tp.topic, tp.partition, off if off >= 0 else reset)
            for attempt in range(20):
                try:
                    consumer.seek(target)
                    break
                except KafkaException:
                    if attempt == 19:
                        raise
                    time.sleep(0.1)

    # -- processing ------------------------------------------------------------------------------------
    def _follow_breakers(self) -> None:
        for _, sig in self._breakers.poll():  # manual overrides (and our own echoes, ignored)
            if sig is None:
                continue
            self._breaker_latest[sig.model] = sig
            for mon in self.tasks.values():
                mon.observe_breaker(sig)
        self._count_skipped(self._breakers.skipped - self._breaker_skipped)
        self._breaker_skipped = self._breakers.skipped
        if self._refs is not None:
            skipped = self._refs.skipped
            for _, ref in self._refs.poll():  # warm-up references built by the deciding tasks
                if ref is None:
                    continue
                self._published_refs[ref.model] = ref
                for mon in self.tasks.values():
                    if isinstance(mon, PaneBuilder):
                        mon.set_reference(ref.model, ref)
                    else:
                        mon.adopt_reference(ref)
            self._count_skipped(self._refs.skipped - skipped)

    def _consumed(self, msgs: list[Message]) -> _Consumed:
        """A consumed batch sorted into tasks, its predictions' decoding started (on the decode thread when
        decoding ahead, else when asked for)."""
        by_task = self._by_task(msgs)
        decoding = {}
        topic_labels = self.cfg.topics.labels
        for t, good in by_task.items():
            mon = self.tasks.get(t)
            if mon is None or (isinstance(mon, Monitor) and mon.merged):
                continue  # not ours, or pane records (decoded as they are processed)
            if self._with_labels and topic_labels in set(map(Message.topic, good)):  # not subscribed otherwise
                pred_msgs = [m for m in good if m.topic() != topic_labels]
                label_msgs = [m for m in good if m.topic() == topic_labels]
            else:
                pred_msgs, label_msgs = good, []
            values = list(map(Message.value, pred_msgs))
            if self._decoder is not None:
                fut = self._decoder.submit(self._predictions.decode, values)
            else:
                started = time.perf_counter()
                fut = Future()
                fut.set_result(self._predictions.decode(values))
                self.stats.seconds["decode"] += time.perf_counter() - started
            decoding[t] = (pred_msgs, label_msgs, fut)
        return _Consumed(by_task, decoding)

    def _process_ahead(self) -> None:
        """Process the batch consumed before and decoded ahead (if any)."""
        consumed, self._ahead = self._ahead, None
        if consumed is not None:
            self._process_consumed(consumed)

    def _process_consumed(self, consumed: _Consumed) -> None:
        """Everything of a consumed batch but its decoding, in order, on this thread."""
        for t, good in consumed.by_task.items():
            mon = self.tasks.get(t)
            if mon is None:  # not ours (a stale fetch around a rebalance): its owner processes it
                continue
            if isinstance(mon, Monitor) and mon.merged:
                self._process_panes(mon, good)
            elif t in consumed.decoding:
                self._process_task(t, mon, *consumed.decoding[t])

    def _by_task(self, msgs: list[Message]) -> dict[TaskId, list[Message]]:
        # The common batch (no errors, one partition) is sorted without a Python loop over its messages
        parts = set(map(Message.partition, msgs))
        by_task: dict[TaskId, list[Message]] = defaultdict(list)
        one_clean_partition = len(parts) == 1 and not any(map(Message.error, msgs)) and not (
            self._scale_out and self.cfg.topics.panes in set(map(Message.topic, msgs)))
        if one_clean_partition:
            by_task[TaskId(parts.pop())] = msgs
        for m in () if one_clean_partition else msgs:
            err = m.error()
            if err is None:
                by_task[self._task(m.topic(), m.partition())].append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal() or err.code() == KafkaError._FATAL:
                raise ConsumerFailed(err.str())
            elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                if m.topic() not in self._warned_topics:
                    self._warned_topics.add(m.topic() or "")
                    logger.warning("topic %s does not exist yet; waiting for it", m.topic())
            else:
                logger.warning("consumer error: %s", err)
        return by_task

    def _process_panes(self, mon: Monitor, msgs: list[Message]) -> None:
        """Scale-out, deciding task: pane records in, decisions out (a malformed record is dead-lettered)."""
        started = time.perf_counter()
        records: list[PaneRecord] = []
        kept: list[Message] = []
        for m in msgs:
            try:
                records.append(decode_record(orjson.loads(m.value() or b"null")))
                kept.append(m)
            except (orjson.JSONDecodeError, ValueError) as exc:
                self._dead_letter(m, f"pane record: {exc}")
        decoded = time.perf_counter()
        self.stats.seconds["decode"] += decoded - started
        try:
            out = mon.process_panes(records)
        except Exception as exc:  # a defect must not stop the other models' decisions
            logger.exception("processing pane records failed; they go to the dead-letter topic")
            for m in kept:
                self._dead_letter(m, f"processing error: {type(exc).__name__}: {exc}", "process")
            out = BatchOutput()
        for i, why in out.rejected:
            self._dead_letter(kept[i], why, "process")
        for ref in out.references:  # every pane builder bins with it once it is committed
            self.checkpointer.produce(self.cfg.topics.references, ref.model.encode(), orjson.dumps(ref.to_dict()))
        self._publish_and_advance(out, decoded, [msgs])
        if self.metrics is not None:
            self.metrics.observe_batch(out, mon, time.perf_counter() - started, {self.cfg.topics.panes: len(msgs)},
                                       len(msgs) - len(kept) + len(out.rejected))

    def _process_task(self, task: TaskId, mon: Monitor | PaneBuilder, pred_msgs: list[Message],
                      label_msgs: list[Message], decoding: Future[PredictionBatch]) -> None:
        started = time.perf_counter()  # decode stage: waiting for the decode thread, dead letters, labels
        dead_before = self.stats.dead_letters
        topic_labels = self.cfg.topics.labels
        preds = decoding.result()
        for r in preds.rejects:
            self._dead_letter(pred_msgs[r.index], r.reason, kind=r.kind)
        labels, label_pos = self._decode_labels(label_msgs)
        decoded = time.perf_counter()
        self.stats.seconds["decode"] += decoded - started
        try:
            predictions_idle, labels_idle = self._idle_checks(task, pred_msgs, label_msgs)
            out = mon.process_batch(preds, labels, predictions_idle=predictions_idle, labels_idle=labels_idle)
        except Exception as exc:  # a defect must not stop monitoring of every other model
            logger.exception("processing failed; the batch goes to the dead-letter topic")
            valid = sorted([p for me in preds.models.values() for p in me.positions] + list(preds.unknown))
            for i in valid:
                self._dead_letter(pred_msgs[i], f"processing error: {type(exc).__name__}: {exc}", "process")
            for i in label_pos:
                self._dead_letter(label_msgs[i], f"processing error: {type(exc).__name__}: {exc}", "process")
            out = BatchOutput()
        if self.cfg.events.unknown_models == "dead_letter":
            for i in out.unknown_predictions:
                self._dead_letter(pred_msgs[i], f"model {preds.unknown[i]!r} is not in the config", "route")
            for i in out.unknown_labels:
                self._dead_letter(label_msgs[label_pos[i]], f"model {labels[i]['model']!r} has no label "
                                  "monitoring in the config", "route")
        self._publish_and_advance(out, decoded, [pred_msgs, label_msgs])
        if self.metrics is not None:
            topics = {self.cfg.topics.predictions: len(pred_msgs)} | (
                {topic_labels: len(label_msgs)} if label_msgs else {})
            unknown: dict[str, int] = {}
            names = [preds.unknown[i] for i in out.unknown_predictions] + [labels[i]["model"]
                                                                          for i in out.unknown_labels]
            for name in names:
                if name not in self._unknown_names and len(self._unknown_names) >= 50:
                    name = "_other"  # a label per unknown model, but bounded: names come from data
                else:
                    self._unknown_names.add(name)
                unknown[name] = unknown.get(name, 0) + 1
            self.metrics.observe_batch(out, mon, time.perf_counter() - started, topics,
                                       self.stats.dead_letters - dead_before, unknown)

    def _idle_checks(self, task: TaskId, pred_msgs: list[Message], label_msgs: list[Message]
                     ) -> tuple[Callable[[], bool], Callable[[], bool]]:
        """Whether the task's predictions, and its labels, were read to their end with this batch: asked of
        the broker only when a stall would change something (:meth:`_read_to_end`)."""
        return (functools.partial(self._read_to_end, task, pred_msgs, self.cfg.topics.predictions),
                functools.partial(self._read_to_end, task, label_msgs, self.cfg.topics.labels))

    def _read_to_end(self, task: TaskId, msgs: list[Message], topic: str | None = None) -> bool:
        """Whether the task's partition of ``msgs``' topic (or of ``topic`` when the batch has none of it) has
        been read to its end: only a stream with nothing left to read may be judged stalled (see
        :mod:`..core.labels`); a replay or a consumer catching up is behind, not stalled. Asked only when a
        stall would change something (rarely), so it asks the broker for the end offset rather than trust the
        last fetch's (the other topic's records may have been fetched first). Unknown counts as not at the
        end. A batch without records of a topic says nothing about it: the labels' batch of a consumer that
        fetched the labels first must not call the predictions stream stalled (its early labels would expire
        before their predictions are read)."""
        if msgs:
            tp, nxt = TopicPartition(msgs[-1].topic(), msgs[-1].partition()), msgs[-1].offset() + 1
        elif topic is None or not self._with_labels:
            return True
        else:
            tp = TopicPartition(topic, task.number)
            nxt = self._positions.get((topic, tp.partition), -1)
        key = (tp.topic, tp.partition)
        try:
            if nxt < 0:  # nothing of it processed yet: where the consumer stands (local, no request)
                nxt = self.consumer.position([tp])[0].offset
            known = self._ends.get(key)
            if known is not None and (0 <= nxt < known[0] or nxt < 0):
                # the broker said the end is further on (or nothing was read since it answered): no need to
                # ask again before we get there
                return nxt < 0 and known[1]
            marks = self.consumer.get_watermark_offsets(tp, timeout=5)
        except (KafkaException, RuntimeError, IndexError):
            return False
        if not marks or marks[1] < 0:
            return False
        at_end = nxt >= marks[1] or (nxt < 0 and marks[0] >= marks[1])
        self._ends[key] = (marks[1], at_end)
        return at_end

    def _publish_and_advance(self, out: BatchOutput, decoded: float, parts: list[list[Message]]) -> None:
        """Publish a task's outputs (the core stage ran since ``decoded``) and move its positions past ``parts``
        (one list per topic partition, in offset order)."""
        published = time.perf_counter()
        self.stats.seconds["core"] += published - decoded
        self._publish(out)
        self.stats.seconds["publish"] += time.perf_counter() - published
        for part in parts:  # offsets grow within a partition: its last message says it all
            if part:
                m = part[-1]
                self._positions[(m.topic() or "", m.partition())] = m.offset() + 1
        self.stats.messages += sum(map(len, parts))
        self.stats.progress = (self.stats.messages, time.perf_counter(), time.thread_time())
        self.stats.batches += 1
        self.stats.windows += len(out.results)

    def _decode_labels(self, msgs: list[Message]) -> tuple[list[dict[str, Any]], list[int]]:
        if not msgs:
            return [], []
        events, positions, rejects = decode_labels([m.value() for m in msgs], self._times, self._limits)
        for r in rejects:
            self._dead_letter(msgs[r.index], r.reason, kind=r.kind)
        return events, positions

    def _publish(self, out: BatchOutput) -> None:
        produce = self.checkpointer.produce
        for a in out.alerts:
            produce(self.cfg.topics.alerts, a.dedup_key.encode(), _bounded(a.to_dict()))
            self.stats.alerts += 1
            logger.info("%s alert %s: %s", a.status, a.alert_id, a.message)
        for sig in out.signals:
            produce(self.cfg.topics.breaker, sig.model.encode(), _bounded(sig.to_dict()))
            self.stats.signals += 1
            logger.warning("breaker %s -> %s (epoch %d): %s", sig.model, sig.state, sig.epoch, sig.reason)
        if (out.alerts or out.signals) and self.commit_on_page:
            self._page_waiting = True  # commit right after this batch (see PAGE_POLL_S)
        for report in out.reports:
            produce(self.cfg.topics.metrics, report["model"].encode(), _bounded(report))

    def _dead_letter(self, m: Message, reason: str, stage: str = "decode", kind: str | None = None) -> None:
        headers = [
            ("error.reason", reason[:2000].encode()),
            ("error.stage", stage.encode()),
            *([("error.class", kind.encode())] if kind else []),
            ("source.topic", (m.topic() or "").encode()),
            ("source.partition", str(m.partition()).encode()),
            ("source.offset", str(m.offset()).encode()),
        ]
        self.checkpointer.produce(self.cfg.topics.dead_letter, m.key(), m.value(), headers)
        self.stats.dead_letters += 1
        logger.warning("dead-lettered %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), reason[:300])

    def _tick_progress(self) -> None:
        """Between batches, and while a commit or a new producer is waited for: note whether work waits to be
        committed, and log the progress line every ``log_every_s``."""
        cp = getattr(self, "checkpointer", None)
        self._pending = cp is not None and (cp.open or cp.committing) or not (
            self._positions.items() <= self._committed_by_us.items())
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            self._log_progress()

    def _stalled_since(self) -> float | None:
        """Wall time of the last commit, when work has waited since for longer than the stall threshold."""
        since = self._last_commit_wall
        return since if self._pending and time.time() - since >= self._stall_s else None

    def _stalled_seconds(self) -> float:
        since = self._stalled_since()
        return 0.0 if since is None else time.time() - since

    def _log_progress(self) -> None:
        logger.info("%s", self._progress.line(self.stats, getattr(self, "consumer", None), self._positions,
                                              len(self.tasks), self._stalled_since()))


def _bounded(record: dict[str, Any]) -> bytes:
    """JSON of an output record, trimmed of its details when it would exceed :data:`MAX_OUTPUT_BYTES`, so no
    input can make an output unwritable."""
    data = orjson.dumps(record)
    if len(data) <= MAX_OUTPUT_BYTES:
        return data
    slim = dict(record)
    slim["details"] = {"truncated": f"details dropped: the record was {len(data)} bytes"}
    if isinstance(slim.get("features"), list):
        slim["features"] = [{k: v for k, v in f.items() if k != "details"} for f in slim["features"][:50]]
    if isinstance(slim.get("findings"), list):
        slim["findings"] = slim["findings"][:200]
    data = orjson.dumps(slim)
    if len(data) <= MAX_OUTPUT_BYTES:
        return data
    keep = {k: slim[k] for k in ("alert_id", "dedup_key", "status", "severity", "kind", "model", "type", "window",
                                 "statistic", "value", "threshold", "epoch", "state") if k in slim}
    keep["truncated"] = True
    return orjson.dumps(keep)
