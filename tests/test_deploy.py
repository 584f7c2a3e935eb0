"""The container image and the compose file: valid, built from this repo, non-root, config mounted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    done = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_is_valid_and_builds_the_monitor_from_this_repo(compose):
    monitor = compose["services"]["monitor"]
    assert Path(monitor["build"]["context"]).resolve() == ROOT
    assert monitor["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    mounts = [v.split(":") for v in monitor["volumes"]]  # docker-compose 1.x prints "source:target:mode"
    config_mount = next(m for m in mounts if m[1] == "/etc/stream-monitor")
    assert Path(config_mount[0]).resolve() == ROOT / "config" and config_mount[2] == "ro"
    command_config = monitor["command"][monitor["command"].index("--config") + 1]
    assert command_config.startswith("/etc/stream-monitor/")
    assert (ROOT / "config" / Path(command_config).name).exists()  # the mounted file the command reads
    assert any(m[0] in compose.get("volumes", {}) for m in mounts)  # a named volume for the monitor's data
    assert "kafka" in monitor["depends_on"]


def test_dockerfile_installs_at_build_time_and_runs_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip wheel .*\. -w /wheels", text)  # the build stage builds the package's wheel,
    assert re.search(r"pip install .*--no-index --find-links /wheels stream-monitor", text)  # the runtime its wheels
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["stream-monitor"\]', text, re.M)
    assert "pip install" not in "".join(re.findall(r"^CMD .*", text, re.M))  # nothing installed at start


def _mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's bind mounts (docker-compose 1.x prints "source:target[:mode]")."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
        out[parts[1]] = parts[0]
    return out


def test_compose_prometheus_scrapes_the_monitor_with_the_rules_and_grafana_gets_the_dashboard(compose):
    services = compose["services"]
    prom = services["prometheus"]
    assert Path(_mounts(prom)["/etc/prometheus"]).resolve() == ROOT / "deploy" / "prometheus"
    prom_cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom_cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    monitor_port = services["monitor"]["ports"][0]
    port = str(monitor_port["target"] if isinstance(monitor_port, dict) else monitor_port.split(":")[-1])
    assert f"monitor:{port}" in targets and "forwarder:9109" in targets
    assert prom_cfg["rule_files"] == ["stream-monitor.rules.yml"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    graf = _mounts(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]).resolve() == ROOT / "deploy" / "grafana" / "provisioning"
    dash_dir = next(t for t, s in graf.items() if Path(s).resolve() == ROOT / "deploy" / "grafana" / "dashboards")
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/stream-monitor.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dash_dir
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090" and "prometheus" in services

    fwd = services["forwarder"]
    assert fwd["command"][:2] == ["alerts", "forward"]
    am_url = fwd["command"][fwd["command"].index("--alertmanager") + 1]
    assert am_url == "http://alertmanager:9093" and "alertmanager" in services


def _tool_dir(tmp_path: Path, have: list[str]) -> Path:
    """A PATH holding only ``have`` (links to the real tools) and what a shell script needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "python3", "id", *have):
        real = shutil.which(name)
        assert real, name
        (bin_dir / name).symlink_to(real)
    return bin_dir


def test_make_test_installs_the_system_tools_first_and_names_what_it_cannot_install(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # (run from `make test` too)
    plan = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=root, capture_output=True, text=True,
                          check=True, env=env).stdout
    assert plan.splitlines()[0] == "bash .ci/system-deps"  # before anything is built or run
    # on this machine everything is there: nothing to do
    assert subprocess.run(["bash", ".ci/system-deps"], cwd=root, capture_output=True).returncode == 0
    # a machine without chromium, docker-compose and apt-get: it stops and names the packages
    bin_dir = _tool_dir(tmp_path, ["java", "mvn", "cc", "promtool", "prometheus", "prometheus-alertmanager"])
    done = subprocess.run([str(bin_dir / "bash"), ".ci/system-deps"], cwd=root, capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})
    assert done.returncode == 1
    assert "docker-compose chromium; install them" in done.stderr


def test_the_image_stages_install_only_what_the_base_lacks_and_say_so_without_apt(tmp_path):
    script = ROOT / "deploy" / "image" / "install-missing"
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("source=deploy/image/install-missing") == 2  # both stages, one script
    assert subprocess.run(["sh", str(script)], capture_output=True).returncode == 0  # nothing lacking: nothing
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to(shutil.which("sh"))
    done = subprocess.run([str(bin_dir / "sh"), str(script), "python3", "gcc"], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})
    assert done.returncode == 1 and "lacks python3 gcc and has no apt-get" in done.stderr
