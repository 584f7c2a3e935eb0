"""Event-to-alert latency of the running monitor with exactly-once on: how long a page takes to reach on-call.

A steady stream of prediction events of the benchmark model (``workload.py``: 30 features, ~790 bytes of
JSON each) is produced at ``--rate`` events/s (20,000) to one partition for ``--seconds``, keyed by model,
with a drift that comes and goes: after the 5,000-event warm-up, ``--on`` windows (of ``--window`` events)
with feature ``x0`` shifted by 1 sd, then ``--off`` calm windows, and again. Each drifted stretch fires a
data-drift alert and each calm one resolves it, so alerts fire and resolve many times. The monitor
(``MonitorService``, defaults but for ``prometheus.port``: batches of up to 20,000 in 0.5 s, a transaction every
``kafka.commit_interval_s`` = 1 s) runs in this process; the producer and the alert reader run in processes of
their own, so neither waits for this one's GIL.

**Latency, defined.** An alert is about one window (its ``window`` field); a count window is closed, and its
alert decided, by the window's last event. For each alert, latency = the wall time a ``read_committed``
consumer of the alert topic received it minus the wall time the producer handed that last event to
``produce()``. So it includes everything a pager sees: the producer's linger (librdkafka's default 5 ms), the
monitor's batching (``batch.timeout_s``), its processing, the transaction commit that makes the alert visible,
and the reader's fetch (``fetch.wait.max.ms`` 10 ms, so the reader adds little of its own). The last event
of a window is found from the window's ``end`` (the largest event time in it): event ``j`` carries event time
``t0 + j / rate``. All clocks are this machine's ``time.time()``.

Modes (``--modes``): ``page`` is the monitor as shipped (a batch that pages starts a commit right after it);
``interval`` turns that off, so alerts wait for the next interval's commit, as before. Each mode runs on a
fresh topic and consumer group. Prints p50, p99, max and the number of alerts per mode, and how many
transactions the monitor committed (and how many of them a page started early).

Most of what remains is batching: ``consume()`` returns after ``batch.timeout_s`` (0.5 s) unless
``batch.max_messages`` arrived sooner, so at this rate an event waits up to half a second for its batch to be
handed over. ``--batch-timeout`` shows that trade (smaller batches cost a little more CPU per event).

    python bench/alert_latency.py [--rate 20000] [--seconds 60] [--window 1000] [--on 10] [--off 10]
                                  [--modes page interval] [--batch-timeout 0.5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from workload import make, model_config  # noqa: E402

from stream_monitor.config import BatchConfig, parse_config  # noqa: E402
from stream_monitor.kafka.broker import kafka_broker  # noqa: E402
from stream_monitor.kafka.runner import MonitorService  # noqa: E402

WARMUP = 5000  # events of the warm-up reference (workload.model_config's default)
TICK_S = 0.005  # the producer hands over rate * TICK_S events every TICK_S


def produce_stream(bootstrap: str, topic: str, rate: int, seconds: float, window: int, on: int, off: int
                   ) -> tuple[float, np.ndarray]:
    """Produce the paced stream (see the module doc); returns (t0, produce wall time of every event). Runs in a
    process of its own."""
    rng = np.random.default_rng(0)
    calm = make(20_000, rng, 0)
    drifted = make(20_000, rng, 0)
    for ev in drifted:
        ev["features"]["x0"] += 1.0
    n = int(rate * seconds)
    produced = np.zeros(n)
    p = Producer({"bootstrap.servers": bootstrap, "queue.buffering.max.messages": 1_000_000})
    per_tick = max(1, round(rate * TICK_S))
    t0 = time.time()
    for start in range(0, n, per_tick):
        due = t0 + start / rate
        batch = []
        for j in range(start, min(n, start + per_tick)):  # built before it is due: only produce() is timed
            seg = (j - WARMUP) // window
            src = drifted if j >= WARMUP and seg % (on + off) < on else calm
            ev = {**src[j % len(src)], "event_id": f"evt-{j:012d}", "timestamp": t0 + j / rate}
            batch.append(orjson.dumps(ev))
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        for k, value in enumerate(batch):
            p.produce(topic, key=b"bench", value=value)
            produced[start + k] = time.time()
        p.poll(0)
    p.flush(60)
    return t0, produced


def read_alerts(bootstrap: str, topic: str, stop_at: float) -> list[tuple[float, bytes]]:
    """(wall time received, value) of every alert a read_committed consumer sees until ``stop_at``. Runs in a
    process of its own."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"pager-{uuid.uuid4().hex}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 10, "fetch.min.bytes": 1})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    while time.time() < stop_at:
        for m in c.consume(100, 0.05):
            if m.error() is None:
                got.append((time.time(), m.value()))
    c.close()
    return got


def run_mode(bootstrap: str, args: argparse.Namespace, page: bool) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topic = f"latency-{run}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    cfg = parse_config({
        "kafka": {"group_id": f"latency-{run}"},
        "prometheus": {"port": None},
        "topics": {"predictions": topic, "alerts": f"latency-{run}.alerts", "breaker": f"latency-{run}.breaker",
                   "dead_letter": f"latency-{run}.dlq", "metrics": f"latency-{run}.metrics", "partitions": 1},
        "batch": {"timeout_s": args.batch_timeout},
        "models": {"bench": model_config(args.window, WARMUP)},
    })
    svc = MonitorService(cfg, bootstrap, log_every_s=3600)
    svc.commit_on_page = page
    worker = threading.Thread(target=svc.run, name="monitor", daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not svc.tasks:  # assigned and restored: the stream starts on a monitor that is already there
        if svc.failure is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the monitor did not start: {svc.failure!r}")
        time.sleep(0.05)
    commits0, pages0 = svc.stats.commits, svc.stats.page_commits
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no client state copied from this one
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        stop_at = time.time() + args.seconds + 15  # the stream, its tail's alerts, and the processes' start
        reader = pool.submit(read_alerts, bootstrap, cfg.topics.alerts, stop_at)
        time.sleep(2)  # the reader is assigned before the first alert can be
        producer = pool.submit(produce_stream, bootstrap, topic, args.rate, args.seconds, args.window, args.on,
                               args.off)
        t0, produced = producer.result()
        alerts = reader.result()
    consumed = svc.stats.messages
    commits, pages = svc.stats.commits - commits0, svc.stats.page_commits - pages0
    svc.stop()
    worker.join(60)
    if svc.failure is not None:
        raise svc.failure
    latencies = []
    seen: set[tuple[str, str]] = set()
    for received, value in alerts:
        alert = orjson.loads(value)
        seen.add((alert["alert_id"], alert["status"]))
        j = round((alert["window"]["end"] - t0) * args.rate)  # the window's last event
        latencies.append(received - produced[j])
    lat = np.array(latencies)
    late = float(np.max(np.diff(produced) - 1 / args.rate)) if len(produced) > 1 else 0.0
    return {"mode": "page" if page else "interval", "alerts": len(alerts), "distinct": len(seen),
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "max": float(lat.max()) if len(lat) else float("nan"), "consumed": consumed, "produced": len(produced),
            "rate": len(produced) / (produced[-1] - produced[0]), "gap": late, "commits": commits, "pages": pages}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20_000, help="events per second, one partition")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--window", type=int, default=1000, help="events per tumbling count window")
    ap.add_argument("--on", type=int, default=10, help="drifted windows per cycle")
    ap.add_argument("--off", type=int, default=10, help="calm windows per cycle")
    ap.add_argument("--modes", nargs="+", choices=["page", "interval"], default=["page", "interval"])
    ap.add_argument("--batch-timeout", type=float, default=BatchConfig().timeout_s,
                    help="the monitor's batch.timeout_s (default: the config default)")
    args = ap.parse_args()
    with kafka_broker() as bootstrap:
        for mode in args.modes:
            r = run_mode(bootstrap, args, mode == "page")
            what = ("a batch that pages commits at once" if r["mode"] == "page"
                    else "alerts wait for the interval's commit")
            print(f"{r['mode']} ({what}; batch.timeout_s {args.batch_timeout:g}): {r['alerts']} alerts "
                  f"({r['distinct']} distinct), event->alert latency p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s, max {r['max']:.3f} s | produced {r['produced']:,} "
                  f"events at {r['rate']:,.0f}/s (largest gap {1e3 * r['gap']:.0f} ms), consumed {r['consumed']:,} | "
                  f"{r['commits']} transactions, {r['pages']} started early by a page", flush=True)


if __name__ == "__main__":
    main()
