"""Mergeable per-window summaries of all of a model's features, updated once per batch.

:class:`Binning` fixes how values are summarised: numeric bin edges from the reference's quantiles, the tracked
categories of each categorical feature (top ``max_categories``; the rest count as "other") and the categories
known to the reference (for the new-category rate). It is set once per model, from the reference.

:class:`Pane` summarises a set of events under a binning, for every feature at once:

- numeric: bin counts ``(k, B)``, missing / type-error / out-of-range counts, and a uniform (bottom-k by
  event key) sample of at most ``cap`` rows (exact for windows up to ``cap`` events; beyond that KS and Wasserstein are computed
  on a uniform subsample, whose KS error is at most ``sqrt(ln(2/delta) / (2 * cap))`` with probability
  ``1 - delta`` by the DKW inequality: 0.024 for cap = 5000, delta = 0.01);
- categorical: counts over tracked categories + "other" ``(c, K + 1)``, missing / type-error / new-category
  counts and a few examples of new categories.

Panes add up (:meth:`Pane.merge`), so a window is the merge of its panes and a rolling or calendar reference
is the merge of earlier windows. Memory per pane is bounded by ``cap`` rows, whatever the stream's length or
the features' cardinality.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .columns import Columns, decode_array, encode_array

from .compiled import load

_kernel = load("_panes")  # the compiled pane kernel (None: the numpy functions below)

__all__ = ["Binning", "LatencySketch", "Pane", "PaneInput", "bin_edges", "clip", "compiled"]

_MAX_NEW_EXAMPLES = 10


class LatencySketch:
    """Log-bucketed histogram (DDSketch-style): quantiles within 1 % relative error, mergeable, fixed size.

    Buckets cover 1 microsecond to about 3 hours in milliseconds; values outside are clamped into the end
    buckets. Updates are one ``bincount`` per batch.
    """

    ALPHA = 0.01
    GAMMA = (1 + ALPHA) / (1 - ALPHA)
    LOG_GAMMA = float(np.log(GAMMA))
    MIN_MS = 1e-3
    OFFSET = int(np.ceil(np.log(MIN_MS) / LOG_GAMMA))
    BUCKETS = int(np.ceil(np.log(1e7) / LOG_GAMMA)) - OFFSET + 1

    @classmethod
    def empty(cls) -> np.ndarray:
        return np.zeros(cls.BUCKETS, dtype=np.int64)

    @classmethod
    def buckets(cls, values: np.ndarray) -> np.ndarray:
        """Each value's bucket; ``BUCKETS`` (one past the last) for a missing (NaN) value."""
        missing = np.isnan(values)
        x = np.where(missing, cls.MIN_MS, values)
        idx = np.ceil(np.log(np.maximum(x, cls.MIN_MS)) / cls.LOG_GAMMA).astype(np.int64) - cls.OFFSET
        return np.where(missing, cls.BUCKETS, np.clip(idx, 0, cls.BUCKETS - 1))

    @classmethod
    def counts(cls, values: np.ndarray) -> np.ndarray:
        return cls.bincount(cls.buckets(values))

    @classmethod
    def bincount(cls, buckets: np.ndarray) -> np.ndarray:
        """The counts of :meth:`buckets` values (missing ones not counted)."""
        return np.bincount(buckets, minlength=cls.BUCKETS + 1)[: cls.BUCKETS]

    @classmethod
    def quantile(cls, counts: np.ndarray, q: float) -> float:
        return cls.quantiles(counts, (q,))[0]

    @classmethod
    def quantiles(cls, counts: np.ndarray, qs: Sequence[float]) -> list[float]:
        """The quantiles ``qs`` of the values counted in ``counts`` (NaN when there are none), from one
        cumulative sum."""
        cum = np.cumsum(counts)
        total = int(cum[-1]) if cum.size else 0
        if total == 0:
            return [float("nan")] * len(qs)
        i = np.searchsorted(cum, np.asarray(qs, dtype=np.float64) * (total - 1) + 1)
        return [2 * cls.GAMMA ** (j + cls.OFFSET) / (cls.GAMMA + 1) for j in i.tolist()]


@dataclass(frozen=True)
class Binning:
    """How a model's features are summarised; built from reference data by :meth:`fit`."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    edges: np.ndarray  # (k, B-1) interior cut points, padded with +inf
    bin_valid: np.ndarray  # (k, B) which bins exist for each feature
    lo: np.ndarray  # (k,) reference minimum (out-of-range below)
    hi: np.ndarray  # (k,) reference maximum
    categories: tuple[tuple[str, ...], ...]  # per categorical feature, tracked categories in index order
    known: tuple[frozenset[str], ...]  # per categorical feature, categories seen in the reference
    unseen_mass: tuple[float, ...] = ()  # per categorical feature, Good-Turing share of never-seen values
    _vocab: tuple[dict[str, int], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_vocab", tuple({v: i for i, v in enumerate(cats)} for cats in self.categories))

    @property
    def n_bins(self) -> int:
        return int(self.bin_valid.shape[1]) if self.bin_valid.ndim == 2 else 0

    @property
    def n_cat_slots(self) -> int:
        """Tracked categories of the widest feature, plus one "other" slot (the last column)."""
        return max((len(c) for c in self.categories), default=0) + 1

    @property
    def cat_valid(self) -> np.ndarray:
        width = self.n_cat_slots
        valid = np.zeros((len(self.categorical), width), dtype=bool)
        for j, cats in enumerate(self.categories):
            valid[j, : len(cats)] = True
            valid[j, -1] = True
        return valid

    @classmethod
    def fit(cls, cols: Columns, numeric: Sequence[str], categorical: Sequence[str], bins: int = 10,
            max_categories: int = 50, max_known: int = 10000) -> Binning:
        """Bin edges and category vocabularies from reference columns (see :func:`bin_edges`)."""
        k = len(numeric)
        edges = np.full((k, bins - 1), np.inf)
        valid = np.zeros((k, bins), dtype=bool)
        lo = np.full(k, -np.inf)
        hi = np.full(k, np.inf)
        for j in range(k):
            x = cols.numeric[:, j]
            x = x[~np.isnan(x)]
            if x.size == 0:
                valid[j, 0] = True
                continue
            e = bin_edges(x, bins)
            edges[j, : e.size] = e
            valid[j, : e.size + 1] = True
            lo[j], hi[j] = x.min(), x.max()
        cats: list[tuple[str, ...]] = []
        known: list[frozenset[str]] = []
        unseen: list[float] = []
        for j in range(len(categorical)):
            col = cols.categorical[:, j]
            counts = Counter(v for v in col if v is not None)
            ranked = [v for v, _ in counts.most_common()]
            cats.append(tuple(ranked[:max_categories]))
            known.append(frozenset(ranked[:max_known]))
            n = sum(counts.values())
            # Good-Turing: the share of the reference's events whose value it saw once estimates the share of
            # events with a value it never saw; values beyond max_known count as unseen too
            singletons = sum(1 for v in ranked[:max_known] if counts[v] == 1)
            dropped = sum(counts[v] for v in ranked[max_known:])
            unseen.append((singletons + dropped) / n if n else 0.0)
        return cls(tuple(numeric), tuple(categorical), edges, valid, lo, hi, tuple(cats), tuple(known),
                   tuple(unseen))

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "edges": [[float(v) for v in row if np.isfinite(v)] for row in self.edges],
            "bins": self.n_bins,
            "lo": [float(v) if np.isfinite(v) else None for v in self.lo],  # JSON has no infinity
            "hi": [float(v) if np.isfinite(v) else None for v in self.hi],
            "categories": [list(c) for c in self.categories],
            "known": [sorted(k) for k in self.known],
            "unseen_mass": list(self.unseen_mass),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Binning:
        k, bins = len(d["numeric"]), int(d["bins"])
        edges = np.full((k, bins - 1), np.inf)
        valid = np.zeros((k, bins), dtype=bool)
        for j, row in enumerate(d["edges"]):
            edges[j, : len(row)] = row
            valid[j, : len(row) + 1] = True
        lo = np.array([-np.inf if v is None else v for v in d["lo"]], dtype=np.float64)
        hi = np.array([np.inf if v is None else v for v in d["hi"]], dtype=np.float64)
        unseen = tuple(float(u) for u in d.get("unseen_mass", [0.0] * len(d["categorical"])))
        return cls(tuple(d["numeric"]), tuple(d["categorical"]), edges, valid, lo, hi,
                   tuple(tuple(c) for c in d["categories"]), tuple(frozenset(k) for k in d["known"]), unseen)


def bin_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges (bins are ``[edge, next edge)``) for reference values ``x``, at most ``bins - 1`` of them.

    - at most ``bins`` distinct values (a flag, a small count): one bin per value;
    - otherwise every *mass point* (a value holding more than ``1 / bins`` of the events, e.g. the zeros of a
      zero-inflated feature) gets a bin of its own, and the remaining edges are equal-mass quantiles of the
      other values. Plain quantile edges would merge a mass point with its neighbours, and a flag's deciles
      are all equal: one bin, PSI always 0, a shift from 5 % to 30 % ones invisible.
    """
    uniq, counts = np.unique(x, return_counts=True)
    if uniq.size <= bins:
        return uniq[1:]
    heavy = uniq[counts > x.size / bins]
    edges: set[float] = set()
    for v in heavy.tolist():  # [v, next float after v) holds exactly v
        edges.add(v)
        edges.add(float(np.nextafter(v, np.inf)))
    room = bins - 1 - len(edges)
    rest = x[~np.isin(x, heavy)] if heavy.size else x
    if room > 0 and rest.size:
        qs = np.linspace(0, 1, room + 2)[1:-1]
        edges.update(np.quantile(rest, qs).tolist())
    e = np.array(sorted(edges))
    e = e[e > x.min()]  # an edge at the minimum would make an empty bin
    return e[: bins - 1]


class PaneInput:
    """A batch's values coded once for every pane it is cut into (:meth:`Pane.update_rows`), as the compiled
    kernel (``_panes.c``) or its numpy counterpart counts them: per row and numeric feature one byte (its bin,
    +128 when out of the reference's range, 255 when missing); per row the latency bucket (an extra last bucket
    for none); for the categorical columns the decoder encoded, per row and column its slot (``W`` when
    missing, ``W + 1`` when new to the reference, counted in "other"; ``W`` = :attr:`Binning.n_cat_slots`)."""

    def __init__(self, binning: Binning, cols: Columns, compiled: bool | None = None) -> None:
        self.binning = binning
        self.cols = cols
        self.compiled = _kernel is not None if compiled is None else compiled
        if self.compiled and _kernel is None:
            raise RuntimeError("the compiled pane kernel (stream_monitor.core._panes) is not built")
        x = np.ascontiguousarray(cols.numeric, dtype=np.float64)
        self.num_code = (_bin_numeric if self.compiled else _bin_numeric_numpy)(
            x, np.ascontiguousarray(binning.edges, dtype=np.float64), binning.lo, binning.hi)
        self.num_errors = bool(cols.numeric_type_error.any())  # rare: wrong types are NaN too, but not missing
        self.cat_errors = bool(cols.categorical_type_error.any())
        self.latency_bucket = LatencySketch.buckets(cols.latency_ms)
        enc = cols.codes
        self.encoded = e = enc.features if enc is not None else 0  # the prediction column, appended, is not
        width = binning.n_cat_slots
        # one lookup for all columns: per column, its entry for "missing" (code -1), then per distinct value its
        # slot (new ones: W + 1), laid end to end; a row's code is read at its column's offset + 1 + its code
        luts, offsets, at = [], np.empty(e, dtype=np.int32), 0
        for j in range(e):
            vals = enc.values[j]  # type: ignore[union-attr]
            m = len(vals)
            vocab, known = binning._vocab[j], binning.known[j]
            lut = np.empty(m + 1, dtype=np.int32)
            lut[0] = width
            lut[1:] = np.fromiter(map(vocab.get, vals, itertools.repeat(width - 1, m)), dtype=np.int32, count=m)
            if not known.issuperset(vals):
                lut[1:][np.fromiter((v not in known for v in vals), dtype=bool, count=m)] = width + 1
            luts.append(lut)
            offsets[j] = at + 1
            at += m + 1
        self.cat_code = np.take(np.concatenate(luts), enc.codes[:, :e] + offsets) if e else \
            np.empty((cols.n, 0), dtype=np.int32)  # type: ignore[union-attr]


def compiled() -> bool:
    """Whether the compiled pane kernel is built (the numpy functions below stand in without)."""
    return _kernel is not None


def _rows(rows: slice | np.ndarray, n: int) -> tuple[int, int, np.ndarray | None]:
    """``rows`` as the kernel takes them: a range, or int64 positions."""
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step == 1:
            return start, max(start, stop), None
        rows = np.arange(start, stop, step)
    return 0, 0, np.ascontiguousarray(rows, dtype=np.int64)


def _bin_numeric(x: np.ndarray, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    n, k = x.shape
    out = np.empty((n, k), dtype=np.uint8)
    _kernel.bin_numeric(x, edges, np.ascontiguousarray(lo, dtype=np.float64),  # type: ignore[union-attr]
                        np.ascontiguousarray(hi, dtype=np.float64), n, k, edges.shape[1], out)
    return out


def _bin_numeric_numpy(x: np.ndarray, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The codes of :class:`PaneInput` (see ``_panes.c``): the number of edges <= the value (+inf padding never
    counts but for +inf), +128 out of range, 255 missing; one comparison per edge position for all features."""
    code = np.zeros(x.shape, dtype=np.uint8)
    below = np.empty(x.shape, dtype=bool)
    for edge in edges.T:
        np.less_equal(edge, x, out=below)
        code += below.view(np.uint8)
    code[(x < lo) | (x > hi)] += 128
    code[np.isnan(x)] = 255
    return code


def _count_numeric(codes: np.ndarray, rows: slice | np.ndarray, counts: np.ndarray, missing: np.ndarray,
                   out_of_range: np.ndarray, compiled: bool) -> None:
    """Adds the ``rows`` of ``codes`` (n, k) to ``counts`` (k, B), ``missing`` and ``out_of_range`` (k)."""
    n, k = codes.shape
    if compiled:
        start, stop, index = _rows(rows, n)
        _kernel.count_numeric(codes, n, k, counts.shape[1], start, stop, index,  # type: ignore[union-attr]
                              counts, missing, out_of_range)
        return
    c = codes[rows]
    nan = c == 255
    bins = counts.shape[1]
    flat = (c & 127).astype(np.intp) + (np.arange(k) * bins)
    counts += np.bincount(flat[~nan], minlength=k * bins).reshape(k, bins)
    missing += np.count_nonzero(nan, axis=0)
    out_of_range += np.count_nonzero((c >= 128) & ~nan, axis=0)


def _count_categorical(codes: np.ndarray, rows: slice | np.ndarray, counts: np.ndarray, missing: np.ndarray,
                       new: np.ndarray, compiled: bool) -> int:
    """Adds the ``rows`` of ``codes`` (n, e) to the first ``e`` features of ``counts`` (c, W), ``missing`` and
    ``new`` (c); returns how many new values it counted."""
    n, e = codes.shape
    width = counts.shape[1]
    if compiled:
        start, stop, index = _rows(rows, n)
        return int(_kernel.count_categorical(codes, n, e, width, start, stop, index,  # type: ignore[union-attr]
                                             counts, missing, new))
    c = codes[rows]
    fresh = c == width + 1
    slot = np.where(fresh, width - 1, c).astype(np.intp) + (np.arange(e) * (width + 1))
    counted = np.bincount(slot.ravel(), minlength=e * (width + 1)).reshape(e, width + 1)
    counts[:e] += counted[:, :width]
    missing[:e] += counted[:, width]
    new_count = np.count_nonzero(fresh, axis=0)
    new[:e] += new_count
    return int(new_count.sum())


class Pane:
    """Counts and a bounded sample of a set of events, for all features of a model at once.

    The sample is the ``cap`` events with the smallest keys (:mod:`.keys`), sorted by key: the same events
    whichever way the stream was cut into batches, and two panes merge into the bottom-``cap`` of the union.
    ``stamp`` changes whenever the pane changes, so a checkpoint rewrites only panes that changed.
    """

    _stamps = itertools.count(1)

    def __init__(self, binning: Binning, cap: int) -> None:
        self.binning = binning
        self.cap = cap
        self._reset()

    def _reset(self) -> None:
        b = self.binning
        k, c = len(b.numeric), len(b.categorical)
        self.n = 0
        self.t_min = np.inf
        self.t_max = -np.inf
        self.num_counts = np.zeros((k, max(b.n_bins, 1)), dtype=np.int64)
        self.num_missing = np.zeros(k, dtype=np.int64)
        self.num_type_error = np.zeros(k, dtype=np.int64)
        self.num_out_of_range = np.zeros(k, dtype=np.int64)
        self._sample = np.empty((0, k))
        self._sample_keys = np.empty(0, dtype=np.uint64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # rows offered, not yet in the sample (see sample)
        self._pending_rows = 0
        self.seen = 0  # rows offered to the sample
        self.cat_counts = np.zeros((c, b.n_cat_slots), dtype=np.int64)
        self.cat_missing = np.zeros(c, dtype=np.int64)
        self.cat_type_error = np.zeros(c, dtype=np.int64)
        self.cat_new = np.zeros(c, dtype=np.int64)
        self.new_examples: list[set[str]] = [set() for _ in range(c)]
        self.versions: Counter[str] = Counter()
        self.latency = LatencySketch.empty()
        self._sorted: tuple[int, np.ndarray, np.ndarray] | None = None
        self.stamp = next(Pane._stamps)

    # -- updates -------------------------------------------------------------------------------------------
    def update(self, cols: Columns) -> Pane:
        """Add a batch of events (all features at once)."""
        if cols.n:
            self._add(PaneInput(self.binning, cols), slice(0, cols.n))
        return self

    def update_rows(self, batch: PaneInput, rows: slice | np.ndarray) -> Pane:
        """Add some rows of a prepared batch (a slice, or row positions in increasing order): a batch cut into
        several panes (windows closing inside it) bins its values once, and each pane only counts its rows."""
        if batch.binning is not self.binning:  # binned under another reference: bin these rows afresh
            return self.update(batch.cols.take(rows))
        self._add(batch, rows)
        return self

    def _add(self, b: PaneInput, rows: slice | np.ndarray) -> None:
        cols = b.cols
        t = cols.event_time[rows]
        if not t.size:
            return
        self.stamp = next(Pane._stamps)
        self.n += t.size
        self.t_min = min(self.t_min, float(t.min()))
        self.t_max = max(self.t_max, float(t.max()))
        enc = cols.codes
        if enc is not None:  # dictionary-encoded by the decoder: one bincount
            names, counts, _ = enc.take(rows).version_counts()
            versions = zip(names, counts.tolist())
        else:
            versions = Counter(cols.model_version[rows].tolist()).items()  # counted in C
        for v, count in versions:  # clipped per distinct value
            self.versions[clip(v)] += count
        self.latency += LatencySketch.bincount(b.latency_bucket[rows])
        self._add_numeric(b, rows, t.size)
        self._add_categorical(b, rows)

    def _add_numeric(self, b: PaneInput, rows: slice | np.ndarray, n: int) -> None:
        if not len(self.binning.numeric):
            return
        _count_numeric(b.num_code, rows, self.num_counts, self.num_missing, self.num_out_of_range, b.compiled)
        if b.num_errors:  # rare: wrong types are NaN, counted as type errors instead of missing
            err = b.cols.numeric_type_error[rows]
            wrong = np.count_nonzero(err & np.isnan(b.cols.numeric[rows]), axis=0)
            self.num_type_error += err.sum(axis=0)
            self.num_missing -= wrong
        self.seen += n
        x, keys = b.cols.numeric[rows], b.cols.key[rows]
        if type(rows) is slice:  # views of the batch: copied, so that a pane never keeps a whole batch alive
            x, keys = x.copy(), keys.copy()
        self._pending.append((x, keys))
        self._pending_rows += keys.size
        if self._pending_rows > self.cap:  # bounded: at most cap rows wait besides the sample
            self._settle()

    @property
    def sample(self) -> np.ndarray:
        """The ``cap`` rows of the smallest keys offered so far, sorted by key. Rows offered wait until the
        sample is read or more than ``cap`` of them wait: a window that is evaluated and not alerted on never
        sorts its rows (its statistics are binned; KS and Wasserstein on the sample are for alerts)."""
        self._settle()
        return self._sample

    @property
    def sample_keys(self) -> np.ndarray:
        """The keys of :attr:`sample`'s rows, ascending."""
        self._settle()
        return self._sample_keys

    def _settle(self) -> None:
        if self._pending:
            self._sample, self._sample_keys = _bottom(self.cap, [(self._sample, self._sample_keys), *self._pending])
            self._pending, self._pending_rows = [], 0

    def _add_categorical(self, b: PaneInput, rows: slice | np.ndarray) -> None:
        binning = self.binning
        cols = b.cols
        other = binning.n_cat_slots - 1
        if b.cat_errors:  # wrong types were set to None: type errors, not missing
            errors = cols.categorical_type_error[rows].sum(axis=0)
            self.cat_type_error += errors
            self.cat_missing -= errors
        # Per feature, never per event: the columns the decoder encoded are counted from their codes in one
        # pass; the others from their distinct values (Counter, C speed)
        e = b.encoded
        new_before = self.cat_new[:e].copy() if e else None
        if e and _count_categorical(b.cat_code, rows, self.cat_counts, self.cat_missing, self.cat_new,
                                    b.compiled):
            # the columns whose count of new values grew: their first new values, in code order, as examples
            for j in np.flatnonzero(self.cat_new[:e] != new_before).tolist():
                ex = self.new_examples[j]
                if len(ex) < _MAX_NEW_EXAMPLES:
                    vals = cols.codes.values[j]  # type: ignore[union-attr]
                    fresh = b.cat_code[rows, j] == other + 2
                    for i in np.unique(cols.codes.codes[rows, j][fresh]).tolist():  # type: ignore[union-attr]
                        if len(ex) >= _MAX_NEW_EXAMPLES:
                            break
                        ex.add(clip(vals[i]))
        for j in range(e, len(binning.categorical)):
            vocab = binning._vocab[j]
            counter = Counter(cols.categorical[rows, j].tolist())
            missing = counter.pop(None, 0)
            values = list(counter)
            self.cat_missing[j] += missing
            if not values:
                continue
            m = len(values)
            counts = np.fromiter(counter.values(), dtype=np.int64, count=m)
            where = np.fromiter(map(vocab.get, values, itertools.repeat(other, m)), dtype=np.intp, count=m)
            np.add.at(self.cat_counts[j], where, counts)
            known = binning.known[j]
            if known.issuperset(values):
                continue
            ex = self.new_examples[j]
            for v, count in zip(values, counts.tolist()):
                if v not in known:
                    self.cat_new[j] += count
                    if len(ex) < _MAX_NEW_EXAMPLES:
                        ex.add(clip(v))

    # -- merging -------------------------------------------------------------------------------------------
    @classmethod
    def merge(cls, panes: Sequence[Pane], cap: int) -> Pane:
        """One pane summarising all of ``panes``; its sample is a uniform sample of at most ``cap`` rows.

        A full pane (one that saw more rows than it kept) knows its events only up to its largest kept key;
        the merged sample keeps rows below the smallest such bound, so it is exactly the bottom of the union.
        """
        if not panes:
            raise ValueError("panes: need at least one pane to merge")
        out = cls(panes[0].binning, cap)
        for p in panes:
            out.n += p.n
            out.t_min = min(out.t_min, p.t_min)
            out.t_max = max(out.t_max, p.t_max)
            out.num_counts += p.num_counts
            out.num_missing += p.num_missing
            out.num_type_error += p.num_type_error
            out.num_out_of_range += p.num_out_of_range
            out.cat_counts += p.cat_counts
            out.cat_missing += p.cat_missing
            out.cat_type_error += p.cat_type_error
            out.cat_new += p.cat_new
            for ex, px in zip(out.new_examples, p.new_examples):
                ex.update(sorted(px)[: max(0, _MAX_NEW_EXAMPLES - len(ex))])
            out.versions.update(p.versions)
            out.latency += p.latency
        bound = min((int(p.sample_keys[-1]) for p in panes if p.seen > p.sample_keys.size), default=None)
        parts = []
        for p in panes:
            if bound is None:
                parts.append((p.sample, p.sample_keys))
            else:
                m = int(np.searchsorted(p.sample_keys, np.uint64(bound), side="right"))  # sorted by key
                parts.append((p.sample[:m], p.sample_keys[:m]))
        out._sample, out._sample_keys = _bottom(cap, parts)
        out.seen = sum(p.seen for p in panes)
        return out

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def num_present(self) -> np.ndarray:
        return self.num_counts.sum(axis=1)

    @property
    def cat_present(self) -> np.ndarray:
        return self.cat_counts.sum(axis=1)

    def sorted_matrix(self) -> np.ndarray:
        """The sample sorted per column (missing values last); cached until the next update, so a fixed
        reference is sorted once."""
        return self._sample_stats()[0]

    def sample_std(self) -> np.ndarray:
        """Per-column standard deviation of the sample (NaN for a column without values); cached likewise."""
        return self._sample_stats()[1]

    def _sample_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None or self._sorted[0] != self.seen:
            with np.errstate(invalid="ignore", divide="ignore"):
                std = np.nanstd(self.sample, axis=0) if self.sample.shape[0] else np.full(self.sample.shape[1], np.nan)
            self._sorted = (self.seen, np.sort(self.sample, axis=0), std)
        return self._sorted[1], self._sorted[2]

    @property
    def main_version(self) -> str:
        return self.versions.most_common(1)[0][0] if self.versions else ""

    # -- checkpoints ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "cap": self.cap, "n": self.n, "t_min": self.t_min if np.isfinite(self.t_min) else None,
            "t_max": self.t_max if np.isfinite(self.t_max) else None,
            "num_counts": self.num_counts.tolist(), "num_missing": self.num_missing.tolist(),
            "num_type_error": self.num_type_error.tolist(), "num_out_of_range": self.num_out_of_range.tolist(),
            # the sample is the bulk of a checkpoint: exact float64 bytes, base64, ~2.5x smaller than JSON numbers
            "sample_b64": encode_array(self.sample, "<f8"),
            "sample_keys_b64": encode_array(self.sample_keys, "<u8"),
            "seen": self.seen,
            "cat_counts": self.cat_counts.tolist(), "cat_missing": self.cat_missing.tolist(),
            "cat_type_error": self.cat_type_error.tolist(), "cat_new": self.cat_new.tolist(),
            "new_examples": [sorted(e) for e in self.new_examples], "versions": dict(self.versions),
            "latency": dict(zip(map(str, (nz := np.flatnonzero(self.latency)).tolist()), self.latency[nz].tolist())),
        }

    @classmethod
    def restore(cls, binning: Binning, d: dict[str, Any]) -> Pane:
        """The inverse of :meth:`snapshot`; raises ``ValueError``/``KeyError``/``TypeError`` on a bad record."""
        p = cls(binning, int(d["cap"]))
        p.n = int(d["n"])
        p.t_min = np.inf if d["t_min"] is None else float(d["t_min"])
        p.t_max = -np.inf if d["t_max"] is None else float(d["t_max"])
        k, c = len(binning.numeric), len(binning.categorical)
        p.num_counts = _ints(d["num_counts"], p.num_counts.shape)
        p.num_missing = _ints(d["num_missing"], (k,))
        p.num_type_error = _ints(d["num_type_error"], (k,))
        p.num_out_of_range = _ints(d["num_out_of_range"], (k,))
        flat = decode_array(d["sample_b64"], "<f8")
        if "sample_keys_b64" in d:
            p._sample_keys = decode_array(d["sample_keys_b64"], "<u8")
        else:  # a reference artifact written before keys existed: its rows are already a uniform sample
            p._sample_keys = np.arange(flat.size // k if k else 0, dtype=np.uint64)
        rows = p.sample_keys.size
        if flat.size != rows * k or rows > p.cap:
            raise ValueError(f"pane sample has {flat.size} values for {rows} keys of {k} columns (cap {p.cap})")
        p._sample = flat.reshape(rows, k)
        p.seen = int(d["seen"])
        p.cat_counts = _ints(d["cat_counts"], p.cat_counts.shape)
        p.cat_missing = _ints(d["cat_missing"], (c,))
        p.cat_type_error = _ints(d["cat_type_error"], (c,))
        p.cat_new = _ints(d["cat_new"], (c,))
        if len(d["new_examples"]) != c:
            raise ValueError("pane new_examples: one list per categorical feature expected")
        p.new_examples = [{clip(str(v)) for v in e[:_MAX_NEW_EXAMPLES]} for e in d["new_examples"]]
        p.versions = Counter({clip(str(v)): int(n) for v, n in d["versions"].items()})
        for i, cnt in d.get("latency", {}).items():
            p.latency[int(i)] = int(cnt)
        return p


def _ints(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(v, dtype=np.int64)
    if a.shape != tuple(shape):
        raise ValueError(f"checkpoint counts have shape {a.shape}, expected {tuple(shape)}")
    return a


def _bottom(cap: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The rows with the ``cap`` smallest keys of all ``parts``, sorted by key (ties: order of the parts).

    Sorted by numpy's default sort (SIMD quicksort, ~3x the stable merge sort on 64-bit keys), which orders
    distinct keys as any sort does; only when two keys are equal (one event id twice) is the stable sort redone,
    so ties keep the parts' order."""
    full = [p for p in parts if p[1].size] or parts[:1]
    if len(full) == 1:
        x, keys = full[0]
    else:
        x, keys = np.concatenate([p for p, _ in full]), np.concatenate([k for _, k in full])
    order = np.argsort(keys)
    ordered = keys[order]
    if ordered.size > 1 and not (ordered[1:] > ordered[:-1]).all():
        order = np.argsort(keys, kind="stable")
    order = order[:cap]
    return np.take(x, order, axis=0), keys[order]


#: Longest category value or model version kept in examples and version counts (longer ones are cut with
#: an ellipsis), so that no event can make an alert or a report too large to publish.
MAX_VALUE_CHARS = 120


def clip(v: str) -> str:
    return v if len(v) <= MAX_VALUE_CHARS else v[: MAX_VALUE_CHARS - 1] + "\u2026"
