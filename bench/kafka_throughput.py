"""End-to-end throughput and memory of the running monitor on a real broker, against a bare consumer.

Produces prediction events of the benchmark model (``workload.py``: 22 numeric features including a binary flag
and an integer count, 6 categorical including a 200-level one, prediction and score; ~780 bytes each) to one
topic, then, per window size, in the same run:

- baseline: a bare confluent-kafka loop that only consumes the topic in batches and orjson-decodes each value,
  with the monitor's fetch settings (``fetch.*``/``queued.*``: the same data arrival for both loops);
- stream-monitor: the full monitor (decode, validate, columns, sketches, drift decisions, alerts, window
  reports) on the same topic, from the beginning, in a fresh consumer group, with the exactly-once
  path on: outputs, changed state and offsets committed in one Kafka transaction every ``--commit-interval``
  seconds (default 1, as in production), where its time went per stage (consume, decode, core, publish,
  commit) in microseconds per event over the measured pass, how many transactions it committed and how long
  the loop waited for their commits (a commit completes while the next batches are processed; the loop waits
  only when the previous one is still running);
- the cost of exactly-once: the same monitor committing only once at the end of the pass (``--commit-interval
  30``: one transaction), so the difference between the two is what the transactions and state writes cost.

Both loops are timed from their first batch (group join excluded) and run with the monitor's garbage-collector
settings (``runner.tune_gc``), which speed up the bare loop too. Besides the rates, each pass reports the CPU
time of its consuming thread per event: both loops are bound by that thread, so the two ratios agree when the
machine is quiet. After one discarded warm-up read of the topic (the first read is always slower) and one
discarded warm-up pass of the monitor (the process's first one grows its heap and runs every code path for the
first time; its rate is printed), a pass of the bare loop with librdkafka's default fetch settings is shown for
scale (its 1 s ``fetch.queue.backoff.ms`` stalls a consumer this fast), then the passes alternate for
``--rounds`` rounds; each round's ratio and the median are printed (the house bar is >= 0.8). A final long
pass samples the monitor's RSS (memory must stay flat however long the stream runs). ``--pin 0:1`` puts the
broker on CPU 0 and this process on CPU 1, as ``taskset`` would.

    python bench/kafka_throughput.py [--events 1000000] [--windows 1000 5000 100] [--rounds 3]
                                     [--commit-interval 1] [--rss-events 1000000] [--pin 0:1]
                                     [--batch 10000] [--decode-ahead]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time
import uuid

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from workload import make, model_config  # noqa: E402

from stream_monitor.config import BatchConfig, parse_config  # noqa: E402
from stream_monitor.kafka.broker import kafka_broker  # noqa: E402
from stream_monitor.kafka.clients import CONSUMER_DEFAULTS, consumer_config  # noqa: E402
from stream_monitor.kafka.runner import MonitorService, tune_gc  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def freed_rss() -> float | None:
    """RSS after a full collection and glibc's ``malloc_trim(0)`` (None without glibc): what the process holds,
    without the freed pages its heap keeps for reuse."""
    gc.collect()
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return rss_mib()


def produce(bootstrap: str, topic: str, n: int, partitions: int, by_event_id: bool = False) -> None:
    """``n`` events of the benchmark model, keyed by model (one partition) or ``by_event_id`` (all of them)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    rng = np.random.default_rng(0)
    for start in range(0, n, 10_000):
        for ev in make(min(10_000, n - start), rng, start):
            p.produce(topic, key=ev["event_id"].encode() if by_event_id else b"bench", value=orjson.dumps(ev))
        p.poll(0)
        p.flush()
    print(f"produced {n} events ({len(orjson.dumps(ev))} bytes each)", flush=True)


#: Messages per consume() call of both loops: the monitor's default batch.max_messages.
BATCH = BatchConfig().max_messages

#: The monitor's consumer settings that decide how fast data arrives: the bare loop gets the same ones.
FETCH = {k: v for k, v in {**CONSUMER_DEFAULTS,
                           **consumer_config(parse_config({"models": {"bench": model_config(1000)}}))}.items()
         if k.startswith(("fetch.", "queued.", "max.partition"))}


def bare(bootstrap: str, topic: str, n: int, settings: dict | None = None, batch: int = 0) -> tuple[float, float]:
    """Events/s and CPU microseconds per event of the consuming thread, with the monitor's fetch settings
    (or ``settings``)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  **(FETCH if settings is None else settings)})
    c.subscribe([topic])
    seen = 0
    t0 = None
    loads = orjson.loads
    while seen < n:
        for m in c.consume(batch or BATCH, 0.5):
            if m.error() is None:
                loads(m.value())
                seen += 1
        if t0 is None and seen:  # the clock starts at the first batch: group join and metadata excluded
            t0, first, cpu0 = time.perf_counter(), seen, time.thread_time()
    dt = time.perf_counter() - t0
    cpu = time.thread_time() - cpu0
    c.close()
    return (n - first) / dt, cpu / (n - first) * 1e6


def monitored(bootstrap: str, topic: str, n: int, window: int, commit_s: float, decode_ahead: bool = False,
              batch: int = 0) -> tuple[float, list[tuple[int, float]], str, float]:
    """Events/s, RSS samples, where the time went (per stage, from the first processed batch on, as the rate)
    and the CPU microseconds per event of its thread."""
    run = uuid.uuid4().hex[:8]
    cfg = parse_config({
        "kafka": {"group_id": f"bench-{run}", "commit_interval_s": commit_s, "transaction_timeout_s": 120},
        "prometheus": {"port": None},
        "topics": {"predictions": topic, "alerts": f"bench-{run}.alerts", "breaker": f"bench-{run}.breaker",
                   "dead_letter": f"bench-{run}.dlq", "state": f"bench-{run}.state",
                   "metrics": f"bench-{run}.metrics", "join": f"bench-{run}.join", "partitions": 1},
        "batch": {"max_messages": batch or BATCH, "timeout_s": 0.5, "decode_ahead": decode_ahead},
        "models": {"bench": model_config(window)},
    })
    svc = MonitorService(cfg, bootstrap, log_every_s=3600)
    th = threading.Thread(target=svc.run, daemon=True)
    samples: list[tuple[int, float]] = []
    th.start()
    # The loop stamps its own progress after each batch (messages, wall clock, its thread's CPU time), so its
    # rate and CPU per event are taken at batch ends, from the first processed batch on as for the bare loop,
    # whatever this thread's polling: every 20 ms (the GIL handed to it rarely). Stage times are read at the
    # poll that sees the last batch.
    start = None
    next_mark = n // 10
    while True:
        if svc.failure is not None:
            raise svc.failure
        progress = svc.stats.progress
        if start is None and progress[0]:
            start = progress, dict(svc.stats.seconds), svc.stats.commits, svc.checkpointer.blocked_s
        if progress[0] >= next_mark:
            samples.append((progress[0], rss_mib()))
            next_mark += n // 10
        if progress[0] >= n:
            break
        time.sleep(0.02 if start is not None else 0.002)
    stages1, windows, commits, blocked1 = dict(svc.stats.seconds), svc.stats.windows, svc.stats.commits, \
        svc.checkpointer.blocked_s
    (first, t0, cpu0), stages0, commits0, blocked0 = start  # type: ignore[misc]
    last, t1, cpu1 = progress
    seen = svc.stats.messages
    stages = " | ".join(f"{k} {(v - stages0.get(k, 0.0)) / (seen - first) * 1e6:.2f}"
                        for k, v in stages1.items()) + " (us per event)"
    samples.append((last, rss_mib()))
    waited = (blocked1 - blocked0) * 1e3
    svc.stop()
    th.join(30)
    return (last - first) / (t1 - t0), samples, f"{stages}; {windows} windows; {commits - commits0} transactions, " \
        f"the loop waited {waited:.0f} ms for their commits", (cpu1 - cpu0) / (last - first) * 1e6


def pin(spec: str) -> str:
    """``--pin B:M``: the broker's threads on CPU B, this process (monitor, bare loop, librdkafka) on CPU M."""
    broker_cpu, our_cpu = (int(x) for x in spec.split(":"))
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and _is_broker(int(d))]
    if not pids:
        raise SystemExit("--pin: no local broker process found (it pins the broker this script starts)")
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {broker_cpu})
            except OSError:
                pass  # a thread that ended meanwhile
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {our_cpu})  # threads started later (librdkafka's) inherit it
    return f"broker pid {pids} on CPU {broker_cpu}, this process on CPU {our_cpu}"


def _is_broker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"kafka.Kafka" in fh.read()
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000,
                    help="events per measured pass (a pass should span several commit intervals: whether one "
                    "transaction more falls inside a short pass moves its rate by ~10 %%)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--windows", type=int, nargs="+", default=[1000, 5000, 100],
                    help="events per tumbling window, one set of rounds each")
    ap.add_argument("--commit-interval", type=float, default=1.0, help="kafka.commit_interval_s of the monitor")
    ap.add_argument("--rss-events", type=int, default=1_000_000,
                    help="events of the final long pass that samples the monitor's RSS (0: skip it)")
    ap.add_argument("--pin", metavar="BROKER_CPU:MONITOR_CPU", help="pin the local broker and this process "
                    "to separate CPUs (as taskset would), e.g. 0:1")
    ap.add_argument("--batch", type=int, default=BATCH, help="messages per consume() call of both loops (the "
                    f"monitor's batch.max_messages; default {BATCH:,}, the monitor's default)")
    ap.add_argument("--decode-ahead", action="store_true", help="each round also runs the monitor with "
                    "batch.decode_ahead (the next batch parsed on a second thread), and prints its ratio")
    args = ap.parse_args()
    tune_gc()  # the monitor's garbage-collector settings, for both passes: the baseline gets them too
    with kafka_broker() as bootstrap:
        if args.pin:
            print(pin(args.pin), flush=True)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        produce(bootstrap, topic, max(args.events, args.rss_events), args.partitions)
        bare(bootstrap, topic, args.events, batch=args.batch)  # warm-up, discarded: a topic's first read is cold
        warm, _, _, _ = monitored(bootstrap, topic, args.events, args.windows[0], args.commit_interval,
                                  batch=args.batch)  # warm-up, discarded: the process's first monitor is cold
        print(f"warm-up pass of the monitor (window {args.windows[0]}, discarded): {warm:,.0f} events/s", flush=True)
        print(f"fetch settings of both loops: {FETCH}", flush=True)
        default_rate, _ = bare(bootstrap, topic, args.events, {}, args.batch)
        print(f"for scale, the bare loop with librdkafka's default fetch settings: {default_rate:,.0f} events/s",
              flush=True)
        for window in args.windows:
            ratios, costs, cpu_ratios, ahead_ratios = [], [], [], []
            for r in range(args.rounds):
                base, base_cpu = bare(bootstrap, topic, args.events, batch=args.batch)
                rate, _, stages, cpu = monitored(bootstrap, topic, args.events, window, args.commit_interval,
                                                 batch=args.batch)
                once, _, _, _ = monitored(bootstrap, topic, args.events, window, 30.0, batch=args.batch)
                ratios.append(rate / base)
                cpu_ratios.append(base_cpu / cpu)
                costs.append(1 - rate / once)
                print(f"window {window} round {r + 1}: bare consume + orjson.loads {base:9,.0f} events/s | "
                      f"stream-monitor (full path, commit every {args.commit_interval:g}s) {rate:9,.0f} events/s | "
                      f"ratio {rate / base:.2f} | one commit per pass {once:9,.0f} events/s", flush=True)
                print(f"  CPU of the consuming thread per event: bare {base_cpu:.2f} us, monitor {cpu:.2f} us",
                      flush=True)
                print(f"  where the monitor's time went: {stages}", flush=True)
                if args.decode_ahead:
                    ahead, _, stages, _ = monitored(bootstrap, topic, args.events, window, args.commit_interval, True,
                                                    args.batch)
                    ahead_ratios.append(ahead / base)
                    print(f"  with batch.decode_ahead: {ahead:9,.0f} events/s, ratio {ahead / base:.2f}; "
                          f"{stages}", flush=True)
            print(f"window {window}: median ratio {float(np.median(ratios)):.2f} (bar: >= 0.80), CPU ratio "
                  f"{float(np.median(cpu_ratios)):.2f}; exactly-once cost (transactions every "
                  f"{args.commit_interval:g}s vs one per pass) median {100 * float(np.median(costs)):.0f} % of "
                  "throughput" + (f"; with batch.decode_ahead median ratio {float(np.median(ahead_ratios)):.2f}"
                                  if ahead_ratios else ""), flush=True)
        if args.rss_events:
            rate, samples, _, _ = monitored(bootstrap, topic, args.rss_events, args.windows[0],
                                            args.commit_interval, batch=args.batch)
            print(f"monitor RSS along {args.rss_events:,} events (window {args.windows[0]}, {rate:,.0f} events/s): "
                  + ", ".join(f"{k // 1000}k: {m:.0f} MiB" for k, m in samples))
            trimmed = freed_rss()
            if trimmed is not None:
                print(f"RSS once the C heap handed its free pages back (gc.collect, glibc malloc_trim): {trimmed:.0f} "
                      "MiB", flush=True)


if __name__ == "__main__":
    main()
