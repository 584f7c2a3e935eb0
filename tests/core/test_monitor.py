"""Drift scenarios on the pure core, seeded: each drift is alerted on the right feature only."""

import numpy as np
import orjson
import pytest

from stream_monitor.config import ConfigError, parse_config
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.state import RecordKey
from tests.streams import model_config, make_events


def run(cfg_model, batches, **alerts):
    cfg = parse_config({"models": {"m": cfg_model}, "alerts": alerts or {}})
    mon = Monitor(cfg)
    out = []
    for evs in batches:
        a = mon.process(evs).alerts
        out.extend(a)
    return mon, out


def stream(rng, n_ref=5000, n_after=6000, batch=1000, **drift):
    start = 0
    for n, kw in ((n_ref, {}), (n_after, drift)):
        for i in range(0, n, batch):
            yield make_events(batch, rng, start=start, **kw)
            start += batch


def firing(alerts):
    """(feature, statistic) of every condition in the firing alerts."""
    return {(m["feature"], m["statistic"]) for a in alerts if a.status == "firing" for m in a.features}


def test_mean_shift_of_half_sigma_alerts_on_that_feature_only():
    _, alerts = run(model_config(), stream(np.random.default_rng(11), a_mean=0.5))
    assert firing(alerts) == {("a", "psi"), ("a", "rank_sum")}  # a location shift: the rank-sum test sees it too
    a = next(x for x in alerts if x.feature == "a")
    assert a.kind == "data_drift" and a.model == "m" and a.reference_id.startswith("warmup:")
    assert a.details["ks"]["p_value"] < 1e-6 and a.details["wasserstein"]["value"] > 0.3


def test_variance_change_alerts_on_that_feature_only():
    _, alerts = run(model_config(), stream(np.random.default_rng(12), b_sd=1.6))
    assert firing(alerts) == {("b", "psi")}


def test_categorical_frequency_shift_alerts_on_that_feature_only():
    _, alerts = run(model_config(), stream(np.random.default_rng(13), k_p=(0.15, 0.25, 0.25, 0.35)))
    assert firing(alerts) == {("k", "chi2"), ("k", "category_shift")}


def test_new_category_alerts_on_that_feature_only():
    _, alerts = run(model_config(), stream(np.random.default_rng(14), k_cats=("x", "y", "z", "unseen"),
                                           k_p=(0.4, 0.3, 0.2, 0.1)))
    assert ("k", "new_category_rate") in firing(alerts)
    assert {f for f, _ in firing(alerts)} == {"k"}
    m = next(m for x in alerts for m in x.features if m["statistic"] == "new_category_rate")
    assert m["details"]["new_categories"] == ["unseen"]
    assert len([x for x in alerts if x.status == "firing"]) == 1  # chi2 and new categories: one incident


def test_missing_rate_is_a_data_quality_alert():
    _, alerts = run(model_config(), stream(np.random.default_rng(15), missing_c=0.3))
    assert firing(alerts) == {("c", "missing_rate")}
    assert {a.kind for a in alerts} == {"data_quality"}


def test_long_stable_stream_raises_nothing():
    mon, alerts = run(model_config(), stream(np.random.default_rng(16), n_after=100_000, batch=2000))
    assert alerts == []
    assert mon.counters.windows == 101  # 106,000 events: 6,000 in warm-up batches, 5,000 of them warm-up


def test_alert_resolves_when_the_feature_is_back():
    rng = np.random.default_rng(17)
    batches = list(stream(rng, n_after=4000, a_mean=1.0))
    batches += [make_events(1000, rng, start=20_000 + i * 1000) for i in range(4)]
    _, alerts = run(model_config(), batches)
    statuses = [(a.status, a.feature) for a in alerts]
    assert statuses == [("firing", "a"), ("resolved", "a")]
    assert alerts[0].alert_id == alerts[1].alert_id


def test_hysteresis_needs_consecutive_windows():
    rng = np.random.default_rng(18)
    batches = [make_events(1000, rng, start=i * 1000) for i in range(5)]
    batches.append(make_events(1000, rng, start=5000, a_mean=1.0))  # one bad window
    batches += [make_events(1000, rng, start=6000 + i * 1000) for i in range(3)]
    _, alerts = run(model_config(), batches, consecutive=2)
    assert alerts == []
    _, alerts = run(model_config(), batches, consecutive=1)
    assert firing(alerts) == {("a", "psi"), ("a", "rank_sum")}


def test_sampling_rate_is_cited_in_alerts():
    cfg = model_config(sample_rate=0.5, window={"size": 500}, reference={"size": 2500})
    _, alerts = run(cfg, stream(np.random.default_rng(19), n_after=8000, a_mean=0.8))
    assert alerts and all(a.sample_rate == 0.5 for a in alerts)
    assert "sampled at 50%" in alerts[0].message


T0 = 1_699_920_000.0  # a midnight (UTC)


def seasonal_stream(rng, days, per_hour=300):
    """Feature a follows the hour of day (amplitude 1.5 sigma); nothing else changes."""
    for h in range(days * 24):
        mean = 1.5 * np.sin(2 * np.pi * (h % 24) / 24)
        yield make_events(per_hour, rng, t0=T0, dt=3600 / per_hour, start=h * per_hour, a_mean=mean)


def test_daily_seasonality_is_not_drift_with_a_calendar_reference():
    cal = model_config(window={"by": "time", "size": 3600},
                       reference={"type": "calendar", "size": 2000, "period_s": 86400, "slot_s": 3600,
                                  "periods": 3})
    mon, alerts = run(cal, seasonal_stream(np.random.default_rng(20), days=8))
    assert alerts == []
    assert mon.counters.windows > 150  # evaluated after the first day, not skipped
    # the same stream against a fixed warm-up reference pages on the season: the calendar is what helps
    warm = model_config(window={"by": "time", "size": 3600}, reference={"size": 2000})
    _, alerts = run(warm, seasonal_stream(np.random.default_rng(20), days=2))
    assert ("a", "psi") in firing(alerts)


def test_calendar_reference_still_catches_real_drift():
    cal = model_config(window={"by": "time", "size": 3600},
                       reference={"type": "calendar", "size": 2000, "period_s": 86400, "slot_s": 3600})
    rng = np.random.default_rng(21)
    batches = list(seasonal_stream(rng, days=3))
    batches += [make_events(300, rng, t0=T0, dt=12, start=(72 + h) * 300, b_sd=1.8,
                            a_mean=1.5 * np.sin(2 * np.pi * h / 24)) for h in range(6)]
    _, alerts = run(cal, batches)
    assert firing(alerts) == {("b", "psi")}
    assert alerts[0].reference_id.split(":")[-1].startswith("slot")


def test_rolling_reference_compares_with_the_previous_window():
    cfg = model_config(reference={"type": "rolling", "size": 2000, "windows": 2})
    rng = np.random.default_rng(22)
    batches = [make_events(1000, rng, start=i * 1000, a_mean=0.02 * i) for i in range(12)]  # slow creep
    batches += [make_events(1000, rng, start=(12 + i) * 1000, a_mean=1.5) for i in range(3)]  # sudden jump
    _, alerts = run(cfg, batches)
    assert firing(alerts) == {("a", "psi"), ("a", "rank_sum")}
    assert ":rolling:" in alerts[0].reference_id


def test_sliding_count_window_evaluates_every_slide():
    cfg = model_config(window={"type": "sliding", "size": 1000, "slide": 250})
    mon, _ = run(cfg, stream(np.random.default_rng(23), n_after=3000))
    assert mon.counters.windows == (3000 - 1000) // 250 + 1


def test_time_window_counts_late_events_and_waits_for_lateness():
    cfg = model_config(window={"by": "time", "size": 600, "lateness_s": 120}, reference={"size": 1000})
    cfgp = parse_config({"models": {"m": cfg}})
    mon = Monitor(cfgp)
    rng = np.random.default_rng(24)
    mon.process(make_events(1000, rng, t0=0, dt=0.5))  # warm-up
    results = mon.process(make_events(1200, rng, t0=1000, dt=1.0)).results  # t = 1000 .. 2199
    closed = [(r.window.start, r.window.end) for r in results]
    assert closed == [(600.0, 1200.0), (1200.0, 1800.0)]  # [1800, 2400) waits: watermark 2079 < 2400
    late = make_events(10, rng, t0=1300, dt=1.0)  # window [1200, 1800) already closed
    mon.process(late)
    assert mon.models["m"].late_events == 10


@pytest.mark.parametrize("test", ["ks", "wasserstein", "js", "hellinger"])
def test_every_numeric_test_can_drive_the_decision(test):
    _, alerts = run(model_config(drift={"numeric_test": test}), stream(np.random.default_rng(25), a_mean=0.7))
    assert firing(alerts) == {("a", test), ("a", "rank_sum")}


def test_checkpoint_restores_the_reference_and_ignores_one_for_other_features():
    cfg = parse_config({"models": {"m": model_config(reference={"size": 1000})}})
    mon = Monitor(cfg)
    rng = np.random.default_rng(26)
    mon.process(make_events(1500, rng))
    state = mon.checkpoint().state
    assert {RecordKey("m", "ref"), RecordKey("m", "core")} <= set(state)
    again = Monitor(cfg)
    assert again.restore(state) == ["m"]
    assert again.models["m"].reference.id == mon.models["m"].reference.id
    other = parse_config({"models": {"m": model_config(features={"numeric": ["a"]}, reference={"size": 1000})}})
    fresh = Monitor(other)
    assert fresh.restore(state) == []  # different features: warm up afresh
    assert fresh.models["m"].reference is None and fresh.counters.restore_errors == 1


def test_a_huge_category_value_gives_a_bounded_alert():
    rng = np.random.default_rng(27)
    cfg = parse_config({"models": {"m": model_config(reference={"size": 1000})}})
    mon = Monitor(cfg)
    mon.process(make_events(1000, rng))
    alerts = []
    for i in range(3):  # new, enormous category values in every window: a data-quality alert with examples
        evs = make_events(1000, rng, start=1000 + i * 1000)
        for j, e in enumerate(evs[:200]):
            e["features"]["k"] = f"{j}-" + "x" * 200_000
            e["model_version"] = "v" * 150_000
        alerts += mon.process(evs).alerts
    assert alerts, "new categories at 20 % must alert"
    for a in alerts:
        assert len(orjson.dumps(a.to_dict())) < 20_000
    assert any("\u2026" in str(a.to_dict()) for a in alerts)  # examples are cut, and say so


def test_events_of_a_model_named_like_a_prefix_are_not_monitored_as_that_model():
    rng = np.random.default_rng(28)
    with pytest.raises(ConfigError, match="models.a/b.name"):
        parse_config({"models": {"a": model_config(), "a/b": model_config()}})
    cfg = parse_config({"models": {"a": model_config(reference={"size": 1000})}})
    mon = Monitor(cfg)
    mon.process(make_events(3000, rng, model="a"))
    out = mon.process(make_events(3000, rng, model="a/b", a_mean=2.0))
    assert out.alerts == [] and len(out.unknown_predictions) == 3000
    assert mon.counters.unmonitored["a/b"] == 3000 and mon.models["a"].windows is not None
    assert mon.policy.active("a") == []


def flag_stream(rng, n, p_one, start=0):
    evs = make_events(n, rng, start=start)
    flags = rng.random(n) < p_one
    for e, f in zip(evs, flags):
        e["features"]["flag"] = int(f)
        e["features"]["spend"] = 0.0 if rng.random() < 0.6 else float(rng.exponential(50))
    return evs


def test_a_binary_flag_and_a_zero_inflated_feature_get_bins_that_can_show_a_shift():
    rng = np.random.default_rng(29)
    cfg = model_config(features={"numeric": ["a", "flag", "spend"], "categorical": ["k"]},
                       reference={"size": 5000})
    batches = [flag_stream(rng, 1000, 0.05, start=i * 1000) for i in range(10)]
    batches += [flag_stream(rng, 1000, 0.30, start=10_000 + i * 1000) for i in range(4)]
    mon, alerts = run(cfg, batches)
    assert mon.models["m"].reference.binning.bin_valid[1].sum() == 2  # 0 and 1: a bin each
    assert mon.models["m"].reference.binning.edges[2][0] > 0  # the zeros of spend have a bin of their own
    assert ("flag", "psi") in firing(alerts)
    assert all(f != "spend" for f, _ in firing(alerts))


def test_a_rare_unseen_value_in_a_small_window_of_a_long_tail_does_not_page():
    rng = np.random.default_rng(30)
    levels = [f"v{i}" for i in range(200)]
    probs = 1 / np.arange(1, 201) ** 1.1
    probs /= probs.sum()
    cfg = model_config(window={"size": 100}, reference={"size": 5000}, drift={"min_window_events": 50})
    batches = []
    for i in range(60):
        evs = make_events(1000, rng, start=i * 1000)
        for e, v in zip(evs, rng.choice(levels, 1000, p=probs)):
            e["features"]["k"] = str(v)
        batches.append(evs)
    _, alerts = run(cfg, batches)
    assert [a for a in alerts if a.statistic == "new_category_rate"] == []


def test_accuracy_under_its_bound_by_sampling_error_alone_does_not_page():
    from tests.streams import classifier_config, labeled_stream

    perf = {"task": "binary", "positive_label": "1", "window_s": 300, "maturity_s": 0, "min_labels": 30,
            "thresholds": {"accuracy": {"min": 0.74}}}
    mon = Monitor(parse_config({"models": {"clf": classifier_config(performance=perf)}}))
    rng = np.random.default_rng(31)
    alerts, reports = [], []
    for i in range(40):  # ~50 labels per 5-minute window; true accuracy 0.78, observed often under 0.74
        p, lab = labeled_stream(60, rng, start=i * 60, dt=5.0, lag_mean_s=20, missing=0.1)
        out = mon.process_batch(p, lab)
        alerts += out.alerts
        reports += [r for r in out.reports if r["type"] == "performance"]
    assert any(r["metrics"].get("accuracy", 1) < 0.74 for r in reports), "the stream must dip under the bound"
    assert all(lo <= r["metrics"]["accuracy"] <= hi for r in reports if r["metrics"]
               for lo, hi in [r["interval"]["accuracy"]])
    assert [a for a in alerts if a.kind == "performance"] == []
    flipped = Monitor(parse_config({"models": {"clf": classifier_config(performance=perf)}}))
    alerts = []
    for i in range(40):  # the relation flips: accuracy ~0.2, far under the bound, pages
        p, lab = labeled_stream(60, rng, start=i * 60, dt=5.0, lag_mean_s=20, missing=0.1, flip=i >= 10)
        alerts += flipped.process_batch(p, lab).alerts
    assert any(a.kind == "performance" and a.status == "firing" for a in alerts)


def test_details_carry_the_decision_statistics_and_an_alert_every_statistic():
    """Statistics that do not decide a feature are computed for the features over threshold (the alert shows
    them all) or for every feature with report_all_statistics; decisions never depend on it."""
    batches = list(stream(np.random.default_rng(11), a_mean=0.5, k_p=(0.15, 0.25, 0.25, 0.35)))
    _, alerts = run(model_config(), batches)
    members = {(m["feature"], m["statistic"]): m["details"] for x in alerts if x.status == "firing"
               for m in x.features}
    assert {"psi", "rank_sum", "ks", "wasserstein", "js", "hellinger", "wasserstein_raw"} <= set(members["a", "psi"])
    assert members["a", "psi"]["ks"]["value"] > 0.1  # on the samples, computed for the alert
    assert {"chi2", "category_shift", "psi", "js", "hellinger", "chi2_statistic"} <= set(members["k", "chi2"])

    def findings(cfg, feature):
        """The feature's drift findings per window, and whether any of them is over threshold there."""
        return [(f, any(g.over for g in r.findings if g.feature == feature and g.kind == "data_drift"))
                for r in Monitor(parse_config({"models": {"m": cfg}})).process(
                    [e for b in batches for e in b]).results for f in r.findings
                if f.feature == feature and f.kind == "data_drift" and f.statistic != "new_category_rate"]

    quiet = findings(model_config(), "b")
    assert {frozenset(f.details) - {"windows"} for f, over in quiet if not over} == {
        frozenset({"psi", "rank_sum", "reference_std"})}  # "windows": the evidence span that decided
    quiet_cat = findings(model_config(), "region")
    assert {frozenset(f.details) - {"windows"} for f, over in quiet_cat if not over} == {
        frozenset({"chi2", "chi2_statistic", "category_shift"})}
    every = findings(model_config(drift={"report_all_statistics": True}), "b")
    assert every and all({"psi", "ks", "wasserstein", "js", "hellinger"} <= set(f.details) for f, _ in every)
    assert [(f.over, f.value, f.p_value) for f, _ in every] == [(f.over, f.value, f.p_value) for f, _ in quiet]
    shifted = findings(model_config(), "a")
    assert any(over for _, over in shifted)
    assert all({"js", "hellinger", "ks", "wasserstein"} <= set(f.details) for f, over in shifted if over)


def test_ks_decides_when_asked_and_is_always_computed_then():
    cfg = model_config()
    cfg["drift"] = {"numeric_test": "ks"}
    _, alerts = run(cfg, stream(np.random.default_rng(11), a_mean=0.5))
    assert firing(alerts) == {("a", "ks"), ("a", "rank_sum")}


def test_a_small_persistent_shift_is_caught_by_evidence_across_windows_and_not_by_single_windows():
    def batches():
        return list(stream(np.random.default_rng(21), n_after=24_000, a_mean=0.15))

    psi_only = {"thresholds": {"rank_sum": None}}
    single = model_config()
    single["drift"] = {"evidence_windows": []} | psi_only
    _, alerts = run(single, batches())
    assert firing(alerts) == set()  # 0.15 sd: a PSI of ~0.02, below one window's noise floor
    cfg = model_config()
    cfg["drift"] = psi_only
    _, alerts = run(cfg, batches())
    assert firing(alerts) == {("a", "psi")}
    a = next(x for x in alerts if x.status == "firing")
    assert a.details["windows"] in (4, 16) and a.details["evidence"]["1"]["events"] == 1000


def test_a_small_location_shift_is_caught_by_the_rank_sum_test_over_a_span():
    def batches():
        return list(stream(np.random.default_rng(0), n_after=12_000, a_mean=0.12))

    cfg = model_config()
    cfg["drift"] = {"thresholds": {"rank_sum": None}}
    _, alerts = run(cfg, batches())
    assert firing(alerts) == set()  # 0.12 sd over 12 windows: PSI alone misses this run
    _, alerts = run(model_config(), batches())
    assert firing(alerts) == {("a", "rank_sum")}
    m = next(m for x in alerts if x.status == "firing" for m in x.features)
    rs = m["details"]["rank_sum"]
    assert rs["auc"] > 0.5 and m["details"]["windows"] in (4, 16)
    assert m["value"] >= m["threshold"] and m["p_value"] < 0.01


def test_evidence_does_not_keep_an_ended_shift_open():
    rng = np.random.default_rng(22)
    batches = list(stream(rng, n_after=6000, a_mean=1.0))
    batches += [make_events(1000, rng, start=20_000 + i * 1000) for i in range(3)]
    _, alerts = run(model_config(), batches)
    assert [(a.status, a.feature) for a in alerts] == [("firing", "a"), ("resolved", "a")]
    assert alerts[1].window["index"] - alerts[0].window["index"] <= 8


def test_evidence_windows_are_validated():
    cfg = model_config()
    cfg["drift"] = {"evidence_windows": [1, 4]}
    with pytest.raises(ConfigError, match="evidence_windows"):
        parse_config({"models": {"m": cfg}})


def test_a_model_that_gets_a_few_events_per_batch_closes_each_window_in_the_batch_of_its_last_event():
    """Few events per batch are held until they may complete the warm-up or a pane: every window still closes
    in the batch that holds its last event, and a checkpoint holds every event consumed."""
    cfg = parse_config({"models": {"m": model_config(window={"size": 500}, reference={"size": 1000})}})
    rng = np.random.default_rng(12)
    events = make_events(6000, rng)
    mon = Monitor(cfg)
    closed_in = []
    for b, at in enumerate(range(0, len(events), 7)):
        closed_in += [b] * len(mon.process(events[at: at + 7]).results)
        if b % 50 == 49:  # a commit: nothing is held back from the state
            state = mon.checkpoint().state
            mm = mon.models["m"]
            held = mm.warmup.n if mm.reference is None else mm.reference.pane.n + 500 * (
                mm.windows._seq) + mm.windows.current_n
            assert held == min(at + 7, len(events)) and not mm._staged
            assert state[RecordKey("m", "core")] is not None
    # window j ends with event 1000 + 500 (j + 1) - 1, in batch (that event) // 7
    assert closed_in == [(1000 + 500 * (j + 1) - 1) // 7 for j in range(10)]
