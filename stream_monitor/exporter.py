"""Prometheus metrics of the running monitor: its own health, and the latest figures per model.

Served on ``prometheus.port`` (``/metrics``) by ``stream-monitor run``. Each :class:`MonitorMetrics` has its
own registry (injectable), so tests scrape exact values; the registry also carries the standard ``process_*``
and ``python_*`` collectors. Names follow Prometheus conventions: base units (seconds), ``_total`` for
counters, a state set for the breaker. docs/operations.md, "Metrics", lists every series.

Values that describe the *current* state of the tasks this instance owns (breaker state, pending join entries)
are computed at scrape time by :class:`TaskCollector` from the live monitors, so series of tasks that moved
to another instance go away instead of going stale.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .core.monitor import BatchOutput, Monitor

logger = logging.getLogger(__name__)

__all__ = ["BREAKER_STATES", "MonitorMetrics", "TaskCollector"]

#: Breaker states, least to most severe (several tasks may hold a breaker of one model: the worst is shown).
BREAKER_STATES = ("closed", "half_open", "open")

#: Quantiles of the latency sketch as reported by the core (``p50`` ...) and as Prometheus labels them.
_QUANTILES = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}


class TaskCollector(Collector):
    """Scrape-time figures of the live monitors returned by ``tasks()``: breaker state and pending joins."""

    def __init__(self, tasks: Callable[[], Iterable[Monitor]]) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        monitors = list(self.tasks())
        state: dict[str, int] = {}
        pending: dict[str, int] = {}
        for mon in monitors:
            for name, b in list(mon.breakers.items()):
                state[name] = max(state.get(name, 0), BREAKER_STATES.index(b.state))
            for name, mm in list(mon.models.items()):
                if mm.join is not None:
                    pending[name] = pending.get(name, 0) + mm.join.pending
        breaker = StateSetMetricFamily("stream_monitor_breaker_state",
                                       "Circuit breaker state per model (1 for the current state)", labels=["model"])
        for name, i in sorted(state.items()):
            breaker.add_metric([name], {s: j == i for j, s in enumerate(BREAKER_STATES)})
        yield breaker
        join = GaugeMetricFamily("stream_monitor_join_pending", "Predictions and labels waiting to join",
                                 labels=["model"])
        for name, n in sorted(pending.items()):
            join.add_metric([name], n)
        yield join


class MonitorMetrics:
    """Every metric of ``stream-monitor run``; see the module docstring and the metric table of docs/operations.md."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True,
                 max_feature_series: int = 5000) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.max_feature_series = max_feature_series  # prometheus.max_feature_series
        self._feature_keys: set[tuple[str, str, str, str]] = set()  # exported
        self._dropped_keys: set[tuple[str, str, str, str]] = set()  # past the bound
        if process:  # what the default registry has: CPU, memory, open files, start time, GC
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.messages = Counter("stream_monitor_messages", "Messages consumed", ["topic"], registry=r)
        self.dead_letters = Counter("stream_monitor_dead_letters", "Messages sent to the dead-letter topic",
                                    registry=r)
        self.alerts = Counter("stream_monitor_alerts", "Alert events published",
                              ["model", "kind", "status", "severity"], registry=r)
        self.batch_duration = Histogram("stream_monitor_batch_duration_seconds",
                                        "Time to process one consumed batch",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                        registry=r)
        self.transaction_aborts = Counter("stream_monitor_transaction_aborts",
                                          "Transactions aborted (outputs refused, fenced, timed out); their work "
                                          "was redone from the last commit", registry=r)
        self.checkpoint_errors = Counter("stream_monitor_checkpoint_errors",
                                         "Malformed records skipped on the state, join and breaker topics, and "
                                         "model checkpoints that could not be restored", registry=r)
        self.unmonitored = Counter("stream_monitor_unmonitored_events",
                                   "Events of models that are not in the config (or labels of models without "
                                   "label monitoring)", ["model"], registry=r)
        self.last_event_time = Gauge("stream_monitor_last_event_time_seconds",
                                     "Largest event time (the event's timestamp, epoch seconds) of the model's "
                                     "consumed predictions", ["model"], registry=r)
        self.consumer_lag = Gauge("stream_monitor_consumer_lag_messages",
                                  "Messages in the assigned partitions not yet consumed (high watermark minus "
                                  "position), per input topic", ["topic"], registry=r)
        self.last_commit = Gauge("stream_monitor_last_commit_timestamp_seconds",
                                 "When the last transaction (outputs, state and offsets) committed, epoch seconds",
                                 registry=r)
        # computed at scrape time: it must count up while the loop is blocked (a wedged commit, a broker away)
        self.stalled = Gauge("stream_monitor_stalled_seconds",
                             "Seconds since the last commit while processed work waits to be committed (0 when "
                             "commits go through): the broker is away, a commit is wedged or refused", registry=r)
        self._stalled: Callable[[], float] = float
        self.stalled.set_function(lambda: self._stalled())
        self.windows = Counter("stream_monitor_windows", "Drift windows evaluated (again after a rewind)",
                               ["model"], registry=r)
        self.drift = Gauge("stream_monitor_drift_statistic", "Latest window's decision statistic per feature",
                           ["model", "feature", "kind", "statistic"], registry=r)
        self.drift_threshold = Gauge("stream_monitor_drift_threshold", "Threshold of that decision statistic",
                                     ["model", "feature", "kind", "statistic"], registry=r)
        self.series_dropped = Counter("stream_monitor_metric_series_dropped",
                                      "Label sets not exported because prometheus.max_feature_series was reached "
                                      "(per metric family)", ["metric"], registry=r)
        self.series_dropped.labels("drift_statistic")  # from 0 on
        self.latency = Gauge("stream_monitor_prediction_latency_seconds",
                             "Latest window's quantiles of the events' latency_ms, in seconds",
                             ["model", "quantile"], registry=r)
        self.performance = Gauge("stream_monitor_performance", "Latest matured window's metric",
                                 ["model", "metric", "source"], registry=r)
        self.coverage = Gauge("stream_monitor_label_coverage_ratio",
                              "Latest matured window's share of predictions with a label", ["model"], registry=r)
        self.label_lag = Gauge("stream_monitor_label_lag_seconds",
                               "Latest matured window's label delay quantiles (label time minus prediction time)",
                               ["model", "quantile"], registry=r)
        self.join_dropped = Counter("stream_monitor_join_dropped",
                                    "Join entries expired or evicted, and labels outside join.sample_rate",
                                    ["model", "reason"], registry=r)
        self._seen_drops: weakref.WeakKeyDictionary[Monitor, dict[str, tuple[int, ...]]] = \
            weakref.WeakKeyDictionary()
        self._tasks: Callable[[], Iterable[Monitor]] = tuple
        r.register(TaskCollector(lambda: self._tasks()))
        self._lock = threading.Lock()
        self._last_event: dict[str, float] = {}

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def bind(self, tasks: Callable[[], Iterable[Monitor]]) -> None:
        """Where the scrape-time figures come from: a callable returning the live monitors (one per task)."""
        self._tasks = tasks

    def bind_stalled(self, seconds: Callable[[], float]) -> None:
        """Where ``stream_monitor_stalled_seconds`` comes from: a callable read at scrape time."""
        self._stalled = seconds

    def observe_batch(self, out: BatchOutput, monitor: Monitor, seconds: float, topics: dict[str, int],
                      dead_letters: int, unknown: dict[str, int] | None = None) -> None:
        self.batch_duration.observe(seconds)
        for topic, n in topics.items():
            self.messages.labels(topic).inc(n)
        if dead_letters:
            self.dead_letters.inc(dead_letters)
        for model, n in (unknown or {}).items():
            self.unmonitored.labels(model[:120]).inc(n)
        for a in out.alerts:
            self.alerts.labels(a.model, a.kind, a.status, a.severity).inc()
        for rep in out.reports:
            self._report(rep)
        for name, mm in monitor.models.items():
            if mm.last_event_time is not None:
                with self._lock:  # max over tasks: another task may hold newer events of the same model
                    t = max(self._last_event.get(name, 0.0), mm.last_event_time)
                    self._last_event[name] = t
                    self.last_event_time.labels(name).set(t)
            if mm.join is not None:
                self._count_drops(monitor, name, mm.join.counters)

    def _admit(self, key: tuple[str, str, str, str]) -> bool:
        """Whether a new label set of the drift series fits under ``max_feature_series`` (counted if not)."""
        if len(self._feature_keys) < self.max_feature_series:
            self._feature_keys.add(key)
            return True
        if key not in self._dropped_keys:
            if not self._dropped_keys:
                logger.warning("prometheus.max_feature_series (%d) reached: further per-feature drift series "
                               "(model %s first) are not exported; they are counted in "
                               "stream_monitor_metric_series_dropped_total and the window reports keep every "
                               "figure", self.max_feature_series, key[0])
            self._dropped_keys.add(key)
            self.series_dropped.labels("drift_statistic").inc()
        return False

    def _count_drops(self, monitor: Monitor, name: str, c: Any) -> None:
        """The join's cumulative counters, as increments. A monitor seen for the first time (a task assigned or
        restored) sets the baseline: its restored totals were counted by whoever ran the task before."""
        now = (c.expired_predictions + c.expired_labels, c.evicted, c.sampled_out_labels)
        seen = self._seen_drops.setdefault(monitor, {})
        before = seen.get(name, now)
        seen[name] = now
        for reason, n, was in zip(("expired", "evicted", "sampled_out"), now, before):
            counter = self.join_dropped.labels(name, reason)  # the series exists from 0 on: rate() works
            if n > was:
                counter.inc(n - was)

    def _report(self, rep: dict[str, Any]) -> None:
        model = rep["model"]
        if rep["type"] == "drift":
            self.windows.labels(model).inc()
            for f in rep["findings"]:
                if f["kind"] == "latency":  # milliseconds: exported in seconds below, not as a drift figure
                    continue
                key = (model, f["feature"] or "", f["kind"], f["statistic"])
                if key not in self._feature_keys and not self._admit(key):
                    continue
                self.drift.labels(*key).set(f["value"])
                self.drift_threshold.labels(*key).set(f["threshold"])
            for q, v in (rep.get("latency_ms") or {}).items():
                self.latency.labels(model, _QUANTILES.get(q, q)).set(v / 1000.0)
        elif rep["type"] == "performance":
            self.coverage.labels(model).set(rep["coverage"])
            for q, key in (("0.5", "lag_p50_s"), ("0.95", "lag_p95_s")):
                if rep.get(key) is not None:
                    self.label_lag.labels(model, q).set(rep[key])
            for source in ("metrics", "estimated"):
                for metric, v in rep[source].items():
                    self.performance.labels(model, metric, "realized" if source == "metrics" else source).set(v)
