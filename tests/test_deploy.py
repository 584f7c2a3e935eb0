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
    assert re.search(r"^RUN pip install \.", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["stream-monitor"\]', text, re.M)
    assert "pip install" not in "".join(re.findall(r"^CMD .*", text, re.M))  # nothing installed at start
