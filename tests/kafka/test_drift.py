"""Drift scenarios through the running monitor on a real broker, seeded: right feature only, or nothing."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from stream_monitor.core.state import TaskId
from tests.kafka.helpers import Running, config, create_topic, produce, read_all
from tests.streams import make_events, make_segmented_events, model_config, segmented_config

pytestmark = pytest.mark.kafka

SCENARIOS = {
    "mean shift of 0.5 sigma": ({"a_mean": 0.5}, {("a", "psi")}),
    "variance change": ({"b_sd": 1.6}, {("b", "psi")}),
    "categorical frequency shift": ({"k_p": (0.15, 0.25, 0.25, 0.35)}, {("k", "chi2")}),
    "new category": ({"k_cats": ("x", "y", "z", "unseen")}, {("k", "new_category_rate")}),
}


def run(kafka_bootstrap, cfg, events, settle=1.0):
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    with Running(cfg, kafka_bootstrap) as r:
        n = produce(kafka_bootstrap, cfg.topics.predictions, events)
        r.wait_consumed(n, timeout=120)
        time.sleep(settle)
        windows = r.service.tasks[TaskId(0)].counters.windows
    alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: False,
                                                        timeout=3)]
    return alerts, windows


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_drift_is_alerted_on_the_right_feature_only(kafka_bootstrap, run_id, name):
    drift, expected = SCENARIOS[name]
    rng = np.random.default_rng(71)
    events = make_events(5000, rng) + make_events(6000, rng, start=5000, **drift)
    alerts, _ = run(kafka_bootstrap, config(run_id, {"m": model_config()}), events)
    firing = {(f["feature"], f["statistic"]) for a in alerts if a["status"] == "firing" for f in a["features"]}
    assert expected <= firing
    assert {f for f, _ in firing} == {f for f, _ in expected}  # no other feature


def test_long_seasonal_stream_without_drift_raises_nothing_with_a_calendar_reference(kafka_bootstrap, run_id):
    model = model_config(window={"by": "time", "size": 3600},
                         reference={"type": "calendar", "size": 2000, "period_s": 86400, "slot_s": 3600,
                                    "periods": 3})
    t0 = 1_699_920_000.0  # a midnight (UTC)
    rng = np.random.default_rng(72)
    events = []
    for h in range(8 * 24):  # eight days; feature a follows the hour of day with an amplitude of 1.5 sigma
        events += make_events(300, rng, t0=t0, dt=12.0, start=h * 300, a_mean=1.5 * np.sin(2 * np.pi * (h % 24) / 24))
    alerts, windows = run(kafka_bootstrap, config(run_id, {"m": model}), events)
    assert alerts == []
    assert windows > 150  # the windows were evaluated (the first day only builds the calendar)


def long_tail(events, rng, levels=200):
    probs = 1 / np.arange(1, levels + 1) ** 1.1
    probs /= probs.sum()
    for e, v in zip(events, rng.choice(levels, len(events), p=probs)):
        e["features"]["k"] = f"level-{v}"
    return events


def test_a_stationary_200_level_long_tail_at_windows_of_10000_raises_nothing(kafka_bootstrap, run_id):
    # a goodness-of-fit chi-square (the reference taken as exact) was in permanent alert here
    rng = np.random.default_rng(73)
    events = long_tail(make_events(65000, rng), rng)
    cfg = config(run_id, {"m": model_config(window={"size": 10000}, reference={"size": 5000})})
    alerts, windows = run(kafka_bootstrap, cfg, events)
    assert windows == 6
    assert alerts == []


def test_a_rare_binary_flag_going_from_5_to_30_percent_is_alerted(kafka_bootstrap, run_id):
    rng = np.random.default_rng(74)
    events = make_events(11000, rng)
    for i, e in enumerate(events):
        e["features"]["flag"] = int(rng.random() < (0.05 if i < 6000 else 0.30))
    cfg = config(run_id, {"m": model_config(features={"numeric": ["a", "b", "flag"], "categorical": ["k"]})})
    alerts, _ = run(kafka_bootstrap, cfg, events)
    firing = {(f["feature"], f["statistic"]) for a in alerts if a["status"] == "firing" for f in a["features"]}
    assert firing == {("flag", "psi"), ("flag", "rank_sum")}  # more ones: a location shift too


def test_a_shift_in_one_segment_is_alerted_naming_the_segment(kafka_bootstrap, run_id):
    # region eu (20 % of traffic) moves by 0.8 sd; the regions differ from one another all along
    rng = np.random.default_rng(75)
    events = make_segmented_events(5000, rng, model="m") + make_segmented_events(
        6000, rng, start=5000, model="m", shifted="eu", shift=0.8)
    cfg = config(run_id, {"m": segmented_config(segments={"keys": ["region", "channel"], "top_n": 5})})
    alerts, windows = run(kafka_bootstrap, cfg, events)
    assert windows == 6
    sliced = [a for a in alerts if a["status"] == "firing" and a.get("segment")]
    regions = {a["segment"]["value"] for a in sliced if a["segment"]["key"] == "region"}
    assert regions == {"eu"}
    eu = next(a for a in sliced if a["segment"] == {"key": "region", "value": "eu"})
    assert eu["dedup_key"] == "m/data_drift/region=eu" and eu["feature"] == "a"
    assert "in segment region=eu" in eu["message"]
