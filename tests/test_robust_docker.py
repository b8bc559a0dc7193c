"""Robustness fixes whose behaviour is Docker's, shown on the real engine."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.conftest import run_cli, with_test_labels


def _write(path: Path, project: str, services: dict[str, object], **literal: str) -> Path:
    """The state file; each `literal` key written in place of its placeholder, unquoted."""
    text = yaml.safe_dump(with_test_labels(project, {"services": services}), sort_keys=False)
    for placeholder, value in literal.items():
        text = text.replace(placeholder, value)
    path.write_text(text)
    return path


@pytest.mark.docker
def test_tmpfs_mode_is_octal_in_docker(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """`mode: 0o1777` and `mode: 1777` are the sticky, world-writable 1777 inside."""
    vols = [
        {"type": "tmpfs", "target": "/t", "tmpfs": {"size": "1m", "mode": "MODE_A"}},
        {"type": "tmpfs", "target": "/u", "tmpfs": {"mode": "MODE_B"}},
    ]
    web = {"image": busybox_image, "command": ["sleep", "600"], "volumes": vols}
    path = _write(tmp_path / "d.yaml", project, {"web": web}, MODE_A="0o1777", MODE_B="1777")
    done = run_cli("apply", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    name = f"{project}-web-1"
    tmpfs = api.inspect_container(name)["HostConfig"]["Tmpfs"]
    assert tmpfs == {"/t": "size=1048576,mode=1777", "/u": "mode=1777"}
    exec_id = api.exec_create(name, ["stat", "-c", "%a", "/t", "/u"])["Id"]
    assert api.exec_start(exec_id).decode().split() == ["1777", "1777"]


@pytest.mark.docker
def test_scale_down_of_network_mode_host_converges(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """replicas 2 -> 1 with network_mode host: no drain (Docker cannot disconnect `host`),
    the replica is stopped with its grace and removed; apply converges (exit 0)."""
    from reconciler.core.actions import DrainContainer
    from reconciler.engine.host.engine import Engine

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nallow:\n  - {rule: host_network, services: [h]}\n")
    h = {
        "image": busybox_image,
        "command": ["sleep", "600"],
        "network_mode": "host",
        "drain_period": "2s",
        "stop_grace_period": "1s",
    }
    path = tmp_path / "d.yaml"
    flags = ("--policy", str(policy), "--lock-dir", str(tmp_path), "--timeout", "60")
    _write(path, project, {"h": {**h, "replicas": 2}})
    done = run_cli("apply", str(path), *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    second = api.inspect_container(f"{project}-h-2")
    assert list(second["NetworkSettings"]["Networks"]) == ["host"]
    # The engine itself: a drain of a host-network container is nothing to do.
    Engine(api).execute(DrainContainer(second["Id"], f"{project}-h-2", "h", ("host",), "t"))
    _write(path, project, {"h": {**h, "replicas": 1}})
    done = run_cli("apply", str(path), *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot be disconnected" not in done.stdout + done.stderr
    names = [c["Names"][0] for c in api.containers(all=True, filters={"name": f"{project}-h-"})]
    assert names == [f"/{project}-h-1"]


@pytest.mark.docker
def test_network_mode_of_a_container_outside_the_project(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """`network_mode: container:X`, X no container at all: plan and apply say so and exit 1
    (it was "in sync", exit 0, with the replica missing); X a container of no project that
    exists: joined (only looked at), apply converges."""
    from tests.conftest import OWNER_LABEL, TEST_LABEL

    outside = f"{project}-outside"
    w = {
        "image": busybox_image,
        "command": ["sleep", "600"],
        "network_mode": f"container:{outside}",
    }
    path = _write(tmp_path / "d.yaml", project, {"w": w})
    flags = ("--lock-dir", str(tmp_path), "--timeout", "30")
    for command in (("plan", str(path)), ("apply", str(path), *flags)):
        done = run_cli(*command)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"network_mode container:{outside}: no such container" in done.stdout
        assert "in sync" not in done.stdout
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}  # the test's, not the reconciler's
    api.create_container(busybox_image, ["sleep", "600"], name=outside, labels=labels)
    api.start(outside)
    done = run_cli("apply", str(path), *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    joined = api.inspect_container(f"{project}-w-1")["HostConfig"]["NetworkMode"]
    assert joined in (f"container:{outside}", f"container:{api.inspect_container(outside)['Id']}")
    assert run_cli("plan", str(path)).returncode == 0


@pytest.mark.docker
def test_daemon_start_on_a_just_written_file_holds_removals(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Any,
    daemon: Any,
) -> None:
    """Two-step edits at start: `run` right after a write that dropped `api` leaves api's
    container alone until the file has been still for 5 s and is read again; then removes it."""
    from tests.conftest import wait_for

    svc = {"image": busybox_image, "command": ["sleep", "600"], "stop_grace_period": "1s"}
    path = write_state({"services": {"web": svc, "api": svc}})
    done = run_cli("apply", str(path), "--lock-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    write_state({"services": {"web": svc}})
    # "Just written" as the daemon sees it at start, however long a loaded machine takes to
    # start it: the write is dated a little ahead, so it is younger than 5 s when read.
    ahead = time.time() + 15
    os.utime(path, (ahead, ahead))
    d = daemon(path, interval=60.0)
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="the daemon's first pass")
    assert d.events(
        "the file changed just now; services it does not list are removed only "
        "once it has been still and is read again"
    )
    wait_for(
        lambda: not api.containers(all=True, filters={"name": f"{project}-api-1"}),
        90,
        what="api removed once the file has been still",
    )
    assert api.inspect_container(f"{project}-web-1")["State"]["Running"]
    lines = d.lines()
    released = next(
        i for i, line in enumerate(lines) if str(line.get("event", "")).startswith("the file has")
    )
    early = [
        line
        for line in lines[:released]
        if line.get("event") == "pass" and line.get("key") == "service:api" and line["actions"]
    ]
    assert not early, early  # nothing was done to api before the file was read again


@pytest.mark.docker
def test_daemon_refuses_fifo_and_symlink_loop_configs_and_keeps_reloading(
    busybox_image: str, tmp_path: Path, write_state: Any, daemon: Any
) -> None:
    """A FIFO config (it once blocked the reload thread for ever) and a symlink loop (once a
    RecursionError that killed it) are rejected reloads: not ready, valid 0, the last good
    state kept; the next good edit is applied."""
    import os

    from tests.conftest import wait_for

    web = {"image": busybox_image, "command": ["sleep", "600"]}
    path = write_state({"services": {"web": web}})
    d = daemon(path, interval=60.0)
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="the daemon's first pass")
    os.mkfifo(tmp_path / "ff")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "self").symlink_to(".")
    (conf / "a.conf").write_text("a\n")
    for source, valid in (("./ff", False), ("./conf", True), ("./ff", False)):
        write_state({"services": {"web": {**web, "configs": [{"source": source, "target": "/c"}]}}})
        wait_for(
            lambda v=valid: (
                d.metric("reconciler_desired_state_valid") == (1 if v else 0)
                and (d.get("/readyz")[0] == 200) == v
            ),
            60,
            what=f"the reload of {source} to be {'applied' if valid else 'rejected'}",
        )
    assert any("is a FIFO, not a regular file" in str(e.get("error")) for e in d.lines())
    write_state({"services": {"web": web}})
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="the good file applied again")
