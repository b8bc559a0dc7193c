"""Self-healing against the real engine: each test injects one fault into a converged project.

The daemon runs with a 60 s resync, so healing within a few seconds proves it is
event-driven. A file written into a named volume before the fault must survive it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import DaemonProcess, restart_dockerd, run_cli, running_names, wait_for

pytestmark = pytest.mark.docker

HEAL_BOUND_S = 5.0


def service(project: str, image: str, **extra: Any) -> dict[str, Any]:
    return {
        "networks": {f"{project}-net": {}},
        "volumes": {f"{project}-data": {}},
        "services": {
            "app": {
                "image": image,
                "init": True,
                "restart": "no",
                "command": ["sleep", "100000"],
                "volumes": [f"{project}-data:/data"],
                "networks": [f"{project}-net"],
                **extra,
            }
        },
    }


def sh(api: docker.APIClient, container: str, script: str) -> str:
    exec_id = api.exec_create(container, ["sh", "-c", script])
    return api.exec_start(exec_id).decode()


def container_id(api: docker.APIClient, name: str) -> str | None:
    """ID of the running container `name` (None when it is not running)."""
    run = current_run(api, name)
    return run[0] if run else None


def current_run(api: docker.APIClient, name: str) -> tuple[str, str] | None:
    """(ID, StartedAt) of the running, unpaused container `name`; None otherwise."""
    try:
        state = api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    s = state["State"]
    return (state["Id"], s["StartedAt"]) if s["Running"] and not s["Paused"] else None


def converged_with_marker(
    api: docker.APIClient, project: str, daemon: DaemonProcess
) -> tuple[str, tuple[str, str]]:
    """Wait for the converged replica, write a marker into its volume; (name, its run)."""
    name = f"{project}-app-1"
    wait_for(lambda: container_id(api, name), 30, what="converged")
    wait_for(lambda: daemon.events("watching docker events"), 10, what="event stream")
    sh(api, name, "echo precious > /data/marker")
    run = current_run(api, name)
    assert run
    return name, run


def assert_healed(
    api: docker.APIClient,
    name: str,
    before: tuple[str, str],
    since: float,
    *,
    same_run: bool = False,
) -> float:
    """Wait until `name` runs again (a new run, unless `same_run`); the marker must be there."""

    def healed() -> bool:
        run = current_run(api, name)
        return run is not None and (same_run or run != before)

    wait_for(healed, HEAL_BOUND_S, interval=0.02, what=f"{name} healed")
    took = time.monotonic() - since
    assert sh(api, name, "cat /data/marker").strip() == "precious"
    return took


def kill_from_host(api: docker.APIClient, name: str) -> None:
    pid = api.inspect_container(name)["State"]["Pid"]
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


FAULTS: dict[str, Callable[[docker.APIClient, str], None]] = {
    "sigkill from the host": kill_from_host,
    "docker kill": lambda api, name: api.kill(name),
    "docker stop": lambda api, name: api.stop(name, timeout=1),
    "docker rm -f": lambda api, name: api.remove_container(name, force=True),
    "docker pause": lambda api, name: api.pause(name),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_healed_fast_and_data_survives(
    fault: str,
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """Each fault Docker's restart policy leaves alone is undone within seconds."""
    d = daemon(write_state(service(project, busybox_image)))
    name, before = converged_with_marker(api, project, d)
    t0 = time.monotonic()
    FAULTS[fault](api, name)
    if fault == "docker pause":
        wait_for(lambda: api.inspect_container(name)["State"]["Paused"], 5, what="paused")
    assert_healed(api, name, before, t0, same_run=fault == "docker pause")


def test_docker_kill_with_restart_always_is_healed(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """`docker kill` counts as a manual stop that `restart: always` never undoes; we do."""
    d = daemon(write_state(service(project, busybox_image, restart="always")))
    name, before = converged_with_marker(api, project, d)
    t0 = time.monotonic()
    api.kill(name)
    assert_healed(api, name, before, t0)


def test_unhealthy_container_is_restarted(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A container whose healthcheck starts failing is restarted after one interval."""
    doc = service(
        project,
        busybox_image,
        restart="always",
        command=["sh", "-c", "touch /tmp/ok; exec sleep 100000"],
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": "1s",
            "timeout": "1s",
            "retries": 1,
        },
    )
    d = daemon(write_state(doc))
    name, _ = converged_with_marker(api, project, d)
    wait_for(
        lambda: api.inspect_container(name)["State"]["Health"]["Status"] == "healthy",
        10,
        what="healthy",
    )
    started = api.inspect_container(name)["State"]["StartedAt"]
    sh(api, name, "rm /tmp/ok")
    wait_for(
        lambda: api.inspect_container(name)["State"]["StartedAt"] != started,
        10,
        what="restart after unhealthy",
    )
    wait_for(
        lambda: api.inspect_container(name)["State"]["Health"]["Status"] == "healthy",
        10,
        what="healthy again",
    )
    assert sh(api, name, "cat /data/marker").strip() == "precious"
    assert any(
        e.get("action") == "restart" and e.get("reason") == "unhealthy" for e in d.events("action")
    )


def test_crash_loop_backs_off_and_is_capped(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """A container that exits at once is restarted with doubling delays, capped: no hot loop."""
    doc = service(
        project,
        busybox_image,
        command=["sh", "-c", "echo boom; exit 3"],
        heal={"min_uptime": "5s", "backoff_initial": "0.5s", "backoff_max": "2s"},
    )
    path = write_state(doc)
    since = time.time()
    d = daemon(path)
    window = 12.0
    time.sleep(window)
    events = api.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={"label": f"io.reconciler.project={project}", "event": ["start"]},
    )
    starts = [e["timeNano"] / 1e9 for e in events if e["timeNano"] / 1e9 >= since]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0, 0.5, 1, 2, 2, 2 ... s between attempts: about 7 starts in 12 s; a hot loop makes 50+.
    assert 4 <= len(starts) <= 10, gaps
    assert max(gaps) < 2 + 1.0  # capped at backoff_max (plus one pass of slack)
    assert gaps[3] > gaps[0] + 0.5  # it grew
    status = run_cli("status", str(path), "--lock-dir", str(tmp_path))
    assert "CrashLoopBackOff" in status.stdout, status.stdout
    assert "last exit code 3" in status.stdout and "| boom" in status.stdout
    metrics = d.get("/metrics")[1]
    assert 'reconciler_crashloop_replicas{service="app"} 1.0' in metrics


def test_network_removed_is_recreated_and_reconnected(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """docker network disconnect + rm: the network comes back and the container rejoins it."""
    d = daemon(write_state(service(project, busybox_image)))
    name, _ = converged_with_marker(api, project, d)
    net = f"{project}-net"
    old_id = api.inspect_network(net)["Id"]
    api.disconnect_container_from_network(name, net)
    api.remove_network(net)

    def rejoined() -> bool:
        nets = api.inspect_container(name)["NetworkSettings"]["Networks"]
        return net in nets and nets[net]["NetworkID"] != old_id

    wait_for(rejoined, HEAL_BOUND_S, interval=0.05, what="network recreated and rejoined")
    assert "app" in api.inspect_container(name)["NetworkSettings"]["Networks"][net]["Aliases"]


def test_survives_dockerd_restart(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """dockerd down for 10 s: the daemon reports it, keeps running, converges once it is back."""
    d = daemon(write_state(service(project, busybox_image)), interval=2.0)
    name, before = converged_with_marker(api, project, d)
    restart_dockerd(down_for=10.0)
    assert d.proc.poll() is None  # still running
    wait_for(
        lambda: (current_run(api, name) or before) != before,
        20,
        interval=0.1,
        what="started again after dockerd came back",
    )
    assert sh(api, name, "cat /data/marker").strip() == "precious"
    assert d.events("engine down")
    wait_for(lambda: "reconciler_docker_up 1.0" in d.get("/metrics")[1], 10, what="docker_up 1")


def test_daemon_killed_mid_pass_resumes_without_duplicates(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """SIGKILL the daemon mid-pass, start it again: it adopts what exists, no duplicates."""
    doc = service(project, busybox_image, replicas=12, volumes=[f"{project}-v_{{replica}}:/data"])
    doc["volumes"] = {f"{project}-v_{{replica}}": {}}
    path = write_state(doc)
    first = daemon(path)
    wait_for(
        lambda: (
            len(api.containers(all=True, filters={"label": f"io.reconciler.project={project}"}))
            >= 2
        ),
        30,
        interval=0.01,
        what="pass under way",
    )
    first.proc.kill()
    first.proc.wait()
    made = len(api.containers(all=True, filters={"label": f"io.reconciler.project={project}"}))
    assert made < 12  # it really died mid-pass
    daemon(path)
    wait_for(lambda: len(running_names(api, project)) == 12, 30, what="12 replicas")
    time.sleep(1)
    names = [
        c["Names"][0]
        for c in api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    ]
    assert len(names) == len(set(names)) == 12
    vols = [
        v["Name"]
        for v in api.volumes(filters={"label": f"io.reconciler.project={project}"})["Volumes"]
    ]
    assert sorted(vols) == sorted(f"{project}-v_{i}" for i in range(1, 13))


def test_second_daemon_on_the_same_project_is_refused(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """Only one daemon acts on a project: a second one exits 2 with a clear message."""
    path = write_state(service(project, busybox_image))
    d = daemon(path)
    wait_for(lambda: container_id(api, f"{project}-app-1"), 30, what="converged")
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "run",
            str(path),
            "--listen",
            "off",
            "--lock-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert "another reconciler" in second.stderr and str(d.proc.pid) in second.stderr


def test_crash_under_restart_always_is_left_to_docker(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A crash Docker restarts by its `always` policy is not restarted by us as well."""
    d = daemon(write_state(service(project, busybox_image, restart="always")))
    name, before = converged_with_marker(api, project, d)
    kill_from_host(api, name)
    wait_for(
        lambda: api.inspect_container(name)["RestartCount"] == 1,
        5,
        interval=0.02,
        what="Docker's restart",
    )
    time.sleep(1.5)  # past our window: had we raced Docker, a start action would show now
    heals = [
        e
        for e in d.events("action")
        if e["action"] in ("start", "restart") and e.get("reason") != "just created"
    ]
    assert heals == []
    assert current_run(api, name) not in (None, before)


def test_removed_unused_volume_is_recreated_loudly(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A declared volume removed while unused comes back, with a warning that it is empty."""
    doc = service(project, busybox_image)
    spare = f"{project}-spare"
    doc["volumes"][spare] = {}
    doc["services"]["app"]["volumes"].append(f"{spare}:/spare")
    doc["services"]["app"]["state"] = "stopped"  # nothing uses the volume
    d = daemon(write_state(doc))
    wait_for(lambda: api.volumes(filters={"name": spare})["Volumes"], 30, what="volume created")
    wait_for(lambda: d.events("watching docker events"), 10, what="event stream")
    api.remove_volume(spare)
    wait_for(
        lambda: d.events("volume was removed and is recreated EMPTY: its data is gone"),
        HEAL_BOUND_S,
        interval=0.05,
        what="the loud warning",
    )
    assert any(v["Name"] == spare for v in api.volumes(filters={"name": spare})["Volumes"])
