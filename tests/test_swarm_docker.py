"""`--target swarm` on a real one-node swarm: create, converge and hold, drift by hand,
config rotation, Swarm's rollbacks held, metrics and status. Local images only (no digest
is resolved, no registry asked)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler.config import swarm as swarm_file
from reconciler.core import swarm_plan as sp
from reconciler.engine.swarm_engine import SwarmEngine
from reconciler.ops.metrics import Metrics
from reconciler.runtime.swarm_runtime import SwarmDaemon, SwarmReconciler, SwarmRecords, apply_once
from tests.swarmkit import one_node_swarm, remove_project

TEST = {"io.reconciler.test": "1"}


@pytest.fixture(scope="module")
def swarm(api: docker.APIClient) -> Iterator[docker.APIClient]:
    with one_node_swarm(api):
        yield api


@pytest.fixture
def sproject(swarm: docker.APIClient) -> Iterator[str]:
    name = f"s{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_project(swarm, name)


@pytest.fixture
def swrite(sproject: str, tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    path = tmp_path / "desired_state.yaml"

    def write(doc: dict[str, Any]) -> Path:
        doc = {"version": 1, "project": sproject, **doc}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)
        return path

    return write


def wait(check: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what or check}")


def web(busybox_image: str, **extra: Any) -> dict[str, Any]:
    return {
        "image": busybox_image,
        "command": ["httpd", "-f", "-p", "8080", "-h", "/tmp"],
        "labels": TEST,
        "stop_grace_period": "1s",
        **extra,
    }


def reconciler(path: Path, api: docker.APIClient, tmp_path: Path) -> SwarmReconciler:
    desired = swarm_file.load(path)
    return SwarmReconciler(SwarmEngine(api), desired, SwarmRecords(desired.project, tmp_path))


def running(api: docker.APIClient, service: str) -> int:
    tasks = api.tasks(filters={"service": service, "desired-state": "running"})
    return sum(t["Status"]["State"] == "running" for t in tasks)
