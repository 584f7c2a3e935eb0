"""`stream-monitor backtest --topic`: a range of a real topic, by offsets and by event times."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import yaml

from stream_monitor.cli import main
from confluent_kafka import Producer

from tests.kafka.helpers import config_dict, create_topic
from tests.streams import make_events, model_config

pytestmark = pytest.mark.kafka


def test_backtest_reads_an_offset_range_and_a_time_range_of_a_topic(kafka_bootstrap, run_id, tmp_path, capsys):
    raw = config_dict(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000})})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    topic = f"history-{run_id}"
    create_topic(kafka_bootstrap, topic)
    rng = np.random.default_rng(4)
    events = make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for e in events:  # record timestamps = event times, as a producer setting CreateTime from the event does
        p.produce(topic, key=b"m", value=orjson.dumps(e), timestamp=int(e["timestamp"] * 1000))
        p.poll(0)
    p.produce(topic, key=b"m", value=b"not json", timestamp=int(events[-1]["timestamp"] * 1000))
    assert p.flush(30) == 0
    base = ["backtest", "--config", str(tmp_path / "c.yaml"), "--bootstrap-servers", kafka_bootstrap,
            "--topic", topic]
    assert main([*base, "--from", "0", "--to", "2000"]) == 0
    out = capsys.readouterr().out
    assert "2000 predictions, 0 labels replayed" in out and "model m: 2 windows" in out
    assert "data_drift on feature 'a'" in out  # windows 1000..2000 drifted
    # by record time: the first 1000 events (the reference) only, the bound as an ISO 8601 time
    from datetime import datetime, timezone

    iso = datetime.fromtimestamp(events[1000]["timestamp"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main([*base, "--to", iso, "--json"]) == 0
    out = capsys.readouterr().out
    assert "1000 predictions, 0 labels replayed" in out and "model m: 0 windows" in out
    assert not [line for line in out.splitlines() if line.startswith("{") and orjson.loads(line)]
    # the whole topic: the junk message is counted, not replayed
    assert main(base) == 0
    got = capsys.readouterr()
    assert "3000 predictions" in got.out and "1 messages of" in got.err
