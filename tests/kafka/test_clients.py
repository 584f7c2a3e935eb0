"""Client settings built by the connection (no broker needed: the settings each client is built with)."""

from __future__ import annotations

from typing import Any

import pytest

from stream_monitor.config import parse_config
from stream_monitor.kafka import clients
from stream_monitor.kafka.clients import Connection, make_consumer
from tests.streams import model_config


def _settings(monkeypatch: pytest.MonkeyPatch, kafka: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the monitor's consumer and another consumer (a reader's) are built with, for this kafka section."""
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(clients, "Consumer", lambda conf: built.append(conf))
    cfg = parse_config({"models": {"m": model_config()}, "kafka": kafka})
    conn = Connection.from_config(cfg, "localhost:9092")
    make_consumer(cfg, conn)
    conn.consumer({"group.id": "reader"})
    return built[0], built[1]


def test_consumers_fetch_again_within_milliseconds_when_their_queue_drains(monkeypatch):
    # librdkafka's default (1 s) stalls a consumer that drains its full local queue faster than that
    monitor, reader = _settings(monkeypatch, {})
    assert monitor["fetch.queue.backoff.ms"] == reader["fetch.queue.backoff.ms"] == 20
    # the user's settings win: kafka.connection (every client), then kafka.consumer (the monitor's consumer)
    monitor, reader = _settings(monkeypatch, {"connection": {"fetch.queue.backoff.ms": 100}})
    assert monitor["fetch.queue.backoff.ms"] == reader["fetch.queue.backoff.ms"] == 100
    monitor, reader = _settings(monkeypatch, {"connection": {"fetch.queue.backoff.ms": 100},
                                              "consumer": {"fetch.queue.backoff.ms": 5}})
    assert (monitor["fetch.queue.backoff.ms"], reader["fetch.queue.backoff.ms"]) == (5, 100)
