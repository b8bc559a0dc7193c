"""The per-service parts of the rendering that need no file: runtime options, environment,
labels, argv, update config and port bindings, from a validated `ServiceDef`.

Used by the renderer (`render`) and Swarm's (`engine.swarm.spec`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.config.forms import PORT, scalar, words
from reconciler.config.interpolation import SECRET_NAME
from reconciler.config.schema import ServiceDef, UpdateConfigDef, VolumeMountDef
from reconciler.config.yamlread import Path as DataPath
from reconciler.core.desired import DeviceRequest, PortBinding, RuntimeOptions, UpdateConfig


def update_config(c: UpdateConfigDef) -> UpdateConfig:
    return UpdateConfig(
        parallelism=c.parallelism,
        delay_s=c.delay,
        order=c.order,
        monitor_s=c.monitor,
        failure_action=c.failure_action,
        max_failure_ratio=c.max_failure_ratio,
    )


def argv(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def environment(
    env: Mapping[str, Any] | list[str],
    files: Mapping[str, str] | None = None,
    lookup: Callable[[str], str | None] = lambda _: None,
) -> tuple[tuple[str, ...], list[tuple[DataPath, str]], set[str]]:
    """KEY=VALUE entries, sorted: env_file's, then environment's over them (as compose).

    A bare KEY (`- KEY`, or `KEY:` with no value) takes its value from `lookup` (the
    environment, then .env) and is left out when neither sets it, as compose does. Also
    returns those left out (path under the service, name) and what secret-looking bare names
    gave.
    """
    merged = {k: f"{k}={v}" for k, v in (files or {}).items()}
    items: list[tuple[DataPath, str, str | None]] = []
    if isinstance(env, list):
        for i, item in enumerate(env):
            key, eq, text = item.partition("=")
            items.append((("environment", i), key, text if eq else None))
    else:
        items = [(("environment", k), k, None if v is None else scalar(v)) for k, v in env.items()]
    unset: list[tuple[DataPath, str]] = []
    hidden: set[str] = set()
    for at, key, given in items:
        value = lookup(key) if given is None else given
        if value is None:
            merged.pop(key, None)
            unset.append((at, key))
            continue
        if given is None and value and SECRET_NAME.search(key):
            hidden.add(value)
        merged[key] = f"{key}={value}"
    return tuple(sorted(merged.values())), unset, hidden


def text_labels(labels: Mapping[str, Any] | list[str]) -> dict[str, str]:
    """Label values as text: `3` is "3", `true` "true", empty "" (as compose)."""
    if isinstance(labels, list):
        return dict(item.partition("=")[::2] for item in labels)
    return {k: scalar(v) for k, v in labels.items()}


def _expose(entry: str | int) -> tuple[str, ...]:
    """`80`, `80/udp`, `8000-8002` -> ("80/tcp",) ... (checked by `rules`)."""
    text, _, proto = str(entry).partition("/")
    low, _, high = text.partition("-")
    return tuple(f"{p}/{proto or 'tcp'}" for p in range(int(low), int(high or low) + 1))


def runtime_options(s: ServiceDef) -> RuntimeOptions:
    """The compose keys that become HostConfig/Config fields (RuntimeOptions)."""
    limits, reservations = s.deploy.resources.limits, s.deploy.resources.reservations
    log = s.logging
    tmpfs = []
    for entry in words(s.tmpfs):
        path, _, opts = entry.partition(":")
        tmpfs.append((path, opts))
    for vol in s.volumes:  # long syntax, type: tmpfs
        if isinstance(vol, VolumeMountDef) and vol.type == "tmpfs":
            t = vol.tmpfs
            opts_list = ["ro"] if vol.read_only else []
            if t is not None and t.size is not None:
                opts_list.append(f"size={t.size}")
            if t is not None and t.mode is not None:
                opts_list.append(f"mode={t.mode:o}")  # Docker reads it in octal
            tmpfs.append((vol.target, ",".join(opts_list)))
    ulimits = []
    for name, value in sorted(s.ulimits.items()):
        soft, hard = (value, value) if isinstance(value, int) else (value.soft, value.hard)
        ulimits.append((name, soft, hard))
    sysctls = (
        dict(item.partition("=")[::2] for item in s.sysctls)
        if isinstance(s.sysctls, list)
        else {k: scalar(v) for k, v in s.sysctls.items()}
    )
    start_interval = s.healthcheck.start_interval if s.healthcheck else None
    return RuntimeOptions(
        expose=tuple(dict.fromkeys(p for e in s.expose for p in _expose(e))),
        cpus=s.cpus if s.cpus is not None else limits.cpus,
        mem_limit=s.mem_limit if s.mem_limit is not None else limits.memory,
        mem_reservation=(
            s.mem_reservation if s.mem_reservation is not None else reservations.memory
        ),
        pids_limit=s.pids_limit if s.pids_limit is not None else limits.pids,
        shm_size=s.shm_size,
        log_driver=log.driver if log else None,
        log_options=tuple(sorted((k, scalar(v)) for k, v in (log.options if log else {}).items())),
        tmpfs=tuple(tmpfs),
        ulimits=tuple(ulimits),
        sysctls=tuple(sorted(sysctls.items())),
        stdin_open=s.stdin_open,
        tty=s.tty,
        dns=words(s.dns),
        dns_search=words(s.dns_search),
        group_add=tuple(str(g) for g in s.group_add),
        health_start_interval_s=start_interval,
        memswap_limit=s.memswap_limit,
    )


def device_requests(s: ServiceDef) -> tuple[DeviceRequest, ...]:
    """deploy.resources.reservations.devices as the engine's DeviceRequests (`--gpus`):
    count all (-1) unless a count or device_ids is given."""
    out = []
    for d in s.deploy.resources.reservations.devices:
        count = d.count if isinstance(d.count, int) else (0 if d.device_ids else -1)
        out.append(
            DeviceRequest(
                driver=d.driver or "",
                count=count,
                device_ids=tuple(d.device_ids),
                capabilities=tuple(d.capabilities),
                options=tuple(sorted((k, scalar(v)) for k, v in d.options.items())),
            )
        )
    return tuple(out)


# The RuntimeOptions keys of ServiceDef at their defaults (left out of the revision).
OPTION_DEFAULTS: dict[str, Any] = {
    "scale": None,
    "expose": [],
    "cpus": None,
    "mem_limit": None,
    "mem_reservation": None,
    "pids_limit": None,
    "shm_size": None,
    "logging": None,
    "tmpfs": [],
    "ulimits": {},
    "sysctls": {},
    "stdin_open": False,
    "tty": False,
    "dns": [],
    "dns_search": [],
    "group_add": [],
    "memswap_limit": None,
}


def port_binding(text: str, replica: int) -> PortBinding:
    m = PORT.match(text)
    assert m is not None  # checked
    host_port = None
    if m["host"]:
        host_port = int(m["host"].partition("-")[0]) + (replica - 1 if "-" in m["host"] else 0)
    ip = (m["ip"] or "").strip("[]")
    return PortBinding(int(m["container"]), m["proto"] or "tcp", ip, host_port)
