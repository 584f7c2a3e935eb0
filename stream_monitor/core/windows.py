"""Windows over a model's stream, built from panes.

A window is ``size / slide`` consecutive panes (one pane for a tumbling window). Panes are filled per batch
with vectorised updates and merged when a window closes, so a sliding window costs one pane update per
batch, not one update per window it belongs to.

- :class:`CountWindows`: panes of ``slide`` (or ``size``) events in arrival order.
- :class:`TimeWindows`: panes of ``slide`` (or ``size``) seconds of event time. A window closes when the
  watermark (largest event time seen minus ``lateness_s``) passes its end; an event for a pane that has
  already closed is late: it is counted in ``late_events`` and not added.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .columns import Columns
from .sketches import Binning, Pane

__all__ = ["ClosedWindow", "CountWindows", "TimeWindows"]


@dataclass(frozen=True)
class ClosedWindow:
    """A window ready for evaluation. ``start``/``end`` are event-time bounds (epoch seconds)."""

    index: int  # count windows: sequence number of the last pane; time windows: end / slide
    start: float
    end: float
    pane: Pane


class CountWindows:
    def __init__(self, size: int, slide: int | None, binning: Binning, cap: int, rng: np.random.Generator) -> None:
        self.pane_size = int(slide or size)
        self.n_panes = int(size) // self.pane_size
        self.binning = binning
        self.cap = cap
        self.pane_cap = max(50, cap // self.n_panes)
        self.rng = rng
        self._panes: deque[Pane] = deque(maxlen=self.n_panes)
        self._current = Pane(binning, self.pane_cap)
        self._seq = 0
        self.late_events = 0

    def update(self, cols: Columns) -> list[ClosedWindow]:
        closed: list[ClosedWindow] = []
        at = 0
        while at < cols.n:
            take = min(self.pane_size - self._current.n, cols.n - at)
            self._current.update(cols.take(slice(at, at + take)), self.rng)
            at += take
            if self._current.n == self.pane_size:
                self._panes.append(self._current)
                self._seq += 1
                self._current = Pane(self.binning, self.pane_cap)
                if len(self._panes) == self.n_panes:
                    pane = Pane.merge(list(self._panes), self.cap, self.rng)
                    closed.append(ClosedWindow(self._seq, pane.t_min, pane.t_max, pane))
        return closed


class TimeWindows:
    def __init__(self, size: float, slide: float | None, lateness_s: float, binning: Binning, cap: int,
                 rng: np.random.Generator) -> None:
        self.pane_s = float(slide or size)
        self.n_panes = int(round(size / self.pane_s))
        self.lateness_s = lateness_s
        self.binning = binning
        self.cap = cap
        self.pane_cap = max(50, cap // self.n_panes)
        self.rng = rng
        self._panes: dict[int, Pane] = {}
        self._max_t = -np.inf
        self._emitted_through = None  # last window end-pane index evaluated
        self.late_events = 0

    def update(self, cols: Columns) -> list[ClosedWindow]:
        if cols.n:
            idx = np.floor(cols.event_time / self.pane_s).astype(np.int64)
            if self._emitted_through is not None:
                late = idx <= self._emitted_through
                if late.any():
                    self.late_events += int(late.sum())
                    keep = ~late
                    cols, idx = cols.take(keep), idx[keep]
            for p in np.unique(idx).tolist():
                pane = self._panes.get(p)
                if pane is None:
                    pane = self._panes[p] = Pane(self.binning, self.pane_cap)
                pane.update(cols.take(idx == p), self.rng)
            if cols.n:
                self._max_t = max(self._max_t, float(cols.event_time.max()))
        return self._close()

    def _close(self) -> list[ClosedWindow]:
        if not self._panes or not np.isfinite(self._max_t):
            return []
        watermark = self._max_t - self.lateness_s
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
                pane = Pane.merge(members, self.cap, self.rng)
                start = (e - self.n_panes + 1) * self.pane_s
                closed.append(ClosedWindow(e, start, (e + 1) * self.pane_s, pane))
            self._emitted_through = e
        if self._emitted_through is not None:  # panes no later window needs
            for p in [p for p in self._panes if p <= self._emitted_through - self.n_panes + 1]:
                del self._panes[p]
        return closed
