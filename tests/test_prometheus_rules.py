"""deploy/prometheus: the health rules and the compose Prometheus config, checked and unit-tested by promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.binaries import require

DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, cwd=DIR, timeout=120)


def test_rules_pass_promtool_check():
    done = promtool("check", "rules", "stream-monitor.rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_rule_unit_tests_pass_and_cover_every_alert():
    done = promtool("test", "rules", "stream-monitor.rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    rules = {r["alert"] for g in yaml.safe_load((DIR / "stream-monitor.rules.yml").read_text())["groups"]
             for r in g["rules"]}
    tests = yaml.safe_load((DIR / "stream-monitor.rules.test.yml").read_text())["tests"]
    fired = {t["alertname"] for group in tests for t in group.get("alert_rule_test", []) if t["exp_alerts"]}
    assert fired == rules  # every rule is shown to fire at least once


def test_rules_only_use_metrics_the_monitor_exports():
    from prometheus_client import generate_latest

    from stream_monitor.exporter import MonitorMetrics
    from stream_monitor.alertmanager import ForwarderMetrics

    text = (DIR / "stream-monitor.rules.yml").read_text()
    exported = (generate_latest(MonitorMetrics().registry).decode()
                + generate_latest(ForwarderMetrics().registry).decode())
    used = set(re.findall(r"\b(stream_monitor_[a-z_]+)", text))
    names = {line.split()[2] for line in exported.splitlines() if line.startswith("# TYPE")}
    for name in used:
        base = name.removesuffix("_total")
        assert name in names or base in names, f"{name} is used by a rule but not exported"


def test_compose_prometheus_config_is_valid_and_loads_the_rules():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout
