"""A model's warm-up: the first events, kept until there are enough of them to build its reference. No Kafka.

:class:`WarmUp` is the part of a model's monitor (:class:`~.monitor.ModelMonitor`) that collects the warm-up
events (``reference.type: warmup``). It owns the ``warmup`` state records (one per chunk of columns, see
:mod:`.state`) and its part of the model's ``core`` record. On one partition the reference is the first
``reference.size`` events in partition order; in scale-out mode (:meth:`WarmUp.add_merged`) it is the
``reference.size`` earliest events by event time (ties by key) over every partition, decided once each
partition has passed the last of them or gone idle, so every deployment builds the same one whatever order
the partitions were read in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .columns import Columns
from .state import RecordKey
from .windows import PaneRecord, SourceWatermarks

__all__ = ["WarmUp"]


class WarmUp:
    """Warm-up events of one model, in chunks as they came.

    Parameters
    ----------
    model
        The model's name (its records' keys).
    size
        ``reference.size``: how many events the reference is built from.
    merged_idle_s
        Scale-out mode: a partition silent this long no longer holds the decision back (``None``: one
        partition, events in order).
    sources
        Scale-out mode: how many prediction partitions may carry the model.
    """

    def __init__(self, model: str, size: int, merged_idle_s: float | None = None, sources: int = 1) -> None:
        self.model = model
        self.size = size
        self.merged_idle_s = merged_idle_s
        self.sources = sources
        self._reset()

    def _reset(self) -> None:
        self._chunks: list[tuple[int, Columns]] = []  # (chunk id, columns)
        self.n = 0
        self._next = 0
        self.clock = SourceWatermarks(self.sources, self.merged_idle_s or 0.0)  # scale-out: how far each has read

    def _append(self, cols: Columns) -> None:
        self._chunks.append((self._next, cols))
        self._next += 1
        self.n += cols.n

    def add(self, cols: Columns) -> Columns | None:
        """Add events in order; once there are ``size`` of them, returns the events left over for the windows
        (the reference is built from :meth:`take`); None while warming up."""
        need = self.size - self.n
        self._append(cols.take(slice(0, need)))
        if self.n < self.size:
            return None
        return cols.take(slice(need, None))

    def add_merged(self, cols: Columns | None, rec: PaneRecord) -> Columns | None:
        """Scale-out: add a pane record's raw columns and its partition's progress; once the earliest ``size``
        events are known, keeps just them and returns the later ones for the windows; None before."""
        if cols is not None and cols.n:
            self._append(cols)
        self.clock.advance(rec.source, rec.at, rec.watermark)
        if self.n < self.size or rec.watermark is None:
            return None  # (a watermark comes with the last record of a partition's flush: decide once per flush)
        every = Columns.concat([c for _, c in self._chunks])
        order = np.lexsort((every.key, every.event_time))
        cut = float(every.event_time[order[self.size - 1]])
        if self.clock.low() < cut:
            return None  # a partition may still bring earlier events
        self._chunks = []
        self.n = 0
        self._append(every.take(np.sort(order[: self.size])))
        return every.take(order[self.size:])

    def take(self) -> Columns:
        """The warm-up's events, handed over (the warm-up is empty after; its clock stays for the windows)."""
        cols = Columns.concat([c for _, c in self._chunks])
        self._chunks = []
        return cols

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[RecordKey, Any, Callable[[], Any]]]:
        for i, cols in self._chunks:
            yield RecordKey(self.model, "warmup", str(i)), i, cols.to_dict

    def snapshot(self) -> dict[str, Any]:
        """Its part of the model's core record."""
        return {"n": self.n, "chunks": [i for i, _ in self._chunks], "next": self._next} | (
            {"clock": self.clock.snapshot()} if self.merged_idle_s is not None else {})

    def restore(self, d: dict[str, Any], records: dict[RecordKey, Any], widths: tuple[int, int, int]) -> None:
        """Rebuild from the core record's part and the chunk records (raises ``KeyError``, ``ValueError`` ...)."""
        k, c, s = widths
        self._chunks = [(int(i), Columns.from_dict(records[RecordKey(self.model, "warmup", str(int(i)))], k, c, s))
                        for i in d["chunks"]]
        self.n = int(d["n"])
        self._next = int(d["next"])
        if "clock" in d:
            self.clock.restore(d["clock"])
        if sum(cols.n for _, cols in self._chunks) != self.n:
            raise ValueError("warm-up chunks do not add up to the checkpointed warm-up count")
