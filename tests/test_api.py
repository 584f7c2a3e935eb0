"""The README's Python API example runs as written, and the package exposes what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import stream_monitor

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs_and_alerts(capsys):
    text = README.read_text()
    section = text.split("## Python API: the core without Kafka", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "data_drift on feature 'a' over threshold" in capsys.readouterr().out


def test_package_exports_monitor_and_config_and_version():
    from stream_monitor.core.monitor import Monitor

    assert stream_monitor.Monitor is Monitor
    assert callable(stream_monitor.parse_config) and stream_monitor.__version__
