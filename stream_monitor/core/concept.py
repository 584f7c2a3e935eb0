"""Concept drift: river's detectors over the error stream of joined pairs, checkpointed as plain data.

:class:`ConceptDriftDetectors` feeds each configured river detector with the error of each joined pair (0/1
for classification, as a boolean for the binary-input detectors; absolute error for regression) and counts
warnings and drifts since the last :meth:`take`.

river detectors have no state API, and their pickles would let whoever can write the state topic run code at
start-up. :func:`plain_state` walks a detector's attributes instead and keeps only data: numbers, strings,
lists, nested river statistics (as dicts of their attributes), a ``random.Random``'s state and the byte state
of river's compiled ADWIN window. :func:`apply_state` writes such data back onto a *freshly constructed*
detector of the configured type, attribute by attribute, and refuses anything whose shape differs from what
that detector has: no constructor, class or function is ever named by the data.
"""

from __future__ import annotations

import base64
import difflib
import inspect
import random
import types
from collections import deque
from typing import Any

from ..config import DetectorConfig
from .labels import JoinedPair, label_key

__all__ = ["ConceptDriftDetectors", "apply_state", "make_detector", "plain_state"]

FORMAT = 1
_SCALARS = (bool, int, float, str, type(None))


def make_detector(cfg: DetectorConfig) -> Any:
    """The river detector of ``cfg``; a ``ValueError`` names a parameter it does not take (with a hint)."""
    from river import drift
    from river.drift import binary

    cls = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN, "ddm": binary.DDM,
           "eddm": binary.EDDM, "hddm_a": binary.HDDMA, "hddm_w": binary.HDDMW}[cfg.type]
    takes = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for name in cfg.params:
        if name not in takes:
            hint = difflib.get_close_matches(name, takes, n=1)
            raise ValueError(f"params.{name}: {cfg.type} has no parameter {name!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; it takes {', '.join(takes)}")
    try:
        return cls(**cfg.params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params: {cfg.type} refused {cfg.params}: {exc}") from None


def _is_native(v: Any) -> bool:
    """river's compiled helpers (ADWIN's window) pickle as (constructor, args, bytes state)."""
    return type(v).__module__.startswith("river._river") and hasattr(v, "__setstate__")


def plain_state(obj: Any) -> dict[str, Any]:
    """The data attributes of a river object as JSON-able values (methods and callables are skipped)."""
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if isinstance(v, (types.MethodType, types.FunctionType, types.BuiltinFunctionType)):
            continue  # bound methods chosen in __init__ (e.g. PageHinkley's test): rebuilt by the constructor
        if hasattr(v, "item") and not hasattr(v, "__len__"):  # a numpy scalar (np.float64 is also a float)
            out[k] = v.item()
        elif isinstance(v, _SCALARS):
            out[k] = v
        elif isinstance(v, (list, tuple, deque)):
            if not all(isinstance(x, (bool, int, float)) for x in v):
                raise TypeError(f"{type(obj).__name__}.{k}: only lists of numbers are checkpointed")
            out[k] = {"list": [float(x) if isinstance(x, float) else x for x in v]}
        elif isinstance(v, random.Random):
            version, internal, gauss = v.getstate()
            out[k] = {"random": [version, list(internal), gauss]}
        elif _is_native(v):
            out[k] = {"native": base64.b64encode(v.__reduce_ex__(4)[2]).decode()}
        elif hasattr(v, "__dict__"):
            out[k] = {"obj": plain_state(v)}
        else:
            raise TypeError(f"{type(obj).__name__}.{k}: {type(v).__name__} is not checkpointed")
    return out


def apply_state(obj: Any, state: dict[str, Any]) -> None:
    """Write :func:`plain_state` data onto ``obj`` (a fresh object of the same type); raises on any mismatch."""
    if not isinstance(state, dict):
        raise ValueError(f"{type(obj).__name__}: state must be an object")
    have = vars(obj)
    for k, v in state.items():
        if k not in have:
            raise ValueError(f"{type(obj).__name__} has no attribute {k!r}")
        cur = have[k]
        if isinstance(cur, _SCALARS) or (hasattr(cur, "item") and not hasattr(cur, "__len__")):
            if not isinstance(v, _SCALARS) or (cur is not None and v is not None and isinstance(cur, str)
                                                != isinstance(v, str)):
                raise ValueError(f"{type(obj).__name__}.{k}: expected a {type(cur).__name__}")
            setattr(obj, k, v)
        elif isinstance(cur, (list, tuple, deque)):
            items = v.get("list") if isinstance(v, dict) else None
            if not isinstance(items, list) or not all(isinstance(x, (bool, int, float)) for x in items):
                raise ValueError(f"{type(obj).__name__}.{k}: expected a list of numbers")
            setattr(obj, k, deque(items, maxlen=cur.maxlen) if isinstance(cur, deque) else type(cur)(items))
        elif isinstance(cur, random.Random):
            rs = v.get("random") if isinstance(v, dict) else None
            if not (isinstance(rs, list) and len(rs) == 3 and isinstance(rs[1], list)
                    and all(type(x) is int for x in rs[1])):
                raise ValueError(f"{type(obj).__name__}.{k}: expected a random state")
            cur.setstate((rs[0], tuple(rs[1]), rs[2]))
        elif _is_native(cur):
            raw = v.get("native") if isinstance(v, dict) else None
            if not isinstance(raw, str):
                raise ValueError(f"{type(obj).__name__}.{k}: expected native state bytes")
            cur.__setstate__(base64.b64decode(raw, validate=True))
        elif hasattr(cur, "__dict__"):
            if not isinstance(v, dict) or "obj" not in v:
                raise ValueError(f"{type(obj).__name__}.{k}: expected an object state")
            apply_state(cur, v["obj"])
        else:
            raise ValueError(f"{type(obj).__name__}.{k}: {type(cur).__name__} cannot be restored")


_BINARY_INPUT = {"ddm", "eddm", "hddm_a", "hddm_w"}


class ConceptDriftDetectors:
    """river detectors over the error of joined pairs; remembers warnings and drifts since the last read."""

    def __init__(self, detectors: tuple[DetectorConfig, ...], task: str) -> None:
        self.cfgs = detectors
        self.task = task
        self._reset()

    def _reset(self) -> None:
        self.detectors = []
        for i, c in enumerate(self.cfgs):
            try:
                self.detectors.append(make_detector(c))
            except ValueError as exc:
                raise ValueError(f"concept_drift.{i}.{exc}") from None
        self.drifts = [0] * len(self.cfgs)  # since the last take()
        self.warnings = [0] * len(self.cfgs)
        self.seen = 0

    def update(self, pairs: list[JoinedPair]) -> list[tuple[int, JoinedPair]]:
        """Feed joined pairs in the order given (the monitor releases them in the order they complete, see
        :meth:`~.monitor.ModelMonitor.label_outputs`); returns the drifts detected now, in pair order: (detector
        index, the pair whose error tipped it), so an alert can be raised at once, citing that pair's
        prediction time."""
        if not self.detectors or not pairs:
            return []
        if self.task == "regression":
            errors = [abs(float(p.prediction) - float(p.label)) for p in pairs]
        else:
            errors = [0.0 if label_key(p.prediction) == label_key(p.label) else 1.0 for p in pairs]
        self.seen += len(errors)
        detected: list[tuple[int, int]] = []  # (pair position, detector index)
        for i, (cfg, det) in enumerate(zip(self.cfgs, self.detectors)):
            binary_input = cfg.type in _BINARY_INPUT
            for at, e in enumerate(errors):  # river detectors are online: one update per pair
                det.update(bool(e > 0) if binary_input else e)
                if det.drift_detected:
                    self.drifts[i] += 1
                    detected.append((at, i))
                elif getattr(det, "warning_detected", False):
                    self.warnings[i] += 1
        return [(i, pairs[at]) for at, i in sorted(detected)]

    def take(self) -> list[tuple[str, int, int]]:
        """(detector, drifts, warnings) since the last call."""
        out = [(c.type, d, w) for c, d, w in zip(self.cfgs, self.drifts, self.warnings)]
        self.drifts = [0] * len(self.cfgs)
        self.warnings = [0] * len(self.cfgs)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"v": FORMAT, "types": [c.type for c in self.cfgs], "seen": self.seen, "drifts": self.drifts,
                "warnings": self.warnings, "state": [plain_state(d) for d in self.detectors]}

    def restore(self, d: dict[str, Any]) -> ConceptDriftDetectors:
        """Restore a :meth:`snapshot`; a snapshot of other detectors is ignored, a malformed one raises."""
        if d.get("v") != FORMAT or d.get("types") != [c.type for c in self.cfgs]:
            return self
        fresh = [make_detector(c) for c in self.cfgs]
        for det, state in zip(fresh, d["state"], strict=True):
            apply_state(det, state)
        self.detectors = fresh
        self.seen = int(d["seen"])
        self.drifts = [int(x) for x in d["drifts"]]
        self.warnings = [int(x) for x in d["warnings"]]
        return self
