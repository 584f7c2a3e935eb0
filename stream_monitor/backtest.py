"""Replay past events through the monitor's core, offline: what would it have raised?

:class:`Backtest` feeds predictions (and labels, merged by event time) to the same
:class:`~.core.monitor.Monitor` that ``stream-monitor run`` uses, in batches, and keeps what a report needs:
every alert, per model and feature the decision statistic and threshold of every window, reference and
window histograms of the worst windows, and the matured performance reports. No Kafka here: the events come
from a file (:func:`~.core.reference.read_events`) or from a topic range read by the Kafka edge.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import MonitorConfig
from .core.alerts import Alert
from .core.monitor import Monitor, WindowResult, load_references
from .core.sketches import Pane

__all__ = ["Backtest", "BacktestResult", "Histogram", "ModelTrace", "merge_by_time"]

#: Worst windows per model whose histograms the report draws.
WORST_WINDOWS = 3


@dataclass(frozen=True)
class Histogram:
    """Reference and window shares over the same bins of one feature in one window."""

    feature: str
    labels: list[str]  # bin labels: numeric ranges or categories
    reference: list[float]
    window: list[float]
    statistic: str
    value: float
    threshold: float


@dataclass
class ModelTrace:
    """One model's figures over the replay."""

    windows: list[dict[str, Any]] = field(default_factory=list)  # index, start, end, events, skipped
    # (kind, feature, statistic) -> list of (window end, value, threshold, over)
    series: dict[tuple[str, str, str], list[tuple[float, float, float, bool]]] = field(default_factory=dict)
    worst: list[tuple[float, int, dict[str, Any], list[Histogram]]] = field(default_factory=list)  # a min-heap
    performance: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BacktestResult:
    predictions: int = 0
    labels: int = 0
    alerts: list[Alert] = field(default_factory=list)
    models: dict[str, ModelTrace] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.predictions} predictions, {self.labels} labels replayed"]
        for name, tr in self.models.items():
            evaluated = sum(1 for w in tr.windows if not w["skipped"])
            mine = [a for a in self.alerts if a.model == name]
            firing = [a for a in mine if a.status == "firing"]
            over = sorted({f"{k}:{f}" for (k, f, _), pts in tr.series.items() if any(p[3] for p in pts)})
            lines.append(f"model {name}: {len(tr.windows)} windows ({evaluated} evaluated), {len(firing)} alerts "
                         f"fired, {sum(a.status == 'resolved' for a in mine)} resolved"
                         + (f"; over threshold: {', '.join(over)}" if over else ""))
        return "\n".join(lines)


def merge_by_time(predictions: list[dict[str, Any]], labels: list[dict[str, Any]],
                  batch: int = 1000) -> Iterable[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Batches of ``batch`` predictions in the order given (as their partition would deliver them), each with
    the labels (also in the order given) stamped up to the latest prediction time so far, as they would have
    arrived. The monitor's outputs do not depend on where the batches are cut (see
    :meth:`~.core.monitor.ModelMonitor.label_outputs`): this only bounds the memory of the replay."""
    j = 0
    latest = -np.inf
    for i in range(0, len(predictions), batch):
        chunk = predictions[i:i + batch]
        latest = max(latest, max(e["timestamp"] for e in chunk))
        k = j
        while k < len(labels) and labels[k]["timestamp"] <= latest:
            k += 1
        yield chunk, labels[j:k]
        j = k
    if j < len(labels):
        yield [], labels[j:]


def _histograms(res: WindowResult, top: int = 4) -> list[Histogram]:
    """Reference vs window shares of the window's worst features (by statistic / threshold)."""
    assert res.panes is not None
    ref, cur = res.panes
    b = ref.binning
    ranked = sorted((f for f in res.findings if f.feature and f.threshold and f.kind != "data_quality"),
                    key=lambda f: -f.value / f.threshold)
    out, seen = [], set()
    for f in ranked:
        if f.feature in seen:
            continue
        seen.add(f.feature)
        h = _feature_histogram(b, ref, cur, f.feature)
        if h is not None:
            out.append(Histogram(f.feature, h[0], h[1], h[2], f.statistic, f.value, f.threshold))
        if len(out) >= top:
            break
    return out


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c) / total, 5) if total else 0.0 for c in counts]


def _feature_histogram(b: Any, ref: Pane, cur: Pane, feature: str) -> tuple[list[str], list[float], list[float]] | None:
    if feature in b.numeric:
        i = b.numeric.index(feature)
        valid = b.bin_valid[i]
        cuts = [float(x) for x in b.edges[i] if np.isfinite(x)]
        bounds = [float(b.lo[i]), *cuts, float(b.hi[i])]
        labels = [f"{bounds[j]:.3g}..{bounds[j + 1]:.3g}" if j + 1 < len(bounds) else f"> {bounds[-1]:.3g}"
                  for j in range(int(valid.sum()))]
        r, c = ref.num_counts[i][valid], cur.num_counts[i][valid]
        return labels, _shares(r), _shares(c)
    if feature in b.categorical:
        i = b.categorical.index(feature)
        cats = list(b.categories[i])
        r, c = ref.cat_counts[i][:len(cats)], cur.cat_counts[i][:len(cats)]
        other_r, other_c = ref.cat_counts[i][len(cats):].sum(), cur.cat_counts[i][len(cats):].sum()
        labels = cats + (["(other)"] if other_r or other_c else [])
        if other_r or other_c:
            r, c = np.append(r, other_r), np.append(c, other_c)
        return labels, _shares(r), _shares(c)
    return None


class Backtest:
    """Runs a config's monitor over past events (see the module docstring)."""

    def __init__(self, cfg: MonitorConfig, batch: int = 1000) -> None:
        self.cfg = cfg
        self.batch = batch
        self.monitor = Monitor(cfg, load_references(cfg))
        self.result = BacktestResult(models={name: ModelTrace() for name in cfg.models})

    def run(self, predictions: list[dict[str, Any]], labels: list[dict[str, Any]] | None = None,
            progress: Callable[[int, int], None] | None = None) -> BacktestResult:
        total = len(predictions)
        done = 0
        batches = merge_by_time(predictions, labels or [], self.batch)
        nxt = next(batches, None)
        while nxt is not None:
            (preds, labs), nxt = nxt, next(batches, None)
            self.feed(preds, labs, last=nxt is None)
            done += len(preds)
            if progress is not None:
                progress(done, total)
        return self.result

    def feed(self, predictions: list[dict[str, Any]], labels: list[dict[str, Any]], last: bool = True
             ) -> list[Alert]:
        """One batch through the monitor, as the live path takes it; ``last``: nothing more will come, so a
        stream may now be judged stalled (before, both are merely being read, as a replayed topic is)."""
        out = self.monitor.process_batch(predictions, labels, predictions_idle=last, labels_idle=last)
        r = self.result
        r.predictions += len(predictions)
        r.labels += len(labels)
        r.alerts += out.alerts
        for res in out.results:
            self._window(res)
        for rep in out.reports:
            if rep["type"] == "performance" and rep["model"] in r.models:
                r.models[rep["model"]].performance.append(rep)
        return out.alerts

    def _window(self, res: WindowResult) -> None:
        tr = self.result.models[res.model]
        w = {**res.window.__dict__, "skipped": res.skipped}
        tr.windows.append(w)
        for f in res.findings:
            if f.kind == "latency":
                continue
            tr.series.setdefault((f.kind, f.feature or "", f.statistic), []).append(
                (res.window.end, f.value, f.threshold, bool(f.over)))
        scored = [f.value / f.threshold for f in res.findings if f.threshold and f.kind != "latency"]
        if res.panes is None or not scored:
            return
        worst = max(scored)
        if len(tr.worst) < WORST_WINDOWS or worst > tr.worst[0][0]:
            item = (worst, res.window.index, w, _histograms(res))
            if len(tr.worst) < WORST_WINDOWS:
                heapq.heappush(tr.worst, item)
            else:
                heapq.heapreplace(tr.worst, item)
