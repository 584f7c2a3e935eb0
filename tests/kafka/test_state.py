"""Every kind of state record goes through the real compacted topics and is read back after a restart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stream_monitor.core.state import KINDS, TaskId
from stream_monitor.exporter import MonitorMetrics
from stream_monitor.kafka.clients import Connection
from stream_monitor.kafka.compacted import STATE_CODEC, CompactedTopicReader
from tests.kafka.helpers import Running, config, create_topic, produce
from tests.streams import every_kind_config, every_kind_stream

pytestmark = pytest.mark.kafka


def state_records(cfg, bootstrap: str) -> dict:
    """(task, key) -> value of the state and join topics, as a restore reads them."""
    out = {}
    for topic in (cfg.topics.state, cfg.topics.join):
        reader = CompactedTopicReader(Connection.from_config(cfg, bootstrap), topic, codec=STATE_CODEC)
        try:
            out.update(reader.sync(timeout=60))
            assert reader.skipped == 0, reader.reasons
        finally:
            reader.close()
    return out


def test_every_record_kind_is_read_back_after_a_restart(kafka_bootstrap, run_id):
    cfg = config(run_id, every_kind_config())
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    create_topic(kafka_bootstrap, cfg.topics.labels)
    preds, labels = every_kind_stream(np.random.default_rng(41))
    produce(kafka_bootstrap, cfg.topics.predictions, preds)
    produce(kafka_bootstrap, cfg.topics.labels, labels)
    with Running(cfg, kafka_bootstrap) as run:  # stopped as SIGTERM stops it: the last commit, then close
        run.wait_consumed(len(preds) + len(labels))
    records = state_records(cfg, kafka_bootstrap)
    kinds = {key.kind for _, key in records}
    assert kinds == set(KINDS) - {"o", "m"}, "o and m (scale-out's pieces and merge chunks): scale-out mode only"
    perf = {key.part: value for (_, key), value in records.items() if key.kind == "perf"}
    assert perf

    metrics = MonitorMetrics(process=False)
    with Running(cfg, kafka_bootstrap, metrics=metrics) as again:
        deadline = time.monotonic() + 60
        while TaskId(0) not in again.service.tasks and time.monotonic() < deadline:  # assigned and restored
            time.sleep(0.1)
        mon = again.service.tasks[TaskId(0)]
        tracker = mon.models["clf"].performance
        assert {str(w): len(win.pairs) for w, win in tracker._windows.items() if win.pairs} == {
            w: len(v) for w, v in perf.items()}, "every performance window's pairs are back"
        assert mon.models["roll"].rolling is not None and len(list(mon.models["roll"].rolling.pieces()))
        assert mon.models["cal"].calendar is not None and len(list(mon.models["cal"].calendar.pieces()))
        assert mon.models["warm"].reference is None and mon.models["warm"].warmup.n == 3000
        assert mon.models["clf"].join.pending > 0
    assert again.service.stats.restore_errors == 0 and again.service.stats.skipped_records == 0
    assert metrics.checkpoint_errors._value.get() == 0
