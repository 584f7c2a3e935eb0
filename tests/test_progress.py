"""The progress line and the stall gauge without a broker: a stalled monitor claims no lag."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from stream_monitor.exporter import MonitorMetrics
from stream_monitor.kafka.progress import Progress
from stream_monitor.kafka.runner import ServiceStats


def test_a_stalled_monitor_says_since_when_instead_of_a_lag():
    metrics = MonitorMetrics(process=False)
    progress = Progress(metrics)
    since = time.time() - 42
    line = progress.line(ServiceStats(messages=10), None, {}, 1, stalled_since=since)
    assert "stalled since " in line and "nothing committed for 42s; lag unknown" in line
    assert " lag -" not in line and "lag pred" not in line
    assert "lag -" in progress.line(ServiceStats(messages=10), None, {}, 1)  # not stalled: the lag as before


def test_the_stall_gauge_is_read_at_scrape_time():
    metrics = MonitorMetrics(process=False)
    stalled = [0.0]
    metrics.bind_stalled(lambda: stalled[0])

    def scraped() -> float:
        text = generate_latest(metrics.registry).decode()
        return float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("stream_monitor_stalled_seconds ")))

    assert scraped() == 0.0
    stalled[0] = 17.5  # e.g. the loop blocked on a wedged commit: no call of ours updates the gauge
    assert scraped() == 17.5
