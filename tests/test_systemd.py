"""The systemd unit (verify, exposure score) and the notify protocol on a real socket."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import REQUIRE_DOCKER, DaemonProcess, wait_for

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "reconciler.service"
MAX_EXPOSURE = 2.5


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if REQUIRE_DOCKER:
            pytest.fail("systemd-analyze is not installed")
        pytest.skip("systemd-analyze is not installed")
    return path


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at the installed console script."""
    script = shutil.which("reconciler")
    assert script, "the project is not installed (pip install -e '.[test]')"
    text = UNIT.read_text().replace("/usr/local/bin/reconciler", script)
    path = tmp_path / "reconciler.service"
    path.write_text(text)
    return path


def test_unit_verifies(unit_copy: Path) -> None:
    """systemd-analyze verify accepts the unit."""
    proc = subprocess.run(
        [systemd_analyze(), "verify", str(unit_copy)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reconciler.service" not in proc.stderr, proc.stderr


def test_unit_exposure_score(unit_copy: Path) -> None:
    """The offline exposure score is at most 2.5 (a fully hardened unit scores about 1.5)."""
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit_copy)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE


def test_unit_essentials() -> None:
    """Type=notify, watchdog, reload by SIGHUP, restart, bound to docker, a docker-group user."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "BindsTo=docker.service",
        "After=docker.service",
        "SupplementaryGroups=docker",
        "User=reconciler",
        "EnvironmentFile=-/etc/reconciler/reconciler.env",
        "/etc/reconciler/desired_state.yaml",
    ):
        assert line in text, line


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; a thread records
    every line with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def drain(self) -> list[tuple[float, str]]:
        return list(self.messages)

    def seen(self, prefix: str) -> list[float]:
        return [t for t, m in self.drain() if m.startswith(prefix)]

    def close(self) -> None:
        self._closed.set()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


@pytest.mark.docker
def test_notify_protocol(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """READY=1 after the first pass, WATCHDOG=1 at half WatchdogSec, RELOADING=1, STOPPING=1."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    path = write_state(
        {
            "services": {
                "web": {"image": busybox_image, "init": True, "command": ["sleep", "100000"]}
            }
        }
    )
    d = daemon(path)
    wait_for(lambda: notify_socket.seen("READY=1"), 30, what="READY=1")
    assert api.inspect_container(f"{project}-web-1")["State"]["Running"]  # after the first pass
    status = [m for _, m in notify_socket.drain() if m.startswith("STATUS=")]
    assert any(f"{project}: web 1/1" in m for m in status), status
    time.sleep(3.5)
    pings = notify_socket.seen("WATCHDOG=1")
    assert len(pings) >= 3
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.5 < g < 1.6 for g in gaps), gaps

    before = len(notify_socket.seen("READY=1"))
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: notify_socket.seen("RELOADING=1"), 10, what="RELOADING=1")
    wait_for(lambda: len(notify_socket.seen("READY=1")) > before, 10, what="READY=1 after reload")
    assert any(m.startswith("MONOTONIC_USEC=") for _, m in notify_socket.drain())

    assert d.stop() == 0
    assert notify_socket.seen("STOPPING=1")
