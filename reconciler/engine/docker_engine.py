"""The thin Docker adapter: `observe()` reads one project, `execute()` runs one action.

Converts docker-py dictionaries into our snapshots at the boundary and maps SDK
errors onto ours: NotFound on stop/remove means done, connection errors mean the
engine is down, 5xx is transient, 409 on a name is a conflict with a foreign
container. An idle observe is three list calls whatever the project's size.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.auth
import docker.errors
import requests.exceptions
from docker.utils import config as docker_config
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
    DrainContainer,
    EnsureImage,
    Observed,
    ObservedContainer,
    ObservedNetwork,
    ObservedVolume,
    RemoveContainer,
    RemoveNetwork,
    RemoveVolume,
    RenameContainer,
    RestartContainer,
    RuntimeOptions,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
    ownership_labels,
)
from reconciler.core.takeover import COMPOSE_PROJECT, COMPOSE_SERVICE, ForeignContainer
from reconciler.errors import ActionFailed, EngineSlow, EngineUnavailable, NameConflict

_EXIT = re.compile(r"Exited \((-?\d+)\)")
_HEALTH = (
    ("(unhealthy)", "unhealthy"),
    ("(healthy)", "healthy"),
    ("(health: starting)", "starting"),
)
DEFAULT_GRACE_S = 10.0  # Docker's own stop timeout when a service sets none
STALL_TIMEOUT_S = 60.0  # a pull or build that sends nothing for this long is cut off
PROGRESS_EVERY_S = 5.0
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
    except requests.exceptions.ReadTimeout as exc:  # the engine is there, but slow: retry
        raise EngineSlow(f"{what}: Docker did not answer in time") from exc
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


class _Deadline:
    """A transfer's time limit: closes its HTTP response when the time is up or on cancel."""

    def __init__(self, timeout_s: float) -> None:
        self.expired = self.cancelled = False
        self._response: Any = None
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        self._last_progress = time.monotonic()

    def attach(self, response: Any) -> None:
        self._response = response

    def _expire(self) -> None:
        self.expired = True
        self._close_response()

    def cancel(self) -> None:
        self.cancelled = True
        self._close_response()

    def check(self) -> None:
        if self.expired or self.cancelled:
            raise requests.exceptions.ConnectionError("transfer cut off")

    def due_for_progress(self) -> bool:
        self.check()
        if time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return False
        self._last_progress = time.monotonic()
        return True

    def _close_response(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()

    def close(self) -> None:
        self._timer.cancel()
        self._close_response()


class Engine:
    """Reads and changes the objects of one project on one Docker engine."""

    def __init__(self, api: docker.APIClient, *, on_call: Callable[[str], None] | None = None):
        self.api = api
        self._on_call = on_call or (lambda operation: None)
        self._transfers: set[_Deadline] = set()
        self._auth_stamp: tuple[str, int, int] | None = None  # the credentials file last read

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

    def exists(self, kind: str, name: str) -> bool:
        """Whether a network or volume of that exact name exists (one call)."""
        with docker_errors(f"inspect {kind} {name}"):
            if kind == "network":
                return any(n["Name"] == name for n in self.api.networks(names=[name]))
            try:
                self.api.inspect_volume(name)
                return True
            except docker.errors.NotFound:
                return False

    def containers(self, project: str) -> tuple[ObservedContainer, ...]:
        """The project's containers only (one list call)."""
        with docker_errors("observe containers"):
            found = self.api.containers(
                all=True, filters={"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]}
            )
        return tuple(sorted((_container(c) for c in found), key=lambda c: c.name))

    def find_containers(self, names: Iterable[str]) -> dict[str, str]:
        """Name -> id of those of `names` that exist (one inspect each; looked at, never
        touched: a `network_mode: container:X` outside the project)."""
        out = {}
        for name in sorted(names):
            with docker_errors(f"inspect container {name}"):
                self._call("container_inspect")
                try:
                    out[name] = self.api.inspect_container(name)["Id"]
                except docker.errors.NotFound:
                    continue
        return out

    def others(self, project: str) -> tuple[ForeignContainer, ...]:
        """Every container that is not this project's (one list call): who holds what."""
        with docker_errors("observe other containers"):
            found = self.api.containers(all=True)
        out = []
        for c in found:
            labels = c.get("Labels") or {}
            ours = labels.get(LABEL_MANAGED) == "true"
            if ours and labels.get(LABEL_PROJECT) == project:
                continue
            ports = frozenset(
                (str(p.get("IP", "")), int(p["PublicPort"]), str(p.get("Type", "tcp")))
                for p in c.get("Ports") or ()
                if p.get("PublicPort")
            )
            out.append(
                ForeignContainer(
                    id=c["Id"],
                    name=(c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/"),
                    state=c.get("State", ""),
                    compose_project=labels.get(COMPOSE_PROJECT, ""),
                    compose_service=labels.get(COMPOSE_SERVICE, ""),
                    reconciler_project=labels.get(LABEL_PROJECT, "") if ours else "",
                    host_ports=ports,
                )
            )
        return tuple(sorted(out, key=lambda c: c.name))

    def started_at(self, container_id: str) -> float | None:
        """When a container last started (one inspect; None when gone or never started)."""
        state = ((self.inspect(container_id) or {}).get("State")) or {}
        return _timestamp(state.get("StartedAt"))

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
        return self.last_run_of(self.inspect(container_id))

    @staticmethod
    def last_run_of(info: dict[str, Any] | None) -> LastRun | None:
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
        """Run one action; raise ActionFailed/EngineUnavailable with Docker's text.

        EnsureImage is not run here: pulls and builds are their own work (`ensure_image`).
        """
        api = self.api
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
                    api.create_network(
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
                    api.create_volume(
                        spec.name,
                        driver=spec.driver,
                        driver_opts=dict(spec.driver_opts) or None,
                        labels=labels,
                    )
            case CreateContainer(spec=spec):
                self._create(spec, action.name)
            case StartContainer(id=cid, name=name):
                with docker_errors(f"start {name}"):
                    self._call("container_start")
                    api.start(cid)
            case RestartContainer(id=cid, name=name, grace_s=grace):
                self._stop(cid, name, grace, restart=True)
            case UnpauseContainer(id=cid, name=name):
                with docker_errors(f"unpause {name}"):
                    self._call("container_unpause")
                    api.unpause(cid)
            case StopContainer(id=cid, name=name, grace_s=grace):
                self._stop(cid, name, grace)
            case ConnectNetwork(id=cid, name=name, attachment=att, reconnect=reconnect):
                with docker_errors(f"connect {name} to {att.network}"):
                    if reconnect:
                        self._disconnect(cid, att.network)
                    self._call("network_connect")
                    api.connect_container_to_network(cid, att.network, aliases=list(att.aliases))
            case DrainContainer(id=cid, name=name, networks=networks):
                # Docker cannot drop an alias in place: attach again without our aliases, so
                # DNS stops naming this replica while it finishes what it serves.
                with docker_errors(f"drain {name}"):
                    for net in networks:
                        if net in ("host", "none"):  # Docker's own: nothing to drain
                            continue
                        self._disconnect(cid, net)
                        self._call("network_connect")
                        api.connect_container_to_network(cid, net, aliases=[])
            case RenameContainer(id=cid, name=name, new_name=new_name):
                with docker_errors(f"rename {name} to {new_name}"):
                    self._call("container_rename")
                    api.rename(cid, new_name)
            case SignalContainer(id=cid, name=name, signal=sig):
                with docker_errors(f"signal {sig} to {name}"):
                    self._call("container_kill")
                    api.kill(cid, signal=sig)
            case RemoveContainer(id=cid, name=name, grace_s=grace):
                self._remove(cid, name, grace)
            case RemoveNetwork(name=name):
                with docker_errors(f"remove network {name}"):
                    self._call("network_remove")
                    api.remove_network(name)
            case RemoveVolume(name=name):
                with docker_errors(f"remove volume {name}"):
                    self._call("volume_remove")
                    api.remove_volume(name)
            case _:
                raise TypeError(f"not an engine action: {action!r}")

    def _call(self, operation: str) -> None:
        self._on_call(operation)

    def _disconnect(self, cid: str, network: str) -> None:
        self._call("network_disconnect")
        try:
            self.api.disconnect_container_from_network(cid, network)
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 404):  # not attached (any more): nothing to undo
                return
            if "cannot be disconnected from host network" in str(exc.explanation or ""):
                return  # network_mode host (a 400/500 by version): no DNS to leave
            raise

    # ------------------------------------------------------------------- images

    def image_present(self, image: str) -> bool:
        try:
            with docker_errors(f"inspect image {image}"):
                self.api.inspect_image(image)
            return True
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return False
            raise

    def local_digest(self, image: str) -> str | None:
        """The registry digest the local `image` (a tag) was pulled or pushed as; None when
        the image is absent or never came from a registry."""
        try:
            with docker_errors(f"inspect image {image}"):
                info = self.api.inspect_image(image)
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        repo, _ = parse_repository_tag(image.partition("@")[0])
        digests = [str(d).partition("@") for d in info.get("RepoDigests") or []]
        mine = [dg for name, _, dg in digests if name == repo] or [dg for _, _, dg in digests]
        return mine[0] if mine else None

    def registry_digest(self, image: str) -> str:
        """The digest the registry gives `image` (a tag) now, with the credentials a pull would
        use, without pulling a layer (the engine's distribution inspect: one manifest HEAD)."""
        self._reload_credentials()
        with docker_errors(f"ask the registry for {image}"):
            self._call("distribution_inspect")
            found = self.api.inspect_distribution(image)
        return str((found.get("Descriptor") or {}).get("digest") or "")

    def image_id(self, image: str) -> str | None:
        try:
            with docker_errors(f"inspect image {image}"):
                return str(self.api.inspect_image(image)["Id"])
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def images_in_use(self) -> set[str]:
        """IDs of the images any container on the engine (anyone's) was created from."""
        with docker_errors("list containers"):
            return {str(c.get("ImageID")) for c in self.api.containers(all=True)}

    def remove_image(self, image_id: str) -> bool:
        """Remove an unused image (never forced: one a container uses, or tagged by several
        names, stays); False when Docker refused."""
        try:
            with docker_errors(f"remove image {image_id[:19]}"):
                self._call("image_remove")
                self.api.remove_image(image_id)
            return True
        except ActionFailed as exc:
            return isinstance(exc.__cause__, docker.errors.NotFound)

    def ensure_image(
        self,
        action: EnsureImage,
        *,
        timeout_s: float,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        """Pull or build as the pull policy says, within `timeout_s` (a stalled or slow
        transfer is cut off, not waited for); `progress` gets a line every few seconds."""
        what = f"image {action.image} for {action.service}"
        present = self.image_present(action.image)
        if action.build is not None:
            if present and action.pull != "always":
                return
            self._build(action, what, timeout_s, progress)
            return
        if action.pull == "never" or (present and action.pull == "missing"):
            if not present:
                raise ActionFailed(f"{what}: not present and pull policy is never")
            return
        self._pull(action.image, what, timeout_s, progress)
        if not self.image_present(action.image):
            raise ActionFailed(f"pull {what}: the pull finished but the image is not present")

    def _pull(
        self, image: str, what: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        repo, tag = parse_repository_tag(image)
        registry, _ = docker.auth.resolve_repository_name(repo)
        self._reload_credentials()
        headers = {}
        header = docker.auth.get_config_header(self.api, registry)
        if header:
            headers["X-Registry-Auth"] = header
        with docker_errors(f"pull {what}"), self._deadline(timeout_s, f"pull {what}") as watch:
            self._call("image_pull")
            # docker-py's pull() streams without any timeout: post it ourselves so a stalled
            # transfer ends (read timeout) and a slow one is closed at the deadline.
            response = self.api._post(
                self.api._url("/images/create"),
                params={"fromImage": repo, "tag": tag or "latest"},
                headers=headers,
                stream=True,
                timeout=(10, STALL_TIMEOUT_S),
            )
            watch.attach(response)
            self.api._raise_for_status(response)
            layers: dict[str, tuple[int, int]] = {}
            for chunk in self.api._stream_helper(response, decode=True):
                if "error" in chunk:
                    raise ActionFailed(f"pull {what}: {str(chunk['error']).strip()}")
                detail = chunk.get("progressDetail") or {}
                if chunk.get("id") and detail.get("total"):
                    layers[chunk["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                if watch.due_for_progress():
                    done = sum(c for c, _ in layers.values()) / 1e6
                    total = sum(t for _, t in layers.values()) / 1e6
                    progress(f"{done:.1f} of {total:.1f} MB")

    def _reload_credentials(self) -> None:
        """docker-py reads $DOCKER_CONFIG/config.json (or ~/.docker/config.json) once: read it
        again when it changed (a `docker login` since), so a pull uses the current login."""
        path = docker_config.find_config_file()
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        stamp = (path, st.st_mtime_ns, st.st_size) if path and st else None
        if stamp != self._auth_stamp:
            self.api.reload_config()
            self._auth_stamp = stamp

    def _build(
        self, action: EnsureImage, what: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        assert action.build is not None
        with docker_errors(f"build {what}"), self._deadline(timeout_s, f"build {what}") as watch:
            self._call("image_build")
            for chunk in self.api.build(
                path=action.build.context,
                dockerfile=action.build.dockerfile,
                tag=action.image,
                rm=True,
                decode=True,
                timeout=STALL_TIMEOUT_S,
            ):
                if "error" in chunk:
                    raise ActionFailed(f"build {what}: {chunk['error'].strip()}")
                watch.check()
                line = str(chunk.get("stream") or "").strip()
                if line.startswith("Step ") and watch.due_for_progress():
                    progress(line)

    @contextmanager
    def _deadline(self, timeout_s: float, what: str) -> Iterator[_Deadline]:
        watch = _Deadline(timeout_s)
        self._transfers.add(watch)
        try:
            yield watch
        except (requests.exceptions.RequestException, docker.errors.DockerException, OSError):
            if watch.expired or watch.cancelled:
                why = "cancelled" if watch.cancelled else f"timed out after {timeout_s:g}s"
                raise ActionFailed(f"{what}: {why}", transient=True) from None
            raise
        finally:
            watch.close()
            self._transfers.discard(watch)

    def cancel_transfers(self) -> None:
        """Cut off every pull and build under way (shutdown)."""
        for watch in list(self._transfers):
            watch.cancel()

    # ------------------------------------------------------------------- stop

    def _stop(self, cid: str, name: str, grace: float | None, *, restart: bool = False) -> None:
        """Stop (or restart) with the service's grace, sub-second too; gone counts as done."""
        grace = DEFAULT_GRACE_S if grace is None else grace
        verb = "restart" if restart else "stop"
        try:
            with docker_errors(f"{verb} {name}"):
                if grace == int(grace):
                    # docker-py adds the grace to its HTTP timeout for these two calls.
                    self._call(f"container_{verb}")
                    if restart:
                        self.api.restart(cid, timeout=int(grace))
                    else:
                        self.api.stop(cid, timeout=int(grace))
                    return
                # Docker takes whole seconds: signal, wait the grace ourselves, then kill.
                info = self.api.inspect_container(cid)
                if (info.get("State") or {}).get("Running"):
                    signal = (info.get("Config") or {}).get("StopSignal") or "SIGTERM"
                    self._call("container_kill")
                    self.api.kill(cid, signal=signal)
                    try:
                        self._call("container_wait")
                        self.api.wait(cid, timeout=grace)
                    except requests.exceptions.RequestException:
                        with contextlib.suppress(docker.errors.APIError):
                            self._call("container_kill")
                            self.api.kill(cid)
                if restart:
                    self._call("container_start")
                    self.api.start(cid)
        except ActionFailed as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound) or restart:
                raise

    def _remove(self, cid: str, name: str, grace: float | None) -> None:
        """Stop gracefully, then remove; already gone counts as done. Volumes are kept."""
        self._stop(cid, name, grace)
        try:
            with docker_errors(f"remove {name}"):
                self._call("container_remove")
                self.api.remove_container(cid, v=False, force=True)
        except ActionFailed as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise

    @contextmanager
    def _name_clash(self, name: str) -> Iterator[None]:
        """Say whose container holds a name we need: a foreign one is left alone for good; one
        of ours means another reconciler acts on the project (retry soon)."""
        try:
            yield
        except NameConflict as exc:
            info = self.inspect(name) or {}
            labels = (info.get("Config") or {}).get("Labels") or {}
            holder = str(info.get("Id", ""))[:12]
            if labels.get(LABEL_MANAGED) == "true":
                raise ActionFailed(
                    f"create {name}: the name is taken by another reconciler-managed container "
                    f"({holder}, project {labels.get(LABEL_PROJECT)}): is a second reconciler "
                    "acting on this project?",
                    transient=True,
                ) from exc
            raise NameConflict(
                f"create {name}: the name is taken by container {holder}, which reconciler "
                "does not manage; it is left alone"
            ) from exc

    def _create(self, spec: ContainerSpec, name: str) -> str:
        """Create the container as `name` and join its networks; return its ID (not started)."""
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
        # Secrets: their files bind-mounted read-only (the content never passes through us).
        binds = [*spec.binds, *(f"{m.source}:{m.target}:ro" for m in spec.secrets)]
        host_config = api.create_host_config(
            binds=binds or None,
            port_bindings=port_bindings or None,
            restart_policy=restart,
            cap_add=list(spec.cap_add) or None,
            cap_drop=list(spec.cap_drop) or None,
            read_only=spec.read_only or None,
            init=spec.init,
            network_mode=network_mode,
            pid_mode=spec.pid,
            extra_hosts=list(spec.extra_hosts) or None,
            **_host_options(spec.options),
            # Host power: only what the host policy allowed reaches here (core.policy).
            privileged=spec.privileged,
            devices=list(spec.devices) or None,
            ipc_mode=spec.ipc,
            uts_mode=spec.uts,
            userns_mode=spec.userns_mode,
            security_opt=list(spec.security_opt) or None,
        )
        networking = None
        if not spec.network_mode and spec.networks:
            first = spec.networks[0]
            networking = api.create_networking_config(
                {first.network: api.create_endpoint_config(aliases=list(first.aliases))}
            )
        grace = spec.stop_grace_s
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
        opts = spec.options
        with self._name_clash(name), docker_errors(f"create {name}"):
            self._call("container_create")
            config = api.create_container_config(
                spec.image,
                command=list(spec.command) if spec.command is not None else None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                # as create_container does (use_config_proxy): proxies from config.json
                environment=api._proxy_configs.inject_proxy_environment(list(spec.environment))
                or None,
                labels=spec.all_labels(),
                ports=_exposed(spec) or None,
                stdin_open=opts.stdin_open,
                tty=opts.tty,
                user=spec.user,
                working_dir=spec.working_dir,
                hostname=spec.hostname,
                healthcheck=healthcheck,
                stop_signal=spec.stop_signal,
                stop_timeout=None if grace is None else math.ceil(grace),
                host_config=host_config,
                networking_config=networking,
            )
            if healthcheck is not None and opts.health_start_interval_s is not None:
                # docker-py knows no StartInterval (API 1.44): set it on the request itself;
                # an engine older than 25 (API < 1.44) ignores the field.
                config["Healthcheck"]["StartInterval"] = int(opts.health_start_interval_s * 1e9)
            created = api.create_container_from_config(config, name)
        cid: str = created["Id"]
        with docker_errors(f"connect {name}"):
            for att in spec.networks[1:] if not spec.network_mode else ():
                self._call("network_connect")
                api.connect_container_to_network(cid, att.network, aliases=list(att.aliases))
        return cid


def _exposed(spec: ContainerSpec) -> list[tuple[int, str]]:
    """Published ports and `expose`: Config.ExposedPorts."""
    ports = [(p.container_port, p.protocol) for p in spec.ports]
    for entry in spec.options.expose:
        port, _, proto = entry.partition("/")
        ports.append((int(port), proto))
    return list(dict.fromkeys(ports))


def _host_options(o: RuntimeOptions) -> dict[str, Any]:
    """HostConfig arguments of compose's resource, logging and DNS keys (unset: omitted)."""
    args: dict[str, Any] = {
        "mem_limit": o.mem_limit,
        "mem_reservation": o.mem_reservation,
        "nano_cpus": round(o.cpus * 1e9) if o.cpus is not None else None,
        "pids_limit": o.pids_limit,
        "shm_size": o.shm_size,
        "tmpfs": dict(o.tmpfs) or None,
        "sysctls": dict(o.sysctls) or None,
        "dns": list(o.dns) or None,
        "dns_search": list(o.dns_search) or None,
        "group_add": list(o.group_add) or None,
        "ulimits": [
            docker.types.Ulimit(name=n, soft=soft, hard=hard) for n, soft, hard in o.ulimits
        ]
        or None,
    }
    if o.log_driver is not None or o.log_options:
        args["log_config"] = docker.types.LogConfig(
            type=o.log_driver or "", config=dict(o.log_options)
        )
    return {k: v for k, v in args.items() if v is not None}


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
