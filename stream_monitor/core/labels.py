"""Delayed ground truth: the label join, realized and estimated performance, and concept drift.

:class:`LabelJoin` pairs predictions and labels on ``event_id`` whichever arrives first. Both sides wait in a
bounded store: an entry expires once the other stream is ``ttl_s`` of event time past it (or, when that
stream stalls, its own stream ``ttl_s + join.label_stall_s`` past it), and beyond ``max_pending`` entries the
oldest is evicted; both are counted. Duplicate predictions and duplicate labels (also after the join, for
the last ``max_joined_ids`` ids) are ignored and counted. The store is compact (:mod:`.pending`: the event
id's 64-bit key, time, value and score in arrays, about 31 bytes an entry); with ``join.sample_rate`` below 1
only the events whose key falls in the sample take part, on both sides. A label that carries its
``prediction`` is a pair at once.

:class:`PerformanceTracker` keeps one window per ``window_s`` of **prediction** time, as running sums
(confusion counts, log-loss and error sums, the estimate's sums) plus a uniform sample of at most
``max_pairs`` joined pairs for ROC AUC and lag percentiles, so memory per open window is constant however many
predictions it holds. A window is reported
once the watermark passes its end plus ``maturity_s``, so labels that are late but expected are not mistaken
for a drop. The watermark is the slower of the two streams (largest prediction time, largest label time):
a consumer catching up on one topic does not report windows before it has read the other's labels; it waits
at most ``join.label_stall_s`` for a stalled label stream (one read to its end: a stream still being read is
behind, not stalled). A window holds the pairs that completed (label and prediction both there, in event
time) by its end plus ``maturity_s``, and a pair joins when its label and prediction are at most ``ttl_s``
apart in event time, so what a window holds does not depend on how the streams were cut into batches (the
order is kept by :class:`~.tracking.LabelTracker`). A report has label coverage (share of the
window's predictions that have a label), label lag p50/p95, realized metrics on the joined pairs and, for
binary classifiers with a score, the confidence-based estimate (CBPE) computed from all of the window's
scores, so the estimate sits beside the realized value. Labels for an already reported window are counted
as ``late_labels``.

Both checkpoint exactly: the join's entries (pending predictions and labels, and the recently joined ids
that catch duplicates) go to a compacted changelog in segments of consecutive arrivals (:mod:`.pending`), so
eviction order survives a restart; the tracker's open windows (sums and pair samples) are plain data. Pair samples keep the pairs with the smallest event keys (:mod:`.keys`), so they do not depend on the
order in which pairs were joined.

Metrics (classification uses ``positive_label`` for precision/recall/F1/ROC AUC/log loss):

- accuracy, precision, recall, F1: on the predicted labels;
- ROC AUC: Mann-Whitney on the scores (ties get half credit), equal to ``sklearn.metrics.roc_auc_score``
  (on the window's sample of pairs: exact up to ``max_pairs`` labels);
- log loss: mean of ``-log(p)`` of the true class, scores clipped to [1e-15, 1 - 1e-15];
- MAE, RMSE (regression).

Estimated (CBPE): with ``c(s)`` the calibrated probability of the positive class for score ``s`` and ``yhat``
the predicted class, ``P(correct) = c(s)`` if ``yhat`` is positive else ``1 - c(s)``; expected accuracy is the
mean of ``P(correct)``; expected TP = sum of ``c(s)`` over predicted positives, FP = sum of ``1 - c(s)`` over
predicted positives, FN = sum of ``c(s)`` over predicted negatives; expected F1 = 2TP / (2TP + FP + FN).
``c`` is fitted on the first ``calibration_pairs`` labeled pairs (the reference): per score bin (50 bins), the
observed positive rate shrunk toward the raw score by 5 pseudo-pairs, so scores need not be calibrated. A
window keeps score histograms, not sums, so its estimate uses the calibration known when it is reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special
from scipy.stats import rankdata

from ..config import JoinConfig, PerformanceConfig
from .keys import event_keys, key_fraction
from .pending import EntryStore, ValueCodes, shortest_floats, store_keys

__all__ = ["JoinedPair", "LabelJoin", "PerformanceReport", "PerformanceTracker", "label_key", "roc_auc"]


@dataclass(frozen=True, slots=True)
class JoinedPair:
    event_id: str
    prediction_time: float
    label_time: float
    prediction: Any
    score: float | None
    label: Any
    carried: bool = False  # the label carried its prediction (no prediction event was joined)

    @property
    def completed(self) -> float:
        """The event time at which the pair exists: the later of its prediction and its label."""
        return self.prediction_time if self.prediction_time > self.label_time else self.label_time


@dataclass
class JoinCounters:
    joined: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    expired_predictions: int = 0
    expired_labels: int = 0
    evicted: int = 0
    sampled_out_predictions: int = 0  # outside join.sample_rate: neither stored nor looked up
    sampled_out_labels: int = 0
    carried: int = 0  # labels that carried their prediction and skipped the join
    unstored: int = 0  # distinct string values beyond the store's vocabulary: not kept (see ValueCodes)


class LabelJoin:
    """Bounded join of predictions and labels on event_id (either may come first).

    Pending predictions, early labels and the recently joined ids live in compact stores
    (:class:`~.pending.EntryStore`) keyed by the 64-bit key of the event id: 24 bytes a pending entry plus
    its share of the hash index.
    With ``sample_rate`` below 1 only the events whose key falls in the sample (:func:`~.keys.key_fraction`)
    take part, so both sides (and every instance) agree on the sample without a lookup.
    """

    FORMAT = 2
    _SIDES = ("p", "l", "j")

    def __init__(self, cfg: JoinConfig) -> None:
        self.cfg = cfg
        self._reset()

    def _reset(self) -> None:
        # arrival order is the stores' order: the first entries are the oldest, for TTL and size eviction
        self._stores = {"p": EntryStore(), "l": EntryStore(), "j": EntryStore(payload=False)}
        self._codes = ValueCodes()
        self.counters = JoinCounters()
        self.prediction_watermark = -math.inf  # largest prediction event time seen
        self.label_watermark = -math.inf  # largest label event time seen
        # Whether each stream has been read to its end (set by the caller with every batch; a callable is asked
        # only when the answer matters, at most once): only a stream with nothing left to read can be
        # *stalled*. One still being read (a replay, a consumer catching up on one topic) is merely behind,
        # and waiting for it keeps the outputs independent of read order.
        self.predictions_idle: bool | Callable[[], bool] = True
        self.labels_idle: bool | Callable[[], bool] = True
        self._stale: dict[str, None] = {}  # changelog keys to delete (a checkpoint this store could not use)

    def forget(self, keys: list[str]) -> None:
        """Delete changelog records this store does not hold (a checkpoint it could not use)."""
        self._stale.update({k: None for k in keys})

    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        """Records written or deleted since the last call, for the compacted join changelog (keys
        ``<p|l|j>/s/<segment>`` and ``<p|l|j>/m/<segment>``, see :mod:`.pending`)."""
        out: dict[str, dict[str, Any] | None] = self._stale
        self._stale = {}
        for side, store in self._stores.items():
            for k, v in store.take_changes().items():
                out[f"{side}/{k}"] = v
        return out

    def snapshot(self) -> dict[str, Any]:
        """Watermarks, counters, the value vocabulary and each store's size and open segment (the entries
        themselves live in the changelog)."""
        return {"v": self.FORMAT, "prediction_watermark": _finite(self.prediction_watermark),
                "label_watermark": _finite(self.label_watermark), "counters": dict(self.counters.__dict__),
                "values": self._codes.snapshot(), "stores": {k: s.meta() for k, s in self._stores.items()},
                "pending": self.pending, "joined_ids": self._stores["j"].live}

    def restore(self, meta: dict[str, Any] | None, entries: dict[str, dict[str, Any]]) -> LabelJoin:
        """Rebuild the stores from the changelog's latest records and the snapshot ``meta``.

        Raises ``ValueError`` when a record is malformed or the records do not match the snapshot (the store
        is left empty then). A version 1 checkpoint (one record per entry) is read and its records deleted at
        the next checkpoint, which writes segments instead.
        """
        self._reset()
        try:
            if not isinstance(meta, dict):
                raise ValueError("join snapshot missing")
            if meta.get("v") == 1:
                self._restore_v1(meta, entries)
                return self
            if meta.get("v") != self.FORMAT:
                raise ValueError(f"join snapshot version {meta.get('v')!r} is not supported")
            self._codes.restore(meta["values"])
            per_side: dict[str, dict[str, Any]] = {k: {} for k in self._SIDES}
            for k, v in entries.items():
                side, _, rest = k.partition("/")
                if side not in per_side:
                    raise ValueError(f"join changelog key {k!r} is not of a store")
                per_side[side][rest] = v
            for side, store in self._stores.items():
                _, stray = store.restore(meta["stores"][side], per_side[side])
                self.forget([f"{side}/{k}" for k in stray])
            self._restore_meta(meta)
        except (KeyError, TypeError) as exc:
            self._reset()
            raise ValueError(f"join checkpoint malformed: {type(exc).__name__}: {exc}") from None
        except ValueError:
            self._reset()
            raise
        return self

    def _restore_meta(self, meta: dict[str, Any]) -> None:
        self.prediction_watermark = _unfinite(meta.get("prediction_watermark"))
        self.label_watermark = _unfinite(meta.get("label_watermark"))
        self.counters = JoinCounters(**{k: int(v) for k, v in meta.get("counters", {}).items()})
        if meta.get("pending") != self.pending or meta.get("joined_ids") != self._stores["j"].live:
            raise ValueError(f"join changelog holds {self.pending} pending and {self._stores['j'].live} joined "
                             f"ids, the checkpoint says {meta.get('pending')} and {meta.get('joined_ids')}")

    def _restore_v1(self, meta: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
        """One record per entry (``p/<event_id>``, ``l/<event_id>``, ``j/<event_id>``, each with its arrival
        number ``n``): added in arrival order, the old records deleted at the next checkpoint."""
        rows: dict[str, list[tuple[int, str, dict[str, Any]]]] = {k: [] for k in self._SIDES}
        for k, v in entries.items():
            side, _, eid = k.partition("/")
            if side in rows:
                rows[side].append((int(v["n"]), eid, v))
        for side, items in rows.items():
            items.sort(key=lambda r: r[0])
            if not items:
                continue
            keys = store_keys(event_keys([eid for _, eid, _ in items]))
            if side == "j":
                self._stores["j"].add(keys)
                continue
            what = "prediction" if side == "p" else "label"
            codes, ok = self._codes.encode([v[what] for _, _, v in items])
            score = np.array([np.nan if v.get("score") is None else float(v["score"]) for _, _, v in items],
                             dtype=np.float32)
            t = np.array([float(v["t"]) for _, _, v in items])
            self._stores[side].add(keys[ok], t[ok], codes[ok], score[ok])
        self.forget(list(entries))
        self._restore_meta(meta)

    @property
    def maturity_watermark(self) -> float:
        """Event time up to which both streams have been read: the slower one, at most ``label_stall_s`` behind
        the predictions when the label stream has nothing more to read (stalled)."""
        both = min(self.prediction_watermark, self.label_watermark)
        stalled = self.prediction_watermark - self.cfg.label_stall_s
        return stalled if stalled > both and self._idle("labels_idle") else both

    def _idle(self, side: str) -> bool:
        """Whether ``side``'s stream was read to its end (asking the caller's callable once, if it gave one)."""
        v = getattr(self, side)
        if callable(v):
            v = bool(v())
            setattr(self, side, v)
        return v

    @property
    def pending(self) -> int:
        return self._stores["p"].live + self._stores["l"].live

    @property
    def nbytes(self) -> int:
        """Memory held by the three stores."""
        return sum(s.nbytes for s in self._stores.values())

    def sample(self, events: list[dict[str, Any]], keys: np.ndarray, side: str
               ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The events (and their keys) inside ``join.sample_rate``; the others are counted and dropped."""
        rate = self.cfg.sample_rate
        if rate >= 1 or not events:
            return events, keys
        keep = key_fraction(keys) < rate
        out = int(keep.size - keep.sum())
        if side == "p":
            self.counters.sampled_out_predictions += out
        else:
            self.counters.sampled_out_labels += out
        return [e for e, k in zip(events, keep.tolist()) if k], keys[keep]

    def _fresh(self, keys: np.ndarray, *stores: str) -> np.ndarray:
        """Positions (in the batch, ascending) of the first occurrence of each key not held by ``stores``."""
        _, first = np.unique(keys, return_index=True)
        first.sort()
        held = np.zeros(first.size, dtype=bool)
        for name in stores:
            held |= self._stores[name].find(keys[first]) >= 0
        return first[~held]

    def _new_events(self, events: list[dict[str, Any]], keys: np.ndarray, side: str
                    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The events (and keys) of ``side`` ("p" or "l") that are neither pending on that side nor recently
        joined, first occurrence only; the others are counted as duplicates."""
        new = self._fresh(keys, side, "j")
        dropped = len(events) - new.size
        if side == "p":
            self.counters.duplicate_predictions += dropped
        else:
            self.counters.duplicate_labels += dropped
        return [events[i] for i in new.tolist()], keys[new]

    def add_predictions(self, events: list[dict[str, Any]], keys: np.ndarray | None = None,
                        expire: bool = True) -> list[JoinedPair]:
        """Store predictions (or join the labels that came first); returns the pairs joined, in event order.
        ``expire``: expire entries now (else the caller calls :meth:`expire` once its batch is in)."""
        if not events:
            return []
        keys = store_keys(event_keys([ev["event_id"] for ev in events]) if keys is None else keys)
        evs, nk = self._new_events(events, keys, "p")
        if not evs:
            if expire:
                self.expire()
            return []
        t = np.fromiter((ev["timestamp"] for ev in evs), dtype=np.float64, count=len(evs))
        self.prediction_watermark = max(self.prediction_watermark, float(t.max()))
        labels = self._stores["l"]
        lpos = labels.find(nk)
        early = lpos >= 0
        if early.any():
            early &= self._within_ttl(labels, lpos, t, early, "expired_labels")
        out = []
        if early.any():
            at = lpos[early]
            lt, lval, _ = labels.values(at)
            for ev, tl, y in zip([e for e, m in zip(evs, early.tolist()) if m], lt.tolist(), self._decode(lval)):
                out.append(JoinedPair(ev["event_id"], ev["timestamp"], tl, ev["prediction"], _score(ev), y))
            labels.remove(at)
            self._add_joined(nk[early])
        wait = ~early
        if wait.any():
            rest = [e for e, m in zip(evs, wait.tolist()) if m]
            codes, ok = self._codes.encode([e["prediction"] for e in rest])
            score = np.array([np.nan if e.get("score") is None else e["score"] for e in rest], dtype=np.float32)
            self.counters.unstored += int(ok.size - ok.sum())
            self._stores["p"].add(nk[wait][ok], t[wait][ok], codes[ok], score[ok])
        if expire:
            self.expire()
        return out

    def add_labels(self, events: list[dict[str, Any]], keys: np.ndarray | None = None,
                   expire: bool = True) -> list[JoinedPair]:
        """Join labels to stored predictions (or store them until their prediction comes); a label that carries
        its ``prediction`` becomes a pair at once. Returns the pairs, in event order."""
        if not events:
            return []
        keys = store_keys(event_keys([ev["event_id"] for ev in events]) if keys is None else keys)
        self.label_watermark = max(self.label_watermark, max(ev["timestamp"] for ev in events))
        evs, nk = self._new_events(events, keys, "l")
        if not evs:
            if expire:
                self.expire()
            return []
        preds = self._stores["p"]
        ppos = preds.find(nk)
        hit = ppos >= 0
        if hit.any():
            lt = np.fromiter((ev["timestamp"] for ev in evs), dtype=np.float64, count=len(evs))
            hit &= self._within_ttl(preds, ppos, lt, hit, "expired_predictions")
        found: dict[int, JoinedPair] = {}
        if hit.any():
            at = ppos[hit]
            pt, pval, pscore = preds.values(at)
            idx = np.flatnonzero(hit).tolist()
            scores = shortest_floats(pscore)
            for i, tp, p, s in zip(idx, pt.tolist(), self._decode(pval), scores):
                ev = evs[i]
                found[i] = JoinedPair(ev["event_id"], tp, ev["timestamp"], p, None if s != s else s, ev["label"])
            preds.remove(at)
        carried = [i for i in np.flatnonzero(~hit).tolist() if "prediction" in evs[i]]
        for i in carried:
            ev = evs[i]
            found[i] = JoinedPair(ev["event_id"], ev.get("prediction_timestamp", ev["timestamp"]), ev["timestamp"],
                                  ev["prediction"], _score(ev), ev["label"], carried=True)
        self.counters.carried += len(carried)
        if carried:  # their predictions are read now: a model whose labels carry them all needs no other stream
            self.prediction_watermark = max(self.prediction_watermark,
                                            max(found[i].prediction_time for i in carried))
        if found:
            joined = np.zeros(len(evs), dtype=bool)
            joined[list(found)] = True
            self._add_joined(nk[joined])
        wait = np.ones(len(evs), dtype=bool)
        wait[list(found)] = False
        if wait.any():
            rest = [e for e, m in zip(evs, wait.tolist()) if m]
            codes, ok = self._codes.encode([e["label"] for e in rest])
            t = np.fromiter((e["timestamp"] for e in rest), dtype=np.float64, count=len(rest))
            self.counters.unstored += int(ok.size - ok.sum())
            self._stores["l"].add(nk[wait][ok], t[ok], codes[ok], np.full(int(ok.sum()), np.nan, np.float32))
        if expire:
            self.expire()
        return [found[i] for i in sorted(found)]

    def _within_ttl(self, other: EntryStore, pos: np.ndarray, t: np.ndarray, hit: np.ndarray,
                    counter: str) -> np.ndarray:
        """Which of the ``hit`` entries of ``other`` (at ``pos``) are within ``ttl_s`` of event time of the new
        events (times ``t``); the others are removed as expired, as they would have been had the expiry run
        just before (so whether a pair joins depends on the two event times, not on where batches were cut)."""
        at = pos[hit]
        ot = other.values(at)[0]
        ok = np.ones(hit.size, dtype=bool)
        ok[hit] = np.abs(t[hit] - ot) <= self.cfg.ttl_s
        stale = hit & ~ok
        if stale.any():
            other.remove(pos[stale])
            setattr(self.counters, counter, getattr(self.counters, counter) + int(stale.sum()))
        return ok

    def _decode(self, codes: np.ndarray) -> list[Any]:
        return self._codes.decode(codes)

    def _add_joined(self, keys: np.ndarray) -> None:
        joined = self._stores["j"]
        self.counters.joined += keys.size
        joined.add(keys)
        if joined.live > self.cfg.max_joined_ids:
            joined.evict_oldest(joined.live - self.cfg.max_joined_ids)

    def expire(self) -> None:
        """Expire and evict what the watermarks and ``max_pending`` say (see the class doc)."""
        # A prediction waits for labels, so it expires when the *label* stream is ttl_s past it (and an early
        # label when the prediction stream is): a consumer catching up on one topic, days of event time ahead
        # of the other, must not expire what the other topic is about to deliver. A stalled stream holds
        # entries at most label_stall_s longer (then size eviction bounds them).
        stall = self.cfg.label_stall_s
        pw, lw = self.prediction_watermark, self.label_watermark
        preds, labels = self._stores["p"], self._stores["l"]
        self.counters.expired_predictions += preds.expire(
            (pw - stall if pw - stall > lw and self._idle("labels_idle") else lw) - self.cfg.ttl_s)
        self.counters.expired_labels += labels.expire(
            (lw - stall if lw - stall > pw and self._idle("predictions_idle") else pw) - self.cfg.ttl_s)
        over = self.pending - self.cfg.max_pending
        if over > 0:  # the larger side loses its oldest first; level sides lose one each in turn
            gap = preds.live - labels.live
            first, k = (preds, labels) if gap >= 0 else (labels, preds)
            lead = min(abs(gap), over)
            rest = over - lead
            a = lead + (rest + 1) // 2 if gap >= 0 else lead + rest // 2
            b = over - a
            self.counters.evicted += first.evict_oldest(a) + k.evict_oldest(b)


def _score(ev: dict[str, Any]) -> float | None:
    s = ev.get("score")
    return None if s is None else float(s)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _unfinite(x: float | None) -> float:
    return -math.inf if x is None else float(x)


# -- metrics ---------------------------------------------------------------------------------------------------
def _r(x: float) -> float:
    return float(round(float(x), 6)) if math.isfinite(x) else float("nan")


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney ROC AUC (ties get half credit); None without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not (n_pos and n_neg):
        return None
    ranks = rankdata(scores)  # average ranks: ties count one half
    return _r((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: Score bins of the estimate: a window keeps how many scored predictions of each class fell in each bin, so the
#: estimate can use the calibration known at report time (labels arrive after the predictions they calibrate).
SCORE_BINS = 20
def _score_bin(s: float) -> int:
    return min(int(s * SCORE_BINS), SCORE_BINS - 1) if s == s else 0


def calibrated(pairs: list[int], positives: list[int]) -> np.ndarray:
    """P(positive) per score bin from the reference pairs: isotonic (pool-adjacent-violators) over the bins'
    positive rates, weighted by their pairs; bins without pairs take their neighbours' value. Without any
    pair, the raw scores (bin midpoints) stand."""
    n = np.asarray(pairs, dtype=np.float64)
    if n.sum() == 0:
        return (np.arange(SCORE_BINS) + 0.5) / SCORE_BINS
    used = np.flatnonzero(n > 0)
    blocks: list[list[float]] = []  # [positives, pairs, first bin index]
    for i in used.tolist():
        blocks.append([float(positives[i]), n[i], i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            pos, cnt, _ = blocks.pop()
            blocks[-1][0] += pos
            blocks[-1][1] += cnt
    value = np.empty(SCORE_BINS)
    starts = [int(b[2]) for b in blocks] + [SCORE_BINS]
    for b, lo, hi in zip(blocks, starts, starts[1:]):
        value[lo:hi] = b[0] / b[1]
    value[: starts[0]] = value[starts[0]]
    return value


def _estimate(pos: list[int], neg: list[int], cal: np.ndarray) -> dict[str, float]:
    """Expected accuracy and F1 from a window's score histograms (predicted positive / negative) and P(y=1)."""
    p, q = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n = p.sum() + q.sum()
    tp, fp, fn = float(p @ cal), float(p @ (1 - cal)), float(q @ cal)
    correct = tp + float(q @ (1 - cal))
    return {"accuracy": _r(correct / n), "f1": _r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")}


# -- windows ---------------------------------------------------------------------------------------------------
@dataclass
class _PerfWindow:
    """Running sums of one window: memory per window is constant plus a sample of ``max_pairs`` pairs."""

    predictions: int = 0
    # the estimate (CBPE), from every scored prediction: score histograms of predicted positives and negatives
    est_n: int = 0
    est_pos: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    est_neg: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    # realized, exact, from every joined pair
    seen_pairs: int = 0
    correct: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    ll_sum: float = 0.0
    ll_n: int = 0
    abs_err: float = 0.0
    sq_err: float = 0.0
    # a uniform sample of the pairs (the smallest event keys), for ROC AUC and label-lag percentiles
    pairs: list[tuple[int, JoinedPair]] = field(default_factory=list)
    stamp: int = 0  # changes whenever the window changes (checkpoints rewrite changed windows only)


@dataclass(frozen=True)
class PerformanceReport:
    model: str
    start: float
    end: float
    predictions: int
    labeled: int
    coverage: float
    lag_p50_s: float | None
    lag_p95_s: float | None
    metrics: dict[str, float]
    estimated: dict[str, float]
    late_labels: int
    # per metric, its confidence interval at ``performance.confidence`` (sampling error of the window's labels)
    interval: dict[str, list[float]] = field(default_factory=dict)
    insufficient_labels: bool = False  # fewer than min_labels joined pairs: no metrics, nothing alerted
    # share of events joined (join.sample_rate): predictions, labeled and coverage count the sample, and the
    # intervals are the sampling error of the sample's labels
    sample_rate: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"type": "performance", **self.__dict__}


class PerformanceTracker:
    """Per-window joined pairs and scores of one model; reports mature windows."""

    FORMAT = 1
    _stamps = itertools.count(1)

    def __init__(self, model: str, cfg: PerformanceConfig, sample_rate: float = 1.0) -> None:
        self.model = model
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.positive = None if cfg.positive_label is None else label_key(cfg.positive_label)
        self._reset()

    def _reset(self) -> None:
        self._cal_pairs = [0] * SCORE_BINS
        self._cal_pos = [0] * SCORE_BINS
        self._cal_n = 0
        self._windows: dict[int, _PerfWindow] = {}
        self._reported_below = -(2 ** 62)  # windows with a smaller index were reported
        self.late_labels = 0
        self.late_predictions = 0

    def _index(self, t: float) -> int:
        return int(t // self.cfg.window_s)

    def add_predictions(self, events: list[dict[str, Any]]) -> None:
        self.add_prediction_counts(prediction_counts(events, self.cfg.window_s, self.positive))

    def add_prediction_counts(self, counts: dict[int, PredictionCounts]) -> None:
        """Add per-window prediction counts (:func:`prediction_counts`: mergeable, so scale-out sums them over
        partitions)."""
        for w, (n, est_n, pos, neg) in counts.items():
            if w < self._reported_below:
                self.late_predictions += n
                continue
            win = self._windows.get(w)
            if win is None:
                win = self._windows[w] = _PerfWindow()
            win.predictions += n
            win.est_n += est_n
            for hist, add in ((win.est_pos, pos), (win.est_neg, neg)):
                for b, c in enumerate(add):
                    hist[b] += c

    def add_pairs(self, pairs: list[JoinedPair], keys: list[int] | None = None) -> None:
        """Count joined pairs in their windows; ``keys``: their event keys, when the caller has them."""
        if keys is None:
            keys = event_keys([p.event_id for p in pairs]).tolist()
        touched: set[int] = set()
        for key, p in zip(keys, pairs):
            if p.score is not None and self.positive is not None and self._cal_n < self.cfg.calibration_pairs:
                b = _score_bin(float(p.score))  # the first labeled pairs calibrate the estimate (the reference)
                self._cal_pairs[b] += 1
                self._cal_pos[b] += label_key(p.label) == self.positive
                self._cal_n += 1
            w = self._index(p.prediction_time)
            win = self._windows.get(w)
            if win is None:
                if w < self._reported_below:
                    self.late_labels += 1
                    continue
                win = self._windows[w] = _PerfWindow()
            win.seen_pairs += 1
            self._count(win, p)
            win.pairs.append((key, p))
            touched.add(w)
        for w in touched:
            win = self._windows[w]
            win.stamp = next(self._stamps)
            if len(win.pairs) > 2 * self.cfg.max_pairs:  # amortised: trim to the smallest keys now and then
                win.pairs = _smallest_keys(win.pairs, self.cfg.max_pairs)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Bookkeeping and every open window's running sums (pair samples are :meth:`pieces`)."""
        return {"v": self.FORMAT, "reported_below": self._reported_below, "late_labels": self.late_labels,
                "late_predictions": self.late_predictions,
                "calibration": {"n": self._cal_n, "pairs": self._cal_pairs, "positives": self._cal_pos},
                "windows": {str(w): {k: v for k, v in win.__dict__.items() if k not in ("pairs", "stamp")}
                            for w, win in self._windows.items()}}

    def pieces(self) -> Any:
        """Per open window: (id, stamp, pair sample as plain data)."""
        for w, win in self._windows.items():
            yield str(w), win.stamp, (lambda win=win: _pairs_plain(win.pairs[: 2 * self.cfg.max_pairs]))

    def restore(self, d: dict[str, Any], pairs: dict[str, Any] | None = None) -> PerformanceTracker:
        if d.get("v") != self.FORMAT:
            raise ValueError(f"performance snapshot version {d.get('v')!r} is not supported")
        self._reported_below = int(d["reported_below"])
        self.late_labels = int(d["late_labels"])
        self.late_predictions = int(d["late_predictions"])
        cal = d["calibration"]
        self._cal_pairs = [int(x) for x in cal["pairs"]]
        self._cal_pos = [int(x) for x in cal["positives"]]
        self._cal_n = int(cal["n"])
        if len(self._cal_pairs) != SCORE_BINS or len(self._cal_pos) != SCORE_BINS:
            raise ValueError("performance snapshot: calibration histogram of the wrong size")
        fields = set(_PerfWindow.__dataclass_fields__) - {"pairs", "stamp"}
        windows = {}
        for w, v in d["windows"].items():
            if set(v) != fields:
                raise ValueError(f"performance window {w}: fields {sorted(v)} do not match")
            win = windows[int(w)] = _PerfWindow(**v)
            if len(win.est_pos) != SCORE_BINS or len(win.est_neg) != SCORE_BINS:
                raise ValueError(f"performance window {w}: score histograms of the wrong size")
            win.pairs = _pairs_from_plain((pairs or {}).get(str(int(w)), []))
            win.stamp = next(self._stamps)
        self._windows = windows
        return self

    def _count(self, win: _PerfWindow, p: JoinedPair) -> None:
        if self.cfg.task == "regression":
            err = float(p.prediction) - float(p.label)
            win.abs_err += abs(err)
            win.sq_err += err * err
            return
        truth, pred = label_key(p.label), label_key(p.prediction)
        win.correct += truth == pred
        if self.positive is None:
            return
        t, q = truth == self.positive, pred == self.positive
        win.tp += t and q
        win.fp += (not t) and q
        win.fn += t and not q
        if p.score is not None:
            pc = min(max(p.score if t else 1.0 - p.score, 1e-15), 1 - 1e-15)
            win.ll_sum -= math.log(pc)
            win.ll_n += 1

    def next_deadline(self) -> float:
        """The event time at which the next open window matures (its end plus ``maturity_s``); inf if none."""
        if not self._windows:
            return math.inf
        return (min(self._windows) + 1) * self.cfg.window_s + self.cfg.maturity_s

    def mature(self, watermark: float) -> list[PerformanceReport]:
        """Report (and forget) every window whose end + maturity_s is at or before ``watermark``."""
        ready = sorted(w for w in self._windows if (w + 1) * self.cfg.window_s + self.cfg.maturity_s <= watermark)
        out = [self._report(w, self._windows.pop(w)) for w in ready]
        if ready:
            self._reported_below = max(self._reported_below, ready[-1] + 1)
        return out

    def _report(self, w: int, win: _PerfWindow) -> PerformanceReport:
        n = win.seen_pairs
        pairs = [p for _, p in _smallest_keys(win.pairs, self.cfg.max_pairs)]
        lags = np.array([p.label_time - p.prediction_time for p in pairs])
        metrics: dict[str, float] = {}
        sample: list[JoinedPair] = []
        if n >= self.cfg.min_labels and self.cfg.task == "regression":
            metrics = {"mae": _r(win.abs_err / n), "rmse": _r(math.sqrt(win.sq_err / n))}
        elif n >= self.cfg.min_labels and self.cfg.task in ("binary", "multiclass"):
            metrics = {"accuracy": _r(win.correct / n)}
            if self.cfg.task == "binary":
                tp, fp, fn = win.tp, win.fp, win.fn
                metrics["precision"] = _r(tp / (tp + fp)) if tp + fp else float("nan")
                metrics["recall"] = _r(tp / (tp + fn)) if tp + fn else float("nan")
                metrics["f1"] = _r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")
                if win.ll_n:
                    metrics["log_loss"] = _r(win.ll_sum / win.ll_n)
                sample = [p for p in pairs if p.score is not None]
                if sample:  # ROC AUC needs the scores themselves: exact up to max_pairs pairs, sampled beyond
                    auc = roc_auc(np.array([label_key(p.label) == self.positive for p in sample]),
                                  np.array([p.score for p in sample], dtype=np.float64))
                    if auc is not None:
                        metrics["roc_auc"] = auc
        interval = _intervals(self.cfg.task, win, n, metrics, sample if metrics and self.cfg.task == "binary" and
                              "roc_auc" in metrics else [], self.positive, self.cfg.confidence)
        estimated: dict[str, float] = {}
        if self.cfg.estimate and self.cfg.task == "binary" and win.est_n:
            estimated = _estimate(win.est_pos, win.est_neg, calibrated(self._cal_pairs, self._cal_pos))
        coverage = n / win.predictions if win.predictions else 0.0
        return PerformanceReport(
            self.model, w * self.cfg.window_s, (w + 1) * self.cfg.window_s, win.predictions, n,
            _r(min(coverage, 1.0)), _r(np.percentile(lags, 50)) if lags.size else None,
            _r(np.percentile(lags, 95)) if lags.size else None, metrics, estimated, self.late_labels, interval,
            n < self.cfg.min_labels, self.sample_rate)


def _wilson(k: float, n: float, z: float) -> list[float]:
    """Wilson score interval of a proportion k / n: honest at small n and near 0 or 1."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [_r(max(0.0, mid - half)), _r(min(1.0, mid + half))]


def _intervals(task: str, win: _PerfWindow, n: int, metrics: dict[str, float], scored: list[JoinedPair],
               positive: str | None, confidence: float) -> dict[str, list[float]]:
    """Confidence intervals of the window's metrics: Wilson for accuracy, precision, recall and F1 (as a
    proportion of tp + fp + fn), Hanley-McNeil for ROC AUC, the normal interval of a mean for MAE. RMSE and
    log loss have none (their decisions use the point value)."""
    if not metrics:
        return {}
    z = float(special.ndtri(0.5 + confidence / 2))
    out: dict[str, list[float]] = {}
    if task == "regression":
        mae = win.abs_err / n
        var = max(win.sq_err / n - mae * mae, 0.0)
        half = z * math.sqrt(var / n)
        return {"mae": [_r(max(0.0, mae - half)), _r(mae + half)]}
    out["accuracy"] = _wilson(win.correct, n, z)
    if task == "binary":
        tp, fp, fn = win.tp, win.fp, win.fn
        if tp + fp:
            out["precision"] = _wilson(tp, tp + fp, z)
        if tp + fn:
            out["recall"] = _wilson(tp, tp + fn, z)
        if tp + fp + fn:
            out["f1"] = _wilson(2 * tp, 2 * tp + fp + fn, z)
        if scored and "roc_auc" in metrics:
            a = metrics["roc_auc"]
            n_pos = sum(label_key(p.label) == positive for p in scored)
            n_neg = len(scored) - n_pos
            q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
            var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
            half = z * math.sqrt(max(var, 0.0))
            out["roc_auc"] = [_r(max(0.0, a - half)), _r(min(1.0, a + half))]
    return out


#: Per performance window: predictions, scored predictions, score histograms of predicted positives, negatives.
PredictionCounts = tuple[int, int, list[int], list[int]]


def prediction_counts(events: list[dict[str, Any]], window_s: float, positive: str | None
                      ) -> dict[int, PredictionCounts]:
    """What predictions add to their performance windows (coverage and the estimate's histograms), per window."""
    out: dict[int, list[Any]] = {}
    for ev in events:  # per event, not per feature: a few dict reads
        w = int(ev["timestamp"] // window_s)
        c = out.get(w)
        if c is None:
            c = out[w] = [0, 0, [0] * SCORE_BINS, [0] * SCORE_BINS]
        c[0] += 1
        s = ev.get("score")
        if s is not None and positive is not None:
            c[1] += 1
            (c[2] if label_key(ev["prediction"]) == positive else c[3])[_score_bin(float(s))] += 1
    return {w: (n, e, pos, neg) for w, (n, e, pos, neg) in out.items()}


def merge_counts(into: dict[int, list[Any]], counts: dict[int, PredictionCounts]) -> None:
    for w, (n, e, pos, neg) in counts.items():
        c = into.setdefault(w, [0, 0, [0] * SCORE_BINS, [0] * SCORE_BINS])
        c[0] += n
        c[1] += e
        c[2] = [a + b for a, b in zip(c[2], pos)]
        c[3] = [a + b for a, b in zip(c[3], neg)]


def counts_from_plain(d: Any) -> dict[int, PredictionCounts]:
    """Validated per-window prediction counts from plain data ({window: [n, est_n, pos, neg]})."""
    if not isinstance(d, dict):
        raise ValueError("prediction counts: an object expected")
    out = {}
    for w, v in d.items():
        n, e, pos, neg = v
        if not (type(n) is int and type(e) is int and 0 <= e <= n and len(pos) == len(neg) == SCORE_BINS
                and all(type(x) is int and x >= 0 for x in (*pos, *neg))):
            raise ValueError(f"prediction counts of window {w}: malformed")
        out[int(w)] = (n, e, list(pos), list(neg))
    return out


def pairs_plain(pairs: list[JoinedPair]) -> list[list[Any]]:
    """Joined pairs as plain rows (scale-out hands them to the model's deciding task)."""
    return [[p.event_id, p.prediction_time, p.label_time, p.prediction, p.score, p.label, p.carried] for p in pairs]


def pairs_from_rows(rows: Any) -> list[JoinedPair]:
    """The inverse of :func:`pairs_plain`; raises ``ValueError`` on a malformed row."""
    if not isinstance(rows, list):
        raise ValueError("pairs: a list expected")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 7:
            raise ValueError("pairs: rows of 7 values expected")
        eid, tp, tl, pred, score, label, carried = row
        if not (isinstance(eid, str) and isinstance(tp, (int, float)) and isinstance(tl, (int, float))
                and (pred is None or isinstance(pred, (int, float, str))) and isinstance(label, (int, float, str))
                and (score is None or isinstance(score, (int, float))) and isinstance(carried, bool)):
            raise ValueError("pairs: malformed pair")
        out.append(JoinedPair(eid, float(tp), float(tl), pred, None if score is None else float(score), label,
                              carried))
    return out


def _smallest_keys(pairs: list[tuple[int, JoinedPair]], k: int) -> list[tuple[int, JoinedPair]]:
    """The ``k`` pairs with the smallest event keys (ties by event id): the window's sample, whatever order
    the pairs were joined in."""
    return sorted(pairs, key=lambda kp: (kp[0], kp[1].event_id))[:k]


def _pairs_plain(pairs: list[tuple[int, JoinedPair]]) -> list[list[Any]]:
    return [[k, p.event_id, p.prediction_time, p.label_time, p.prediction, p.score, p.label] for k, p in pairs]


def _pairs_from_plain(rows: list[list[Any]]) -> list[tuple[int, JoinedPair]]:
    out = []
    for k, eid, tp, tl, pred, score, label in rows:
        if not isinstance(eid, str) or not all(isinstance(x, (int, float, str)) for x in (pred, label)):
            raise ValueError("performance pair sample: malformed pair")
        out.append((int(k), JoinedPair(eid, float(tp), float(tl), pred, None if score is None else float(score),
                                       label)))
    return out


def label_key(v: Any) -> str:
    """Labels and predictions compare as strings: 1, 1.0, "1" and True are the same class."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
