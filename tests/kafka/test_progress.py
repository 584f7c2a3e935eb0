"""The progress line: messages and rate of the last interval (not since start), and the consumer lag."""

from __future__ import annotations

import pytest
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_monitor.exporter import MonitorMetrics
from stream_monitor.kafka.progress import Progress, consumer_lag
from stream_monitor.kafka.runner import ServiceStats
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.kafka


def test_lag_counts_what_is_left_after_the_processed_offsets_and_the_line_shows_the_interval(
        kafka_bootstrap, run_id):
    topic = f"progress-{run_id}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(100):  # 50 in each partition: a partitioner could put them all in one
        p.produce(topic, value=orjson.dumps({"i": i}), partition=i % 2)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{run_id}", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        got = []
        while len(got) < 100:  # every message fetched once: the cached high watermarks are known
            got += [m for m in c.consume(100, 1.0) if m.error() is None]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] for p in (0, 1)}
        assert sum(ends.values()) == 100
        positions = {(topic, 0): ends[0] - 10, (topic, 1): ends[1] - 20}  # 30 not processed yet
        assert consumer_lag(c, positions) == {topic: 30}

        metrics = MonitorMetrics(process=False)
        progress = Progress(metrics)
        stats = ServiceStats(messages=1000)
        progress.line(stats, c, positions, 2)
        stats.messages = 1070  # 70 more in the next interval
        line = progress.line(stats, c, positions, 2)
        assert line.startswith("consumed 70 messages in ") and "1070 in all" in line
        assert f"lag {topic} 30" in line
        assert metrics.consumer_lag.labels(topic)._value.get() == 30
    finally:
        c.close()
    assert consumer_lag(c, {}) == {}  # a closed consumer (the last line on stop): no lag, no error
