"""On a real broker: the monitor's whole output is the same whatever the batch size, and under SIGKILLs at
random points, as the pure core's on the same records (which tests/core/test_determinism.py shows does not
depend on how the stream is cut). Predictions and labels (before and after their predictions, some never, a
gap in prediction time far longer than ``ttl_s + label_stall_s``, drift, a concept flip and recovery) are on
the topics before the monitor starts: it reads them as a replay does, each topic at its own pace."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from stream_monitor.config import parse_config
from tests.core.test_determinism import RAW, arrival, live, stream
from tests.kafka.chaos import (MonitorProcess, kill_mid_stream, produce_partitioned, read_committed,
                               wait_committed)
from tests.kafka.helpers import create_topic
from tests.kafka.test_exactly_once import eos_config

pytestmark = pytest.mark.kafka


@pytest.fixture(autouse=True)
def _reap_monitors():
    yield
    MonitorProcess.reap()


def summary(alerts: list[dict], signals: list[dict], reports: list[dict]) -> dict[str, Any]:
    return {
        "alerts": Counter((a["alert_id"], a["status"], a["kind"], a["severity"]) for a in alerts),
        "breaker": Counter((s["model"], s["epoch"], s["state"]) for s in signals),
        "drift": Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in reports if r["type"] == "drift"),
        "performance": Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in reports
                               if r["type"] == "performance"),
    }


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in want:
        extra, missing = got[key] - want[key], want[key] - got[key]
        assert not extra and not missing, f"{key}: {len(extra)} extra {list(extra)[:3]}, " \
                                          f"{len(missing)} missing {list(missing)[:3]}"


def published(bootstrap: str, raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(raw)
    alerts = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.alerts)]
    signals = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.breaker) if m.value()]
    reports = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.metrics)]
    return summary(alerts, [s for s in signals if s.get("source") == "monitor"], reports)


@pytest.fixture(scope="module")
def inputs(kafka_bootstrap):
    """The stream on two topics (one partition each, keyed by model), and what the core publishes for it."""
    suffix = f"{np.random.default_rng().integers(1 << 30):x}"
    topics = {"predictions": f"det-pred-{suffix}", "labels": f"det-labels-{suffix}"}
    preds, labels = stream()
    for name in topics.values():
        create_topic(kafka_bootstrap, name)
    produce_partitioned(kafka_bootstrap, topics["predictions"], {0: preds})
    produce_partitioned(kafka_bootstrap, topics["labels"], {0: labels})
    cfg = parse_config(RAW)
    outs = live(cfg, preds, labels, 500)
    want = summary([a.to_dict() for o in outs for a in o.alerts], [s.to_dict() for o in outs for s in o.signals],
                   [orjson.loads(orjson.dumps(r)) for o in outs for r in o.reports])
    return topics, preds, labels, want


def run_config(run_id: str, topics: dict[str, str], max_messages: int) -> dict[str, Any]:
    raw = eos_config(run_id, RAW["models"])
    raw["topics"] = {**raw["topics"], **topics}
    raw["batch"] = {**raw["batch"], "max_messages": max_messages}
    return raw


@pytest.mark.parametrize("max_messages", [1, 7, 5000])
def test_the_output_does_not_depend_on_the_batch_size(kafka_bootstrap, run_id, tmp_path, inputs, max_messages):
    topics, preds, labels, want = inputs
    raw = run_config(run_id, topics, max_messages)
    cfg = parse_config(raw)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m").start()
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, topics["predictions"], {0: len(preds)}, 240, [proc])
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, topics["labels"], {0: len(labels)}, 60, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    assert_same(published(kafka_bootstrap, raw), want)


def test_five_sigkills_on_a_live_stream_change_nothing(kafka_bootstrap, run_id, tmp_path, inputs):
    """The same records produced live (in arrival order, both topics) while the monitor is killed five times
    at random points and restarted."""
    _, preds, labels, want = inputs
    topics = {"predictions": f"pred-{run_id}", "labels": f"labels-{run_id}"}
    for name in topics.values():
        create_topic(kafka_bootstrap, name)
    raw = run_config(run_id, topics, 200)
    raw["kafka"] = {**raw["kafka"], "commit_interval_s": 0.1}
    cfg = parse_config(raw)
    feeder = threading.Thread(target=feed, args=(kafka_bootstrap, topics, arrival(preds, labels), 300.0),
                              daemon=True)
    feeder.start()
    rng = np.random.default_rng(43)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m")
    progress = []
    for _ in range(5):
        got = kill_mid_stream(proc, kafka_bootstrap, cfg.kafka.group_id, topics["predictions"], [0], rng, most_s=2.0)
        progress.append(got[0])
    proc.start()
    try:
        feeder.join(120)
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, topics["predictions"], {0: len(preds)}, 240, [proc])
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, topics["labels"], {0: len(labels)}, 60, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    assert sum(0 < p < len(preds) for p in progress) >= 4, f"kills must land mid-stream: {progress}"
    assert_same(published(kafka_bootstrap, raw), want)


def feed(bootstrap: str, topics: dict[str, str], records: list[tuple[str, dict[str, Any]]], per_s: float) -> None:
    """Produce ``(kind, event)`` records in order to the predictions ("p") or labels topic, at ``per_s``."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    step = max(1, int(per_s / 20))
    for i in range(0, len(records), step):
        for kind, ev in records[i:i + step]:
            p.produce(topics["predictions" if kind == "p" else "labels"], key=ev["model"].encode(),
                      value=orjson.dumps(ev), partition=0)
        p.poll(0)
        time.sleep(0.05)
    assert p.flush(60) == 0
