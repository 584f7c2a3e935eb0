"""The JSON Schemas shipped in the package describe what the code reads and writes."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core.events import decode_labels, decode_predictions
from stream_monitor.core.monitor import Monitor
from stream_monitor.kafka.demo import loan_events
from tests.streams import make_events, model_config


def schema(name: str) -> dict:
    return json.loads(resources.files("stream_monitor").joinpath(f"schemas/{name}.schema.json").read_text())


@pytest.mark.parametrize("name", ["prediction", "label", "alert", "breaker"])
def test_schemas_are_valid_json_schema(name):
    jsonschema.Draft202012Validator.check_schema(schema(name))


def test_demo_events_follow_the_prediction_contract():
    v = jsonschema.Draft202012Validator(schema("prediction"))
    for ev in loan_events(50, np.random.default_rng(0)):
        v.validate(ev)


@pytest.mark.parametrize("bad", [
    {"event_id": "e", "model": "m", "timestamp": 1, "features": {}, "prediction": 1},  # no model_version
    {"event_id": "e", "model": "m", "model_version": "v", "timestamp": 1, "features": [], "prediction": 1},
    {"event_id": "e", "model": "m", "model_version": "v", "timestamp": 1, "features": {}, "prediction": [1]},
    {"event_id": "e", "model": "m", "model_version": "v", "timestamp": 1, "features": {}, "prediction": 1,
     "score": "x"},
])
def test_schema_and_decoder_reject_the_same_events(bad):
    assert not jsonschema.Draft202012Validator(schema("prediction")).is_valid(bad)
    _, _, rejects = decode_predictions([orjson.dumps(bad)])
    assert len(rejects) == 1


def test_label_example_follows_the_contract():
    jsonschema.validate({"event_id": "e1", "model": "m", "label": 1, "timestamp": "2026-01-01T00:00:00Z"},
                        schema("label"))


def test_labels_carrying_their_prediction_follow_the_contract_and_the_decoder_agrees():
    base = {"event_id": "e1", "model": "m", "label": 1, "timestamp": 1767225600}
    v = jsonschema.Draft202012Validator(schema("label"))
    good = {**base, "prediction": "1", "score": 0.7, "prediction_timestamp": 1764547200}
    v.validate(good)
    assert not decode_labels([orjson.dumps(good)])[2]
    for bad in ({**base, "score": 0.7}, {**base, "prediction_timestamp": 1}, {**base, "prediction": [1]},
                {**base, "prediction": "1", "score": "x"}):
        assert not v.is_valid(bad)
        assert len(decode_labels([orjson.dumps(bad)])[2]) == 1


def test_alert_events_follow_the_alert_contract():
    mon = Monitor(parse_config({"models": {"m": model_config()}}))
    rng = np.random.default_rng(5)
    alerts = []
    for i in range(12):
        a = mon.process(make_events(1000, rng, start=i * 1000, a_mean=1.0 if i >= 7 else 0.0,
                                     missing_c=0.3 if i >= 7 else 0.0))
        alerts += a.alerts
    assert {a.kind for a in alerts} == {"data_drift", "data_quality"}
    v = jsonschema.Draft202012Validator(schema("alert"))
    for a in alerts:
        v.validate(orjson.loads(orjson.dumps(a.to_dict())))


def test_label_and_latency_alerts_and_breaker_signals_follow_their_contracts():
    from tests.streams import classifier_config, labeled_stream

    model = classifier_config(performance={"task": "binary", "positive_label": "1", "window_s": 600,
                                           "maturity_s": 600, "min_labels": 50, "min_coverage": 0.95,
                                           "thresholds": {"accuracy": {"min": 0.6}}},
                              concept_drift=[{"type": "adwin"}], latency={"sla_p99_ms": 50, "windows": 2},
                              breaker={"enabled": True, "primary_version": "v1", "fallback_version": "v0",
                                       "rules": [{"kinds": ["performance"], "windows": 1}], "hold_down_s": 600})
    mon = Monitor(parse_config({"models": {"clf": model}}))
    rng = np.random.default_rng(7)
    alerts, signals = [], []
    for i in range(14):
        p, lab = labeled_stream(1200, rng, start=i * 1200, flip=i >= 7, latency_ms=20 if i < 7 else 60)
        for out in (mon.process(p), mon.process_labels(lab)):
            alerts += out.alerts
            signals += out.signals
    assert {a.kind for a in alerts} >= {"performance", "concept_drift", "latency", "label_coverage"}
    assert signals
    va = jsonschema.Draft202012Validator(schema("alert"))
    for a in alerts:
        va.validate(orjson.loads(orjson.dumps(a.to_dict())))
    vb = jsonschema.Draft202012Validator(schema("breaker"))
    for s in signals:
        vb.validate(orjson.loads(orjson.dumps(s.to_dict())))


def test_slice_alerts_follow_the_alert_contract():
    from tests.streams import make_segmented_events, segmented_config

    mon = Monitor(parse_config({"models": {"seg": segmented_config()}}))
    rng = np.random.default_rng(6)
    out = mon.process(make_segmented_events(5000, rng) + make_segmented_events(6000, rng, start=5000,
                                                                               shifted="eu", shift=1.0))
    sliced = [a for a in out.alerts if a.segment is not None]
    assert sliced
    v = jsonschema.Draft202012Validator(schema("alert"))
    for a in out.alerts:
        v.validate(orjson.loads(orjson.dumps(a.to_dict())))
    p = jsonschema.Draft202012Validator(schema("prediction"))
    p.validate(make_segmented_events(1, rng)[0])
