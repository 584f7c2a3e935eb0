"""State records: every kind round-trips through its codec, keys print and parse in one place, and records
that cannot be used are refused with a reason class (never a crash)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core.events import PredictionBatch
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.panes import PaneBuilder
from stream_monitor.core.windows import decode_record
from stream_monitor.core.state import (KINDS, RecordError, RecordKey, TaskId, decode_key, decode_value, encode_key,
                                       encode_value)
from tests.streams import every_kind_config, every_kind_stream


def every_record() -> tuple[dict[RecordKey, object], dict[RecordKey, object], object, dict[RecordKey, object]]:
    """The records of a monitor, of a scale-out pane builder fed the every-kind stream and of its deciding
    stage (each of another task)."""
    cfg = parse_config({"models": every_kind_config()})
    preds, labels = every_kind_stream(np.random.default_rng(3))
    mon = Monitor(cfg)
    mon.process_batch(preds, labels)
    refs = {name: mm.reference for name, mm in mon.models.items() if mm.reference is not None}
    builder = PaneBuilder(parse_config({"models": every_kind_config(), "scale_out": {"enabled": True}}), 0, 2, refs)
    builder.process_batch(PredictionBatch.from_events(preds, builder.cfg.models), [])
    built = builder.checkpoint(1.0)
    # the deciding stage: count windows hold the events of partition 0 until partition 1 has reported
    decider = Monitor(builder.cfg, refs, merged=True, sources=2)
    decider.process_panes([decode_record(orjson.loads(orjson.dumps(r))) for _, r in built.outputs])
    return mon.checkpoint().records, built.records, cfg, decider.checkpoint().records


def test_every_kind_is_written_and_round_trips_through_its_codec():
    monitor_records, builder_records, cfg, decider_records = every_record()
    kinds = {k.kind for k in monitor_records} | {k.kind for k in builder_records} | {k.kind for k in decider_records}
    assert kinds == set(KINDS), "a kind in the registry that nothing writes, or the reverse"
    for key, value in [*monitor_records.items(), *builder_records.items(), *decider_records.items()]:
        raw = encode_value(key, value)
        assert raw is not None
        assert decode_value(key, raw) == orjson.loads(orjson.dumps(value)), key
        task = TaskId(3, merged=key.kind == "o")
        assert decode_key(encode_key(task, key)) == (task, key)
    restored = {k: decode_value(k, encode_value(k, v)) for k, v in monitor_records.items()}
    again = Monitor(cfg)
    state = {k: v for k, v in restored.items() if k.topic == "state"}
    join = {k: v for k, v in restored.items() if k.topic == "join"}
    assert sorted(again.restore(state, join)) == sorted(cfg.models)
    assert again.counters.restore_errors == 0
    merged = Monitor(parse_config({"models": every_kind_config(), "scale_out": {"enabled": True}}),
                     {name: mm.reference for name, mm in again.models.items() if mm.reference is not None},
                     merged=True, sources=2)
    decided = {k: decode_value(k, encode_value(k, v)) for k, v in decider_records.items()}
    waiting = {k for k in decided if k.kind == "m"}
    assert waiting and sorted(merged.restore(decided, {})) == sorted(cfg.models)
    assert merged.counters.restore_errors == 0
    assert sum(mm.merge.waiting for mm in merged.models.values() if mm.merge) == sum(
        decided[k]["cols"]["n"] for k in waiting) > 0


def test_a_performance_pair_sample_is_a_list_and_survives_the_codec():
    records, _, _, _ = every_record()
    perf = [(k, v) for k, v in records.items() if k.kind == "perf"]
    assert perf and all(isinstance(v, list) and v for _, v in perf)
    key, value = perf[0]
    assert decode_value(key, encode_value(key, value)) == orjson.loads(orjson.dumps(value))


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"{\"cap\": 3}", "no version"),  # a record of the format before versioned records
    (b"[1, 2]", "no version"),
    (b"{\"v\": 99, \"d\": {}}", "unsupported version"),
    (b"{\"v\": 0, \"d\": {}}", "unsupported version"),
    (b"{\"v\": true, \"d\": {}}", "no version"),
    (b"{\"v\": 1, \"d\": [1, 2]}", "wrong shape"),
])
def test_an_unusable_value_is_refused_with_its_reason(raw, reason):
    with pytest.raises(RecordError) as err:
        decode_value(RecordKey("m", "w", "3"), raw)
    assert err.value.reason == reason


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"3", b"3/m", b"x3/m/core", b"3/m/nope", b"3/m/w",
                                 b"3/m/core/extra", b"-1/m/core", b"\xd9\xa3/m/core", b"3//core"])
def test_an_unusable_key_is_refused(raw):
    with pytest.raises(RecordError):
        decode_key(raw)


def test_keys_print_as_documented():
    assert encode_key(TaskId(3), RecordKey("fraud", "w", "17")) == b"3/fraud/w/17"
    assert encode_key(TaskId(0, merged=True), RecordKey("fraud", "core")) == b"p0/fraud/core"
    assert encode_key(TaskId(3), RecordKey("fraud", "join", "p/s/2")) == b"3/fraud/join/p/s/2"
    assert decode_key(b"3/fraud/join/p/s/2") == (TaskId(3), RecordKey("fraud", "join", "p/s/2"))
    assert str(TaskId.parse("p12")) == "p12" and TaskId.parse("p12") == TaskId(12, True)


def test_a_value_of_the_wrong_shape_is_never_written():
    with pytest.raises(TypeError):
        encode_value(RecordKey("m", "perf", "3"), {"not": "a list"})
    assert encode_value(RecordKey("m", "core"), None) is None  # a tombstone
