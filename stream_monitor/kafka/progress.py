"""The running monitor's progress line and consumer lag.

Every ``log_every_s`` the runner logs one line: messages consumed in the last interval and their rate (not
the average since start, which stays high while the input is idle), and the consumer lag — messages in the
assigned input partitions not yet processed. The lag is read from the consumer's cached high watermarks
(updated with every fetch; no request to the broker) and also set on ``stream_monitor_consumer_lag_messages``.

While the monitor is stalled (work processed and not committed for a while: the broker away, a commit wedged or
refused) the line says since when nothing was committed instead of a lag: the cached watermarks are as old as
the last fetch, so the lag they give (often 0) would be a false claim; the lag gauge keeps its last value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import TopicPartition

__all__ = ["Progress", "consumer_lag"]


class _Consumer(Protocol):
    def assignment(self) -> list[TopicPartition]: ...

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int] | None: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...


def consumer_lag(consumer: _Consumer, positions: Mapping[tuple[str, int], int]) -> dict[str, int]:
    """Per topic, the messages of the assigned partitions after the next offset to process (``positions``,
    else the consumer's position). Partitions whose watermark is not known yet count 0."""
    lag: dict[str, int] = {}
    try:
        assigned = consumer.assignment()
    except RuntimeError:  # closed (the last progress line, on stop): no lag to tell
        return lag
    for tp in assigned:
        try:
            marks = consumer.get_watermark_offsets(tp, cached=True)
        except Exception:  # noqa: BLE001  (a partition just revoked; lag is a hint, never a failure)
            marks = None
        lag.setdefault(tp.topic, 0)
        if not marks or marks[1] < 0:
            continue
        pos = positions.get((tp.topic, tp.partition))
        if pos is None:
            got = consumer.position([TopicPartition(tp.topic, tp.partition)])
            pos = got[0].offset if got else -1
        if pos is not None and pos >= 0:
            lag[tp.topic] += max(0, marks[1] - pos)
    return lag


class Progress:
    """Interval rate and lag between two calls of :meth:`line`."""

    def __init__(self, metrics: Any = None) -> None:
        self.metrics = metrics
        self._t = time.monotonic()
        self._messages = 0

    def line(self, stats: Any, consumer: _Consumer | None, positions: Mapping[tuple[str, int], int],
             tasks: int, stalled_since: float | None = None) -> str:
        """The progress line; ``stalled_since`` (wall time of the last commit) when the monitor is stalled."""
        now = time.monotonic()
        interval = max(now - self._t, 1e-9)
        done = stats.messages - self._messages
        self._t, self._messages = now, stats.messages
        if stalled_since is not None:
            at = datetime.fromtimestamp(stalled_since).astimezone().isoformat(timespec="seconds")
            lag_text = f"stalled since {at} (nothing committed for {time.time() - stalled_since:.0f}s; lag unknown)"
        else:
            lag = consumer_lag(consumer, positions) if consumer is not None else {}
            if self.metrics is not None:
                for topic, n in lag.items():
                    self.metrics.consumer_lag.labels(topic).set(n)
            lag_text = "lag " + (", ".join(f"{t} {n}" for t, n in sorted(lag.items())) or "-")
        return (f"consumed {done} messages in {interval:.0f}s ({done / interval:.0f}/s; {stats.messages} in all), "
                f"{lag_text}, {stats.dead_letters} dead letters, {stats.alerts} alerts, {stats.windows} windows "
                f"evaluated in {tasks} tasks, {stats.commits} commits, {stats.aborts} aborts")
