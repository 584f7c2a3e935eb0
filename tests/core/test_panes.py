"""Scale-out stages in the pure core: pane builders per partition, one merging monitor per model."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core.events import PredictionBatch
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.panes import PaneBuilder, piece_cap
from stream_monitor.core.state import RecordKey
from stream_monitor.core.windows import decode_record
from tests.streams import make_events, model_config


def _config(**model: Any) -> Any:
    return parse_config({"scale_out": {"enabled": True, "idle_partition_s": 30},
                         "alerts": {"consecutive": 1, "resolve_after": 1},
                         "models": {"m": model_config(**model)}})


def _partition(events: list[dict[str, Any]], parts: int) -> list[list[int]]:
    """Positions per partition, as a producer keying by event id would spread them."""
    out: list[list[int]] = [[] for _ in range(parts)]
    for i, e in enumerate(events):
        out[zlib.crc32(e["event_id"].encode()) % parts].append(i)
    return out


class TwoStages:
    """``parts`` pane builders feeding one merging monitor through JSON, batch by batch, in a given order
    (the partitions interleave in chunks, as a consumer reads them)."""

    def __init__(self, cfg: Any, parts: int) -> None:
        self.cfg = cfg
        self.builders = [PaneBuilder(cfg, p, parts) for p in range(parts)]
        self.decider = Monitor(cfg, merged=True, sources=parts)
        self.clock = 1000.0
        self.alerts: list[Any] = []
        self.results: list[Any] = []
        self.reports: list[dict[str, Any]] = []
        self.stored: list[dict[str, Any]] = [{} for _ in range(parts + 1)]  # the state topic, per task

    def _store(self, task: int, changes: dict[str, Any]) -> None:
        for k, v in changes.items():
            if v is None:
                self.stored[task].pop(k, None)
            else:
                self.stored[task][k] = orjson.loads(orjson.dumps(v))

    def feed(self, events: list[dict[str, Any]], chunk: int = 300, labels: list[dict[str, Any]] = ()) -> None:
        """Predictions (and labels, keyed by event id too) partition by partition, in chunks of their order."""
        parts = _partition(events, len(self.builders))
        lparts = _partition(list(labels), len(self.builders))
        cursors = [0] * len(parts)
        lcursors = [0] * len(parts)
        while any(c < len(p) for c, p in zip(cursors, parts)) or any(
                c < len(p) for c, p in zip(lcursors, lparts)):
            for s, pos in enumerate(parts):
                take = pos[cursors[s]: cursors[s] + chunk]
                cursors[s] += chunk
                # the labels this partition holds up to the last prediction's time (a consumer reading both)
                until = events[take[-1]]["timestamp"] if take else float("inf")
                lpos = lparts[s]
                lend = lcursors[s]
                while lend < len(lpos) and labels[lpos[lend]]["timestamp"] <= until:
                    lend += 1
                ltake, lcursors[s] = lpos[lcursors[s]: lend], lend
                if take or ltake:
                    batch = PredictionBatch.from_events([events[i] for i in take], self.cfg.models)
                    self.builders[s].process_batch(batch, [labels[i] for i in ltake])
            self.commit()

    def commit(self) -> None:
        self.clock += 1.0
        records = []
        for s, b in enumerate(self.builders):
            cp = b.checkpoint(self.clock)
            records += [decode_record(orjson.loads(orjson.dumps(r))) for _, r in cp.outputs]
            self._store(s, cp.state)
        out = self.decider.process_panes(records)
        assert not out.rejected
        for ref in out.references:
            for b in self.builders:
                b.set_reference(ref.model, ref)
        self.alerts += out.alerts
        self.results += out.results
        self.reports += out.reports
        self._store(len(self.builders), self.decider.checkpoint().state)


def test_piece_cap_bounds_record_size_and_fills_the_merged_sample() -> None:
    assert piece_cap(5000, 1, 30) == 1666  # bytes bound: 30 columns x 8 bytes
    assert piece_cap(5000, 3, 4) == 2500  # 1.5 x the share of 3 partitions
    assert piece_cap(100, 50, 4) == 50


def test_time_windows_over_partitions_hold_every_event_and_tile_event_time() -> None:
    cfg = _config(window={"by": "time", "size": 600}, reference={"size": 3000})
    rng = np.random.default_rng(11)
    events = make_events(20_000, rng, dt=0.25)
    two = TwoStages(cfg, 3)
    two.feed(events)
    wins = [r.window for r in two.results]
    assert len(wins) >= 7
    assert all(b.start == a.end for a, b in zip(wins, wins[1:]))  # no gap, no overlap
    # every window past the warm-up (the earliest events over every partition) holds exactly its events
    times = np.array([e["timestamp"] for e in events])
    for w in [w for w in wins if w.start >= times[3000]]:
        assert w.events == int(((times >= w.start) & (times < w.end)).sum())
    assert two.decider.models["m"].late_events == 0
    assert not two.alerts


def test_same_shift_same_alert_as_one_monitor_and_one_incident() -> None:
    """The merged stream alerts on the same feature as one monitor of the whole stream, once."""
    cfg_one = parse_config({"alerts": {"consecutive": 1, "resolve_after": 1},
                            "models": {"m": model_config(reference={"size": 3000})}})
    cfg = _config(reference={"size": 3000})
    rng = np.random.default_rng(5)
    events = make_events(8000, rng) + make_events(6000, rng, start=8000, a_mean=0.8)
    one = Monitor(cfg_one)
    single = []
    for at in range(0, len(events), 500):
        single += one.process(events[at: at + 500]).alerts
    two = TwoStages(cfg, 3)
    two.feed(events)
    fired = [a for a in two.alerts if a.status == "firing"]
    assert fired and {a.kind for a in fired} == {"data_drift"}
    features = {f["feature"] for a in fired for f in a.features}
    assert features and features == {f["feature"] for a in single if a.status == "firing" for f in a.features}
    assert len({a.alert_id for a in fired}) == 1  # one incident for the shift
    # count windows close on the merged count, exactly
    assert {r.window.events for r in two.results} == {1000}


def _decided(results: list[Any]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]


@pytest.mark.parametrize("parts", [1, 3])
def test_count_windows_over_partitions_are_the_stream_s_own_windows_in_event_time(parts: int) -> None:
    """A count window in scale-out mode is the next ``size`` events in event time over every partition: the
    windows, findings and alerts of one monitor reading the whole stream in time order, whatever the number of
    partitions and however they were read (chunk sizes)."""
    cfg_one = parse_config({"alerts": {"consecutive": 1, "resolve_after": 1},
                            "models": {"m": model_config(reference={"size": 2000})}})
    cfg = _config(reference={"size": 2000})
    rng = np.random.default_rng(17)
    events = make_events(8000, rng) + make_events(5000, rng, start=8000, a_mean=0.8) + make_events(
        5000, rng, start=13000)
    one = Monitor(cfg_one)
    single, alerts = [], []
    for at in range(0, len(events), 500):
        out = one.process(events[at: at + 500])
        single += out.results
        alerts += out.alerts
    want = _decided(single)
    for chunk in (50, 300, 2000):
        two = TwoStages(cfg, parts)
        two.feed(events, chunk=chunk)
        got = _decided(two.results)
        # the tail that not every partition has passed yet waits: at most the last window is missing
        assert len(want) - 1 <= len(got) <= len(want) and got == want[:len(got)], chunk
        assert [(a.alert_id, a.status) for a in two.alerts] == [(a.alert_id, a.status) for a in alerts][
            :len(two.alerts)]
        assert {a.alert_id for a in two.alerts if a.status == "firing"} == {
            a.alert_id for a in alerts if a.status == "firing"}  # one incident for the shift, as one monitor
        wins = [r.window for r in two.results]
        assert all(b.start > a.end for a, b in zip(wins, wins[1:]))  # windows tile event time: no overlap
        assert all(w.events == 1000 for w in wins)
        assert two.decider.models["m"].late_events == 0


def test_count_windows_over_partitions_take_late_events_where_their_partition_was() -> None:
    """Events out of order within a partition: by less than ``lateness_s`` they keep their event time's place,
    by more they take their partition's place; either way the windows do not depend on how the partitions
    were read."""
    cfg = _config(reference={"size": 1000}, window={"size": 500, "lateness_s": 3.0})
    rng = np.random.default_rng(23)
    events = make_events(9000, rng)
    jitter = rng.normal(0.0, 2.0, len(events))
    jitter[rng.random(len(events)) < 0.01] -= 30.0  # 1 % later than the lateness
    for e, j in zip(events, jitter):
        e["timestamp"] += float(j)
    runs = []
    for chunk in (40, 700):
        two = TwoStages(cfg, 3)
        two.feed(events, chunk=chunk)
        runs.append(_decided(two.results))
        assert two.decider.models["m"].late_events == 0  # no partition went idle: nothing out of the order
    assert runs[0] == runs[1] and len(runs[0]) >= 14


def test_idle_partition_stops_holding_windows_back() -> None:
    cfg = _config(window={"by": "time", "size": 600}, reference={"size": 1000})
    rng = np.random.default_rng(3)
    events = make_events(6000, rng, dt=1.0)
    two = TwoStages(cfg, 2)
    two.feed(events[:3000])
    before = len(two.results)
    # partition 1 falls silent; partition 0 goes on for longer than idle_partition_s of produce time
    only0 = [e for i, e in enumerate(events[3000:]) if _partition([e], 2)[0]]
    for at in range(0, len(only0), 200):
        batch = PredictionBatch.from_events(only0[at: at + 200], cfg.models)
        two.builders[0].process_batch(batch, [])
        two.clock += 10
        two.commit()
    assert len(two.results) > before + 2  # windows close on partition 0's watermark alone


@pytest.mark.parametrize("window", [{"by": "time", "size": 300}, {"by": "count", "size": 500}])
def test_checkpoint_round_trip_of_both_stages(window: dict[str, Any]) -> None:
    cfg = _config(window=window, reference={"size": 2000})
    rng = np.random.default_rng(8)
    events = make_events(9000, rng, dt=0.5)
    a, b = TwoStages(cfg, 3), TwoStages(cfg, 3)
    a.feed(events[:5000])
    b.feed(events[:5000])
    # b restarts: every builder and the decider from the state their commits stored
    for s in range(3):
        fresh = PaneBuilder(cfg, s, 3)
        assert fresh.restore(b.stored[s], {}, {}) == ["m"]
        b.builders[s] = fresh
    dec = Monitor(cfg, merged=True, sources=3)
    assert dec.restore(b.stored[3]) == ["m"]
    b.decider = dec
    a.feed(events[5000:])
    b.feed(events[5000:])
    assert len(a.results) >= 10
    assert _decided(a.results) == _decided(b.results)


def test_malformed_pane_record_is_rejected_with_a_reason() -> None:
    cfg = _config(reference={"size": 100})
    with pytest.raises(ValueError, match="source"):
        decode_record({"v": 1, "model": "m", "source": "0", "at": 1.0})
    dec = Monitor(cfg, merged=True)
    rec = decode_record({"v": 1, "model": "m", "source": 0, "at": 1.0, "raw": {"v": 1, "n": 3}})
    out = dec.process_panes([rec])
    assert out.rejected and "not usable" in out.rejected[0][1]


def seasonal_events(n: int, rng: np.random.Generator, period_s: float, dt: float,
                    t0: float = 1.7e9) -> list[dict[str, Any]]:
    """A stream whose feature ``a`` follows a cycle of ``period_s`` (a daily pattern, compressed)."""
    events = make_events(n, rng, t0=t0, dt=dt)
    for i, e in enumerate(events):
        e["features"]["a"] += float(2.0 * np.sin(2 * np.pi * (i * dt) / period_s))
    return events


def test_seasonal_stream_over_partitions_with_calendar_reference_raises_nothing() -> None:
    period = 14_400.0
    cfg = _config(window={"by": "time", "size": 1800},
                  reference={"type": "calendar", "size": 2000, "period_s": period, "slot_s": 1800, "periods": 2})
    rng = np.random.default_rng(21)
    events = seasonal_events(int(5 * period / 2), rng, period, dt=2.0)
    two = TwoStages(cfg, 3)
    two.feed(events)
    assert not two.alerts
    evaluated = [r for r in two.results if r.skipped is None]
    assert len(evaluated) >= 15
    # windows past the warm-up (the 2,000 earliest events over every partition) hold every event
    times = np.array([e["timestamp"] for e in events])
    after = [r.window for r in two.results if r.window.start >= times[2000]]
    assert len(after) >= 15
    for w in after:
        assert w.events == int(((times >= w.start) & (times < w.end)).sum())


def test_a_malformed_builder_checkpoint_starts_the_model_afresh_and_deletes_its_records() -> None:
    cfg = _config(reference={"size": 100})
    b = PaneBuilder(cfg, 0, 2)
    core, piece = RecordKey("m", "core"), RecordKey("m", "o", "3")
    assert b.restore({core: {"v": 1, "stage": "panes", "reference": "warmup:nope", "wm": None, "fresh": False,
                             "open": [], "last_version": ""}, piece: {"junk": 1}}, {}, {}) == []
    assert b.counters.restore_errors == 1
    cp = b.checkpoint(1.0)
    assert cp.state[piece] is None and cp.state[core]["reference"] is None


def test_segments_over_partitions_name_only_the_shifted_slice() -> None:
    """Slices in scale-out mode: pieces carry a pane per slice, the deciding monitor merges and decides them."""
    from tests.streams import make_segmented_events, segmented_config

    cfg = parse_config({"scale_out": {"enabled": True}, "alerts": {"consecutive": 1, "resolve_after": 1},
                        "models": {"seg": segmented_config(window={"by": "time", "size": 1000},
                                                           segments={"keys": ["region"], "top_n": 4})}})
    rng = np.random.default_rng(11)
    events = make_segmented_events(6000, rng) + make_segmented_events(12000, rng, start=6000, shifted="eu",
                                                                      shift=0.8)
    two = TwoStages(cfg, 3)
    two.feed(events)
    sliced = {(a.segment["key"], a.segment["value"]) for a in two.alerts
              if a.segment is not None and a.status == "firing"}
    assert sliced == {("region", "eu")}
    assert any(r.segments for r in two.results if r.skipped is None)


def test_labels_over_partitions_report_the_same_performance_as_one_monitor() -> None:
    """Labels keyed by event id join on each partition; the deciding task sums the pairs and counts."""
    from tests.streams import classifier_config, labeled_stream

    model = classifier_config(performance={"task": "binary", "positive_label": "1", "window_s": 600,
                                           "maturity_s": 1800, "min_labels": 50,
                                           "thresholds": {"accuracy": {"min": 0.6}}},
                              concept_drift=[{"type": "ddm"}])
    cfg = parse_config({"scale_out": {"enabled": True}, "models": {"clf": model}})
    one_cfg = parse_config({"models": {"clf": model}})
    rng = np.random.default_rng(31)
    preds, labels = labeled_stream(12_000, rng)
    p2, l2 = labeled_stream(12_000, rng, start=12_000, flip=True)
    preds, labels = preds + p2, sorted(labels + l2, key=lambda e: e["timestamp"])
    one = Monitor(one_cfg)
    single = []
    items = sorted([(e["timestamp"], 0, e) for e in preds] + [(e["timestamp"], 1, e) for e in labels],
                   key=lambda x: x[:2])
    for at in range(0, len(items), 500):
        chunk = items[at: at + 500]
        out = one.process_batch([e for _, k, e in chunk if k == 0], [e for _, k, e in chunk if k == 1])
        single += [r for r in out.reports if r["type"] == "performance"]
    two = TwoStages(cfg, 3)
    two.feed(preds, labels=labels)
    reps = [r for r in two.reports if r["type"] == "performance"]
    assert len(reps) >= 15
    want = {r["start"]: (r["predictions"], r["labeled"], r["metrics"]) for r in single}
    got = {r["start"]: (r["predictions"], r["labeled"], r["metrics"]) for r in reps}
    common = sorted(set(want) & set(got))
    assert len(common) >= 15 and all(got[w] == want[w] for w in common)
    kinds = {(a.kind, a.status) for a in two.alerts}
    assert ("performance", "firing") in kinds and ("concept_drift", "firing") in kinds  # the flip is caught


def test_a_new_reference_hands_out_the_open_pieces_of_the_old_one() -> None:
    cfg = _config(window={"by": "time", "size": 600}, reference={"size": 500})
    rng = np.random.default_rng(4)
    two = TwoStages(cfg, 1)
    two.feed(make_events(2000, rng))
    b = two.builders[0]
    assert b.models["m"]._open  # a pane in progress
    old = b.models["m"].reference
    other = parse_config({"models": {"m": model_config()}}).models["m"]
    from stream_monitor.core.reference import build_reference

    new = build_reference(make_events(600, rng), "m", other.features.numeric, other.features.categorical,
                          other.prediction, other.monitor_score, 10, 50, 10000, 5000, source="warmup")
    b.set_reference("m", new)
    cp = b.checkpoint(2.0)  # flushes the old pieces, tagged with the old reference: no error
    assert cp.outputs and all(r["ref"] == old.id for _, r in cp.outputs if "pane" in r)


def test_a_partition_far_behind_holds_at_most_max_waiting_events_for_the_merge_order(caplog):
    """Partition 1 reports nothing new while partition 0 goes on: the deciding instance holds partition 0's
    events for the merge order up to ``scale_out.max_waiting_events``, then releases the oldest (logged, counted)."""
    cfg = parse_config({"scale_out": {"enabled": True, "idle_partition_s": 1e9, "max_waiting_events": 2000},
                        "models": {"m": model_config(reference={"size": 1000})}})
    events = make_events(12_000, np.random.default_rng(4))
    two = TwoStages(cfg, 2)
    two.feed(events[:2000])  # both partitions have reported
    only0 = [e for e in events[2000:] if _partition([e], 2)[0]]
    for at in range(0, len(only0), 500):
        two.builders[0].process_batch(PredictionBatch.from_events(only0[at: at + 500], cfg.models), [])
        two.commit()
        merge = two.decider.models["m"].merge
        assert merge.waiting <= 2000
    assert merge.forced > 0 and merge.forced + merge.waiting <= len(only0) + 2000
    assert len(two.results) >= 2  # the released events close windows
    assert sum("lags behind the others" in r.message for r in caplog.records) == 1
