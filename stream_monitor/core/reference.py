"""Reference distributions: the artifact a window is compared with, and the stores that keep them.

A :class:`Reference` is a :class:`Binning` plus a :class:`Pane` summarising the reference data, with an id
(``<source>:<content hash>``) that every alert cites. It is saved as one compact JSON file
(``stream-monitor reference build`` makes one from past predictions).

Where the distribution comes from is the reference type (see ``ReferenceConfig``): a file, the warm-up (first
N events), the previous windows (:class:`RollingReference`) or the same slot of earlier weeks
(:class:`CalendarReference`). The binning is always fixed by the file or the warm-up, so rolling and calendar
references are comparable bin for bin.
"""

from __future__ import annotations

import csv
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .columns import Columns, build_columns, column_names
from .events import decode_predictions
from .segments import SegmentReference
from .sketches import Binning, Pane

__all__ = ["CalendarReference", "Reference", "RollingReference", "build_reference", "read_events"]

FORMAT = "stream-monitor/reference@1"


@dataclass(frozen=True)
class Reference:
    id: str
    model: str
    source: str  # file | warmup | rolling | calendar
    binning: Binning
    pane: Pane
    segments: SegmentReference | None = None  # the slices and their parts of the reference (segments.keys)

    @classmethod
    def from_columns(cls, model: str, source: str, cols: Columns, numeric: tuple[str, ...],
                     categorical: tuple[str, ...], bins: int, max_categories: int, max_known: int,
                     cap: int, segment_keys: tuple[str, ...] = (), top_n: int = 5) -> Reference:
        """A reference from columns; with ``segment_keys`` (the columns' segment columns) also the ``top_n``
        slices of each key and their reference panes."""
        binning = Binning.fit(cols, numeric, categorical, bins, max_categories, max_known)
        pane = Pane(binning, cap).update(cols)
        segments = SegmentReference.fit(cols, binning, segment_keys, top_n, cap) if segment_keys else None
        return cls(_content_id(source, binning, pane, segments), model, source, binning, pane, segments)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "id": self.id, "model": self.model, "source": self.source,
                "binning": self.binning.to_dict(), "pane": self.pane.snapshot()} | (
            {"segments": self.segments.to_dict()} if self.segments is not None else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a stream-monitor reference artifact (format={d.get('format')!r})")
        binning = Binning.from_dict(d["binning"])
        segments = SegmentReference.from_dict(binning, d["segments"]) if d.get("segments") is not None else None
        return cls(d["id"], d["model"], d["source"], binning, Pane.restore(binning, d["pane"]), segments)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(orjson.dumps(self.to_dict()))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        return cls.from_dict(orjson.loads(Path(path).read_bytes()))


def _content_id(source: str, binning: Binning, pane: Pane, segments: SegmentReference | None = None) -> str:
    content = {"b": binning.to_dict(), "p": pane.snapshot()}
    if segments is not None:  # without slices, the id of an artifact is what it always was
        content["s"] = segments.to_dict()
    h = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return f"{source}:{h.hexdigest()[:12]}"


class RollingReference:
    """The previous ``windows`` non-overlapping windows before the current one."""

    def __init__(self, windows: int, panes_per_window: int, cap: int) -> None:
        self.windows = windows
        self.step = panes_per_window  # emitted windows overlap when sliding; every step-th one does not
        self.cap = cap
        self._past: deque[tuple[int, float, float, Pane]] = deque(maxlen=windows * panes_per_window)
        self._next_id = 0

    def reference_for(self, base_id: str) -> tuple[str, Pane] | None:
        picked = list(self._past)[::-1][self.step - 1 :: self.step][: self.windows]
        if not picked:
            return None
        pane = Pane.merge([p for _, _, _, p in picked], self.cap)
        start, end = min(s for _, s, _, _ in picked), max(e for _, _, e, _ in picked)
        return f"{base_id}:rolling:{start:.0f}-{end:.0f}", pane

    def add(self, start: float, end: float, pane: Pane) -> None:
        self._past.append((self._next_id, start, end, pane))
        self._next_id += 1

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[str, Pane]]:
        for i, _, _, p in self._past:
            yield str(i), p

    def snapshot(self) -> dict[str, Any]:
        return {"next": self._next_id, "past": [[i, s, e] for i, s, e, _ in self._past]}

    def restore(self, d: dict[str, Any], panes: dict[str, Pane]) -> RollingReference:
        self._next_id = int(d["next"])
        self._past = deque(((int(i), float(s), float(e), panes[str(int(i))]) for i, s, e in d["past"]),
                           maxlen=self._past.maxlen)
        return self


class CalendarReference:
    """The same slot (e.g. hour of week) in the previous ``periods`` cycles.

    Each slot keeps at most ``periods`` panes (one per cycle) of at most ``cap`` rows, so memory is bounded
    by ``slots * periods * cap`` rows however long the stream runs.
    """

    def __init__(self, period_s: float, slot_s: float, periods: int, cap: int) -> None:
        self.period_s = period_s
        self.slot_s = slot_s
        self.periods = periods
        self.cap = cap
        self._slots: dict[int, deque[tuple[int, Pane]]] = {}

    def _where(self, t: float) -> tuple[int, int]:
        return int(t // self.period_s), int((t % self.period_s) // self.slot_s)

    def reference_for(self, base_id: str, t: float) -> tuple[str, Pane] | None:
        cycle, slot = self._where(t)
        panes = [p for c, p in self._slots.get(slot, ()) if c < cycle]
        if not panes:
            return None
        return f"{base_id}:calendar:slot{slot}", Pane.merge(panes, self.cap)

    def add(self, t: float, pane: Pane) -> None:
        cycle, slot = self._where(t)
        q = self._slots.setdefault(slot, deque(maxlen=self.periods))
        if q and q[-1][0] == cycle:
            q[-1] = (cycle, Pane.merge([q[-1][1], pane], self.cap))
        else:
            q.append((cycle, Pane.merge([pane], self.cap)))

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[str, Pane]]:
        for slot, q in self._slots.items():
            for cycle, p in q:
                yield f"{slot}.{cycle}", p

    def snapshot(self) -> dict[str, Any]:
        return {"slots": {str(slot): [c for c, _ in q] for slot, q in self._slots.items()}}

    def restore(self, d: dict[str, Any], panes: dict[str, Pane]) -> CalendarReference:
        self._slots = {int(slot): deque(((int(c), panes[f"{int(slot)}.{int(c)}"]) for c in cycles),
                                        maxlen=self.periods)
                       for slot, cycles in d["slots"].items()}
        return self


def _csv_value(v: str) -> Any:
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Past prediction events from JSONL (one event per line) or CSV.

    CSV columns: ``event_id, model, model_version, timestamp, prediction, score, latency_ms`` as in the
    event contract; every other column is a feature (numbers are parsed, empty cells are missing).
    Malformed lines are an error naming the line.
    """
    p = Path(path)
    if p.suffix.lower() == ".csv":
        envelope = {"event_id", "model", "model_version", "timestamp", "prediction", "score", "latency_ms"}
        raws: list[bytes | None] = []
        with p.open(newline="") as fh:
            for row in csv.DictReader(fh):
                ev: dict[str, Any] = {k: _csv_value(v) for k, v in row.items() if k in envelope}
                ev["event_id"] = str(row.get("event_id", ""))
                ev["model_version"] = str(row.get("model_version", ""))
                ev["features"] = {k: _csv_value(v) for k, v in row.items() if k not in envelope}
                raws.append(orjson.dumps(ev))
    else:
        raws = [line for line in p.read_bytes().splitlines() if line.strip()]
    events, _, rejects = decode_predictions(raws)
    if rejects:
        r = rejects[0]
        raise ValueError(f"{p}: line {r.index + (2 if p.suffix.lower() == '.csv' else 1)}: {r.reason}"
                         f" ({len(rejects)} bad lines in all)")
    return events


def build_reference(events: list[dict[str, Any]], model: str, numeric: tuple[str, ...],
                    categorical: tuple[str, ...], prediction: str, score: bool, bins: int,
                    max_categories: int, max_known: int, cap: int,
                    source: str = "file", segment_keys: tuple[str, ...] = (), top_n: int = 5) -> Reference:
    """A reference from past events of ``model`` (other models' events are ignored); with ``segment_keys``,
    also the top ``top_n`` slices of each key from the events' ``segment`` field."""
    mine = [e for e in events if e["model"] == model]
    if not mine:
        raise ValueError(f"no events of model {model!r}")
    cols = build_columns(mine, numeric, categorical, prediction, score, segments=segment_keys)
    num_names, cat_names = column_names(numeric, categorical, prediction, score)
    return Reference.from_columns(model, source, cols, num_names, cat_names, bins, max_categories,
                                  max_known, cap, segment_keys, top_n)
