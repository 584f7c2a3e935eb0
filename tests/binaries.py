"""Real binaries the tests run (Prometheus, promtool, Alertmanager, Chromium), found on PATH.

Missing in CI is a failure (``.ci/run`` installs Debian's packages); missing on a developer's machine skips,
with the package to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

#: binary -> the Debian package that ships it
PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager",
            "chromium": "chromium"}


def require(name: str) -> str:
    """The path of ``name`` on PATH; fails the test in CI and skips it elsewhere when absent."""
    exe = shutil.which(name)
    if exe is None:
        why = f"{name} is not installed (apt-get install {PACKAGES.get(name, name)})"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run installs it")
        pytest.skip(why)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real server process on loopback for one test: started, waited for (``ready`` URL answers 200), and
    terminated (killed if it lingers) on exit; its log is shown when it does not come up."""

    def __init__(self, argv: list[str], ready: str, log: Path, timeout: float = 60.0) -> None:
        self.argv, self.ready, self.log, self.timeout = argv, ready, log, timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.ready, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise AssertionError(f"{self.argv[0]} did not come up at {self.ready}:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._out.close()


def wait_for(check, timeout: float = 60.0, what: str = "condition"):
    """Poll ``check()`` until it returns something truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def chromium(html: Path, tmp: Path, *, screenshot: Path | None = None, size: str = "1280,2600") -> str:
    """Render ``html`` in headless Chromium (no network): the DOM as Chromium built it, and optionally a PNG."""
    exe = require("chromium")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars", f"--window-size={size}",
            "--proxy-server=127.0.0.1:9", "--disable-background-networking"]  # nothing may load from outside
    dom = subprocess.run([*base, "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    if screenshot is not None:
        shot = subprocess.run([*base, f"--screenshot={screenshot}", html.resolve().as_uri()], capture_output=True,
                              text=True, timeout=180)
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    return dom.stdout
