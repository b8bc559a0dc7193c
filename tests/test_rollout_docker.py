"""Rollouts on the real engine: health-gated, rolled back on their own, remembered across a
daemon's death; a change Docker refuses never takes a working replica away."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import DaemonProcess, free_port, run_cli, wait_for

pytestmark = pytest.mark.docker

HTTPD = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 & wait"]
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]


def stack(project: str, image: str, *, app: dict[str, Any] | None = None) -> dict[str, Any]:
    """`app`: 3 replicas with a 1 s healthcheck; `other`: one replica."""
    net = f"{project}-net"
    return {
        "networks": {net: {}},
        "services": {
            "app": {
                "image": image,
                "replicas": 3,
                "command": HTTPD,
                "networks": [net],
                "environment": {"REV": "1"},
                "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "retries": 2},
                "stop_grace_period": "2s",
                "drain_period": "1s",
                "deploy": {"update_config": {"monitor": "2s"}},
                **(app or {}),
            },
            "other": {"image": image, "command": SLEEPER, "networks": [net]},
        },
    }


def containers(api: docker.APIClient, project: str, service: str) -> list[dict[str, Any]]:
    return api.containers(
        all=True,
        filters={"label": [f"io.reconciler.project={project}", f"io.reconciler.service={service}"]},
    )


def healthy(api: docker.APIClient, project: str, service: str = "app") -> int:
    return sum(1 for c in containers(api, project, service) if "(healthy)" in c["Status"])


def env_of(api: docker.APIClient, name: str) -> list[str]:
    return api.inspect_container(name)["Config"]["Env"] or []


def converged(api: docker.APIClient, project: str, rev: str) -> bool:
    cs = containers(api, project, "app")
    return len(cs) == 3 and all(
        "(healthy)" in c["Status"] and f"REV={rev}" in env_of(api, c["Id"]) for c in cs
    )


@pytest.fixture
def min_healthy(api: docker.APIClient, project: str) -> Iterator[Callable[[], int]]:
    """Watch `app` with a background sampler; returns the fewest healthy replicas seen."""
    import threading

    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            seen.append(healthy(api, project))

    thread = threading.Thread(target=sample, daemon=True)
    started = False

    def result() -> int:
        nonlocal started
        if not started:
            started = True
            thread.start()
            return 3
        return min(seen, default=3)

    yield result
    stop.set()


def test_never_healthy_change_is_rolled_back_and_held_after_a_restart(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    min_healthy: Callable[[], int],
) -> None:
    """A change that never turns healthy costs at most one replica, is rolled back on its own,
    and is not tried again by a daemon started after a SIGKILL."""
    path = write_state(stack(project, busybox_image))
    d = daemon(path)
    wait_for(lambda: converged(api, project, "1"), 60, what="3 healthy replicas")
    min_healthy()  # start sampling
    bad = {
        "environment": {"REV": "2"},
        "healthcheck": {"test": ["CMD", "false"], "interval": "1s", "retries": 2},
    }
    write_state(stack(project, busybox_image, app=bad))
    wait_for(lambda: d.events("rollout failed; rolling back"), 60, what="the rollout to fail")
    wait_for(lambda: converged(api, project, "1"), 60, what="the rollback to finish")
    assert min_healthy() >= 2  # parallelism 1: never more than one replica below healthy
    event = d.events("rollout failed; rolling back")[0]
    assert event["service"] == "app" and "unhealthy" in event["reason"]
    assert d.metric("reconciler_rollouts_total", service="app", result="rolled_back") == 1.0
    d.forced_pass()  # the rollback's end is the rollback's, not a completed rollout
    assert not d.metric("reconciler_rollouts_total", service="app", result="completed")
    assert not d.events("rollout completed") and d.events("rollback completed")

    status = run_cli("status", str(path), "--lock-dir", str(tmp_path))
    assert "rolled back from" in status.stdout, status.stdout
    plan = run_cli("plan", str(path))
    assert "is held (rolled back at" in plan.stdout and plan.returncode == 2, plan.stdout

    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d2 = daemon(path)
    wait_for(lambda: d2.get("/readyz")[0] == 200, 30, what="the new daemon to be ready")
    d2.forced_pass()
    creates = [e for e in d2.events("action") if e.get("action") == "create"]
    assert creates == [], creates  # the failed revision is held, not retried
    assert converged(api, project, "1")

    good = {"environment": {"REV": "3"}}  # the file changes the service again: rolled out
    write_state(stack(project, busybox_image, app=good))
    wait_for(lambda: converged(api, project, "3"), 90, what="the good rollout to finish")
    wait_for(
        lambda: d2.metric("reconciler_rollouts_total", service="app", result="completed"),
        20,
        what="the completed rollout to be counted",
    )


def test_heal_of_another_service_does_not_wait_for_a_rollout(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    record_events: Any,
) -> None:
    """While `app` rolls out a change that never becomes healthy, a kill of `other` is healed
    before the rollout has even been judged."""
    app = {"deploy": {"update_config": {"monitor": "30s"}}}
    path = write_state(stack(project, busybox_image, app=app))
    d = daemon(path)
    wait_for(lambda: converged(api, project, "1"), 60, what="3 healthy replicas")
    bad = {
        **app,
        "environment": {"REV": "2"},
        "healthcheck": {"test": ["CMD", "false"], "interval": "1s", "retries": 2},
    }
    write_state(stack(project, busybox_image, app=bad))
    wait_for(
        lambda: any(c["Names"][0].count("_") for c in containers(api, project, "app")),
        30,
        what="the replacement to be created",
    )
    events = record_events()
    api.kill(f"{project}-other-1")
    wait_for(lambda: "start" in events.actions(name=f"{project}-other-1"), 20, what="other healed")
    assert not d.events("rollout failed; rolling back")  # still monitoring: it did not wait


def test_replacement_docker_refuses_leaves_the_old_replicas_running(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """`user: nosuchuser` fails at start: the rollout rolls back and no replica is lost."""
    path = write_state(stack(project, busybox_image))
    d = daemon(path)
    wait_for(lambda: converged(api, project, "1"), 60, what="3 healthy replicas")
    write_state(stack(project, busybox_image, app={"user": "nosuchuser"}))
    wait_for(lambda: d.events("rollout failed; rolling back"), 60, what="the rollback")
    reason = d.events("rollout failed; rolling back")[0]["reason"]
    assert "nosuchuser" in reason or "refused" in reason, reason
    wait_for(lambda: converged(api, project, "1"), 60, what="3 healthy replicas again")
    assert len(containers(api, project, "app")) == 3  # no leftover replacement


@contextmanager
def taken_port() -> Iterator[int]:
    port = free_port()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield port


def test_a_refused_replacement_keeps_the_data_of_the_old_container(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A new port that cannot be bound: the old replica keeps running, with the file written
    in its own layer (it was never removed before its replacement existed)."""
    one = {"replicas": 1, "healthcheck": {"test": ["CMD", "true"], "interval": "1s"}}
    path = write_state(stack(project, busybox_image, app=one))
    d = daemon(path)
    wait_for(lambda: healthy(api, project) == 1, 60, what="app running")
    name = f"{project}-app-1"
    exec_id = api.exec_create(name, ["sh", "-c", "echo precious > /marker"])
    api.exec_start(exec_id)
    with taken_port() as port:
        write_state(stack(project, busybox_image, app={**one, "ports": [f"127.0.0.1:{port}:8080"]}))
        wait_for(
            lambda: d.events("rollout failed; rolling back") or d.events("rollout paused"),
            60,
            what="the rollout to fail",
        )
    wait_for(lambda: healthy(api, project) == 1, 30, what="the old replica running")
    exec_id = api.exec_create(name, ["cat", "/marker"])
    assert api.exec_start(exec_id).decode().strip() == "precious"


def test_apply_refuses_while_a_daemon_holds_the_project(
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """`reconciler apply` beside a running daemon says who holds the project and does nothing."""
    path = write_state(stack(project, busybox_image))
    d = daemon(path)
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="ready")
    result = run_cli("apply", str(path), "--lock-dir", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pid {d.proc.pid}" in result.stderr and "daemon" in result.stderr


def test_rollout_records_survive_in_the_state_directory(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    """`apply` converges and keeps the stable spec of each service where a daemon finds it."""
    path = write_state(stack(project, busybox_image))
    state = tmp_path / "state"
    result = run_cli("apply", str(path), "--lock-dir", str(tmp_path), "--state-dir", str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads((state / f"{project}.rollouts.json").read_text())
    assert set(records) == {"app", "other"}
    assert len(records["app"]["stable"]) == 3 and records["app"]["stable_revision"]
