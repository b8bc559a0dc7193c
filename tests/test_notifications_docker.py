"""Notifications from the real daemon (a subprocess) on the real engine, to a local HTTP
receiver through Apprise's `json://`: a failed rollout is told once (rolled back), then
resolved by the next good one; a receiver that never answers, then one that answers 500,
never holds up a rollout or a heal; the URL (a secret from the environment) is never shown.
On a swarm: drift put back, a rejected file and a denied service, each told and resolved."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler.ops.history import history_path
from tests.conftest import DaemonProcess, run_cli, wait_for, with_test_labels
from tests.swarmkit import one_node_swarm, remove_project
from tests.test_notifications import Receiver
from tests.test_rollout_docker import HTTPD, containers, converged

pytestmark = pytest.mark.docker


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def titles(receiver: Receiver) -> list[str]:
    return [b["title"] for b in list(receiver.bodies)]


def started_at(api: docker.APIClient, name: str) -> str:
    state = api.inspect_container(name)["State"]
    return state["StartedAt"] if state["Running"] else ""


def test_rollback_is_told_once_then_resolved_and_a_bad_receiver_never_delays_a_heal(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    receiver: Receiver,
    daemon: Callable[..., DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"hook-{uuid.uuid4().hex}"
    # rto: Apprise waits this long for an answer (a hung receiver holds its sender that long)
    monkeypatch.setenv("NT_HOOK_URL", f"{receiver.url}/{secret}?rto=20")
    path = tmp_path / "desired_state.yaml"

    def write(rev: str, healthy: bool = True) -> None:
        app = {
            "image": busybox_image,
            "replicas": 3,
            "command": HTTPD,
            "environment": {"REV": rev},
            "healthcheck": {"test": ["CMD", "true" if healthy else "false"],
                            "interval": "1s", "retries": 2},
            "stop_grace_period": "2s",
            "drain_period": "1s",
            "deploy": {"update_config": {"monitor": "2s"}},
        }  # fmt: skip
        doc: dict[str, Any] = with_test_labels(project, {"services": {"app": app}})
        doc["notify"] = {
            "urls": ["${NT_HOOK_URL}"],
            "kinds": ["rolled_back", "rollout_completed", "crash_loop", "paused"],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)

    write("1")
    d = daemon(path, 2.0, ("--state-dir", str(tmp_path / "state")))
    wait_for(lambda: converged(api, project, "1"), 90, what="3 healthy replicas")

    # A change that never turns healthy: rolled back, told once.
    write("2", healthy=False)
    wait_for(
        lambda: any("FIRING rolled back: app" in t for t in titles(receiver)),
        120,
        what="the rolled-back notification",
    )
    wait_for(lambda: converged(api, project, "1"), 90, what="the rollback to finish")

    # The receiver stops answering: the next good rollout and a heal go on regardless.
    receiver.hang.set()
    write("3")
    wait_for(lambda: converged(api, project, "3"), 120, what="the rollout of REV=3")
    wait_for(lambda: receiver.hung, 60, what="a notification stuck in the receiver")
    wait_for(lambda: any("RESOLVED rolled back: app" in t for t in titles(receiver)), 60,
             what="the resolved notification")  # fmt: skip
    victim = sorted(c["Names"][0].lstrip("/") for c in containers(api, project, "app"))[0]
    before = started_at(api, victim)
    api.kill(victim)
    wait_for(lambda: started_at(api, victim) not in ("", before), 60, what="the heal (hung)")

    assert receiver.hung and not receiver.release.is_set()  # still holding its sender
    told = len(receiver.bodies)
    assert [t for t in titles(receiver) if "FIRING rolled back" in t] == [
        f"[{project}] FIRING rolled back: app"
    ]  # one rollback, one message

    # Now it answers 500: a new failed rollout is told (and fails), heals still happen.
    receiver.status = 500
    receiver.hang.clear()
    receiver.release.set()
    write("4", healthy=False)
    wait_for(lambda: any("FIRING" in t for t in titles(receiver)[told:]), 120,
             what="the second rollback told to the failing receiver")  # fmt: skip
    wait_for(lambda: converged(api, project, "3"), 120, what="the second rollback to finish")
    before = started_at(api, victim)
    api.kill(victim)
    wait_for(lambda: started_at(api, victim) not in ("", before), 60, what="the heal (500)")
    wait_for(
        lambda: (d.metric("reconciler_notifications_total", kind="rolled_back", result="failed")
                 or 0) >= 2,
        60,
        what="the resolved (hung) and the firing (500) counted as failed",
    )  # fmt: skip
    assert any("rollout completed: app" in t for t in titles(receiver)), titles(receiver)
    body = next(b for b in receiver.bodies if "FIRING rolled back" in b["title"])
    assert body["type"] == "failure" and "cause:" in body["message"], body

    # The URL is a secret: not in the log, `status` or the metrics.
    status = run_cli("status", str(path), "--lock-dir", str(tmp_path))
    _, metrics = d.get("/metrics")
    d.stop()
    log = d.log_path.read_text()
    assert "notifications on" in log
    for text in (log, status.stdout, status.stderr, metrics):
        assert secret not in text
    assert secret in os.environ["NT_HOOK_URL"]  # it was there to leak


def test_an_unhealthy_replica_backs_off_and_its_crash_loop_is_told_with_the_cause(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    receiver: Receiver,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A replica that keeps going unhealthy is restarted with a growing delay (not every
    few seconds), and at the back-off cap `crash_loop` fires with its cause."""
    path = tmp_path / "desired_state.yaml"
    app = {"image": busybox_image, "init": True, "command": ["sleep", "100000"],
           "healthcheck": {"test": ["CMD-SHELL", "test ! -f /tmp/bad"], "interval": "1s",
                           "retries": 1},
           "heal": {"backoff_initial": "2s", "backoff_max": "4s", "unhealthy_grace": "0s"},
           "stop_grace_period": "1s"}  # fmt: skip
    doc: dict[str, Any] = with_test_labels(project, {"services": {"app": app}})
    doc["notify"] = {"urls": [f"{receiver.url}/hook"], "kinds": ["crash_loop"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    d = daemon(path, 2.0, ("--state-dir", str(tmp_path / "state")))
    name = f"{project}-app-1"

    def health() -> str:
        try:
            return str(api.inspect_container(name)["State"].get("Health", {}).get("Status"))
        except docker.errors.NotFound:
            return ""

    wait_for(lambda: health() == "healthy", 90, what="a healthy replica")
    api.exec_start(api.exec_create(name, ["touch", "/tmp/bad"]))
    wait_for(lambda: any("FIRING crash loop: app" in t for t in titles(receiver)), 120,
             what="the crash-loop notification")  # fmt: skip
    body = next(b for b in receiver.bodies if "FIRING crash loop" in b["title"])
    assert "keeps failing" in body["message"] and "cause: unhealthy for" in body["message"]
    d.stop()
    rows = [json.loads(line) for line in history_path(project, tmp_path / "state")
            .read_text().splitlines()]  # fmt: skip
    fired = next(i for i, r in enumerate(rows) if r.get("action") == "crash_loop")
    # restarted at once, then after 2 s; the third verdict reaches the cap (4 s): it fires
    assert [r["action"] for r in rows[:fired]].count("heal") == 2, rows[:fired]
    assert rows[fired]["cause"].startswith("unhealthy for"), rows[fired]


def test_swarm_drift_a_rejected_file_and_a_denied_service_are_told_and_resolved(
    api: docker.APIClient,
    busybox_image: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    """On a swarm, with the URL given by `--notify`: a service scaled by hand is put back
    and told; a bad file fires `reload_rejected`, the next good one resolves it; a service
    the host policy denies fires `denied`, resolved once it leaves the file."""
    project = f"ns{uuid.uuid4().hex[:8]}"
    path = tmp_path / "desired_state.yaml"

    def write(services: dict[str, Any], text: str | None = None) -> None:
        doc = {"version": 1, "project": project, "services": services}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        tmp.chmod(0o644)
        tmp.replace(path)

    def told(text: str) -> bool:
        return any(text in t for t in titles(receiver))

    web = {"image": busybox_image, "init": True, "command": ["sleep", "100000"],
           "labels": {"io.reconciler.test": "1"}, "stop_grace_period": "1s"}  # fmt: skip
    with one_node_swarm(api):
        write({"web": web})
        d = DaemonProcess(
            path, tmp_path, 2.0, ("--target", "swarm", "--notify", f"{receiver.url}/swarm")
        )
        try:
            wait_for(lambda: d.get("/readyz")[0] == 200, 120, what="ready")
            subprocess.run(
                ["docker", "service", "scale", "--detach", f"{project}_web=3"],
                check=True,
                capture_output=True,
            )
            wait_for(lambda: told(f"[{project}] drift corrected: web"), 120, what="drift told")
            body = next(b for b in receiver.bodies if "drift corrected" in b["title"])
            assert "scaled to 3 by hand; put back as the file says" in body["message"], body

            good = path.read_text()
            write({}, text=good.replace("services:", "servces:", 1))
            wait_for(lambda: told("FIRING desired state rejected"), 60, what="rejected told")
            root = {**web, "cap_add": ["SYS_ADMIN"]}
            write({"web": web, "root": root})
            wait_for(lambda: told("RESOLVED desired state rejected"), 60, what="resolved")
            wait_for(lambda: told("FIRING denied by the host policy: root"), 60, what="denied")
            write({"web": web})
            wait_for(lambda: told("RESOLVED denied by the host policy: root"), 60, what="allowed")
            assert len([t for t in titles(receiver) if "FIRING" in t]) == 2, titles(receiver)
            # counted once Apprise has its answer, just after the receiver saw the message
            wait_for(lambda: d.metric("reconciler_notifications_total", kind="denied",
                                      result="sent") == 2, 30, what="both counted")  # fmt: skip
        finally:
            d.stop()
            remove_project(api, project)
