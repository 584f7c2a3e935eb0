"""The running monitor against a real broker: drift alerts, dead letters, offsets."""

from __future__ import annotations

import os
import time

import numpy as np
import orjson
import pytest

from stream_monitor.core.state import TaskId
from stream_monitor.kafka.runner import MonitorService
from tests.kafka.helpers import Running, committed, config, create_topic, produce, read_all
from tests.streams import make_events, model_config

pytestmark = pytest.mark.kafka


def test_drifting_feature_is_alerted_and_stable_ones_are_not(kafka_bootstrap, run_id):
    cfg = config(run_id, {"m": model_config(window={"size": 1000}, reference={"size": 3000})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(31)
    events = make_events(5000, rng) + make_events(4000, rng, start=5000, a_mean=0.8)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, events)
        alerts = read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1, timeout=90)
    assert alerts, "no alert arrived on the alert topic"
    bodies = [orjson.loads(m.value()) for m in alerts]
    assert {b["feature"] for b in bodies} == {"a"}
    first = bodies[0]
    assert first["status"] == "firing" and first["kind"] == "data_drift" and first["statistic"] == "psi"
    assert first["model"] == "m" and first["model_version"] == "v1"
    assert first["value"] > first["threshold"] and first["reference_id"].startswith("warmup:")
    assert alerts[0].key() == b"m/data_drift"  # grouped: one incident per model and kind
    # the location shift is seen by PSI and by the rank-sum test: two conditions of one feature, one incident
    assert [(f["feature"], f["statistic"]) for f in first["features"]] == [("a", "psi"), ("a", "rank_sum")]
    assert run.service.stats.dead_letters == 0


@pytest.mark.parametrize("decode_ahead", [False, True], ids=["in-turn", "decode-ahead"])
def test_malformed_events_go_to_the_dead_letter_topic_and_later_events_are_processed(kafka_bootstrap, run_id,
                                                                                      decode_ahead):
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})},
                 batch={"max_messages": 700, "decode_ahead": decode_ahead})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(32)
    good = make_events(1000, rng)
    bad = [b"{not json", orjson.dumps({"event_id": "x", "model": "m"}), orjson.dumps([1, 2, 3]),
           orjson.dumps({**make_events(1, rng)[0], "timestamp": "not a time"})]
    after = make_events(3000, rng, start=1000, a_mean=1.0)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, good + bad + after)
        run.wait_consumed(len(good) + len(bad) + len(after))
        dlq = read_all(kafka_bootstrap, cfg.topics.dead_letter, lambda ms: len(ms) >= 4)
        alerts = read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1)
    assert [m.value() for m in dlq] == bad  # the original bytes, in order
    headers = [dict(m.headers()) for m in dlq]
    assert b"invalid JSON" in headers[0]["error.reason"]
    assert b"'model_version'" in headers[1]["error.reason"]
    assert b"JSON object" in headers[2]["error.reason"]
    assert b"'timestamp'" in headers[3]["error.reason"]
    assert [h["source.topic"] for h in headers] == [cfg.topics.predictions.encode()] * 4
    assert [int(h["source.offset"]) for h in headers] == [1000, 1001, 1002, 1003]
    assert all(h["source.partition"] == b"0" for h in headers)
    # the valid events after the bad ones were monitored: their drift was alerted
    assert {orjson.loads(m.value())["feature"] for m in alerts} == {"a"}


def test_offsets_are_committed_only_for_processed_events(kafka_bootstrap, run_id):
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(33)
    n = produce(kafka_bootstrap, cfg.topics.predictions, make_events(2500, rng))
    with Running(cfg, kafka_bootstrap) as run:
        run.wait_consumed(n)
    # close() committed what was stored: exactly everything processed
    assert committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions) == n
    # a restart in the same group starts after the last processed event: nothing re-read, nothing skipped
    more = produce(kafka_bootstrap, cfg.topics.predictions, make_events(300, rng, start=n))
    with Running(cfg, kafka_bootstrap) as run:
        run.wait_consumed(more)
    assert run.service.stats.messages == more
    # the loop stamps its progress at each batch's end: messages, then its wall clock and thread CPU time
    done, at, cpu = run.service.stats.progress
    assert done == more and 0 < at <= time.perf_counter() and cpu > 0
    assert committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions) == n + more


def test_monitor_creates_the_topics_it_owns_with_compaction_for_the_breaker(kafka_bootstrap, run_id):
    from confluent_kafka.admin import AdminClient, ConfigResource

    cfg = config(run_id, {"m": model_config()})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    with Running(cfg, kafka_bootstrap):
        pass
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert {cfg.topics.alerts, cfg.topics.breaker, cfg.topics.dead_letter} <= set(topics)
    res = ConfigResource(ConfigResource.Type.TOPIC, cfg.topics.breaker)
    conf = list(admin.describe_configs([res]).values())[0].result(10)
    assert conf["cleanup.policy"].value == "compact"


def test_prometheus_metrics_report_health_and_figures(kafka_bootstrap, run_id):
    import socket
    import urllib.request

    from stream_monitor.exporter import MonitorMetrics

    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(35)
    events = make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
    n = produce(kafka_bootstrap, cfg.topics.predictions, [*events, b"not json"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = MonitorMetrics()
    metrics.serve(port, "127.0.0.1")
    with Running(cfg, kafka_bootstrap, metrics=metrics) as run:
        run.wait_consumed(n)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines[f'stream_monitor_messages_total{{topic="{cfg.topics.predictions}"}}']) == n
    assert float(lines["stream_monitor_dead_letters_total"]) == 1
    assert float(lines['stream_monitor_windows_total{model="m"}']) == 4
    assert float(lines['stream_monitor_alerts_total{kind="data_drift",model="m",severity="critical",status="firing"}']) == 1
    assert float(lines['stream_monitor_drift_statistic{feature="a",kind="data_drift",model="m",statistic="psi"}']) > 0.25
    assert float(lines['stream_monitor_drift_statistic{feature="b",kind="data_drift",model="m",statistic="psi"}']) < 0.1


def test_a_state_topic_that_is_not_compacted_is_refused_with_a_clear_message(kafka_bootstrap, run_id):
    from stream_monitor.kafka.clients import TopicConfigError

    cfg = config(run_id, {"m": model_config()})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.state)  # as a broker auto-creates it: cleanup.policy=delete
    with pytest.raises(TopicConfigError, match=f"{cfg.topics.state} \\(cleanup.policy=delete\\)"):
        MonitorService(cfg, kafka_bootstrap).run()


def test_hostile_and_malformed_records_on_the_compacted_topics_are_skipped(kafka_bootstrap, run_id, tmp_path):
    import base64
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000},
                                            concept_drift=[{"type": "adwin"}],
                                            performance={"task": "binary", "positive_label": "yes"})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.labels)
    with Running(cfg, kafka_bootstrap):  # creates the compacted topics
        pass
    payload = base64.b64encode(pickle.dumps([Evil()])).decode()
    junk: list[tuple[str, bytes | None, bytes]] = [
        (cfg.topics.state, b"0/m/core",
         orjson.dumps({"v": 1, "d": {"v": 1, "concept": {"types": ["adwin"], "state": payload}}})),
        (cfg.topics.state, b"\xff\xfe", b"{}"),
        (cfg.topics.state, b"0/m/w/1", b"[1, 2, 3]"),
        (cfg.topics.join, b"0/m/p/x", b"{\"t\": \"yesterday\"}"),
        (cfg.topics.join, b"0/m/join/l/y", b"nope"),
        (cfg.topics.breaker, b"m", b"{\"model\": \"m\", \"state\": \"melted\", \"epoch\": 1}"),
        (cfg.topics.breaker, b"m", b"[]"),
    ]
    for topic, key, value in junk:
        produce(kafka_bootstrap, topic, [value], key=key)
    rng = np.random.default_rng(36)
    events = make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, events)
        run.wait_consumed(len(events))
        alerts = read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1)
    assert not marker.exists()
    assert alerts, "the monitor must work on despite the junk"
    assert run.service.stats.skipped_records >= 5  # not JSON, not an object, bad key, bad breaker records
    assert run.service.stats.restore_errors == 1  # the core record with a pickle inside: model m starts afresh


def test_unknown_models_are_counted_and_optionally_dead_lettered(kafka_bootstrap, run_id):
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})},
                 events={"unknown_models": "dead_letter"})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(37)
    stray = make_events(30, rng, model="fraud/eu")
    n = produce(kafka_bootstrap, cfg.topics.predictions, make_events(600, rng) + stray)
    with Running(cfg, kafka_bootstrap) as run:
        run.wait_consumed(n)
    dlq = read_all(kafka_bootstrap, cfg.topics.dead_letter, lambda ms: len(ms) >= 30)
    assert [orjson.loads(m.value())["event_id"] for m in dlq] == [e["event_id"] for e in stray]
    assert all(b"not in the config" in dict(m.headers())["error.reason"] for m in dlq)


def test_an_event_from_year_9999_is_dead_lettered_and_moves_no_watermark(kafka_bootstrap, run_id):
    cfg = config(run_id, {"m": model_config(window={"by": "time", "size": 500}, reference={"size": 1000})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(38)
    events = make_events(1000, rng)
    poison = {**make_events(1, rng, start=1000)[0], "timestamp": "9999-12-31T23:59:59Z"}
    after = make_events(3000, rng, start=1001)
    n = produce(kafka_bootstrap, cfg.topics.predictions, events + [poison] + after)
    with Running(cfg, kafka_bootstrap) as run:
        run.wait_consumed(n)
        dlq = read_all(kafka_bootstrap, cfg.topics.dead_letter, lambda ms: len(ms) >= 1)
        mon = run.service.tasks[TaskId(0)]
        assert mon.models["m"].late_events == 0  # the watermark never jumped: later events all counted
        assert mon.counters.windows >= 5
    assert len(dlq) == 1 and b"max_future_s" in dict(dlq[0].headers())["error.reason"]


def test_two_deployments_with_default_internal_topics_keep_their_state_apart(kafka_bootstrap, run_id):
    """Two groups on one cluster, one input, no internal topic named: each writes and restores only its own
    state. (With one shared state topic the second would restore the first's windows and resume mid-stream.)"""
    from tests.kafka.chaos import read_committed
    from tests.kafka.helpers import config_dict
    from stream_monitor.config import parse_config

    def deployment(name: str):
        raw = config_dict(f"{run_id}-{name}", {"m": model_config(window={"size": 500}, reference={"size": 1000})})
        raw["topics"] = {k: v for k, v in raw["topics"].items() if k not in ("state", "join")}
        raw["topics"]["predictions"] = f"pred-{run_id}"  # one input, read by both
        return parse_config(raw)

    a, b = deployment("a"), deployment("b")
    assert (a.topics.state, b.topics.state) == (f"monitor-{run_id}-a.state", f"monitor-{run_id}-b.state")
    create_topic(kafka_bootstrap, a.topics.predictions)
    n = produce(kafka_bootstrap, a.topics.predictions, make_events(3200, np.random.default_rng(39)))

    def windows(cfg) -> list[tuple]:
        reports = [orjson.loads(m.value()) for m in read_committed(kafka_bootstrap, cfg.topics.metrics)]
        return sorted((r["window"]["index"], r["window"]["start"], r["window"]["events"])
                      for r in reports if r["type"] == "drift")

    def state_keys(cfg) -> list[bytes]:
        return [m.key() for m in read_committed(kafka_bootstrap, cfg.topics.state)]

    with Running(a, kafka_bootstrap) as run:
        run.wait_consumed(n)
    a_state = state_keys(a)
    assert a_state and all(k.startswith(b"0/m/") for k in a_state)
    with Running(b, kafka_bootstrap) as run:
        run.wait_consumed(n)
    assert state_keys(a) == a_state, "the second deployment wrote into the first one's state topic"
    assert state_keys(b), "the second deployment has its own state topic"
    # it restored nothing of the first: its windows start from the warm-up, as the first one's did
    assert windows(a) == windows(b) and len(windows(b)) == 4
    # and the first one, restarted, resumes from its own state: nothing re-read, no window evaluated again
    with Running(a, kafka_bootstrap) as run:
        time.sleep(2)
    assert run.service.stats.messages == 0 and run.service.stats.windows == 0 and windows(a) == windows(b)


def test_a_page_is_committed_right_after_its_batch_not_at_the_next_interval(kafka_bootstrap, run_id):
    # a commit interval far longer than the test: the alert can only become visible through its own commit
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})},
                 kafka={"commit_interval_s": 60})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(40)
    events = make_events(1000, rng) + make_events(1500, rng, start=1000, a_mean=1.0)
    with Running(cfg, kafka_bootstrap) as run:
        started = time.monotonic()
        produce(kafka_bootstrap, cfg.topics.predictions, events)
        alerts = read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1, timeout=30)
        took = time.monotonic() - started
        assert alerts, "the alert must be visible to read_committed readers before the interval's commit"
        assert run.service.stats.page_commits >= 1
    print(f"alert visible {took:.2f}s after the stream was produced (commit interval 60 s)")
    assert took < 30


def test_a_batch_without_predictions_never_calls_the_unread_predictions_stream_stalled(kafka_bootstrap, run_id):
    """Whether a stream was read to its end is asked of the broker for each topic: a batch that holds only
    labels (the consumer fetched that topic first) says nothing about the predictions still to read. (Taking
    it for "read to the end" let labels read days ahead expire before their predictions came.)"""
    from confluent_kafka import TopicPartition

    from stream_monitor.kafka.clients import make_consumer
    from tests.streams import classifier_config

    cfg = config(run_id, {"clf": classifier_config()})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.labels)
    produce(kafka_bootstrap, cfg.topics.predictions, [orjson.dumps({"n": i}) for i in range(5)])
    service = MonitorService(cfg, kafka_bootstrap)
    service.consumer = make_consumer(cfg, service.conn)
    try:
        service.consumer.assign([TopicPartition(cfg.topics.predictions, 0, 0),
                                 TopicPartition(cfg.topics.labels, 0, 0)])
        predictions_idle, labels_idle = service._idle_checks(TaskId(0), [], [])  # a batch of neither
        assert predictions_idle() is False  # 5 predictions to read
        assert labels_idle() is True  # an empty topic is at its end
        service._positions[(cfg.topics.predictions, 0)] = 5  # all five processed
        service._ends.clear()
        assert service._idle_checks(TaskId(0), [], [])[0]() is True
    finally:
        service.consumer.close()
