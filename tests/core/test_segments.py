"""Drift per segment (slice): only the slice that changed alerts, named; slices that merely differ from one
another stay quiet, and so does a null stream with several keys; slices checkpoint and restore exactly."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_monitor.config import ConfigError, parse_config
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.reference import build_reference
from stream_monitor.core.segments import Segment
from tests.core.test_checkpoint import collect, cuts, run_with_crashes
from tests.streams import make_segmented_events, segmented_config


def run(cfg_dict: dict, events: list[dict], batch: int = 1000) -> tuple[list, list]:
    mon = Monitor(parse_config({"models": {"seg": cfg_dict}}))
    alerts, reports = [], []
    for i in range(0, len(events), batch):
        out = mon.process(events[i: i + batch])
        alerts += out.alerts
        reports += out.reports
    return alerts, reports


def test_only_the_shifted_slice_alerts_and_the_alert_names_it():
    rng = np.random.default_rng(11)
    events = make_segmented_events(5000, rng) + make_segmented_events(
        10000, rng, start=5000, shifted="eu", shift=0.8)
    alerts, reports = run(segmented_config(segments={"keys": ["region"], "top_n": 4}), events)
    sliced = [a for a in alerts if a.segment is not None and a.status == "firing"]
    assert {(a.segment["key"], a.segment["value"]) for a in sliced} == {("region", "eu")}
    first = sliced[0]
    assert first.dedup_key == "seg/data_drift/region=eu"
    assert "in segment region=eu" in first.message and "feature 'a'" in first.message
    assert first.feature == "a" and first.features[0]["segment"] == {"key": "region", "value": "eu"}
    assert first.window["end"] - 1.7e9 < 5000 + 3000  # within the first windows after the change
    # the window report carries each slice's events and the slice's findings
    last = reports[-1]
    assert [(s["key"], s["value"]) for s in last["segments"]] == [
        ("region", "us"), ("region", "apac"), ("region", "eu"), ("region", "latam")]
    eu = [f for f in last["findings"] if f.get("segment") == {"key": "region", "value": "eu"} and f["feature"] == "a"]
    assert eu and eu[0]["over"]


def test_slices_that_differ_from_one_another_but_do_not_change_stay_quiet():
    # each region has its own mean of 'a' (up to 1.5 sd apart): compared with the whole population they would
    # alert for good; compared with their own part of the reference they do not
    rng = np.random.default_rng(12)
    alerts, reports = run(segmented_config(), make_segmented_events(5000 + 60_000, rng))
    assert alerts == []
    evaluated = [s for r in reports for s in r["segments"] if s["skipped"] is None]
    assert len(evaluated) == 60 * 7


def test_a_null_stream_with_several_segment_keys_raises_no_alert():
    # 7 slices x 3 features + the model's 3 in one Holm family per window, 200 windows of 1,000 events
    rng = np.random.default_rng(13)
    cfg = segmented_config(segments={"keys": ["region", "channel"], "top_n": 5, "min_window_events": 50})
    alerts, reports = run(cfg, make_segmented_events(5000 + 200_000, rng), batch=5000)
    assert [a.message for a in alerts] == []
    assert len(reports) == 200
    smallest = min(p for r in reports for f in r["findings"] if f.get("segment") for p in [f["p_value"]])
    assert smallest < 0.05  # the slices are tested, not silently skipped


def test_a_slice_with_too_small_a_reference_is_reported_not_evaluated():
    rng = np.random.default_rng(14)
    cfg = segmented_config(segments={"keys": ["region"], "top_n": 4, "min_reference_events": 900})
    # latam (15 % of 5,000) is below 900 reference events: never compared with the whole population instead
    events = make_segmented_events(5000, rng) + make_segmented_events(3000, rng, start=5000, shifted="latam",
                                                                       shift=3.0)
    alerts, reports = run(cfg, events)
    latam = [s for r in reports for s in r["segments"] if s["value"] == "latam"]
    assert latam and all(s["skipped"] == "reference too small" for s in latam)
    assert not any(f.get("segment", {}).get("value") == "latam" for r in reports for f in r["findings"])
    assert all(a.segment is None for a in alerts)  # the model's own decision still sees the shift


def test_values_beyond_top_n_and_events_without_a_segment_are_only_in_the_model_windows():
    rng = np.random.default_rng(15)
    events = make_segmented_events(7000, rng)
    for e in events[::7]:
        del e["segment"]
    _, reports = run(segmented_config(segments={"keys": ["region"], "top_n": 2}), events)
    assert [s["value"] for s in reports[0]["segments"]] == ["us", "apac"]  # ranked by reference events
    assert reports[0]["segments"][0]["events"] + reports[0]["segments"][1]["events"] < reports[0]["window"]["events"]


def test_slices_do_not_depend_on_batching_and_restore_exactly_mid_window():
    cfg = parse_config({"models": {"seg": segmented_config(
        window={"type": "sliding", "size": 1000, "slide": 500},
        segments={"keys": ["region", "channel"], "top_n": 3})}})
    rng = np.random.default_rng(16)
    events = make_segmented_events(5000, rng) + make_segmented_events(2000, rng, start=5000) + \
        make_segmented_events(5000, rng, start=7000, shifted="eu", shift=1.0)
    expected = collect([Monitor(cfg).process(events)])
    assert any(a[1] == "firing" for a in expected["alerts"])
    batches = cuts(len(events), np.random.default_rng(17), most=700)  # cuts fall inside windows and warm-up
    outs, mon, topic, restored = run_with_crashes(cfg, events, batches, lambda i, b, restarts: b % 500 and restarts < 8)
    assert len(restored) >= 3 and all(r == ["seg"] for r in restored)
    assert collect(outs) == expected
    assert mon.counters.restore_errors == 0
    assert "gASV" not in orjson.dumps(list(topic.values())).decode()  # plain data, no pickles
    panes = [v for k, v in topic.items() if k.kind == "w"]
    assert panes and all(len(p["slices"]) == 6 for p in panes)


def test_a_time_window_model_with_slices_restores_exactly():
    cfg = parse_config({"models": {"seg": segmented_config(window={"by": "time", "size": 600, "lateness_s": 10})}})
    rng = np.random.default_rng(18)
    events = make_segmented_events(5000, rng) + make_segmented_events(6000, rng, start=5000, shifted="us",
                                                                       shift=0.6)
    for e in events:
        e["timestamp"] += float(rng.normal(0, 5))
    expected = collect([Monitor(cfg).process(events)])
    outs, _, _, _ = run_with_crashes(cfg, events, cuts(len(events), np.random.default_rng(19), most=900),
                                     lambda i, b, restarts: i % 2)
    assert collect(outs) == expected


def test_a_file_reference_carries_its_slices_and_a_mismatched_one_is_refused(tmp_path):
    rng = np.random.default_rng(20)
    past = make_segmented_events(6000, rng)
    kw = dict(model="seg", numeric=("a", "b"), categorical=("k",), prediction="none", score=False, bins=10,
              max_categories=50, max_known=10000, cap=5000)
    ref = build_reference(past, segment_keys=("region",), top_n=2, **kw)
    path = ref.save(tmp_path / "ref.json")
    assert ref.segments is not None and ref.segments.slices == (Segment("region", "us"), Segment("region", "apac"))
    cfg = segmented_config(reference={"type": "file", "path": str(path)}, segments={"keys": ["region"], "top_n": 2})
    events = make_segmented_events(4000, rng, start=6000, shifted="apac", shift=1.0)
    alerts, _ = run(cfg, events)
    assert {a.segment["value"] for a in alerts if a.segment} == {"apac"}
    plain = build_reference(past, **kw).save(tmp_path / "plain.json")
    assert build_reference(past, **kw).id == build_reference(past, **kw).id  # no slices: ids as before
    with pytest.raises(ValueError, match=r"models\.seg\.segments\.keys: reference file:\w+ has slices of "):
        Monitor(parse_config({"models": {"seg": segmented_config(reference={"type": "file", "path": str(plain)},
                                                                  segments={"keys": ["region"]})}}))


@pytest.mark.parametrize(("segments", "reference", "key"), [
    ({"keys": ["region", "region"]}, {}, "models.seg.segments.keys.1: segment key 'region' is listed twice"),
    ({"keys": [""]}, {}, "models.seg.segments.keys.0: a segment key"),
    ({"keys": ["region"], "top_n": 0}, {}, "models.seg.segments.top_n:"),
    ({"keys": ["region"], "min_reference_events": 5}, {}, "models.seg.segments.min_reference_events:"),
    ({"keys": ["region"], "topn": 3}, {}, "models.seg.segments.topn: unknown key (did you mean 'top_n'?)"),
    ({"keys": ["region"]}, {"type": "rolling"}, "models.seg.segments: slices need reference type"),
])
def test_segment_config_errors_name_the_key(segments, reference, key):
    with pytest.raises(ConfigError) as err:
        parse_config({"models": {"seg": segmented_config(segments=segments, reference=reference)}})
    assert key in str(err.value)


def test_no_segments_by_default_costs_nothing():
    cfg = parse_config({"models": {"seg": segmented_config(segments={})}})
    assert not cfg.models["seg"].segments.enabled
    _, reports = run(segmented_config(segments={}), make_segmented_events(6000, np.random.default_rng(21)))
    assert "segments" not in reports[0] and not any("segment" in f for f in reports[0]["findings"])
