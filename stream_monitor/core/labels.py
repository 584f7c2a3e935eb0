"""Delayed ground truth: the label join, realized and estimated performance, and concept drift.

:class:`LabelJoin` pairs predictions and labels on ``event_id`` whichever arrives first. Both sides wait in a
bounded store: an entry older than ``ttl_s`` of event time expires, and beyond ``max_pending`` entries the
oldest is evicted; both are counted. Duplicate predictions and duplicate labels (also after the join, for
the last ``max_joined_ids`` ids) are ignored and counted.

:class:`PerformanceTracker` keeps one window per ``window_s`` of **prediction** time, as running sums
(confusion counts, log-loss and error sums, the estimate's sums) plus a uniform sample of at most
``max_pairs`` joined pairs for ROC AUC and lag percentiles, so memory per open window is constant however many
predictions it holds. A window is reported
once the watermark passes its end plus ``maturity_s``, so labels that are late but expected are not mistaken
for a drop. The watermark is the slower of the two streams (largest prediction time, largest label time):
a consumer catching up on one topic does not report windows before it has read the other's labels; it waits
at most ``join.label_stall_s`` for a stalled label stream. A report has label coverage (share of the
window's predictions that have a label), label lag p50/p95, realized metrics on the joined pairs and, for
binary classifiers with a score, the confidence-based estimate (CBPE) computed from all of the window's
scores, so the estimate sits beside the realized value. Labels for an already reported window are counted
as ``late_labels``.

:class:`ConceptDriftDetectors` feeds river's detectors with the error of each joined pair (0/1 for
classification, absolute error for regression).

Metrics (classification uses ``positive_label`` for precision/recall/F1/ROC AUC/log loss):

- accuracy, precision, recall, F1: on the predicted labels;
- ROC AUC: Mann-Whitney on the scores (ties get half credit), equal to ``sklearn.metrics.roc_auc_score``
  (on the window's sample of pairs: exact up to ``max_pairs`` labels);
- log loss: mean of ``-log(p)`` of the true class, scores clipped to [1e-15, 1 - 1e-15];
- MAE, RMSE (regression).

Estimated (CBPE, calibrated scores assumed): with ``s`` the probability of the positive class and
``yhat`` the predicted class, ``P(correct) = s`` if ``yhat`` is positive else ``1 - s``; expected accuracy is
the mean of ``P(correct)``; expected TP = sum of ``s`` over predicted positives, FP = sum of ``1 - s`` over
predicted positives, FN = sum of ``s`` over predicted negatives; expected F1 = 2TP / (2TP + FP + FN).
"""

from __future__ import annotations

import base64
import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..config import DetectorConfig, JoinConfig, PerformanceConfig

__all__ = ["ConceptDriftDetectors", "JoinedPair", "LabelJoin", "PerformanceReport", "PerformanceTracker", "roc_auc"]


@dataclass(frozen=True, slots=True)
class JoinedPair:
    event_id: str
    prediction_time: float
    label_time: float
    prediction: Any
    score: float | None
    label: Any


@dataclass
class JoinCounters:
    joined: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    expired_predictions: int = 0
    expired_labels: int = 0
    evicted: int = 0


class LabelJoin:
    """Bounded join of predictions and labels on event_id (either may come first)."""

    def __init__(self, cfg: JoinConfig) -> None:
        self.cfg = cfg
        self._reset()

    def _reset(self) -> None:
        # insertion order is arrival order: the first entries are the oldest, for TTL and size eviction
        self._predictions: OrderedDict[str, tuple[float, Any, float | None]] = OrderedDict()
        self._labels: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._joined: OrderedDict[str, None] = OrderedDict()
        self.counters = JoinCounters()
        self.prediction_watermark = -math.inf  # largest prediction event time seen
        self.label_watermark = -math.inf  # largest label event time seen
        # changelog since take_changes(): key ("p/<event_id>" or "l/<event_id>") -> entry, None when removed
        self._changes: dict[str, dict[str, Any] | None] = {}

    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        """Entries stored or removed since the last call, for the compacted join changelog."""
        out, self._changes = self._changes, {}
        return out

    def snapshot(self) -> dict[str, Any]:
        """Watermarks and counters (the entries themselves live in the changelog)."""
        return {"prediction_watermark": _finite(self.prediction_watermark),
                "label_watermark": _finite(self.label_watermark), "counters": dict(self.counters.__dict__)}

    def restore(self, meta: dict[str, Any] | None, entries: dict[str, dict[str, Any]]) -> LabelJoin:
        """Rebuild the store from the changelog's latest entries (and the snapshot's watermarks)."""
        preds = sorted((v["t"], k[2:], v) for k, v in entries.items() if k.startswith("p/"))
        labels = sorted((v["t"], k[2:], v) for k, v in entries.items() if k.startswith("l/"))
        for t, eid, v in preds:  # oldest first: eviction order survives the restart
            self._predictions[eid] = (t, v["prediction"], v.get("score"))
        for t, eid, v in labels:
            self._labels[eid] = (t, v["label"])
        if meta:
            self.prediction_watermark = _unfinite(meta.get("prediction_watermark"))
            self.label_watermark = _unfinite(meta.get("label_watermark"))
            self.counters = JoinCounters(**meta.get("counters", {}))
        return self

    @property
    def watermark(self) -> float:
        return max(self.prediction_watermark, self.label_watermark)

    @property
    def maturity_watermark(self) -> float:
        """Event time up to which both streams have been read: the slower one, at most ``label_stall_s`` behind."""
        both = min(self.prediction_watermark, self.label_watermark)
        return max(both, self.prediction_watermark - self.cfg.label_stall_s)

    @property
    def pending(self) -> int:
        return len(self._predictions) + len(self._labels)

    def add_predictions(self, events: list[dict[str, Any]]) -> list[JoinedPair]:
        out = []
        for ev in events:
            eid = ev["event_id"]
            if eid in self._predictions or eid in self._joined:
                self.counters.duplicate_predictions += 1
                continue
            t = ev["timestamp"]
            self.prediction_watermark = max(self.prediction_watermark, t)
            early = self._labels.pop(eid, None)
            if early is not None:
                self._changes["l/" + eid] = None
                out.append(self._join(eid, t, ev["prediction"], ev.get("score"), *early))
            else:
                self._predictions[eid] = (t, ev["prediction"], ev.get("score"))
                self._changes["p/" + eid] = {"t": t, "prediction": ev["prediction"], "score": ev.get("score")}
        self._expire()
        return out

    def add_labels(self, events: list[dict[str, Any]]) -> list[JoinedPair]:
        out = []
        for ev in events:
            eid = ev["event_id"]
            t = ev["timestamp"]
            self.label_watermark = max(self.label_watermark, t)
            if eid in self._joined or eid in self._labels:
                self.counters.duplicate_labels += 1
                continue
            pred = self._predictions.pop(eid, None)
            if pred is not None:
                self._changes["p/" + eid] = None
                out.append(self._join(eid, pred[0], pred[1], pred[2], t, ev["label"]))
            else:
                self._labels[eid] = (t, ev["label"])
                self._changes["l/" + eid] = {"t": t, "label": ev["label"]}
        self._expire()
        return out

    def _join(self, eid: str, tp: float, pred: Any, score: float | None, tl: float, label: Any) -> JoinedPair:
        self.counters.joined += 1
        self._joined[eid] = None
        if len(self._joined) > self.cfg.max_joined_ids:
            self._joined.popitem(last=False)
        return JoinedPair(eid, tp, tl, pred, score, label)

    def _expire(self) -> None:
        horizon = self.watermark - self.cfg.ttl_s
        while self._predictions:
            eid, (t, _, _) = next(iter(self._predictions.items()))
            if t >= horizon:
                break
            del self._predictions[eid]
            self._changes["p/" + eid] = None
            self.counters.expired_predictions += 1
        while self._labels:
            eid, (t, _) = next(iter(self._labels.items()))
            if t >= horizon:
                break
            del self._labels[eid]
            self._changes["l/" + eid] = None
            self.counters.expired_labels += 1
        while self.pending > self.cfg.max_pending:
            side = "p/" if len(self._predictions) >= len(self._labels) else "l/"
            store = self._predictions if side == "p/" else self._labels
            eid, _ = store.popitem(last=False)
            self._changes[side + eid] = None
            self.counters.evicted += 1


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


def _estimate(n: int, correct: float, tp: float, fp: float, fn: float) -> dict[str, float]:
    """Expected accuracy and F1 from the running sums of P(correct), expected TP, FP and FN."""
    return {"accuracy": _r(correct / n), "f1": _r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")}


# -- windows ---------------------------------------------------------------------------------------------------
@dataclass
class _PerfWindow:
    """Running sums of one window: memory per window is constant plus a reservoir of ``max_pairs`` pairs."""

    predictions: int = 0
    # the estimate (CBPE), from every scored prediction
    est_n: int = 0
    est_correct: float = 0.0
    est_tp: float = 0.0
    est_fp: float = 0.0
    est_fn: float = 0.0
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
    # a uniform sample of the pairs, for ROC AUC and label-lag percentiles
    pairs: list[JoinedPair] = field(default_factory=list)


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

    def to_dict(self) -> dict[str, Any]:
        return {"type": "performance", **self.__dict__}


class PerformanceTracker:
    """Per-window joined pairs and scores of one model; reports mature windows."""

    def __init__(self, model: str, cfg: PerformanceConfig, seed: int = 0) -> None:
        self.model = model
        self.cfg = cfg
        self.positive = None if cfg.positive_label is None else _label_key(cfg.positive_label)
        self.rng = np.random.default_rng(seed)
        self._reset()

    def _reset(self) -> None:
        self._windows: dict[int, _PerfWindow] = {}
        self._reported_below = -(2 ** 62)  # windows with a smaller index were reported
        self.late_labels = 0
        self.late_predictions = 0

    def _index(self, t: float) -> int:
        return int(t // self.cfg.window_s)

    def add_predictions(self, events: list[dict[str, Any]]) -> None:
        for ev in events:  # per event, not per feature: a few dict reads
            w = self._index(ev["timestamp"])
            if w < self._reported_below:
                self.late_predictions += 1
                continue
            win = self._windows.get(w)
            if win is None:
                win = self._windows[w] = _PerfWindow()
            win.predictions += 1
            s = ev.get("score")
            if s is not None and self.positive is not None:
                s = float(s)
                win.est_n += 1
                if _label_key(ev["prediction"]) == self.positive:
                    win.est_correct += s
                    win.est_tp += s
                    win.est_fp += 1.0 - s
                else:
                    win.est_correct += 1.0 - s
                    win.est_fn += s

    def add_pairs(self, pairs: list[JoinedPair]) -> None:
        for p in pairs:
            w = self._index(p.prediction_time)
            win = self._windows.get(w)
            if win is None:
                if w < self._reported_below:
                    self.late_labels += 1
                    continue
                win = self._windows[w] = _PerfWindow()
            win.seen_pairs += 1
            self._count(win, p)
            if len(win.pairs) < self.cfg.max_pairs:
                win.pairs.append(p)
            else:  # uniform reservoir over the window's pairs
                j = int(self.rng.integers(0, win.seen_pairs))
                if j < self.cfg.max_pairs:
                    win.pairs[j] = p

    def snapshot(self) -> dict[str, Any]:
        """Open windows' running sums (their pair samples are not kept: a window spanning a restart reports
        ROC AUC and lag percentiles from the pairs joined after it)."""
        return {"reported_below": self._reported_below, "late_labels": self.late_labels,
                "late_predictions": self.late_predictions,
                "windows": {str(w): {k: v for k, v in win.__dict__.items() if k != "pairs"}
                            for w, win in self._windows.items()}}

    def restore(self, d: dict[str, Any]) -> PerformanceTracker:
        self._reported_below = int(d["reported_below"])
        self.late_labels = int(d["late_labels"])
        self.late_predictions = int(d["late_predictions"])
        self._windows = {int(w): _PerfWindow(**v) for w, v in d["windows"].items()}
        return self

    def _count(self, win: _PerfWindow, p: JoinedPair) -> None:
        if self.cfg.task == "regression":
            err = float(p.prediction) - float(p.label)
            win.abs_err += abs(err)
            win.sq_err += err * err
            return
        truth, pred = _label_key(p.label), _label_key(p.prediction)
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

    def mature(self, watermark: float) -> list[PerformanceReport]:
        """Report (and forget) every window whose end + maturity_s is at or before ``watermark``."""
        ready = sorted(w for w in self._windows if (w + 1) * self.cfg.window_s + self.cfg.maturity_s <= watermark)
        out = [self._report(w, self._windows.pop(w)) for w in ready]
        if ready:
            self._reported_below = max(self._reported_below, ready[-1] + 1)
        return out

    def _report(self, w: int, win: _PerfWindow) -> PerformanceReport:
        n = win.seen_pairs
        lags = np.array([p.label_time - p.prediction_time for p in win.pairs])
        metrics: dict[str, float] = {}
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
                sample = [p for p in win.pairs if p.score is not None]
                if sample:  # ROC AUC needs the scores themselves: exact up to max_pairs pairs, sampled beyond
                    auc = roc_auc(np.array([_label_key(p.label) == self.positive for p in sample]),
                                  np.array([p.score for p in sample], dtype=np.float64))
                    if auc is not None:
                        metrics["roc_auc"] = auc
        estimated: dict[str, float] = {}
        if self.cfg.estimate and self.cfg.task == "binary" and win.est_n:
            estimated = _estimate(win.est_n, win.est_correct, win.est_tp, win.est_fp, win.est_fn)
        coverage = n / win.predictions if win.predictions else 0.0
        return PerformanceReport(
            self.model, w * self.cfg.window_s, (w + 1) * self.cfg.window_s, win.predictions, n,
            _r(min(coverage, 1.0)), _r(np.percentile(lags, 50)) if lags.size else None,
            _r(np.percentile(lags, 95)) if lags.size else None, metrics, estimated, self.late_labels)


def _label_key(v: Any) -> str:
    """Labels and predictions compare as strings: 1, 1.0, "1" and True are the same class."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# -- concept drift ---------------------------------------------------------------------------------------------
def _make_detector(cfg: DetectorConfig) -> Any:
    from river import drift
    from river.drift import binary

    cls = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN, "ddm": binary.DDM,
           "eddm": binary.EDDM, "hddm_a": binary.HDDMA, "hddm_w": binary.HDDMW}[cfg.type]
    try:
        return cls(**cfg.params)
    except TypeError as exc:
        raise ValueError(f"concept_drift: {cfg.type} params {cfg.params}: {exc}") from None


_BINARY_INPUT = {"ddm", "eddm", "hddm_a", "hddm_w"}


class ConceptDriftDetectors:
    """river detectors over the error of joined pairs; remembers warnings and drifts since the last read."""

    def __init__(self, detectors: tuple[DetectorConfig, ...], task: str) -> None:
        self.cfgs = detectors
        self.task = task
        self._reset()

    def _reset(self) -> None:
        self.detectors = [_make_detector(c) for c in self.cfgs]
        self.drifts = [0] * len(self.cfgs)  # since the last take()
        self.warnings = [0] * len(self.cfgs)
        self.seen = 0

    def update(self, pairs: list[JoinedPair]) -> None:
        if not self.detectors or not pairs:
            return
        pairs = sorted(pairs, key=lambda p: p.prediction_time)  # the error stream in prediction order
        if self.task == "regression":
            errors = [abs(float(p.prediction) - float(p.label)) for p in pairs]
        else:
            errors = [0.0 if _label_key(p.prediction) == _label_key(p.label) else 1.0 for p in pairs]
        self.seen += len(errors)
        for i, (cfg, det) in enumerate(zip(self.cfgs, self.detectors)):
            binary_input = cfg.type in _BINARY_INPUT
            for e in errors:  # river detectors are online: one update per pair
                det.update(bool(e > 0) if binary_input else e)
                if det.drift_detected:
                    self.drifts[i] += 1
                elif getattr(det, "warning_detected", False):
                    self.warnings[i] += 1

    def take(self) -> list[tuple[str, int, int]]:
        """(detector, drifts, warnings) since the last call."""
        out = [(c.type, d, w) for c, d, w in zip(self.cfgs, self.drifts, self.warnings)]
        self.drifts = [0] * len(self.cfgs)
        self.warnings = [0] * len(self.cfgs)
        return out

    def snapshot(self) -> dict[str, Any]:
        # river detectors have no public state API; their pickles are small (ADWIN: ~1 kB)
        return {"types": [c.type for c in self.cfgs], "seen": self.seen,
                "state": base64.b64encode(pickle.dumps(self.detectors)).decode()}

    def restore(self, d: dict[str, Any]) -> ConceptDriftDetectors:
        if d.get("types") == [c.type for c in self.cfgs]:
            self.detectors = pickle.loads(base64.b64decode(d["state"]))  # noqa: S301 - our own checkpoint
            self.seen = int(d.get("seen", 0))
        return self
