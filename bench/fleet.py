"""A fleet of models in one monitor process: throughput against a bare consumer, memory, start-up, metric series.

A platform team runs one ``stream-monitor run`` for many models: N models share one predictions topic (message
key = model name), every model with ``--features`` numeric and 2 categorical features (the first ones of the
benchmark model of ``workload.py``), declared once under the config's ``defaults:`` section (each model is an
empty mapping ``mNNN: {}``), with tumbling count windows of the given size and a warm-up reference of
``--reference`` events per model. The events of all models are interleaved at random (seeded numpy rng).

For each N of ``--models`` the events are produced once to a fresh topic (the events do not depend on the
window size, so every window size of that N reads the same topic), read once by the bare loop and discarded
(a topic's first read is cold); before the first cell one monitor run is discarded too (the first child
process is cold); then for each window size of ``--windows``, ``--rounds`` alternating rounds:

- bare: ``kafka_throughput.bare``, a confluent-kafka loop that consumes the topic in batches and orjson-decodes
  each value, with the monitor's fetch settings and batch size, timed from its first batch (in this process,
  with the monitor's garbage-collector settings);
- monitor: ``stream-monitor run`` in a child process (the CLI's ``main``, unchanged) with that config, a fresh
  consumer group and output topics, the exactly-once path on (a transaction every second, as in the other
  benches), run until the group's committed offsets reach the end of the topic. It is timed as
  ``kafka_throughput.monitored`` times the in-process monitor: from the end of its first processed batch to the
  end of the batch that reaches the end of the topic, by the progress stamps its loop leaves after each batch
  (``ServiceStats.progress``: messages, ``perf_counter``, the loop thread's CPU time), which a sampler thread
  in the child (:data:`CHILD`) writes to a file every 20 ms; commit intervals (1 s) are too coarse to time a
  pass of a few seconds by its committed offsets;

and prints each rate in events/s, the ratio monitor/bare of the round and the median ratio over the rounds.

Of each monitor run it also reports:

- peak RSS: ``VmHWM`` of the child (``/proc/<pid>/status``) once it has committed every event and its
  ``/metrics`` was scraped, in MiB; RSS per model = (peak with N models - peak with 1 model) / (N - 1), from
  the medians over the rounds, when 1 is in the grid;
- start-up: wall time from spawning the child to its ``assigned ...`` log line (config with N models loaded,
  monitor built, topics checked, group joined: the first poll got its partitions; log time stamps have ms
  resolution), split into spawn -> first log line (interpreter, imports), -> ``consuming ...`` (config,
  MonitorService, topics, breaker topic read), -> ``assigned`` (group join, tasks restored), and the wall time
  from spawn to the first committed offset;
- Prometheus series: the lines of its ``/metrics`` (``prometheus.port`` set to a free port) that are neither
  comments nor empty, scraped after the last commit, in total and those named ``stream_monitor_*``; and the
  windows it evaluated (sum of ``stream_monitor_windows_total``).

    .venv/bin/python bench/fleet.py [--models 1 10 300] [--windows 1000 100] [--events 1000000] [--rounds 3]
                                    [--features 8] [--reference 1000] [--partitions 1]

Quick check (a few minutes on 2 cores):
    .venv/bin/python bench/fleet.py --events 200000 --rounds 1 --models 1 30 --windows 1000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from kafka_throughput import bare  # noqa: E402
from scale_out import committed_total, raw_config  # noqa: E402
from workload import CAT, NUM, make, model_config  # noqa: E402

from stream_monitor.config import parse_config  # noqa: E402
from stream_monitor.kafka.broker import kafka_broker  # noqa: E402
from stream_monitor.kafka.runner import tune_gc  # noqa: E402

CATEGORICAL = 2


def model_names(n: int) -> list[str]:
    return [f"m{i:03d}" for i in range(n)]


def features(numeric: int) -> dict[str, list[str]]:
    """The first ``numeric`` numeric and the first 2 categorical features of the benchmark model."""
    return {"numeric": NUM[:numeric], "categorical": CAT[:CATEGORICAL]}


def fleet_events(n: int, rng: np.random.Generator, start: int, names: list[str], numeric: int) -> list[dict]:
    """``n`` events of ``workload.make``, each given to a model drawn at random and cut to its features."""
    keep = [*NUM[:numeric], *CAT[:CATEGORICAL]]
    owner = rng.integers(0, len(names), size=n)
    events = make(n, rng, start)
    for ev, m in zip(events, owner.tolist()):
        ev["model"] = names[m]
        f = ev["features"]
        ev["features"] = {k: f[k] for k in keep}
    return events


def produce_fleet(bootstrap: str, topic: str, n: int, partitions: int, names: list[str], numeric: int) -> int:
    """``n`` fleet events keyed by model name (``kafka_throughput.produce``'s settings); bytes of the last one."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    rng = np.random.default_rng(0)
    value = b""
    for start in range(0, n, 10_000):
        for ev in fleet_events(min(10_000, n - start), rng, start, names, numeric):
            value = orjson.dumps(ev)
            p.produce(topic, key=ev["model"].encode(), value=value)
        p.poll(0)
        p.flush()
    return len(value)


def fleet_config(topic: str, partitions: int, window: int, names: list[str], numeric: int, reference: int,
                 port: int) -> dict[str, Any]:
    """``scale_out.raw_config`` (fresh group and output topics, commit every 1 s) with the fleet: the model
    settings once under ``defaults:``, every model an empty mapping; the monitor's default batch settings (those
    of the bare loop) and /metrics on ``port``."""
    raw = raw_config(topic, partitions, window, False)
    raw.pop("batch")
    raw.pop("models")
    raw["prometheus"] = {"port": port, "host": "127.0.0.1"}
    raw["defaults"] = {**model_config(window, reference), "features": features(numeric)}
    raw["models"] = {name: {} for name in names}
    return raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def scrape(port: int) -> tuple[int, int, float]:
    """(series, stream_monitor_* series, windows evaluated) of the monitor's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    windows = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("stream_monitor_windows_total{"))
    return len(lines), sum(ln.startswith("stream_monitor_") for ln in lines), windows


def log_time(log: Path, needle: str) -> float | None:
    """Epoch seconds of the first log line containing ``needle`` (the CLI's ``%(asctime)s`` stamp, local time)."""
    for line in log.read_text(errors="replace").splitlines():
        if needle in line:
            try:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
    return None


#: The child: a daemon thread that writes the loop's progress stamps (on change, every 20 ms, as the in-process
#: ``kafka_throughput.monitored`` polls them) to ``$FLEET_PROGRESS``, then ``stream-monitor`` as the console script
#: runs it. The sampler reaches the service by wrapping ``MonitorService.__init__``; nothing else changes.
CHILD = """
import os, sys, threading, time
from stream_monitor import cli
from stream_monitor.kafka import runner
services = []
init = runner.MonitorService.__init__
def capture(self, *a, **k):
    init(self, *a, **k)
    services.append(self)
runner.MonitorService.__init__ = capture
def sample():
    with open(os.environ["FLEET_PROGRESS"], "w", buffering=1) as out:
        last = None
        while True:
            p = services[0].stats.progress if services else None
            if p is not None and p != last and p[0]:
                out.write("%d %.6f %.6f\\n" % p)
                last = p
            time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
sys.exit(cli.main(sys.argv[1:]))
"""


def loop_rate(path: Path, n: int) -> tuple[float, float, int]:
    """Events/s and CPU microseconds per event of the monitor's loop thread, from the end of its first processed
    batch to the end of the one that reached ``n`` messages, and the batch ends seen."""
    stamps = [tuple(float(x) for x in line.split()) for line in path.read_text().splitlines()
              if len(line.split()) == 3] if path.exists() else []
    if not stamps:
        return float("nan"), float("nan"), 0
    (first, t0, cpu0), last_stamp = stamps[0], next((s for s in stamps if s[0] >= n), stamps[-1])
    last, t1, cpu1 = last_stamp
    if last <= first:
        return float("nan"), float("nan"), len(stamps)
    return (last - first) / (t1 - t0), (cpu1 - cpu0) / (last - first) * 1e6, len(stamps)


def monitor(bootstrap: str, raw: dict[str, Any], n: int, workdir: Path, stall_s: float) -> dict[str, float]:
    """One ``stream-monitor run`` child over the whole topic: its rate, peak RSS, start-up and series."""
    group = raw["kafka"]["group_id"]
    path, log, progress = workdir / f"{group}.yaml", workdir / f"{group}.log", workdir / f"{group}.progress"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topic, parts = raw["topics"]["predictions"], raw["topics"]["partitions"]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    with open(log, "wb") as out:
        spawned = time.time()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "run", "--config", str(path),
                                 "--bootstrap-servers", bootstrap], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "FLEET_PROGRESS": str(progress)})
    try:
        first_commit_wall = None
        moved, before = time.monotonic(), 0
        while True:
            done = committed_total(c, topic, parts)
            if done != before:
                if not before:
                    first_commit_wall = time.time()
                moved, before = time.monotonic(), done
            if done >= n:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the monitor exited ({proc.returncode}); its log: {log}\n"
                                 + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
            if time.monotonic() - moved > stall_s:
                raise SystemExit(f"no commit progress for {stall_s:.0f} s; the monitor's log: {log}")
            time.sleep(0.05)
        series, ours, windows = scrape(raw["prometheus"]["port"])
        peak = status_kib(proc.pid, "VmHWM") / 1024
    finally:
        c.close()
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    started = log_time(log, " INFO ")
    consuming = log_time(log, ": consuming ")
    assigned = log_time(log, ": assigned ")
    nan = float("nan")
    rate, cpu, batches = loop_rate(progress, n)
    return {"rate": rate, "cpu": cpu, "batches": batches, "peak": peak, "series": series, "ours": ours,
            "windows": windows, "first_commit": (first_commit_wall or nan) - spawned,
            "startup": (assigned or nan) - spawned, "imports": (started or nan) - spawned,
            "build": (consuming or nan) - (started or nan), "join": (assigned or nan) - (consuming or nan)}


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, nargs="+", default=[1, 10, 300], help="fleet sizes (models per process)")
    ap.add_argument("--windows", type=int, nargs="+", default=[1000, 100], help="count window sizes (events)")
    ap.add_argument("--events", type=int, default=1_000_000, help="events per topic (all models together)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--features", type=int, default=8, help=f"numeric features per model (at most {len(NUM)}); "
                    f"plus {CATEGORICAL} categorical")
    ap.add_argument("--reference", type=int, default=1000,
                    help="warm-up reference events per model (default 1000, not the config's 5000: with 300 models "
                    "and 1M events each model gets ~3,300 events and must get past its warm-up to evaluate windows)")
    ap.add_argument("--partitions", type=int, default=1, help="partitions of the predictions topic")
    ap.add_argument("--stall", type=float, default=300.0, help="give up on a monitor whose committed offsets do "
                    "not move for this many seconds")
    args = ap.parse_args()
    if not 0 <= args.features <= len(NUM):
        ap.error(f"--features: 0 .. {len(NUM)}")
    tune_gc()  # the monitor's garbage-collector settings, for the bare loop too (as kafka_throughput.py)
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    with kafka_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for n_models in args.models:
            names = model_names(n_models)
            # the config the children get, validated here: every model must have the defaults' features
            cfg = parse_config(fleet_config("t", args.partitions, args.windows[0], names, args.features,
                                            args.reference, 0))
            assert all(len(m.features.numeric) == args.features and len(m.features.categorical) == CATEGORICAL
                       for m in cfg.models.values()), "defaults: not merged into the models"
            topic = f"fleet-{n_models}-{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            size = produce_fleet(bootstrap, topic, args.events, args.partitions, names, args.features)
            print(f"{n_models} models: produced {args.events:,} events to {topic} ({args.partitions} partition(s), "
                  f"~{size} bytes each, ~{args.events / n_models:,.0f} events per model) in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            bare(bootstrap, topic, args.events)  # warm-up, discarded: a topic's first read is cold
            if not cells:  # warm-up, discarded: the first child is cold (page cache, the broker's first transaction)
                m = monitor(bootstrap, fleet_config(topic, args.partitions, args.windows[0], names, args.features,
                                                    args.reference, free_port()), args.events, workdir, args.stall)
                print(f"warm-up run of the monitor ({n_models} models, window {args.windows[0]}, discarded): "
                      f"{m['rate']:,.0f} events/s, start-up {m['startup']:.2f} s", flush=True)
            for window in args.windows:
                per_model = args.events / n_models
                if per_model < args.reference + window:
                    print(f"  note: {per_model:,.0f} events per model < reference {args.reference:,} + window "
                          f"{window:,}: few or no windows are evaluated", flush=True)
                cell: dict[str, Any] = {"bare": [], "runs": [], "ratios": []}
                for r in range(args.rounds):
                    base, base_cpu = bare(bootstrap, topic, args.events)
                    raw = fleet_config(topic, args.partitions, window, names, args.features, args.reference,
                                       free_port())
                    m = monitor(bootstrap, raw, args.events, workdir, args.stall)
                    cell["bare"].append(base)
                    cell["runs"].append(m)
                    cell["ratios"].append(m["rate"] / base)
                    print(f"models {n_models} window {window} round {r + 1}: bare consume + orjson.loads "
                          f"{base:,.0f} events/s ({base_cpu:.2f} us CPU per event) | stream-monitor "
                          f"{m['rate']:,.0f} events/s ({m['cpu']:.2f} us CPU per event of its loop thread, "
                          f"{m['batches']} batch ends seen) | ratio {m['rate'] / base:.2f} | "
                          f"peak RSS {m['peak']:.0f} MiB | start-up (spawn -> 'assigned') {m['startup']:.2f} s "
                          f"[imports {m['imports']:.2f} s, config + monitor + topics {m['build']:.2f} s, group join "
                          f"{m['join']:.2f} s]; spawn -> first commit {m['first_commit']:.2f} s | /metrics "
                          f"{m['series']} series ({m['ours']} stream_monitor_*) | {m['windows']:,.0f} windows "
                          "evaluated", flush=True)
                cells[(n_models, window)] = cell
                print(f"models {n_models} window {window}: median ratio monitor/bare {median(cell['ratios']):.2f} "
                      f"over {args.rounds} round(s)", flush=True)

    print(f"\nsummary ({args.events:,} events per topic, {args.features} numeric + {CATEGORICAL} categorical "
          f"features per model, reference {args.reference:,} events, {args.partitions} partition(s), medians of "
          f"{args.rounds} round(s); {os.cpu_count()} CPUs shared with the broker)")
    head = (f"{'models':>6} {'window':>6} {'bare ev/s':>11} {'monitor ev/s':>12} {'ratio':>5} {'peak RSS':>9} "
            f"{'RSS/model':>10} {'start-up':>8} {'1st commit':>10} {'series':>7} {'sm_*':>6} {'windows':>8}")
    print(head)
    print("-" * len(head))
    for (n_models, window), cell in cells.items():
        runs = cell["runs"]
        peak = median([m["peak"] for m in runs])
        one = cells.get((1, window))
        per_model = "-"
        if one is not None and n_models > 1:
            per_model = f"{(peak - median([m['peak'] for m in one['runs']])) * 1024 / (n_models - 1):.0f} KiB"
        med = {k: median([m[k] for m in runs]) for k in ("rate", "startup", "first_commit", "series", "ours",
                                                           "windows")}
        print(f"{n_models:>6} {window:>6} {median(cell['bare']):>11,.0f} {med['rate']:>12,.0f} "
              f"{median(cell['ratios']):>5.2f} {peak:>5.0f} MiB {per_model:>10} {med['startup']:>6.2f} s "
              f"{med['first_commit']:>8.2f} s {med['series']:>7.0f} {med['ours']:>6.0f} {med['windows']:>8,.0f}")
    print("units: events/s; ratio = monitor/bare events/s, same run; peak RSS = VmHWM of the monitor process (MiB); "
          "RSS/model = (peak RSS with N models - with 1) / (N - 1) (KiB); start-up = spawn of `stream-monitor run` "
          "-> its 'assigned' log line (s); 1st commit = spawn -> first committed offset (s); series = non-comment "
          "lines of /metrics after the run (sm_* = named stream_monitor_*); windows = drift windows evaluated "
          "(all models)")


if __name__ == "__main__":
    main()
