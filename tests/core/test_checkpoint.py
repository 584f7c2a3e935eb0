"""Exactly-once foundations in the pure core: outputs do not depend on batching, and a monitor restored from
its checkpoints continues exactly as if it had never stopped. Checkpoints are plain data that refuse to run
code and survive malformed records."""

from __future__ import annotations

import base64
import os
import pickle

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.state import RecordKey, decode_value, encode_value
from tests.streams import classifier_config, labeled_stream, make_events, model_config

CORE = RecordKey("clf", "core")

BREAKER = {"enabled": True, "primary_version": "v1", "fallback_version": "v0", "hold_down_s": 1500,
           "close_after": 2, "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 2}]}

SCENARIOS = {
    "count-tumbling-warmup": model_config(window={"size": 1000}, reference={"size": 3000}, breaker=BREAKER),
    "count-sliding-rolling": model_config(window={"type": "sliding", "size": 1000, "slide": 250},
                                          reference={"type": "rolling", "windows": 2, "size": 2000}),
    "time-late-calendar": model_config(window={"by": "time", "size": 600, "lateness_s": 20},
                                       reference={"type": "calendar", "period_s": 3600, "slot_s": 600,
                                                  "periods": 2, "size": 1000, "min_events": 100}),
}


def drifting_stream(seed: int, jitter: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    evs = make_events(6000, rng) + make_events(3000, rng, start=6000, a_mean=0.8) + make_events(
        3000, rng, start=9000)
    if jitter:  # out-of-order event times: some events are late for their window
        for e in evs:
            e["timestamp"] += float(rng.normal(0, 15))
    return evs


def cuts(n: int, rng: np.random.Generator, most: int = 2500) -> list[tuple[int, int]]:
    out, at = [], 0
    while at < n:
        step = int(rng.integers(1, most))
        out.append((at, min(n, at + step)))
        at += step
    return out


def observable(out) -> dict:
    """What users see of a batch's outputs (wall-clock fields left out)."""
    return {
        "alerts": [(a.alert_id, a.status, a.kind, a.severity, tuple((m["feature"], m["statistic"]) for m in a.features))
                   for a in out.alerts],
        "signals": [(s.model, s.epoch, s.state, tuple(s.alert_ids)) for s in out.signals],
        "reports": [orjson.dumps(r, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY) for r in out.reports],
    }


def collect(outs) -> dict:
    total = {"alerts": [], "signals": [], "reports": []}
    for o in outs:
        for k, v in observable(o).items():
            total[k] += v
    return total


def compact(topic: dict, changes: dict) -> None:
    """Apply a checkpoint's records to a dict, as compaction of the state topic would."""
    for k, v in changes.items():
        if v is None:
            topic.pop(k, None)
        else:
            topic[k] = decode_value(k, encode_value(k, v))  # what crosses the topic: the state codec's bytes


def run_with_crashes(cfg, events: list[dict], batches: list[tuple[int, int]], crash
                     ) -> tuple[list, Monitor, dict, list[list[str]]]:
    """Process ``events`` in ``batches``, each followed by a checkpoint applied to a compacted "topic"; after
    batch ``i`` ending at ``b``, when ``crash(i, b, restarts so far)`` holds, go on in a new monitor restored
    from the topic (a crash right after a commit). Returns the outputs, the last monitor, the topic and what
    each restore returned."""
    topic: dict = {}
    mon = Monitor(cfg)
    outs, restored = [], []
    for i, (a, b) in enumerate(batches):
        outs.append(mon.process(events[a:b]))
        compact(topic, mon.checkpoint().state)
        if crash(i, b, len(restored)):
            mon = Monitor(cfg)
            restored.append(mon.restore(dict(topic)))
    return outs, mon, topic, restored


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_outputs_do_not_depend_on_how_the_stream_is_cut_into_batches(name):
    cfg = parse_config({"models": {"m": SCENARIOS[name]}})
    events = drifting_stream(1, jitter=name.startswith("time"))
    whole = Monitor(cfg)
    expected = collect(whole.process(events[i: i + 1000]) for i in range(0, len(events), 1000))
    assert any(a[1] == "firing" for a in expected["alerts"]), "the scenario must alert"
    rng = np.random.default_rng(2)
    other = Monitor(cfg)
    got = collect(other.process(events[a:b]) for a, b in cuts(len(events), rng))
    assert got == expected
    if name == "count-tumbling-warmup":
        assert expected["signals"], "the breaker must act in this scenario"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_monitor_restored_from_its_checkpoints_continues_exactly(name):
    cfg = parse_config({"models": {"m": SCENARIOS[name]}})
    events = drifting_stream(3, jitter=name.startswith("time"))
    expected = collect([Monitor(cfg).process(events)])
    rng = np.random.default_rng(4)
    outs, mon, _, restored = run_with_crashes(cfg, events, cuts(len(events), rng, most=1000),
                                              lambda i, b, restarts: rng.random() < 0.4)
    assert len(restored) >= 3 and all(r == ["m"] for r in restored)
    assert collect(outs) == expected
    assert mon.counters.restore_errors == 0


def test_labels_joins_and_detectors_are_restored_exactly():
    cfg = parse_config({"models": {"clf": classifier_config(
        concept_drift=[{"type": "adwin"}, {"type": "ddm"}, {"type": "hddm_w"}, {"type": "page_hinkley"},
                       {"type": "kswin", "params": {"seed": 1}}],
        performance={"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 600,
                     "min_labels": 30, "max_pairs": 100})}})
    rng = np.random.default_rng(5)
    batches = []
    for i in range(12):
        p, lab = labeled_stream(600, rng, start=i * 600, flip=i >= 7, lag_mean_s=200)
        batches.append((p, lab))
    uninterrupted = Monitor(cfg)
    reference = collect([uninterrupted.process_batch(p, lab) for p, lab in batches])
    assert reference["reports"]
    state: dict = {}
    join: dict = {}
    mon = Monitor(cfg)
    outs = []
    for i, (p, lab) in enumerate(batches):
        outs.append(mon.process_batch(p, lab))
        cp = mon.checkpoint()
        compact(state, cp.state)
        compact(join, cp.join)
        if i % 3 == 1:
            mon = Monitor(cfg)
            assert mon.restore(dict(state), dict(join)) == ["clf"]
    assert collect(outs) == reference
    assert any(k.kind == "join" and k.part.startswith("j/") for k in join)  # joined ids are in the changelog: duplicates stay caught


def test_checkpoints_are_plain_json_without_pickles():
    cfg = parse_config({"models": {"clf": classifier_config(concept_drift=[{"type": "adwin"}])}})
    mon = Monitor(cfg)
    rng = np.random.default_rng(6)
    p, lab = labeled_stream(3000, rng)
    mon.process_batch(p, lab)
    cp = mon.checkpoint()
    text = b"\n".join(encode_value(k, v) or b"" for k, v in cp.records.items()).decode()
    assert "gASV" not in text  # base64 of a pickle's protocol header
    assert {k: decode_value(k, encode_value(k, v)) for k, v in cp.records.items()} == {
        k: orjson.loads(orjson.dumps(v)) for k, v in cp.records.items()}


def test_a_pickled_payload_on_the_state_topic_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = base64.b64encode(pickle.dumps([Evil()])).decode()
    cfg = parse_config({"models": {"clf": classifier_config(concept_drift=[{"type": "adwin"}])}})
    mon = Monitor(cfg)
    rng = np.random.default_rng(7)
    mon.process_batch(*labeled_stream(2000, rng))
    state = {k: orjson.loads(orjson.dumps(v)) for k, v in mon.checkpoint().state.items()}
    core = state[CORE]
    for hostile in ({"types": ["adwin"], "seen": 1, "state": payload},  # the old pickle format
                    {"v": 1, "types": ["adwin"], "seen": 1, "drifts": [0], "warnings": [0],
                     "state": [{"_helper": {"native": payload}}]},
                    {"v": 1, "types": ["adwin"], "seen": 1, "drifts": [0], "warnings": [0],
                     "state": [{"__class__": {"obj": {}}}]}):
        again = Monitor(cfg)
        again.restore({**state, CORE: {**core, "concept": hostile}})
        assert not marker.exists()
    assert again.counters.restore_errors >= 1


@pytest.mark.parametrize("bad", [
    {CORE: "not an object"},
    {CORE: {"v": 999}},
    {CORE: None},
    {RecordKey("clf", "w", "3"): {"cap": "x"}},
    {RecordKey("clf", "ref"): {"format": "stream-monitor/reference@1", "id": "warmup:0", "binning": {}}},
])
def test_malformed_state_records_are_counted_and_the_model_starts_afresh(bad):
    cfg = parse_config({"models": {"clf": classifier_config()}})
    mon = Monitor(cfg)
    rng = np.random.default_rng(8)
    mon.process_batch(*labeled_stream(3000, rng))
    cp = mon.checkpoint()
    state = {k: orjson.loads(orjson.dumps(v)) for k, v in cp.state.items()}
    join = {k: v for k, v in cp.join.items() if v is not None}
    state.update({k: v for k, v in bad.items() if v is not None})
    for k, v in bad.items():
        if v is None:
            state.pop(k)
    again = Monitor(cfg)
    again.restore(state, join)  # never raises
    if CORE in bad:
        assert again.counters.restore_errors == (1 if bad[CORE] is not None else 0)
        assert again.models["clf"].reference is None  # fresh
    # whatever happened, the monitor keeps working and its next checkpoint is whole
    again.process_batch(*labeled_stream(3000, rng, start=3000))
    cp2 = again.checkpoint()
    compact(state, cp2.state)
    compact(join, cp2.join)
    fresh = Monitor(cfg)
    assert fresh.restore(state, join) == ["clf"]
    assert fresh.counters.restore_errors == 0


def test_sample_rate_keeps_the_same_events_in_every_run():
    cfg = parse_config({"models": {"m": model_config(sample_rate=0.3, reference={"size": 1000})}})
    events = make_events(5000, np.random.default_rng(9))
    a, b = Monitor(cfg), Monitor(cfg)
    a.process(events)
    for i in range(0, 5000, 700):
        b.process(events[i:i + 700])
    assert a.counters.sampled_out == b.counters.sampled_out
    assert 0.65 < a.counters.sampled_out / 5000 < 0.75
    assert a.models["m"].reference.id == b.models["m"].reference.id


def test_window_history_round_trips_and_rejects_malformed_records():
    import numpy as np
    import pytest

    from stream_monitor.core.sketches import Binning, Pane
    from stream_monitor.core.windows import WindowHistory
    from tests.streams import make_events
    from stream_monitor.core.columns import build_columns

    rng = np.random.default_rng(3)
    cols = build_columns(make_events(2000, rng), ("a", "b"), ("k",))
    binning = Binning.fit(cols, ("a", "b"), ("k",), 10, 50, 1000)
    h = WindowHistory((4, 16), 1)
    panes = [Pane(binning, 100).update(cols.take(slice(i * 100, (i + 1) * 100))) for i in range(20)]
    for p in panes[:-1]:
        h.add(p)
    got = WindowHistory((4, 16), 1).restore(h.snapshot(), panes[0].num_counts.shape, panes[0].cat_counts.shape)
    want, back = h.evidence(panes[-1]), got.evidence(panes[-1])
    assert sorted(want) == sorted(back) == [4, 16]
    assert all((want[s][0] == back[s][0]).all() and (want[s][1] == back[s][1]).all() for s in want)
    assert int(want[16][0].sum()) == 16 * int(panes[-1].num_counts.sum())  # 16 windows of 100 events
    bad = h.snapshot()
    bad["past"][0][0] = [[1, 2]]
    with pytest.raises(ValueError):
        WindowHistory((4, 16), 1).restore(bad, panes[0].num_counts.shape, panes[0].cat_counts.shape)


@pytest.mark.parametrize("bad", ["not json-like", {"v": 1, "n": 3, "key": "AAAA"}, {"v": 7}])
def test_a_malformed_join_segment_is_counted_and_the_model_starts_afresh(bad):
    cfg = parse_config({"models": {"clf": classifier_config()}})
    mon = Monitor(cfg)
    rng = np.random.default_rng(12)
    mon.process_batch(*labeled_stream(3000, rng))
    cp = mon.checkpoint()
    state = {k: orjson.loads(orjson.dumps(v)) for k, v in cp.state.items()}
    join = {k: orjson.loads(orjson.dumps(v)) for k, v in cp.join.items() if v is not None}
    segment = RecordKey("clf", "join", "p/s/0")
    assert segment in join
    again = Monitor(cfg)
    again.restore(state, {**join, segment: bad})  # never raises
    assert again.counters.restore_errors == 1 and again.models["clf"].join.pending == 0
    cp2 = again.checkpoint()
    assert all(k in cp2.join and cp2.join[k] is None for k in join)  # the unusable records are deleted
