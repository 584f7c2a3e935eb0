"""The monitoring core: decoded events in; alerts, breaker signals, reports and checkpoints out. No Kafka here.

:class:`ModelMonitor` owns one model's state: the reference (file or warm-up) and the windows, and its parts,
each with its own state record kinds (:mod:`.state`): the warm-up (:class:`~.warmup.WarmUp`), the evaluation
of closed windows (:class:`~.evaluation.WindowEvaluator`: rolling or calendar reference, evidence, drift tests),
the label side (:class:`~.tracking.LabelTracker`: the label join, performance windows and concept-drift
detectors) and, in scale-out mode with count windows, the merge of the partitions' events
(:class:`~.windows.SourceMerge`).
:class:`Monitor` routes a batch of events to the model monitors and runs the alert policy on what they find.
The Kafka edge (``stream_monitor.kafka.runner``) keeps one :class:`Monitor` per input partition, feeds
:meth:`Monitor.process_batch` with each consumed batch and publishes what it returns.

**Determinism.** Given the same events in the same order, a monitor produces the same windows, alerts (ids
and statuses), breaker decisions and reports however the stream was cut into batches: samples are keyed by
event id (:mod:`.keys`), time windows advance their watermark event by event, the label side advances record
by record in event time (:mod:`.tracking`), and nothing draws random numbers. **Checkpoints**
(:meth:`Monitor.checkpoint`) are plain, versioned data (:mod:`.state`): a small ``core`` record per model plus
one record per pane, history pane, warm-up chunk and pair sample, each rewritten only when it changed
(tombstones for the ones that went away); :meth:`Monitor.restore` rebuilds exactly the state they describe. A
restored monitor continues as if it had never stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, MonitorConfig
from .alerts import Alert, AlertPolicy, WindowInfo
from .breaker import BreakerSignal, BreakerTicks, CircuitBreaker, reads_labels
from .columns import Columns, build_columns, column_names
from .drift import Finding
from .concept import ConceptDriftDetectors
from .evaluation import WindowEvaluator, WindowResult
from .events import ModelEvents, PredictionBatch
from .keys import key_fraction
from .labels import LabelJoin, PerformanceTracker, counts_from_plain, pairs_from_rows
from .sketches import Pane, clip
from .state import RecordKey, by_model, parts_of
from .tracking import LabelOutput, LabelTracker
from .reference import CalendarReference, Reference, RollingReference
from .segments import SegmentedPane
from .warmup import WarmUp
from .windows import (ClosedWindow, CountWindows, MergedCountWindows, MergedTimeWindows, PaneRecord, SourceMerge,
                      TimeWindows)

__all__ = ["BatchOutput", "Checkpoint", "Monitor", "ModelMonitor", "WindowResult", "load_references"]

logger = logging.getLogger(__name__)

#: Version of the checkpoint records written by :meth:`ModelMonitor.checkpoint`.
FORMAT = 1


@dataclass
class BatchOutput:
    """What one batch produced: evaluated windows, alert events, breaker signals and window reports.

    State is not part of it: :meth:`Monitor.checkpoint` returns what changed since the last checkpoint, so the
    edge commits state with the outputs and offsets of every batch since then, as one unit.
    """

    results: list[WindowResult] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    signals: list[BreakerSignal] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # window reports for the metrics topic
    unknown_predictions: list[int] = field(default_factory=list)  # positions of events of unconfigured models
    unknown_labels: list[int] = field(default_factory=list)
    # scale-out, deciding stage: warm-up references built now (for every pane builder), and pane records
    # that could not be used (position, reason)
    references: list[Reference] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Checkpoint:
    """State records changed since the previous checkpoint: key -> plain value, None to delete the key.

    Keys are typed (:class:`~.state.RecordKey`); each kind's topic, schema and codec are in :mod:`.state`.
    """

    records: dict[RecordKey, Any] = field(default_factory=dict)
    # scale-out stage one: (model, pane record) to publish on the panes topic with this checkpoint
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def state(self) -> dict[RecordKey, Any]:
        """The records of the state topic."""
        return {k: v for k, v in self.records.items() if k.topic == "state"}

    @property
    def join(self) -> dict[RecordKey, Any]:
        """The records of the join topic."""
        return {k: v for k, v in self.records.items() if k.topic == "join"}


@dataclass
class MonitorCounters:
    events: int = 0
    sampled_out: int = 0
    unmonitored: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    alerts: int = 0
    restore_errors: int = 0  # models whose checkpoint was malformed (they start afresh)


class ModelMonitor:
    """One model's state.

    Parameters
    ----------
    cfg
        The model's validated config.
    reference
        A prebuilt reference (``reference.type: file``); loaded from ``cfg.reference.path`` when omitted.
    merged_idle_s
        Scale-out mode: windows are merged from the pane records of many partitions (:meth:`update_pane_record`)
        and a partition silent this long no longer holds time windows back; ``None``: events come as columns.
    sources
        Scale-out mode: how many prediction partitions may carry the model (time windows wait for each of them
        until it reports or goes idle).
    max_waiting
        Scale-out mode, count windows: the most events held for the merge order (``scale_out.max_waiting_events``).
    """

    def __init__(self, cfg: ModelConfig, reference: Reference | None = None, merged_idle_s: float | None = None,
                 sources: int = 1, max_waiting: int = 1_000_000) -> None:
        self.cfg = cfg
        self.merged_idle_s = merged_idle_s  # scale-out: windows merged from pane records (see :mod:`.panes`)
        self.sources = sources  # scale-out: partitions of the predictions topic
        self.max_waiting = max_waiting  # scale-out, count windows: scale_out.max_waiting_events
        self.numeric, self.categorical = column_names(
            cfg.features.numeric, cfg.features.categorical, cfg.prediction, cfg.monitor_score)
        if reference is None and cfg.reference.type == "file":
            reference = Reference.load(cfg.reference.path)  # type: ignore[arg-type]
        if reference is not None:
            self._check_reference(reference)
        self._preloaded = reference
        self.labels_enabled = cfg.uses_labels
        self._reset()

    def _check_reference(self, ref: Reference) -> None:
        if ref.binning.numeric != self.numeric or ref.binning.categorical != self.categorical:
            raise ValueError(
                f"models.{self.cfg.name}.reference.path: reference {ref.id} has numeric {list(ref.binning.numeric)} "
                f"and categorical {list(ref.binning.categorical)}, the config wants {list(self.numeric)} and "
                f"{list(self.categorical)}")
        seg = self.cfg.segments
        if seg.enabled and (ref.segments is None or ref.segments.keys != seg.keys
                            or any(sum(s.key == k for s in ref.segments.slices) > seg.top_n for k in seg.keys)):
            have = list(ref.segments.keys) if ref.segments is not None else []
            raise ValueError(
                f"models.{self.cfg.name}.segments.keys: reference {ref.id} has slices of segment keys {have} "
                f"(top_n as built), the config wants {list(seg.keys)} with top_n {seg.top_n}; rebuild it with "
                "`stream-monitor reference build`, which reads segments from the config")

    def _reset(self) -> None:
        cfg = self.cfg
        self.reference: Reference | None = None
        self.warmup = WarmUp(cfg.name, cfg.reference.size, self.merged_idle_s, self.sources)
        # scale-out with count windows: every partition's events in one order before the warm-up and windows
        self.merge = SourceMerge(self.sources, self.merged_idle_s, cfg.window.lateness_s, self.max_waiting) \
            if self.merged_idle_s is not None and cfg.window.by == "count" else None
        self.windows: CountWindows | TimeWindows | None = None
        self.evaluator: WindowEvaluator | None = None  # from the reference on
        # the join, performance, concept drift (scale-out: the pane builders join; this task gets their pairs)
        self.labels = LabelTracker(cfg, self.merged_idle_s, self.sources) if self.labels_enabled else None
        self.last_version = ""
        self.last_event_time: float | None = None  # largest prediction timestamp seen (not checkpointed)
        self.built_reference: Reference | None = None  # a warm-up reference just built (scale-out publishes it)
        self.stale_pieces = 0  # scale-out: events in pieces binned on another reference (not counted)
        self.dirty = False  # changed since the last checkpoint
        self._written: dict[str, Any] = {}  # record key -> stamp of what the last checkpoint wrote
        self._staged: list[Columns] = []  # events held until they may complete the warm-up or a pane
        self._staged_n = 0
        if self._preloaded is not None:
            self._start(self._preloaded)

    def _start(self, ref: Reference) -> None:
        cfg = self.cfg
        self.reference = ref
        w, cap = cfg.window, cfg.drift.sample_size
        slide = int(w.slide) if w.slide else None
        segs = ref.segments if cfg.segments.enabled else None
        if self.merged_idle_s is not None:
            self.windows = (MergedCountWindows(int(w.size), slide, ref.binning, cap, segs) if w.by == "count" else
                            MergedTimeWindows(w.size, w.slide, w.lateness_s, ref.binning, cap, self.merged_idle_s,
                                              self.sources, segs))
        elif w.by == "count":
            self.windows = CountWindows(int(w.size), slide, ref.binning, cap, segs)
        else:
            self.windows = TimeWindows(w.size, w.slide, w.lateness_s, ref.binning, cap, segs)
        self.evaluator = WindowEvaluator(cfg, ref, self.windows.n_panes)

    @property
    def late_events(self) -> int:
        return (self.windows.late_events if self.windows else 0) + (self.merge.late_events if self.merge else 0)

    def update(self, events: list[dict[str, Any]], keys: np.ndarray | None = None) -> list[WindowResult]:
        """Add decoded events of this model; returns the windows that closed, evaluated."""
        cfg = self.cfg
        return self.update_columns(build_columns(events, cfg.features.numeric, cfg.features.categorical,
                                                 cfg.prediction, cfg.monitor_score, keys, cfg.segments.keys))

    def update_columns(self, cols: Columns) -> list[WindowResult]:
        """Add this model's events as columns (:func:`~.columns.build_columns`); returns the windows that
        closed, evaluated.

        A few events that can neither complete the warm-up nor a pane of count windows are held (*staged*) and
        added with the next ones that can: the same events reach the panes in the same order, every window
        closes with the same event as without staging (so in the same batch), and a fleet of models that each
        get a few events per batch pays the panes' fixed cost per pane rather than per model and batch.
        :meth:`checkpoint` adds what is staged first (it can close nothing)."""
        self.dirty = True
        self._staged.append(cols)
        self._staged_n += cols.n
        if not self._may_close():
            return []
        return self._apply_staged()

    def _may_close(self) -> bool:
        """Whether the staged events may complete the warm-up or a pane (time windows: always)."""
        if self.reference is None:
            return self.warmup.n + self._staged_n >= self.warmup.size
        w = self.windows
        return not isinstance(w, CountWindows) or w.current_n + self._staged_n >= w.pane_size

    def _apply_staged(self) -> list[WindowResult]:
        cols = self._staged[0] if len(self._staged) == 1 else Columns.concat(self._staged)
        self._staged, self._staged_n = [], 0
        if self.reference is None:
            cols = self._warm_up(cols)
            if not cols.n:
                return []
        assert self.windows is not None
        return self._evaluate(self.windows.update(cols))

    def _warm_up(self, cols: Columns) -> Columns:
        """Add ``cols`` to the warm-up; once it is complete, build the reference. Returns the events left over
        for the windows (none while warming up)."""
        rest = self.warmup.add(cols)
        if rest is None:
            return cols.take(slice(0, 0))
        self._built()
        return rest

    def _warm_up_merged(self, cols: Columns | None, rec: PaneRecord) -> Columns | None:
        """Scale-out warm-up (:meth:`.warmup.WarmUp.add_merged`); returns the later events for the windows once
        the reference is built (None before)."""
        rest = self.warmup.add_merged(cols, rec)
        if rest is None:
            return None
        self._built()
        if isinstance(self.windows, MergedTimeWindows):
            self.windows.clock = self.warmup.clock  # the windows go on from where the partitions are
        self.warmup = WarmUp(self.cfg.name, self.cfg.reference.size, self.merged_idle_s, self.sources)
        return rest

    def _built(self) -> None:
        """The warm-up is complete: its reference is built and the windows start."""
        self._start(self._build_warmup_reference(self.warmup.take()))
        self.built_reference = self.reference
        logger.info("model %s: warm-up reference %s ready (%d events)", self.cfg.name, self.reference.id,
                    self.reference.pane.n)  # type: ignore[union-attr]

    def update_pane_record(self, rec: PaneRecord) -> list[WindowResult]:
        """Scale-out: add one pane record of a prediction partition (see :mod:`.panes`); returns the windows
        that closed, evaluated. Raises ``ValueError`` (...) on a malformed piece, before changing anything."""
        assert self.merged_idle_s is not None
        k, c, s = len(self.numeric), len(self.categorical), len(self.cfg.segments.keys)
        cols = Columns.from_dict(rec.raw, k, c, s) if rec.raw is not None else None
        pairs = pairs_from_rows(rec.pairs) if rec.pairs is not None else []
        counts = counts_from_plain(rec.predictions) if rec.predictions is not None else {}
        if (pairs or counts) and self.performance is None:
            raise ValueError(f"pairs for model {self.cfg.name!r}, which monitors no labels")
        piece = None
        if rec.pane is not None:
            if self.reference is not None and rec.ref == self.reference.id:
                segs = self.reference.segments if self.cfg.segments.enabled else None
                piece = (Pane.restore(self.reference.binning, rec.pane) if segs is None else
                         SegmentedPane.from_snapshot(self.reference.binning, rec.pane, segs))
            else:  # binned on another reference (one replaced since): its counts cannot be merged
                if not self.stale_pieces:
                    logger.warning("model %s: a piece from partition %d is binned on reference %s, not %s; "
                                   "such pieces are not counted", self.cfg.name, rec.source, rec.ref,
                                   self.reference.id if self.reference else None)
                self.stale_pieces += int(rec.pane.get("n", 0))
        self.dirty = True
        closed: list[ClosedWindow] = []
        if self.merge is not None:  # count windows: the partitions' events in the merge order first
            if cols is not None:
                self.merge.add(rec.source, cols)
            cols = self.merge.advance(rec.source, rec.at, rec.watermark)
            if cols is not None and self.reference is None:
                cols = self._warm_up(cols)
        elif self.reference is None:
            cols = self._warm_up_merged(cols, rec)
        if cols is not None and cols.n:
            self.last_version = clip(cols.version(-1))
            assert self.windows is not None
            if isinstance(self.windows, MergedTimeWindows):
                self.windows.add_columns(cols)
            else:
                closed += self.windows.update(cols)
        if piece is not None:
            assert isinstance(self.windows, (MergedCountWindows, MergedTimeWindows))
            self.last_version = piece.main_version or self.last_version
            closed += self.windows.add_piece(rec.index, piece)
        if self.labels is not None:
            self.labels.add_piece(counts, pairs, rec.source, rec.at, rec.label_wm)
        if rec.watermark is not None:
            self.last_event_time = max(self.last_event_time or rec.watermark, rec.watermark)
        if isinstance(self.windows, (MergedCountWindows, MergedTimeWindows)):
            closed += self.windows.advance(rec.source, rec.at, rec.watermark)
        return self._evaluate(closed)

    def observe_predictions(self, batch: ModelEvents) -> None:
        """Every prediction (before drift sampling) inside ``join.sample_rate`` enters the label join and the
        performance windows."""
        self.last_version = clip(batch.cols.version(-1))
        newest = float(batch.cols.event_time.max())
        if self.last_event_time is None or newest > self.last_event_time:
            self.last_event_time = newest
        self.dirty = True
        if self.labels is not None:
            self.labels.observe_predictions(batch.events(), batch.cols.key)

    def update_labels(self, events: list[dict[str, Any]]) -> None:
        """Add decoded label events of this model (see :meth:`.tracking.LabelTracker.update_labels`)."""
        if self.labels is not None and self.labels.join is not None:
            self.dirty = True
            self.labels.update_labels(events)

    def label_outputs(self) -> list[LabelOutput]:
        """The label side's decisions since the last call, in event-time order
        (:meth:`.tracking.LabelTracker.outputs`)."""
        return [] if self.labels is None else self.labels.outputs()

    # the label side's parts, for the edge, the exporter and tests
    @property
    def join(self) -> LabelJoin | None:
        return self.labels.join if self.labels is not None else None

    @property
    def performance(self) -> PerformanceTracker | None:
        return self.labels.performance if self.labels is not None else None

    @property
    def concept(self) -> ConceptDriftDetectors | None:
        return self.labels.concept if self.labels is not None else None

    def _evaluate(self, closed: list[ClosedWindow]) -> list[WindowResult]:
        """The windows that closed in one update, evaluated (:meth:`.evaluation.WindowEvaluator.evaluate`)."""
        if not closed:
            return []
        assert self.evaluator is not None
        return self.evaluator.evaluate(closed)

    # the evaluation's stores, for the edge, the exporter and tests
    @property
    def rolling(self) -> RollingReference | None:
        return self.evaluator.rolling if self.evaluator is not None else None

    @property
    def calendar(self) -> CalendarReference | None:
        return self.evaluator.calendar if self.evaluator is not None else None

    def _build_warmup_reference(self, cols: Columns) -> Reference:
        cfg = self.cfg
        ref = Reference.from_columns(cfg.name, "warmup", cols, self.numeric, self.categorical, cfg.drift.bins,
                                     cfg.drift.max_categories, cfg.drift.max_known_categories,
                                     cfg.drift.sample_size, cfg.segments.keys, cfg.segments.top_n)
        if cfg.reference.store_dir:
            path = Path(cfg.reference.store_dir) / f"{cfg.name}-{ref.id.replace(':', '-')}.json"
            ref.save(path)
            logger.info("model %s: warm-up reference saved to %s", cfg.name, path)
        return ref

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _key(self, kind: str, part: Any = "") -> RecordKey:
        return RecordKey(self.cfg.name, kind, str(part))

    def _pieces(self) -> Iterator[tuple[RecordKey, Any, Callable[[], Any]]]:
        """Every state record but ``core``: (key, stamp, plain value maker); the stamp changes with the value."""
        if self.reference is not None and self.cfg.reference.type != "file":
            ref = self.reference
            yield self._key("ref"), ref.id, ref.to_dict
        yield from self.warmup.pieces()
        if self.merge is not None:
            for part, stamp, make in self.merge.pieces():
                yield self._key("m", part), stamp, make
        if self.windows is not None:
            for pid, pane in self.windows.pieces():
                yield self._key("w", pid), pane.stamp, pane.snapshot
        if self.evaluator is not None:
            yield from self.evaluator.pieces()
        if self.labels is not None:
            yield from self.labels.pieces()

    def _core(self) -> dict[str, Any]:
        return {
            "v": FORMAT,
            "reference": self.reference.id if self.reference is not None else None,
            "warmup": self.warmup.snapshot(),
            "merge": self.merge.snapshot() if self.merge is not None else None,
            "last_version": self.last_version,
            "windows": self.windows.snapshot() if self.windows is not None else None,
            **(self.evaluator.snapshot() if self.evaluator is not None else {"rolling": None, "calendar": None}),
            **(self.labels.snapshot() if self.labels is not None else
               {"join": None, "performance": None, "concept": None, "label_clock": None}),
        }

    def checkpoint(self, extra: dict[str, Any]) -> dict[RecordKey, Any]:
        """Records (key -> plain value, None to delete) changed since the last checkpoint.

        ``extra`` (the alert policy's and the breaker's state of this model) goes into the ``core`` record.
        """
        if self._staged and self._apply_staged():
            raise RuntimeError("staged events closed a window at a checkpoint")  # (_may_close prevents it)
        joined = {} if self.labels is None else self.labels.take_changes()
        if not self.dirty:
            return joined
        out, self._written = changed_records(self._pieces(), self._written, self._key("core"),
                                             {**self._core(), **extra})
        self.dirty = False
        return out | joined

    def restore(self, records: dict[RecordKey, Any]) -> dict[str, Any]:
        """Rebuild the state that ``records`` (this model's state records and join changelog entries)
        describe; returns the core record ({} when there is none).

        Raises ``ValueError``, ``KeyError``, ``TypeError`` (...) on a malformed or inconsistent checkpoint; the
        model is then fresh, and its next checkpoint deletes the records it could not use.
        """
        state_keys = [k for k in records if k.topic == "state"]
        join_parts = list(parts_of(records, "join", live=False))
        core = records.get(self._key("core"))
        try:
            self._reset()
            if core is not None:
                self._restore(core, records)
        except Exception:
            self._reset()
            self._forget(state_keys, join_parts)
            raise
        if core is None:
            self._forget(state_keys, join_parts)
            return {}
        self._written = {k: object() for k in state_keys}  # deleted by the next checkpoint unless still live
        for key, stamp, _ in self._pieces():
            if key in records:
                self._written[key] = stamp
        self._written[self._key("core")] = None
        return core

    def reset(self) -> None:
        """Start afresh (a checkpoint that restored but did not validate as a whole); the next checkpoint
        rewrites every record."""
        keys = list(self._written)
        self._reset()
        self._forget(keys, [])

    def _forget(self, state_keys: list[RecordKey], join_parts: list[str]) -> None:
        self._written = {k: object() for k in state_keys}
        if self.labels is not None:
            self.labels.forget(join_parts)
        self.dirty = True

    def _restore(self, core: dict[str, Any], records: dict[str, Any]) -> None:
        if not isinstance(core, dict) or core.get("v") != FORMAT:
            raise ValueError(f"core record version {core.get('v') if isinstance(core, dict) else core!r} "
                             "is not supported")
        cfg = self.cfg
        ref_id = core["reference"]
        if ref_id is not None and self.reference is None:  # a warm-up (or rolling/calendar) reference
            ref = Reference.from_dict(records[self._key("ref")])
            if ref.id != ref_id:
                raise ValueError(f"reference record {ref.id} does not match the checkpoint's {ref_id}")
            self._check_reference(ref)
            self._start(ref)
        if ref_id is not None and self.reference is not None and ref_id == self.reference.id:
            binning = self.reference.binning
            assert self.windows is not None and self.evaluator is not None
            segs = self.windows.segments
            if segs is None:
                self.windows.restore(core["windows"], {part: Pane.restore(binning, v)
                                                       for part, v in parts_of(records, "w").items()})
            else:  # window panes carry their slices
                self.windows.restore(core["windows"], {
                    part: SegmentedPane.from_snapshot(binning, v, segs) for part, v in parts_of(records, "w").items()})
            self.evaluator.restore(core, records)
        elif ref_id is not None:
            logger.warning("model %s: checkpointed windows were built on reference %s, the config now uses %s; "
                           "windows start afresh", cfg.name, ref_id, self.reference.id if self.reference else None)
        elif self.reference is None:
            self.warmup.restore(core["warmup"], records,
                                (len(self.numeric), len(self.categorical), len(cfg.segments.keys)))
        if self.merge is not None and core.get("merge") is not None:
            self.merge.restore(core["merge"], parts_of(records, "m"),
                               (len(self.numeric), len(self.categorical), len(cfg.segments.keys)))
        self.last_version = clip(str(core["last_version"]))
        if self.labels is not None:
            self.labels.restore(core, records)


def changed_records(pieces: Iterator[tuple[RecordKey, Any, Callable[[], Any]]], written: dict[RecordKey, Any],
                    core_key: RecordKey, core: dict[str, Any]) -> tuple[dict[RecordKey, Any], dict[RecordKey, Any]]:
    """A checkpoint's records: every piece (key, stamp, value maker) whose stamp differs from what ``written``
    says the last checkpoint wrote, a tombstone (None) for each written key that is gone, and ``core``.
    Returns (records, what is written now)."""
    out: dict[RecordKey, Any] = {}
    live: dict[RecordKey, Any] = {}
    for key, stamp, make in pieces:
        live[key] = stamp
        if written.get(key) != stamp:
            out[key] = make()
    for key in written.keys() - live.keys():
        out[key] = None
    out[core_key] = core
    live[core_key] = None
    return out, live


def load_references(cfg: MonitorConfig) -> dict[str, Reference]:
    """Every model's file reference, loaded once and checked: a model with a missing or unreadable file, a
    reference of other features, or a concept-drift detector that cannot be built is an error naming its key
    (all problems at once), so ``check-config`` catches what ``run`` would."""
    refs: dict[str, Reference] = {}
    problems = []
    for name, m in cfg.models.items():
        try:
            if m.reference.type == "file":
                try:
                    refs[name] = Reference.load(m.reference.path)  # type: ignore[arg-type]
                except OSError as exc:
                    raise ValueError(f"reference.path: cannot read {m.reference.path}: {exc.strerror}") from None
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"reference.path: {m.reference.path} is not a reference artifact: {exc}") \
                        from None
            ModelMonitor(m, refs.get(name))
        except ValueError as exc:
            msg = str(exc)
            problems.append(msg if msg.startswith("models.") else f"models.{name}.{msg}")
    if problems:
        raise ValueError("\n".join(problems))
    return refs


def _by_model(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Positions of each model's events in the batch, in arrival order."""
    by_model: dict[str, list[int]] = {}
    for i, ev in enumerate(events):
        by_model.setdefault(ev["model"], []).append(i)
    return by_model


class Monitor:
    """All models of a config, one alert policy over them, and a circuit breaker per model that has one.

    The Kafka edge runs one per input partition ("task"); embedded use needs just one.
    """

    def __init__(self, cfg: MonitorConfig, references: dict[str, Reference] | None = None,
                 merged: bool = False, sources: int = 1) -> None:
        self.cfg = cfg
        self.merged = merged  # scale-out: fed pane records (process_panes) of ``sources`` partitions, not events
        refs = references or {}
        idle = cfg.scale_out.idle_partition_s if merged else None
        self.models = {name: ModelMonitor(m, refs.get(name), idle, sources, cfg.scale_out.max_waiting_events)
                       for name, m in cfg.models.items()}
        self.policy = AlertPolicy(cfg.alerts)
        self.breakers = {name: CircuitBreaker(name, m.breaker) for name, m in cfg.models.items() if m.breaker.enabled}
        # breakers that read label-side kinds tick in event-time order with the label decisions (BreakerTicks)
        self.ticks = {name: BreakerTicks() for name, b in self.breakers.items()
                      if reads_labels(b.cfg) and self.models[name].labels is not None}
        self.counters = MonitorCounters()

    def process(self, events: list[dict[str, Any]]) -> BatchOutput:
        """Feed one batch of decoded prediction events; returns what to publish."""
        return self.process_batch(events, [])

    def process_labels(self, events: list[dict[str, Any]]) -> BatchOutput:
        """Feed one batch of decoded label events; returns what to publish."""
        return self.process_batch([], events)

    def process_batch(self, predictions: list[dict[str, Any]] | PredictionBatch,
                      labels: list[dict[str, Any]], *, predictions_idle: bool | Callable[[], bool] = True,
                      labels_idle: bool | Callable[[], bool] = True) -> BatchOutput:
        """Feed one consumed batch: predictions first, then labels; returns everything to publish.

        ``predictions`` are decoded events (dicts), or a :class:`~.events.PredictionBatch` from a
        :class:`~.events.PredictionDecoder` (the Kafka edge's fast path); ``unknown_predictions`` of the output
        are positions in it. ``predictions_idle``/``labels_idle``: that stream has been read to its end with
        this batch (only then can it be stalled, see :mod:`.labels`); a replay says False until its last batch.
        A callable is asked only when a stall would change something (rarely).
        """
        out = BatchOutput()
        batch = predictions if isinstance(predictions, PredictionBatch) else \
            PredictionBatch.from_events(predictions, self.cfg.models)
        self.counters.events += batch.count
        touched: set[str] = set()
        unknown: dict[str, int] = {}
        for pos, name in batch.unknown.items():
            unknown[name] = unknown.get(name, 0) + 1
            out.unknown_predictions.append(pos)
        for name, n in unknown.items():
            self._unknown(name, n, "prediction")
        out.unknown_predictions.sort()
        for name, me in batch.models.items():
            mm = self.models[name]
            mm.observe_predictions(me)
            touched.add(name)
            cols = me.cols
            rate = mm.cfg.sample_rate
            if rate < 1:  # a deterministic share: the same events are sampled in every run and instance
                keep = key_fraction(cols.key) < rate
                self.counters.sampled_out += int((~keep).sum())
                cols = cols.take(keep)
            if not cols.n:
                continue
            self._windows_out(name, mm.update_columns(cols), out)
        for name, pos in _by_model(labels).items():
            mm = self.models.get(name)
            if mm is None or not mm.labels_enabled:
                self._unknown(name, len(pos), "label")
                out.unknown_labels.extend(pos)
                continue
            mm.update_labels([labels[i] for i in pos])
            touched.add(name)
        for name in sorted(touched):
            join = self.models[name].join
            if join is not None:
                join.predictions_idle, join.labels_idle = predictions_idle, labels_idle
            self._labels_out(name, out)
        self.counters.alerts += len(out.alerts)
        return out

    def process_panes(self, records: list[PaneRecord]) -> BatchOutput:
        """Scale-out, deciding stage: merge pane records of the prediction partitions (see :mod:`.panes`) into
        windows and decide on them; returns what to publish. Records of unconfigured models are in
        ``unknown_predictions``, unusable ones in ``rejected``, by position."""
        out = BatchOutput()
        touched: set[str] = set()
        for pos, rec in enumerate(records):
            mm = self.models.get(rec.model)
            if mm is None:
                self._unknown(rec.model, 1, "pane")
                out.unknown_predictions.append(pos)
                continue
            try:
                results = mm.update_pane_record(rec)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                out.rejected.append((pos, f"pane record not usable: {type(exc).__name__}: {exc}"))
                continue
            if mm.built_reference is not None:
                out.references.append(mm.built_reference)
                mm.built_reference = None
            self._windows_out(rec.model, results, out)
            if mm.performance is not None:
                touched.add(rec.model)
        for name in sorted(touched):
            self._labels_out(name, out)
        self.counters.alerts += len(out.alerts)
        return out

    def adopt_reference(self, ref: Reference) -> None:
        """Scale-out: a model restored without its warm-up reference takes the published one."""
        mm = self.models.get(ref.model)
        if mm is not None and mm.reference is None and not mm.warmup.n:
            mm._start(ref)
            mm.dirty = True

    def _windows_out(self, name: str, results: list[WindowResult], out: BatchOutput) -> None:
        rate = self.models[name].cfg.sample_rate
        for r in results:
            out.results.append(r)
            out.reports.append(r.to_dict())
            self.counters.windows += 1
            if r.skipped is None:
                self._decide(name, r.model_version, r.window, r.findings, r.reference_id, rate, out)

    def _unknown(self, name: str, n: int, what: str) -> None:
        if not self.counters.unmonitored[name]:
            logger.warning("%s events of model %r are not monitored: it is not in the config%s. Add it under "
                           "'models:', or route its events to another topic (further events are counted in "
                           "stream_monitor_unmonitored_events, not logged)", what, clip(name),
                           "" if what == "prediction" else " or has no performance/concept_drift")
        self.counters.unmonitored[name] += n

    def _decide(self, name: str, version: str, window: WindowInfo, findings: list[Finding],
                reference_id: str | None, rate: float, out: BatchOutput, at: float | None = None) -> None:
        """Alert on one decision: a window of the prediction stream (``at`` None), which is what the breaker
        counts, or a decision of the label side made at event time ``at``. A breaker whose rules read only
        prediction-side kinds ticks at once; one that reads label-side kinds ticks once the label side has
        decided up to the window's end, with the conditions of both sides as of that end (:class:`BreakerTicks`),
        so its decisions do not depend on how far each stream had been read."""
        breaker = self.breakers.get(name)
        out.alerts.extend(self.policy.update(name, version, window, findings, reference_id, rate,
                                             breaker_open=bool(breaker and breaker.state != "closed")))
        if breaker is None:
            return
        ticks = self.ticks.get(name)
        if ticks is None:
            if at is None:
                self._tick(breaker, window.end, self.policy.active(name), out)
        elif at is None:
            ticks.window(window.end, self.policy.active(name))
        else:
            ticks.label(at, self.policy.active(name))

    @staticmethod
    def _tick(breaker: CircuitBreaker, end: float, active: list[Any], out: BatchOutput) -> None:
        sig = breaker.update(end, active)
        if sig is not None:
            out.signals.append(sig)

    def _labels_out(self, name: str, out: BatchOutput) -> None:
        """The label side's decisions, in event-time order (:meth:`ModelMonitor.label_outputs`). A detector
        that fires pages now, citing the prediction time of the pair that tipped it (the window of the alert
        is that instant); the matured performance window's evaluation later keeps or resolves it."""
        mm = self.models[name]
        window_s, maturity_s = mm.cfg.performance.window_s, mm.cfg.performance.maturity_s
        for what, item, findings in mm.label_outputs():
            if what == "detection":
                t = item.prediction_time
                info, at = WindowInfo(int(t // window_s), t, t, 1), item.completed
            else:
                out.reports.append(item.to_dict())
                info = WindowInfo(int(item.start // window_s), item.start, item.end, item.predictions)
                at = item.end + maturity_s  # when it matured
            self._decide(name, mm.last_version, info, findings, None, mm.cfg.sample_rate, out, at=at)
        ticks = self.ticks.get(name)
        if ticks is not None and mm.labels is not None:
            for end, active in ticks.release(mm.labels.frontier):
                self._tick(self.breakers[name], end, active, out)

    def observe_breaker(self, sig: BreakerSignal) -> None:
        """A record from the breaker topic (manual overrides, or our own last state at start-up)."""
        breaker = self.breakers.get(sig.model)
        if breaker is not None:
            breaker.observe(sig)
            if sig.source == "manual":
                self.models[sig.model].dirty = True

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """State changed since the previous checkpoint (see :class:`Checkpoint`)."""
        cp = Checkpoint()
        for name, mm in self.models.items():
            breaker = self.breakers.get(name)
            ticks = self.ticks.get(name)
            extra = {"policy": self.policy.snapshot(name), "breaker": breaker.snapshot() if breaker else None,
                     "breaker_ticks": ticks.snapshot() if ticks is not None else None}
            cp.records.update(mm.checkpoint(extra))
        return cp

    def restore(self, state: dict[RecordKey, Any], join: dict[RecordKey, Any] | None = None) -> list[str]:
        """Rebuild every model from its state records and join changelog entries; returns the models
        restored. A model whose records are malformed is logged, counted in ``counters.restore_errors`` and
        starts afresh; records of other models are ignored."""
        restored = []
        for name, records in by_model(state, join or {}).items():
            mm = self.models.get(name)
            if mm is None:
                continue
            core = {}
            try:
                core = mm.restore(records)
                if core:
                    self._restore_policy(name, core)
                    restored.append(name)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                if core:
                    mm.reset()
                self.counters.restore_errors += 1
                logger.error("model %s: checkpoint not usable (%s: %s); the model starts afresh", name,
                             type(exc).__name__, exc)
        return restored

    def _restore_policy(self, name: str, core: dict[str, Any]) -> None:
        policy = AlertPolicy(self.cfg.alerts).restore(core["policy"])  # validated before touching our own
        if policy.models() - {name}:
            raise ValueError("alert policy snapshot holds conditions of other models")
        breaker = self.breakers.get(name)
        if breaker is not None and core.get("breaker"):
            CircuitBreaker(name, breaker.cfg).restore(core["breaker"])  # validated likewise
            ticks = self.ticks.get(name)
            if ticks is not None and core.get("breaker_ticks") is not None:
                self.ticks[name] = BreakerTicks().restore(core["breaker_ticks"])
            breaker.restore(core["breaker"])
        self.policy.restore(core["policy"])
