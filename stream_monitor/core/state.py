"""State records: their keys, their kinds and their codec, in one place.

A monitor's state is a set of records on two compacted topics (``topics.state`` and ``topics.join``). Each
record has a **kind** (:data:`KINDS`): what it holds, which topic it lives on, the schema version of its
values and their JSON shape. A record's key is typed (:class:`RecordKey`: model, kind, part) and is printed
and parsed only here, together with the **task** that owns it (:class:`TaskId`: ``3`` for partition 3 of the
inputs, ``p3`` for partition 3 of the panes topic in scale-out mode)::

    <task>/<model>/<kind>[/<part>]          e.g.  3/fraud/w/17   p0/fraud/core   3/fraud/join/p/s/2

A value is written once by :func:`encode_value` as ``{"v": <schema version>, "d": <value>}`` and read by
:func:`decode_value`, which checks the kind's version and shape. A record that is not JSON, of an unknown kind,
of a newer schema or of the wrong shape raises :class:`RecordError` with a short reason class
(:attr:`RecordError.reason`): readers skip it and count the reason, never crash on it (a compacted topic keeps
a bad record for good).

The parts are opaque to this module: the store that owns a kind names its parts (a pane's sequence number, a
calendar slot and cycle, a join changelog segment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

__all__ = ["KINDS", "RecordError", "RecordKey", "RecordKind", "TaskId", "decode_key", "decode_value",
           "encode_key", "encode_value", "by_model", "parts_of"]


@dataclass(frozen=True)
class RecordKind:
    """One kind of state record."""

    name: str  # as printed in keys
    topic: Literal["state", "join"]
    version: int  # schema version of its values (the newest this build writes and reads)
    shape: type  # JSON shape of a value: dict or list
    parted: bool  # the key has a part (many records of the kind per model)
    doc: str


#: Every kind of state record, by name. A kind whose values change shape gets a new version here, and its
#: reader learns to read the older one (or the older records are skipped, counted, and rebuilt).
KINDS: dict[str, RecordKind] = {k.name: k for k in (
    RecordKind("core", "state", 1, dict, False,
               "a model's small state: window bookkeeping, alert policy, breaker, join and performance meta"),
    RecordKind("ref", "state", 1, dict, False, "a reference built by the monitor (warm-up, rolling, calendar)"),
    RecordKind("evidence", "state", 1, dict, False, "evidence history across windows (file/warm-up references)"),
    RecordKind("warmup", "state", 1, dict, True, "a chunk of warm-up events (columns), until the reference is built"),
    RecordKind("w", "state", 1, dict, True, "a pane of the open windows"),
    RecordKind("r", "state", 1, dict, True, "a past window of a rolling reference"),
    RecordKind("c", "state", 1, dict, True, "a calendar reference's pane of one slot and cycle"),
    RecordKind("perf", "state", 1, list, True, "a performance window's sample of joined pairs"),
    RecordKind("held", "state", 1, list, False, "joined pairs waiting for the label frontier (in event-time order)"),
    RecordKind("o", "state", 1, dict, True, "scale-out: a pane builder's open piece of one window"),
    RecordKind("m", "state", 1, dict, True,
               "scale-out, count windows: a chunk of one partition's events waiting for the merge order"),
    RecordKind("join", "join", 1, dict, True, "a segment or live-bitmap of the label join's pending entries"),
)}


class RecordError(ValueError):
    """A state record that cannot be used; :attr:`reason` is a short class of why (for counting)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, order=True)
class TaskId:
    """The unit of work that owns records: partition ``number`` of the inputs, or (``merged``) of the panes
    topic, whose task decides for the models keyed there in scale-out mode."""

    number: int
    merged: bool = False

    def __str__(self) -> str:
        return f"p{self.number}" if self.merged else str(self.number)

    @classmethod
    def parse(cls, text: str) -> TaskId:
        merged = text.startswith("p")
        digits = text[1:] if merged else text
        if not digits.isdigit() or not digits.isascii():
            raise RecordError("bad key", f"task {text!r} is not N or pN")
        return cls(int(digits), merged)


@dataclass(frozen=True, order=True)
class RecordKey:
    """A model's state record: its kind and, for parted kinds, which one."""

    model: str
    kind: str
    part: str = ""

    def __post_init__(self) -> None:
        kind = KINDS.get(self.kind)
        if kind is None:
            raise RecordError("unknown kind", f"{self.kind!r}")
        if kind.parted != bool(self.part):
            raise RecordError("bad key", f"kind {self.kind!r} {'needs' if kind.parted else 'takes no'} part")
        if not self.model or "/" in self.model:
            raise RecordError("bad key", f"model name {self.model!r}")

    @property
    def topic(self) -> Literal["state", "join"]:
        return KINDS[self.kind].topic

    def __str__(self) -> str:
        return f"{self.model}/{self.kind}/{self.part}" if self.part else f"{self.model}/{self.kind}"


def encode_key(task: TaskId, key: RecordKey) -> bytes:
    """The Kafka key of ``key`` owned by ``task``."""
    return f"{task}/{key}".encode()


def decode_key(raw: bytes | None) -> tuple[TaskId, RecordKey]:
    """The task and record key of a Kafka key; :class:`RecordError` if it is not one."""
    try:
        text = (raw or b"").decode()
    except UnicodeDecodeError:
        raise RecordError("bad key", "not UTF-8") from None
    fields = text.split("/", 3)
    if len(fields) < 3:
        raise RecordError("bad key", f"{text[:100]!r} is not <task>/<model>/<kind>[/<part>]")
    task = TaskId.parse(fields[0])
    return task, RecordKey(fields[1], fields[2], fields[3] if len(fields) == 4 else "")


def encode_value(key: RecordKey, value: Any) -> bytes | None:
    """A record's value as written (None: a tombstone, compaction drops the key)."""
    if value is None:
        return None
    kind = KINDS[key.kind]
    if not isinstance(value, kind.shape):
        raise TypeError(f"{key}: a {kind.name} record is a {kind.shape.__name__}, not {type(value).__name__}")
    return orjson.dumps({"v": kind.version, "d": value}, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_value(key: RecordKey, raw: bytes | None) -> Any:
    """A record's value as read (None for a tombstone); :class:`RecordError` if it cannot be used."""
    if raw is None:
        return None
    kind = KINDS[key.kind]
    try:
        env = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError("not JSON", str(exc)) from None
    if not isinstance(env, dict) or set(env) != {"v", "d"} or type(env["v"]) is not int:
        raise RecordError("no version", "not a versioned record (written before state format 2?)")
    if not 1 <= env["v"] <= kind.version:
        raise RecordError("unsupported version", f"{kind.name} schema {env['v']}; this build reads 1..{kind.version}")
    if not isinstance(env["d"], kind.shape):
        raise RecordError("wrong shape", f"a {kind.name} record is a {kind.shape.__name__}, "
                          f"not {type(env['d']).__name__}")
    return env["d"]


def by_model(*records: Mapping[RecordKey, Any]) -> dict[str, dict[RecordKey, Any]]:
    """Records (of any topics) grouped by model."""
    out: dict[str, dict[RecordKey, Any]] = {}
    for recs in records:
        for key, value in recs.items():
            out.setdefault(key.model, {})[key] = value
    return out


def parts_of(records: Mapping[RecordKey, Any], kind: str, live: bool = True) -> dict[str, Any]:
    """Part -> value of the records of ``kind`` (``live``: tombstones left out)."""
    return {k.part: v for k, v in records.items() if k.kind == kind and (v is not None or not live)}
