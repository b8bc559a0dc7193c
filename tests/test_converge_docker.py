"""Convergence against the real Docker engine (issue: core)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from reconciler.config import loader as desired
from reconciler.core.observed import Observed
from reconciler.core.planner import plan
from reconciler.engine.host.engine import Engine
from reconciler.ops.state_store import StateStore
from reconciler.runtime.settle import Applied, apply
from reconciler.targets.base import RESYNC, Done, Settings, service_key
from reconciler.targets.host.adapter import HostTarget
from reconciler.targets.host.controller import Controller
from tests.conftest import (
    OWNER_LABEL,
    TEST_LABEL,
    cleanup,
    free_port_pair,
    run_cli,
    running_names,
    wait_for,
)
from tests.enginekit import CountingClient, EventRecorder, action, actor_name
from tests.simulator import simulate

pytestmark = pytest.mark.docker


def stack(project: str, image: str, web_replicas: int = 2, **web: Any) -> dict[str, Any]:
    """db + web replicas; network and volume names carry the project (they are global)."""
    front, data, www = f"{project}-front", f"{project}-data", f"{project}-www_{{replica}}"
    return {
        "networks": {front: {}},
        "volumes": {data: {}, www: {}},
        "services": {
            "db": {
                "image": image,
                "command": ["sleep", "100000"],
                "init": True,
                "volumes": [f"{data}:/data"],
                "networks": [front],
            },
            "web": {
                "image": image,
                "replicas": web_replicas,
                "init": True,
                "command": ["httpd", "-f", "-p", "8080"],
                "depends_on": ["db"],
                "volumes": [f"{www}:/www"],
                "networks": [front],
                **web,
            },
        },
    }


@dataclass(frozen=True)
class Converged:
    """What `apply` did (its results and errors) and the notes it reported."""

    applied: Applied
    notes: tuple[str, ...]

    @property
    def results(self) -> tuple[Done, ...]:
        return self.applied.results

    @property
    def errors(self) -> tuple[Done, ...]:
        return self.applied.errors


def converge(path: Path, api: docker.APIClient | None = None, *, check: bool = True) -> Converged:
    """`reconciler apply` in process: the daemon's runtime, until the project settles."""
    state = desired.load(path)
    target = HostTarget(api or docker.from_env().api, state, Settings())
    applied = apply(target, timeout_s=300)
    if check:
        assert applied.ok, [(r.key, r.error) for r in applied.errors]
    return Converged(applied, target.apply_report().notes)


def test_converge_from_empty_then_second_pass_writes_nothing(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """From nothing to the file's containers; the next pass plans nothing and makes no write."""
    path = write_state(stack(project, busybox_image))
    converge(path)
    assert running_names(api, project) == [
        f"{project}-db-1",
        f"{project}-web-1",
        f"{project}-web-2",
    ]
    nets = api.networks(names=[f"{project}-front"])
    assert any(n["Labels"].get("io.reconciler.project") == project for n in nets)

    client = CountingClient()
    state = desired.load(path)
    controller = Controller(Engine(client.api), state, StateStore(project))
    assert not controller.reconcile(RESYNC).actions
    assert len(client.calls) == 3  # the periodic look: one list per object kind
    again = converge(path, client.api)
    assert not again.results and not plan(state, Engine(api).observe(project))
    assert client.writes() == []


def test_observe_matches_the_simulator(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """Contract: after executing a plan, observe() equals what the engine model predicted."""
    path = write_state(stack(project, busybox_image))
    state = desired.load(path)
    engine = Engine(api)
    before = engine.observe(project)
    the_plan = plan(state, before)
    predicted = simulate(before, the_plan)
    converge(path)
    after = engine.observe(project)

    def shape(o: Observed) -> set[tuple[Any, ...]]:
        return {
            (c.name, c.service, c.replica, c.spec_hash, c.state, c.networks) for c in o.containers
        }

    assert shape(after) == shape(predicted)
    assert {n.name for n in after.networks if n.owned} >= {f"{project}-front"}
    assert {v.name for v in after.volumes if v.owned} >= {
        f"{project}-data",
        f"{project}-www_1",
        f"{project}-www_2",
    }


def test_scale_by_editing_the_file(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """Editing replicas 2 -> 4 -> 1 converges each time."""
    web = lambda n: [f"{project}-web-{i}" for i in range(1, n + 1)]  # noqa: E731
    for replicas in (2, 4, 1):
        converge(write_state(stack(project, busybox_image, replicas)))
        names = [n for n in running_names(api, project) if "-web-" in n]
        assert names == web(replicas)
    vols = {
        v["Name"] for v in api.volumes(filters={"label": f"{OWNER_LABEL}={project}"})["Volumes"]
    }
    assert {f"{project}-www_{i}" for i in range(1, 5)} <= vols  # scaling down never removes volumes


def test_changed_environment_recreates_one_replica_at_a_time(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    record_events: Callable[..., EventRecorder],
) -> None:
    """A changed variable replaces the replicas one at a time: each new one starts only after
    the old one left, and the next old one goes only once the previous new one passed."""
    quick = {"drain_period": "0s", "deploy": {"update_config": {"monitor": "1s"}}}
    path = write_state(stack(project, busybox_image, 3, environment={"COLOR": "blue"}, **quick))
    converge(path)
    old = {
        c["Names"][0]: c["Id"]
        for c in api.containers(filters={"label": "io.reconciler.service=web"})
        if project in c["Names"][0]
    }
    # Recorded live from before the change (Docker's own history is short and shared).
    rec = record_events(
        filters={
            "type": ["container"],
            "label": [f"io.reconciler.project={project}"],
            "event": ["stop", "start"],
        }
    )
    write_state(stack(project, busybox_image, 3, environment={"COLOR": "green"}, **quick))
    result = converge(path)
    creates = [r.action.name for r in result.results if r.action.verb == "create"]
    assert len(creates) == 3 and all("_" in n for n in creates)  # beside the old, as compose
    wait_for(lambda: len(rec.events()) >= 6, 30, what="the stop and start events")
    sequence = [(action(e), (actor_name(e) or "").rsplit("-", 1)[1]) for e in rec.events()]
    # stop old 1, start new 1, stop old 2, ... : never two replicas down at once
    assert sequence == [
        ("stop", "1"),
        ("start", "1"),
        ("stop", "2"),
        ("start", "2"),
        ("stop", "3"),
        ("start", "3"),
    ]
    for c in api.containers(filters={"label": f"io.reconciler.project={project}"}):
        if "-web-" in c["Names"][0]:
            assert c["Id"] not in old.values()
            env = api.inspect_container(c["Id"])["Config"]["Env"]
            assert "COLOR=green" in env


def test_removed_container_is_recreated_on_the_next_pass(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """docker rm -f of a replica is undone by the next pass; its volume is reused."""
    path = write_state(stack(project, busybox_image))
    converge(path)
    victim = f"{project}-web-2"
    api.remove_container(victim, force=True)
    result = converge(path)
    assert [
        (r.action.verb, r.action.name) for r in result.results if r.action.kind == "container"
    ] == [("create", victim), ("start", victim)]
    assert victim in running_names(api, project)


def test_unlabelled_container_with_clashing_name_is_left_alone(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """A foreign container holding our name is reported, never stopped or removed."""
    foreign = api.create_container(
        busybox_image,
        ["sleep", "100000"],
        name=f"{project}-web-1",
        labels={TEST_LABEL: "1", OWNER_LABEL: project},
    )
    api.start(foreign["Id"])
    path = write_state(stack(project, busybox_image))
    result = converge(path, check=False)
    (err,) = [r for r in result.errors if r.outcome == "error"]
    assert err.action.key == f"create:{project}-web-1"
    assert "which reconciler does not manage" in (err.error or "")
    info = api.inspect_container(foreign["Id"])
    assert info["State"]["Running"] and info["Name"] == f"/{project}-web-1"
    assert f"{project}-web-2" in running_names(api, project)  # the rest converged


def test_unmanaged_network_and_volume_are_adopted(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """A network and volume made by hand are used as they are, never relabelled or removed."""
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}
    net = api.create_network(f"{project}-hand", labels=labels)
    api.create_volume(f"{project}-handvol", labels=labels)
    doc = {
        "networks": {f"{project}-hand": {}},
        "volumes": {f"{project}-handvol": {}},
        "services": {
            "w": {
                "image": busybox_image,
                "command": ["sleep", "100000"],
                "init": True,
                "networks": [f"{project}-hand"],
                "volumes": [f"{project}-handvol:/data"],
            }
        },
    }
    # A file put in the volume by hand must be there for the service: the same volume.
    writer = api.create_container(
        busybox_image,
        ["sh", "-c", "echo by-hand > /data/marker"],
        labels=labels,
        host_config=api.create_host_config(binds=[f"{project}-handvol:/data"]),
    )
    api.start(writer["Id"])
    assert api.wait(writer["Id"], timeout=60)["StatusCode"] == 0
    api.remove_container(writer["Id"])
    path = write_state(doc)
    result = converge(path)
    assert any("adopted, not owned" in n for n in result.notes)
    assert not [r for r in result.results if r.action.kind in ("network", "volume")]
    # The same network (by ID), its labels untouched, and the same volume, used as they are.
    assert api.inspect_network(net["Id"])["Labels"] == labels
    assert api.inspect_volume(f"{project}-handvol")["Labels"] == labels
    assert running_names(api, project) == [f"{project}-w-1"]
    info = api.inspect_container(f"{project}-w-1")
    assert info["NetworkSettings"]["Networks"][f"{project}-hand"]["NetworkID"] == net["Id"]
    exec_id = api.exec_create(f"{project}-w-1", ["cat", "/data/marker"])
    assert api.exec_start(exec_id).decode().strip() == "by-hand"


def test_pull_failure_is_reported_and_others_converge(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """An image that cannot be pulled fails its service only, with Docker's text."""
    doc = stack(project, busybox_image)
    doc["services"]["ghost"] = {"image": "registry.invalid/nobody/ghost:1"}
    path = write_state(doc)
    result = converge(path, check=False)
    errors = {r.action.key: r for r in result.errors}
    assert errors["image:ghost"].outcome == "error"
    assert "pull image registry.invalid/nobody/ghost:1" in (errors["image:ghost"].error or "")
    assert errors[f"container:{project}-ghost-1"].outcome == "skipped"
    assert len(running_names(api, project)) == 3


def test_pull_failure_is_retried_with_backoff(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """A failed pull is retried at once (the engine answered 5xx: transient), then held back
    until its back-off expires; the pull is its own work, the service waits for it."""
    doc = {
        "services": {
            "ghost": {
                "image": "registry.invalid/nobody/ghost:1",
                "heal": {"backoff_initial": "30s"},
            }
        }
    }
    path = write_state(doc)
    state = desired.load(path)
    notes: list[str] = []
    queued: list[str] = []
    rec = Controller(
        Engine(api),
        state,
        StateStore(project),
        enqueue=lambda key, delay: queued.append(key),
        on_note=notes.append,
    )
    ghost = service_key("ghost")
    for attempt in (1, 2):
        queued.clear()
        rec.reconcile(ghost)  # the service asks for its image
        assert queued == ["image:ghost"], attempt
        assert rec.reconcile("image:ghost").errors == 1  # the pull fails
    queued.clear()
    outcome = rec.reconcile(ghost)
    assert queued == [] and outcome.requeue_after and outcome.requeue_after > 10
    assert any("image:ghost: held back" in n for n in notes)


def test_port_taken_fails_one_replica_only(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """A host port already taken fails that replica with Docker's error; others converge."""
    port = free_port_pair()  # port for web-1, port + 1 for web-2 (taken by the blocker)
    blocker = api.create_container(
        busybox_image,
        ["httpd", "-f", "-p", "80"],
        ports=[80],
        host_config=api.create_host_config(port_bindings={80: ("127.0.0.1", port + 1)}),
        labels={TEST_LABEL: "1", OWNER_LABEL: project},
        name=f"{project}-blocker",
    )
    api.start(blocker["Id"])
    doc = stack(project, busybox_image, 2, ports=[f"127.0.0.1:{port}-{port + 1}:8080"])
    result = converge(write_state(doc), check=False)
    (err,) = result.errors
    assert err.action.key == f"container:{project}-web-2"  # the start fails, not the create
    assert "port is already allocated" in (err.error or "") or "address already in use" in (
        err.error or ""
    )
    assert f"{project}-web-1" in running_names(api, project)


BAD_FILES = {
    "malformed": ("services:\n  web: {image: [x\n", "malformed YAML"),
    "negative": (
        "version: 1\nservices:\n  web: {image: x, replicas: -1}\n",
        "services.web.replicas: must be >= 0",
    ),
    "unknown key": (
        "version: 1\nservices:\n  web: {image: x, replica: 2}\n",
        "services.web.replica: unknown key",
    ),
    "empty": ("", "refusing"),
    "no services": ("version: 1\nservices: {}\n", "refusing"),
    "dangling": (
        "version: 1\nservices:\n  web: {image: x, depends_on: [db]}\n",
        "unknown service 'db'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_is_refused_and_changes_nothing(
    case: str,
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
) -> None:
    """Every bad input: exit 2, the file and problem named, and nothing on the engine changes."""
    path = write_state(stack(project, busybox_image))
    converge(path)
    before = sorted(
        (c["Id"], c["State"])
        for c in api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    )
    text, message = BAD_FILES[case]
    path.write_text(text.replace("version: 1", f"version: 1\nproject: {project}"))
    for command in ("apply", "validate", "status"):
        proc = run_cli(command, str(path))
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr and message in proc.stderr
    assert run_cli("plan", str(path)).returncode == 1
    after = sorted(
        (c["Id"], c["State"])
        for c in api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    )
    assert after == before


def test_missing_file_exit_2(tmp_path: Path) -> None:
    """A missing file: exit 2 and its name."""
    proc = run_cli("apply", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and "absent.yaml" in proc.stderr and "file not found" in proc.stderr


def test_cli_plan_and_apply_exit_codes(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Callable[..., Path]
) -> None:
    """plan exits 2 while changes are pending and 0 once apply converged; status shows it."""
    path = write_state(stack(project, busybox_image))
    pending = run_cli("plan", str(path))
    assert pending.returncode == 2 and f"create container {project}-web-1" in pending.stdout
    assert run_cli("apply", str(path)).returncode == 0
    synced = run_cli("plan", str(path))
    assert synced.returncode == 0 and "in sync" in synced.stdout
    status = run_cli("status", str(path))
    assert status.returncode == 0
    assert status.stdout.splitlines()[2].split()[:4] == ["web", "2", "2", "2"]


def test_build_service_builds_its_image_once(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A service with `build` gets its image built from the context (relative to the file)."""
    context = tmp_path / "app"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo built > /built\nLABEL io.reconciler.test=1\n"
    )
    tag = f"reconciler-test-built-{project}:1"
    doc = {
        "services": {
            "app": {
                "build": {"context": "./app"},
                "image": tag,
                "init": True,
                "command": ["sleep", "100000"],
            }
        }
    }
    try:
        path = write_state(doc)
        result = converge(path)
        assert [r.action.verb for r in result.results if r.action.kind == "image"] == ["build"]
        exec_id = api.exec_create(f"{project}-app-1", ["cat", "/built"])
        assert api.exec_start(exec_id).decode().strip() == "built"
        image_id = api.inspect_image(tag)["Id"]
        again = converge(path)  # the image is there: not built again
        assert not again.results
        assert api.inspect_image(tag)["Id"] == image_id
    finally:
        cleanup_image(api, tag, project)


def cleanup_image(api: docker.APIClient, tag: str, project: str) -> None:
    """Remove the project's containers, then the image they used."""
    cleanup(api, project)
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_image(tag, force=True)


def test_down_removes_the_project_but_keeps_volumes_and_adopted_objects(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    """`reconciler down` removes our containers and networks; volumes stay unless --volumes;
    a network made by hand (adopted) is never removed; a foreign container is untouched."""
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}
    api.create_network(f"{project}-hand", labels=labels)
    foreign = api.create_container(busybox_image, ["sleep", "1d"], labels=labels)
    doc = stack(project, busybox_image)
    doc["networks"][f"{project}-hand"] = {}
    doc["services"]["db"]["networks"] = [f"{project}-front", f"{project}-hand"]
    path = write_state(doc)
    converge(path)

    def ours(kind: str) -> set[str]:
        found = (
            api.networks(filters={"label": f"io.reconciler.project={project}"})
            if kind == "network"
            else api.volumes(filters={"label": f"io.reconciler.project={project}"})["Volumes"]
        )
        return {o["Name"] for o in found or []}

    assert ours("volume") and f"{project}-front" in ours("network")
    result = run_cli("down", str(path), "--lock-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert running_names(api, project) == []
    assert not api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    assert ours("network") == set() and ours("volume")  # volumes kept
    assert api.networks(names=[f"{project}-hand"])  # adopted: not ours to remove
    assert api.inspect_container(foreign["Id"])  # untouched
    result = run_cli("down", str(path), "--volumes", "--lock-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours("volume") == set()


def test_plan_and_apply_never_print_a_secret_looking_variable(
    project: str, write_state: Callable[..., Path], tmp_path: Path
) -> None:
    """A secret-looking variable from .env in an image and a container name: plan's steps and
    apply's results and notes show [redacted], as status and the logs do."""
    token = f"zz9{project[1:]}"
    (tmp_path / ".env").write_text(f"REG_TOKEN={token}\n")
    path = write_state(
        {
            "services": {
                "web": {
                    "image": "registry.invalid/rvw-bb-${REG_TOKEN}:1",
                    "container_name": f"{project}-" + "${REG_TOKEN}",
                }
            }
        }
    )
    (tmp_path / "lock").mkdir()
    dirs = ["--state-dir", str(tmp_path / "state"), "--lock-dir", str(tmp_path / "lock")]
    planned = run_cli("plan", str(path), *dirs)
    assert planned.returncode == 2, planned.stderr
    assert "create container [redacted]" in planned.stdout  # the whole value is hidden
    assert "ensure image [redacted] for web" in planned.stdout
    applied = run_cli("apply", str(path), "--timeout", "30", *dirs)
    assert applied.returncode == 1
    assert "ensure image [redacted]" in applied.stdout
    for proc in (planned, applied):
        assert token not in proc.stdout + proc.stderr
