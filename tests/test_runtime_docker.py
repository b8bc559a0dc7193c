"""The daemon's runtime on the real engine: signals at any moment, prompt shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import DaemonProcess, running_names, wait_for

pytestmark = pytest.mark.docker


def _catches_sighup(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in text.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGHUP - 1)))


def test_sighups_from_the_first_moment_neither_kill_nor_pile_up(
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """SIGHUPs sent as soon as the handler exists, and on through start-up, are reloads: the
    daemon lives, converges, and reloads no more often than it was asked to."""
    path = write_state(
        {"services": {"w": {"image": busybox_image, "command": ["sleep", "1d"], "init": True}}}
    )
    d = daemon(path)
    wait_for(lambda: _catches_sighup(d.proc.pid), 30, interval=0.001, what="the handler")
    sent = 0
    while d.get("/readyz")[0] != 200:
        assert d.proc.poll() is None, f"died on SIGHUP: exit {d.proc.returncode}"
        os.kill(d.proc.pid, signal.SIGHUP)
        sent += 1
        time.sleep(0.005)
        if sent > 20000:
            pytest.fail("never ready")
    for _ in range(50):
        os.kill(d.proc.pid, signal.SIGHUP)
        sent += 1
    wait_for(
        lambda: d.metric("reconciler_desired_state_reloads_total", result="success"),
        30,
        what="a reload",
    )
    reloads = d.metric("reconciler_desired_state_reloads_total", result="success") or 0
    assert 1 <= reloads <= sent
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_sigterm_ends_the_daemon_with_a_back_off_pending(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A crash-looping replica keeps a back-off pending; SIGTERM still ends the daemon (exit 0)
    at once rather than after the back-off or a systemd kill."""
    path = write_state(
        {
            "services": {
                "crash": {
                    "image": busybox_image,
                    "command": ["sh", "-c", "exit 3"],
                    "heal": {"backoff_initial": "30s"},
                },
                "w": {"image": busybox_image, "command": ["sleep", "1d"], "init": True},
            }
        }
    )
    d = daemon(path)
    wait_for(
        lambda: any("held back" in str(e.get("note", "")) for e in d.events("note")),
        60,
        what="a back-off to be pending",
    )
    d.proc.send_signal(signal.SIGTERM)
    try:
        code = d.proc.wait(timeout=45)  # generous; the old runtime deadlocked here for good
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon did not end after SIGTERM")
    assert code == 0
    assert f"{project}-w-1" in running_names(api, project)  # containers keep running


def test_sigterm_during_a_stop_with_a_long_grace_ends_the_daemon(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Any,
) -> None:
    """A scale-down stopping a replica that ignores SIGTERM with a 10-minute grace: SIGTERM
    still ends the daemon long before that grace (and systemd's 90 s stop timeout)."""
    doc = {
        "services": {
            "slow": {
                "image": busybox_image,
                "command": ["sleep", "1d"],  # PID 1 without init: ignores SIGTERM
                "replicas": 2,
                "stop_grace_period": "10m",
                "drain_period": "0s",
            }
        }
    }
    path = write_state(doc)
    d = daemon(path)
    wait_for(lambda: len(running_names(api, project)) == 2, 60, what="2 replicas")
    events = record_events()
    doc["services"]["slow"]["replicas"] = 1
    write_state(doc)
    wait_for(lambda: "kill" in events.actions(name=f"{project}-slow-2"), 60, what="the stop")
    d.proc.send_signal(signal.SIGTERM)
    try:
        code = d.proc.wait(timeout=85)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon waited for the 10-minute grace")
    assert code == 0
    api.stop(f"{project}-slow-2", timeout=0)  # Docker was still waiting: end it for cleanup
