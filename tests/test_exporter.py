"""The Prometheus metrics of the monitor on a seeded stream: names and units by convention, exact values."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.config import parse_config
from stream_monitor.core.monitor import Monitor
from stream_monitor.exporter import MonitorMetrics
from tests.streams import classifier_config, labeled_stream, make_events, model_config

BREAKER = {"enabled": True, "primary_version": "v1", "fallback_version": "v0", "hold_down_s": 100000,
           "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 1}]}


def scrape(metrics: MonitorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def families(metrics: MonitorMetrics) -> dict[str, str]:
    text = generate_latest(metrics.registry).decode()
    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}


def feed(metrics: MonitorMetrics, mon: Monitor, batches, labels=None) -> list:
    alerts = []
    for i, evs in enumerate(batches):
        out = mon.process_batch(evs, labels[i] if labels else [])
        alerts += out.alerts
        metrics.observe_batch(out, mon, 0.01, {"predictions": len(evs)}, 0)
    return alerts


def test_drift_breaker_and_event_time_follow_the_stream():
    cfg = parse_config({"models": {"m": model_config(window={"size": 500}, reference={"size": 1000},
                                                     breaker=BREAKER)}})
    mon = Monitor(cfg)
    metrics = MonitorMetrics(CollectorRegistry())
    metrics.bind(lambda: [mon])
    rng = np.random.default_rng(35)
    events = make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
    alerts = feed(metrics, mon, [events[i:i + 500] for i in range(0, 3000, 500)])
    s = scrape(metrics)
    assert s[("stream_monitor_messages_total", (("topic", "predictions"),))] == 3000
    assert s[("stream_monitor_windows_total", (("model", "m"),))] == 4
    assert s[("stream_monitor_last_event_time_seconds", (("model", "m"),))] == events[-1]["timestamp"]
    fired = [a for a in alerts if a.status == "firing"]
    assert s[("stream_monitor_alerts_total", (("kind", "data_drift"), ("model", "m"), ("severity", "critical"),
                                               ("status", "firing")))] == len(fired) == 1
    a = ("feature", "a"), ("kind", "data_drift"), ("model", "m"), ("statistic", "psi")
    b = ("feature", "b"), ("kind", "data_drift"), ("model", "m"), ("statistic", "psi")
    assert s[("stream_monitor_drift_statistic", a)] > 0.25 > s[("stream_monitor_drift_statistic", b)]
    # thresholds are the configured minimum effect or, above it, the noise floor at these sample sizes
    assert s[("stream_monitor_drift_threshold", a)] >= 0.008 and s[("stream_monitor_drift_threshold", b)] >= 0.008
    # the breaker opened on the drift: a state set, one series per state, 1 for the current one
    assert mon.breakers["m"].state == "open"
    for state in ("closed", "half_open", "open"):
        key = ("stream_monitor_breaker_state", (("model", "m"), ("stream_monitor_breaker_state", state)))
        assert s[key] == (1.0 if state == "open" else 0.0)
    kinds = families(metrics)
    assert kinds["stream_monitor_breaker_state"] == "gauge"  # a state set is a 0/1 gauge per state in text format
    assert kinds["stream_monitor_messages"] == "counter" and kinds["stream_monitor_batch_duration_seconds"] == \
        "histogram"
    assert "process_cpu_seconds" in kinds and "python_info" in kinds  # the standard collectors are there
    # no millisecond figure hides among the drift statistics, and no unit-less quantile labels
    assert not any(dict(labels).get("kind") == "latency" for name, labels in s if name.startswith("stream_monitor_drift"))


def test_series_of_tasks_that_went_away_disappear():
    cfg = parse_config({"models": {"m": model_config(window={"size": 500}, reference={"size": 1000},
                                                     breaker=BREAKER)}})
    tasks = {0: Monitor(cfg)}
    metrics = MonitorMetrics(CollectorRegistry(), process=False)
    metrics.bind(lambda: list(tasks.values()))
    assert ("stream_monitor_breaker_state", (("model", "m"), ("stream_monitor_breaker_state", "closed"))) \
        in scrape(metrics)
    tasks.clear()  # revoked: nothing stale is left behind
    assert not any(name == "stream_monitor_breaker_state" for name, _ in scrape(metrics))


def test_latency_label_lag_coverage_and_join_drops_in_base_units():
    cfg = parse_config({"models": {"clf": classifier_config(window={"size": 1000}, reference={"size": 2000})}})
    mon = Monitor(cfg)
    metrics = MonitorMetrics(CollectorRegistry(), process=False)
    metrics.bind(lambda: [mon])
    preds, labels = labeled_stream(8000, np.random.default_rng(3))
    pb = [preds[i:i + 1000] for i in range(0, len(preds), 1000)]
    lb = [[lab for lab in labels if p[0]["timestamp"] <= lab["timestamp"] - 0 < p[-1]["timestamp"] + 1] for p in pb]
    feed(metrics, mon, pb, lb)
    s = scrape(metrics)
    p50 = s[("stream_monitor_prediction_latency_seconds", (("model", "clf"), ("quantile", "0.5")))]
    p99 = s[("stream_monitor_prediction_latency_seconds", (("model", "clf"), ("quantile", "0.99")))]
    assert 0.01 < p50 < p99 < 0.1  # latency_ms ~ Gamma(4, 5 ms): a median near 18 ms, in seconds
    assert 0 < s[("stream_monitor_label_coverage_ratio", (("model", "clf"),))] <= 1
    assert 0 < s[("stream_monitor_label_lag_seconds", (("model", "clf"), ("quantile", "0.5")))] < 600
    assert s[("stream_monitor_join_pending", (("model", "clf"),))] == mon.models["clf"].join.pending


def test_per_feature_series_stop_at_the_configured_bound_and_the_rest_are_counted(caplog):
    """A fleet: 4 models whose per-feature drift series would exceed ``prometheus.max_feature_series``; the
    label sets first seen fit, later ones are counted (once each) and logged once; per-model series stay."""
    names = [f"m{i}" for i in range(4)]
    cfg = parse_config({"prometheus": {"max_feature_series": 30},
                        "models": {n: model_config(window={"size": 500}, reference={"size": 1000}) for n in names}})
    mon = Monitor(cfg)
    metrics = MonitorMetrics(CollectorRegistry(), process=False, max_feature_series=cfg.prometheus.max_feature_series)
    rng = np.random.default_rng(36)
    events = [e for n in names for e in make_events(3000, rng, model=n)]
    for _ in range(2):  # the same label sets twice: dropped ones are counted once
        mon = Monitor(cfg)
        feed(metrics, mon, [events[i:i + 1000] for i in range(0, len(events), 1000)])
    s = scrape(metrics)
    exported = {labels for name, labels in s if name == "stream_monitor_drift_statistic"}
    assert len(exported) == 30 == len({labels for name, labels in s if name == "stream_monitor_drift_threshold"})
    dropped = s[("stream_monitor_metric_series_dropped_total", (("metric", "drift_statistic"),))]
    assert dropped == len(metrics._dropped_keys) > 0
    assert len(exported) + dropped == len(metrics._feature_keys | metrics._dropped_keys) == 4 * len(
        {labels[1:] for labels in metrics._feature_keys | metrics._dropped_keys if labels[0] == "m0"})
    assert {dict(labels)["model"] for labels in exported} == {"m0"}  # first seen: the first model's
    assert all(s[("stream_monitor_windows_total", (("model", n),))] == 8 for n in names)  # per model: all
    assert sum("max_feature_series (30) reached" in r.message for r in caplog.records) == 1
