"""`--target swarm` on two nodes: the test engine as manager and a second dockerd in its own
network namespace as a worker (tests/swarmkit.py). Global mode across nodes, placement, and
a drained node."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.engine.swarm import spec as swarm_file
from reconciler.ops.metrics import Metrics
from reconciler.runtime.daemon import Daemon, Options
from reconciler.runtime.settle import apply as apply_once
from reconciler.targets.base import Settings
from reconciler.targets.swarm import adapter as swarm_target
from reconciler.targets.swarm.adapter import SwarmTarget
from reconciler.targets.swarm.status_view import render_status
from tests.conftest import REQUIRE_DOCKER
from tests.swarmkit import SecondNode, remove_project, swarm_state
from tests.test_swarm_docker import wait, web

# A swarm of two nodes needs the engine out of any swarm: run apart from the parallel run.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def nodes(api: docker.APIClient, busybox_image: str) -> Iterator[SecondNode]:
    if swarm_state(api) != "inactive":
        pytest.skip("the engine is in a swarm already: a two-node swarm needs a fresh one")
    if os.geteuid() != 0:
        pytest.skip("a second dockerd in a network namespace needs root")
    try:
        node = SecondNode(api, [busybox_image])
    except (RuntimeError, OSError) as exc:
        if REQUIRE_DOCKER:
            pytest.fail(f"second node: {exc}")
        pytest.skip(f"second node: {exc}")
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def project2(api: docker.APIClient, nodes: SecondNode) -> Iterator[str]:
    name = f"n{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_project(api, name)


def write(path: Path, project: str, services: dict[str, Any]) -> Path:
    doc = {"version": 1, "project": project, "services": services}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def task_nodes(api: docker.APIClient, service: str) -> list[str]:
    """Hostnames of the nodes running the service's tasks, sorted."""
    names = {n["ID"]: n["Description"]["Hostname"] for n in api.nodes()}
    try:
        tasks = api.tasks(filters={"service": service, "desired-state": "running"})
    except docker.errors.NotFound:
        return []
    return sorted(names[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running")


def test_global_mode_and_placement_across_two_nodes(
    api: docker.APIClient, nodes: SecondNode, project2: str, busybox_image: str, tmp_path: Path
) -> None:
    """A global service runs one task on each node; a placement constraint puts a task on
    the worker, and a changed constraint moves it to the manager; status lists both nodes."""
    manager = api.info()["Name"]
    services = {
        "agent": web(busybox_image, deploy={"mode": "global"}),
        "web": web(
            busybox_image,
            deploy={"placement": {"constraints": [f"node.hostname == {nodes.hostname}"]}},
        ),
    }
    path = write(tmp_path / "d.yaml", project2, services)
    desired = swarm_file.load(path)
    rec = SwarmTarget(api, desired, Settings(state_dir=tmp_path))
    assert apply_once(rec, timeout_s=180).ok
    assert task_nodes(api, f"{project2}_agent") == sorted([manager, nodes.hostname])
    assert task_nodes(api, f"{project2}_web") == [nodes.hostname]
    status = render_status(desired, rec.engine.observe(project2), rec.tasks(), rec.records)
    assert nodes.hostname in status and manager in status, status
    services["web"]["deploy"]["placement"]["constraints"] = ["node.role == manager"]
    rec.desired = swarm_file.load(write(path, project2, services))
    assert apply_once(rec, timeout_s=180).ok
    wait(lambda: task_nodes(api, f"{project2}_web") == [manager], 90, "the task moved")


def test_a_drained_node_is_swarms_business(
    api: docker.APIClient, nodes: SecondNode, project2: str, busybox_image: str, tmp_path: Path
) -> None:
    """Draining the worker: Swarm moves the replicated tasks and stops the global one there;
    the daemon (woken by the node event) updates nothing and reports desired/running from the
    tasks; back to active, the global task returns."""
    manager = api.info()["Name"]
    services = {
        "agent": web(busybox_image, deploy={"mode": "global"}),
        "web": web(
            busybox_image,
            replicas=2,
            deploy={"placement": {"preferences": [{"spread": "node.id"}]}},
        ),
    }
    path = write(tmp_path / "d.yaml", project2, services)
    metrics = Metrics(CollectorRegistry(), process=False)
    daemon = Daemon(
        Options(path=path, interval=600, listen=(), lock_dir=tmp_path, state_dir=tmp_path),
        swarm_target.KIND,
        swarm_file.load(path),
        metrics=metrics,
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()

    def value(service: str, state: str) -> float | None:
        return metrics.registry.get_sample_value(
            "reconciler_service_replicas", {"service": service, "state": state}
        )

    def updates() -> float:
        return (
            metrics.registry.get_sample_value(
                "reconciler_actions_total",
                {"action": "update", "kind": "service", "result": "success"},
            )
            or 0.0
        )

    node_id = next(n["ID"] for n in api.nodes() if n["Description"]["Hostname"] == nodes.hostname)

    def availability(value: str) -> None:
        spec = api.inspect_node(node_id)
        api.update_node(node_id, spec["Version"]["Index"], {**spec["Spec"], "Availability": value})

    try:
        wait(
            lambda: value("agent", "running") == 2 and value("web", "running") == 2,
            120,
            "both services up on both nodes",
        )
        wait(
            lambda: task_nodes(api, f"{project2}_web") == sorted([manager, nodes.hostname]),
            90,
            "web spread over both nodes",
        )
        before = updates()
        events = metrics.registry.get_sample_value("reconciler_events_received_total") or 0
        availability("drain")
        wait(
            lambda: task_nodes(api, f"{project2}_web") == [manager, manager],
            120,
            "web's tasks moved to the manager",
        )
        # The metrics follow the task events; each service's row when its own event is handled.
        wait(
            lambda: (
                value("agent", "desired") == 1
                and value("agent", "running") == 1
                and value("web", "running") == 2
            ),
            60,
            "the global service reported on one node, web's two tasks on the manager",
        )
        assert (metrics.registry.get_sample_value("reconciler_events_received_total") or 0) > events
        assert updates() == before  # Swarm's scheduling is not drift
        availability("active")
        wait(lambda: value("agent", "running") == 2, 120, "the global task back on the worker")
        assert updates() == before
    finally:
        daemon.stop()
        thread.join(40)
