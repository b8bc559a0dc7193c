"""The daemon (`reconciler run`) against the real engine: reload, bad files, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import DaemonProcess, running_names, wait_for

pytestmark = pytest.mark.docker

RESYNC_S = 3600.0  # no periodic pass after the first one: what acts in time is an event,
# the file watch or a signal
DEADLINE_S = 30.0  # generous on a busy engine, far below RESYNC_S


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


def passes_by(d: DaemonProcess, trigger: str) -> float:
    """How many passes `trigger` started so far (reconciler_reconcile_trigger_total)."""
    return d.metric("reconciler_reconcile_trigger_total", trigger=trigger) or 0.0


def edit_unseen_by_the_file_watch(path: Path, old: str, new: str) -> None:
    """Edit the file in place keeping its inode, size and modification time: only a
    re-read (SIGHUP) can notice, not a watch of those."""
    assert len(old) == len(new)
    st = path.stat()
    text = path.read_text()
    assert text.count(old) == 1, text
    with path.open("r+") as f:
        f.write(text.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


def test_daemon_converges_follows_edits_and_keeps_last_good_state(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """Start, scale by editing the file, survive a bad edit, exit 0 on SIGTERM; containers stay."""
    path = write_state(simple(project, busybox_image, 2))
    d = daemon(path, interval=RESYNC_S)  # only the file watch and events can act in time
    wait_for(lambda: len(web_names(api, project)) == 2, 60, what="2 replicas")
    wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready")

    write_state(simple(project, busybox_image, 4))
    wait_for(
        lambda: len(web_names(api, project)) == 4, DEADLINE_S, what="4 replicas after the edit"
    )

    before = sorted(web_names(api, project))
    path.write_text("version: 1\nservices:\n  web: {image: x, replicas: -3}\n")
    wait_for(
        lambda: d.events("desired state rejected; keeping the last good one"),
        DEADLINE_S,
        what="the bad file to be rejected",
    )
    assert d.get("/readyz")[0] == 503
    assert d.metric("reconciler_desired_state_valid") == 0
    api.remove_container(f"{project}-web-3", force=True)  # still healed with the last good state
    wait_for(
        lambda: sorted(web_names(api, project)) == before,
        DEADLINE_S,
        what="heal with last good state",
    )
    rejected = d.events("desired state rejected; keeping the last good one")[0]
    assert (
        str(path) in rejected["error"]
        and "services.web.replicas: must be >= 0" in rejected["error"]
    )

    write_state(simple(project, busybox_image, 1))
    wait_for(lambda: web_names(api, project) == [f"{project}-web-1"], DEADLINE_S, what="scale to 1")
    wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready again")
    assert d.stop() == 0
    assert web_names(api, project) == [f"{project}-web-1"]  # containers keep running


def test_daemon_heals_at_once_on_events(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A docker stop is undone by a pass the event triggers, long before any resync."""
    path = write_state(simple(project, busybox_image, 1))
    d = daemon(path, interval=RESYNC_S)
    wait_for(lambda: len(web_names(api, project)) == 1, 60, what="converged")
    wait_for(lambda: d.events("watching docker events"), DEADLINE_S, what="event stream")
    periodic = passes_by(d, "interval")
    mark = len(d.events("action"))
    api.stop(f"{project}-web-1", timeout=1)
    wait_for(lambda: len(web_names(api, project)) == 1, DEADLINE_S, interval=0.02, what="restart")
    assert passes_by(d, "event") >= 1
    assert passes_by(d, "interval") == periodic  # no periodic pass did it
    assert [
        e["action"] for e in d.events("action")[mark:] if e.get("container") == f"{project}-web-1"
    ] == ["start"]


def test_sighup_reloads(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """SIGHUP re-reads the file and converges, also after an edit no file watch could see."""
    path = write_state(simple(project, busybox_image, 1))
    d = daemon(path, interval=RESYNC_S)
    wait_for(lambda: len(web_names(api, project)) == 1, 60, what="converged")
    edit_unseen_by_the_file_watch(path, "replicas: 1", "replicas: 2")
    signalled = passes_by(d, "signal")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(web_names(api, project)) == 2, DEADLINE_S, what="2 after SIGHUP")
    assert passes_by(d, "signal") > signalled


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
    wait_for(lambda: len(web_names(api, project)) == 1, 60, what="converged")
    wait_for(lambda: d.events("watching docker events"), DEADLINE_S, what="event stream")
    api.stop(f"{project}-web-1", timeout=1)
    wait_for(lambda: passes_by(d, "event") >= 1, DEADLINE_S, what="an event pass")
    wait_for(lambda: len(web_names(api, project)) == 1, DEADLINE_S, what="healed")
    # Once the events are over, the 1 s passes count as interval again (had the event
    # relabelled them, the interval count would stand still and this would time out).
    periodic = passes_by(d, "interval")
    wait_for(
        lambda: passes_by(d, "interval") >= periodic + 2,
        DEADLINE_S,
        what="periodic passes counted as interval after the event pass",
    )
