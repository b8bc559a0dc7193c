"""The daemon (`reconciler run`) against the real engine: reload, bad files, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import DaemonProcess, running_names, wait_for

pytestmark = pytest.mark.docker


def simple(project: str, image: str, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "networks": {f"{project}-net": {}},
        "services": {
            "web": {
                "image": image,
                "replicas": replicas,
                "init": True,
                "command": ["sleep", "100000"],
                "networks": [f"{project}-net"],
                **extra,
            }
        },
    }


def web_names(api: docker.APIClient, project: str) -> list[str]:
    return [n for n in running_names(api, project) if "-web-" in n]


def test_daemon_converges_follows_edits_and_keeps_last_good_state(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """Start, scale by editing the file, survive a bad edit, exit 0 on SIGTERM; containers stay."""
    path = write_state(simple(project, busybox_image, 2))
    d = daemon(path)  # interval 60 s: only the file watch and events can act in time
    wait_for(lambda: len(web_names(api, project)) == 2, 30, what="2 replicas")
    wait_for(lambda: d.get("/readyz")[0] == 200, 10, what="ready")

    write_state(simple(project, busybox_image, 4))
    wait_for(lambda: len(web_names(api, project)) == 4, 15, what="4 replicas after the edit")

    before = sorted(web_names(api, project))
    path.write_text("version: 1\nservices:\n  web: {image: x, replicas: -3}\n")
    wait_for(
        lambda: d.events("desired state rejected; keeping the last good one"),
        10,
        what="the bad file to be rejected",
    )
    assert d.get("/readyz")[0] == 503
    metrics = d.get("/metrics")[1]
    assert "reconciler_desired_state_valid 0.0" in metrics
    api.remove_container(f"{project}-web-3", force=True)  # still healed with the last good state
    wait_for(
        lambda: sorted(web_names(api, project)) == before, 15, what="heal with last good state"
    )
    rejected = d.events("desired state rejected; keeping the last good one")[0]
    assert (
        str(path) in rejected["error"]
        and "services.web.replicas: must be >= 0" in rejected["error"]
    )

    write_state(simple(project, busybox_image, 1))
    wait_for(lambda: web_names(api, project) == [f"{project}-web-1"], 15, what="scale to 1")
    assert d.stop() == 0
    assert web_names(api, project) == [f"{project}-web-1"]  # containers keep running


def test_daemon_heals_at_once_on_events(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A docker stop is undone within a second, long before the 60 s resync."""
    path = write_state(simple(project, busybox_image, 1))
    d = daemon(path)
    wait_for(lambda: len(web_names(api, project)) == 1, 30, what="converged")
    wait_for(lambda: d.events("watching docker events"), 10, what="event stream")
    time.sleep(0.5)
    api.stop(f"{project}-web-1", timeout=1)
    t0 = time.monotonic()
    wait_for(lambda: len(web_names(api, project)) == 1, 5, interval=0.02, what="restart")
    assert time.monotonic() - t0 < 3
    assert any(e.get("trigger") == "event" for e in d.events("pass"))


def test_sighup_reloads(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """SIGHUP re-reads the file and converges."""
    path = write_state(simple(project, busybox_image, 1))
    d = daemon(path)
    wait_for(lambda: len(web_names(api, project)) == 1, 30, what="converged")
    write_state(simple(project, busybox_image, 2))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(web_names(api, project)) == 2, 10, what="2 after SIGHUP")


def test_bad_file_at_start_exits_2(tmp_path: Path) -> None:
    """A bad file at start: exit code 2 and the message, nothing started."""
    path = tmp_path / "desired_state.yaml"
    path.write_text("version: 1\nservices:\n  web: {image: x, replicas: -1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: invalid desired state" in proc.stderr


def test_passes_after_an_event_are_counted_as_interval_again(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """An event-triggered pass does not relabel the periodic passes that follow it."""
    d = daemon(write_state(simple(project, busybox_image, 1)), interval=1.0)
    wait_for(lambda: len(web_names(api, project)) == 1, 30, what="converged")
    wait_for(lambda: d.events("watching docker events"), 10, what="event stream")
    api.stop(f"{project}-web-1", timeout=1)
    wait_for(
        lambda: any(e.get("trigger") == "event" for e in d.events("pass")), 10, what="an event pass"
    )
    time.sleep(2.5)
    triggers = [e["trigger"] for e in d.events("pass")]
    last_event = max(i for i, t in enumerate(triggers) if t == "event")
    assert "interval" in triggers[last_event + 1 :], triggers
