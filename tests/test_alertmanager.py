"""Alert events as Alertmanager alerts: stable labels from firing to resolution, re-posts, duplicates."""

from __future__ import annotations

import numpy as np

from stream_monitor.alertmanager import AlertBook, labels_of
from stream_monitor.config import parse_config
from stream_monitor.core.monitor import Monitor
from tests.streams import make_events, model_config


def drift_alerts():
    cfg = parse_config({"models": {"m": model_config(window={"size": 500}, reference={"size": 1000})}})
    rng = np.random.default_rng(7)
    mon = Monitor(cfg)
    events = (make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
              + make_events(2000, rng, start=3000))
    return [a.to_dict() for i in range(0, len(events), 500) for a in mon.process(events[i:i + 500]).alerts]


def test_a_resolution_carries_the_labels_of_its_firing_alert():
    firing, resolved = drift_alerts()
    assert resolved["severity"] == "info"  # in the event; Alertmanager must see the firing label set
    book = AlertBook(hold_s=600)
    (post,) = book.posts(firing, 1000.0)
    assert post["labels"] == labels_of(firing) and post["endsAt"] > post["startsAt"]
    assert book.posts(firing, 1001.0) == []  # redelivered: not posted again
    (end,) = book.posts(resolved, 1002.0)
    assert end["labels"] == post["labels"]
    assert end["endsAt"].startswith("1970-01-01T00:16:42")
    # a forwarder that restarted between firing and resolution resolves the same label set
    ends = AlertBook().posts(resolved, 1003.0)
    assert post["labels"] in [e["labels"] for e in ends]


def test_firing_alerts_are_reposted_while_they_fire_and_an_escalation_ends_the_old_label_set():
    firing, _ = drift_alerts()
    book = AlertBook(hold_s=600, resend_s=60)
    book.posts(firing, 1000.0)
    assert book.due(1030.0) == []
    (again,) = book.due(1061.0)
    assert again["labels"] == labels_of(firing)
    worse = {**firing, "severity": "warning" if firing["severity"] == "critical" else "critical",
             "features": [*firing["features"], {**firing["features"][0], "feature": "b"}]}
    old_end, new = book.posts(worse, 1100.0)
    assert old_end["labels"] == labels_of(firing) and old_end["endsAt"] < new["endsAt"]
    assert new["labels"]["severity"] == worse["severity"]
