"""Changing one Docker host: the container create payload, and each engine action run.

Called by `engine.host.engine.Engine.execute`. NotFound on stop/remove means done; 409 on a
name is a conflict with a container we do not manage (or another reconciler's: retried).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions

from reconciler.core.actions import (
    CheckConfig,
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DrainContainer,
    RemoveContainer,
    RemoveNetwork,
    RemoveVolume,
    RenameContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.actions import HostAction as Action
from reconciler.core.desired import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    ContainerSpec,
    NetworkAttachment,
    RuntimeOptions,
    ownership_labels,
)
from reconciler.core.spec_diff import encode
from reconciler.core.spec_fields import LABEL_SPEC_VIEW, host_view
from reconciler.engine.client import docker_errors
from reconciler.engine.host.config_check import run_check
from reconciler.engine.host.observe import inspect
from reconciler.engine.host.secret_files import bind_source, forget_unused
from reconciler.errors import ActionFailed, NameConflict

DEFAULT_GRACE_S = 10.0  # Docker's own stop timeout when a service sets none


class Containers:
    """Runs the engine actions of one project; `call` is told each write's operation."""

    def __init__(self, api: docker.APIClient, call: Callable[[str], None]) -> None:
        self.api = api
        self._call = call

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
                        attachable=spec.attachable or None,
                        enable_ipv6=spec.enable_ipv6 or None,
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
                self.create(spec, action.name)
            case StartContainer(id=cid, name=name):
                with device_hint(), docker_errors(f"start {name}"):
                    self._call("container_start")
                    api.start(cid)
            case RestartContainer(id=cid, name=name, grace_s=grace):
                self.stop(cid, name, grace, restart=True)
            case UnpauseContainer(id=cid, name=name):
                with docker_errors(f"unpause {name}"):
                    self._call("container_unpause")
                    api.unpause(cid)
            case StopContainer(id=cid, name=name, grace_s=grace):
                self.stop(cid, name, grace)
            case ConnectNetwork(id=cid, name=name, attachment=att, reconnect=reconnect):
                with docker_errors(f"connect {name} to {att.network}"):
                    if reconnect:
                        self.disconnect(cid, att.network)
                    self._call("network_connect")
                    api.connect_container_to_network(cid, att.network, **endpoint(att))
            case DrainContainer(id=cid, name=name, networks=networks):
                # Docker cannot drop an alias in place: attach again without our aliases, so
                # DNS stops naming this replica while it finishes what it serves.
                with docker_errors(f"drain {name}"):
                    for net in networks:
                        if net in ("host", "none"):  # Docker's own: nothing to drain
                            continue
                        self.disconnect(cid, net)
                        self._call("network_connect")
                        api.connect_container_to_network(cid, net, aliases=[])
            case RenameContainer(id=cid, name=name, new_name=new_name):
                with docker_errors(f"rename {name} to {new_name}"):
                    self._call("container_rename")
                    api.rename(cid, new_name)
            case CheckConfig():
                run_check(api, action, self._call)
            case SignalContainer(id=cid, name=name, signal=sig):
                with docker_errors(f"signal {sig} to {name}"):
                    self._call("container_kill")
                    api.kill(cid, signal=sig)
            case RemoveContainer(id=cid, name=name, grace_s=grace):
                self.remove(cid, name, grace)
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

    def disconnect(self, cid: str, network: str) -> None:
        """Leave a network; not attached (any more) counts as done."""
        self._call("network_disconnect")
        try:
            self.api.disconnect_container_from_network(cid, network)
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 404):  # not attached (any more): nothing to undo
                return
            if "cannot be disconnected from host network" in str(exc.explanation or ""):
                return  # network_mode host (a 400/500 by version): no DNS to leave
            raise

    def stop(self, cid: str, name: str, grace: float | None, *, restart: bool = False) -> None:
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

    def remove(self, cid: str, name: str, grace: float | None) -> None:
        """Stop gracefully, then remove; already gone counts as done. Volumes are kept."""
        self.stop(cid, name, grace)
        try:
            with docker_errors(f"remove {name}"):
                self._call("container_remove")
                self.api.remove_container(cid, v=False, force=True)
        except ActionFailed as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise
        forget_unused(self.api)  # a decrypted secret no container binds any more

    @contextmanager
    def name_clash(self, name: str) -> Iterator[None]:
        """Say whose container holds a name we need: a foreign one is left alone for good; one
        of ours means another reconciler acts on the project (retry soon)."""
        try:
            yield
        except NameConflict as exc:
            info = inspect(self.api, name) or {}
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

    def create(self, spec: ContainerSpec, name: str) -> str:
        """Create the container as `name` and join its networks; return its ID (not started)."""
        api = self.api
        host, networking = host_config(api, spec), networking_config(api, spec)
        with self.name_clash(name), docker_errors(f"create {name}"):
            self._call("container_create")
            config = container_config(api, spec, host, networking)
            created = api.create_container_from_config(config, name)
        cid: str = created["Id"]
        with docker_errors(f"connect {name}"):
            for att in spec.networks[1:] if not spec.network_mode else ():
                self._call("network_connect")
                api.connect_container_to_network(cid, att.network, **endpoint(att))
        return cid


def host_config(api: docker.APIClient, spec: ContainerSpec) -> dict[str, Any]:
    """HostConfig of `spec` (docker-py checks it against the API version)."""
    config: dict[str, Any] = api.create_host_config(
        binds=binds(spec) or None,
        port_bindings=port_bindings(spec) or None,
        restart_policy=restart_policy(spec.restart),
        cap_add=list(spec.cap_add) or None,
        cap_drop=list(spec.cap_drop) or None,
        read_only=spec.read_only or None,
        init=spec.init,
        network_mode=spec.network_mode or (spec.networks[0].network if spec.networks else None),
        pid_mode=spec.pid,
        extra_hosts=list(spec.extra_hosts) or None,
        **host_options(spec.options),
        # Host power: only what the host policy allowed reaches here (core.policy).
        privileged=spec.privileged,
        devices=list(spec.devices) or None,
        ipc_mode=spec.ipc,
        uts_mode=spec.uts,
        userns_mode=spec.userns_mode,
        security_opt=list(spec.security_opt) or None,
        device_requests=device_requests(spec) or None,
    )
    return config


def device_requests(spec: ContainerSpec) -> list[docker.types.DeviceRequest]:
    """HostConfig.DeviceRequests (`--gpus`): only what the host policy allowed reaches here."""
    return [
        docker.types.DeviceRequest(
            driver=d.driver,
            count=d.count,
            device_ids=list(d.device_ids),
            capabilities=[list(d.capabilities)],  # one set, all of them required (as compose)
            options=dict(d.options),
        )
        for d in spec.device_requests
    ]


def endpoint(att: NetworkAttachment) -> dict[str, Any]:
    """The endpoint settings of one network (docker-py's names): aliases, a static address,
    and compose's links (CONTAINER:ALIAS)."""
    out: dict[str, Any] = {"aliases": list(att.aliases)}
    if att.ipv4_address:
        out["ipv4_address"] = att.ipv4_address
    if att.links:
        out["links"] = [tuple(link.split(":", 1)) for link in att.links]
    return out


@contextmanager
def device_hint() -> Iterator[None]:
    """A start the engine refuses for want of a device driver: say which key asked for it."""
    try:
        yield
    except ActionFailed as exc:
        if "could not select device driver" not in str(exc):
            raise
        raise ActionFailed(
            f"{exc}: deploy.resources.reservations.devices asks for devices this host has no "
            "driver for (GPUs need the NVIDIA Container Toolkit); install it or remove the "
            "reservation",
            transient=exc.transient,
        ) from exc.__cause__


def networking_config(api: docker.APIClient, spec: ContainerSpec) -> dict[str, Any] | None:
    """NetworkingConfig: the first network and its aliases (the others are joined after)."""
    if spec.network_mode or not spec.networks:
        return None
    first = spec.networks[0]
    config: dict[str, Any] = api.create_networking_config(
        {first.network: api.create_endpoint_config(**endpoint(first))}
    )
    return config


def container_config(
    api: docker.APIClient,
    spec: ContainerSpec,
    host: dict[str, Any],
    networking: dict[str, Any] | None,
) -> dict[str, Any]:
    """The body of `POST /containers/create` for `spec`."""
    grace = spec.stop_grace_s
    check = healthcheck(spec)
    opts = spec.options
    config: dict[str, Any] = api.create_container_config(
        spec.image,
        command=list(spec.command) if spec.command is not None else None,
        entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
        # as create_container does (use_config_proxy): proxies from config.json
        environment=api._proxy_configs.inject_proxy_environment(list(spec.environment)) or None,
        labels={**spec.all_labels(), LABEL_SPEC_VIEW: encode(host_view(spec))},  # plan's diff
        ports=exposed(spec) or None,
        stdin_open=opts.stdin_open,
        tty=opts.tty,
        user=spec.user,
        working_dir=spec.working_dir,
        hostname=spec.hostname,
        healthcheck=check,
        stop_signal=spec.stop_signal,
        stop_timeout=None if grace is None else math.ceil(grace),
        host_config=host,
        networking_config=networking,
    )
    if check is not None and opts.health_start_interval_s is not None:
        # docker-py knows no StartInterval (API 1.44): set it on the request itself;
        # an engine older than 25 (API < 1.44) ignores the field.
        config["Healthcheck"]["StartInterval"] = int(opts.health_start_interval_s * 1e9)
    return config


def binds(spec: ContainerSpec) -> list[str]:
    """Volumes and binds; secrets as their files bind-mounted read-only (the content never
    passes through us, but an encrypted one's plaintext, kept in memory: secret_files)."""
    secrets = (f"{bind_source(m.source, m.digest)}:{m.target}:ro" for m in spec.secrets)
    return [*spec.binds, *secrets]


def port_bindings(spec: ContainerSpec) -> dict[str, list[Any]]:
    """HostConfig.PortBindings of the published ports."""
    out: dict[str, list[Any]] = {}
    for p in spec.ports:
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            (p.host_ip, p.host_port) if p.host_port else ((p.host_ip,) if p.host_ip else None)
        )
    return out


def restart_policy(restart: str) -> dict[str, Any]:
    """HostConfig.RestartPolicy of compose's `restart` ("no", "always", "on-failure:3" ...)."""
    name, _, retries = restart.partition(":")
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": int(retries or 0)}


def healthcheck(spec: ContainerSpec) -> dict[str, Any] | None:
    """Config.Healthcheck in docker-py's form (durations in nanoseconds); None: the image's."""
    if spec.healthcheck is None:
        return None
    hc = spec.healthcheck
    out: dict[str, Any] = {"test": list(hc.test)}
    if hc.test != ("NONE",):
        out |= {
            "interval": int(hc.interval_s * 1e9),
            "timeout": int(hc.timeout_s * 1e9),
            "retries": hc.retries,
            "start_period": int(hc.start_period_s * 1e9),
        }
    return out


def exposed(spec: ContainerSpec) -> list[tuple[int, str]]:
    """Published ports and `expose`: Config.ExposedPorts."""
    ports = [(p.container_port, p.protocol) for p in spec.ports]
    for entry in spec.options.expose:
        port, _, proto = entry.partition("/")
        ports.append((int(port), proto))
    return list(dict.fromkeys(ports))


def host_options(o: RuntimeOptions) -> dict[str, Any]:
    """HostConfig arguments of compose's resource, logging and DNS keys (unset: omitted)."""
    args: dict[str, Any] = {
        "mem_limit": o.mem_limit,
        "memswap_limit": o.memswap_limit,
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
