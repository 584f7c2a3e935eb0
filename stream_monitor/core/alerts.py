"""Alert events and the policy that turns per-window findings into them.

A condition is one ``(model, kind, feature, statistic)``. The policy keeps, per condition, how many windows in
a row it has been over (or back under) its threshold:

- it **fires** after ``consecutive`` windows over (hysteresis: one noisy window pages nobody);
- while firing it is silent, or re-sent with the same ``alert_id`` every ``repeat_every`` windows;
- it **resolves** after ``resolve_after`` windows back under, with the same ``alert_id`` and status
  ``resolved``.

``alert_id`` is a hash of the condition and the window in which it fired, so the same condition in the same
window has the same id, and consumers deduplicate on it. The policy state is a plain dict
(:meth:`AlertPolicy.snapshot`) so it can be checkpointed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import AlertsConfig
from .drift import Finding

__all__ = ["Alert", "AlertPolicy", "WindowInfo"]


@dataclass(frozen=True)
class WindowInfo:
    index: int
    start: float
    end: float
    events: int


@dataclass(frozen=True)
class Alert:
    """One alert event, as published on the alert topic (see ``schemas/alert.schema.json``)."""

    alert_id: str
    dedup_key: str
    status: str  # firing | resolved
    severity: str  # info | warning | critical
    kind: str  # data_drift | data_quality | prediction_drift | concept_drift | performance | latency | ...
    model: str
    model_version: str
    feature: str | None
    detector: str
    statistic: str
    value: float
    threshold: float
    p_value: float | None
    window: dict[str, Any]
    reference_id: str | None
    sample_rate: float
    message: str
    runbook_url: str
    created_at: float
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Condition:
    over_streak: int = 0
    under_streak: int = 0
    firing_id: str | None = None
    since_sent: int = 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class AlertPolicy:
    """Hysteresis, repeat and auto-resolve for every condition of every model."""

    def __init__(self, cfg: AlertsConfig, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self._conditions: dict[str, _Condition] = {}

    @staticmethod
    def dedup_key(model: str, f: Finding) -> str:
        return "/".join([model, f.kind, f.feature or "-", f.statistic])

    def update(self, model: str, model_version: str, window: WindowInfo, findings: list[Finding],
               reference_id: str | None, sample_rate: float) -> list[Alert]:
        out: list[Alert] = []
        for f in findings:
            key = self.dedup_key(model, f)
            c = self._conditions.get(key)
            if c is None:
                if not f.over:
                    continue  # never tracked until first over: state stays bounded by real conditions
                c = self._conditions[key] = _Condition()
            if f.over:
                c.over_streak += 1
                c.under_streak = 0
                if c.firing_id is None and c.over_streak >= self.cfg.consecutive:
                    c.firing_id = hashlib.sha256(f"{key}@{window.start:.3f}".encode()).hexdigest()[:20]
                    c.since_sent = 0
                    out.append(self._alert(c.firing_id, key, "firing", model, model_version, window, f,
                                           reference_id, sample_rate))
                elif c.firing_id is not None:
                    c.since_sent += 1
                    if self.cfg.repeat_every and c.since_sent >= self.cfg.repeat_every:
                        c.since_sent = 0
                        out.append(self._alert(c.firing_id, key, "firing", model, model_version, window, f,
                                               reference_id, sample_rate))
            else:
                c.under_streak += 1
                c.over_streak = 0
                if c.firing_id is not None and c.under_streak >= self.cfg.resolve_after:
                    out.append(self._alert(c.firing_id, key, "resolved", model, model_version, window, f,
                                           reference_id, sample_rate))
                    c.firing_id = None
                if c.firing_id is None:
                    del self._conditions[key]
        return out

    def firing(self) -> dict[str, str]:
        """Conditions firing now: dedup key -> alert id."""
        return {k: c.firing_id for k, c in self._conditions.items() if c.firing_id}

    def _alert(self, alert_id: str, key: str, status: str, model: str, version: str, w: WindowInfo,
               f: Finding, reference_id: str | None, sample_rate: float) -> Alert:
        critical = f.value >= self.cfg.critical_factor * f.threshold
        severity = "info" if status == "resolved" else ("critical" if critical else "warning")
        where = f" feature '{f.feature}'" if f.feature else ""
        verb = "back under" if status == "resolved" else "over"
        p = f", p={f.p_value:.2g}" if f.p_value is not None else ""
        streak = self.cfg.resolve_after if status == "resolved" else self.cfg.consecutive
        message = (f"[{severity.upper()}] {model}{where}: {f.kind} {f.statistic}={f.value:.4g}{p} {verb} threshold "
                   f"{f.threshold:.4g} for {streak} window(s); window {_iso(w.start)}..{_iso(w.end)} "
                   f"({w.events} events), reference {reference_id}")
        if sample_rate < 1:
            message += f", sampled at {sample_rate:.0%}"
        return Alert(
            alert_id=alert_id, dedup_key=key, status=status, severity=severity, kind=f.kind, model=model,
            model_version=version, feature=f.feature, detector="quality" if f.kind == "data_quality" else "drift",
            statistic=f.statistic, value=f.value, threshold=f.threshold, p_value=f.p_value,
            window={"index": w.index, "start": w.start, "end": w.end, "events": w.events},
            reference_id=reference_id, sample_rate=sample_rate, message=message,
            runbook_url=self.cfg.runbook_url.format(kind=f.kind, model=model, feature=f.feature or ""),
            created_at=float(self.clock()), details=f.details,
        )

    def snapshot(self) -> dict[str, Any]:
        return {k: asdict(c) for k, c in self._conditions.items()}

    def restore(self, state: dict[str, Any]) -> AlertPolicy:
        self._conditions = {k: _Condition(**v) for k, v in state.items()}
        return self
