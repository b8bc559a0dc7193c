"""A one-node swarm on the test engine: joined for the tests and left afterwards only when
the fixture made it (an engine already in a swarm is used as it is, and left in it)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import docker
import docker.errors


def swarm_state(api: docker.APIClient) -> str:
    return str((api.info().get("Swarm") or {}).get("LocalNodeState", "inactive"))


@contextlib.contextmanager
def one_node_swarm(api: docker.APIClient) -> Iterator[bool]:
    """Yield whether this made the swarm; leave it at the end if so."""
    made = False
    if swarm_state(api) != "active":
        subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
            check=True,
            capture_output=True,
        )
        made = True
    try:
        yield made
    finally:
        if made:
            for _ in range(5):  # "context canceled" now and then: retry (RECIPES.md)
                done = subprocess.run(
                    ["docker", "swarm", "leave", "--force"], capture_output=True, text=True
                )
                if done.returncode == 0 or swarm_state(api) == "inactive":
                    break
                time.sleep(1)


def remove_project(api: docker.APIClient, project: str) -> None:
    """Every service, config and overlay network labelled with this project, removed."""
    label = f"io.reconciler.project={project}"
    for s in api.services(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_service(s["ID"])
    deadline = time.monotonic() + 60
    # A service's tasks and their network endpoints go some time after the service.
    while time.monotonic() < deadline and api.containers(
        all=True, filters={"label": f"com.docker.stack.namespace={project}"}
    ):
        time.sleep(0.5)
    for c in api.configs(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            api.remove_config(c["ID"])
    for n in api.networks(filters={"label": label}):
        for _ in range(20):
            try:
                api.remove_network(n["Id"])
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                time.sleep(0.5)
    for v in api.volumes(filters={"label": label}).get("Volumes") or []:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_volume(v["Name"], force=True)
