"""Prometheus metrics of the running monitor: its own health, and the latest figures per model.

Served on ``prometheus.port`` (``/metrics``) by ``stream-monitor run``. Each :class:`MonitorMetrics` has its
own registry (injectable), so tests scrape exact values.

Health: messages consumed, dead letters, alerts, batch processing time, batches awaiting acknowledgement, the
event-time watermark per model (``time() - stream_monitor_event_time_seconds`` is how far behind real time
the monitor is). Figures: each feature's decision statistic and threshold, breaker state, label join
store size and evictions, realized and estimated performance, label coverage, latency quantiles.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .core.monitor import BatchOutput, Monitor

__all__ = ["MonitorMetrics"]

_BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.messages = Counter("stream_monitor_messages", "Messages consumed", ["topic"], registry=r)
        self.dead_letters = Counter("stream_monitor_dead_letters", "Messages sent to the dead-letter topic",
                                    registry=r)
        self.alerts = Counter("stream_monitor_alerts", "Alert events published",
                              ["model", "kind", "status", "severity"], registry=r)
        self.batch_seconds = Histogram("stream_monitor_batch_seconds", "Time to process one consumed batch",
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
        self.event_time = Gauge("stream_monitor_event_time_seconds", "Largest event time seen per model",
                                ["model"], registry=r)
        self.windows = Counter("stream_monitor_windows", "Windows evaluated", ["model"], registry=r)
        self.drift = Gauge("stream_monitor_drift_value", "Latest decision statistic per feature",
                           ["model", "feature", "kind", "statistic"], registry=r)
        self.drift_threshold = Gauge("stream_monitor_drift_threshold", "Its threshold",
                                     ["model", "feature", "kind", "statistic"], registry=r)
        self.latency = Gauge("stream_monitor_latency_ms", "Latest window's latency quantiles",
                             ["model", "quantile"], registry=r)
        self.breaker = Gauge("stream_monitor_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                             ["model"], registry=r)
        self.performance = Gauge("stream_monitor_performance", "Latest matured window's metric",
                                 ["model", "metric", "source"], registry=r)
        self.coverage = Gauge("stream_monitor_label_coverage", "Latest matured window's label coverage",
                              ["model"], registry=r)
        self.join_pending = Gauge("stream_monitor_join_pending", "Predictions and labels waiting to join",
                                  ["model"], registry=r)
        self.join_dropped = Gauge("stream_monitor_join_dropped",
                                  "Join entries expired or evicted, and labels outside join.sample_rate (cumulative)",
                                  ["model", "reason"], registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def observe_batch(self, out: BatchOutput, monitor: Monitor, seconds: float, topics: dict[str, int],
                      dead_letters: int, unknown: dict[str, int] | None = None) -> None:
        self.batch_seconds.observe(seconds)
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
            if mm.join is not None:
                self.join_pending.labels(name).set(mm.join.pending)
                c = mm.join.counters
                self.join_dropped.labels(name, "expired").set(c.expired_predictions + c.expired_labels)
                self.join_dropped.labels(name, "evicted").set(c.evicted)
                self.join_dropped.labels(name, "sampled_out").set(c.sampled_out_labels)
        for name, b in monitor.breakers.items():
            self.breaker.labels(name).set(_BREAKER_STATE[b.state])

    def _report(self, rep: dict[str, Any]) -> None:
        model = rep["model"]
        if rep["type"] == "drift":
            self.windows.labels(model).inc()
            self.event_time.labels(model).set(max(rep["window"]["end"], 0.0))
            for f in rep["findings"]:
                key = (model, f["feature"] or "-", f["kind"], f["statistic"])
                self.drift.labels(*key).set(f["value"])
                self.drift_threshold.labels(*key).set(f["threshold"])
            for q, v in (rep.get("latency_ms") or {}).items():
                self.latency.labels(model, q).set(v)
        elif rep["type"] == "performance":
            self.coverage.labels(model).set(rep["coverage"])
            for source in ("metrics", "estimated"):
                for metric, v in rep[source].items():
                    self.performance.labels(model, metric, "realized" if source == "metrics" else source).set(v)
