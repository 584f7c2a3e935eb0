"""Slices of a model's traffic: drift per value of a configured ``segment`` key.

A prediction event may carry ``segment: {"region": "eu", "channel": "app"}``. For each configured key
(``segments.keys``), the ``top_n`` values with the most events in the **reference** are the model's slices,
fixed with the reference (ranked by reference events, ties by value): the same slices in every run and after
every restart, and a slice always has a part of the reference to be compared with. Values beyond the top-N, and
events without the key, are in the model's own windows only.

:class:`SegmentReference` holds the slices and each one's reference pane (the reference events of that slice,
summarised under the model's binning). :class:`SegmentedPane` is a window pane that also keeps one pane per
slice, filled from the same batch update: a slice's window is exactly the events of the model's window that
belong to it, so slices close and are decided together with the model, in the same Holm family
(:func:`~.drift.evaluate_window`).

Comparing a slice with its own part of the reference, not with the whole population: a slice that is merely
different from the others (a region with older customers) is not a change, and would otherwise be in
permanent alert. A slice whose part of the reference is smaller than ``min_reference_events`` is reported, not
evaluated (the model's own decision still covers its events).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .columns import Columns
from .sketches import Binning, Pane, PaneInput

__all__ = ["Segment", "SegmentReference", "SegmentedPane"]


class Segment(NamedTuple):
    """One slice: a segment key and one of its values."""

    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value}


class SegmentReference:
    """A model's slices and each one's part of the reference.

    Parameters
    ----------
    keys
        The configured segment keys, in config order (the columns of ``Columns.segment``).
    slices
        The slices, grouped by key in ``keys`` order, each key's values by descending reference events.
    panes
        Per slice, its reference events under the model's binning.
    """

    FORMAT = 1

    def __init__(self, keys: tuple[str, ...], slices: Sequence[Segment], panes: Sequence[Pane]) -> None:
        if len(slices) != len(panes):
            raise ValueError(f"segments: {len(slices)} slices but {len(panes)} reference panes")
        unknown = {s.key for s in slices} - set(keys)
        if unknown:
            raise ValueError(f"segments: slices of keys {sorted(unknown)} that are not configured")
        self.keys = tuple(keys)
        self.slices = tuple(Segment(*s) for s in slices)
        self.panes = list(panes)
        # per key column: (slice index, value) of its slices, for the batch split
        self._by_column = [[(i, s.value) for i, s in enumerate(self.slices) if s.key == key] for key in self.keys]

    @classmethod
    def fit(cls, cols: Columns, binning: Binning, keys: tuple[str, ...], top_n: int, cap: int) -> SegmentReference:
        """The ``top_n`` values of each key with the most events in reference columns ``cols``, and their panes."""
        slices: list[Segment] = []
        for j, key in enumerate(keys):
            counts = Counter(cols.segment[:, j].tolist()) if cols.segment.shape[1] > j else Counter()
            counts.pop(None, None)
            ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:top_n]
            slices += [Segment(key, v) for v, _ in ranked]
        ref = cls(keys, slices, [Pane(binning, cap) for _ in slices])
        for i, part in ref.split(cols):
            ref.panes[i].update(part)
        return ref

    def split(self, cols: Columns) -> Iterator[tuple[int, Columns]]:
        """(slice index, its rows of ``cols``) for every slice with rows in the batch: one vectorised comparison
        per slice, never a loop over events."""
        if not cols.n or not self.slices:
            return
        for j, members in enumerate(self._by_column):
            column = cols.segment[:, j]
            for i, value in members:
                mask = column == value
                if mask.any():
                    yield i, cols.take(mask)

    def describe(self) -> list[dict[str, Any]]:
        """Each slice and its reference events, for reports and logs."""
        return [s.to_dict() | {"reference_events": p.n} for s, p in zip(self.slices, self.panes)]

    # -- plain data ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"v": self.FORMAT, "keys": list(self.keys), "slices": [list(s) for s in self.slices],
                "panes": [p.snapshot() for p in self.panes]}

    @classmethod
    def from_dict(cls, binning: Binning, d: dict[str, Any]) -> SegmentReference:
        if d.get("v") != cls.FORMAT:
            raise ValueError(f"segment reference version {d.get('v')!r} is not supported")
        slices = []
        for s in d["slices"]:
            if not (isinstance(s, list) and len(s) == 2 and all(type(x) is str for x in s)):
                raise ValueError(f"segment reference: malformed slice {s!r}")
            slices.append(Segment(s[0], s[1]))
        return cls(tuple(str(k) for k in d["keys"]), slices, [Pane.restore(binning, p) for p in d["panes"]])


class SegmentedPane(Pane):
    """A window pane that also summarises each slice's events (``slices``, one :class:`Pane` per slice of
    ``segments``). Updates, merges and checkpoints carry the slices along with the model's pane."""

    def __init__(self, binning: Binning, cap: int, segments: SegmentReference) -> None:
        self.segments = segments
        super().__init__(binning, cap)

    def _reset(self) -> None:
        super()._reset()
        self.slices = [Pane(self.binning, self.cap) for _ in self.segments.slices]

    def update(self, cols: Columns) -> SegmentedPane:
        super().update(cols)
        for i, part in self.segments.split(cols):
            self.slices[i].update(part)
        return self

    def update_rows(self, batch: PaneInput, rows: slice | np.ndarray) -> SegmentedPane:
        return self.update(batch.cols.take(rows))

    @classmethod
    def merge(cls, panes: Sequence[Pane], cap: int) -> SegmentedPane:  # type: ignore[override]
        base = Pane.merge(panes, cap)
        first = panes[0]
        assert isinstance(first, SegmentedPane)
        out = cls._wrap(base, first.segments)
        out.slices = [Pane.merge([p.slices[i] for p in panes], cap)  # type: ignore[attr-defined]
                      for i in range(len(first.slices))]
        return out

    @classmethod
    def _wrap(cls, pane: Pane, segments: SegmentReference) -> SegmentedPane:
        out = cls.__new__(cls)
        out.__dict__.update(pane.__dict__)
        out.segments = segments
        return out

    def snapshot(self) -> dict[str, Any]:
        return super().snapshot() | {"slices": [p.snapshot() for p in self.slices]}

    @classmethod
    def from_snapshot(cls, binning: Binning, d: dict[str, Any], segments: SegmentReference) -> SegmentedPane:
        """The inverse of :meth:`snapshot`; raises on a bad record (also when its slices are not ours)."""
        out = cls._wrap(Pane.restore(binning, d), segments)
        slices = d.get("slices")
        if not isinstance(slices, list) or len(slices) != len(segments.slices):
            raise ValueError(f"pane checkpoint has {len(slices) if isinstance(slices, list) else 'no'} slices, "
                             f"the reference has {len(segments.slices)}")
        out.slices = [Pane.restore(binning, s) for s in slices]
        if sum(p.n for p in out.slices) > out.n * len(segments.keys):
            raise ValueError("pane checkpoint: its slices hold more events than the pane")
        return out

