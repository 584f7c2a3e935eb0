"""Label join, performance windows, estimation, concept drift, latency."""

import itertools

import numpy as np
import pytest

from stream_monitor.config import DetectorConfig, JoinConfig, PerformanceConfig, parse_config
from stream_monitor.core.concept import ConceptDriftDetectors
from stream_monitor.core.keys import event_keys, key_fraction
from stream_monitor.core.labels import LabelJoin, PerformanceTracker, roc_auc
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.sketches import LatencySketch
from tests.streams import classifier_config, labeled_stream


def pred(eid, t, p="1", s=0.9):
    return {"event_id": eid, "model": "m", "model_version": "v", "timestamp": t, "features": {}, "prediction": p,
            "score": s}


def label(eid, t, y=1):
    return {"event_id": eid, "model": "m", "label": y, "timestamp": t}


def test_join_either_order_and_duplicates():
    j = LabelJoin(JoinConfig())
    assert j.add_predictions([pred("a", 1), pred("b", 2)]) == []
    early = j.add_labels([label("c", 3)])  # label before its prediction
    assert early == []
    pairs = j.add_labels([label("a", 10), label("a", 11)])  # duplicate label
    pairs += j.add_predictions([pred("c", 2.5), pred("b", 4)])  # c joins, b is a duplicate prediction
    assert sorted(p.event_id for p in pairs) == ["a", "c"]
    assert j.add_labels([label("c", 12)]) == []  # duplicate after the join
    assert (j.counters.duplicate_labels, j.counters.duplicate_predictions) == (2, 1)
    assert j.pending == 1  # b waits


def test_join_ttl_and_size_bounds():
    j = LabelJoin(JoinConfig(ttl_s=100, max_pending=3, label_stall_s=0))
    j.add_predictions([pred(str(i), float(i)) for i in range(5)])
    assert j.pending == 3 and j.counters.evicted == 2
    j.add_predictions([pred("late", 500.0)])  # no labels and no stall allowed: everything before 400 expires
    assert j.pending == 1 and j.counters.expired_predictions == 3


def test_predictions_wait_for_the_label_stream_not_for_their_own():
    # the consumer reads predictions far ahead (event time) of the labels: pending predictions must survive
    # until the label stream itself is ttl_s past them
    j = LabelJoin(JoinConfig(ttl_s=100, label_stall_s=10_000))
    j.add_predictions([pred("a", 10.0)])
    j.add_labels([label("x", 50.0)])
    j.add_predictions([pred(str(i), 1000.0 + i) for i in range(5)])  # predictions 1,000 s ahead
    assert j.counters.expired_predictions == 0
    assert len(j.add_labels([label("a", 60.0)])) == 1  # its label, read later, still joins
    j.add_labels([label("y", 1050.0)])  # the label stream is not yet ttl_s past 1,000
    assert j.counters.expired_predictions == 0
    j.add_labels([label("z", 1200.0)])  # now it is: 1,000..1,004 expire
    assert j.counters.expired_predictions == 5


def brute_auc(t, s):
    pos, neg = s[t], s[~t]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def tracked(task, preds, labels, **cfg):
    """One window's report from the tracker, fed through the join."""
    tr = PerformanceTracker("m", PerformanceConfig(task=task, window_s=1e6, min_labels=1, **cfg))
    j = LabelJoin(JoinConfig())
    tr.add_predictions(preds)
    tr.add_pairs(j.add_predictions(preds))
    tr.add_pairs(j.add_labels(labels))
    (rep,) = tr.mature(2e6)
    return rep


def test_classification_metrics_by_hand():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.4
    s = np.round(np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1), 2)  # rounded: ties
    p = s >= 0.5
    preds = [pred(str(i), float(i), "1" if p[i] else "0", float(s[i])) for i in range(300)]
    rep = tracked("binary", preds, [label(str(i), 500.0, int(y[i])) for i in range(300)], positive_label="1")
    m = rep.metrics
    tp, fp, fn = np.sum(y & p), np.sum(~y & p), np.sum(y & ~p)
    assert m["accuracy"] == pytest.approx(np.mean(y == p), abs=1e-6)
    assert m["precision"] == pytest.approx(tp / (tp + fp), abs=1e-6)
    assert m["recall"] == pytest.approx(tp / (tp + fn), abs=1e-6)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(brute_auc(y, s), abs=1e-6)
    pc = np.clip(np.where(y, s, 1 - s), 1e-15, 1 - 1e-15)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(pc)), abs=1e-6)
    assert roc_auc(np.array([True, True]), np.array([0.1, 0.2])) is None  # one class only


def test_regression_metrics():
    preds = [pred(str(i), float(i), v, None) for i, v in enumerate([1.5, 2.0, 1.0])]
    rep = tracked("regression", preds, [label(str(i), 10.0, y) for i, y in enumerate([1.0, 2.0, 3.0])])
    assert rep.metrics["mae"] == pytest.approx(2.5 / 3)
    assert rep.metrics["rmse"] == pytest.approx(np.sqrt((0.25 + 4) / 3))


def test_estimate_matches_realized_on_a_calibrated_stream():
    rng = np.random.default_rng(2)
    s = rng.beta(2, 2, 20000)
    y = rng.random(20000) < s
    preds = [pred(str(i), float(i), "1" if s[i] >= 0.5 else "0", float(s[i])) for i in range(20000)]
    rep = tracked("binary", preds, [label(str(i), 30000.0, int(y[i])) for i in range(20000)], positive_label="1")
    assert rep.estimated["accuracy"] == pytest.approx(rep.metrics["accuracy"], abs=0.015)
    assert rep.estimated["f1"] == pytest.approx(rep.metrics["f1"], abs=0.015)


def test_performance_window_reports_coverage_lag_and_waits_for_maturity():
    cfg = PerformanceConfig(task="binary", positive_label="1", window_s=100, maturity_s=50, min_labels=1)
    tr = PerformanceTracker("m", cfg)
    j = LabelJoin(JoinConfig())
    preds = [pred(str(i), float(i), "1" if i % 2 else "0", 0.8 if i % 2 else 0.3) for i in range(100)]
    tr.add_predictions(preds)
    j.add_predictions(preds)
    tr.add_pairs(j.add_labels([label(str(i), i + 10.0 + i % 5, y=i % 2) for i in range(0, 100, 2)]))
    assert tr.mature(149.0) == []  # end 100 + maturity 50
    (rep,) = tr.mature(150.0)
    assert (rep.predictions, rep.labeled, rep.coverage) == (100, 50, 0.5)
    assert rep.lag_p50_s == pytest.approx(np.percentile([10 + i % 5 for i in range(0, 100, 2)], 50))
    assert rep.metrics["accuracy"] == 1.0
    tr.add_pairs(j.add_labels([label("1", 300.0, 1)]))
    assert tr.late_labels == 1


def test_concept_drift_detectors_fire_on_a_flip_and_restore():
    dets = ConceptDriftDetectors((DetectorConfig(type="adwin"), DetectorConfig(type="ddm"),
                                  DetectorConfig(type="hddm_a"), DetectorConfig(type="page_hinkley")), "binary")
    rng = np.random.default_rng(3)
    j = LabelJoin(JoinConfig())
    preds, labels = labeled_stream(4000, rng, missing=0.0, model="m")
    flip_p, flip_l = labeled_stream(4000, rng, start=4000, flip=True, missing=0.0, model="m")
    j.add_predictions(preds + flip_p)
    dets.update(j.add_labels(labels))
    assert all(d == 0 for _, d, _ in dets.take())
    copy = ConceptDriftDetectors(dets.cfgs, "binary").restore(dets.snapshot())
    dets.update(j.add_labels(flip_l))
    drifted = {name for name, d, _ in dets.take() if d}
    assert {"adwin", "ddm", "hddm_a"} <= drifted
    assert copy.seen == 4000


def test_latency_sketch_quantiles_within_one_percent():
    rng = np.random.default_rng(4)
    x = rng.lognormal(3, 1, 50000)
    counts = LatencySketch.counts(x)
    for q in (0.5, 0.95, 0.99):
        assert LatencySketch.quantile(counts, q) == pytest.approx(np.quantile(x, q), rel=0.02)
    # several at once from one cumulative sum: each the bucket's representative value, exactly; none without values
    g, total = LatencySketch.GAMMA, int(counts.sum())
    buckets = [int(np.searchsorted(np.cumsum(counts), q * (total - 1) + 1)) for q in (0.5, 0.95, 0.99)]
    assert LatencySketch.quantiles(counts, (0.5, 0.95, 0.99)) == [2 * g ** (i + LatencySketch.OFFSET) / (g + 1)
                                                                 for i in buckets]
    assert np.isnan(LatencySketch.quantiles(LatencySketch.empty(), (0.5, 0.99))).all()


def run_labeled(cfg_model, pred_batches, label_batches):
    mon = Monitor(parse_config({"models": {"clf": cfg_model}}))
    alerts, reports = [], []
    for p, lab in zip(pred_batches, label_batches):
        out = mon.process(p)
        alerts += out.alerts
        reports += out.reports
        out = mon.process_labels(lab)
        alerts += out.alerts
        reports += out.reports
    return mon, alerts, reports


def test_concept_flip_gives_performance_and_concept_alerts_not_data_drift():
    rng = np.random.default_rng(5)
    model = classifier_config(performance={"task": "binary", "positive_label": "1", "window_s": 600,
                                           "maturity_s": 600, "min_labels": 50,
                                           "thresholds": {"accuracy": {"min": 0.6}}},
                              concept_drift=[{"type": "adwin"}])
    pb, lb = [], []
    for i in range(16):
        p, lab = labeled_stream(1200, rng, start=i * 1200, flip=i >= 8)
        pb.append(p)
        lb.append(lab)
    _, alerts, reports = run_labeled(model, pb, lb)
    kinds = {a.kind for a in alerts if a.status == "firing"}
    assert kinds == {"performance", "concept_drift"}
    perf = [r for r in reports if r["type"] == "performance"]
    assert perf and all(0.85 < r["coverage"] < 0.95 for r in perf)  # 10 % of labels never come


def test_latency_regression_alerts_after_consecutive_windows():
    rng = np.random.default_rng(6)
    model = classifier_config(latency={"sla_p99_ms": 100, "windows": 3})
    pb, lb = [], []
    for i in range(12):
        p, lab = labeled_stream(1200, rng, start=i * 1200, latency_ms=20 if i < 6 else 60)
        pb.append(p)
        lb.append(lab)
    _, alerts, reports = run_labeled(model, pb, lb)
    assert [(a.kind, a.statistic, a.status) for a in alerts] == [("latency", "p99_ms", "firing")]
    first_bad = [r for r in reports if r["type"] == "drift" and r["latency_ms"]["p99"] > 100]
    assert len(first_bad) >= 3
    _, alerts, _ = run_labeled(model, pb[:6], lb[:6])
    assert alerts == []


def test_join_changelog_restores_pending_entries_after_a_restart():
    j = LabelJoin(JoinConfig(ttl_s=1000))
    j.add_predictions([pred("a", 1), pred("b", 2), pred("c", 3)])
    j.add_labels([label("a", 10), label("z", 11)])  # a joins; z waits for its prediction
    changes = j.take_changes()
    assert sorted(changes) == ["j/s/0", "l/s/0", "p/s/0"]  # one segment record per store, not one per entry
    assert (changes["p/s/0"]["n"], changes["l/s/0"]["n"], changes["j/s/0"]["n"]) == (2, 1, 1)  # b, c; z; a
    latest = {k: v for k, v in changes.items() if v is not None}  # what compaction keeps
    again = LabelJoin(JoinConfig(ttl_s=1000)).restore(j.snapshot(), latest)
    assert again.pending == 3 and again.prediction_watermark == 3 and again.label_watermark == 11
    assert again.add_labels([label("a", 12)]) == [] and again.counters.duplicate_labels == 1  # joined ids survive
    pairs = again.add_labels([label("b", 20)]) + again.add_predictions([pred("z", 5)])
    assert [(p.event_id, p.prediction_time, p.label_time, p.prediction, p.score, p.label) for p in pairs] == [
        ("b", 2.0, 20.0, "1", 0.9, 1), ("z", 5, 11.0, "1", 0.9, 1)]
    changes = again.take_changes()  # the open segments are rewritten with what is left in them
    assert changes["l/s/0"] is None and changes["p/s/0"]["n"] == 1 and changes["j/s/0"]["n"] == 3


def test_join_restore_refuses_a_changelog_that_does_not_match_its_snapshot():
    j = LabelJoin(JoinConfig())
    j.add_predictions([pred("a", 1), pred("b", 2)])
    latest = {k: v for k, v in j.take_changes().items() if v is not None}
    del latest["p/s/0"]  # a lost segment: the restore must say so, not run on a partial store
    with pytest.raises(ValueError, match="live entries"):
        LabelJoin(JoinConfig()).restore(j.snapshot(), latest)
    for bad in ({**latest, "p/s/0": {"v": 1, "n": 2, "key": "AAAA"}}, {**latest, "p/x": {}},
                {**latest, "p/s/0": {"v": 9}}):
        with pytest.raises(ValueError, match="join"):
            LabelJoin(JoinConfig()).restore(j.snapshot(), bad)


def test_performance_tracker_restores_open_windows():
    cfg = PerformanceConfig(task="binary", positive_label="1", window_s=100, maturity_s=0, min_labels=1)
    tr = PerformanceTracker("m", cfg)
    j = LabelJoin(JoinConfig())
    preds = [pred(str(i), float(i)) for i in range(50)]
    tr.add_predictions(preds)
    j.add_predictions(preds)
    tr.add_pairs(j.add_labels([label(str(i), 60.0) for i in range(10)]))
    again = PerformanceTracker("m", cfg).restore(tr.snapshot(), {w: make() for w, _, make in tr.pieces()})
    more = j.add_labels([label(str(i), 70.0) for i in range(10, 20)])
    again.add_pairs(more)
    tr.add_pairs(more)
    (rep,) = again.mature(100.0)
    assert (rep.predictions, rep.labeled, rep.coverage) == (50, 20, 0.4)
    assert rep == tr.mature(100.0)[0]  # pair samples too: ROC AUC and lag percentiles span the restart


def test_estimate_is_calibrated_on_reference_labels_when_scores_are_not():
    # an overconfident model: scores sigmoid(3x), truth P(y=1) = sigmoid(x). Raw-score CBPE is far off;
    # calibrated on the first labeled pairs it tracks the expected accuracy of every window
    rng = np.random.default_rng(7)
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 600, "min_labels": 50,
            "calibration_pairs": 5000}
    mon = Monitor(parse_config({"models": {"clf": classifier_config(performance=perf)}}))
    expected_acc: dict[int, list[float]] = {}
    errors = []
    t0 = 1.7e9
    for i in range(18):
        n = 1200
        x = rng.normal(0.0, 1.0, n) + (0.4 if i >= 8 else 0.0)  # inputs move later: accuracy changes
        truth = 1 / (1 + np.exp(-x))
        score = 1 / (1 + np.exp(-3 * x))
        y = rng.random(n) < truth
        preds, labels = [], []
        for j in range(n):
            t = t0 + (i * n + j) * 0.5
            eid = f"e{i}-{j}"
            preds.append({"event_id": eid, "model": "clf", "model_version": "v1", "timestamp": t,
                          "features": {"x": float(x[j]), "z": 0.0}, "prediction": "1" if score[j] >= 0.5 else "0",
                          "score": float(score[j])})
            labels.append({"event_id": eid, "model": "clf", "label": int(y[j]), "timestamp": t + 30})
            w = int(t // 600)
            p_correct = truth[j] if score[j] >= 0.5 else 1 - truth[j]
            expected_acc.setdefault(w, []).append(float(p_correct))
        for r in mon.process_batch(preds, labels).reports:
            if r["type"] == "performance" and r["estimated"] and int(r["start"] // 600) in expected_acc:
                truth_acc = float(np.mean(expected_acc[int(r["start"] // 600)]))
                if r["start"] >= t0 + 3000:  # after the calibration pairs
                    errors.append(abs(r["estimated"]["accuracy"] - truth_acc))
    raw_acc = float(np.mean(np.maximum(score, 1 - score)))  # what raw scores claim for the last window
    raw_error = abs(raw_acc - float(np.mean(expected_acc[max(expected_acc)])))
    assert len(errors) >= 10
    assert float(np.mean(errors)) <= 0.01, errors
    assert raw_error > 0.08  # uncalibrated, the estimate would be useless


def test_concept_drift_pages_when_the_detector_fires_citing_the_detecting_pair():
    # maturity of 70,000 s: performance windows report a day later, the concept-drift page must not wait for it
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 70000, "min_labels": 50}
    mon = Monitor(parse_config({"models": {"clf": classifier_config(
        performance=perf, concept_drift=[{"type": "adwin"}, {"type": "hddm_a"}])}}))
    rng = np.random.default_rng(8)
    flip_at = 1.7e9 + 8 * 1200 * 0.5  # labeled_stream starts at 1.7e9, 0.5 s apart
    first = None
    for i in range(14):
        p, lab = labeled_stream(1200, rng, start=i * 1200, flip=i >= 8, lag_mean_s=60, missing=0.0)
        for a in mon.process_batch(p, lab).alerts:
            if a.kind == "concept_drift" and a.status == "firing" and first is None:
                first = (a, max(x["timestamp"] for x in lab))
    assert first is not None, "the flip must be detected"
    alert, label_clock = first
    assert alert.statistic in ("adwin", "hddm_a") and alert.severity == "critical"
    assert flip_at <= alert.window["start"] == alert.details["detected_at_prediction_time"] < flip_at + 1800
    assert label_clock < flip_at + 3600  # paged within an hour of labels, not at maturity (70,000 s)


def test_concept_drift_warnings_are_reported_not_paged():
    perf = {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 0, "min_labels": 50}
    mon = Monitor(parse_config({"models": {"clf": classifier_config(
        performance=perf, concept_drift=[{"type": "hddm_a", "params": {"drift_confidence": 1e-12}}])}}))
    detectors = mon.models["clf"].concept
    taken = []
    original = detectors.take
    detectors.take = lambda: taken.extend(original()) or taken[-1:]  # record what each window saw
    rng = np.random.default_rng(9)
    alerts = []
    for i in range(30):  # stationary: HDDM_A warns now and then on noise; with a tiny drift confidence it never drifts
        p, lab = labeled_stream(1200, rng, start=i * 1200, lag_mean_s=30, missing=0.0)
        alerts += mon.process_batch(p, lab).alerts
    assert sum(w for _, _, w in taken) > 0 and sum(d for _, d, _ in taken) == 0, taken
    assert [a for a in alerts if a.kind == "concept_drift"] == []


def test_labels_carrying_their_prediction_need_no_prediction_event():
    # labels land 900 s after their predictions: a window counts them when maturity_s covers that lag
    cfg = parse_config({"models": {"clf": classifier_config(
        performance={"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800,
                     "min_labels": 1})}})
    mon = Monitor(cfg)
    t0 = 1_700_000_400.0  # a window boundary
    labels = [{"event_id": f"e{i}", "model": "clf", "label": i % 2, "timestamp": t0 + 900 + i,
               "prediction": "1" if i % 3 else "0", "score": 0.8 if i % 3 else 0.3, "prediction_timestamp": t0 + i}
              for i in range(3000)]
    out = mon.process_labels(labels)
    mm = mon.models["clf"]
    assert mm.join.pending == 0 and mm.join.counters.carried == 3000  # nothing waits for a prediction event
    (rep,) = [r for r in out.reports if r["type"] == "performance"]  # the first window matured
    truth = np.mean([(e["label"] == 1) == (e["prediction"] == "1") for e in labels[:600]])
    assert (rep["start"], rep["predictions"], rep["labeled"], rep["coverage"]) == (t0, 600, 600, 1.0)
    assert rep["metrics"]["accuracy"] == pytest.approx(truth) and rep["lag_p50_s"] == 900
    # a duplicate of a carried label is caught like any joined label
    mon.process_labels(labels[:5])
    assert mm.join.counters.duplicate_labels == 5


def test_a_sampled_out_label_never_creates_a_pending_entry():
    j = LabelJoin(JoinConfig(sample_rate=0.1))
    ids = [f"id-{i}" for i in range(5000)]
    keys = event_keys(ids)
    inside = key_fraction(keys) < 0.1
    labs = [label(e, 10.0) for e in ids]
    events, k = j.sample(labs, keys, "l")
    assert j.add_labels(events, k) == []
    assert j.pending == int(inside.sum()) and j.counters.sampled_out_labels == int((~inside).sum())
    assert 400 < j.pending < 600
    # every instance agrees: the predictions kept are the same ids, and they join their early labels
    preds = [pred(e, 1.0) for e in ids]
    events, k = j.sample(preds, keys, "p")
    assert sorted(p.event_id for p in j.add_predictions(events, k)) == sorted(np.array(ids)[inside].tolist())
    assert j.pending == 0


def test_a_version_1_join_checkpoint_is_read_and_rewritten_as_segments():
    meta = {"v": 1, "prediction_watermark": 3, "label_watermark": 11, "pending": 3, "joined_ids": 1,
            "counters": {"joined": 1}}
    entries = {"p/b": {"t": 2, "prediction": "1", "score": 0.9, "n": 1},
               "p/c": {"t": 3, "prediction": "1", "score": 0.9, "n": 2},
               "j/a": {"n": 3}, "l/z": {"t": 11, "label": 1, "n": 4}}
    j = LabelJoin(JoinConfig(ttl_s=1000)).restore(meta, entries)
    assert j.pending == 3 and j.add_labels([label("a", 12)]) == []
    changes = j.take_changes()
    assert all(changes[k] is None for k in entries)  # the per-entry records go
    assert {k for k, v in changes.items() if v is not None} == {"p/s/0", "l/s/0", "j/s/0"}
    assert [p.event_id for p in j.add_labels([label("b", 20)])] == ["b"]
