"""Scale-out figures on a real broker: throughput with 1 and 2 instances, pane traffic, merge cost per window.

One topic of ``--partitions`` partitions holds ``--events`` prediction events of the benchmark model
(``workload.py``) keyed by event id. Each run is ``stream-monitor run`` in child processes of one consumer
group (a fresh group and output topics per run), timed from the first committed offset to the last: the
default single-instance path, then scale-out mode with 1 and with 2 instances. The pane topic of the scale-out
runs is read back for its bytes per event. The merge cost is measured in-process: pieces of one window from
every partition merged into the window's pane, and the window evaluated.

    python bench/scale_out.py [--events 200000] [--partitions 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

sys.path.insert(0, os.path.dirname(__file__))
from kafka_throughput import produce  # noqa: E402
from workload import make, model_config  # noqa: E402

from stream_monitor.config import parse_config  # noqa: E402
from stream_monitor.core.events import PredictionBatch  # noqa: E402
from stream_monitor.core.monitor import Monitor  # noqa: E402
from stream_monitor.core.panes import PaneBuilder  # noqa: E402
from stream_monitor.kafka.broker import kafka_broker  # noqa: E402


def raw_config(topic: str, partitions: int, window: int, scale_out: bool) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "kafka": {"group_id": f"bench-{run}", "commit_interval_s": 1.0, "transaction_timeout_s": 60},
        "prometheus": {"port": None},
        "topics": {"predictions": topic, "alerts": f"b-{run}.alerts", "breaker": f"b-{run}.breaker",
                   "dead_letter": f"b-{run}.dlq", "state": f"b-{run}.state", "metrics": f"b-{run}.metrics",
                   "join": f"b-{run}.join", "panes": f"b-{run}.panes", "references": f"b-{run}.refs",
                   "partitions": partitions},
        "batch": {"max_messages": 5000, "timeout_s": 0.5},
        "scale_out": {"enabled": scale_out},
        "models": {"bench": model_config(window)},
    }


def committed_total(c: Consumer, topic: str, partitions: int) -> int:
    for attempt in range(50):
        try:
            got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
            return sum(max(0, tp.offset) for tp in got)
        except KafkaException:  # the group coordinator is moving or loading: retriable
            if attempt == 49:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def run(bootstrap: str, raw: dict[str, Any], n: int, instances: int, workdir: Path) -> float:
    """Events per second the group commits, from its first commit to its last."""
    procs = []
    for i in range(instances):
        cfg = {**raw, "kafka": {**raw["kafka"], "instance_id": f"i{i}"}}
        path = workdir / f"{raw['kafka']['group_id']}-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(workdir / f"{raw['kafka']['group_id']}-{i}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", "--config", str(path),
                                       "--bootstrap-servers", bootstrap], stdout=log, stderr=subprocess.STDOUT))
    topic, parts = raw["topics"]["predictions"], raw["topics"]["partitions"]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": raw["kafka"]["group_id"]})
    try:
        t0 = first = None
        while True:
            done = committed_total(c, topic, parts)
            if t0 is None and done:
                t0, first = time.perf_counter(), done
            if done >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"an instance exited; see {workdir}")
            time.sleep(0.05)
        return (n - first) / (time.perf_counter() - t0)
    finally:
        c.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)


def pane_bytes(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, value bytes) on the pane topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    records = size = 0
    eof: set[int] = set()
    idle = time.monotonic()
    while len(eof) < len(parts) and time.monotonic() - idle < 10:
        for m in c.consume(1000, 0.5):
            if m.error() is not None:
                eof.add(m.partition())
                continue
            idle = time.monotonic()
            records += 1
            size += len(m.value() or b"")
    c.close()
    return records, size


def merge_cost(partitions: int, window: int, rounds: int = 20) -> float:
    """Milliseconds per window: merging one window's pieces (one per partition) and evaluating it."""
    from stream_monitor.core.windows import decode_record

    cfg = parse_config({"scale_out": {"enabled": True}, "models": {"bench": model_config(window)}})
    rng = np.random.default_rng(1)
    builders = [PaneBuilder(cfg, p, partitions) for p in range(partitions)]
    decider = Monitor(cfg, merged=True, sources=partitions)
    warm = make(cfg.models["bench"].reference.size + 1000, rng, 0)  # every partition past the warm-up
    for p, b in enumerate(builders):
        b.process_batch(PredictionBatch.from_events(warm[p::partitions], cfg.models), [])
    out = decider.process_panes([decode_record(r) for b in builders for _, r in b.checkpoint(0.0).outputs])
    for ref in out.references:
        for b in builders:
            b.set_reference(ref.model, ref)
    merge, windows = 0.0, 0
    for r in range(rounds):
        events = make(window, rng, (r + 1) * window)
        records = []
        for p, b in enumerate(builders):
            b.process_batch(PredictionBatch.from_events(events[p::partitions], cfg.models), [])
            records += [decode_record(orjson.loads(orjson.dumps(rec))) for _, rec in b.checkpoint(r + 1.0).outputs]
        t0 = time.perf_counter()
        out = decider.process_panes(records)
        merge += time.perf_counter() - t0
        windows += len(out.results)
    return 1000 * merge / max(1, windows)


def pane_bytes_per_event(partitions: int, window: dict[str, Any], sample_size: int, events: int,
                         per_flush: int) -> float:
    """Bytes of pane records per event, in-process: ``events`` spread over ``partitions`` builders, flushed every
    ``per_flush`` events (a commit interval's worth), the warm-up excluded."""
    cfg = parse_config({"scale_out": {"enabled": True}, "models": {"bench": {
        **model_config(1000), "window": window, "drift": {"sample_size": sample_size}}}})
    rng = np.random.default_rng(2)
    builders = [PaneBuilder(cfg, p, partitions) for p in range(partitions)]
    warm = make(cfg.models["bench"].reference.size + 1000, rng, 0)  # every partition past the warm-up
    from stream_monitor.core.windows import decode_record

    decider = Monitor(cfg, merged=True, sources=partitions)
    for p, b in enumerate(builders):
        b.process_batch(PredictionBatch.from_events(warm[p::partitions], cfg.models), [])
    decider.process_panes([decode_record(r) for b in builders for _, r in b.checkpoint(0.0).outputs])
    ref = decider.models["bench"].reference
    for b in builders:
        b.set_reference("bench", ref)
        b.checkpoint(0.0)
    size = 0
    t0 = 1.7e9 + len(warm)
    for start in range(0, events, per_flush):
        batch = make(per_flush, rng, len(warm) + start)
        for i, ev in enumerate(batch):  # event time: 1,000 events per second from the end of the warm-up
            ev["timestamp"] = t0 + (start + i) / 1000
        for p, b in enumerate(builders):
            b.process_batch(PredictionBatch.from_events(batch[p::partitions], cfg.models), [])
            size += sum(len(orjson.dumps(r)) for _, r in b.checkpoint(float(start)).outputs)
    return size / events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n, parts = args.events, args.partitions
    ms = merge_cost(parts, args.window)
    print(f"deciding stage, window {args.window} from {parts} partitions: {ms:.2f} ms per window "
          "(pieces decoded, merged, window evaluated)", flush=True)
    for label, window, sample in (("count window 1,000, sample_size 5,000 (defaults)", {"size": 1000}, 5000),
                                  ("count window 1,000, sample_size 500", {"size": 1000}, 500),
                                  ("time window 60 s (60,000 events), sample_size 5,000",
                                   {"by": "time", "size": 60}, 5000)):
        bpe = pane_bytes_per_event(parts, window, sample, 240_000, 4000)
        print(f"pane bytes per event, {label}: {bpe:.1f}", flush=True)
    with kafka_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        topic = f"scale-{uuid.uuid4().hex[:8]}"
        produce(bootstrap, topic, n, parts, by_event_id=True)
        workdir = Path(tmp)
        rates: dict[str, list[float]] = {"default": [], "one": [], "two": []}
        for r in range(args.rounds):  # alternating, so a busy moment of the machine hits every kind alike
            rates["default"].append(run(bootstrap, raw_config(topic, parts, args.window, False), n, 1, workdir))
            raw1 = raw_config(topic, parts, args.window, True)
            rates["one"].append(run(bootstrap, raw1, n, 1, workdir))
            rates["two"].append(run(bootstrap, raw_config(topic, parts, args.window, True), n, 2, workdir))
            print(f"round {r + 1}: default path, 1 instance {rates['default'][-1]:,.0f} events/s | scale-out, "
                  f"1 instance {rates['one'][-1]:,.0f} | scale-out, 2 instances {rates['two'][-1]:,.0f}", flush=True)
            if r == 0:
                records, size = pane_bytes(bootstrap, raw1["topics"]["panes"])
                print(f"pane traffic on the broker (scale-out, 1 instance, warm-up included): {records} records, "
                      f"{size / n:.1f} JSON bytes per event ({size / max(records, 1) / 1024:.0f} KiB per record)",
                      flush=True)
        d, one, two = (float(np.median(v)) for v in rates.values())
        print(f"median of {args.rounds} rounds: default path {d:,.0f} events/s; scale-out 1 instance {one:,.0f} "
              f"({one / d:.2f} of the default path); 2 instances {two:,.0f} ({two / one:.2f} x 1 instance; "
              f"{os.cpu_count()} cores shared with the broker)", flush=True)


if __name__ == "__main__":
    main()
