"""Delayed labels against a real broker: join, coverage, lag, metrics, estimation, concept drift, latency."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from stream_monitor.core.state import TaskId
from tests.kafka.helpers import Running, config, create_topic, read_all
from tests.streams import classifier_config, labeled_stream

pytestmark = pytest.mark.kafka


def produce_in_time_order(bootstrap, cfg, preds, labels):
    """Both topics, in event-time order, labels shuffled within a few minutes (out of order)."""

    rng = np.random.default_rng(0)
    jitter = rng.uniform(0, 300, len(labels))
    items = [(p["timestamp"], cfg.topics.predictions, p) for p in preds]
    items += [(lab["timestamp"] + j, cfg.topics.labels, lab) for lab, j in zip(labels, jitter)]
    items.sort(key=lambda x: x[0])
    return send_items(bootstrap, items)


def send_items(bootstrap, items):
    """Produce ``(time, topic, event)`` items in their order, keyed by the model; returns how many."""
    from confluent_kafka import Producer

    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for _, topic, ev in items:
        prod.produce(topic, key=b"clf", value=orjson.dumps(ev))
        prod.poll(0)
    assert prod.flush(30) == 0
    return len(items)


def setup(kafka_bootstrap, run_id, **model):
    cfg = config(run_id, {"clf": classifier_config(**model)})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.labels)
    return cfg


def stream(windows, seed, **kw):
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for i in range(windows):
        p, lab = labeled_stream(1200, rng, start=i * 1200, **{k: v(i) if callable(v) else v for k, v in kw.items()})
        preds += p
        labels += lab
    return preds, labels


def run(kafka_bootstrap, cfg, preds, labels):
    with Running(cfg, kafka_bootstrap) as r:
        n = produce_in_time_order(kafka_bootstrap, cfg, preds, labels)
        r.wait_consumed(n, timeout=120)
        time.sleep(1)
    reports = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.metrics, lambda ms: False,
                                                         timeout=5)]
    alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: False,
                                                        timeout=3)]
    return reports, alerts


def test_delayed_out_of_order_labels_coverage_lag_and_metrics_match_offline(kafka_bootstrap, run_id):
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 3600, "min_labels": 50}
    cfg = setup(kafka_bootstrap, run_id, performance=perf)
    preds, labels = stream(12, 51)
    reports, _ = run(kafka_bootstrap, cfg, preds, labels)
    perf_reports = [r for r in reports if r["type"] == "performance"]
    assert len(perf_reports) >= 5
    by_id = {p["event_id"]: p for p in preds}
    for r in perf_reports:
        in_win = [p for p in preds if r["start"] <= p["timestamp"] < r["end"]]
        pairs = [(by_id[lab["event_id"]], lab) for lab in labels if r["start"] <= by_id[lab["event_id"]]["timestamp"] < r["end"]]
        assert r["predictions"] == len(in_win)
        assert r["labeled"] == len(pairs)
        assert r["coverage"] == pytest.approx(len(pairs) / len(in_win), abs=1e-6)
        lags = [lab["timestamp"] - p["timestamp"] for p, lab in pairs]
        assert r["lag_p50_s"] == pytest.approx(np.percentile(lags, 50), abs=1e-3)
        assert r["lag_p95_s"] == pytest.approx(np.percentile(lags, 95), abs=1e-3)
        y = np.array([lab["label"] == 1 for _, lab in pairs])
        yhat = np.array([p["prediction"] == "1" for p, _ in pairs])
        tp, fp, fn = np.sum(y & yhat), np.sum(~y & yhat), np.sum(y & ~yhat)
        assert r["metrics"]["accuracy"] == pytest.approx(np.mean(y == yhat), abs=1e-6)
        assert r["metrics"]["precision"] == pytest.approx(tp / (tp + fp), abs=1e-6)
        assert r["metrics"]["recall"] == pytest.approx(tp / (tp + fn), abs=1e-6)
        assert r["metrics"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
        s = np.array([p["score"] for p, _ in pairs])
        pc = np.clip(np.where(y, s, 1 - s), 1e-15, 1 - 1e-15)
        assert r["metrics"]["log_loss"] == pytest.approx(-np.mean(np.log(pc)), abs=1e-6)
        assert 0.85 < r["coverage"] < 0.95  # 10 % of the labels never arrive


def test_estimated_accuracy_tracks_realized_on_a_calibrated_stream(kafka_bootstrap, run_id):
    cfg = setup(kafka_bootstrap, run_id)
    preds, labels = stream(10, 52)
    reports, _ = run(kafka_bootstrap, cfg, preds, labels)
    perf = [r for r in reports if r["type"] == "performance"]
    assert len(perf) >= 4
    diffs = [r["estimated"]["accuracy"] - r["metrics"]["accuracy"] for r in perf]
    assert all(abs(d) < 0.06 for d in diffs), diffs  # per window of ~1,080 labels
    assert abs(np.mean(diffs)) < 0.02


def test_concept_flip_raises_performance_and_concept_drift_alerts_and_no_data_drift(kafka_bootstrap, run_id):
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800, "min_labels": 50,
            "thresholds": {"accuracy": {"min": 0.6}}}
    cfg = setup(kafka_bootstrap, run_id, performance=perf, concept_drift=[{"type": "adwin"}, {"type": "hddm_a"}])
    preds, labels = stream(16, 53, flip=lambda i: i >= 8)
    _, alerts = run(kafka_bootstrap, cfg, preds, labels)
    firing = [a for a in alerts if a["status"] == "firing"]
    assert {a["kind"] for a in firing} == {"performance", "concept_drift"}
    perf_alert = next(a for a in firing if a["kind"] == "performance")
    assert perf_alert["statistic"] == "accuracy" and perf_alert["value"] < 0.6
    assert perf_alert["severity"] == "critical"
    concept = next(a for a in firing if a["kind"] == "concept_drift")
    assert {f["statistic"] for f in concept["features"]} <= {"adwin", "hddm_a"}


def test_latency_regression_raises_the_latency_alert_and_a_stable_stream_none(kafka_bootstrap, run_id):
    cfg = setup(kafka_bootstrap, run_id, latency={"sla_p99_ms": 100, "windows": 3})
    preds, labels = stream(10, 54, latency_ms=lambda i: 20 if i < 5 else 60)
    _, alerts = run(kafka_bootstrap, cfg, preds, labels)
    assert [(a["kind"], a["statistic"], a["status"]) for a in alerts] == [("latency", "p99_ms", "firing")]
    assert alerts[0]["value"] > 100 and alerts[0]["threshold"] == 100

    cfg = setup(kafka_bootstrap, run_id + "s", latency={"sla_p99_ms": 100, "windows": 3})
    preds, labels = stream(10, 55)
    _, alerts = run(kafka_bootstrap, cfg, preds, labels)
    assert alerts == []


def test_labels_join_predictions_read_before_a_restart(kafka_bootstrap, run_id):
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800, "min_labels": 50}
    cfg = setup(kafka_bootstrap, run_id, performance=perf)
    preds, labels = stream(12, 56)
    early = [p for p in preds if p["timestamp"] < preds[0]["timestamp"] + 3000]  # ~5 windows of predictions
    with Running(cfg, kafka_bootstrap) as r:  # the first process sees only these predictions, no labels
        n = produce_in_time_order(kafka_bootstrap, cfg, early, [])
        r.wait_consumed(n)
    later = preds[len(early):]
    with Running(cfg, kafka_bootstrap) as r:  # the second one gets every label and the later predictions
        n = produce_in_time_order(kafka_bootstrap, cfg, later, labels)
        r.wait_consumed(n, timeout=120)
        time.sleep(1)
    assert r.service.stats.restored_join_entries == len(early)  # from the join changelog
    reports = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.metrics, lambda ms: False,
                                                         timeout=5)]
    before = [r for r in reports if r["type"] == "performance" and r["end"] <= early[-1]["timestamp"]]
    assert before, "no matured window from before the restart"
    for r in before:
        in_win = [p for p in preds if r["start"] <= p["timestamp"] < r["end"]]
        assert r["predictions"] == len(in_win)  # the open windows' sums were restored too
        assert 0.85 < r["coverage"] < 0.95  # labels joined predictions read by the previous process


def test_labels_that_arrive_before_their_predictions_survive_a_restart(kafka_bootstrap, run_id):
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800, "min_labels": 50}
    cfg = setup(kafka_bootstrap, run_id, performance=perf)
    preds, labels = stream(8, 57)
    early_ids = {p["event_id"] for p in preds[:2400]}
    early_labels = [lab for lab in labels if lab["event_id"] in early_ids]
    with Running(cfg, kafka_bootstrap) as r:  # the first process sees labels whose predictions come later
        n = produce_in_time_order(kafka_bootstrap, cfg, [], early_labels)
        r.wait_consumed(n)
    rest = [lab for lab in labels if lab["event_id"] not in early_ids]
    with Running(cfg, kafka_bootstrap) as r:
        n = produce_in_time_order(kafka_bootstrap, cfg, preds, rest)
        r.wait_consumed(n, timeout=120)
        time.sleep(1)
    assert r.service.stats.restored_join_entries == len(early_labels)  # the waiting labels were checkpointed
    reports = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.metrics, lambda ms: False,
                                                         timeout=5)]
    first = [r for r in reports if r["type"] == "performance" and r["end"] <= preds[2399]["timestamp"]]
    assert first, "no matured window for the early predictions"
    for rep in first:
        in_win = {p["event_id"] for p in preds if rep["start"] <= p["timestamp"] < rep["end"]}
        assert rep["labeled"] == sum(lab["event_id"] in in_win for lab in labels)  # early labels joined too


DAY = 86400.0


def test_labels_thirty_days_late_on_a_sampled_join_survive_a_restart(kafka_bootstrap, run_id):
    """Predictions over 30 days, each labeled 30 days later, join.sample_rate 0.1; the monitor restarts
    midway through the labels. The window's realized accuracy (from the sample) holds the full join's truth
    within its interval, every sampled prediction is labeled, and the restart loses no pending entry."""
    from stream_monitor.core.keys import event_keys, key_fraction

    span = 30 * DAY
    t0 = (time.time() // span - 3) * span  # a window boundary 60-90 days ago
    perf = {"task": "binary", "positive_label": "1", "window_s": span, "maturity_s": span + 3600,
            "min_labels": 50}
    cfg = setup(kafka_bootstrap, run_id, performance=perf, window={"by": "count", "size": 10_000},
                join={"sample_rate": 0.1, "ttl_s": 35 * DAY,
                      # the consumer may read the predictions days (of event time) ahead of the labels: the
                      # window must wait for the label stream, not report after the default one-day stall
                      "label_stall_s": 40 * DAY})
    rng = np.random.default_rng(58)
    n = int(61.2 * DAY / 100)  # one prediction every 100 s for 61.2 days: the window's 30 days and the next
    t = t0 + np.arange(n) * 100.0
    score = 1 / (1 + np.exp(-2.0 * rng.normal(size=n)))
    outcome = rng.random(n) < score
    preds = [{"event_id": f"loan-{i}", "model": "clf", "model_version": "v1", "timestamp": float(t[i]),
              "features": {"x": float(rng.normal()), "z": 0.0}, "prediction": "1" if score[i] >= 0.5 else "0",
              "score": float(score[i])} for i in range(n)]
    lag = span + rng.uniform(0, 3600, n)
    labeled = np.flatnonzero(t + lag <= t[-1])  # outcomes known by the end of the stream
    labels = [{"event_id": f"loan-{i}", "model": "clf", "label": int(outcome[i]), "timestamp": float(t[i] + lag[i])}
              for i in labeled]
    items = sorted([(p["timestamp"], cfg.topics.predictions, p) for p in preds] +
                   [(lab["timestamp"], cfg.topics.labels, lab) for lab in labels], key=lambda x: x[0])
    cut = t0 + 45 * DAY  # halfway through the labels of the first window
    first = [it for it in items if it[0] < cut]
    sampled = key_fraction(event_keys([p["event_id"] for p in preds])) < 0.1
    waiting = int(sampled[t < cut].sum()) - int(sampled[labeled[t[labeled] + lag[labeled] < cut]].sum())

    with Running(cfg, kafka_bootstrap) as r:
        r.wait_consumed(send_items(kafka_bootstrap, first), timeout=120)
    with Running(cfg, kafka_bootstrap) as r:
        r.wait_consumed(send_items(kafka_bootstrap, items[len(first):]), timeout=120)
        time.sleep(1)
        task = r.service.tasks[TaskId(0)].models["clf"].join
        sampled_out = task.counters.sampled_out_labels
    assert r.service.stats.restored_join_entries == waiting > 1000  # every pending entry came back
    assert sampled_out > 0  # labels outside the sample were dropped without a lookup
    reports = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.metrics, lambda ms: False,
                                                         timeout=5)]
    (rep,) = [r for r in reports if r["type"] == "performance" and r["start"] == t0]
    in_window = t < t0 + span
    assert rep["sample_rate"] == 0.1
    assert rep["predictions"] == int((sampled & in_window).sum())  # coverage is against the sample
    assert rep["coverage"] >= 0.99
    truth = float(np.mean((score[in_window] >= 0.5) == outcome[in_window]))  # the full join, every event
    lo, hi = rep["interval"]["accuracy"]
    assert lo <= truth <= hi, (truth, rep["metrics"]["accuracy"], lo, hi)
    assert hi - lo < 0.06  # ~2,600 sampled labels


def test_labels_carrying_their_prediction_are_reported_without_prediction_events(kafka_bootstrap, run_id):
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800, "min_labels": 50}
    cfg = setup(kafka_bootstrap, run_id, performance=perf)
    preds, labels = stream(8, 59)
    by_id = {p["event_id"]: p for p in preds}
    carried = [{**lab, "prediction": by_id[lab["event_id"]]["prediction"], "score": by_id[lab["event_id"]]["score"],
                "prediction_timestamp": by_id[lab["event_id"]]["timestamp"]} for lab in labels]
    reports, _ = run(kafka_bootstrap, cfg, [], carried)  # the labels topic only
    perf_reports = [r for r in reports if r["type"] == "performance"]
    assert len(perf_reports) >= 4
    for r in perf_reports:
        pairs = [lab for lab in carried if r["start"] <= lab["prediction_timestamp"] < r["end"]]
        assert r["predictions"] == r["labeled"] == len(pairs) and r["coverage"] == 1.0
        truth = np.mean([(lab["label"] == 1) == (lab["prediction"] == "1") for lab in pairs])
        assert r["metrics"]["accuracy"] == pytest.approx(truth, abs=1e-6)
