"""`alerts forward` against a real broker and a real Alertmanager on loopback: fire, show, resolve."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream_monitor.alertmanager import AlertmanagerClient
from stream_monitor.core.monitor import Monitor
from stream_monitor.kafka.clients import Connection
from stream_monitor.kafka.forwarder import AlertForwarder
from tests.binaries import Server, free_port, require, wait_for
from tests.kafka.helpers import committed, config, create_topic, produce
from tests.streams import make_events, model_config

pytestmark = pytest.mark.kafka

AM_CONFIG = """
route: {receiver: blackhole, group_wait: 1s, group_interval: 1s}
receivers: [{name: blackhole}]
"""


@pytest.fixture
def alertmanager(tmp_path):
    exe = require("prometheus-alertmanager")
    port = free_port()
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    argv = [exe, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with Server(argv, f"http://127.0.0.1:{port}/-/ready", tmp_path / "alertmanager.log"):
        yield f"http://127.0.0.1:{port}"


def drift_alerts(cfg):
    """Real alert events from the core: a drift on feature a that fires, then clears."""
    rng = np.random.default_rng(7)
    mon = Monitor(cfg)
    events = (make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
              + make_events(2000, rng, start=3000))
    alerts = []
    for i in range(0, len(events), 500):
        alerts += mon.process(events[i:i + 500]).alerts
    return [a.to_dict() for a in alerts]


def test_an_alert_fires_in_alertmanager_with_its_labels_then_resolves(kafka_bootstrap, run_id, alertmanager):
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})})
    alerts = drift_alerts(cfg)
    assert [a["status"] for a in alerts] == ["firing", "resolved"]
    firing, resolved = alerts
    create_topic(kafka_bootstrap, cfg.topics.alerts)
    produce(kafka_bootstrap, cfg.topics.alerts, [firing, firing], key=firing["dedup_key"].encode())  # + a re-send
    am = AlertmanagerClient(alertmanager)
    fwd = AlertForwarder(cfg, Connection(kafka_bootstrap, {}), alertmanager)
    worker = threading.Thread(target=fwd.run)
    worker.start()
    try:
        shown = wait_for(lambda: [a for a in am.alerts() if a["labels"].get("alert_id") == firing["alert_id"]],
                         what="the alert in Alertmanager")
        assert len(shown) == 1
        got = shown[0]
        assert got["labels"] == {"alertname": "DataDrift", "model": "m", "kind": "data_drift",
                                 "severity": firing["severity"], "feature": "a", "alert_id": firing["alert_id"]}
        assert got["annotations"]["summary"] == firing["message"]
        assert got["annotations"]["runbook_url"].endswith("#runbook-data_drift")
        assert got["status"]["state"] == "active"
        assert fwd.metrics.posted.labels("firing")._value.get() == 1  # the duplicate was not posted again

        produce(kafka_bootstrap, cfg.topics.alerts, [resolved], key=resolved["dedup_key"].encode())
        wait_for(lambda: not [a for a in am.alerts() if a["labels"].get("alert_id") == firing["alert_id"]],
                 what="the alert to resolve")
        wait_for(lambda: committed(kafka_bootstrap, fwd.group, cfg.topics.alerts) == 3, what="the offset commit")
    finally:
        fwd.stop()
        worker.join(60)
    assert fwd.metrics.posted.labels("resolved")._value.get() == 1
    # at least once, and committed: a new forwarder of the same group has nothing left to post
    again = AlertForwarder(cfg, Connection(kafka_bootstrap, {}), alertmanager)
    import time
    assert again.run(until=time.monotonic() + 5) == 0
