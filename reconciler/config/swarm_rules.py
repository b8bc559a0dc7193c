"""Swarm's own rules on a desired-state file for `--target swarm`: the keys and values Swarm
cannot honour, each an error with its line, reported with every other problem of the file.

Passed as `checks` to `loader.load_parts` by the Swarm renderer (`engine.swarm.spec`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reconciler.config.forms import PORT, extra_hosts, port_text
from reconciler.config.report import Issue
from reconciler.config.schema import (
    DesiredStateDef,
    PortDef,
    ReservationDef,
    ResourceDef,
    ServiceDef,
)

NS = 1_000_000_000
_MEMORY = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[bkmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_bytes(value: str | int) -> int:
    """Bytes from 512m, 1g, 1024k or a plain number (compose's spellings)."""
    if isinstance(value, int):
        return value
    m = _MEMORY.match(value.strip())
    if not m:
        raise ValueError(f"cannot read memory {value!r} (e.g. 512M, 1G)")
    return int(float(m["n"]) * _UNITS[m["u"].lower()])


def nano_cpus(value: str | float) -> int:
    """Swarm's NanoCPUs from compose's cpus (0.5 is half a CPU)."""
    try:
        cpus = float(value)
    except ValueError:
        raise ValueError(f"cannot read cpus {value!r} (e.g. 0.5)") from None
    if not 0 <= cpus < 1e6:
        raise ValueError("cpus must be between 0 and the node's CPUs")
    return round(cpus * NS)


def issues(d: DesiredStateDef, project: str) -> Iterable[Issue]:
    """What Swarm cannot honour, key by key."""
    for name, net in d.networks.items():
        if net is not None and "driver" in net.model_fields_set and net.driver != "overlay":
            yield Issue(
                ("networks", name, "driver"),
                f"Swarm services attach to overlay networks only, not {net.driver}; "
                "use driver: overlay (or leave it out) for --target swarm",
            )
    for name, s in d.services.items():
        yield from _service_issues(("services", name), s)


# ServiceDef keys rendered for Swarm (or left to it: heal, drain_period, depends_on, pull);
# any other key the file gives is refused for --target swarm, never silently dropped.
SWARM_KEYS = frozenset(
    {
        "image", "replicas", "command", "entrypoint", "env_file", "environment", "ports",
        "volumes", "configs", "secrets", "networks", "user", "restart", "healthcheck",
        "depends_on", "labels", "working_dir", "hostname", "extra_hosts", "cap_add",
        "cap_drop", "read_only", "stop_signal", "stop_grace_period", "init", "state", "heal",
        "deploy", "drain_period", "pull", "pull_policy", "profiles",
    }
)  # fmt: skip


def _service_issues(at: tuple[str | int, ...], s: ServiceDef) -> Iterable[Issue]:
    unsupported = {
        "container_name": "Swarm names the tasks itself (<project>_<service>.<slot>)",
        "network_mode": "Swarm tasks join the service's overlay networks",
        "pid": "Swarm services cannot share a PID namespace",
        "build": "Swarm does not build: build and push the image, and name it under image",
        "links": "Swarm services reach each other by service name (or a network alias)",
        "memswap_limit": "a Swarm service has no swap limit (deploy.resources.limits.memory)",
    }
    for key, why in unsupported.items():
        if getattr(s, key):
            yield Issue((*at, key), f"not supported with --target swarm: {why}")
    for key in sorted(s.model_fields_set - SWARM_KEYS - set(unsupported)):
        yield Issue((*at, key), "not supported with --target swarm (yet)")
    for i, host in enumerate(extra_hosts(s.extra_hosts)):
        if host.partition(":")[2] == "host-gateway":
            yield Issue(
                (*at, "extra_hosts", i),
                "host-gateway is not supported with --target swarm (no single host): "
                "give an address",
            )
    for i, c in enumerate(s.configs):
        if c.check is not None:
            yield Issue(
                (*at, "configs", i, "check"),
                "not supported with --target swarm (host only): a Swarm config is an "
                "immutable object, so an edit is a new config the tasks are replaced with",
            )
        if c.reload_signal:
            yield Issue(
                (*at, "configs", i, "reload_signal"),
                "not supported with --target swarm: a changed config is a new Swarm "
                "config, and Swarm replaces the tasks (leave reload_signal out)",
            )
    for i, port in enumerate(s.ports):
        if isinstance(port, PortDef):
            if port.host_ip:
                yield Issue(
                    (*at, "ports", i, "host_ip"),
                    "not supported with --target swarm: Swarm publishes on every address",
                )
            if isinstance(port.published, str) and not port.published.isdigit():
                yield Issue(
                    (*at, "ports", i, "published"),
                    "a host port range is not supported with --target swarm: publish one port",
                )
            continue
        m = PORT.match(port_text(port))
        if m and m["ip"]:
            yield Issue(
                (*at, "ports", i),
                "a host IP is not supported with --target swarm: Swarm publishes on every address",
            )
        elif m and m["host"] and "-" in m["host"]:
            yield Issue(
                (*at, "ports", i),
                "a host port range is not supported with --target swarm: publish one port "
                "(the routing mesh balances it over the replicas), or use the long syntax "
                "with mode: host",
            )
    if isinstance(s.networks, dict):
        for net, attach in s.networks.items():
            if attach is not None and attach.ipv4_address is not None:
                yield Issue(
                    (*at, "networks", net, "ipv4_address"),
                    "not supported with --target swarm: Swarm gives each task its own address "
                    "(use the service name, or an alias)",
                )
    deploy = s.deploy
    if deploy.resources.reservations.devices:
        yield Issue(
            (*at, "deploy", "resources", "reservations", "devices"),
            "not supported with --target swarm: Swarm services reserve generic resources "
            "of the nodes, not device requests (run GPU work with the host target)",
        )
    if deploy.mode == "global":
        if "replicas" in s.model_fields_set or deploy.replicas is not None:
            yield Issue((*at, "replicas"), "cannot be combined with deploy.mode: global")
        if s.state == "stopped":
            yield Issue((*at, "state"), "a global service cannot be stopped on Swarm")
    for kind in ("limits", "reservations"):
        r: ResourceDef | ReservationDef = getattr(deploy.resources, kind)
        where = (*at, "deploy", "resources", kind)
        try:
            if r.cpus is not None:
                nano_cpus(r.cpus)
        except ValueError as exc:
            yield Issue((*where, "cpus"), str(exc))
        try:
            if r.memory is not None:
                memory_bytes(r.memory)
        except ValueError as exc:
            yield Issue((*where, "memory"), str(exc))
