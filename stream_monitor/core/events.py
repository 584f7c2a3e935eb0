"""Event contracts and batch decoding: raw bytes in, validated events and rejects out.

This is the only place that knows the wire format of prediction and label events (the JSON Schemas in
``stream_monitor/schemas`` describe the same contract for producers). Decoding is one ``orjson.loads`` per
message plus a few type checks on the envelope; feature values are not inspected here (a string in a numeric
feature is a data-quality fact, counted by the drift engine, not a malformed event).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = ["Reject", "TimeRange", "decode_predictions", "decode_labels", "parse_timestamp"]


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that breaks the contract: it goes to the dead-letter topic with ``reason``."""

    index: int  # position in the batch handed to the decoder
    reason: str


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Plausible event times: not before ``min_t`` (epoch seconds), not more than ``max_future_s`` ahead of
    the wall clock. One event stamped in year 9999 would otherwise move every watermark for good."""

    min_t: float = 946684800.0  # 2000-01-01T00:00:00Z
    max_future_s: float = 86400.0

    def check(self, t: float, now: float) -> str | None:
        if t < self.min_t:
            return f"field 'timestamp': {_iso(t)} is before the plausible range (events.min_timestamp {_iso(self.min_t)})"
        if t > now + self.max_future_s:
            return (f"field 'timestamp': {_iso(t)} is more than events.max_future_s={self.max_future_s:g}s ahead "
                    f"of the wall clock ({_iso(now)})")
        return None


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return repr(t)


_NUMBER = (int, float)
_FAST_NUMBER = {int, float}
_FAST_OPTIONAL = {int, float, type(None)}
_FAST_PREDICTION = {int, float, str}


def parse_timestamp(value: Any) -> float:
    """Event time as epoch seconds from epoch seconds (int/float) or an ISO-8601 string.

    A naive ISO time is taken as UTC. Raises ``ValueError`` with the reason on anything else.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be epoch seconds or ISO-8601, got a boolean")
    if isinstance(value, _NUMBER):
        t = float(value)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"timestamp must be finite, non-negative epoch seconds, got {value!r}")
        if t > 1e11:  # epoch milliseconds sent by mistake would land thousands of years ahead
            raise ValueError(f"timestamp {value!r} looks like milliseconds; send epoch seconds")
        return t
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not ISO-8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise ValueError(f"timestamp must be epoch seconds or ISO-8601, got {type(value).__name__}")


def _check_prediction(ev: Any) -> str | None:
    """Return why ``ev`` breaks the prediction contract, or None when it holds."""
    if type(ev) is not dict:
        return f"event must be a JSON object, got {type(ev).__name__}"
    for key in ("event_id", "model", "model_version"):
        v = ev.get(key)
        if type(v) is not str:
            return f"missing or non-string field '{key}'"
        if not v:
            return f"empty field '{key}'"
    if type(ev.get("features")) is not dict:
        return "missing field 'features' (an object of name -> number | string | bool | null)"
    if "prediction" not in ev:
        return "missing field 'prediction'"
    pred = ev["prediction"]
    if not isinstance(pred, (int, float, str)) or (type(pred) is float and not math.isfinite(pred)):
        return f"field 'prediction' must be a number or a string, got {type(pred).__name__}"
    score = ev.get("score")
    if score is not None and (not isinstance(score, _NUMBER) or isinstance(score, bool)):
        return f"field 'score' must be a number, got {type(score).__name__}"
    lat = ev.get("latency_ms")
    if lat is not None and (not isinstance(lat, _NUMBER) or isinstance(lat, bool) or lat < 0):
        return "field 'latency_ms' must be a non-negative number"
    seg = ev.get("segment")
    if seg is not None and (type(seg) is not dict or not all(type(v) is str for v in seg.values())):
        return "field 'segment' must be an object of strings"
    return None


def _fast_valid_prediction(ev: Any) -> bool:
    """The common, valid event in a few type tests; anything unusual goes to :func:`_check_prediction`."""
    if type(ev) is not dict:
        return False
    get = ev.get
    eid, model, version, ts, pred, lat = (get("event_id"), get("model"), get("model_version"), get("timestamp"),
                                          get("prediction"), get("latency_ms"))
    return (type(eid) is str and type(model) is str and type(version) is str and eid != "" and model != ""
            and version != "" and type(get("features")) is dict and type(ts) in _FAST_NUMBER and 0 <= ts <= 1e11
            and type(pred) in _FAST_PREDICTION and (type(pred) is not float or math.isfinite(pred))
            and type(get("score")) in _FAST_OPTIONAL and type(lat) in _FAST_OPTIONAL and (lat is None or lat >= 0)
            and "segment" not in ev)


def _check_label(ev: Any) -> str | None:
    if type(ev) is not dict:
        return f"event must be a JSON object, got {type(ev).__name__}"
    for key in ("event_id", "model"):
        if type(ev.get(key)) is not str or not ev[key]:
            return f"missing or non-string field '{key}'"
    if not isinstance(ev.get("label"), (int, float, str)):
        return "missing field 'label' (a number or a string)"
    if "prediction" in ev:  # a label that carries its prediction skips the join
        pred = ev["prediction"]
        if not isinstance(pred, (int, float, str)) or (type(pred) is float and not math.isfinite(pred)):
            return f"field 'prediction' must be a number or a string, got {type(pred).__name__}"
        score = ev.get("score")
        if score is not None and (not isinstance(score, _NUMBER) or isinstance(score, bool)):
            return f"field 'score' must be a number, got {type(score).__name__}"
        if "prediction_timestamp" in ev:
            try:
                ev["prediction_timestamp"] = parse_timestamp(ev["prediction_timestamp"])
            except ValueError as exc:
                return f"field 'prediction_timestamp': {exc}"
    elif "score" in ev or "prediction_timestamp" in ev:
        return "fields 'score' and 'prediction_timestamp' of a label need its 'prediction'"
    return None


def _decode(values: list[bytes | None], check: Any, fast: Any, times: TimeRange | None
            ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    events: list[dict[str, Any]] = []
    positions: list[int] = []
    rejects: list[Reject] = []
    loads = orjson.loads
    now = time.time()
    lo, hi = (times.min_t, now + times.max_future_s) if times is not None else (-math.inf, math.inf)
    for i, raw in enumerate(values):
        if raw is None:
            rejects.append(Reject(i, "empty message (no value)"))
            continue
        try:
            ev = loads(raw)
        except orjson.JSONDecodeError as exc:
            rejects.append(Reject(i, f"invalid JSON: {exc}"))
            continue
        if fast is not None and fast(ev):
            t = ev["timestamp"] = float(ev["timestamp"])
        else:
            why = check(ev)
            if why is None:
                try:
                    t = ev["timestamp"] = parse_timestamp(ev.get("timestamp"))
                except ValueError as exc:
                    why = f"field 'timestamp': {exc}" if "timestamp" in ev else "missing field 'timestamp'"
            if why is not None:
                rejects.append(Reject(i, why))
                continue
        if not lo <= t <= hi:
            rejects.append(Reject(i, times.check(t, now) or "implausible timestamp"))  # type: ignore[union-attr]
            continue
        events.append(ev)
        positions.append(i)
    return events, positions, rejects


def decode_predictions(values: list[bytes | None], times: TimeRange | None = None
                       ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    """Decode a batch of prediction messages (event times outside ``times`` are rejected).

    Returns ``(events, positions, rejects)``: the valid events (with ``timestamp`` normalised to epoch
    seconds), each one's position in ``values``, and the rejects with their reason.
    """
    return _decode(values, _check_prediction, _fast_valid_prediction, times)


def decode_labels(values: list[bytes | None], times: TimeRange | None = None
                  ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    """Decode a batch of label events: ``event_id``, ``model``, ``label``, ``timestamp``; optionally the
    ``prediction`` it judges (then also ``score`` and ``prediction_timestamp``), which skips the join."""
    return _decode(values, _check_label, None, times)
