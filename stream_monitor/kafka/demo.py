"""``make demo``: a loan-approval model whose inputs drift partway, monitored end to end on a real broker.

Gets a broker (``KAFKA_BOOTSTRAP_SERVERS``, a testcontainers container, or Kafka from Maven jars), runs the
monitor with ``config/example.yaml``, produces a synthetic workload that drifts after 60 % of it, and prints
the alerts as they arrive on the alert topic. Everything stops when the workload has been consumed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["loan_events", "main"]

EMPLOYMENT = ["salaried", "self-employed", "retired", "student"]
PURPOSE = ["home", "car", "education", "debt", "business"]
REGION = ["north", "south", "east", "west"]


def loan_events(n: int, rng: np.random.Generator, drift: bool = False, start_id: int = 0, t0: float = 1.7e9,
                model: str = "loan-approval") -> list[dict[str, Any]]:
    """``n`` loan-approval prediction events. With ``drift``: income and credit score shift, a new purpose
    category ("crypto") appears and the region mix changes; the other features keep their distribution."""
    income = rng.lognormal(10.8 + (0.35 if drift else 0.0), 0.5, n)
    loan = rng.lognormal(9.5, 0.7, n)
    credit = rng.normal(680 - (40 if drift else 0), 60, n).clip(300, 850)
    dti = rng.beta(2, 5, n)
    age = rng.integers(21, 75, n)
    employment = rng.choice(EMPLOYMENT, n, p=[0.6, 0.2, 0.12, 0.08])
    purpose_names = PURPOSE + (["crypto"] if drift else [])
    purpose_p = [0.35, 0.25, 0.1, 0.2, 0.1] if not drift else [0.3, 0.2, 0.1, 0.15, 0.1, 0.15]
    purpose = rng.choice(purpose_names, n, p=purpose_p)
    region = rng.choice(REGION, n, p=[0.25, 0.25, 0.25, 0.25] if not drift else [0.55, 0.15, 0.15, 0.15])
    z = (np.log(income) - 10.8) * 1.5 + (credit - 680) / 60 - 3 * (dti - 0.28) - 0.3 * (np.log(loan) - 9.5)
    score = 1 / (1 + np.exp(-z))
    latency = rng.gamma(4, 8, n)
    return [
        {
            "event_id": f"ev-{start_id + i}",
            "model": model,
            "model_version": "v3",
            "timestamp": t0 + (start_id + i) * 0.05,
            "features": {
                "income": round(float(income[i]), 2), "loan_amount": round(float(loan[i]), 2),
                "credit_score": round(float(credit[i]), 1), "debt_to_income": round(float(dti[i]), 4),
                "age": int(age[i]), "employment": str(employment[i]), "purpose": str(purpose[i]),
                "region": str(region[i]),
            },
            "prediction": "approve" if score[i] >= 0.5 else "decline",
            "score": round(float(score[i]), 4),
            "latency_ms": round(float(latency[i]), 2),
        }
        for i in range(n)
    ]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from ..config import load_config
    from .broker import kafka_broker
    from .router import BreakerClient
    from .runner import MonitorService

    ap = argparse.ArgumentParser(prog="python -m stream_monitor.kafka.demo")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "config" / "example.yaml"))
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    run = uuid.uuid4().hex[:6]  # fresh topics and group: reruns against your own cluster start clean
    base = load_config(args.config)
    # the internal topics (state, join, ...) follow the demo's group id: demo-<run>.state, ...
    topics = base.topics.model_copy(update={
        "predictions": f"demo-{run}.predictions", "labels": f"demo-{run}.labels", "alerts": f"demo-{run}.alerts",
        "breaker": f"demo-{run}.breaker", "dead_letter": f"demo-{run}.dead-letter",
        "metrics": f"demo-{run}.metrics", "partitions": 1}).for_group(f"demo-{run}")
    cfg = base.model_copy(update={"topics": topics,
                                  "kafka": base.kafka.model_copy(update={"group_id": f"demo-{run}"})})
    with kafka_broker() as bootstrap:
        from confluent_kafka.admin import NewTopic

        from .clients import Connection

        conn = Connection.from_config(cfg, bootstrap)
        admin = conn.admin()
        for fut in admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)
                                        for t in (topics.predictions, topics.labels)]).values():
            fut.result(30)
        service = MonitorService(cfg, bootstrap, log_every_s=5)
        worker = threading.Thread(target=service.run, name="monitor", daemon=True)
        worker.start()

        rng = np.random.default_rng(7)
        t0 = time.time() - args.events * 0.05  # event times: the last args.events * 50 ms up to now
        drift_from = int(args.events * 0.6)
        producer = conn.producer({"linger.ms": 10})
        _say(f"producing {args.events} loan-approval events to {topics.predictions}; inputs drift from event "
             f"{drift_from} on (income, credit_score, new purpose 'crypto', region mix)")
        for start in range(0, args.events, 1000):
            n = min(1000, args.events - start)
            for ev in loan_events(n, rng, drift=start >= drift_from, start_id=start, t0=t0):
                producer.produce(topics.predictions, key=ev["model"].encode(), value=orjson.dumps(ev))
                producer.poll(0)
            producer.flush()
            _say(f"  produced {start + n}/{args.events}")
        tail = conn.consumer({"group.id": f"demo-tail-{run}", "auto.offset.reset": "earliest",
                              "isolation.level": "read_committed"})
        tail.subscribe([topics.alerts])
        del producer
        router = BreakerClient(conn, topics.breaker)
        _say(f"alerts on {topics.alerts}, breaker decisions on {topics.breaker}:")
        deadline = time.monotonic() + args.timeout
        start_wait = time.monotonic()
        seen = 0
        idle_since = None
        while time.monotonic() < deadline and worker.is_alive():
            for sig in router.poll():
                print(f"  BREAKER {sig.model}: {sig.state} (epoch {sig.epoch}, primary {sig.primary_version} "
                      f"gets {sig.primary_share:.0%}) - {sig.reason}", flush=True)
            msg = tail.poll(0.5)
            if msg is not None and not msg.error():
                alert = orjson.loads(msg.value())
                seen += 1
                print(f"  ALERT {alert['status']:8s} {alert['message']}", flush=True)
                idle_since = None
                continue
            if time.monotonic() - start_wait > 2 and service.stats.messages < args.events:
                start_wait = time.monotonic()
                if service.stats.messages == 0:
                    _say("waiting for the monitor to join its consumer group...")
                else:
                    _say(f"  monitor consumed {service.stats.messages}/{args.events} events, "
                         f"{service.stats.windows} windows evaluated")
            done = service.stats.messages >= args.events
            idle_since = idle_since or (time.monotonic() if done else None)
            if done and idle_since and time.monotonic() - idle_since > 3:
                break
        tail.close()
        router.close()
        service.stop()
        worker.join(30)
        _say(f"monitor consumed {service.stats.messages} events, published {seen} alert(s); stopping the broker")
    if service.failure is not None:
        _say(f"the monitor failed: {service.failure!r}")
        return 1
    return 0 if seen else 1


if __name__ == "__main__":
    sys.exit(main())
