"""Exactly-once on a real broker: crashes, restarts, rebalances, broker outages and refused outputs change
nothing users see. Each test compares what a read_committed consumer sees on the output topics (alert ids and
statuses, breaker epochs and states, every drift window with its findings) with an uninterrupted run of the
same seeded stream."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.kafka.chaos import (MonitorProcess, assert_same, committed_offsets, expected, kill_mid_stream,
                               produce_partitioned, read_committed, seen, wait_committed)
from tests.kafka.helpers import Running, config_dict, create_topic
from tests.streams import make_events, model_config
from stream_monitor.config import parse_config

pytestmark = pytest.mark.kafka

BREAKER = {"enabled": True, "primary_version": "v1", "fallback_version": "v0", "hold_down_s": 600,
           "close_after": 2, "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 2}]}


@pytest.fixture(autouse=True)
def _reap_monitors():
    yield
    MonitorProcess.reap()


def eos_config(run_id: str, models: dict[str, Any], partitions: int = 1, instance: str | None = "a",
               decode_ahead: bool = False, **over: Any) -> dict[str, Any]:
    kafka = {"commit_interval_s": 0.3, "transaction_timeout_s": 10,
             "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}}
    if instance:
        kafka["instance_id"] = instance
    return config_dict(run_id, models, kafka=kafka, topics={"partitions": partitions},
                       batch={"max_messages": 400, "timeout_s": 0.1, "decode_ahead": decode_ahead},
                       prometheus={"port": None}, **over)


def drifting(model: str, rng: np.random.Generator, segments: int, seg: int = 2500) -> list[dict[str, Any]]:
    """Warm-up, then alternating calm and drifted segments: incidents fire and resolve, the breaker moves."""
    events = make_events(2000, rng, model=model)
    for i in range(segments):
        kw = {"a_mean": 1.2} if i % 2 else {}
        events += make_events(seg, rng, start=len(events), model=model, **kw)
    return events


def drifting_on_broker(bootstrap: str, run_id: str, seed: int, segments: int, decode_ahead: bool = False
                       ) -> tuple[dict[str, Any], Any, dict[int, list[dict[str, Any]]]]:
    """One breaker-enabled model (windows of 500, warm-up of 2,000) and its drifting stream, produced to a fresh
    predictions topic: (raw config, config, events by partition)."""
    raw = eos_config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 2000}, breaker=BREAKER)},
                     decode_ahead=decode_ahead)
    cfg = parse_config(raw)
    create_topic(bootstrap, cfg.topics.predictions)
    events = {0: drifting("m", np.random.default_rng(seed), segments)}
    produce_partitioned(bootstrap, cfg.topics.predictions, events)
    return raw, cfg, events


def with_instance(raw: dict[str, Any], instance: str) -> dict[str, Any]:
    return {**raw, "kafka": {**raw["kafka"], "instance_id": instance}}


def test_an_uninterrupted_run_publishes_what_the_core_computes(kafka_bootstrap, run_id, tmp_path):
    raw, cfg, events = drifting_on_broker(kafka_bootstrap, run_id, 40, 6)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m").start()
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(events[0])}, 120, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    want = expected(raw, events)
    assert sum(want["alerts"].values()) >= 4 and want["breaker"], "the stream must page and trip the breaker"
    assert_same(seen(kafka_bootstrap, raw), want)


@pytest.mark.parametrize("decode_ahead", [False, True], ids=["in-turn", "decode-ahead"])
def test_sigkills_at_random_points_of_a_fast_stream_change_nothing(kafka_bootstrap, run_id, tmp_path, decode_ahead):
    raw, cfg, events = drifting_on_broker(kafka_bootstrap, run_id, 41, 140, decode_ahead)
    # transactions every 0.1 s, kills within 0.15 s of the first: a run gets through some 10^4 events (the
    # monitor reads this topic at ~10^5 events/s), so all six kills land inside the 352,000-event stream
    raw = {**raw, "kafka": {**raw["kafka"], "commit_interval_s": 0.1}}
    rng = np.random.default_rng(42)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m")
    progress = []
    for _ in range(6):  # each run: start, commit something, die at a random point shortly after
        got = kill_mid_stream(proc, kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, [0], rng,
                              most_s=0.15)
        progress.append(got[0])
    proc.start()
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(events[0])}, 180, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    mid = [p for p in progress if 0 < p < len(events[0])]
    assert len(mid) >= 5, f"kills must land mid-stream: committed offsets at the kills {progress}"
    assert_same(seen(kafka_bootstrap, raw), expected(raw, events))


def test_sigkills_on_a_slow_live_stream_lose_and_double_nothing(kafka_bootstrap, run_id, tmp_path):
    raw = eos_config(run_id, {"m": model_config(window={"size": 250}, reference={"size": 1000}, breaker=BREAKER)})
    cfg = parse_config(raw)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(43)
    events = {0: drifting("m", rng, 8, seg=500)}  # 5,000 events at ~250/s: 20 s of live traffic

    def feed() -> None:
        stream = events[0]
        for i in range(0, len(stream), 50):
            produce_partitioned(kafka_bootstrap, cfg.topics.predictions, {0: stream[i:i + 50]})
            time.sleep(0.2)

    producer = threading.Thread(target=feed, daemon=True)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m")
    producer.start()
    for _ in range(5):
        kill_mid_stream(proc, kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, [0], rng, most_s=2.0)
    proc.start()
    producer.join(120)
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(events[0])}, 120, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    got, want = seen(kafka_bootstrap, raw), expected(raw, events)
    assert_same(got, want)
    # every event after the warm-up is in exactly one window
    assert sum(k[4] * n for k, n in got["windows"].items()) == len(events[0]) - 1000


def test_a_kill_right_after_a_single_over_threshold_window_pages_nobody(kafka_bootstrap, run_id, tmp_path):
    raw = eos_config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 2000})})
    cfg = parse_config(raw)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(44)
    stream = make_events(4000, rng)
    stream += make_events(500, rng, start=4000, a_mean=1.5)  # exactly one drifted window: consecutive 2 holds it
    stream += make_events(150000, rng, start=4500)
    events = {0: stream}
    want = expected(raw, events)
    assert not want["alerts"], "one window over threshold must not page"
    produce_partitioned(kafka_bootstrap, cfg.topics.predictions, events)
    proc = MonitorProcess(raw, kafka_bootstrap, tmp_path, "m").start()
    deadline = time.monotonic() + 60
    over = False
    while not over and time.monotonic() < deadline:  # the drifted window's report, committed
        over = any(orjson.loads(m.value())["window"]["index"] == 9 for m in read_committed(
            kafka_bootstrap, cfg.topics.metrics) if orjson.loads(m.value())["type"] == "drift")
        time.sleep(0.05)
    assert over, proc.tail()
    time.sleep(float(rng.uniform(0.2, 0.5)))
    proc.kill()
    proc.start()
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(stream)}, 120, [proc])
    finally:
        assert proc.stop() == 0, proc.tail()
    got = seen(kafka_bootstrap, raw)
    assert not got["alerts"]
    assert_same(got, want)


@pytest.mark.parametrize("decode_ahead", [False, True], ids=["in-turn", "decode-ahead"])
def test_a_second_instance_killed_mid_stream_hands_its_tasks_over_exactly(kafka_bootstrap, run_id, tmp_path,
                                                                          decode_ahead):
    models = {f"m{i}": model_config(window={"size": 500}, reference={"size": 2000}, breaker=BREAKER)
              for i in range(2)}
    raw = eos_config(run_id, models, partitions=2, decode_ahead=decode_ahead)
    cfg = parse_config(raw)
    create_topic(kafka_bootstrap, cfg.topics.predictions, partitions=2)
    rng = np.random.default_rng(45)
    events = {i: drifting(f"m{i}", rng, 12) for i in range(2)}
    a = MonitorProcess(with_instance(raw, "a"), kafka_bootstrap, tmp_path, "a").start()
    b = MonitorProcess(with_instance(raw, "b"), kafka_bootstrap, tmp_path, "b").start()
    time.sleep(6)  # both joined: one partition each
    produce_partitioned(kafka_bootstrap, cfg.topics.predictions, events)
    time.sleep(float(rng.uniform(1.0, 2.0)))
    b.kill()  # a takes its task over after the session timeout, from b's last commit
    mid = committed_offsets(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, [0, 1])
    try:
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions,
                       {p: len(e) for p, e in events.items()}, 180, [a, b])
    finally:
        assert a.stop() == 0, a.tail()
    assert any(0 < mid[p] < len(events[p]) for p in mid) or "assigned" in b.tail(), (mid, b.tail())
    assert "restored" in a.log.read_text(), "the surviving instance must restore the moved task's state"
    assert_same(seen(kafka_bootstrap, raw), expected(raw, events))


@pytest.mark.parametrize("decode_ahead", [False, True], ids=["in-turn", "decode-ahead"])
def test_an_output_topic_that_refuses_writes_then_is_fixed_loses_no_page(kafka_bootstrap, run_id, decode_ahead):
    raw, cfg, events = drifting_on_broker(kafka_bootstrap, run_id, 46, 6, decode_ahead)
    # every alert is refused (the monitor starts after this)
    create_topic(kafka_bootstrap, cfg.topics.alerts, config={"max.message.bytes": "200"})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    with Running(cfg, kafka_bootstrap) as run:
        deadline = time.monotonic() + 60
        while run.service.stats.aborts < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.service.stats.aborts >= 2, "the refused alert must abort the transaction"
        stuck = committed_offsets(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, [0])[0]
        assert stuck < len(events[0])
        res = ConfigResource(ConfigResource.Type.TOPIC, cfg.topics.alerts, incremental_configs=[
            ConfigEntry("max.message.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
        list(admin.incremental_alter_configs([res]).values())[0].result(30)
        wait_committed(kafka_bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(events[0])}, 120)
    assert_same(seen(kafka_bootstrap, raw), expected(raw, events))


def test_a_broker_restart_mid_stream_changes_nothing(run_id, tmp_path):
    from stream_monitor.kafka.broker import LocalKafka, fetch_kafka_jars

    try:
        fetch_kafka_jars()
    except Exception as exc:  # no Java/Maven here: this test needs a broker it may restart
        pytest.skip(f"needs a local broker it can restart: {exc}")
    broker = LocalKafka()
    bootstrap = broker.start()
    try:
        raw, cfg, events = drifting_on_broker(bootstrap, run_id, 47, 60)
        proc = MonitorProcess(raw, bootstrap, tmp_path, "m").start()
        before = -1
        deadline = time.monotonic() + 60
        while before <= 0 and time.monotonic() < deadline:  # the monitor is committing: pull the broker away
            before = committed_offsets(bootstrap, cfg.kafka.group_id, cfg.topics.predictions, [0])[0]
            time.sleep(0.05)
        broker.restart(down_s=2.0)
        try:
            wait_committed(bootstrap, cfg.kafka.group_id, cfg.topics.predictions, {0: len(events[0])}, 180, [proc])
            assert proc.alive(), "the monitor must ride out a broker restart:\n" + proc.tail()
        finally:
            assert proc.stop() == 0, proc.tail()
        assert 0 < before < len(events[0]), f"the restart must land mid-stream (committed {before})"
        assert_same(seen(bootstrap, raw), expected(raw, events))
    finally:
        broker.stop()


def _restartable_broker() -> Any:
    from stream_monitor.kafka.broker import LocalKafka, fetch_kafka_jars

    try:
        fetch_kafka_jars()
    except Exception as exc:  # no Java/Maven here: this test needs a broker of its own to restart
        pytest.skip(f"needs a local broker it can restart: {exc}")
    return LocalKafka()


def _feed(bootstrap: str, topic: str, events: list[dict[str, Any]], per_s: float, done: threading.Event) -> None:
    """Produce ``events`` at ``per_s`` with one idempotent producer that rides out a broker outage (it buffers
    and resends; idempotence keeps the order and drops the resent duplicates)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True,
                  "message.timeout.ms": 300_000, "log_level": 0})  # quiet: it is meant to see the outage
    step = max(1, int(per_s / 20))
    for i in range(0, len(events), step):
        for ev in events[i:i + step]:
            p.produce(topic, key=ev["model"].encode(), value=orjson.dumps(ev), partition=0)
        p.poll(0)
        time.sleep(0.05)
    assert p.flush(300) == 0
    done.set()


def _committed_now(bootstrap: str, group: str, topic: str) -> int | None:
    """The committed offset of partition 0, or None while it cannot be read: right after a broker restart the
    group's offsets stay unstable (the read times out) until a wedged transaction that holds them is aborted."""
    from confluent_kafka import KafkaException

    try:
        return committed_offsets(bootstrap, group, topic, [0])[0]
    except KafkaException:
        return None


class _Scraper:
    """Reads the monitor's /metrics every 0.2 s on a thread: the largest stream_monitor_stalled_seconds seen."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stalled_max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stalled(self) -> float:
        import urllib.request

        text = urllib.request.urlopen(self.url, timeout=2).read().decode()
        return float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("stream_monitor_stalled_seconds ")))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.stalled_max = max(self.stalled_max, self.stalled())
            except OSError:  # not serving yet, or gone
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(("instance", "down_s"), [("a", 3.0), (None, 30.0)],
                         ids=["restart-instance-id", "outage-30s-no-instance-id"])
def test_outputs_and_commits_resume_soon_after_a_broker_restart(run_id, tmp_path, instance, down_s):
    """A live stream, the default transaction timeout (60 s), the broker stopped mid-stream and started again
    ``down_s`` later: the first transaction commits within seconds of the broker being back (a wedged offsets
    call is replaced, not waited out for 130 s), the outage shows as a stall on the progress line and in
    /metrics, and what users see is what an uninterrupted run publishes. Prints the measured time from broker
    up to the first commit."""
    from tests.binaries import free_port

    broker = _restartable_broker()
    bootstrap = broker.start()
    try:
        port = free_port()
        raw = eos_config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 2000},
                                                      breaker=BREAKER)}, instance=instance)
        raw["kafka"] = {**raw["kafka"], "commit_interval_s": 1.0, "transaction_timeout_s": 60}
        raw["prometheus"] = {"port": port, "host": "127.0.0.1"}
        cfg = parse_config(raw)
        group, topic = cfg.kafka.group_id, cfg.topics.predictions
        create_topic(bootstrap, topic)
        events = {0: drifting("m", np.random.default_rng(48), 22, seg=2000)}  # 46,000 events: ~23 s at 2,000/s
        fed = threading.Event()
        feeder = threading.Thread(target=_feed, args=(bootstrap, topic, events[0], 2000, fed), daemon=True)
        proc = MonitorProcess(raw, bootstrap, tmp_path, "m").start()
        feeder.start()
        deadline = time.monotonic() + 60
        while committed_offsets(bootstrap, group, topic, [0])[0] < 8000:  # committing a live stream
            assert time.monotonic() < deadline and proc.alive(), proc.tail()
            time.sleep(0.1)
        scraper = _Scraper(port)
        broker.restart(down_s=down_s)
        up = time.monotonic()
        at_up = None
        while at_up is None:
            at_up = _committed_now(bootstrap, group, topic)
        while (_committed_now(bootstrap, group, topic) or -1) <= at_up:
            assert time.monotonic() - up < 180 and proc.alive(), proc.tail()
            time.sleep(0.1)
        recovered = time.monotonic() - up
        print(f"\nbroker down {down_s:.0f} s, up -> first committed transaction: {recovered:.1f} s "
              f"(committed offset {at_up} at broker up)")
        try:
            feeder.join(300)
            assert fed.is_set(), "the feeder could not deliver the stream"
            wait_committed(bootstrap, group, topic, {0: len(events[0])}, 180, [proc])
            assert proc.alive(), "the monitor must ride out a broker restart:\n" + proc.tail()
            scraper.stop()
            assert scraper.stalled() == 0.0, "committing again: no stall"
        finally:
            scraper.stop()
            assert proc.stop() == 0, proc.tail()
        assert 0 < at_up < len(events[0]), f"the restart must land mid-stream (committed {at_up})"
        assert_same(seen(bootstrap, raw), expected(raw, events))
        assert recovered < 60, f"{recovered:.0f} s from broker up to the first commit:\n{proc.tail()}"
        assert scraper.stalled_max >= down_s, f"stream_monitor_stalled_seconds peaked at {scraper.stalled_max}"
        assert "stalled since " in proc.log.read_text(), "the progress line must say the monitor is stalled"
    finally:
        broker.stop()
