"""The monitoring core: decoded events in; alerts, breaker signals, reports and checkpoints out. No Kafka here.

:class:`ModelMonitor` owns one model's state: the reference (file or warm-up), the windows, the rolling or
calendar reference store. :class:`Monitor` routes a batch of events to the model monitors and runs the alert
policy on what they find. The Kafka edge (``stream_monitor.kafka.runner``) feeds :meth:`Monitor.process`
with each consumed batch and publishes what it returns.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, MonitorConfig
from .alerts import Alert, AlertPolicy, WindowInfo
from .breaker import BreakerSignal, CircuitBreaker
from .columns import PREDICTION, SCORE, Columns, build_columns, column_names
from .drift import Finding, evaluate_window
from .labels import ConceptDriftDetectors, LabelJoin, PerformanceReport, PerformanceTracker
from .sketches import LatencySketch
from .reference import CalendarReference, Reference, RollingReference
from .windows import ClosedWindow, CountWindows, TimeWindows

__all__ = ["BatchOutput", "Monitor", "ModelMonitor", "WindowResult"]

logger = logging.getLogger(__name__)

#: Rows kept per calendar slot and cycle (slots * periods of them are kept per model).
CALENDAR_SLOT_CAP = 250


@dataclass(frozen=True)
class WindowResult:
    model: str
    model_version: str
    window: WindowInfo
    reference_id: str | None
    findings: list[Finding]
    skipped: str | None = None  # why the window was not evaluated
    latency_ms: dict[str, float] | None = None  # p50/p95/p99 when the events carry latency_ms

    def to_dict(self) -> dict[str, Any]:
        """The window report published on the metrics topic."""
        return {"type": "drift", "model": self.model, "model_version": self.model_version,
                "window": self.window.__dict__, "reference_id": self.reference_id, "skipped": self.skipped,
                "latency_ms": self.latency_ms,
                "findings": [{"feature": f.feature, "kind": f.kind, "statistic": f.statistic, "value": f.value,
                              "threshold": f.threshold, "p_value": f.p_value, "over": f.over} for f in self.findings]}


@dataclass
class BatchOutput:
    """What one batch produced: evaluated windows, alert events, breaker signals and state checkpoints."""

    results: list[WindowResult] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    signals: list[BreakerSignal] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # window reports for the metrics topic
    join_changes: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # "<model>/<key>" -> entry
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # key on the state topic -> value


@dataclass
class MonitorCounters:
    events: int = 0
    sampled_out: int = 0
    unmonitored: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    alerts: int = 0


class ModelMonitor:
    """One model's drift state.

    Parameters
    ----------
    cfg
        The model's validated config.
    reference
        A prebuilt reference (``reference.type: file``); loaded from ``cfg.reference.path`` when omitted.
    """

    def __init__(self, cfg: ModelConfig, reference: Reference | None = None) -> None:
        self.cfg = cfg
        self.numeric, self.categorical = column_names(
            cfg.features.numeric, cfg.features.categorical, cfg.prediction, cfg.monitor_score)
        self.prediction_features = frozenset({PREDICTION, SCORE})
        if reference is None and cfg.reference.type == "file":
            reference = Reference.load(cfg.reference.path)  # type: ignore[arg-type]
        if reference is not None:
            self._check_reference(reference)
        self._preloaded = reference
        self.new_reference = False  # set when a warm-up reference was just built: it is checkpointed
        perf = cfg.performance
        self.labels_enabled = perf.task != "none" or bool(cfg.concept_drift)
        self.join = LabelJoin(cfg.join) if self.labels_enabled else None
        self.performance = PerformanceTracker(cfg.name, perf, cfg.seed) if self.labels_enabled else None
        self.concept = ConceptDriftDetectors(cfg.concept_drift, perf.task) if cfg.concept_drift else None
        self.last_version = ""
        self._reset()

    def restore_reference(self, ref: Reference) -> bool:
        """Use a checkpointed warm-up reference instead of warming up again (after a restart)."""
        if self.reference is not None or self.cfg.reference.type == "file":
            return False
        try:
            self._check_reference(ref)
        except ValueError as exc:  # the features changed since the checkpoint: warm up afresh
            logger.warning("model %s: checkpointed reference not used: %s", self.cfg.name, exc)
            return False
        self._warmup, self._warmup_n = [], 0
        self._start(ref)
        return True

    def _check_reference(self, ref: Reference) -> None:
        if ref.binning.numeric != self.numeric or ref.binning.categorical != self.categorical:
            raise ValueError(
                f"models.{self.cfg.name}.reference.path: reference {ref.id} has numeric {list(ref.binning.numeric)} "
                f"and categorical {list(ref.binning.categorical)}, the config wants {list(self.numeric)} and "
                f"{list(self.categorical)}")

    def _reset(self) -> None:
        cfg = self.cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.reference: Reference | None = None
        self._warmup: list[Columns] = []
        self._warmup_n = 0
        self.windows: CountWindows | TimeWindows | None = None
        self.rolling: RollingReference | None = None
        self.calendar: CalendarReference | None = None
        if self._preloaded is not None:
            self._start(self._preloaded)

    def _start(self, ref: Reference) -> None:
        cfg = self.cfg
        self.reference = ref
        w, cap = cfg.window, cfg.drift.sample_size
        if w.by == "count":
            self.windows = CountWindows(int(w.size), int(w.slide) if w.slide else None, ref.binning, cap, self.rng)
        else:
            self.windows = TimeWindows(w.size, w.slide, w.lateness_s, ref.binning, cap, self.rng)
        if cfg.reference.type == "rolling":
            self.rolling = RollingReference(cfg.reference.windows, self.windows.n_panes, cap)
        elif cfg.reference.type == "calendar":
            self.calendar = CalendarReference(cfg.reference.period_s, cfg.reference.slot_s,
                                              cfg.reference.periods, min(cap, CALENDAR_SLOT_CAP))
        logger.info("model %s: reference %s ready (%d events)", cfg.name, ref.id, ref.pane.n)

    @property
    def late_events(self) -> int:
        return self.windows.late_events if self.windows else 0

    def update(self, events: list[dict[str, Any]]) -> list[WindowResult]:
        """Add decoded events of this model; returns the windows that closed, evaluated."""
        cfg = self.cfg
        cols = build_columns(events, cfg.features.numeric, cfg.features.categorical, cfg.prediction,
                             cfg.monitor_score)
        if self.reference is None:
            need = cfg.reference.size - self._warmup_n
            self._warmup.append(cols.take(slice(0, need)))
            self._warmup_n += min(need, cols.n)
            if self._warmup_n < cfg.reference.size:
                return []
            self._start(self._build_warmup_reference())
            self.new_reference = True
            cols = cols.take(slice(need, None))
        assert self.windows is not None
        return [self._evaluate(w) for w in self.windows.update(cols)]

    def _add_pairs(self, pairs: list[Any]) -> None:
        assert self.performance is not None
        self.performance.add_pairs(pairs)
        if self.concept is not None:
            self.concept.update(pairs)

    def observe_predictions(self, events: list[dict[str, Any]]) -> None:
        """Every prediction (before sampling) enters the label join and the performance windows."""
        self.last_version = events[-1]["model_version"]
        if self.join is not None and self.performance is not None:
            self.performance.add_predictions(events)
            self._add_pairs(self.join.add_predictions(events))  # labels that arrived first

    def update_labels(self, events: list[dict[str, Any]]) -> None:
        """Add decoded label events of this model."""
        if self.join is not None:
            self._add_pairs(self.join.add_labels(events))

    def mature_reports(self) -> list[tuple[PerformanceReport, list[Finding]]]:
        """Performance windows whose labels have matured, each with its findings for the alert policy."""
        if self.join is None or self.performance is None:
            return []
        perf = self.cfg.performance
        out = []
        for rep in self.performance.mature(self.join.maturity_watermark):
            findings = []
            for metric, bound in perf.thresholds.items():
                v = rep.metrics.get(metric)
                if v is None or v != v:  # not computed (too few labels) or undefined
                    continue
                low = bound.min is not None and v < bound.min
                high = bound.max is not None and v > bound.max
                thr = bound.min if bound.min is not None and (low or bound.max is None) else bound.max
                findings.append(Finding(None, "performance", metric, v, float(thr), bool(low or high), None,
                                        rep.labeled, {"estimated": rep.estimated, "coverage": rep.coverage}))
            if perf.min_coverage is not None and rep.predictions:
                findings.append(Finding(None, "label_coverage", "coverage", rep.coverage, perf.min_coverage,
                                        rep.coverage < perf.min_coverage, None, rep.predictions,
                                        {"lag_p50_s": rep.lag_p50_s, "lag_p95_s": rep.lag_p95_s},
                                        severity=None))
            if self.concept is not None:
                for name, drifts, warnings in self.concept.take():
                    level = 2.0 if drifts else (1.0 if warnings else 0.0)
                    findings.append(Finding(None, "concept_drift", name, level, 1.0, level >= 1.0, None, rep.labeled,
                                            {"drifts": drifts, "warnings": warnings}, consecutive=1,
                                            severity="critical" if drifts else "warning"))
            out.append((rep, findings))
        return out

    def _build_warmup_reference(self) -> Reference:
        cfg = self.cfg
        parts = self._warmup
        self._warmup = []
        cols = Columns(*(np.concatenate([getattr(p, f) for p in parts]) for f in Columns.__slots__))
        ref = Reference.from_columns(cfg.name, "warmup", cols, self.numeric, self.categorical, cfg.drift.bins,
                                     cfg.drift.max_categories, cfg.drift.max_known_categories,
                                     cfg.drift.sample_size, self.rng)
        if cfg.reference.store_dir:
            path = Path(cfg.reference.store_dir) / f"{cfg.name}-{ref.id.replace(':', '-')}.json"
            ref.save(path)
            logger.info("model %s: warm-up reference saved to %s", cfg.name, path)
        return ref

    def _evaluate(self, w: ClosedWindow) -> WindowResult:
        assert self.reference is not None
        cfg = self.cfg
        info = WindowInfo(w.index, w.start, w.end, w.pane.n)
        ref_id: str | None = self.reference.id
        ref_pane = self.reference.pane
        if self.rolling is not None:
            got = self.rolling.reference_for(self.reference.id, self.rng)
            self.rolling.add(w.start, w.end, w.pane)
            ref_id, ref_pane = got if got else (None, None)
        elif self.calendar is not None:
            got = self.calendar.reference_for(self.reference.id, w.start, self.rng)
            self.calendar.add(w.start, w.pane, self.rng)
            ref_id, ref_pane = got if got else (None, None)
        if ref_pane is None or ref_pane.n < cfg.reference.min_events:
            return WindowResult(cfg.name, w.pane.main_version, info, ref_id, [], skipped="reference not ready")
        if w.pane.n < cfg.drift.min_window_events:
            return WindowResult(cfg.name, w.pane.main_version, info, ref_id, [], skipped="window too small")
        findings = evaluate_window(self.reference.binning, ref_pane, w.pane, cfg.drift, self.prediction_features)
        latency = None
        if w.pane.latency.sum():
            latency = {f"p{q}": round(LatencySketch.quantile(w.pane.latency, q / 100), 3) for q in (50, 95, 99)}
            sla = cfg.latency.sla_p99_ms
            if sla is not None:
                findings.append(Finding(None, "latency", "p99_ms", latency["p99"], sla, latency["p99"] > sla, None,
                                        int(w.pane.latency.sum()), dict(latency), consecutive=cfg.latency.windows))
        return WindowResult(cfg.name, w.pane.main_version, info, ref_id, findings, latency_ms=latency)


def _by_model(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_model.setdefault(ev["model"], []).append(ev)
    return by_model


class Monitor:
    """All models of a config, one alert policy over them, and a circuit breaker per model that has one."""

    def __init__(self, cfg: MonitorConfig, references: dict[str, Reference] | None = None) -> None:
        self.cfg = cfg
        refs = references or {}
        self.models = {name: ModelMonitor(m, refs.get(name)) for name, m in cfg.models.items()}
        self.policy = AlertPolicy(cfg.alerts)
        self.breakers = {name: CircuitBreaker(name, m.breaker) for name, m in cfg.models.items() if m.breaker.enabled}
        self.counters = MonitorCounters()
        self._rng = np.random.default_rng(0)

    def process(self, events: list[dict[str, Any]]) -> BatchOutput:
        """Feed one batch of decoded prediction events; returns what to publish."""
        self.counters.events += len(events)
        out = BatchOutput()
        for name, evs in _by_model(events).items():
            mm = self.models.get(name)
            if mm is None:
                if not self.counters.unmonitored[name]:
                    logger.warning("events of model %r are not monitored: it is not in the config", name)
                self.counters.unmonitored[name] += len(evs)
                continue
            mm.observe_predictions(evs)
            rate = mm.cfg.sample_rate
            if rate < 1:
                keep = self._rng.random(len(evs)) < rate
                self.counters.sampled_out += int((~keep).sum())
                evs = [e for e, k in zip(evs, keep) if k]
            if not evs:
                continue
            results = mm.update(evs)
            if mm.new_reference and mm.reference is not None:
                mm.new_reference = False
                out.checkpoints[f"ref/{name}"] = mm.reference.to_dict()
            for r in results:
                out.results.append(r)
                out.reports.append(r.to_dict())
                self.counters.windows += 1
                if r.skipped is None:
                    self._decide(name, r.model_version, r.window, r.findings, r.reference_id, rate, out)
            matured = self._mature(name, out)
            joined = self._join_changes(name, out)
            if results or matured or joined:
                out.checkpoints[f"model/{name}"] = self.snapshot_model(name)
        self.counters.alerts += len(out.alerts)
        return out

    def process_labels(self, events: list[dict[str, Any]]) -> BatchOutput:
        """Feed one batch of decoded label events; returns what to publish."""
        out = BatchOutput()
        for name, evs in _by_model(events).items():
            mm = self.models.get(name)
            if mm is None or not mm.labels_enabled:
                self.counters.unmonitored[name] += len(evs)
                continue
            mm.update_labels(evs)
            matured = self._mature(name, out)
            if self._join_changes(name, out) or matured:
                out.checkpoints[f"model/{name}"] = self.snapshot_model(name)
        self.counters.alerts += len(out.alerts)
        return out

    def _join_changes(self, name: str, out: BatchOutput) -> int:
        join = self.models[name].join
        if join is None:
            return 0
        changes = join.take_changes()
        out.join_changes.update({f"{name}/{k}": v for k, v in changes.items()})
        return len(changes)

    def restore_join(self, entries: dict[str, dict[str, Any]], meta: dict[str, dict[str, Any]]) -> int:
        """Rebuild each model's label join from the changelog ("<model>/<key>" -> entry); returns entries."""
        per_model: dict[str, dict[str, dict[str, Any]]] = {}
        for key, value in entries.items():
            model, _, rest = key.partition("/")
            per_model.setdefault(model, {})[rest] = value
        n = 0
        for name, mm in self.models.items():
            if mm.join is not None:
                mm.join.restore(meta.get(name), per_model.get(name, {}))
                n += mm.join.pending
        return n

    def _decide(self, name: str, version: str, window: WindowInfo, findings: list[Finding],
                reference_id: str | None, rate: float, out: BatchOutput) -> None:
        breaker = self.breakers.get(name)
        out.alerts.extend(self.policy.update(name, version, window, findings, reference_id, rate,
                                             breaker_open=bool(breaker and breaker.state != "closed")))
        if breaker is not None:
            sig = breaker.update(window.end, self.policy.active(name))
            if sig is not None:
                out.signals.append(sig)

    def _mature(self, name: str, out: BatchOutput) -> int:
        mm = self.models[name]
        reports = mm.mature_reports()
        for rep, findings in reports:
            out.reports.append(rep.to_dict())
            info = WindowInfo(int(rep.start // mm.cfg.performance.window_s), rep.start, rep.end, rep.predictions)
            self._decide(name, mm.last_version, info, findings, None, mm.cfg.sample_rate, out)
        return len(reports)

    def observe_breaker(self, sig: BreakerSignal) -> None:
        """A record from the breaker topic (manual overrides, or our own last state at start-up)."""
        breaker = self.breakers.get(sig.model)
        if breaker is not None:
            breaker.observe(sig)

    def snapshot_model(self, name: str) -> dict[str, Any]:
        breaker = self.breakers.get(name)
        mm = self.models[name]
        return {"policy": self.policy.snapshot(name), "breaker": breaker.snapshot() if breaker else None,
                "concept": mm.concept.snapshot() if mm.concept else None,
                "join": mm.join.snapshot() if mm.join else None,
                "performance": mm.performance.snapshot() if mm.performance else None}

    def restore(self, checkpoints: dict[str, dict[str, Any]]) -> list[str]:
        """Restore references, alert state and breaker state from the state topic; returns what was restored."""
        restored = []
        for key, value in checkpoints.items():
            kind, _, name = key.partition("/")
            if name not in self.models:
                continue
            if kind == "ref" and self.models[name].restore_reference(Reference.from_dict(value)):
                restored.append(key)
            elif kind == "model":
                self.policy.restore(value.get("policy") or {})
                if value.get("breaker") and name in self.breakers:
                    self.breakers[name].restore(value["breaker"])
                mm = self.models[name]
                if value.get("concept") and mm.concept is not None:
                    mm.concept.restore(value["concept"])
                if value.get("performance") and mm.performance is not None:
                    mm.performance.restore(value["performance"])
                restored.append(key)
        return restored
