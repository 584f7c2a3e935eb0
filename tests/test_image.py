"""Which decoder the monitor runs: `stream-monitor --version` and the first line of `run` say it, and the image's
build and CI (.ci/image, which builds the image and runs it against a broker) check for that same wording."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
import yaml

import stream_monitor
from stream_monitor import cli
from stream_monitor.core import events, sketches, stats

ROOT = Path(__file__).resolve().parents[1]
ALL_COMPILED = "(decoder: compiled; statistics: compiled; panes: compiled)"


def _version(capsys) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    return capsys.readouterr().out.strip()


def test_version_names_the_version_and_the_parts_this_process_uses(capsys):
    want = {"decoder": events._columnar is not None, "statistics": stats.compiled(), "panes": sketches.compiled()}
    line = _version(capsys)
    m = re.fullmatch(r"stream-monitor (\S+) \(decoder: ([^;]+); statistics: ([^;]+); panes: ([^;]+)\)", line)
    assert m, line
    assert m.group(1) == stream_monitor.__version__
    for (part, compiled), said in zip(want.items(), m.groups()[1:], strict=True):
        assert (said == "compiled") == compiled, (part, said)


def test_version_says_the_fallback_and_why(capsys, monkeypatch):
    monkeypatch.setattr(events, "_columnar", None)
    monkeypatch.setattr(stats, "_kernel", None)
    monkeypatch.setattr(sketches, "_kernel", None)
    line = _version(capsys)
    assert re.fullmatch(r"stream-monitor \S+ \(decoder: python fallback, (disabled|not built); "
                        r"statistics: numpy fallback, (disabled|not built); "
                        r"panes: numpy fallback, (disabled|not built)\)", line), line


def test_the_image_build_and_its_ci_check_the_wording_version_prints(capsys, monkeypatch):
    for module, name in ((events, "_columnar"), (stats, "_kernel"), (sketches, "_kernel")):
        monkeypatch.setattr(module, name, object())
    assert _version(capsys).endswith(" " + ALL_COMPILED)
    assert ALL_COMPILED in (ROOT / "Dockerfile").read_text()
    assert ALL_COMPILED in (ROOT / ".ci" / "image").read_text()


def test_dockerfile_takes_its_base_as_an_argument_and_builds_in_a_stage_of_its_own():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)  # registry users keep the official image
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M)
    assert froms[0] == ("${BASE}", "toolchain") and froms[-1] == ("${BASE}", "")  # the runtime: the base as is
    stages = dict(zip([name or "runtime" for _, name in froms], re.split(r"^FROM .*$", text, flags=re.M)[1:]))
    assert "gcc" in stages["toolchain"] and "python3-dev" in stages["toolchain"]
    assert "ext-modules" in stages["build"]  # the wheel is checked for every compiled module of pyproject.toml
    assert "gcc" not in stages["runtime"] and "--from=build" in stages["runtime"]  # the wheels, no compiler


def test_run_logs_the_decoder_first(tmp_path, caplog, monkeypatch):
    started = []

    class Service:  # stands in for the Kafka service: this test is about the start-up line only
        def __init__(self, *args, **kwargs) -> None:
            started.append(args)

        def run(self) -> None:
            pass

        def stop(self) -> None:
            pass

    import stream_monitor.kafka.runner as runner

    monkeypatch.setattr(runner, "MonitorService", Service)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"prometheus": {"port": None},
                                   "models": {"m": {"features": {"numeric": ["a"], "categorical": []}}}}))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    caplog.set_level(logging.INFO, logger="stream_monitor.cli")
    try:
        assert cli.main(["run", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:9"]) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert started
    lines = [r.getMessage() for r in caplog.records if r.name == "stream_monitor.cli"]
    assert lines and lines[0] == cli.version_line()
