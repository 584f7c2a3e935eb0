"""Alert events and the policy that turns per-window findings into them.

A **condition** is one ``(model, kind, feature, statistic)``, or ``(model, kind, feature, statistic, segment)``
for a finding about one slice of the traffic (``segment`` as ``key=value``). Per condition the policy counts
windows in a row over (or back under) the threshold: it is *firing* after ``consecutive`` windows over and
*clear* again after ``resolve_after`` windows under (hysteresis: one noisy window pages nobody, one quiet
window closes nothing).

An **incident** is what on-call sees. With ``group: true`` (default) all firing conditions of one model and
kind form one incident, so a drift burst on twenty features is one alert listing twenty features; with
``group: false`` each condition is its own incident. A slice's findings form their own incident,
``(model, kind, segment)`` (dedup key ``model/data_drift/region=eu``): a shift confined to one slice pages as
that slice, and never merges into or resolves the model's own incident. An incident:

- **fires** when it gets its first member, with ``alert_id`` = hash(incident key, window start): the same
  condition in the same window always gets the same id, and a restarted monitor restores open incidents from
  its checkpoint instead of inventing new ids;
- is **re-sent** with the same id when members join, and every ``repeat_every`` windows (not while the
  model's breaker is open: the breaker already acted);
- **resolves** with the same id when its last member clears; it cannot fire again for ``cooldown_s``.

**Inhibition** (``inhibit: true``): while a feature has a data-quality finding over threshold or firing, its
drift findings under ``critical_factor`` x threshold are ignored: a broken pipeline pages once, as data
quality, not again as drift; a large shift is never hidden.

State is a plain dict (:meth:`AlertPolicy.snapshot`) so it is checkpointed and restored after a restart.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import AlertsConfig
from .drift import Finding

__all__ = ["ActiveCondition", "Alert", "AlertPolicy", "WindowInfo"]

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_DRIFT_KINDS = {"data_drift", "prediction_drift"}
_DETECTOR = {"data_drift": "drift", "prediction_drift": "drift", "data_quality": "quality",
             "performance": "metrics", "label_coverage": "labels", "latency": "latency"}


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
    feature: str | None  # the feature when the alert is about one, else None (see ``features``)
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
    features: list[dict[str, Any]] = field(default_factory=list)  # every condition in the incident
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1
    segment: dict[str, str] | None = None  # the slice ({"key": ..., "value": ...}) when the alert is about one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ActiveCondition:
    """A firing condition, as the circuit breaker sees it."""

    kind: str
    feature: str | None
    statistic: str
    severity: str
    alert_id: str | None


@dataclass
class _Condition:
    kind: str
    over_streak: int = 0
    under_streak: int = 0
    firing: bool = False
    last: dict[str, Any] = field(default_factory=dict)  # the latest finding of this condition


@dataclass
class _Incident:
    alert_id: str
    kind: str
    members: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)  # condition key -> latest finding
    since_sent: int = 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class AlertPolicy:
    """Hysteresis, grouping, inhibition, repeat, cooldown and auto-resolve for every model."""

    def __init__(self, cfg: AlertsConfig, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self._conditions: dict[tuple[str, ...], _Condition] = {}
        self._incidents: dict[tuple[str, ...], _Incident] = {}
        self._cooldown: dict[tuple[str, ...], float] = {}  # incident key -> event time before which it cannot fire

    # -- keys ----------------------------------------------------------------------------------------------
    # Keys are tuples, never joined strings: model "a" and model "a/b" can never share a condition, an
    # incident or a breaker. The alert's ``dedup_key`` is the incident key joined with "/" (model names are
    # validated to contain no "/").
    @staticmethod
    def condition_key(model: str, f: Finding) -> tuple[str, ...]:
        key = (model, f.kind, f.feature or "-", f.statistic)
        return key if f.segment is None else (*key, str(f.segment))

    def incident_key(self, condition_key: tuple[str, ...]) -> tuple[str, ...]:
        # a slice's conditions (a fifth element, the segment) are grouped per slice
        return (*condition_key[:2], *condition_key[4:]) if self.cfg.group else condition_key

    def severity(self, kind: str, value: float, threshold: float) -> str:
        base = self.cfg.severity.get(kind, "warning")
        return "critical" if threshold > 0 and value >= self.cfg.critical_factor * threshold else base

    # -- update --------------------------------------------------------------------------------------------
    def update(self, model: str, model_version: str, window: WindowInfo, findings: list[Finding],
               reference_id: str | None, sample_rate: float, breaker_open: bool = False) -> list[Alert]:
        """Feed one evaluated window of ``model``; returns the alert events to publish."""
        if self.cfg.inhibit:
            bad_quality = {f.feature for f in findings if f.kind == "data_quality" and f.over}
            bad_quality |= {c.last.get("feature") for k, c in self._conditions.items()
                            if c.firing and c.kind == "data_quality" and k[0] == model}
            # a large shift (critical: factor x threshold) is never hidden: a broken pipeline that also moves
            # the distribution far pages as drift too, and breaker rules on data_drift see it
            if bad_quality:
                findings = [f for f in findings if not (f.kind in _DRIFT_KINDS and f.feature in bad_quality
                                                         and f.value < self.cfg.critical_factor * f.threshold)]
        touched: set[tuple[str, ...]] = set()
        if not any(k[0] == model for k in self._conditions):  # a quiet model: only what is over starts something
            findings = [f for f in findings if f.over]
        for f in findings:
            key = self.condition_key(model, f)
            c = self._conditions.get(key)
            if c is None:
                if not f.over:
                    continue  # only conditions that were ever over are tracked: state stays small
                c = self._conditions[key] = _Condition(f.kind)
            c.last = {"feature": f.feature, "statistic": f.statistic, "value": f.value, "threshold": f.threshold,
                      "p_value": f.p_value, "severity": f.severity or self.severity(f.kind, f.value, f.threshold),
                      "details": f.details}
            if f.segment is not None:
                c.last["segment"] = f.segment.to_dict()
            if f.over:
                c.over_streak, c.under_streak = c.over_streak + 1, 0
                c.firing = c.firing or c.over_streak >= (f.consecutive or self.cfg.consecutive)
            else:
                c.under_streak, c.over_streak = c.under_streak + 1, 0
                if c.firing and c.under_streak >= self.cfg.resolve_after:
                    c.firing = False
            touched.add(self.incident_key(key))
        out: list[Alert] = []
        # Only incidents whose conditions this window evaluated: a performance window must not count as a
        # window of an open drift incident (its repeats and resolution follow its own windows).
        for ik in sorted(touched):
            out.extend(self._update_incident(ik, model, model_version, window, reference_id, sample_rate,
                                             breaker_open))
        for key in [k for k, c in self._conditions.items()
                    if not c.firing and c.over_streak == 0 and k[0] == model
                    and not any(k in inc.members for inc in self._incidents.values())]:
            del self._conditions[key]  # cleared and not part of an open incident
        return out

    def _members(self, ik: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
        return {k: dict(c.last) for k, c in self._conditions.items() if c.firing and self.incident_key(k) == ik}

    def _update_incident(self, ik: tuple[str, ...], model: str, version: str, w: WindowInfo, reference_id: str | None,
                         sample_rate: float, breaker_open: bool) -> list[Alert]:
        members = self._members(ik)
        inc = self._incidents.get(ik)
        if inc is None:
            if not members or w.start < self._cooldown.get(ik, float("-inf")):
                return []
            kind = self._conditions[next(iter(members))].kind
            inc = self._incidents[ik] = _Incident(
                hashlib.sha256(f"{'/'.join(ik)}@{w.start:.3f}".encode()).hexdigest()[:20], kind, members)
            return [self._alert(inc, ik, "firing", model, version, w, reference_id, sample_rate)]
        if not members:
            del self._incidents[ik]
            if self.cfg.cooldown_s:
                self._cooldown[ik] = w.end + self.cfg.cooldown_s
            return [self._alert(inc, ik, "resolved", model, version, w, reference_id, sample_rate)]
        joined = set(members) - set(inc.members)
        inc.members = members
        inc.since_sent += 1
        repeat = self.cfg.repeat_every and inc.since_sent >= self.cfg.repeat_every and not (
            breaker_open and self.cfg.inhibit)
        if joined or repeat:
            inc.since_sent = 0
            return [self._alert(inc, ik, "firing", model, version, w, reference_id, sample_rate)]
        return []

    def _alert(self, inc: _Incident, ik: tuple[str, ...], status: str, model: str, version: str, w: WindowInfo,
               reference_id: str | None, sample_rate: float) -> Alert:
        members = sorted(inc.members.values(), key=lambda m: -(m["value"] / m["threshold"] if m["threshold"] else 0))
        worst = members[0]
        severity = "info" if status == "resolved" else max((m["severity"] for m in members),
                                                           key=_SEVERITY_RANK.__getitem__)
        single = len({m["feature"] for m in members}) == 1
        feature = worst["feature"] if single else None
        verb = "back under threshold" if status == "resolved" else "over threshold"
        listed = ", ".join(f"{m['feature'] or '-'} ({m['statistic']}={m['value']:.4g} vs {m['threshold']:.4g})"
                           for m in members[:10]) + (f" and {len(members) - 10} more" if len(members) > 10 else "")
        n_features = len({m["feature"] for m in members})
        what = (f"feature '{feature}'" if single and feature
                else f"{n_features} features ({len(members)} conditions)")
        segment = worst.get("segment")
        where = f" in segment {segment['key']}={segment['value']}" if segment else ""
        message = (f"[{severity.upper()}] {model} {inc.kind}{where} on {what} {verb}: {listed}; window "
                   f"{_iso(w.start)}..{_iso(w.end)} ({w.events} events), reference {reference_id}")
        if sample_rate < 1:
            message += f", sampled at {sample_rate:.0%}"
        return Alert(
            alert_id=inc.alert_id, dedup_key="/".join(ik), status=status, severity=severity, kind=inc.kind, model=model,
            model_version=version, feature=feature, detector=_DETECTOR.get(inc.kind, inc.kind),
            statistic=worst["statistic"], value=worst["value"], threshold=worst["threshold"],
            p_value=worst["p_value"], window={"index": w.index, "start": w.start, "end": w.end, "events": w.events},
            reference_id=reference_id, sample_rate=sample_rate, message=message,
            runbook_url=self.cfg.runbook_url.format(kind=inc.kind, model=model, feature=feature or ""),
            created_at=float(self.clock()),
            features=[{k: m[k] for k in ("feature", "statistic", "value", "threshold", "p_value", "severity",
                                         "details", "segment") if k in m} for m in members],
            details=worst["details"], segment=segment,
        )

    # -- views ---------------------------------------------------------------------------------------------
    def active(self, model: str) -> list[ActiveCondition]:
        """Firing conditions of ``model`` with the id of the incident they belong to."""
        out = []
        for k, c in self._conditions.items():
            if c.firing and k[0] == model:
                inc = self._incidents.get(self.incident_key(k))
                out.append(ActiveCondition(c.kind, c.last.get("feature"), c.last.get("statistic", ""),
                                           c.last.get("severity", "warning"), inc.alert_id if inc else None))
        return out

    def models(self) -> set[str]:
        """Models this policy holds state for."""
        return {k[0] for k in (*self._conditions, *self._incidents, *self._cooldown)}

    def firing(self) -> dict[str, str]:
        """Open incidents: dedup key -> alert id."""
        return {"/".join(k): inc.alert_id for k, inc in self._incidents.items()}

    # -- checkpoints ---------------------------------------------------------------------------------------
    FORMAT = 1

    def snapshot(self, model: str | None = None) -> dict[str, Any]:
        def mine(k: tuple[str, ...]) -> bool:
            return model is None or k[0] == model

        return {
            "v": self.FORMAT,
            "conditions": [[list(k), asdict(c)] for k, c in self._conditions.items() if mine(k)],
            "incidents": [[list(k), {**asdict(i), "members": [[list(mk), m] for mk, m in i.members.items()]}]
                          for k, i in self._incidents.items() if mine(k)],
            "cooldown": [[list(k), t] for k, t in self._cooldown.items() if mine(k)],
        }

    def restore(self, state: dict[str, Any]) -> AlertPolicy:
        """Merge a snapshot (of one model or all) into the current state; raises on a malformed one (and then
        changes nothing)."""
        if state.get("v") != self.FORMAT:
            raise ValueError(f"alert policy snapshot version {state.get('v')!r} is not supported")
        conditions = {_key(k): _Condition(**v) for k, v in state["conditions"]}
        incidents = {}
        for k, v in state["incidents"]:
            members = {_key(mk): dict(m) for mk, m in v["members"]}
            incidents[_key(k)] = _Incident(str(v["alert_id"]), str(v["kind"]), members, int(v["since_sent"]))
        cooldown = {_key(k): float(t) for k, t in state["cooldown"]}
        self._conditions.update(conditions)
        self._incidents.update(incidents)
        self._cooldown.update(cooldown)
        return self


def _key(k: Any) -> tuple[str, ...]:
    if not isinstance(k, list) or not 2 <= len(k) <= 5 or not all(isinstance(x, str) for x in k):
        raise ValueError(f"alert policy snapshot: malformed key {k!r}")
    return tuple(k)
