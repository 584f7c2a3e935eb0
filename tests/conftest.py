"""One real Kafka broker per test session, for the tests marked ``kafka``.

The broker comes from ``stream_monitor.kafka.broker.kafka_broker``: ``KAFKA_BOOTSTRAP_SERVERS`` when set,
testcontainers when a Docker engine answers, else Apache Kafka from Maven jars. It is never mocked.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import pytest

from stream_monitor.core import compiled as compiled_parts


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from stream_monitor.kafka.broker import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap
        gc.collect()  # destroy clients the tests left behind while the broker still answers them


@pytest.fixture
def run_id() -> str:
    """A fresh suffix so every test has its own topics and consumer groups."""
    return uuid.uuid4().hex[:8]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if compiled_parts.DISABLED:  # the suite without the compiled parts: tests of them (and against them) skip
        off = pytest.mark.skip(reason=f"{compiled_parts.SWITCH}=1: the compiled parts are switched off")
        for item in items:
            params = getattr(item, "callspec", None)
            params = params.params if params is not None else {}
            if "compiled" in item.keywords or params.get("compiled") is True or params.get("path") == "compiled":
                item.add_marker(off)
    if os.environ.get("STREAM_MONITOR_SKIP_KAFKA") == "1":
        skip = pytest.mark.skip(reason="STREAM_MONITOR_SKIP_KAFKA=1")
        for item in items:
            if "kafka" in item.keywords:
                item.add_marker(skip)
