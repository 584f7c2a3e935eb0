"""The event contract of docs/events.md, written a second time on Python's own JSON parser.

The monitor decodes with orjson (the general path), msgspec (the typed path without the compiled decoder) and
``_columnar.c`` (the compiled one). This oracle shares none of their parsing: it reads a message with the
standard library's ``json`` (hooks make it keep the contract's number rules) and states the checks in the
order docs/events.md lists them. The differential tests hold all three decoders to what it says.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

MAX_DEPTH = 64
# an escape of a high surrogate followed by no escape (not the end of the text either), or by an escape other
# than \u, or by an escape of no low surrogate; or of a low one without a high one before it (each after an even number of backslashes: the escape is one)
_LONE_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?:(?![\\]|$)|\\[^u]|\\u(?![dD][c-fC-F])[0-9a-fA-F]{4})"
                             r"|(?<![\\]u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_I64_MIN, _U64_END = -(2**63), 2**64


class _Reject(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Verdict:
    """What the contract says of one message: rejected (``kind``), of an unknown model, or accepted with the
    values the monitor keeps (``row``)."""

    kind: str  # "accept", "unknown" or a reject class
    model: str | None = None
    row: dict[str, Any] | None = None


def _number_int(text: str) -> int | float:
    digits = text.lstrip("-")
    if len(digits) > 309:  # no leading zeros in JSON: at least 10^309, beyond the doubles
        raise _Reject("number_out_of_range")
    v = int(text)
    if _I64_MIN <= v < _U64_END:
        return v
    try:
        return float(v)  # beyond 64 bits an integer is a number only (the nearest double)
    except OverflowError:
        raise _Reject("number_out_of_range") from None


def _number_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise _Reject("number_out_of_range")
    return v


def _constant(name: str) -> Any:
    raise _Reject("not_json")  # NaN, Infinity, -Infinity are not JSON


def _unicode(v: Any) -> None:
    """Lone surrogates (escaped) are no Unicode: in any string, array item or key."""
    if type(v) is str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("bad_unicode") from None
    elif type(v) is list:
        for x in v:
            _unicode(x)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object: every key and value checked (a value a later duplicate replaces too), the last one kept."""
    for k, v in pairs:
        _unicode(k)
        _unicode(v)
    return dict(pairs)


def _depth(v: Any, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise _Reject("too_deep")
    for x in v.values() if type(v) is dict else v if type(v) is list else ():
        if type(x) in (dict, list):
            _depth(x, depth + 1)


def parse(raw: bytes | None, max_message_bytes: int) -> Any:
    """The JSON value of a message, or raises _Reject: the checks on the bytes, in the contract's order."""
    if raw is None:
        raise _Reject("empty")
    if len(raw) > max_message_bytes:
        raise _Reject("too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject("bad_unicode") from None
    try:
        value = json.loads(text, parse_int=_number_int, parse_float=_number_float, parse_constant=_constant,
                           object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        # the first defect decides: a lone surrogate escaped before the syntax error is the reason
        # (json reports an unterminated string where it starts: its escapes were read up to the end)
        upto = len(text) if exc.msg.startswith("Unterminated string") else exc.pos
        lone = any(m.start() <= upto for m in _LONE_SURROGATE.finditer(text))
        raise _Reject("bad_unicode" if lone else "not_json") from None
    except RecursionError:
        raise _Reject("too_deep") from None
    _unicode(value)
    if type(value) in (dict, list):
        _depth(value)
    return value


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _timestamp(v: Any) -> float:
    if type(v) in (int, float):
        t = float(v)
        if not math.isfinite(t) or t < 0 or t > 1e11:
            raise _Reject("timestamp")
        return t
    if type(v) is str:
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise _Reject("timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise _Reject("timestamp")


def _numeric(v: Any) -> tuple[float, bool]:
    """A numeric feature's value and whether it is a type error."""
    if v is None:
        return math.nan, False
    if type(v) in (int, float):
        return float(v), False
    return math.nan, True


def _category(v: Any) -> tuple[str | None, bool]:
    if v is None or type(v) is str:
        return v, False
    if type(v) is bool:
        return ("true" if v else "false"), False
    if type(v) is int:
        return str(v), False
    return None, True


def check_prediction(ev: Any, models: dict[str, Any], limit: int, lo: float, hi: float) -> Verdict:
    """The envelope's checks in order, then the configured model's columns (``models``: name -> ModelConfig)."""
    if type(ev) is not dict:
        raise _Reject("contract")
    for key in ("event_id", "model", "model_version"):
        v = ev.get(key)
        if type(v) is not str or not v:
            raise _Reject("contract")
        if len(v) > limit:
            raise _Reject("string_too_long")
    feats = ev.get("features")
    if type(feats) is not dict or "prediction" not in ev:
        raise _Reject("contract")
    pred = ev["prediction"]
    if type(pred) not in (int, float, str, bool):
        raise _Reject("contract")
    if type(pred) is str and len(pred) > limit:
        raise _Reject("string_too_long")
    score = ev.get("score")
    if score is not None and not _is_number(score):
        raise _Reject("contract")
    lat = ev.get("latency_ms")
    if lat is not None and (not _is_number(lat) or lat < 0):
        raise _Reject("contract")
    seg = ev.get("segment")
    if seg is not None:
        if type(seg) is not dict or not all(type(v) is str for v in seg.values()):
            raise _Reject("contract")
        if any(len(k) > limit or len(v) > limit for k, v in seg.items()):
            raise _Reject("string_too_long")
    m = models.get(ev["model"])
    if m is not None and any(type(feats.get(c)) is str and len(feats[c]) > limit for c in m.features.categorical):
        raise _Reject("string_too_long")
    if "timestamp" not in ev:
        raise _Reject("contract")
    t = _timestamp(ev["timestamp"])
    if not lo <= t <= hi:
        raise _Reject("timestamp")
    if m is None:
        return Verdict("unknown", ev["model"])
    num = [_numeric(feats.get(f)) for f in m.features.numeric]
    cat = [_category(feats.get(f)) for f in m.features.categorical]
    if m.prediction == "numeric":
        num.append(_numeric(pred))
    elif m.prediction == "categorical":
        cat.append(_category(pred))
    if m.monitor_score:
        num.append((math.nan if score is None else float(score), False))
    row = {"event_id": ev["event_id"], "timestamp": t, "model_version": ev["model_version"],
           "numeric": [v for v, _ in num], "numeric_type_error": [e for _, e in num],
           "categorical": [v for v, _ in cat], "categorical_type_error": [e for _, e in cat],
           "latency_ms": math.nan if lat is None else float(lat),
           "segment": [(seg or {}).get(k) for k in m.segments.keys]}
    return Verdict("accept", ev["model"], row)


def decide(raw: bytes | None, models: dict[str, Any], *, max_message_bytes: int = 1 << 20,
           max_string_length: int = 1024, lo: float = 946684800.0, hi: float = 1e11) -> Verdict:
    """The contract's verdict on one prediction message."""
    try:
        return check_prediction(parse(raw, max_message_bytes), models, max_string_length, lo, hi)
    except _Reject as r:
        return Verdict(r.kind)
