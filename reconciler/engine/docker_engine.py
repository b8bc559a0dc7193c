"""The thin Docker adapter: `observe()` reads one project, `execute()` runs one action.

Converts docker-py dictionaries into our snapshots at the boundary and maps SDK
errors onto ours: NotFound on stop/remove means done, connection errors mean the
engine is down, 5xx is transient, 409 on a name is a conflict with a foreign
container. An idle observe is three list calls whatever the project's size.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from reconciler.core.healing import LastRun
from reconciler.core.model import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    Action,
    ConnectNetwork,
    ContainerSpec,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    EnsureImage,
    Observed,
    ObservedContainer,
    ObservedNetwork,
    ObservedVolume,
    RecreateContainer,
    RemoveContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
    ownership_labels,
)
from reconciler.errors import ActionFailed, EngineUnavailable, NameConflict

_EXIT = re.compile(r"Exited \((-?\d+)\)")
_HEALTH = (
    ("(unhealthy)", "unhealthy"),
    ("(healthy)", "healthy"),
    ("(health: starting)", "starting"),
)
READY_TIMEOUT_S = 120.0


FALLBACK_API_VERSION = "1.41"  # when the engine is down at start there is nothing to negotiate


def connect(timeout: float = 30.0, version: str | None = None) -> docker.APIClient:
    """A low-level client from the environment (DOCKER_HOST and friends)."""
    try:
        return docker.from_env(timeout=timeout, version=version).api
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(f"cannot reach the Docker engine: {exc}") from exc


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Map SDK exceptions onto ours, keeping Docker's own text."""
    try:
        yield
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError):
            text = exc.explanation or str(exc)
            if exc.status_code == 409 and "is already in use by container" in str(text):
                raise NameConflict(f"{what}: {text}") from exc
            raise ActionFailed(f"{what}: {text}", transient=exc.is_server_error()) from exc
        if isinstance(exc, docker.errors.BuildError | docker.errors.ImageNotFound):
            raise ActionFailed(f"{what}: {exc}") from exc
        raise EngineUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc


class Engine:
    """Reads and changes the objects of one project on one Docker engine."""

    def __init__(self, api: docker.APIClient, *, on_call: Callable[[str], None] | None = None):
        self.api = api
        self._on_call = on_call or (lambda operation: None)

    # ------------------------------------------------------------------- observe

    def observe(self, project: str) -> Observed:
        """The project's containers, and every network and volume (three list calls)."""
        with docker_errors("observe"):
            containers = self.api.containers(
                all=True, filters={"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]}
            )
            networks = self.api.networks()
            volumes = self.api.volumes().get("Volumes") or []
        return Observed(
            containers=tuple(sorted((_container(c) for c in containers), key=lambda c: c.name)),
            networks=tuple(
                ObservedNetwork(n["Name"], n["Id"], _owned(n.get("Labels"), project))
                for n in networks
            ),
            volumes=tuple(
                ObservedVolume(v["Name"], _owned(v.get("Labels"), project)) for v in volumes
            ),
            project_networks=frozenset(
                n["Name"] for n in networks if _owned(n.get("Labels"), project)
            ),
            project_volumes=frozenset(
                v["Name"] for v in volumes if _owned(v.get("Labels"), project)
            ),
        )

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """Full inspect of one container (None when it is gone)."""
        try:
            with docker_errors(f"inspect {container_id[:12]}"):
                return self.api.inspect_container(container_id)
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def last_run(self, container_id: str) -> LastRun | None:
        """Start and finish time of an exited container's last run (one inspect)."""
        info = self.inspect(container_id)
        state = (info or {}).get("State") or {}
        started, finished = _timestamp(state.get("StartedAt")), _timestamp(state.get("FinishedAt"))
        if started is None or finished is None:
            return None
        return LastRun(started, finished, state.get("ExitCode"))

    def log_tail(self, container_id: str, lines: int = 5) -> list[str]:
        """The last lines of a container's output (for status; never logged by the daemon)."""
        with docker_errors(f"logs {container_id[:12]}"):
            raw = self.api.logs(container_id, tail=lines, stdout=True, stderr=True)
        return raw.decode(errors="replace").splitlines()[-lines:]

    # ------------------------------------------------------------------- execute

    def execute(self, action: Action) -> None:
        """Run one action; raise ActionFailed/EngineUnavailable with Docker's text."""
        match action:
            case CreateNetwork(spec=spec, project=project):
                labels = dict(spec.labels) | ownership_labels(project)
                ipam = None
                if spec.ipam:
                    pools = [
                        docker.types.IPAMPool(subnet=s, gateway=g or None) for s, g in spec.ipam
                    ]
                    ipam = docker.types.IPAMConfig(pool_configs=pools)
                with docker_errors(f"create network {spec.name}"):
                    self._call("network_create")
                    self.api.create_network(
                        spec.name,
                        driver=spec.driver,
                        internal=spec.internal,
                        labels=labels,
                        ipam=ipam,
                        check_duplicate=True,
                    )
            case CreateVolume(spec=spec, project=project):
                labels = dict(spec.labels) | ownership_labels(project)
                with docker_errors(f"create volume {spec.name}"):
                    self._call("volume_create")
                    self.api.create_volume(spec.name, driver=spec.driver, labels=labels)
            case EnsureImage():
                self._ensure_image(action)
            case CreateContainer(spec=spec):
                self._create(spec)
            case RecreateContainer(old_id=old_id, spec=spec):
                self._remove(old_id, spec.name, spec.stop_grace_s)
                cid = self._create(spec)
                with docker_errors(f"start {spec.name}"):
                    self._call("container_start")
                    self.api.start(cid)
                self.wait_ready(
                    spec.name,
                    healthy=spec.healthcheck is not None and spec.healthcheck.test != ("NONE",),
                )
            case StartContainer(id=cid, name=name):
                with docker_errors(f"start {name}"):
                    self._call("container_start")
                    self.api.start(cid)
            case RestartContainer(id=cid, name=name):
                with docker_errors(f"restart {name}"):
                    self._call("container_restart")
                    self.api.restart(cid)
            case UnpauseContainer(id=cid, name=name):
                with docker_errors(f"unpause {name}"):
                    self._call("container_unpause")
                    self.api.unpause(cid)
            case StopContainer(id=cid, name=name):
                with docker_errors(f"stop {name}"):
                    self._call("container_stop")
                    self.api.stop(cid)
            case ConnectNetwork(id=cid, name=name, attachment=att):
                with docker_errors(f"connect {name} to {att.network}"):
                    self._call("network_connect")
                    self.api.connect_container_to_network(
                        cid, att.network, aliases=list(att.aliases)
                    )
            case SignalContainer(id=cid, name=name, signal=sig):
                with docker_errors(f"signal {sig} to {name}"):
                    self._call("container_kill")
                    self.api.kill(cid, signal=sig)
            case RemoveContainer(id=cid, name=name):
                self._remove(cid, name, None)
            case _:
                raise TypeError(f"unknown action {action!r}")

    def _call(self, operation: str) -> None:
        self._on_call(operation)

    def _ensure_image(self, action: EnsureImage) -> None:
        what = f"image {action.image} for {action.service}"
        present = self._image_present(action.image)
        if action.build is not None:
            if present and action.pull != "always":
                return
            with docker_errors(f"build {what}"):
                self._call("image_build")
                for chunk in self.api.build(
                    path=action.build.context,
                    dockerfile=action.build.dockerfile,
                    tag=action.image,
                    rm=True,
                    decode=True,
                ):
                    if "error" in chunk:
                        raise ActionFailed(f"build {what}: {chunk['error'].strip()}")
            return
        if action.pull == "never" or (present and action.pull == "missing"):
            if not present:
                raise ActionFailed(f"{what}: not present and pull policy is never")
            return
        repo, tag = parse_repository_tag(action.image)
        with docker_errors(f"pull {what}"):
            self._call("image_pull")
            self.api.pull(repo, tag=tag or "latest")
        if not self._image_present(action.image):
            raise ActionFailed(f"pull {what}: the pull finished but the image is not present")

    def _image_present(self, image: str) -> bool:
        try:
            with docker_errors(f"inspect image {image}"):
                self.api.inspect_image(image)
            return True
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return False
            raise

    def _remove(self, cid: str, name: str, grace: int | None) -> None:
        """Stop gracefully, then remove; already gone counts as done. Volumes are kept."""
        try:
            with docker_errors(f"remove {name}"):
                self._call("container_stop")
                self.api.stop(cid, timeout=grace)
                self._call("container_remove")
                self.api.remove_container(cid, v=False, force=True)
        except ActionFailed as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise

    def _create(self, spec: ContainerSpec) -> str:
        """Create the container and join its networks; return its ID (not started)."""
        api = self.api
        port_bindings: dict[str, list[Any]] = {}
        for p in spec.ports:
            key = f"{p.container_port}/{p.protocol}"
            port_bindings.setdefault(key, []).append(
                (p.host_ip, p.host_port) if p.host_port else ((p.host_ip,) if p.host_ip else None)
            )
        restart_name, _, retries = spec.restart.partition(":")
        restart = {
            "Name": "" if restart_name == "no" else restart_name,
            "MaximumRetryCount": int(retries or 0),
        }
        network_mode = spec.network_mode or (spec.networks[0].network if spec.networks else None)
        host_config = api.create_host_config(
            binds=list(spec.binds) or None,
            port_bindings=port_bindings or None,
            restart_policy=restart,
            cap_add=list(spec.cap_add) or None,
            cap_drop=list(spec.cap_drop) or None,
            read_only=spec.read_only or None,
            init=spec.init,
            network_mode=network_mode,
            pid_mode=spec.pid,
            extra_hosts=list(spec.extra_hosts) or None,
        )
        networking = None
        if not spec.network_mode and spec.networks:
            first = spec.networks[0]
            networking = api.create_networking_config(
                {first.network: api.create_endpoint_config(aliases=list(first.aliases))}
            )
        healthcheck: dict[str, Any] | None = None
        if spec.healthcheck is not None:
            hc = spec.healthcheck
            healthcheck = {"test": list(hc.test)}
            if hc.test != ("NONE",):
                healthcheck |= {
                    "interval": int(hc.interval_s * 1e9),
                    "timeout": int(hc.timeout_s * 1e9),
                    "retries": hc.retries,
                    "start_period": int(hc.start_period_s * 1e9),
                }
        with docker_errors(f"create {spec.name}"):
            self._call("container_create")
            created = api.create_container(
                spec.image,
                command=list(spec.command) if spec.command is not None else None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                name=spec.name,
                environment=list(spec.environment),
                labels=spec.all_labels(),
                ports=[(p.container_port, p.protocol) for p in spec.ports] or None,
                user=spec.user,
                working_dir=spec.working_dir,
                hostname=spec.hostname,
                healthcheck=healthcheck,
                stop_signal=spec.stop_signal,
                stop_timeout=spec.stop_grace_s,
                host_config=host_config,
                networking_config=networking,
            )
        cid: str = created["Id"]
        with docker_errors(f"connect {spec.name}"):
            for att in spec.networks[1:] if not spec.network_mode else ():
                self._call("network_connect")
                api.connect_container_to_network(cid, att.network, aliases=list(att.aliases))
        return cid

    def wait_ready(self, name: str, *, healthy: bool, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the container runs (and is healthy when it has a healthcheck)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.inspect(name)
            state = (info or {}).get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            up = state.get("Running") and not state.get("Restarting")
            if up and (not healthy or health == "healthy"):
                return
            if info is None or state.get("Status") in ("exited", "dead"):
                code = state.get("ExitCode")
                raise ActionFailed(f"{name} did not stay up after (re)creation (exit code {code})")
            if time.monotonic() > deadline:
                raise ActionFailed(
                    f"{name} not ready after {timeout:.0f}s (health: {health})", transient=True
                )
            time.sleep(0.1)


def _owned(labels: dict[str, str] | None, project: str) -> bool:
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_PROJECT) == project


def _container(c: dict[str, Any]) -> ObservedContainer:
    labels = c.get("Labels") or {}
    status = c.get("Status") or ""
    health = next((h for marker, h in _HEALTH if marker in status), None)
    exit_match = _EXIT.search(status)
    networks = ((c.get("NetworkSettings") or {}).get("Networks")) or {}
    mode = (c.get("HostConfig") or {}).get("NetworkMode", "")
    try:
        replica = int(labels.get(LABEL_REPLICA, "0"))
    except ValueError:
        replica = 0
    return ObservedContainer(
        id=c["Id"],
        name=(c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/"),
        service=labels.get(LABEL_SERVICE, ""),
        replica=replica,
        spec_hash=labels.get(LABEL_SPEC_HASH, ""),
        state=c.get("State", "created"),
        health=health,  # type: ignore[arg-type]
        exit_code=int(exit_match.group(1)) if exit_match else None,
        networks=frozenset(networks) if not mode.startswith("container:") else frozenset(),
        image=c.get("Image", ""),
        config_hash=labels.get(LABEL_CONFIG_HASH, ""),
        network_target=mode.removeprefix("container:") if mode.startswith("container:") else "",
    )


def _timestamp(text: str | None) -> float | None:
    """Epoch seconds from Docker's RFC 3339 time with nanoseconds (None for the zero time)."""
    if not text or text.startswith("0001-"):
        return None
    from datetime import datetime

    main, _, frac = text.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    parsed = datetime.fromisoformat(f"{main}.{frac or '0'}+00:00")
    return parsed.timestamp()
