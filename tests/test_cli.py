"""The command line: config checks and reference artifacts from past predictions."""

from __future__ import annotations

import csv

import numpy as np
import orjson
import yaml

from stream_monitor.cli import main
from stream_monitor.config import load_config
from stream_monitor.core.monitor import Monitor
from stream_monitor.core.reference import Reference
from tests.streams import make_events, model_config


def write_config(tmp_path, **model):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": model_config(**model)}}))
    return path


def test_check_config_reports_the_bad_key(tmp_path, capsys):
    good = write_config(tmp_path)
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"m": {**model_config(), "window": {"size": -1}}}}))
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "models.m.window.size" in capsys.readouterr().err


def test_reference_build_from_jsonl_and_csv_gives_the_same_reference(tmp_path):
    cfg_path = write_config(tmp_path)
    events = make_events(3000, np.random.default_rng(61))
    jsonl = tmp_path / "past.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    with (tmp_path / "past.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        feats = list(events[0]["features"])
        w.writerow(["event_id", "model", "model_version", "timestamp", "prediction", "score", *feats])
        for e in events:
            w.writerow([e["event_id"], e["model"], e["model_version"], e["timestamp"], e["prediction"], e["score"],
                        *(e["features"][f] for f in feats)])
    for src in ("past.jsonl", "past.csv"):
        assert main(["reference", "build", "--config", str(cfg_path), "--model", "m", "--input",
                     str(tmp_path / src), "--output", str(tmp_path / f"{src}.ref.json")]) == 0
    a = Reference.load(tmp_path / "past.jsonl.ref.json")
    b = Reference.load(tmp_path / "past.csv.ref.json")
    assert a.id == b.id and a.id.startswith("file:") and a.pane.n == 3000


def test_a_file_reference_drives_the_monitor_and_is_cited(tmp_path):
    past = tmp_path / "past.jsonl"
    past.write_bytes(b"\n".join(orjson.dumps(e) for e in make_events(5000, np.random.default_rng(62))))
    cfg_path = write_config(tmp_path, reference={"type": "file", "path": "ref.json"})
    assert main(["reference", "build", "--config", str(cfg_path), "--model", "m", "--input", str(past),
                 "--output", str(tmp_path / "ref.json")]) == 0
    mon = Monitor(load_config(cfg_path))  # no warm-up: the first window is already compared
    rng = np.random.default_rng(63)
    alerts = []
    for i in range(4):
        alerts += mon.process(make_events(1000, rng, start=i * 1000, a_mean=0.8)).alerts
    assert alerts and alerts[0].reference_id == Reference.load(tmp_path / "ref.json").id
    assert {f["feature"] for f in alerts[0].features} == {"a"}


def test_reference_build_names_the_bad_line(tmp_path, capsys):
    cfg_path = write_config(tmp_path)
    past = tmp_path / "past.jsonl"
    past.write_bytes(orjson.dumps(make_events(1, np.random.default_rng(0))[0]) + b"\n{broken\n")
    assert main(["reference", "build", "--config", str(cfg_path), "--model", "m", "--input", str(past),
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "line 2" in capsys.readouterr().err
