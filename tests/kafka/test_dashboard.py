"""The Grafana dashboard's queries against a real Prometheus scraping a running monitor: every one has data."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from stream_monitor.core.state import TaskId
from stream_monitor.exporter import MonitorMetrics
from tests.binaries import Server, free_port, require, wait_for
from tests.kafka.helpers import Running, config, create_topic
from tests.streams import classifier_config, labeled_stream

pytestmark = pytest.mark.kafka

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "stream-monitor.json"

#: Grafana's variables as a query of the dashboard would see them, for a 1 s scrape interval
VARIABLES = {"$__rate_interval": "15s", "${datasource}": "prometheus", "$model": "clf", "$job": "stream-monitor"}


def queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for k, v in VARIABLES.items():
                expr = expr.replace(k, v)
            assert "$" not in expr, f"unknown variable in {t['expr']}"
            out.append((f"{panel['title']} / {t['refId']}", expr))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def query(base: str, expr: str) -> list:
    if expr.startswith("label_values("):  # a Grafana variable: the label's values of a series
        metric, label = expr[len("label_values("):-1].split(", ")
        url = f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
    else:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = orjson.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"] if isinstance(body["data"], dict) else body["data"]


def history():
    """A classifier whose input x shifts in window 4 (drift, an alert, the breaker opens), with late labels
    for the performance panels, latency for the latency panel, and one malformed message (a dead letter)."""
    rng = np.random.default_rng(21)
    preds, labels = [], []
    for i in range(6):
        p, lab = labeled_stream(1200, rng, start=i * 1200)
        if i >= 3:
            for e in p:
                e["features"]["x"] += 1.5
        preds += p
        labels += lab
    return preds, labels


def test_every_dashboard_query_returns_data_from_a_real_prometheus(kafka_bootstrap, run_id, tmp_path):
    exe = require("prometheus")
    breaker = {"enabled": True, "primary_version": "v1", "fallback_version": "v0",
               "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 1}]}
    cfg = config(run_id, {"clf": classifier_config(breaker=breaker)})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.labels)
    metrics_port, prom_port = free_port(), free_port()
    metrics = MonitorMetrics()
    metrics.serve(metrics_port, "127.0.0.1")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: stream-monitor\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    argv = [exe, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}"]
    base = f"http://127.0.0.1:{prom_port}"
    preds, labels = history()
    with Server(argv, f"{base}/-/ready", tmp_path / "prometheus.log"), \
            Running(cfg, kafka_bootstrap, metrics=metrics) as run:
        items = sorted([(p["timestamp"], cfg.topics.predictions, p) for p in preds]
                       + [(lab["timestamp"], cfg.topics.labels, lab) for lab in labels], key=lambda x: x[0])
        prod = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
        for _, topic, ev in items:
            prod.produce(topic, key=b"clf", value=orjson.dumps(ev))
            prod.poll(0)
        prod.produce(cfg.topics.predictions, key=b"clf", value=b"not an event")
        assert prod.flush(30) == 0
        run.wait_consumed(len(items) + 1, timeout=120)
        wait_for(lambda: query(base, 'up{job="stream-monitor"} == 1'), what="the first scrape")
        missing = {}
        for name, expr in queries():  # polled: rates need two scrapes, the lag gauge the next progress line
            try:
                wait_for(lambda: query(base, expr), timeout=30, what=name)
            except AssertionError:
                missing[name] = expr
        assert not missing, f"dashboard queries without data: {missing}"
        # the state the breaker panel shows: open, or half-open when the hold-down ended (its event time follows
        # how the predictions and labels topics interleave, which the consumer does not control)
        assert run.service.tasks[TaskId(0)].breakers["clf"].state in ("open", "half_open")
