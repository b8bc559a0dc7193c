"""A one-node swarm on the test engine: joined for the tests and left afterwards only when
the fixture made it (an engine already in a swarm is used as it is, and left in it)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

# This run's temporary folder (tests/conftest.py sets it; shared by the run's xdist workers).
USERS_DIR: Path | None = None


def swarm_state(api: docker.APIClient) -> str:
    return str((api.info().get("Swarm") or {}).get("LocalNodeState", "inactive"))


@contextlib.contextmanager
def one_node_swarm(api: docker.APIClient) -> Iterator[bool]:
    """Yield whether this test run made the swarm; leave it at the end if so, once no test of
    the run uses it any more (pytest-xdist workers share one engine: a count in a file,
    under a lock, says how many hold it)."""
    with _swarm_users() as users:
        made = users.get("made", False)
        if users["count"] == 0 and swarm_state(api) != "active":
            subprocess.run(
                ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                check=True,
                capture_output=True,
            )
            made = True
        users["count"] += 1
        users["made"] = made
    try:
        yield made
    finally:
        with _swarm_users() as users:  # left under the lock: nobody joins a swarm going away
            users["count"] -= 1
            if users["count"] == 0:
                users["made"] = False
                if made:
                    leave_swarm(api)


def leave_swarm(api: docker.APIClient) -> None:
    for _ in range(5):  # "context canceled" now and then: retry (RECIPES.md)
        done = subprocess.run(
            ["docker", "swarm", "leave", "--force"], capture_output=True, text=True
        )
        if done.returncode == 0 or swarm_state(api) == "inactive":
            break
        time.sleep(1)


@contextlib.contextmanager
def _swarm_users() -> Iterator[dict[str, Any]]:
    """{count, made} of this test run (one file per run, shared by its xdist workers)."""
    if USERS_DIR is None:
        raise RuntimeError("tests/conftest.py sets swarmkit.USERS_DIR at the start of the run")
    path = USERS_DIR / "reconciler-swarm-users.json"
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            users = json.loads(path.read_text()) if path.exists() else {"count": 0}
            yield users
            path.write_text(json.dumps(users))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    for c in api.secrets(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            api.remove_secret(c["ID"])
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


class SecondNode:
    """A second dockerd in its own network namespace (veth pair on 10.231.N.0/24, its own
    data-root, exec-root, socket and hostname), joined to the test engine's swarm as a worker.

    The test engine's swarm must be made for it (advertised on the veth address, which the
    worker can reach): use only when the engine is not in a swarm yet.
    """

    def __init__(self, manager: docker.APIClient, images: list[str]) -> None:
        import random
        import shutil
        from pathlib import Path

        for tool in ("ip", "nsenter", "unshare", "dockerd"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed")
        self.manager = manager
        tag = f"{random.randrange(16**4):04x}"
        self.netns = f"rtsw{tag}"
        self.host_if, self.node_if = f"rtsw{tag}a", f"rtsw{tag}b"
        subnet = random.randrange(1, 250)
        self.host_ip, self.node_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.hostname = f"swnode-{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="rtsw-"))
        self.socket = f"unix://{self.dir}/docker.sock"
        self.pid: int | None = None
        self.made_swarm = False
        try:
            self._network()
            self._dockerd()
            self.api = docker.APIClient(base_url=self.socket, timeout=60)
            self._join()
            for image in images:  # no registry: the worker gets the images by save/load
                data = manager.get_image(image)
                self.api.load_image(b"".join(data))
        except BaseException:
            self.close()
            raise

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    def _network(self) -> None:
        self._run("ip", "netns", "add", self.netns)
        self._run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        self._run("ip", "link", "set", self.node_if, "netns", self.netns)
        self._run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        self._run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.netns, "ip")
        self._run(*inside, "addr", "add", f"{self.node_ip}/24", "dev", self.node_if)
        self._run(*inside, "link", "set", self.node_if, "up")
        self._run(*inside, "link", "set", "lo", "up")

    def _dockerd(self) -> None:
        # nsenter (not `ip netns exec`, which remounts /sys without the cgroups) and its own
        # UTS namespace, so the node has its own hostname in `docker node ls`.
        d = self.dir
        command = (
            f"hostname {self.hostname} && exec dockerd --data-root {d}/data "
            f"--exec-root {d}/exec --pidfile {d}/docker.pid -H {self.socket} "
            "--bip 172.31.254.1/24"
        )
        self.log = (d / "dockerd.log").open("w")
        proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{self.netns}",
                "unshare",
                "--uts",
                "sh",
                "-c",
                command,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = proc.pid
        self.proc = proc
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                docker.APIClient(base_url=self.socket, timeout=5).ping()
                return
            except Exception:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        raise RuntimeError(f"the second dockerd did not start: see {d}/dockerd.log")

    def _join(self) -> None:
        self.manager.init_swarm(advertise_addr=self.host_ip, listen_addr=f"{self.host_ip}:2377")
        self.made_swarm = True
        token = self.manager.inspect_swarm()["JoinTokens"]["Worker"]
        self.api.join_swarm(
            [f"{self.host_ip}:2377"],
            token,
            advertise_addr=self.node_ip,
            listen_addr=f"{self.node_ip}:2377",
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = self.manager.nodes()
            if len(nodes) == 2 and all(n["Status"]["State"] == "ready" for n in nodes):
                return
            time.sleep(0.5)
        raise RuntimeError("the second node did not become ready")

    def close(self) -> None:
        """Leave, stop our dockerd (by its pid), leave the manager's swarm, drop the netns."""
        import shutil
        import signal

        with contextlib.suppress(Exception):
            for c in self.api.containers(all=True):  # tasks left on this node
                self.api.remove_container(c["Id"], force=True, v=True)
        with contextlib.suppress(Exception):
            self.api.leave_swarm(force=True)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(Exception):
                self.proc.wait(30)
        if self.made_swarm:
            for _ in range(5):
                done = subprocess.run(
                    ["docker", "swarm", "leave", "--force"], capture_output=True, text=True
                )
                if done.returncode == 0 or swarm_state(self.manager) == "inactive":
                    break
                time.sleep(1)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        with contextlib.suppress(Exception):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
