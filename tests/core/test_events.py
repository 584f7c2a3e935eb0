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


# ---- the typed fast path decides exactly as the general path ------------------------------------------------

def _models(segments=()):
    from stream_monitor.config import parse_config

    return parse_config({"models": {
        "m": {"features": {"numeric": ["a", "b"], "categorical": ["c"]}, "prediction": "categorical",
              "monitor_score": True, "segments": {"keys": list(segments)}, "performance": {"task": "multiclass"}},
        "r": {"features": {"numeric": ["a"]}, "prediction": "numeric"},
    }}).models


def _mixed_batch(rng, n=400, segments=False):
    odd = [
        lambda i: ev(event_id=f"x{i}", features={"a": True, "b": 1}),  # a bool in a numeric feature: type error
        lambda i: ev(event_id=f"x{i}", features={"a": 1, "c": 7}),  # an integer category code
        lambda i: ev(event_id=f"x{i}", features={"a": "12", "c": None}),  # a string in a numeric feature
        lambda i: ev(event_id=f"x{i}", timestamp="2023-11-14T22:13:20Z"),  # ISO time
        lambda i: ev(event_id=f"x{i}", model="nobody"),  # an unconfigured model
        lambda i: ev(event_id=f"x{i}", score=True),  # reject
        lambda i: ev(event_id=f"x{i}", latency_ms=-3),  # reject
        lambda i: ev(event_id=f"x{i}", timestamp=5.0),  # implausible time: reject
        lambda i: ev(event_id=f"x{i}", timestamp=1700000000000),  # milliseconds: reject
        lambda i: ev(event_id=f"x{i}", event_id_=None) if False else b"{broken",
        lambda i: None,
        lambda i: ev(event_id="", model="m"),
        lambda i: ev(event_id=f"x{i}", segment={"country": "nl"}),
        lambda i: ev(event_id=f"x{i}", segment={"country": 3}),  # reject
        lambda i: ev(event_id=f"x{i}", model="r", prediction=2.5, features={"a": None}),
        lambda i: ev(event_id=f"x{i}", model="r", prediction="high", features={}),  # type error, not reject
        lambda i: ev(event_id=f"x{i}", features={"a": 1, "b": 2.5, "c": "u", "extra": [1, {"z": 2}]}),
        lambda i: ev(event_id=f"x{i}", prediction=1, score=None, latency_ms=None),
    ]
    out = []
    for i in range(n):
        if rng.random() < 0.3:
            out.append(odd[int(rng.integers(len(odd)))](i))
        else:
            extra = {}
            if segments and rng.random() < 0.9:  # some with one key, some with an unconfigured one too
                extra["segment"] = {"country": str(rng.choice(["nl", "de", "fr"]))} | (
                    {"device": str(rng.choice(["ios", "android"]))} if rng.random() < 0.7 else {}) | (
                    {"tier": "gold"} if rng.random() < 0.1 else {})
            out.append(ev(event_id=f"e{i}", features={"a": float(rng.normal()), "b": int(rng.integers(9)),
                                                      "c": str(rng.choice(["p", "q"]))},
                          latency_ms=float(rng.gamma(2.0, 3.0)), **extra))
    return out


def _same_columns(x, y):
    import numpy as np

    for f in x.__slots__:
        if f == "codes":  # the compiled decoder's encoding, checked by what the panes count
            continue
        a, b = getattr(x, f), getattr(y, f)
        assert a.shape == b.shape, f
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=f)
        else:
            assert a.tolist() == b.tolist(), f


@pytest.mark.parametrize(("seed", "n", "segments"), [(0, 400, ()), (1, 400, ()), (2, 3000, ()),
                                                     (3, 400, ("country", "device")), (4, 3000, ("device",))])
@pytest.mark.parametrize("compiled", [True, False])
def test_the_typed_decoder_decides_as_the_general_path(seed, n, segments, compiled):
    import numpy as np

    from stream_monitor.core.events import PredictionDecoder

    models = _models(segments)
    values = _mixed_batch(np.random.default_rng(seed), n, bool(segments))
    assert_decides_as_the_general_path(PredictionDecoder(models, TimeRange(946684800.0, 86400.0), compiled),
                                       values, segments)


def assert_decides_as_the_general_path(decoder, values, segments=()):
    """``decoder`` (a PredictionDecoder) gives the general path's rejects, unknown models, columns and events."""
    from stream_monitor.core.events import PredictionBatch

    models, times = decoder.models, decoder.times
    fast = decoder.decode(values)
    events, positions, rejects = decode_predictions(values, times)
    general = PredictionBatch.from_events(events, models)
    assert [(r.index, r.reason) for r in fast.rejects] == [(r.index, r.reason) for r in rejects]
    assert fast.unknown == {positions[i]: name for i, name in general.unknown.items()}
    assert fast.count == len(events)
    assert sorted(fast.models) == sorted(general.models)
    for name, me in general.models.items():
        assert fast.models[name].positions == [positions[i] for i in me.positions]
        _same_columns(fast.models[name].cols, me.cols)
        assert me.cols.segment.shape[1] == len(models[name].segments.keys)
        if segments and name == "m":  # the segment values reach the columns on both paths
            assert {v for v in me.cols.segment[:, 0].tolist() if v is not None}
        if models[name].uses_labels:  # the label join's events (only such models have them)
            keep = ("event_id", "model_version", "timestamp", "prediction", "score")
            assert [{k: e.get(k) for k in keep} for e in fast.models[name].events()] == \
                   [{k: e.get(k) for k in keep} for e in me.events()]


@pytest.mark.parametrize("compiled", [True, False])
def test_a_clean_batch_takes_the_typed_path_and_a_bad_message_does_not_spoil_it(monkeypatch, compiled):
    from stream_monitor.core import events as mod

    models = _models()
    calls = []
    real = mod.decode_predictions
    monkeypatch.setattr(mod, "decode_predictions", lambda v, *a: calls.append(len(v)) or real(v, *a))
    dec = mod.PredictionDecoder(models, compiled=compiled)
    batch = dec.decode([ev(event_id=f"e{i}") for i in range(50)])
    assert calls == [] and batch.models["m"].positions == list(range(50))
    batch = dec.decode([ev(event_id=f"e{i}") for i in range(50)] + [b"{broken"])
    assert calls == [1] and len(batch.rejects) == 1 and batch.models["m"].cols.n == 50
    batch = dec.decode([ev(event_id=f"e{i}") for i in range(3000)])  # several chunks, one model
    assert batch.models["m"].positions == list(range(3000))
    assert [e["event_id"] for e in batch.models["m"].events()] == [f"e{i}" for i in range(3000)]


@pytest.mark.parametrize("compiled", [True, False])
def test_the_typed_decoder_takes_feature_names_that_are_not_identifiers(compiled):
    from stream_monitor.config import parse_config
    from stream_monitor.core.events import PredictionDecoder

    models = parse_config({"models": {"m": {"features": {"numeric": ["credit.score", "class", "f0"],
                                                         "categorical": ["zip-code"]}}}}).models
    batch = PredictionDecoder(models, compiled=compiled).decode([ev(features={
        "credit.score": 700, "class": 1.5, "f0": -1, "zip-code": "1012"})])
    cols = batch.models["m"].cols
    assert cols.numeric[0, :3].tolist() == [700.0, 1.5, -1.0] and cols.categorical[0, 0] == "1012"
