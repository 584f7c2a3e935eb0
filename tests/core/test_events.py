import orjson
import pytest

from stream_monitor.core.events import TimeRange, decode_labels, decode_predictions, parse_timestamp


def ev(**over):
    base = {"event_id": "e1", "model": "m", "model_version": "v1", "timestamp": 1700000000,
            "features": {"a": 1.0}, "prediction": "yes", "score": 0.9}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (None, "empty message"),
        (ev(event_id=...), "'event_id'"),
        (ev(model=3), "'model'"),
        (ev(features=[1, 2]), "'features'"),
        (ev(prediction=...), "'prediction'"),
        (ev(prediction={"a": 1}), "'prediction'"),
        (ev(score="high"), "'score'"),
        (ev(latency_ms=-1), "'latency_ms'"),
        (ev(timestamp="yesterday"), "'timestamp'"),
        (ev(timestamp=...), "'timestamp'"),
        (ev(timestamp=1700000000000), "milliseconds"),
        (ev(segment={"country": 1}), "'segment'"),
    ],
)
def test_malformed_predictions_are_rejected_with_reason(raw, reason):
    events, positions, rejects = decode_predictions([ev(), raw, ev(event_id="e2")])
    assert [e["event_id"] for e in events] == ["e1", "e2"]
    assert positions == [0, 2]
    assert len(rejects) == 1 and rejects[0].index == 1
    assert reason in rejects[0].reason


def test_iso_timestamps_are_parsed():
    assert parse_timestamp("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_timestamp("2026-01-01T00:00:00") == 1767225600.0  # naive is UTC


def test_feature_values_of_any_type_are_accepted():
    events, _, rejects = decode_predictions([ev(features={"a": "x", "b": None, "c": True, "d": [1]})])
    assert len(events) == 1 and not rejects


def test_labels_decode():
    good = orjson.dumps({"event_id": "e1", "model": "m", "label": 1, "timestamp": "2026-01-01T00:00:00Z"})
    bad = orjson.dumps({"event_id": "e1", "model": "m", "timestamp": 1})
    events, _, rejects = decode_labels([good, bad])
    assert events[0]["timestamp"] == 1767225600.0
    assert "'label'" in rejects[0].reason


def test_labels_carrying_their_prediction_decode_and_bad_ones_are_rejected():
    base = {"event_id": "e1", "model": "m", "label": 1, "timestamp": 1767225600}
    good = [{**base, "prediction": "1", "score": 0.7, "prediction_timestamp": "2025-12-01T00:00:00Z"},
            {**base, "prediction": 2.5}]
    bad = [({**base, "score": 0.7}, "need its 'prediction'"), ({**base, "prediction": [1]}, "'prediction'"),
           ({**base, "prediction": "1", "score": "high"}, "'score'"),
           ({**base, "prediction": "1", "prediction_timestamp": "soon"}, "'prediction_timestamp'")]
    events, _, rejects = decode_labels([orjson.dumps(e) for e in good + [b for b, _ in bad]])
    assert events[0]["prediction_timestamp"] == 1764547200.0 and len(events) == 2
    assert [r.index for r in rejects] == [2, 3, 4, 5]
    for r, (_, why) in zip(rejects, bad):
        assert why in r.reason, r.reason


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59Z", 4102444800, "1970-01-02T00:00:00Z", 86400])
def test_implausible_event_times_are_rejected_with_the_reason(stamp):
    # one event in year 9999 would move every watermark for good; epoch 0-ish is a default value, not a time
    times = TimeRange(min_t=946684800.0, max_future_s=86400.0)
    for decode in (decode_predictions, decode_labels):
        raw = ev(timestamp=stamp) if decode is decode_predictions else orjson.dumps(
            {"event_id": "e1", "model": "m", "label": 1, "timestamp": stamp})
        events, _, rejects = decode([raw], times)
        assert events == [] and len(rejects) == 1
        assert "events.max_future_s" in rejects[0].reason or "events.min_timestamp" in rejects[0].reason


def test_event_times_within_the_plausible_range_pass():
    import time

    times = TimeRange(min_t=946684800.0, max_future_s=3600.0)
    now = time.time()
    events, _, rejects = decode_predictions([ev(timestamp=now + 1800), ev(timestamp=1.0e9)], times)
    assert len(events) == 2 and rejects == []
