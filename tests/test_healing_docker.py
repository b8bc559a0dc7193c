"""Self-healing against the real engine: each test injects one fault into a converged project.

The daemon runs with a resync far longer than any test, so a heal can only come from the
Docker event stream (or a back-off wake-up): the deadlines below are generous on a busy
engine and never measure how fast. Docker's events are recorded live, subscribed before
the fault. A file written into a named volume before the fault must survive it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import DaemonProcess, restart_dockerd, run_cli, running_names, wait_for
from tests.enginekit import EventRecorder, actor_name

pytestmark = pytest.mark.docker

RESYNC_S = 3600.0  # no periodic pass after the first one during a test
HEAL_DEADLINE_S = 30.0  # generous; far below RESYNC_S, so a heal in time came from an event
QUIET_S = 3.0  # an observation window that must show that nothing more happens ends once
# nothing has happened for this long (never a blind sleep)


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
    wait_for(lambda: container_id(api, name), 60, what="converged")
    wait_for(lambda: daemon.events("watching docker events"), 30, what="event stream")
    sh(api, name, "echo precious > /data/marker")
    run = current_run(api, name)
    assert run
    return name, run


def assert_healed(
    api: docker.APIClient, name: str, before: tuple[str, str], *, same_run: bool = False
) -> None:
    """Wait until `name` runs again (a new run, unless `same_run`); the marker must be there."""

    def healed() -> bool:
        run = current_run(api, name)
        return run is not None and (same_run or run != before)

    wait_for(healed, HEAL_DEADLINE_S, interval=0.02, what=f"{name} healed")
    assert sh(api, name, "cat /data/marker").strip() == "precious"


def actions_on(d: DaemonProcess, name: str, after: int = 0) -> list[dict[str, Any]]:
    """The daemon's actions on container `name`, from its `after`-th action line on."""
    return [e for e in d.events("action")[after:] if e.get("container") == name]


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
# The Docker event each fault shows as, and the one that shows it undone.
FAULT_EVENT = {"docker rm -f": "destroy", "docker pause": "pause"}
HEAL_EVENT = {"docker pause": "unpause"}


def healed_after_fault(rec: EventRecorder, name: str, fault: str) -> bool:
    """The container's events show the fault, then its undoing."""
    actions = rec.actions(name=name)
    hit, heal = FAULT_EVENT.get(fault, "die"), HEAL_EVENT.get(fault, "start")
    return hit in actions and heal in actions[actions.index(hit) :]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_healed_fast_and_data_survives(
    fault: str,
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Callable[..., EventRecorder],
) -> None:
    """Each fault Docker's restart policy leaves alone is undone at once, on the event."""
    d = daemon(write_state(service(project, busybox_image)), interval=RESYNC_S)
    name, before = converged_with_marker(api, project, d)
    mark = len(d.events("action"))
    rec = record_events(project)
    FAULTS[fault](api, name)
    wait_for(
        lambda: healed_after_fault(rec, name, fault),
        HEAL_DEADLINE_S,
        what=f"{fault}, then its undoing, in {name}'s events",
    )
    assert_healed(api, name, before, same_run=fault == "docker pause")
    assert actions_on(d, name, after=mark), "healed, but not by the reconciler"


def test_mass_failure_every_replica_is_started_once_on_its_events(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Callable[..., EventRecorder],
) -> None:
    """All replicas SIGKILLed at once come back (fast heals side by side, none waiting for
    another's start): the same containers, each started exactly once by us, none created."""
    n = 8
    state = service(project, busybox_image, replicas=n)
    d = daemon(write_state(state), interval=RESYNC_S)
    names = [f"{project}-app-{i}" for i in range(1, n + 1)]
    wait_for(lambda: all(container_id(api, nm) for nm in names), 120, what=f"{n} running")
    wait_for(lambda: d.events("watching docker events"), 30, what="event stream")
    before = {nm: current_run(api, nm) for nm in names}
    mark = len(d.events("action"))
    rec = record_events(project)
    for nm in names:
        kill_from_host(api, nm)

    def all_back() -> bool:
        return all((r := current_run(api, nm)) and r != before[nm] for nm in names)

    wait_for(all_back, HEAL_DEADLINE_S * 2, interval=0.05, what=f"{n} replicas running again")
    assert {nm: container_id(api, nm) for nm in names} == {
        nm: r[0] for nm, r in before.items() if r
    }
    # No second start, no replacement afterwards: watched until the project is quiet.
    wait_for(lambda: rec.quiet_for() >= QUIET_S, 60, what=f"{QUIET_S} s without an event")
    assert all(rec.actions(name=nm).count("start") == 1 for nm in names), rec.actions()
    starts = Counter(e["container"] for e in d.events("action")[mark:] if e["action"] == "start")
    assert starts == Counter(names), starts
    assert not [e for e in d.events("action")[mark:] if e["action"] == "create"]


def test_docker_kill_with_restart_always_is_healed(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """`docker kill` counts as a manual stop that `restart: always` never undoes; we do."""
    d = daemon(write_state(service(project, busybox_image, restart="always")), interval=RESYNC_S)
    name, before = converged_with_marker(api, project, d)
    mark = len(d.events("action"))
    api.kill(name)
    assert_healed(api, name, before)
    assert api.inspect_container(name)["RestartCount"] == 0  # not Docker's policy: us
    assert "start" in [e["action"] for e in actions_on(d, name, after=mark)]


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
    d = daemon(write_state(doc), interval=RESYNC_S)
    name, before = converged_with_marker(api, project, d)
    wait_for(
        lambda: api.inspect_container(name)["State"]["Health"]["Status"] == "healthy",
        HEAL_DEADLINE_S,
        what="healthy",
    )
    started = api.inspect_container(name)["State"]["StartedAt"]
    sh(api, name, "rm /tmp/ok")
    wait_for(
        lambda: api.inspect_container(name)["State"]["StartedAt"] != started,
        HEAL_DEADLINE_S,
        what="restart after unhealthy",
    )
    wait_for(
        lambda: api.inspect_container(name)["State"]["Health"]["Status"] == "healthy",
        HEAL_DEADLINE_S,
        what="healthy again",
    )
    assert api.inspect_container(name)["Id"] == before[0]  # restarted, not recreated
    assert sh(api, name, "cat /data/marker").strip() == "precious"
    assert any(
        e.get("action") == "restart" and e.get("reason", "").startswith("unhealthy for ")
        for e in d.events("action")
    )


# Crash-loop heal policy, and the back-off it gives before each attempt after the first
# start: the first quick exit is healed at once, then 1 s, doubling, capped at 2 s.
CRASH_HEAL = {"min_uptime": "5s", "backoff_initial": "1s", "backoff_max": "2s"}
CRASH_BACKOFF_S = [0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
# Docker reports a start a few ms after the StartedAt the back-off is counted from.
EVENT_SLACK_S = 0.2
CRASH_RESYNC_S = 1.0


def test_crash_loop_backs_off_and_is_capped(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Callable[..., EventRecorder],
    tmp_path: Path,
) -> None:
    """A container that exits at once is restarted with doubling delays, capped: no hot loop."""
    doc = service(
        project, busybox_image, command=["sh", "-c", "echo boom; exit 3"], heal=CRASH_HEAL
    )
    path = write_state(doc)
    name = f"{project}-app-1"
    # Subscribed before the daemon makes the container (the fault is built in): every
    # start is seen live, however busy the engine and however short its event history.
    rec = record_events(project)
    # This test is about the back-off, not about events (the tests above are): a 1 s resync
    # keeps an attempt from waiting on a missed event, and cannot start a held replica early.
    d = daemon(path, interval=CRASH_RESYNC_S)
    attempts = len(CRASH_BACKOFF_S) + 1
    # Capped, 9 starts take ~13 s; uncapped (1, 2, 4 ... 64 s) they would take over 120 s.
    wait_for(
        lambda: len(rec.events(name=name, actions=["start"])) >= attempts,
        90,
        interval=0.2,
        what=f"{attempts} starts of the crash-looping replica (is the back-off capped?)",
    )
    starts = [e["timeNano"] / 1e9 for e in rec.events(name=name, actions=["start"])][:attempts]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Every attempt waited out its back-off (so no hot loop) ...
    assert all(
        gap >= backoff - EVENT_SLACK_S for gap, backoff in zip(gaps, CRASH_BACKOFF_S, strict=True)
    ), gaps
    # ... and the first quick exit was healed sooner (at once, at worst on the next resync)
    # than the third, which waits 2 s: it grew.
    assert gaps[0] < gaps[2], gaps
    # Every run ended in the crash it was made to have (exit 3).
    exits = [
        e["Actor"]["Attributes"].get("exitCode") for e in rec.events(name=name, actions=["die"])
    ]
    assert set(exits) == {"3"}, exits

    def crashloop_status() -> str | None:
        out = run_cli("status", str(path), "--lock-dir", str(tmp_path)).stdout
        return out if "CrashLoopBackOff" in out else None

    status = wait_for(crashloop_status, 30, interval=0.2, what="status to say CrashLoopBackOff")
    assert "last exit code 3" in status and "| boom" in status, status
    wait_for(
        lambda: d.metric("reconciler_crashloop_replicas", service="app") == 1,
        30,
        interval=0.2,
        what="reconciler_crashloop_replicas{service=app} 1",
    )


def test_network_removed_is_recreated_and_reconnected(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """docker network disconnect + rm: the network comes back and the container rejoins it."""
    d = daemon(write_state(service(project, busybox_image)), interval=RESYNC_S)
    name, before = converged_with_marker(api, project, d)
    net = f"{project}-net"
    old_id = api.inspect_network(net)["Id"]
    api.disconnect_container_from_network(name, net)
    api.remove_network(net)

    def rejoined() -> bool:
        nets = api.inspect_container(name)["NetworkSettings"]["Networks"]
        return net in nets and nets[net]["NetworkID"] != old_id

    wait_for(rejoined, HEAL_DEADLINE_S, interval=0.05, what="network recreated and rejoined")
    info = api.inspect_container(name)
    assert "app" in info["NetworkSettings"]["Networks"][net]["Aliases"]
    assert current_run(api, name) == before  # reconnected: the same container, still running


@pytest.mark.serial  # stops the engine every other test uses
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

    def reported_down() -> None:  # while dockerd is down
        wait_for(
            lambda: d.metric("reconciler_docker_up") == 0 and d.get("/readyz")[0] == 503,
            30,
            interval=0.2,
            what="the daemon to report the engine down (docker_up 0, /readyz 503)",
        )
        assert d.proc.poll() is None  # still running

    restart_dockerd(down_for=10.0, while_down=reported_down)
    assert d.proc.poll() is None  # still running
    wait_for(
        lambda: (current_run(api, name) or before) != before,
        60,
        interval=0.1,
        what="started again after dockerd came back",
    )
    assert sh(api, name, "cat /data/marker").strip() == "precious"
    assert d.events("engine down")
    wait_for(lambda: d.metric("reconciler_docker_up") == 1, 30, what="docker_up 1")
    wait_for(lambda: d.get("/readyz")[0] == 200, 30, what="ready again")


def test_daemon_killed_mid_pass_resumes_without_duplicates(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Callable[..., EventRecorder],
) -> None:
    """SIGKILL the daemon mid-pass, start it again: it adopts what exists, no duplicates."""
    doc = service(project, busybox_image, replicas=12, volumes=[f"{project}-v_{{replica}}:/data"])
    doc["volumes"] = {f"{project}-v_{{replica}}": {}}
    path = write_state(doc)
    rec = record_events(project)  # every container made or removed, by either daemon
    first = daemon(path, interval=RESYNC_S)
    wait_for(
        lambda: (
            len(api.containers(all=True, filters={"label": f"io.reconciler.project={project}"}))
            >= 2
        ),
        60,
        interval=0.01,
        what="pass under way",
    )
    first.proc.kill()
    first.proc.wait()
    assert len(running_names(api, project)) < 12, "the pass had finished: nothing to resume"
    daemon(path, interval=RESYNC_S)
    wait_for(lambda: len(running_names(api, project)) == 12, 60, what="12 replicas")
    # Observation window: every container event from before the first daemon started until
    # the second one has left the project alone for QUIET_S.
    wait_for(lambda: rec.quiet_for() >= QUIET_S, 60, what=f"{QUIET_S} s without an event")
    created = Counter(actor_name(e) for e in rec.events(actions=["create"]))
    assert created == Counter(f"{project}-app-{i}" for i in range(1, 13))  # each made once
    assert rec.events(actions=["destroy"]) == []  # what the first one made was adopted
    names = [
        c["Names"][0].lstrip("/")
        for c in api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    ]
    assert sorted(names) == sorted(f"{project}-app-{i}" for i in range(1, 13))
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
    wait_for(lambda: container_id(api, f"{project}-app-1"), 60, what="converged")
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
    assert "already acts on this project" in second.stderr and str(d.proc.pid) in second.stderr


# How long to keep watching after Docker's restart: past the moment the daemon leaves to
# Docker's policy (about 1 s after the exit), with room to spare.
DOCKER_TURN_WATCH_S = 3.0


def test_crash_under_restart_always_is_left_to_docker(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Callable[..., EventRecorder],
) -> None:
    """A crash Docker restarts by its `always` policy is not restarted by us as well."""
    d = daemon(write_state(service(project, busybox_image, restart="always")), interval=RESYNC_S)
    name, before = converged_with_marker(api, project, d)
    mark = len(d.events("action"))
    rec = record_events(project)
    kill_from_host(api, name)
    wait_for(
        lambda: "start" in rec.actions(name=name),
        HEAL_DEADLINE_S,
        interval=0.02,
        what="Docker's restart",
    )
    # Observation window: every event of the project from before the crash until nothing
    # has happened for DOCKER_TURN_WATCH_S after Docker's restart, which is past the moment
    # the daemon would act if it did not leave the crash to Docker. A race with Docker would
    # show as another start, a stop or a recreate (each restarting the quiet period).
    wait_for(
        lambda: rec.quiet_for() >= DOCKER_TURN_WATCH_S,
        60,
        what=f"{DOCKER_TURN_WATCH_S} s without an event after Docker's restart",
    )
    assert rec.actions() == ["die", "start"]
    assert actions_on(d, name, after=mark) == []  # nothing done to it, nothing attempted
    info = api.inspect_container(name)
    assert info["RestartCount"] == 1  # Docker's policy restarted it
    assert current_run(api, name) not in (None, before) and info["Id"] == before[0]


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
    d = daemon(write_state(doc), interval=RESYNC_S)
    wait_for(lambda: api.volumes(filters={"name": spare})["Volumes"], 60, what="volume created")
    wait_for(lambda: d.events("watching docker events"), 30, what="event stream")
    api.remove_volume(spare)
    wait_for(
        lambda: d.events("volume was removed and is recreated EMPTY: its data is gone"),
        HEAL_DEADLINE_S,
        interval=0.05,
        what="the loud warning",
    )
    assert api.inspect_volume(spare)["Labels"]["io.reconciler.project"] == project
