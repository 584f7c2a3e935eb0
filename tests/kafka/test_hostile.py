"""Hostile messages through a real broker: each is dead-lettered with its class, nothing stops the monitor,
and the statistics of the clean events around them are those of the clean events alone."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from stream_monitor.core.events import Limits
from tests.core import contract_oracle, hostile
from tests.kafka.helpers import Running, config, create_topic, read_all

pytestmark = pytest.mark.kafka

_LIMITS = Limits(max_message_bytes=65536, max_string_length=1024)  # the broker's message size bounds the corpus


def _clean(n: int, rng: np.random.Generator, shift: float = 0.0) -> list[bytes]:
    x, y = rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n)
    c = rng.choice(["a", "b", "c"], n)
    return [orjson.dumps({"event_id": f"c{i}", "model": "m", "model_version": "v1", "timestamp": 1_700_000_000 + i,
                          "features": {"x": float(x[i]), "y": float(y[i]), "c": str(c[i])},
                          "prediction": "yes" if x[i] > 0 else "no", "score": 0.5}) for i in range(n)]


def _hostile() -> list[tuple[str, bytes | None, str]]:
    """The corpus cases the contract rejects, with their class under this test's limits."""
    out = []
    for name, raw, _ in hostile.CORPUS:
        if raw is not None and len(raw) > 900_000:  # above the broker's default max.message.bytes
            raw = hostile.event(trace=b'"' + b"t" * 70_000 + b'"')  # still too large for the monitor
        v = contract_oracle.decide(raw, hostile.models(), max_message_bytes=_LIMITS.max_message_bytes, hi=2e9)
        if v.kind not in ("accept", "unknown"):
            out.append((name, raw, v.kind))
    return out


def _reports(bootstrap: str, topic: str, windows: int) -> list[dict]:
    msgs = read_all(bootstrap, topic, lambda ms: sum(orjson.loads(m.value())["type"] == "drift" for m in ms)
                    >= windows, timeout=120)
    return [r for r in map(orjson.loads, (m.value() for m in msgs)) if r["type"] == "drift"]


def test_each_hostile_message_is_dead_lettered_with_its_class_and_the_statistics_are_unchanged(
        kafka_bootstrap, run_id):
    rng = np.random.default_rng(41)
    clean = _clean(1000, rng) + _clean(1000, rng, shift=0.7)
    cases = _hostile()
    assert len(cases) >= 30
    mixed: list[bytes | None] = []
    step = len(clean) // len(cases)
    for i, raw in enumerate(clean):
        mixed.append(raw)
        if i % step == 0 and i // step < len(cases):
            mixed.append(cases[i // step][1])
    model = {"features": {"numeric": ["x", "y"], "categorical": ["c"]}, "prediction": "categorical",
             "window": {"size": 250}, "reference": {"size": 500}}
    events = {"max_message_bytes": _LIMITS.max_message_bytes, "max_string_length": _LIMITS.max_string_length,
              "min_timestamp": 946684800}
    runs = {}
    for name, values in (("clean", clean), ("mixed", mixed)):
        cfg = config(f"{run_id}-{name}", {"m": model}, events=events)
        create_topic(kafka_bootstrap, cfg.topics.predictions)
        with Running(cfg, kafka_bootstrap) as run:
            producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
            for v in values:  # a None value is a tombstone: the "empty" case
                producer.produce(cfg.topics.predictions, key=b"m", value=v)
            assert producer.flush(30) == 0
            run.wait_consumed(len(values), timeout=120)
            reports = _reports(kafka_bootstrap, cfg.topics.metrics, 6)
            dlq = read_all(kafka_bootstrap, cfg.topics.dead_letter, lambda ms: len(ms) >= len(values) - len(clean),
                           timeout=60) if name == "mixed" else []
            assert run.thread.is_alive()
        runs[name] = (reports, dlq)
    # every hostile message is a dead letter, in order, with its class and the original bytes
    dlq = runs["mixed"][1]
    assert [dict(m.headers())["error.class"].decode() for m in dlq] == [cls for _, _, cls in cases]
    assert [m.value() for m in dlq] == [raw for _, raw, _ in cases]
    assert all(dict(m.headers())["error.reason"] for m in dlq)
    # the windows of the clean events are the same, statistic for statistic, with or without the hostile ones
    def findings(reports):
        return [(r["window"]["index"], r["window"]["events"],
                 sorted((f["feature"], f["statistic"], f["value"]) for f in r["findings"])) for r in reports]
    assert findings(runs["mixed"][0]) == findings(runs["clean"][0])
    assert any(f for _, _, f in findings(runs["clean"][0]))  # the shift is there to be seen
