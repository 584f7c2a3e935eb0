"""Windows over a model's stream, built from panes.

A window is ``size / slide`` consecutive panes (one pane for a tumbling window). Panes are filled per batch
with vectorised updates and merged when a window closes, so a sliding window costs one pane update per
batch, not one update per window it belongs to.

- :class:`CountWindows`: panes of ``slide`` (or ``size``) events in arrival order.
- :class:`TimeWindows`: panes of ``slide`` (or ``size``) seconds of event time. A window closes when the
  watermark (largest event time seen minus ``lateness_s``) passes its end. An event is late when the
  watermark *before it* had already passed its pane's end: it is counted in ``late_events`` and not added.
  The watermark advances event by event (a running maximum), so which events are late does not depend on
  how the stream was cut into batches.

Both give the same windows whatever the batching, and both checkpoint exactly: :meth:`snapshot` is the
bookkeeping, :meth:`pieces` the panes (each under a stable id, rewritten only when it changed).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .columns import Columns, decode_array, encode_array
from .segments import SegmentedPane, SegmentReference
from .sketches import Binning, Pane, PaneInput

__all__ = ["PANE_FORMAT", "ClosedWindow", "CountWindows", "MergedCountWindows", "MergedTimeWindows", "PaneRecord",
           "SourceMerge", "SourceWatermarks", "TimeWindows", "WindowHistory", "decode_record"]

logger = logging.getLogger(__name__)

#: Version of the pane records of scale-out mode (see :mod:`.panes`).
PANE_FORMAT = 1



@dataclass(frozen=True)
class ClosedWindow:
    """A window ready for evaluation. ``start``/``end`` are event-time bounds (epoch seconds)."""

    index: int  # count windows: sequence number of the last pane; time windows: end / slide
    start: float
    end: float
    pane: Pane


class _Panes:
    """Making and merging panes: plain ones, or with a pane per slice when the model has segments."""

    binning: Binning
    pane_cap: int
    segments: SegmentReference | None

    def _new_pane(self) -> Pane:
        if self.segments is None:
            return Pane(self.binning, self.pane_cap)
        return SegmentedPane(self.binning, self.pane_cap, self.segments)

    def _merge(self, panes: list[Pane], cap: int) -> Pane:
        if len(panes) == 1 and panes[0].cap == cap:  # a tumbling window is its pane (which is not updated again)
            return panes[0]
        return Pane.merge(panes, cap) if self.segments is None else SegmentedPane.merge(panes, cap)


class CountWindows(_Panes):
    def __init__(self, size: int, slide: int | None, binning: Binning, cap: int,
                 segments: SegmentReference | None = None) -> None:
        self.pane_size = int(slide or size)
        self.n_panes = int(size) // self.pane_size
        self.binning = binning
        self.cap = cap
        self.segments = segments
        self.pane_cap = max(50, cap // self.n_panes)
        self._panes: deque[Pane] = deque(maxlen=self.n_panes)  # completed panes, the last one has id _seq
        self._current = self._new_pane()  # id _seq + 1
        self._seq = 0
        self.late_events = 0

    @property
    def current_n(self) -> int:
        """Events in the pane being filled."""
        return self._current.n

    def update(self, cols: Columns) -> list[ClosedWindow]:
        closed: list[ClosedWindow] = []
        at = 0
        batch = PaneInput(self.binning, cols) if cols.n else None
        while at < cols.n:
            take = min(self.pane_size - self._current.n, cols.n - at)
            self._current.update_rows(batch, slice(at, at + take))  # type: ignore[arg-type]
            at += take
            if self._current.n == self.pane_size:
                self._panes.append(self._current)
                self._seq += 1
                self._current = self._new_pane()
                if len(self._panes) == self.n_panes:
                    pane = self._merge(list(self._panes), self.cap)
                    closed.append(ClosedWindow(self._seq, pane.t_min, pane.t_max, pane))
        return closed

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[str, Pane]]:
        first = self._seq - len(self._panes) + 1
        for i, p in enumerate(self._panes):
            yield str(first + i), p
        yield str(self._seq + 1), self._current

    def snapshot(self) -> dict[str, Any]:
        return {"by": "count", "seq": self._seq, "completed": len(self._panes), "late": self.late_events}

    def restore(self, d: dict[str, Any], panes: dict[str, Pane]) -> CountWindows:
        if d.get("by") != "count":
            raise ValueError("window checkpoint is not of count windows")
        self._seq, self.late_events = int(d["seq"]), int(d["late"])
        completed = int(d["completed"])
        if not 0 <= completed <= self.n_panes:
            raise ValueError(f"window checkpoint has {completed} completed panes, the window has {self.n_panes}")
        first = self._seq - completed + 1
        self._panes = deque((panes[str(first + i)] for i in range(completed)), maxlen=self.n_panes)
        self._current = panes[str(self._seq + 1)]
        if not self._pane_sizes_ok():
            raise ValueError("window checkpoint panes do not match the configured pane size")
        return self

    def _pane_sizes_ok(self) -> bool:
        return all(p.n == self.pane_size for p in self._panes) and self._current.n < self.pane_size


class TimeWindows(_Panes):
    def __init__(self, size: float, slide: float | None, lateness_s: float, binning: Binning, cap: int,
                 segments: SegmentReference | None = None) -> None:
        self.pane_s = float(slide or size)
        self.n_panes = int(round(size / self.pane_s))
        self.lateness_s = lateness_s
        self.binning = binning
        self.cap = cap
        self.segments = segments
        self.pane_cap = max(50, cap // self.n_panes)
        self._panes: dict[int, Pane] = {}
        self._max_t = -np.inf
        self._emitted_through: int | None = None  # last window end-pane index evaluated
        self.late_events = 0

    def update(self, cols: Columns) -> list[ClosedWindow]:
        if cols.n:
            t = cols.event_time
            idx = np.floor(t / self.pane_s).astype(np.int64)
            # the watermark each event sees: the largest event time before it (this batch and all earlier)
            before = np.maximum.accumulate(np.concatenate([[self._max_t], t[:-1]]))
            with np.errstate(invalid="ignore"):
                complete = np.floor((before - self.lateness_s) / self.pane_s) - 1  # last pane closed by then
            late = idx <= complete
            if self._emitted_through is not None:
                late |= idx <= self._emitted_through
            if late.any():
                self.late_events += int(late.sum())
                keep = ~late
                cols, idx = cols.take(keep), idx[keep]
            batch = PaneInput(self.binning, cols)
            for p in np.unique(idx).tolist():
                pane = self._panes.get(p)
                if pane is None:
                    pane = self._panes[p] = self._new_pane()
                pane.update_rows(batch, np.flatnonzero(idx == p))
            self._max_t = max(self._max_t, float(t.max()))
        return self._close()

    def _watermark(self) -> float:
        """Event time up to which the stream is complete (windows ending by then close)."""
        return self._max_t - self.lateness_s

    def _close(self) -> list[ClosedWindow]:
        if not self._panes or not np.isfinite(self._max_t):
            return []
        watermark = self._watermark()
        if not np.isfinite(watermark):
            return []
        last_complete = int(np.floor(watermark / self.pane_s)) - 1  # pane whose end <= watermark
        ends = sorted({p + i for p in self._panes for i in range(self.n_panes)})
        closed: list[ClosedWindow] = []
        for e in ends:
            if e > last_complete:
                break
            if self._emitted_through is not None and e <= self._emitted_through:
                continue
            members = [self._panes[p] for p in range(e - self.n_panes + 1, e + 1) if p in self._panes]
            if members:
                pane = self._merge(members, self.cap)
                start = (e - self.n_panes + 1) * self.pane_s
                closed.append(ClosedWindow(e, start, (e + 1) * self.pane_s, pane))
            self._emitted_through = e
        if self._emitted_through is not None:  # panes no later window needs
            for p in [p for p in self._panes if p <= self._emitted_through - self.n_panes + 1]:
                del self._panes[p]
        return closed

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[str, Pane]]:
        for p, pane in self._panes.items():
            yield str(p), pane

    def snapshot(self) -> dict[str, Any]:
        return {"by": "time", "panes": sorted(self._panes), "max_t": float(self._max_t) if np.isfinite(self._max_t)
                else None, "emitted_through": self._emitted_through, "late": self.late_events}

    def restore(self, d: dict[str, Any], panes: dict[str, Pane]) -> TimeWindows:
        if d.get("by") != "time":
            raise ValueError("window checkpoint is not of time windows")
        self._panes = {int(p): panes[str(int(p))] for p in d["panes"]}
        self._max_t = -np.inf if d["max_t"] is None else float(d["max_t"])
        et = d["emitted_through"]
        self._emitted_through = None if et is None else int(et)
        self.late_events = int(d["late"])
        return self


@dataclass(frozen=True)
class PaneRecord:
    """A validated pane record (see the module doc)."""

    model: str
    source: int
    at: float
    ref: str | None
    watermark: float | None
    index: int | None = None
    pane: dict[str, Any] | None = None  # a Pane snapshot (restored by the receiver, which has the binning)
    raw: dict[str, Any] | None = None  # Columns.to_dict()
    pairs: list[Any] | None = None  # joined prediction-label pairs (labels.pairs_plain)
    predictions: dict[str, Any] | None = None  # per performance window: prediction counts (labels.prediction_counts)
    label_wm: float | None = None  # the partition's label-join maturity watermark


def decode_record(d: Any) -> PaneRecord:
    """Validate a decoded pane record; raises ``ValueError`` naming what is wrong."""
    if not isinstance(d, dict) or d.get("v") != PANE_FORMAT:
        raise ValueError(f"not a pane record of format {PANE_FORMAT}")
    try:
        model, source, at = d["model"], d["source"], d["at"]
        if not isinstance(model, str) or type(source) is not int or not isinstance(at, (int, float)):
            raise ValueError("model (string), source (integer) and at (number) expected")
        wm, ref, index, pane, raw = d.get("wm"), d.get("ref"), d.get("index"), d.get("pane"), d.get("raw")
        if wm is not None and not isinstance(wm, (int, float)):
            raise ValueError("wm: a number expected")
        if ref is not None and not isinstance(ref, str):
            raise ValueError("ref: a string expected")
        if index is not None and type(index) is not int:
            raise ValueError("index: an integer expected")
        if pane is not None and not isinstance(pane, dict) or raw is not None and not isinstance(raw, dict):
            raise ValueError("pane and raw: objects expected")
        if pane is not None and raw is not None:
            raise ValueError("a record carries a piece or raw events, not both")
        pairs, counts, label_wm = d.get("pairs"), d.get("predictions"), d.get("label_wm")
        if pairs is not None and not isinstance(pairs, list) or counts is not None and not isinstance(counts, dict):
            raise ValueError("pairs: a list and predictions: an object expected")
        if label_wm is not None and not isinstance(label_wm, (int, float)):
            raise ValueError("label_wm: a number expected")
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    return PaneRecord(model, source, float(at), ref, None if wm is None else float(wm), index, pane, raw, pairs,
                      counts, None if label_wm is None else float(label_wm))


class MergedCountWindows(CountWindows):
    """Count windows of a model whose events come from many prediction partitions (scale-out mode).

    The events arrive as raw columns and are put in one order by :class:`SourceMerge` before they reach the
    windows, so a window is the next ``size`` events of that order, as on one partition. :meth:`add_piece`
    merges a partial pane binned by a pane builder of an earlier version (pieces of at most ``size / sources``
    events, in arrival order): a pane then holds up to one piece more than its size.
    """

    def add_piece(self, index: int | None, piece: Pane) -> list[ClosedWindow]:
        if piece.n == 0:
            return []
        self._current = self._merge([self._current, piece], self.pane_cap)
        if self._current.n < self.pane_size:
            return []
        self._panes.append(self._current)
        self._seq += 1
        self._current = self._new_pane()
        if len(self._panes) < self.n_panes:
            return []
        pane = self._merge(list(self._panes), self.cap)
        return [ClosedWindow(self._seq, pane.t_min, pane.t_max, pane)]

    def advance(self, source: int, stamp: float, watermark: float | None) -> list[ClosedWindow]:
        return []  # count windows close on counts alone

    def _pane_sizes_ok(self) -> bool:
        return all(p.n >= self.pane_size for p in self._panes) and self._current.n < self.pane_size


class SourceWatermarks:
    """Event-time progress of one model over the prediction partitions ("sources") in scale-out mode.

    Each source reports its watermark (the largest event time it has read of the model) with the produce time of
    the record that carries it. :meth:`low` is the event time every *active* source has passed: a source whose
    last report was produced more than ``idle_s`` before the newest report of any source is idle and holds
    nothing back (produce times come with the records, so replaying the topic decides the same way), and until
    each of the ``expected`` sources has reported once or gone idle, nothing has passed.
    """

    def __init__(self, expected: int, idle_s: float) -> None:
        self.expected = expected
        self.idle_s = idle_s
        self._sources: dict[int, tuple[float, float]] = {}  # source -> (watermark, produce time of its last report)
        self._first: float | None = None  # produce time of the first report: unheard sources are silent since

    def advance(self, source: int, stamp: float, watermark: float | None) -> None:
        """A report of ``source`` (None: the record carries no watermark, nothing changes)."""
        if watermark is None:
            return
        old = self._sources.get(source)
        self._sources[source] = (max(watermark, old[0]), max(stamp, old[1])) if old else (watermark, stamp)
        if self._first is None:
            self._first = stamp

    @property
    def high(self) -> float:
        return max((w for w, _ in self._sources.values()), default=-np.inf)

    def low(self) -> float:
        if not self._sources:
            return -np.inf
        newest = max(s for _, s in self._sources.values())
        if len(self._sources) < self.expected and self._first is not None and self._first >= newest - self.idle_s:
            return -np.inf  # a source not heard from yet may still bring events of any time
        return min(w for w, s in self._sources.values() if s >= newest - self.idle_s)

    def snapshot(self) -> dict[str, Any]:
        return {"first": self._first,
                "sources": {str(k): [w if np.isfinite(w) else None, s] for k, (w, s) in self._sources.items()}}

    def restore(self, d: dict[str, Any]) -> SourceWatermarks:
        self._sources = {int(k): (-np.inf if w is None else float(w), float(s)) for k, (w, s) in d["sources"].items()}
        self._first = None if d["first"] is None else float(d["first"])
        return self


class SourceMerge:
    """The events of one model from many prediction partitions ("sources"), put in one order: the merge order.

    Scale-out mode with count windows. Each source's events come in its own order, as raw columns. An event's
    *merge time* is its event time, or, when it is more than ``lateness_s`` older than the newest event of its
    source before it, that newest time minus ``lateness_s`` (a late event takes the place its source had
    reached). The merge order is (merge time, source, arrival). An event is released once every active source
    has passed its merge time (:class:`SourceWatermarks`; a source reports the newest event time it has read):
    no later event of any active source can then come before it in the merge order. So the events reach the
    windows, the warm-up and everything after in the same order however the sources were read, interleaved,
    batched or restarted; only a source that went idle and comes back with older events is out of order (its
    events are released at once and counted in :attr:`late_events`).

    The events waiting are kept in chunks, one per record as it came (a chunk partly released is replaced by
    its remainder under a new id); :meth:`pieces` hands them to the checkpoint (``m`` records).
    """

    def __init__(self, sources: int, idle_s: float, lateness_s: float, max_waiting: int = 1_000_000) -> None:
        self.sources = sources
        self.idle_s = idle_s
        self.lateness_s = lateness_s
        self.max_waiting = max_waiting  # past it, the oldest waiting events are released out of the order
        self.clock = SourceWatermarks(sources, idle_s)
        self._newest: dict[int, float] = {}  # source -> the newest event time it has brought
        self._chunks: list[_Chunk] = []
        self._next = 0  # id of the next chunk
        self._arrival = 0  # arrival number of the next event
        self._released = -np.inf  # every event released had a merge time under this
        self.late_events = 0
        self.forced = 0  # events released past max_waiting, before every source had passed them

    @property
    def waiting(self) -> int:
        """Events not released yet."""
        return sum(c.cols.n for c in self._chunks)

    def add(self, source: int, cols: Columns) -> None:
        """Events of ``source``, in its order."""
        if not cols.n:
            return
        t = cols.event_time
        newest = np.maximum.accumulate(np.concatenate(([self._newest.get(source, -np.inf)], t)))
        merge_time = np.maximum(t, newest[:-1] - self.lateness_s)
        self._newest[source] = float(newest[-1])
        self.late_events += int((merge_time < self._released).sum())
        self._chunks.append(_Chunk(self._next, source, np.arange(self._arrival, self._arrival + cols.n),
                                   merge_time, cols))
        self._next += 1
        self._arrival += cols.n

    def advance(self, source: int, stamp: float, watermark: float | None) -> Columns | None:
        """``source`` has read up to ``watermark`` (reported at produce time ``stamp``); returns the events
        released now, in the merge order (None when there are none)."""
        self.clock.advance(source, stamp, watermark)
        frontier = max(self._released, self.clock.low() - self.lateness_s)
        waiting = self.waiting
        if waiting > self.max_waiting:  # a source far behind: release the oldest beyond the bound
            times = np.sort(np.concatenate([c.merge_time for c in self._chunks]))
            cut = float(np.nextafter(times[waiting - self.max_waiting - 1], np.inf))
            if cut > frontier:
                if not self.forced:
                    logger.warning("scale-out: %d events wait for a partition that lags behind the others; the "
                                   "oldest are released before it has passed them (scale_out.max_waiting_events "
                                   "%d), out of the merge order", waiting, self.max_waiting)
                self.forced += int((times < cut).sum()) - int((times < frontier).sum())
                frontier = cut
        if frontier == -np.inf:
            return None
        self._released = frontier  # (never moves back: a source back from idle does not hold back what passed)
        if not self._chunks:
            return None
        keep: list[_Chunk] = []
        out: list[_Chunk] = []
        for c in self._chunks:
            go = c.merge_time < frontier
            if go.all():
                out.append(c)
            elif not go.any():
                keep.append(c)
            else:
                out.append(c.take(go, c.id))
                keep.append(c.take(~go, self._next))
                self._next += 1
        self._chunks = keep
        if not out:
            return None
        order = np.lexsort((np.concatenate([c.arrival for c in out]),
                            np.concatenate([np.full(c.cols.n, c.source) for c in out]),
                            np.concatenate([c.merge_time for c in out])))
        return Columns.concat([c.cols for c in out]).take(order)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[str, int, Callable[[], dict[str, Any]]]]:
        """(part, stamp, value maker) of every chunk waiting; a chunk's content never changes under its id."""
        for c in self._chunks:
            yield str(c.id), c.id, c.to_dict

    def snapshot(self) -> dict[str, Any]:
        return {"clock": self.clock.snapshot(), "newest": {str(k): v for k, v in self._newest.items()},
                "chunks": [c.id for c in self._chunks], "next": self._next, "arrival": self._arrival,
                "released": float(self._released) if np.isfinite(self._released) else None,
                "late": self.late_events, "forced": self.forced}

    def restore(self, d: dict[str, Any], chunks: dict[str, Any], widths: tuple[int, int, int]) -> SourceMerge:
        """Rebuild from :meth:`snapshot` and the chunk records by part (raises on bad data)."""
        self.clock.restore(d["clock"])
        self._newest = {int(k): float(v) for k, v in d["newest"].items()}
        self._chunks = [_Chunk.from_dict(int(i), chunks[str(int(i))], widths) for i in d["chunks"]]
        self._next, self._arrival = int(d["next"]), int(d["arrival"])
        self._released = -np.inf if d["released"] is None else float(d["released"])
        self.late_events = int(d["late"])
        self.forced = int(d.get("forced", 0))
        if any(c.id >= self._next or c.source < 0 for c in self._chunks):
            raise ValueError("merge checkpoint chunks do not match its bookkeeping")
        return self


@dataclass(frozen=True)
class _Chunk:
    """Events of one source waiting in a :class:`SourceMerge`: their arrival numbers and merge times."""

    id: int
    source: int
    arrival: np.ndarray  # int64
    merge_time: np.ndarray  # float64
    cols: Columns

    def take(self, mask: np.ndarray, cid: int) -> _Chunk:
        return _Chunk(cid, self.source, self.arrival[mask], self.merge_time[mask], self.cols.take(mask))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "arrival": encode_array(self.arrival, "<i8"),
                "merge_time": encode_array(self.merge_time, "<f8"), "cols": self.cols.to_dict()}

    @classmethod
    def from_dict(cls, cid: int, d: dict[str, Any], widths: tuple[int, int, int]) -> _Chunk:
        cols = Columns.from_dict(d["cols"], *widths)
        arrival = decode_array(d["arrival"], "<i8", (cols.n,)).astype(np.int64)
        merge_time = decode_array(d["merge_time"], "<f8", (cols.n,)).astype(np.float64)
        return cls(cid, int(d["source"]), arrival, merge_time, cols)


class MergedTimeWindows(TimeWindows):
    """Event-time windows of partial panes from many prediction partitions (scale-out mode).

    A window closes when every active partition has passed its end plus ``lateness_s`` (:class:`SourceWatermarks`):
    so events keyed by event id over many partitions give the same windows as one partition would. A piece of a
    pane whose window has already been evaluated is counted in ``late_events``.
    """

    def __init__(self, size: float, slide: float | None, lateness_s: float, binning: Binning, cap: int,
                 idle_s: float, sources: int = 1, segments: SegmentReference | None = None) -> None:
        super().__init__(size, slide, lateness_s, binning, cap, segments)
        self.clock = SourceWatermarks(sources, idle_s)

    def add_piece(self, index: int | None, piece: Pane) -> list[ClosedWindow]:
        if index is None:
            raise ValueError("index: a piece of a time window needs its pane number")
        if piece.n == 0:
            return []
        if self._emitted_through is not None and index <= self._emitted_through:
            self.late_events += piece.n
            return []
        have = self._panes.get(index)
        self._panes[index] = piece if have is None else self._merge([have, piece], self.pane_cap)
        return []

    def add_columns(self, cols: Columns) -> None:
        """Raw events (forwarded before the sources had the reference): binned here, as pieces per pane."""
        idx = np.floor(cols.event_time / self.pane_s).astype(np.int64)
        batch = PaneInput(self.binning, cols)
        for p in np.unique(idx).tolist():
            self.add_piece(int(p), self._new_pane().update_rows(batch, np.flatnonzero(idx == p)))

    def advance(self, source: int, stamp: float, watermark: float | None) -> list[ClosedWindow]:
        self.clock.advance(source, stamp, watermark)
        self._max_t = max(self._max_t, self.clock.high)
        return self._close()

    def _watermark(self) -> float:
        return self.clock.low() - self.lateness_s

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "clock": self.clock.snapshot()}

    def restore(self, d: dict[str, Any], panes: dict[str, Pane]) -> MergedTimeWindows:
        super().restore(d, panes)
        self.clock.restore(d["clock"])
        return self


class WindowHistory:
    """Bin counts of the last windows, for evidence across windows (:func:`~.drift.evaluate_window`).

    Keeps the numeric and categorical bin counts of the last ``(longest - 1) * step`` windows (a few hundred
    integers each: memory is bounded however long the stream runs). With sliding windows (``step`` > 1 panes
    per window) only every ``step``-th past window does not overlap the current one, so only those are summed.
    """

    FORMAT = 1

    def __init__(self, spans: tuple[int, ...], step: int) -> None:
        self.spans = tuple(sorted(spans))
        self.step = step
        self._past: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=(max(self.spans) - 1) * step)
        self.stamp = 0  # changes with the content: the checkpoint rewrites the record only then

    def evidence(self, pane: Pane) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Span -> summed (numeric, categorical) counts of ``pane`` and the span's previous windows; spans the
        history is not long enough for yet are left out."""
        picked = list(self._past)[::-1][self.step - 1 :: self.step]
        out = {}
        num, cat = pane.num_counts.copy(), pane.cat_counts.copy()
        done = 1
        for s in self.spans:
            if len(picked) < s - 1:
                break
            for n_, c_ in picked[done - 1 : s - 1]:
                num += n_
                cat += c_
            done = s
            out[s] = (num.copy(), cat.copy())
        return out

    def add(self, pane: Pane) -> None:
        self._past.append((pane.num_counts.copy(), pane.cat_counts.copy()))
        self.stamp += 1

    def snapshot(self) -> dict[str, Any]:
        return {"v": self.FORMAT, "stamp": self.stamp,
                "past": [[n.tolist(), c.tolist()] for n, c in self._past]}

    def restore(self, d: dict[str, Any], num_shape: tuple[int, int], cat_shape: tuple[int, int]) -> WindowHistory:
        if d.get("v") != self.FORMAT:
            raise ValueError(f"window history version {d.get('v')!r} is not supported")
        past = []
        for n_, c_ in d["past"]:
            num = np.array(n_, dtype=np.int64).reshape(num_shape)
            cat = np.array(c_, dtype=np.int64).reshape(cat_shape)
            if (num < 0).any() or (cat < 0).any():
                raise ValueError("window history: negative counts")
            past.append((num, cat))
        self._past = deque(past, maxlen=self._past.maxlen)
        self.stamp = int(d["stamp"])
        return self
