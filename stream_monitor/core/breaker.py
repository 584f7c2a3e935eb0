"""The circuit breaker: per model, which version should serve, as a state machine fed by firing alerts.

::

    closed ──(a rule holds for its N windows)──▶ open ──(hold_down_s of event time)──▶ half_open
       ▲                                           ▲                                      │
       └──────(close_after healthy windows)────────┼──────────(any rule holds)────────────┘
                                                   └─ (probe share of traffic to the primary)

- closed: the primary serves everything (``primary_share`` 1.0);
- open: the fallback version serves everything (``primary_share`` 0.0);
- half_open: ``probe_share`` of the traffic probes the primary.

Rules count the model's firing alert conditions (kind, minimum severity, optional list of important
features, minimum number of features) and must hold for ``windows`` consecutive windows, so one bad window
does not open the breaker, and the hold-down keeps a flapping condition from flapping the breaker.

Every change gets a new ``epoch`` (monotonic per model; routers ignore older epochs). A **manual override**
(``source: manual, override: true``, from ``stream-monitor breaker open|close``) holds against the monitor's
own decisions until released (``override: false``); the monitor keeps tracking health meanwhile and resumes
from the released state.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import BreakerConfig, BreakerRule
from .alerts import ActiveCondition

__all__ = ["LABEL_KINDS", "BreakerSignal", "BreakerTicks", "CircuitBreaker", "reads_labels"]

_RANK = {"info": 0, "warning": 1, "critical": 2}
_STATES = {"closed", "open", "half_open"}
_NUM = (int, float)
_FIELD_TYPES: dict[str, Any] = {
    "model": str, "state": str, "primary_version": str, "fallback_version": str, "primary_share": _NUM,
    "epoch": int, "reason": str, "alert_ids": list, "decided_at": _NUM, "event_time": (*_NUM, type(None)),
    "source": str, "override": bool, "schema_version": int}
_REQUIRED = ("model", "state", "epoch")
_SHARE = {"closed": 1.0, "open": 0.0}


@dataclass(frozen=True)
class BreakerSignal:
    """One record of the compacted breaker topic (key: model). See ``schemas/breaker.schema.json``."""

    model: str
    state: str  # closed | open | half_open
    primary_version: str
    fallback_version: str
    primary_share: float
    epoch: int
    reason: str
    alert_ids: list[str] = field(default_factory=list)
    decided_at: float = 0.0  # wall clock of the decision
    event_time: float | None = None  # end of the window that decided (event time), None for manual records
    source: str = "monitor"  # monitor | manual
    override: bool = False  # manual only: true while the manual state holds against the monitor
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> BreakerSignal:
        """A record of the breaker topic; raises ``ValueError`` naming the field when it is malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"breaker record must be an object, got {type(d).__name__}")
        for name, types_ in _FIELD_TYPES.items():
            if name in d and not isinstance(d[name], types_) or name in _REQUIRED and name not in d:
                raise ValueError(f"breaker record field {name!r}: missing or of the wrong type")
        if d["state"] not in _STATES:
            raise ValueError(f"breaker record field 'state': {d['state']!r} is not one of {sorted(_STATES)}")
        if isinstance(d["epoch"], bool) or "alert_ids" in d and not all(isinstance(a, str) for a in d["alert_ids"]):
            raise ValueError("breaker record fields 'epoch'/'alert_ids': wrong type")
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    @property
    def serving_version(self) -> str:
        return self.fallback_version if self.state == "open" else self.primary_version


def rule_holds(rule: BreakerRule, active: list[ActiveCondition]) -> tuple[bool, list[ActiveCondition]]:
    """Whether ``rule`` holds on these firing conditions, and the conditions it counted."""
    counted = [c for c in active if c.kind in rule.kinds and _RANK[c.severity] >= _RANK[rule.severity]
               and (not rule.features or c.feature in rule.features)]
    distinct = {(c.kind, c.feature) if c.feature else (c.kind, c.statistic) for c in counted}
    return len(distinct) >= rule.min_features, counted


class CircuitBreaker:
    """Breaker state machine of one model.

    Parameters
    ----------
    model
        The model name (the key on the breaker topic).
    cfg
        The model's ``breaker`` config.
    clock
        Wall clock for ``decided_at`` (injectable for tests).
    """

    def __init__(self, model: str, cfg: BreakerConfig, clock: Any = time.time) -> None:
        self.model = model
        self.cfg = cfg
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.state = "closed"
        self.epoch = 0
        self.opened_at: float | None = None
        self.streaks = [0] * len(self.cfg.rules)
        self.healthy = 0
        self.override = False
        self.reason = "no signal yet: the primary serves"
        self.alert_ids: list[str] = []
        self.event_time: float | None = None
        self.source = "monitor"

    @property
    def signal(self) -> BreakerSignal:
        share = _SHARE.get(self.state, self.cfg.probe_share)
        return BreakerSignal(self.model, self.state, self.cfg.primary_version, self.cfg.fallback_version, share,
                             self.epoch, self.reason, list(self.alert_ids), float(self.clock()), self.event_time,
                             self.source, self.override)

    def update(self, window_end: float, active: list[ActiveCondition]) -> BreakerSignal | None:
        """Feed the model's firing conditions after a window; returns a signal when the state changed."""
        holding = []
        for i, rule in enumerate(self.cfg.rules):
            holds, counted = rule_holds(rule, active)
            self.streaks[i] = self.streaks[i] + 1 if holds else 0
            holding.append((rule, holds, counted))
        if self.override:
            return None  # a manual decision holds; health is still tracked for when it is released
        if self.opened_at is None and self.state != "closed":
            self.opened_at = window_end  # released from a manual open: the hold-down starts now
        if self.state == "closed":
            tripped = [(r, c) for (r, _, c), s in zip(holding, self.streaks) if s >= r.windows]
            if tripped:
                return self._go("open", window_end, tripped, "opened")
        elif self.state == "open":
            if window_end - (self.opened_at or window_end) >= self.cfg.hold_down_s:
                self.healthy = 0
                return self._go("half_open", window_end, [], f"hold-down of {self.cfg.hold_down_s:.0f}s over: "
                                f"probing the primary with {self.cfg.probe_share:.0%} of traffic")
        elif self.state == "half_open":
            bad = [(r, c) for r, h, c in holding if h]
            if bad:
                return self._go("open", window_end, bad, "probe failed, reopened")
            self.healthy += 1
            if self.healthy >= self.cfg.close_after:
                return self._go("closed", window_end, [], f"primary healthy for {self.healthy} windows while "
                                "probing: closed")
        return None

    def _go(self, state: str, at: float, why: list[tuple[BreakerRule, list[ActiveCondition]]],
            text: str) -> BreakerSignal:
        self.state = state
        self.epoch += 1
        self.event_time = at
        self.source = "monitor"
        if state == "open":
            self.opened_at = at
            parts = [f"{len(c)} {'/'.join(r.kinds)} condition(s) at >= {r.severity} for {r.windows} window(s)"
                     + (f" ({', '.join(sorted({x.feature or x.statistic for x in c}))})" if c else "")
                     for r, c in why]
            self.reason = f"{text}: " + "; ".join(parts)
            self.alert_ids = sorted({x.alert_id for _, c in why for x in c if x.alert_id})
        else:
            self.reason = text
            if state == "closed":
                self.alert_ids = []
        return self.signal

    def observe(self, sig: BreakerSignal) -> None:
        """A record read from the breaker topic: a manual override, its release, or our own last state."""
        if sig.model != self.model or sig.epoch < self.epoch:
            return
        if sig.epoch == self.epoch and sig.source != "manual":
            return
        self.epoch = sig.epoch
        self.state = sig.state
        self.reason = sig.reason
        self.alert_ids = list(sig.alert_ids)
        self.source = sig.source
        self.override = sig.override
        self.event_time = sig.event_time
        if sig.source == "manual":
            self.opened_at = None  # set from the next window's end once released
            self.healthy = 0
        elif sig.state == "open":
            self.opened_at = sig.event_time

    def snapshot(self) -> dict[str, Any]:
        return {"v": 1, "state": self.state, "epoch": self.epoch, "opened_at": self.opened_at,
                "streaks": self.streaks, "healthy": self.healthy, "override": self.override, "reason": self.reason,
                "alert_ids": self.alert_ids, "event_time": self.event_time, "source": self.source}

    def restore(self, d: dict[str, Any]) -> CircuitBreaker:
        """Restore a :meth:`snapshot`; raises ``ValueError`` (changing nothing) on a malformed one."""
        if d.get("v") != 1 or d.get("state") not in _STATES or not isinstance(d.get("epoch"), int):
            raise ValueError("breaker snapshot: unsupported version, state or epoch")
        streaks = [int(x) for x in d["streaks"]]
        opened = d["opened_at"]
        event_time = d["event_time"]
        state = (d["state"], int(d["epoch"]), None if opened is None else float(opened), int(d["healthy"]),
                 bool(d["override"]), str(d["reason"]), [str(a) for a in d["alert_ids"]],
                 None if event_time is None else float(event_time), str(d["source"]))
        (self.state, self.epoch, self.opened_at, self.healthy, self.override, self.reason, self.alert_ids,
         self.event_time, self.source) = state
        self.streaks = streaks if len(streaks) == len(self.cfg.rules) else [0] * len(self.cfg.rules)
        return self


#: Alert kinds decided on the label side (joined labels), in the label stream's event time.
LABEL_KINDS = frozenset({"performance", "concept_drift", "label_coverage"})


def reads_labels(cfg: BreakerConfig) -> bool:
    """Whether a rule of this breaker counts a label-side kind (:data:`LABEL_KINDS`)."""
    return any(k in LABEL_KINDS for rule in cfg.rules for k in rule.kinds)


class BreakerTicks:
    """The ticks of a breaker that reads label-side kinds, put in event-time order with the label decisions.

    A breaker ticks once per window of the prediction stream and reads the model's firing conditions. The
    label side decides later, in its own event time (a pair's completion, a performance window's maturity),
    and how far it had got when a prediction window closed depends on how the two streams were read. So such a
    breaker's ticks wait here: each window's end with the prediction side's firing conditions at that window
    (:meth:`window`), each label decision's time with the label side's firing conditions after it
    (:meth:`label`); once the label frontier has passed a window's end (every label decision up to it is
    made), :meth:`release` hands the window on with the conditions of both sides as of its end. The breaker
    then decides the same whatever the batching, replay or restarts, at the cost of waiting for the labels
    (bounded by ``join.label_stall_s`` when they stop).
    """

    def __init__(self) -> None:
        self._windows: list[tuple[float, list[ActiveCondition]]] = []  # (window end, prediction-side firing)
        self._labels: list[tuple[float, list[ActiveCondition]]] = [(-math.inf, [])]  # (time, label-side firing)

    @property
    def waiting(self) -> int:
        return len(self._windows)

    def window(self, end: float, active: list[ActiveCondition]) -> None:
        self._windows.append((end, [c for c in active if c.kind not in LABEL_KINDS]))

    def label(self, at: float, active: list[ActiveCondition]) -> None:
        """The label side's firing conditions after its decision at event time ``at`` (in time order)."""
        self._labels.append((at, [c for c in active if c.kind in LABEL_KINDS]))

    def release(self, frontier: float) -> list[tuple[float, list[ActiveCondition]]]:
        """The windows whose end the label frontier has passed: (end, firing conditions as of that end)."""
        out = []
        while self._windows and self._windows[0][0] <= frontier:
            end, predicted = self._windows.pop(0)
            at = bisect.bisect_right([t for t, _ in self._labels], end) - 1
            out.append((end, predicted + self._labels[at][1]))
        # keep the label side's state as of the oldest window still waiting (or the frontier), and what follows
        upto = self._windows[0][0] if self._windows else frontier
        first = bisect.bisect_right([t for t, _ in self._labels], upto) - 1
        self._labels = self._labels[max(first, 0):]
        return out

    def snapshot(self) -> dict[str, Any]:
        def plain(items: list[tuple[float, list[ActiveCondition]]]) -> list[Any]:
            return [[t if math.isfinite(t) else None, [asdict(c) for c in cs]] for t, cs in items]

        return {"windows": plain(self._windows), "labels": plain(self._labels)}

    def restore(self, d: dict[str, Any]) -> BreakerTicks:
        def parse(items: Any) -> list[tuple[float, list[ActiveCondition]]]:
            return [(-math.inf if t is None else float(t), [ActiveCondition(**c) for c in cs]) for t, cs in items]

        windows, labels = parse(d["windows"]), parse(d["labels"])
        if not labels:
            raise ValueError("breaker ticks snapshot: no label-side state")
        self._windows, self._labels = windows, labels
        return self
