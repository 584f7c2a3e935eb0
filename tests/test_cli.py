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
    assert "group stream-monitor: " in capsys.readouterr().out  # names the topics it would use
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


def test_check_config_catches_what_run_would_with_hints(tmp_path, capsys):
    cases = [
        ({"windw": {"size": 3}}, "models.m.windw: unknown key (did you mean 'window'?)"),
        ({"reference": {"type": "file", "path": "missing.json"}}, "models.m.reference.path: cannot read"),
        ({"concept_drift": [{"type": "adwin", "params": {"delt": 0.01}}],
          "performance": {"task": "binary", "positive_label": 1}},
         "models.m.concept_drift.0.params.delt: adwin has no parameter 'delt' (did you mean 'delta'?)"),
        ({"breaker": {"enabled": True, "primary_version": "v1", "fallback_version": "v0",
                      "rules": [{"kinds": ["data_drift"], "features": ["b_"]}]}},
         "models.m.breaker.rules.0.features: 'b_' is not a feature of this model (did you mean 'b'?)"),
    ]
    for extra, message in cases:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"models": {"m": {**model_config(), **extra}}}))
        assert main(["check-config", "--config", str(path)]) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_connection_settings_outside_kafka_connection_are_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"consumer": {"sasl.password": "hunter2"}},
                                    "models": {"m": model_config()}}))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kafka.consumer.sasl.password: connection and security settings go under kafka.connection" in err
    assert "hunter2" not in err


def test_a_prometheus_port_in_use_is_named(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1"},
                                        "prometheus": {"port": port, "host": "127.0.0.1"},
                                        "models": {"m": model_config()}}))
        assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"prometheus.port {port} on 127.0.0.1 is not available" in err and "another monitor" in err


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_of_every_command_has_help_and_every_command_examples():
    from stream_monitor.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"run", "check-config", "backtest", "alerts forward", "alerts tail", "breaker status",
            "reference build"} <= set(commands)
    for name, sub in commands.items():
        leaf = not any(a.__class__.__name__ == "_SubParsersAction" for a in sub._actions)
        if not leaf:
            continue
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"
        assert "examples:" in (sub.epilog or "") and "exit codes:" in sub.epilog, name


def test_version_and_exit_codes(tmp_path, capsys, monkeypatch):
    import pytest

    import stream_monitor

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"stream-monitor {stream_monitor.__version__} (decoder: ")
    with pytest.raises(SystemExit) as done:
        main(["run"])  # a missing option: argparse's usage error
    assert done.value.code == 2
    cfg = write_config(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert main(["alerts", "tail", "--config", str(cfg)]) == 2  # no broker anywhere: a usage error, one line
    assert "no broker" in capsys.readouterr().err
    assert main(["reference", "build", "--config", str(cfg), "--model", "nope", "--input", str(cfg),
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "model 'nope' is not in" in capsys.readouterr().err
    assert main(["backtest", "--config", str(cfg)]) == 2  # neither --input nor --topic
    assert "either --input" in capsys.readouterr().err


def test_check_config_names_the_internal_topics_of_the_group(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"group_id": "fraud"}, "models": {"m": model_config()}}))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "group fraud: reads predictions; " in out and "internal fraud.state, fraud.join" in out
