"""Scale-out, stage one: partial panes of one prediction partition, for the instance that decides per model.

In scale-out mode (``scale_out.enabled``) a model's events may be spread over every partition of the
predictions topic (keyed by event id) and read by several instances. Each instance keeps, per prediction
partition it owns (a *source*), a :class:`PaneBuilder`: it bins that partition's events into partial panes
("pieces") with the model's reference binning and hands them out at every commit as *pane records*, which the
edge publishes to ``topics.panes`` keyed by model, in the same transaction as the partition's offsets. The
instance that owns the model's key on that topic merges the pieces into windows
(:class:`~.windows.MergedTimeWindows`, :class:`~.windows.MergedCountWindows`) and makes every decision: one
writer per model for alerts, incidents and the breaker.

**Pieces.** Time windows: one piece per pane of event time, handed out once the partition's watermark (the
largest event time it has read of the model, minus ``lateness_s``) has passed the pane's end; an event for a
pane already handed out makes a new piece of that pane (the deciding instance merges it, or counts it late if
the window was already evaluated). A piece's sample is the bottom of its keys like any pane's (:mod:`.keys`),
so merged pieces keep an exact uniform sample of the window; a piece keeps at most :func:`piece_cap` rows.

**Count windows** are not binned here: a count window is the next ``size`` events of the model in one merge
order over every partition (event time, then partition, then arrival; :class:`~.windows.SourceMerge`), which
only the deciding instance can cut. The builder forwards the events as raw columns at every commit, and the
deciding instance releases them in that order once every partition has passed them, so count windows tile
event time whatever the number of instances and however the partitions were read.

**Before the reference.** A warm-up (or rolling/calendar) reference is built by the deciding instance from
the earliest events of the model by event time over every partition; until a builder has that reference it
forwards raw event columns instead of pieces. The deciding instance publishes the reference
(``topics.references``), and every builder bins with it from then on.

**Labels.** Keyed like the predictions (by event id), a label lands on its prediction's partition: the builder
joins them (:class:`~.labels.LabelJoin`, its changelog with the task's state) and hands out the joined pairs,
the predictions' per-window counts and its maturity watermark; the deciding instance runs the performance
windows and concept-drift detectors on them.

**Records.** Plain JSON-able dicts (``PANE_FORMAT``): ``model``, ``source``, ``at`` (when handed out, epoch
seconds), ``ref`` (reference id of the binning), and one of ``index``/``pane`` (a piece; ``index`` is the pane
number of time windows, ``None`` for count windows), ``raw`` (columns) or ``pairs``; the last record of a flush
carries the source's watermark ``wm`` (when predictions came since the previous flush) and, with labels, the
``predictions`` counts and ``label_wm``. :func:`~.windows.decode_record` validates one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..config import ModelConfig, MonitorConfig
from .columns import Columns, column_names
from .events import PredictionBatch
from .keys import event_keys, key_fraction
from .labels import JoinedPair, LabelJoin, label_key, merge_counts, pairs_plain, prediction_counts
from .monitor import BatchOutput, Checkpoint, MonitorCounters, changed_records
from .state import RecordKey, by_model, parts_of
from .reference import Reference
from .segments import SegmentedPane
from .sketches import Pane, PaneInput, clip
from .windows import PANE_FORMAT

__all__ = ["PaneBuilder", "piece_cap"]

logger = logging.getLogger(__name__)

#: Largest share of a piece's record taken by its sample (raw float64 bytes; base64 adds a third).
PIECE_SAMPLE_BYTES = 400_000

#: Events per raw record forwarded before the reference exists.
RAW_CHUNK_EVENTS = 500

#: Joined pairs per record handed to the deciding task.
PAIRS_PER_RECORD = 5000


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def piece_cap(pane_cap: int, sources: int, numeric: int) -> int:
    """Sample rows a piece keeps: enough that the merge of one piece per source still fills the window pane's
    sample (``pane_cap``) when the sources carry similar shares, and at most :data:`PIECE_SAMPLE_BYTES`."""
    share = math.ceil(1.5 * pane_cap / max(1, sources))
    return max(50, min(pane_cap, share, PIECE_SAMPLE_BYTES // (8 * max(1, numeric))))


class ModelPanes:
    """One model's pieces on one prediction partition."""

    def __init__(self, cfg: ModelConfig, source: int, sources: int, reference: Reference | None) -> None:
        self.cfg = cfg
        self.source = source
        self.numeric, self.categorical = column_names(
            cfg.features.numeric, cfg.features.categorical, cfg.prediction, cfg.monitor_score)
        w = cfg.window
        self.by_time = w.by == "time"
        self.pane_s = float(w.pane)
        n_panes = int(round(w.size / w.pane))
        pane_cap = max(50, cfg.drift.sample_size // n_panes)
        self.cap = piece_cap(pane_cap, sources, len(self.numeric))
        self.reference: Reference | None = None
        self._open: dict[int, Pane] = {}  # pane number -> piece (time windows)
        self._out: list[dict[str, Any]] = []  # records handed out at the next flush
        self._wm = -np.inf
        self._fresh = False  # something to hand out since the last flush
        self._moved = False  # prediction events since the last flush (the watermark is reported then only)
        self.last_version = ""
        self.last_event_time: float | None = None
        # labels: keyed like the predictions (by event id), so a prediction and its label share a partition and
        # are joined here; the pairs and the predictions' per-window counts go to the deciding task
        self.join = LabelJoin(cfg.join) if cfg.uses_labels else None
        self._positive = None if cfg.performance.positive_label is None else label_key(cfg.performance.positive_label)
        self._pairs: list[JoinedPair] = []
        self._counts: dict[int, list[Any]] = {}
        self.dirty = False
        self._written: dict[str, Any] = {}
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, ref: Reference) -> None:
        """Bin with ``ref`` from now on (open pieces of another binning are handed out as they are). Count
        windows are not binned here: their events go to the deciding instance as they are (see the module doc)."""
        if not self.by_time or self.reference is not None and self.reference.id == ref.id:
            return
        if self.reference is not None:
            for index, piece in sorted(self._open.items()):
                self._emit_piece(index, piece)
            self._open = {}
            self._fresh = True  # handed out at the next flush
        self.reference = ref
        self.dirty = True

    def update(self, cols: Columns) -> None:
        if not cols.n:
            return
        self.dirty = self._fresh = self._moved = True
        self.last_version = clip(cols.version(-1))
        newest = float(cols.event_time.max())
        self._wm = max(self._wm, newest)
        self.last_event_time = self._wm
        if self.reference is None or not self.by_time:
            for at in range(0, cols.n, RAW_CHUNK_EVENTS):
                self._out.append({"raw": cols.take(slice(at, at + RAW_CHUNK_EVENTS)).to_dict()})
            return
        batch = PaneInput(self.reference.binning, cols)
        idx = np.floor(cols.event_time / self.pane_s).astype(np.int64)
        for p in np.unique(idx).tolist():
            piece = self._open.get(p)
            if piece is None:
                piece = self._open[p] = self._new_piece()
            piece.update_rows(batch, np.flatnonzero(idx == p))

    def observe_predictions(self, events: list[dict[str, Any]], keys: np.ndarray) -> None:
        """Every prediction (before drift sampling) inside ``join.sample_rate`` enters the label join and
        counts in its performance window."""
        if self.join is None:
            return
        events, keys = self.join.sample(events, keys, "p")
        merge_counts(self._counts, prediction_counts(events, self.cfg.performance.window_s, self._positive))
        self._pairs += self.join.add_predictions(events, keys, expire=False)
        self.dirty = self._fresh = True

    def update_labels(self, events: list[dict[str, Any]]) -> None:
        if self.join is None:
            return
        events, keys = self.join.sample(events, event_keys([e["event_id"] for e in events]), "l")
        pairs = self.join.add_labels(events, keys, expire=False)
        carried = [{"timestamp": p.prediction_time, "prediction": p.prediction, "score": p.score}
                   for p in pairs if p.carried]
        merge_counts(self._counts, prediction_counts(carried, self.cfg.performance.window_s, self._positive))
        self._pairs += pairs
        self.dirty = self._fresh = True

    def _new_piece(self) -> Pane:
        assert self.reference is not None
        segs = self.reference.segments if self.cfg.segments.enabled else None
        return Pane(self.reference.binning, self.cap) if segs is None else \
            SegmentedPane(self.reference.binning, self.cap, segs)

    def _restore_piece(self, d: dict[str, Any]) -> Pane:
        assert self.reference is not None
        segs = self.reference.segments if self.cfg.segments.enabled else None
        return Pane.restore(self.reference.binning, d) if segs is None else \
            SegmentedPane.from_snapshot(self.reference.binning, d, segs)

    def _emit_piece(self, index: int | None, piece: Pane) -> None:
        if piece.n:
            assert self.reference is not None
            self._out.append({"ref": self.reference.id, "index": index, "pane": piece.snapshot()})

    def flush(self, at: float) -> list[dict[str, Any]]:
        """Records to publish now: finished pieces (and raw events), the last one with the watermark. Nothing
        when no event came since the last flush (the source then goes idle for the deciding instance)."""
        if not self._fresh and not self._out:
            return []
        if self._open:
            complete = math.floor((self._wm - self.cfg.window.lateness_s) / self.pane_s) - 1  # last finished pane
            for p in sorted(p for p in self._open if p <= complete):
                self._emit_piece(p, self._open.pop(p))
        out = self._out
        for at_pair in range(0, len(self._pairs), PAIRS_PER_RECORD):
            out.append({"pairs": pairs_plain(self._pairs[at_pair: at_pair + PAIRS_PER_RECORD])})
        out = out or [{}]
        if self.join is not None:
            out[-1]["predictions"] = {str(w): c for w, c in self._counts.items()}
            out[-1]["label_wm"] = _finite(self.join.maturity_watermark)
        if self._moved:
            out[-1]["wm"] = self._wm
        self._out, self._pairs, self._counts = [], [], {}
        head = {"v": PANE_FORMAT, "model": self.cfg.name, "source": self.source, "at": at}
        records = [{**head, "ref": self.reference.id if self.reference else None, **r} for r in out]
        self._fresh = self._moved = False
        self.dirty = True
        return records

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _key(self, kind: str, part: Any = "") -> RecordKey:
        return RecordKey(self.cfg.name, kind, str(part))

    def _pieces(self) -> Iterator[tuple[RecordKey, Any, Any]]:
        if self.reference is not None and self.cfg.reference.type != "file":
            yield self._key("ref"), self.reference.id, self.reference.to_dict
        for p, piece in self._open.items():
            yield self._key("o", p), piece.stamp, piece.snapshot

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Changed records (handed-out records must have been flushed: a checkpoint follows a flush)."""
        if self._out:
            raise RuntimeError("checkpoint of a pane builder with records not flushed")
        joined = {} if self.join is None else {self._key("join", part): entry
                                               for part, entry in self.join.take_changes().items()}
        if not self.dirty:
            return joined
        core = {"v": PANE_FORMAT, "stage": "panes", "reference": self.reference.id if self.reference else None,
                "wm": _finite(self._wm), "fresh": self._fresh, "moved": self._moved,
                "open": sorted(self._open), "last_version": self.last_version,
                "join": self.join.snapshot() if self.join is not None else None, **extra}
        out, self._written = changed_records(self._pieces(), self._written, self._key("core"), core)
        self.dirty = False
        return out | joined

    def restore(self, records: dict[RecordKey, Any], reference: Reference | None) -> dict[str, Any]:
        """Rebuild from this model's state records and join changelog entries."""
        core = records.get(self._key("core"))
        self._written = {k: object() for k in records if k.topic == "state"}
        if core is None:
            if self.join is not None:
                self.join.forget(list(parts_of(records, "join", live=False)))
            return {}
        if core.get("v") != PANE_FORMAT or core.get("stage") != "panes":
            raise ValueError("not a pane builder checkpoint")
        ref_id = core["reference"]
        if ref_id is not None:
            ref = reference if reference is not None and reference.id == ref_id else Reference.from_dict(records[self._key("ref")])
            if ref.id != ref_id:
                raise ValueError(f"reference record {ref.id} does not match the checkpoint's {ref_id}")
            self.reference = ref
            self._open = {int(p): self._restore_piece(records[self._key("o", int(p))]) for p in core["open"]}
        self._wm = -np.inf if core["wm"] is None else float(core["wm"])
        self._fresh = bool(core["fresh"])
        self._moved = bool(core.get("moved", core["fresh"]))
        self.last_version = clip(str(core["last_version"]))
        if self.join is not None and core.get("join") is not None:
            self.join.restore(core["join"], parts_of(records, "join", live=False))
        for key, stamp, _ in self._pieces():
            if key in records:
                self._written[key] = stamp
        self._written[self._key("core")] = None
        return core


class PaneBuilder:
    """Stage one for one prediction partition (``source``): every configured model's pieces.

    Same interface as :class:`~.monitor.Monitor` where the edge needs it: :meth:`process_batch`,
    :meth:`checkpoint` (whose ``outputs`` are the pane records to publish), :meth:`restore`.
    """

    def __init__(self, cfg: MonitorConfig, source: int, sources: int,
                 references: dict[str, Reference] | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.sources = sources
        refs = references or {}
        self.models = {name: ModelPanes(m, source, sources, refs.get(name)) for name, m in cfg.models.items()}
        self.counters = MonitorCounters()
        self.breakers: dict[str, Any] = {}  # decisions are made by the instance owning the model's panes

    def set_reference(self, name: str, ref: Reference) -> None:
        mp = self.models.get(name)
        if mp is not None and ref.model == name:
            mp.set_reference(ref)

    def observe_breaker(self, sig: Any) -> None:  # the deciding instance follows the breaker topic
        return None

    def process_batch(self, predictions: PredictionBatch, labels: list[dict[str, Any]], *,
                      predictions_idle: bool | Callable[[], bool] = True,
                      labels_idle: bool | Callable[[], bool] = True) -> BatchOutput:
        """Add one consumed batch: predictions, then labels (joined here: both topics keyed by event id); what
        to publish comes from :meth:`checkpoint`."""
        out = BatchOutput()
        for mp in self.models.values():
            if mp.join is not None:
                mp.join.predictions_idle, mp.join.labels_idle = predictions_idle, labels_idle
        self.counters.events += predictions.count
        out.unknown_predictions = sorted(predictions.unknown)
        for pos, name in predictions.unknown.items():
            self.counters.unmonitored[name] += 1
        for name, me in predictions.models.items():
            mp = self.models[name]
            if mp.join is not None:
                mp.observe_predictions(me.events(), me.cols.key)
            cols = me.cols
            rate = mp.cfg.sample_rate
            if rate < 1:
                keep = key_fraction(cols.key) < rate
                self.counters.sampled_out += int((~keep).sum())
                cols = cols.take(keep)
            mp.update(cols)
        by_model: dict[str, list[int]] = {}
        for i, ev in enumerate(labels):
            by_model.setdefault(ev["model"], []).append(i)
        for name, pos in by_model.items():
            mp = self.models.get(name)
            if mp is None or mp.join is None:
                self.counters.unmonitored[name] += len(pos)
                out.unknown_labels.extend(pos)
                continue
            mp.update_labels([labels[i] for i in pos])
        for mp in self.models.values():  # once the batch's predictions and labels are both in (see labels.py)
            if mp.join is not None:
                mp.join.expire()
        out.unknown_labels.sort()
        return out

    def checkpoint(self, at: float | None = None) -> Checkpoint:
        """Flush every model (pane records in ``outputs``, handed out at ``at``), then the changed state."""
        now = time.time() if at is None else at
        cp = Checkpoint()
        for name, mp in self.models.items():
            for rec in mp.flush(now):
                cp.outputs.append((name, rec))
            cp.records.update(mp.checkpoint({}))
        return cp

    def restore(self, state: dict[RecordKey, Any], join: dict[RecordKey, Any] | None = None,
                references: dict[str, Reference] | None = None) -> list[str]:
        per_model = by_model(state, join or {})
        restored = []
        for name, records in per_model.items():
            mp = self.models.get(name)
            if mp is None:
                continue
            try:
                if mp.restore(records, (references or {}).get(name) or mp.reference):
                    restored.append(name)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                fresh = ModelPanes(mp.cfg, self.source, self.sources, (references or {}).get(name))
                fresh._written = {k: object() for k in records if k.topic == "state"}  # deleted next
                if fresh.join is not None:
                    fresh.join.forget(list(parts_of(records, "join", live=False)))
                fresh.dirty = True
                self.models[name] = fresh
                self.counters.restore_errors += 1
                logger.error("model %s: pane checkpoint not usable (%s: %s); it starts afresh",
                             name, type(exc).__name__, exc)
        return restored
