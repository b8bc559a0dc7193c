"""The one daemon, on either target (parametrized: host and Swarm), against the real engine:
systemd's notify protocol with the watchdog, the status file, reloads of a good, a bad, a
world-writable and a policy-denied file, a two-step edit, SIGTERM while keys wait."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from tests.conftest import DaemonProcess, cleanup, run_cli, wait_for
from tests.swarmkit import one_node_swarm, remove_project
from tests.test_systemd import NotifySocket

pytestmark = pytest.mark.docker

TEST = {"io.reconciler.test": "1"}


@dataclass
class Stack:
    """One project on one target: its file, and how many replicas of a service run."""

    target: str
    project: str
    path: Path
    api: docker.APIClient

    def write(self, services: dict[str, Any], text: str | None = None) -> Path:
        doc = {"version": 1, "project": self.project, "services": services}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        tmp.chmod(0o644)
        tmp.replace(self.path)
        return self.path

    def running(self, service: str) -> int:
        if self.target == "host":
            filters = {
                "label": [
                    f"io.reconciler.project={self.project}",
                    f"io.reconciler.service={service}",
                ],
                "status": "running",
            }
            return len(self.api.containers(filters=filters))
        try:
            tasks = self.api.tasks(
                filters={"service": f"{self.project}_{service}", "desired-state": "running"}
            )
        except docker.errors.NotFound:
            return 0
        return sum(t["Status"]["State"] == "running" for t in tasks)

    def exists(self, service: str) -> bool:
        if self.target == "host":
            label = [f"io.reconciler.project={self.project}", f"io.reconciler.service={service}"]
            return bool(self.api.containers(all=True, filters={"label": label}))
        return bool(self.api.services(filters={"name": f"{self.project}_{service}"}))


@pytest.fixture(params=["host", "swarm"])
def stack(request: pytest.FixtureRequest, api: docker.APIClient, tmp_path: Path) -> Iterator[Stack]:
    project = f"dt{uuid.uuid4().hex[:8]}"
    s = Stack(request.param, project, tmp_path / "desired_state.yaml", api)
    if request.param == "host":
        try:
            yield s
        finally:
            cleanup(api, project)
        return
    with one_node_swarm(api):
        try:
            yield s
        finally:
            remove_project(api, project)


@pytest.fixture
def start(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """`reconciler run --target T` for this stack (stopped before the stack is removed)."""
    started: list[DaemonProcess] = []

    def run(*extra: str, interval: float = 60.0) -> DaemonProcess:
        d = DaemonProcess(stack.path, tmp_path, interval, ("--target", stack.target, *extra))
        started.append(d)
        return d

    yield run
    for d in started:
        d.stop()


def web(image: str, **extra: Any) -> dict[str, Any]:
    return {
        "image": image,
        "init": True,
        "command": ["sleep", "100000"],
        "labels": TEST,
        "stop_grace_period": "1s",
        **extra,
    }


def reload(stack: Stack, tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """`reconciler reload` as the unit's ExecReload runs it: exit code and JSON lines."""
    proc = run_cli(
        "reload", str(stack.path), "--target", stack.target, "--lock-dir", str(tmp_path),
        timeout=90,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    return proc.returncode, [json.loads(line) for line in text.splitlines() if line.strip()]


def test_ready_status_watchdog_and_status_file(
    stack: Stack,
    start: Callable[..., DaemonProcess],
    busybox_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """READY=1 after the first round with a STATUS line, WATCHDOG=1 pings while it runs (the
    Swarm daemon sent none), the status file names the target, STOPPING=1 and exit 0."""
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    try:
        stack.write({"web": web(busybox_image)})
        d = start()
        wait_for(lambda: notify.seen("READY=1"), 120, what="READY=1")
        wait_for(lambda: stack.running("web") == 1, 120, what="one replica")
        lines = [m for _, m in notify.drain()]
        status = [m for m in lines if m.startswith("STATUS=")]
        assert any(m.startswith(f"STATUS={stack.project}: web ") for m in status), status
        # READY=1 once the replica runs (the Swarm daemon sent it with `web 0/1`).
        at_ready = lines[lines.index("READY=1") + 1]
        assert at_ready == f"STATUS={stack.project}: web 1/1", lines
        seen = len(notify.seen("WATCHDOG=1"))
        wait_for(lambda: len(notify.seen("WATCHDOG=1")) >= seen + 5, 60, what="5 more pings")
        files = list(tmp_path.glob(f"*{stack.project}*.status.json"))
        data = json.loads(files[0].read_text())
        assert data["target"] == stack.target and data["pid"] == d.proc.pid
        assert d.stop() == 0
        assert notify.seen("STOPPING=1")
    finally:
        notify.close()


def test_reloads_keep_the_last_good_state(
    stack: Stack, start: Callable[..., DaemonProcess], busybox_image: str, tmp_path: Path
) -> None:
    """A good edit is applied when `reload` returns; a bad file, a world-writable file and a
    host-policy denial change nothing that runs (the first two: reload fails, /readyz 503)."""
    stack.write({"web": web(busybox_image)})
    d = start()
    wait_for(lambda: d.get("/readyz")[0] == 200, 120, what="ready")
    stack.write({"web": web(busybox_image, deploy={"replicas": 2})})
    code, lines = reload(stack, tmp_path)
    assert code == 0, lines
    wait_for(lambda: stack.running("web") == 2, 120, what="two replicas")

    good = stack.path.read_text()
    stack.write({}, text=good.replace("services:", "servces:", 1))
    code, lines = reload(stack, tmp_path)
    assert code == 2 and "servces" in str(lines[-1].get("error")), lines  # refused at once
    wait_for(lambda: d.get("/readyz")[0] == 503, 30, what="the daemon's file watch to refuse it")
    assert d.metric("reconciler_desired_state_valid") == 0

    stack.write({}, text=good)
    stack.path.chmod(0o666)  # StrictModes: others could write it
    code, lines = reload(stack, tmp_path)
    assert code == 1 and "StrictModes" in str(lines[-1].get("error")), lines
    assert d.get("/readyz")[0] == 503
    stack.path.chmod(0o644)
    code, lines = reload(stack, tmp_path)
    assert code == 0, lines
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="ready again")

    bad = web(busybox_image, cap_add=["SYS_ADMIN"])
    stack.write({"web": web(busybox_image, deploy={"replicas": 2}), "root": bad})
    code, lines = reload(stack, tmp_path)
    assert code == 0, lines  # the file is good; the policy denies one service in it
    wait_for(lambda: d.metric("reconciler_policy_denials_total", service="root"), 30, what="denial")
    d.forced_pass()
    assert not stack.exists("root")
    assert stack.running("web") == 2
    assert not d.events("action") or all(e.get("action") != "remove" for e in d.events("action"))


@pytest.mark.parametrize("cut", ["head", "inside"])
def test_two_step_edit_removes_nothing(
    stack: Stack, start: Callable[..., DaemonProcess], busybox_image: str, cut: str
) -> None:
    """A file truncated (to its head: invalid; or inside its last service: valid, the service
    losing its command), the rest written a second later (an editor's two steps): no service
    is removed or replaced, on either target; nothing is acted on at all."""
    stack.write({"web": web(busybox_image), "db": web(busybox_image)})
    d = start()
    wait_for(lambda: stack.running("web") == 1 and stack.running("db") == 1, 120, what="both")
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="ready")
    d.forced_pass()
    full = stack.path.read_text()
    if cut == "head":
        half = full[: full.index("services:")] + "services:\n  web:\n"
    else:
        db = full.index("  db:\n")
        half = full[: full.index("\n", full.index("image:", db)) + 1]
    actions = len(d.events("action"))
    loaded = len(d.events("desired state loaded"))
    stack.write({}, text=half)  # step one
    wait_for(lambda: d.events("desired state rejected; keeping the last good one")
             or d.events("a file that just changed removes or replaces services; reading it "
                         "again once it has been still before acting on it"),
             30, what="the half file seen")  # fmt: skip
    stack.write({}, text=full)  # step two
    d.forced_pass()  # the whole file read again: the state it was before
    assert len(d.events("desired state loaded")) == loaded
    assert stack.running("web") == 1 and stack.running("db") == 1
    acted = d.events("action")[actions:]
    assert not acted, acted


def test_sigterm_while_keys_wait(
    stack: Stack, start: Callable[..., DaemonProcess], busybox_image: str
) -> None:
    """A service that cannot run (its image does not exist) keeps its key coming back; SIGTERM
    then still ends the daemon with 0 (nothing sleeps inside a pass)."""
    missing = f"reconciler-missing-{uuid.uuid4().hex[:8]}:1"
    stack.write({"web": web(busybox_image), "ghost": web(missing, pull_policy="never")})
    d = start("--interval", "2")
    wait_for(lambda: stack.running("web") == 1, 120, what="web")
    wait_for(lambda: len([p for p in d.passes()]) >= 4, 60, what="keys coming back")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0
    assert os.path.exists(d.log_path)
