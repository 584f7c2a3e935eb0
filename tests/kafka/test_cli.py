"""Command-line tools against a real broker."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import yaml

from stream_monitor.cli import main
from tests.kafka.helpers import Running, config, create_topic, produce, read_all
from tests.streams import make_events, model_config

pytestmark = pytest.mark.kafka


def test_alerts_tail_prints_alerts_of_the_chosen_model(kafka_bootstrap, run_id, tmp_path, capsys):
    cfg = config(run_id, {"m": model_config(window={"size": 500}, reference={"size": 1000}),
                          "other": model_config(window={"size": 500}, reference={"size": 1000})})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(81)
    events = make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
    with Running(cfg, kafka_bootstrap) as r:
        n = produce(kafka_bootstrap, cfg.topics.predictions, events)
        r.wait_consumed(n)
    assert read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1)
    raw = cfg.model_dump(mode="json")
    raw["kafka"]["bootstrap_servers"] = kafka_bootstrap
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["alerts", "tail", "--config", str(path), "--model", "m", "--json", "--timeout", "8"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines and all(a["model"] == "m" for a in lines)
    assert lines[0]["features"][0]["feature"] == "a"
    assert main(["alerts", "tail", "--config", str(path), "--model", "other", "--timeout", "4"]) == 0
    assert capsys.readouterr().out.strip() == ""  # the other model never alerted
