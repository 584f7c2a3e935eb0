"""Read a range of a topic once, for ``stream-monitor backtest --topic``: every partition from a start to an
end (offsets, or event times resolved with the broker's time index), decoded like ``run`` decodes.

A bound is an offset (``1200``, the same in every partition) or a time (``2026-11-27T10:00:00Z``, or epoch
seconds with a decimal point, ``1764237600.0``). Times are the records' Kafka timestamps (looked up in the
broker's time index): the produce time, or the event time where producers set it. Without ``--to``, the read stops at the end offsets seen
at start. The consumer commits nothing.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from ..core.events import decode_predictions
from .clients import Connection

__all__ = ["parse_bound", "read_range"]


def parse_bound(text: str) -> tuple[str, float]:
    """``("offset", n)`` or ``("time", epoch seconds)``."""
    t = text.strip()
    if t.isdigit():
        return "offset", float(int(t))
    try:
        return "time", float(t)
    except ValueError:
        pass
    try:
        return "time", datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--from/--to: {text!r} is neither an offset (digits) nor a time (ISO 8601 or epoch "
                         "seconds like 1764237600.0)") from None


def read_range(conn: Connection, topic: str, start: str | None, end: str | None,
               timeout_s: float = 60.0) -> tuple[list[dict[str, Any]], int]:
    """Decoded prediction events of ``topic`` in [start, end), and the number of rejected messages."""
    c = conn.consumer({"group.id": f"stream-monitor-backtest-{time.monotonic_ns()}", "enable.auto.commit": False,
                       "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        meta = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ValueError(f"--topic: {topic} does not exist")
        parts = sorted(meta.partitions)
        first, last = {}, {}
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            first[p], last[p] = lo, hi
        def resolve(bound: str | None, default: dict[int, int]) -> dict[int, int]:
            if bound is None:
                return dict(default)
            kind, v = parse_bound(bound)
            if kind == "offset":
                return {p: min(max(int(v), first[p]), last[p]) for p in parts}
            got = c.offsets_for_times([TopicPartition(topic, p, int(v * 1000)) for p in parts], timeout=timeout_s)
            return {tp.partition: (tp.offset if tp.offset >= 0 else last[tp.partition]) for tp in got}
        begin, stop = resolve(start, first), resolve(end, last)
        todo = {p for p in parts if begin[p] < stop[p]}
        c.assign([TopicPartition(topic, p, begin[p] if begin[p] >= 0 else OFFSET_BEGINNING) for p in todo])
        raws: list[bytes | None] = []
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                p = m.partition()
                if m.error() is not None:
                    continue
                deadline = time.monotonic() + timeout_s
                if p in todo and m.offset() < stop[p]:
                    raws.append(m.value())
                if p in todo and m.offset() + 1 >= stop[p]:
                    todo.discard(p)
        if todo:
            raise TimeoutError(f"--topic: {topic} partitions {sorted(todo)} did not reach their end offsets")
    finally:
        c.close()
    events, _, rejects = decode_predictions(raws)
    return events, len(rejects)
