"""Tools for the exactly-once tests: monitors in real processes (so SIGKILL is real), what users see on the
output topics (read_committed, every record), and the uninterrupted result to compare it with.

The uninterrupted result comes from the pure core fed each partition's events in offset order: the core's
outputs do not depend on batching (tests/core/test_checkpoint.py), so this is what one uninterrupted monitor
publishes; ``test_an_uninterrupted_run_publishes_what_the_core_computes`` checks it on the broker too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream_monitor.config import parse_config
from stream_monitor.core.monitor import Monitor


class MonitorProcess:
    """``stream-monitor run`` in a child process, its log in a file. ``MonitorProcess.reap()`` kills every one
    still running (a test's teardown, whatever happened in the test)."""

    running: list[MonitorProcess] = []

    def __init__(self, raw_config: dict[str, Any], bootstrap: str, workdir: Path, name: str) -> None:
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(raw_config))
        self.log = workdir / f"{name}.log"
        self.bootstrap = bootstrap
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> MonitorProcess:
        fh = open(self.log, "ab")  # noqa: SIM115 - owned by the child from here
        fh.write(f"--- start {self.starts}\n".encode())
        fh.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_monitor", "run", "--config", str(self.path), "--bootstrap-servers",
             self.bootstrap], stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        fh.close()
        self.starts += 1
        MonitorProcess.running.append(self)
        return self

    @classmethod
    def reap(cls) -> None:
        for p in cls.running:
            if p.alive():
                p.proc.kill()  # type: ignore[union-attr]
                p.proc.wait(30)  # type: ignore[union-attr]
        cls.running.clear()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        assert self.alive(), f"monitor exited by itself ({self.proc.returncode}):\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while self.alive() and self.log.read_text(errors="replace").count("--- start") > self.log.read_text(
                errors="replace").count("consuming ") and time.monotonic() < deadline:
            time.sleep(0.1)  # let it get past its imports: a signal before Python runs our code is fatal
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"monitor did not stop on SIGTERM:\n{self.tail()}") from None
        return self.proc.returncode

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def produce_partitioned(bootstrap: str, topic: str, events_by_partition: dict[int, list[dict[str, Any]]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for part, events in events_by_partition.items():
        for ev in events:
            while True:
                try:
                    p.produce(topic, key=ev["model"].encode(), value=orjson.dumps(ev), partition=part)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
    assert p.flush(60) == 0


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed"})
    try:
        for attempt in range(50):
            try:
                got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
                return {tp.partition: tp.offset for tp in got}
            except KafkaException as exc:  # coordinator moving or loading: retriable
                if attempt == 49 or not exc.args[0].retriable() and exc.args[0].code() not in (14, 15, 16):
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        c.close()


def kill_mid_stream(proc: MonitorProcess, bootstrap: str, group: str, topic: str, partitions: list[int],
                    rng: Any, most_s: float = 0.6, timeout: float = 60) -> dict[int, int]:
    """Start ``proc``, wait until it commits progress, then SIGKILL it at a random point within ``most_s``;
    returns the committed offsets seen just before the kill."""
    before = committed_offsets(bootstrap, group, topic, partitions)
    proc.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = committed_offsets(bootstrap, group, topic, partitions)
        if now != before:
            break
        assert proc.alive(), proc.tail()
        time.sleep(0.05)
    else:
        raise AssertionError(f"no progress within {timeout:.0f}s:\n{proc.tail()}")
    time.sleep(float(rng.uniform(0.0, most_s)))
    proc.kill()
    return now


def wait_committed(bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout: float,
                   procs: list[MonitorProcess] = ()) -> None:
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = committed_offsets(bootstrap, group, topic, list(ends))
        if all(got.get(p, -1) >= end for p, end in ends.items()):
            return
        time.sleep(0.5)
    logs = "\n".join(f"== {p.log.name}\n{p.tail()}" for p in procs)
    raise AssertionError(f"committed {got}, expected {ends} within {timeout:.0f}s\n{logs}")


def _high_watermark(c: Consumer, tp: TopicPartition, deadline: float) -> int:
    """The end offset; a topic the monitor created a moment ago may have no leader yet (retryable)."""
    while True:
        try:
            return c.get_watermark_offsets(tp, timeout=5)[1]
        except KafkaException as exc:
            err = exc.args[0]
            transient = err.retriable() or err.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                          KafkaError.LEADER_NOT_AVAILABLE,
                                                          KafkaError.UNKNOWN_TOPIC_OR_PART)
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_committed(bootstrap: str, topic: str, timeout: float = 60) -> list[Any]:
    """Every record of ``topic`` a read_committed consumer sees, to the current end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    try:
        md = c.list_topics(topic, timeout=30).topics[topic]
        parts = sorted(md.partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        ends = {p: _high_watermark(c, TopicPartition(topic, p), time.monotonic() + 30) for p in parts}
        eof: set[int] = {p for p, e in ends.items() if e == 0}
        out = []
        deadline = time.monotonic() + timeout
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    if m.error().code() == -191:  # _PARTITION_EOF
                        pos = c.position([TopicPartition(topic, m.partition())])[0].offset
                        if pos >= ends[m.partition()]:
                            eof.add(m.partition())
                    continue
                out.append(m)
        assert len(eof) == len(parts), f"{topic}: could not read to the end"
        return out
    finally:
        c.close()


def seen(bootstrap: str, raw_config: dict[str, Any]) -> dict[str, Any]:
    """What users of the output topics see."""
    cfg = parse_config(raw_config)
    alerts = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.alerts)]
    breaker = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.breaker)
               if m.value() is not None]
    reports = [orjson.loads(m.value()) for m in read_committed(bootstrap, cfg.topics.metrics)]
    return summarize(alerts, [b for b in breaker if b.get("source") == "monitor"], reports)


def expected(raw_config: dict[str, Any], events_by_partition: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """What one uninterrupted monitor publishes: one core monitor per partition, fed in offset order."""
    cfg = parse_config(raw_config)
    alerts, signals, reports = [], [], []
    for events in events_by_partition.values():
        mon = Monitor(cfg)
        for i in range(0, len(events), 1000):
            out = mon.process(events[i:i + 1000])
            alerts += [a.to_dict() for a in out.alerts]
            signals += [s.to_dict() for s in out.signals]
            reports += [orjson.loads(orjson.dumps(r)) for r in out.reports]
    return summarize(alerts, signals, reports)


def summarize(alerts: list[dict], signals: list[dict], reports: list[dict]) -> dict[str, Any]:
    drift = [r for r in reports if r["type"] == "drift"]
    return {
        "alerts": Counter((a["alert_id"], a["status"], a["model"], a["kind"]) for a in alerts),
        "breaker": Counter((s["model"], s["epoch"], s["state"]) for s in signals),
        "windows": Counter((r["model"], r["window"]["index"], r["window"]["start"], r["window"]["end"],
                            r["window"]["events"]) for r in drift),
        "findings": Counter(orjson.dumps([r["model"], r["window"]["index"], r["findings"]],
                                         option=orjson.OPT_SORT_KEYS) for r in drift),
    }


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in want:
        extra, missing = got[key] - want[key], want[key] - got[key]
        assert not extra and not missing, f"{key}: {len(extra)} extra {list(extra)[:5]}, " \
                                          f"{len(missing)} missing {list(missing)[:5]}"
