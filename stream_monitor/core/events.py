"""Event contracts and batch decoding: raw bytes in, validated events and rejects out.

This is the only place that knows the wire format of prediction and label events (the JSON Schemas in
``stream_monitor/schemas`` describe the same contract for producers; docs/events.md states it with every
limit and reject class). Decoding is one ``orjson.loads`` per message plus a few type checks on the envelope;
feature values are not inspected here (a string in a numeric feature is a data-quality fact, counted by the
drift engine, not a malformed event).

Whatever the bytes, decoding returns: a message is either an event or a :class:`Reject` with its reason and
its reason class (:data:`REJECT_CLASSES`); nothing raises. The typed fast paths (the compiled decoder, or
msgspec without it) take only messages they decide exactly as the general path here does, and leave the rest
to it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any, Union

import msgspec
import numpy as np
import orjson

from .columns import Codes, Columns, _categorical_column, _numeric_matrix, build_columns, segment_matrix
from .keys import event_keys

from . import compiled as compiled_parts

_columnar = compiled_parts.load("_columnar")  # the compiled decoder (None: the Python decoder, same results, slower)

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)

__all__ = ["MAX_DEPTH", "REJECT_CLASSES", "Limits", "ModelEvents", "PredictionBatch", "PredictionDecoder", "Reject",
           "TimeRange", "decode_labels", "decode_predictions", "parse_timestamp"]

#: Why a message is rejected, as a class (the dead letter's ``error.class`` header); ``reason`` says more.
REJECT_CLASSES = (
    "empty",                # no value (a tombstone)
    "too_large",            # longer than events.max_message_bytes
    "bad_unicode",          # invalid UTF-8 anywhere, or a \u escape that is no Unicode character (lone surrogate)
    "not_json",             # not one JSON value
    "too_deep",             # arrays and objects nested deeper than MAX_DEPTH
    "number_out_of_range",  # a number anywhere in the event beyond the double range (about 1.8e308)
    "string_too_long",      # a string the monitor keeps longer than events.max_string_length characters
    "contract",             # a field missing, empty or of the wrong type
    "timestamp",            # not a timestamp, or outside the plausible event times
    "decoder_error",        # decoding failed on a defect of this program (logged with its traceback)
)

#: Deepest nesting of arrays and objects an event may have (the event object itself is level 1).
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that breaks the contract: it goes to the dead-letter topic with ``reason``."""

    index: int  # position in the batch handed to the decoder
    reason: str
    kind: str = "contract"  # one of REJECT_CLASSES


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes an event may have (``events.max_message_bytes`` and ``events.max_string_length``).

    ``max_string_length`` bounds, in characters, every string the monitor keeps: ``event_id``, ``model``,
    ``model_version``, a class prediction or label, segment keys and values, and the values of the configured
    categorical features (other features are not kept, and only the message size bounds them)."""

    max_message_bytes: int = 1 << 20
    max_string_length: int = 1024


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


_Why = tuple[str, str]  # (reason class, reason)


def _long(field: str, value: str, limit: int) -> _Why:
    return "string_too_long", (f"field '{field}' has {len(value)} characters, more than "
                               f"events.max_string_length={limit}")


def _check_prediction(ev: Any, limit: int) -> _Why | None:
    """Why ``ev`` breaks the prediction contract (reason class, reason), or None when it holds."""
    if type(ev) is not dict:
        return "contract", f"event must be a JSON object, got {type(ev).__name__}"
    for key in ("event_id", "model", "model_version"):
        v = ev.get(key)
        if type(v) is not str:
            return "contract", f"missing or non-string field '{key}'"
        if not v:
            return "contract", f"empty field '{key}'"
        if len(v) > limit:
            return _long(key, v, limit)
    if type(ev.get("features")) is not dict:
        return "contract", "missing field 'features' (an object of name -> number | string | bool | null)"
    if "prediction" not in ev:
        return "contract", "missing field 'prediction'"
    why = _check_prediction_and_score(ev, limit)
    if why is not None:
        return why
    lat = ev.get("latency_ms")
    if lat is not None and (not isinstance(lat, _NUMBER) or isinstance(lat, bool) or lat < 0):
        return "contract", "field 'latency_ms' must be a non-negative number"
    seg = ev.get("segment")
    if seg is not None:
        if type(seg) is not dict or not all(type(v) is str for v in seg.values()):
            return "contract", "field 'segment' must be an object of strings"
        for k, v in seg.items():
            if len(k) > limit or len(v) > limit:
                return _long(f"segment.{k[:64]}", k if len(k) > limit else v, limit)
    return None


def _check_prediction_and_score(ev: dict[str, Any], limit: int) -> _Why | None:
    """Why the event's ``prediction`` (present) or ``score`` breaks the contract, or None."""
    pred = ev["prediction"]
    if not isinstance(pred, (int, float, str)) or (type(pred) is float and not math.isfinite(pred)):
        return "contract", f"field 'prediction' must be a number or a string, got {type(pred).__name__}"
    if type(pred) is str and len(pred) > limit:
        return _long("prediction", pred, limit)
    score = ev.get("score")
    if score is not None and (not isinstance(score, _NUMBER) or isinstance(score, bool)):
        return "contract", f"field 'score' must be a number, got {type(score).__name__}"
    return None


def _fast_valid_prediction(ev: Any, limit: int) -> bool:
    """The common, valid event in a few type tests; anything unusual goes to :func:`_check_prediction`."""
    if type(ev) is not dict:
        return False
    get = ev.get
    eid, model, version, ts, pred, lat = (get("event_id"), get("model"), get("model_version"), get("timestamp"),
                                          get("prediction"), get("latency_ms"))
    return (type(eid) is str and type(model) is str and type(version) is str and eid != "" and model != ""
            and version != "" and len(eid) <= limit and len(model) <= limit and len(version) <= limit
            and type(get("features")) is dict and type(ts) in _FAST_NUMBER and 0 <= ts <= 1e11
            and type(pred) in _FAST_PREDICTION and (type(pred) is not float or math.isfinite(pred))
            and (type(pred) is not str or len(pred) <= limit)
            and type(get("score")) in _FAST_OPTIONAL and type(lat) in _FAST_OPTIONAL and (lat is None or lat >= 0)
            and "segment" not in ev)


def _check_label(ev: Any, limit: int) -> _Why | None:
    if type(ev) is not dict:
        return "contract", f"event must be a JSON object, got {type(ev).__name__}"
    for key in ("event_id", "model"):
        if type(ev.get(key)) is not str or not ev[key]:
            return "contract", f"missing or non-string field '{key}'"
        if len(ev[key]) > limit:
            return _long(key, ev[key], limit)
    label = ev.get("label")
    if not isinstance(label, (int, float, str)):
        return "contract", "missing field 'label' (a number or a string)"
    if type(label) is str and len(label) > limit:
        return _long("label", label, limit)
    if "prediction" in ev:  # a label that carries its prediction skips the join
        why = _check_prediction_and_score(ev, limit)
        if why is not None:
            return why
        if "prediction_timestamp" in ev:
            try:
                ev["prediction_timestamp"] = parse_timestamp(ev["prediction_timestamp"])
            except ValueError as exc:
                return "timestamp", f"field 'prediction_timestamp': {exc}"
    elif "score" in ev or "prediction_timestamp" in ev:
        return "contract", "fields 'score' and 'prediction_timestamp' of a label need its 'prediction'"
    return None


def _long_category(ev: dict[str, Any], categorical: Mapping[str, tuple[str, ...]], limit: int) -> _Why | None:
    """A configured categorical feature's value longer than ``limit`` (the monitor keeps those values)."""
    names = categorical.get(ev["model"])
    if names:
        feats = ev["features"]
        for name in names:
            v = feats.get(name)
            if type(v) is str and len(v) > limit:
                return _long(f"features.{name}", v, limit)
    return None


def _json_error_class(message: str) -> str:
    """The reason class of an ``orjson`` error message."""
    if "number is infinity" in message:
        return "number_out_of_range"
    if "depth limit" in message:
        return "too_deep"
    if "surrogate" in message or "not valid UTF-8" in message:
        return "bad_unicode"
    return "not_json"


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``limit`` (``value`` itself is level 1)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        items = v.values() if type(v) is dict else v
        stack.extend((x, d + 1) for x in items if type(x) is dict or type(x) is list)
    return False


def screen(raw: bytes | None, limits: Limits) -> tuple[Any, Reject | None]:
    """The checks on one message's bytes, before any field is read: ``(value, None)`` with the parsed JSON
    value, or ``(None, reject)`` (with index 0). In the order the contract states them: no value, size,
    UTF-8, JSON (its numbers within the double range), nesting."""
    if raw is None:
        return None, Reject(0, "empty message (no value)", "empty")
    if len(raw) > limits.max_message_bytes:
        return None, Reject(0, f"message of {len(raw)} bytes, more than events.max_message_bytes="
                               f"{limits.max_message_bytes}", "too_large")
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            return None, Reject(0, f"invalid UTF-8 at byte {exc.start}: {exc.reason}", "bad_unicode")
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, Reject(0, f"invalid JSON: {exc}", _json_error_class(str(exc)))
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_over(ev, MAX_DEPTH):
        return None, Reject(0, f"arrays and objects nested deeper than {MAX_DEPTH} levels", "too_deep")
    return ev, None


def _decode(values: list[bytes | None], check: Any, fast: Any, times: TimeRange | None, limits: Limits,
            categorical: Mapping[str, tuple[str, ...]] | None = None
            ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    events: list[dict[str, Any]] = []
    positions: list[int] = []
    rejects: list[Reject] = []
    now = time.time()
    lo, hi = (times.min_t, now + times.max_future_s) if times is not None else (-math.inf, math.inf)
    limit = limits.max_string_length
    for i, raw in enumerate(values):
        ev, rejected = screen(raw, limits)
        if rejected is not None:
            rejects.append(Reject(i, rejected.reason, rejected.kind))
            continue
        if fast is not None and fast(ev, limit):
            t = ev["timestamp"] = float(ev["timestamp"])
            why = _long_category(ev, categorical, limit) if categorical else None
        else:
            why = check(ev, limit)
            if why is None and categorical:
                why = _long_category(ev, categorical, limit)
            if why is None:
                try:
                    t = ev["timestamp"] = parse_timestamp(ev.get("timestamp"))
                except ValueError as exc:
                    why = ("timestamp", f"field 'timestamp': {exc}") if "timestamp" in ev else (
                        "contract", "missing field 'timestamp'")
        if why is not None:
            rejects.append(Reject(i, why[1], why[0]))
            continue
        if not lo <= t <= hi:
            rejects.append(Reject(i, times.check(t, now) or "implausible timestamp", "timestamp"))  # type: ignore[union-attr]
            continue
        events.append(ev)
        positions.append(i)
    return events, positions, rejects


def decode_predictions(values: list[bytes | None], times: TimeRange | None = None, limits: Limits = Limits(),
                       categorical: Mapping[str, tuple[str, ...]] | None = None
                       ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    """Decode a batch of prediction messages (event times outside ``times`` are rejected).

    Returns ``(events, positions, rejects)``: the valid events (with ``timestamp`` normalised to epoch
    seconds), each one's position in ``values``, and the rejects with their reason. ``categorical``: per model
    its categorical features, whose values :class:`Limits` bounds too (unchecked without it).
    """
    return _decode(values, _check_prediction, _fast_valid_prediction, times, limits, categorical)


def decode_labels(values: list[bytes | None], times: TimeRange | None = None, limits: Limits = Limits()
                  ) -> tuple[list[dict[str, Any]], list[int], list[Reject]]:
    """Decode a batch of label events: ``event_id``, ``model``, ``label``, ``timestamp``; optionally the
    ``prediction`` it judges (then also ``score`` and ``prediction_timestamp``), which skips the join."""
    return _decode(values, _check_label, None, times, limits)


# ---- the fast path: typed decoding straight into columns -------------------------------------------------

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Latency = Annotated[float, msgspec.Meta(ge=0)]
# None (a message _plain leaves to the general path) raises TypeError; deep nesting RecursionError
_DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, TypeError, RecursionError, ValueError,
                  OverflowError)
#: What msgspec would decide otherwise than the general path: an integer part of 19 digits or more (beyond the
#: 64-bit range, or the double range), an exponent of three digits or more (the double range), an escaped
#: surrogate (msgspec does not check those in the fields it skips). A match in a string only costs the slow path.
#: Searched for with substring tests on the bytes with every digit made a 0 first (a regex over every message
#: would cost about as much as msgspec's decode).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_RUN = b"0" * 19
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89abAB]")


@dataclass(slots=True)
class ModelEvents:
    """One model's valid prediction events of a batch, already as columns."""

    positions: list[int]  # each event's position in the decoded batch
    cols: Columns
    _events: list[dict[str, Any]] | None = None
    _envelopes: tuple[tuple[Any, ...], ...] | None = None

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts of their envelope fields (``features`` omitted when decoded by the fast path):
        what the label join needs. Built on first use, so models without labels never pay for it (the compiled
        decoder does not even make their ids, predictions and scores as objects)."""
        if self._events is None:
            if self._envelopes is None:
                raise RuntimeError("these events were decoded without their envelope objects: the model joins "
                                   "no labels")
            ids, preds, scores = self._envelopes
            versions = self.cols.versions().tolist()  # the categorical values are not made for it
            self._events = [{"event_id": i, "model_version": v, "timestamp": t, "prediction": p, "score": s}
                            for i, v, t, p, s in zip(ids, versions, self.cols.event_time.tolist(), preds, scores)]
        return self._events


@dataclass(slots=True)
class PredictionBatch:
    """A decoded batch of prediction events: per configured model its columns, the positions of events of
    models that are not configured, and the rejects."""

    models: dict[str, ModelEvents]
    unknown: dict[int, str]  # position -> model name, for models without a config
    rejects: list[Reject]
    count: int  # valid events, monitored or not

    @classmethod
    def from_events(cls, events: list[dict[str, Any]], models: Mapping[str, ModelConfig]) -> PredictionBatch:
        """Group already decoded (dict) events by model and build their columns: the embedded path."""
        by_model: dict[str, list[int]] = {}
        for i, ev in enumerate(events):
            by_model.setdefault(ev["model"], []).append(i)
        out: dict[str, ModelEvents] = {}
        unknown: dict[int, str] = {}
        for name, pos in by_model.items():
            m = models.get(name)
            if m is None:
                unknown.update(dict.fromkeys(pos, name))
                continue
            evs = [events[i] for i in pos]
            out[name] = ModelEvents(pos, build_columns(evs, m.features.numeric, m.features.categorical,
                                                       m.prediction, m.monitor_score,
                                                       segments=m.segments.keys), evs)
        return cls(out, unknown, [], len(events))


class PredictionDecoder:
    """Decodes prediction messages of the configured models straight into columns.

    The compiled decoder (``_columnar``, built with the package) parses each message's bytes into the column
    buffers of its model, with the contract's checks in the same pass: no dict, Struct or float object per
    event. Without it (no C compiler at install time, or ``compiled=False``), msgspec decodes each model's
    events into a typed structure, selected by the ``model`` field, that holds only the configured features.
    Either takes only the common, valid event: a message that does not fit (an unconfigured model, a value of
    an unexpected type in a feature — a data-quality fact, not a reject —, an ISO timestamp string, escapes in
    a string it reads, a broken contract) takes the general path (:func:`decode_predictions` and
    :func:`build_columns`), which decides, with the same result as if the whole batch had taken it.
    """

    def __init__(self, models: Mapping[str, ModelConfig], times: TimeRange | None = None,
                 compiled: bool | None = None, limits: Limits = Limits()) -> None:
        """``compiled``: use the compiled decoder (True: required, None: when it is built, False: never)."""
        self.models = dict(models)
        self.times = times
        self.limits = limits
        self._categorical = {name: m.features.categorical for name, m in self.models.items()}
        if compiled and _columnar is None:
            raise RuntimeError("the compiled decoder (stream_monitor.core._columnar) is not built: reinstall the "
                               "package with a C compiler present" + (" (or unset STREAM_MONITOR_NO_EXTENSIONS)"
                                                                      if compiled_parts.DISABLED else ""))
        # per model its features, whether it keeps segments, and whether it joins labels (only then are its
        # events' ids, predictions and scores made as Python objects: ModelEvents.events). It declines any
        # string it keeps longer than the limit in bytes: at least as many as characters, so what it takes
        # the general path would take too.
        self._c = (_columnar.Decoder(decoder_specs(self.models), max_string_bytes=limits.max_string_length,
                                     max_message_bytes=limits.max_message_bytes)
                   if _columnar is not None and compiled is not False and self.models else None)
        self.compiled = self._c is not None  # the compiled decoder takes the common event
        # without it, typed msgspec structures take that event
        self._types: dict[type, tuple[str, Any, Any]] = {}
        self._decode = None if self.compiled else self._typed_decoder()

    def _typed_decoder(self) -> Any:
        """A msgspec decoder of one typed structure per model, selected by the ``model`` field (the structures'
        column getters in ``_types``); None without models."""
        structs = []
        text = Annotated[str, msgspec.Meta(max_length=self.limits.max_string_length)]
        name_text = Annotated[str, msgspec.Meta(min_length=1, max_length=self.limits.max_string_length)]
        for i, (name, m) in enumerate(self.models.items()):
            # attributes f0, f1, ... renamed to the feature names: a name need not be an identifier, and a dot
            # in it would make attrgetter look up a nested attribute
            num = [f"f{j}" for j in range(len(m.features.numeric))]
            cat = [f"f{len(num) + j}" for j in range(len(m.features.categorical))]
            fields = [(a, float | None, None) for a in num] + [(a, text | None, None) for a in cat]
            feats = msgspec.defstruct(f"Features{i}", fields, rename=dict(
                zip(num + cat, m.features.numeric + m.features.categorical)))
            struct = msgspec.defstruct(
                f"Prediction{i}",
                [("event_id", name_text), ("model_version", name_text), ("timestamp", float),
                 ("features", feats), ("prediction", int | float | text), ("score", float | None, None),
                 ("latency_ms", _Latency | None, None), ("segment", dict[text, text] | None, None)],
                tag_field="model", tag=name)
            structs.append(struct)
            num_get = attrgetter(*num) if num else None
            cat_get = attrgetter(*cat) if cat else None
            self._types[struct] = (name, num_get, cat_get)
        return msgspec.json.Decoder(Union[tuple(structs)]).decode if structs else None  # noqa: UP007

    def _plain(self, raw: bytes | None) -> bool:
        """Whether msgspec may decode ``raw``: it decides such a message as the general path does. It does not
        check the size, the UTF-8 of fields it skips, the range of numbers, or the depth of nesting (it raises
        RecursionError): messages that would need those checks go to the general path."""
        if (raw is None or len(raw) > self.limits.max_message_bytes or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
                or not (raw.isascii() or _utf8(raw))):
            return False
        zeros = raw.translate(_DIGITS_AS_ZERO)
        if b"0e000" in zeros or b"0e+000" in zeros or b"0e-000" in zeros or b"\\u" in raw and _ESCAPED_SURROGATE.search(
                raw):
            return False
        if _RUN in zeros:  # 19 digits: an integer part, or only the digits of a fraction (after its point)?
            parts = zeros.split(b".")
            return not (_RUN in parts[0] or any(_RUN in p.lstrip(b"0") for p in parts[1:]))
        return True

    def decode(self, values: list[bytes | None]) -> PredictionBatch:
        """The batch's events per model, the unknown models' positions and the rejects. Never raises on the
        bytes: should decoding the batch fail anyway (a defect), each message is decoded on its own and one
        that still fails is rejected (class ``decoder_error``) with the exception, and logged."""
        try:
            return self._batch(values, range(len(values)))
        except Exception:  # noqa: BLE001 - a defect; one message must not stop the monitor
            logger.exception("decoding a batch of %d messages failed: decoding them one by one", len(values))
        batch = PredictionBatch({}, {}, [], 0)
        per_model: dict[str, list[tuple[list[int], Columns, Any]]] = {}
        for i, raw in enumerate(values):
            try:
                one = self._batch([raw], [i])
            except Exception as exc:  # noqa: BLE001
                logger.exception("decoding message %d failed: it is rejected", i)
                batch.rejects.append(Reject(i, f"decoder error: {type(exc).__name__}: {exc}"[:500],
                                            "decoder_error"))
                continue
            batch.count += one.count
            batch.rejects += one.rejects
            batch.unknown |= one.unknown
            for name, me in one.models.items():
                per_model.setdefault(name, []).append((me.positions, me.cols, me.events() if me._events is not None
                                                       or me._envelopes is not None else None))
        for name, parts in per_model.items():
            batch.models[name] = _merge(parts)
        return batch

    def _batch(self, values: list[bytes | None], at: Sequence[int]) -> PredictionBatch:
        """:meth:`decode` of ``values``, whose positions are given as ``at`` (``values[j]`` is at ``at[j]``)."""
        batch = PredictionBatch({}, {}, [], 0)
        per_model: dict[str, list[tuple[list[int], Columns, Any]]] = {}
        slow: list[int] = []
        if self._c is not None:
            slow = self._compiled(values, per_model)
        elif self._decode is None:
            slow = list(range(len(values)))
        else:  # in chunks: a chunk's decoded structures are still in the CPU cache when its columns are built
            for lo in range(0, len(values), _CHUNK):
                self._fast(values, lo, min(lo + _CHUNK, len(values)), per_model, slow)
        for parts in per_model.values():
            batch.count += sum(cols.n for _, cols, _ in parts)
        if slow:
            slow.sort()
            evs, where, rejects = decode_predictions([values[i] for i in slow], self.times, self.limits,
                                                     self._categorical)
            batch.rejects += [Reject(slow[r.index], r.reason, r.kind) for r in rejects]
            general = PredictionBatch.from_events(evs, self.models)
            batch.count += general.count
            batch.unknown = {slow[where[i]]: name for i, name in general.unknown.items()}
            for name, me in general.models.items():
                pos = [slow[where[i]] for i in me.positions]
                per_model.setdefault(name, []).append((pos, me.cols, me.events()))
        for name, parts in per_model.items():
            batch.models[name] = _merge(parts)
        batch.rejects.sort(key=lambda r: r.index)
        if type(at) is not range or at.start != 0:  # positions within a larger batch
            batch.rejects = [Reject(at[r.index], r.reason, r.kind) for r in batch.rejects]
            batch.unknown = {at[i]: name for i, name in batch.unknown.items()}
            for me in batch.models.values():
                me.positions = [at[p] for p in me.positions]
        return batch

    def _time_bounds(self) -> tuple[float, float]:
        lo, hi = 0.0, 1e11  # beyond: milliseconds sent by mistake, or nonsense
        if self.times is not None:
            lo, hi = max(lo, self.times.min_t), min(hi, time.time() + self.times.max_future_s)
        return lo, hi

    def _compiled(self, values: list[bytes | None], per_model: dict[str, list[tuple[list[int], Columns, Any]]]
                  ) -> list[int]:
        """The compiled decoder's columns per model; returns the positions it declined."""
        assert self._c is not None
        declined, outs = self._c.decode(values if type(values) is list else list(values), *self._time_bounds())
        for name, out in zip(self.models, outs):  # the models in the order the decoder was given them
            if out is None:
                continue
            (pos, t, num, keys, codes, distinct, classes, pred, flags, _score, latency, ids, preds, scores,
             segments) = out  # the score is in num: _extra_columns
            m = self.models[name]
            t = np.frombuffer(t, dtype=np.float64)
            n, k, c = t.shape[0], len(m.features.numeric), len(m.features.categorical)
            codes = np.frombuffer(codes, dtype=np.int32).reshape(n, c + 1)
            kind = np.frombuffer(flags, dtype=np.uint8) & _PRED_KINDS
            values = pred_column = pred_error = None
            if m.prediction == "categorical" and (kind == _columnar.PRED_STR).all():  # classes: one more code column
                codes = np.column_stack([codes[:, :c], np.frombuffer(pred, dtype=np.int32)[::2], codes[:, c:]])
                values = (*distinct[:c], classes, distinct[c])
                c += 1
            elif m.prediction == "categorical":  # numbers among the classes: the general rules decide them
                pred_column, pred_error = _mixed_classes(kind, pred, classes, n)
            pred_at, score_at = _extra_columns(m)  # the decoder wrote a numeric prediction and the score there
            num = np.frombuffer(num, dtype=np.float64).reshape(n, k + (pred_at >= 0) + (score_at >= 0))
            num_err = np.zeros(num.shape, dtype=bool)
            if pred_at >= 0:  # a class string is a numeric model's type error (its value: NaN)
                num_err[:, pred_at] = kind == _columnar.PRED_STR
            cols = self._model_columns(
                m, t, num, None, None, None, None, np.frombuffer(latency, dtype=np.float64),
                np.frombuffer(keys, dtype=np.uint64), segments, pred_column, pred_error,
                Codes(codes, values or distinct), num_err)
            per_model.setdefault(name, []).append((np.frombuffer(pos, dtype=np.int64).tolist(), cols,
                                                   None if ids is None else (ids, preds, scores)))
        return declined

    def _fast(self, values: list[bytes | None], lo: int, hi: int,
              per_model: dict[str, list[tuple[list[int], Columns, Any]]], slow: list[int]) -> None:
        decode = self._decode
        assert decode is not None
        chunk = values[lo:hi]
        if not all(map(self._plain, chunk)):  # some message is left to the general path before msgspec sees it
            chunk = [raw if self._plain(raw) else None for raw in chunk]
        try:
            fast = list(map(decode, chunk))
        except _DECODE_ERRORS:  # some message needs the general path: sort them out one by one
            fast = []
            for i in range(lo, hi):
                raw = chunk[i - lo]
                try:
                    fast.append(decode(raw))
                except _DECODE_ERRORS:
                    slow.append(i)
                    fast.append(None)
        groups: dict[type, list[int]] = {}
        if len(fast) == hi - lo and len(set(map(type, fast))) == 1 and fast[0] is not None:
            groups[type(fast[0])] = list(range(hi - lo))
        else:
            for i, s in enumerate(fast):
                if s is not None:
                    groups.setdefault(type(s), []).append(i)
        for struct, idx in groups.items():
            name, num_get, cat_get = self._types[struct]
            part = self._columns(name, [fast[i] for i in idx], [lo + i for i in idx], num_get, cat_get, slow)
            if part is not None:
                per_model.setdefault(name, []).append(part)

    def _columns(self, name: str, structs: list[Any], pos: list[int], num_get: Any, cat_get: Any,
                 slow: list[int]) -> tuple[list[int], Columns, Any] | None:
        m = self.models[name]
        n = len(structs)
        ids, versions, times, preds, scores, latency = zip(*map(_ENVELOPE, structs))
        t = np.fromiter(times, dtype=np.float64, count=n)
        lo, hi = self._time_bounds()
        bad = (t < lo) | (t > hi)
        if bad.any():  # rare: the general path rejects them, with its reasons
            slow += [pos[i] for i in np.flatnonzero(bad).tolist()]
            keep = np.flatnonzero(~bad).tolist()
            if not keep:
                return None
            return self._columns(name, [structs[i] for i in keep], [pos[i] for i in keep], num_get, cat_get, slow)
        feats = list(map(_FEATURES, structs))
        k, c = len(m.features.numeric), len(m.features.categorical)
        num = _float_rows(num_get, feats, n, k) if k else np.empty((n, 0))
        if c:
            flat = chain.from_iterable(map(cat_get, feats)) if c > 1 else map(cat_get, feats)
            cat = np.fromiter(flat, dtype=object, count=n * c).reshape(n, c)
        else:
            cat = np.empty((n, 0), dtype=object)
        # the segment object carries every key (checked as strings by the struct); only configured ones are kept
        cols = self._model_columns(m, t, num, cat, versions, preds, scores, _floats(latency, n, 1).reshape(n),
                                   event_keys(ids), list(map(_SEGMENT, structs)) if m.segments.keys else None)
        return pos, cols, (ids, preds, scores)

    @staticmethod
    def _model_columns(m: ModelConfig, t: np.ndarray, num: np.ndarray, cat: np.ndarray | None,
                       versions: Sequence[str] | np.ndarray | None,
                       preds: Sequence[Any] | None, scores: Sequence[float | None] | None, latency: np.ndarray,
                       keys: np.ndarray, segments: list[dict[str, str] | None] | None,
                       pred_column: np.ndarray | None = None, pred_error: np.ndarray | None = None,
                       codes: Codes | None = None, num_err: np.ndarray | None = None) -> Columns:
        """A model's :class:`Columns` from its feature matrices and envelope fields (both typed paths).

        ``cat`` and ``versions`` are None when ``codes`` (the compiled decoder's) encodes them: the columns keep
        only the codes until the values are read (:meth:`Columns.encoded`). The prediction column comes from
        ``preds`` (the values), or, when None, is ``pred_column`` and ``pred_error`` (an ``(n, 1)`` column and
        its type errors), or, when those are None too, is already the last categorical column (the compiled
        decoder's class codes). With ``num_err`` (the compiled decoder's), ``num`` already holds a numeric
        prediction and the score, and ``scores`` is None."""
        n = t.shape[0]
        if num_err is None:
            num_err = np.zeros(num.shape, dtype=bool)
        if codes is not None and m.prediction == "categorical" and pred_column is not None:
            cat, versions = codes.objects()  # the prediction column is appended to the values: made now
        cat_err = np.zeros((n, codes.features) if cat is None and codes is not None else cat.shape, dtype=bool)
        extra_num: list[tuple[np.ndarray, np.ndarray]] = []
        if preds is not None:
            if m.prediction == "numeric":
                pred_column, pred_error = _numeric_matrix([(p,) for p in preds], n, 1)
            elif m.prediction == "categorical":
                pred_column, pred_error = _categorical_column(preds, n)
        if pred_column is not None and pred_error is not None:
            if m.prediction == "numeric":
                extra_num.append((pred_column, pred_error))
            else:
                cat, cat_err = np.hstack([cat, pred_column]), np.hstack([cat_err, pred_error])
        if m.monitor_score and scores is not None:
            extra_num.append((_floats(scores, n, 1), np.zeros((n, 1), dtype=bool)))
        if extra_num:
            num = np.hstack([num, *(a for a, _ in extra_num)])
            num_err = np.hstack([num_err, *(e for _, e in extra_num)])
        seg = (segment_matrix(segments, m.segments.keys) if segments is not None and m.segments.keys
               else np.empty((n, 0), dtype=object))
        if cat is None:
            assert codes is not None
            return Columns.encoded(t, num, num_err, cat_err, latency, keys, seg, codes)
        if type(versions) is not np.ndarray:
            versions = np.fromiter(versions, dtype=object, count=n)
        return Columns(t, num, num_err, cat, cat_err, versions, latency, keys, seg, codes)


_ENVELOPE = attrgetter("event_id", "model_version", "timestamp", "prediction", "score", "latency_ms")
_FEATURES = attrgetter("features")
_SEGMENT = attrgetter("segment")
#: Messages per chunk. In the running monitor (the broker and librdkafka's threads share the caches) 256-384
#: decoded fastest: 4.3-4.5 us per event against 4.6-4.8 at 1,024 and 5.3-5.6 at 2,048; 128 pays more per chunk.
_CHUNK = 256


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _float_rows(get: Any, items: list[Any], n: int, k: int) -> np.ndarray:
    """The ``(n, k)`` float matrix of ``get(item)`` (k numbers or None each; a number when k == 1)."""
    try:  # straight from the values into the array: no row tuples kept
        flat = chain.from_iterable(map(get, items)) if k > 1 else map(get, items)
        return np.fromiter(flat, dtype=np.float64, count=n * k).reshape(n, k)
    except TypeError:  # None somewhere: numpy turns None into NaN in the slower constructor
        return np.array(list(map(get, items)), dtype=np.float64).reshape(n, k)


#: The flag bits of the compiled decoder that say a prediction's type (a class string, an integer, a float).
_PRED_KINDS = 0 if _columnar is None else _columnar.PRED_STR | _columnar.PRED_INT | _columnar.PRED_FLOAT


def decoder_specs(models: Mapping[str, ModelConfig]) -> list[tuple[Any, ...]]:
    """The compiled decoder's model specs: name, feature names, whether to keep segments and to make row
    objects (the model joins labels), and where a numeric prediction and the score go in its numeric rows."""
    return [(name, m.features.numeric, m.features.categorical, bool(m.segments.keys), m.uses_labels,
             *_extra_columns(m)) for name, m in models.items()]


def _extra_columns(m: ModelConfig) -> tuple[int, int]:
    """Where the compiled decoder writes a numeric prediction and the score in a row of the model's numeric
    matrix (-1: not there): after the features, in the order of :func:`column_names`."""
    k = len(m.features.numeric)
    pred_at = k if m.prediction == "numeric" else -1
    return pred_at, (k + (pred_at >= 0) if m.monitor_score else -1)


def _mixed_classes(kind: np.ndarray, pred: bytes, classes: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """A categorical model's prediction column and its type errors from the compiled decoder's buffers when
    not all its predictions are strings (``kind``: each row's prediction type flag; ``pred``: 8 bytes a row,
    an int64, a float64 or an int32 class code), by the rules of the general path: an integer is a category
    (its decimal string), a float a type error."""
    assert _columnar is not None
    raw = np.frombuffer(pred, dtype=np.int64)
    is_str, is_int, is_float = (kind == k for k in (_columnar.PRED_STR, _columnar.PRED_INT, _columnar.PRED_FLOAT))
    values = np.empty(n, dtype=object)
    values[is_str] = np.array(classes, dtype=object)[raw.view(np.int32)[::2][is_str]]
    values[is_int] = raw[is_int].tolist()
    values[is_float] = raw.view(np.float64)[is_float].tolist()
    return _categorical_column(values.tolist(), n)


def _floats(rows: Sequence[Any], n: int, k: int) -> np.ndarray:
    """An ``(n, k)`` float matrix from rows of ``k`` numbers or None (NaN), or from ``n`` values when k == 1."""
    flat = chain.from_iterable(rows) if k > 1 or (n and type(rows[0]) is tuple) else rows
    try:
        return np.fromiter(flat, dtype=np.float64, count=n * k).reshape(n, k)
    except TypeError:  # None somewhere: numpy turns None into NaN in the slower constructor
        return np.array(rows, dtype=np.float64).reshape(n, k)


def _merge(parts: list[tuple[list[int], Columns, Any]]) -> ModelEvents:
    """One model's events from the chunks of the fast path and from the general path, in batch order."""
    if len(parts) == 1:
        pos, cols, extra = parts[0]
        return ModelEvents(pos, cols, extra) if type(extra) is list else ModelEvents(pos, cols, None, extra)
    pos = [p for ps, _, _ in parts for p in ps]
    cols = Columns.concat([c for _, c, _ in parts])
    if any(extra is None for _, _, extra in parts):  # a model without labels: no envelope objects are kept
        me = ModelEvents(pos, cols)
    elif all(type(extra) is not list for _, _, extra in parts):  # all from the fast path
        envelopes = tuple(tuple(chain.from_iterable(extra[i] for _, _, extra in parts)) for i in range(3))
        me = ModelEvents(pos, cols, None, envelopes)
    else:
        events = [e for _, c, extra in parts for e in (extra if type(extra) is list else
                                                       ModelEvents([], c, None, extra).events())]
        me = ModelEvents(pos, cols, events)
    if all(a[0][-1] < b[0][0] for a, b in zip(parts, parts[1:])):  # each part is in order: check the seams
        return me
    order = np.argsort(np.asarray(pos), kind="stable")
    events = None if me._events is None and me._envelopes is None else [me.events()[i] for i in order.tolist()]
    return ModelEvents([pos[i] for i in order.tolist()], cols.take(order), events)
