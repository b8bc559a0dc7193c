"""The rules of compose's build, links, static address, memswap, device and bind keys: what
one field's type cannot say (references, an address inside its network's subnet...).

Called by `rules.check` for every service, each problem an `Issue` at its key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from reconciler.config.forms import links
from reconciler.config.report import Issue
from reconciler.config.schema import (
    BUILD_SECRETS_REASON,
    BuildDef,
    DesiredStateDef,
    NetworkAttachDef,
    ServiceDef,
    VolumeMountDef,
)
from reconciler.config.yamlread import Path as DataPath


def check(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    """Every rule of these keys for service `name`."""
    at: DataPath = ("services", name)
    if isinstance(svc.build, BuildDef):
        yield from _build(at, svc.build)
    yield from _memswap(at, svc)
    yield from _links(d, name, svc)
    yield from _addresses(d, name, svc)
    for i, device in enumerate(svc.deploy.resources.reservations.devices):
        if device.count is not None and device.device_ids:
            where = (*at, "deploy", "resources", "reservations", "devices", i, "count")
            yield Issue(where, "give count or device_ids, not both (as compose)")
    for i, vol in enumerate(svc.volumes):
        if isinstance(vol, VolumeMountDef) and vol.bind is not None and vol.type != "bind":
            why = f"bind options need type: bind, not {vol.type}"
            yield Issue((*at, "volumes", i, "bind"), why)


def _build(at: DataPath, build: BuildDef) -> Iterable[Issue]:
    if build.dockerfile_inline is not None and "dockerfile" in build.model_fields_set:
        yield Issue(
            (*at, "build", "dockerfile_inline"),
            "give either dockerfile or dockerfile_inline, not both (as compose)",
        )
    if build.secrets:
        yield Issue((*at, "build", "secrets"), f"not supported: {BUILD_SECRETS_REASON}")
    for key in ("args", "labels"):
        entries = getattr(build, key)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not entry.partition("=")[0].strip():
                yield Issue((*at, "build", key, i), "must be NAME=VALUE or NAME")


def _memswap(at: DataPath, svc: ServiceDef) -> Iterable[Issue]:
    """Docker's rule: a swap limit needs a memory limit, and counts it in."""
    swap = svc.memswap_limit
    if swap is None:
        return
    memory = svc.mem_limit if svc.mem_limit is not None else svc.deploy.resources.limits.memory
    if memory is None:
        yield Issue(
            (*at, "memswap_limit"),
            "needs a memory limit (mem_limit or deploy.resources.limits.memory): it is the "
            "memory and swap together",
        )
    elif swap != -1 and swap < memory:
        yield Issue(
            (*at, "memswap_limit"),
            f"must be at least the memory limit ({memory} bytes): it counts memory and swap "
            "together (-1: unlimited swap)",
        )


def first_network(svc: ServiceDef) -> str | None:
    """The network key a service's links live on (its first; `default` when none is
    given), None with network_mode."""
    if svc.network_mode:
        return None
    return next(iter(svc.networks), "default")


def _links(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    at: DataPath = ("services", name, "links")
    if svc.links and svc.network_mode:
        yield Issue(at, "links need a network to resolve on; they cannot be combined with "
                    "network_mode")  # fmt: skip
        return
    net = first_network(svc)
    aliases: dict[str, str] = {}
    for i, (other, alias) in enumerate(links(svc)):
        target = d.services.get(other)
        if other == name:
            yield Issue((*at, i), "a service cannot link to itself")
        elif target is None:
            yield Issue(
                (*at, i),
                f"unknown service {other!r} (links name services of the file; for another "
                "container, join its network instead)",
            )
        elif net not in (target.networks or (() if target.network_mode else ("default",))):
            yield Issue(
                (*at, i),
                f"service {other!r} is not on network {net!r}, where {name!r} resolves its "
                f"links (its first network): add {net!r} to {other!r}'s networks",
            )
        if alias in aliases and aliases[alias] != other:
            yield Issue((*at, i), f"alias {alias!r} already links to {aliases[alias]!r}")
        aliases.setdefault(alias, other)


def _addresses(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    """A static address: inside the network's own subnet, one replica, never side by side."""
    if not isinstance(svc.networks, dict):
        return
    for net, attach in svc.networks.items():
        if not isinstance(attach, NetworkAttachDef) or attach.ipv4_address is None:
            continue
        at: DataPath = ("services", name, "networks", net, "ipv4_address")
        address = ipaddress.IPv4Address(attach.ipv4_address)
        if svc.replica_count > 1:
            yield Issue(at, f"one static address cannot serve {svc.replica_count} replicas")
        for key in ("update_config", "rollback_config"):
            if getattr(svc.deploy, key).order == "start-first":
                yield Issue(
                    at,
                    f"cannot be used with deploy.{key}.order start-first: the old and new "
                    "replica would run side by side and only one can hold the address; use "
                    "stop-first",
                )
        ndef = d.networks.get(net)
        if ndef is not None and ndef.external:
            continue  # made elsewhere: the engine checks its subnet
        subnets = []
        for c in ndef.ipam.config if ndef is not None and ndef.ipam else ():
            try:
                subnets.append((ipaddress.ip_network(c.subnet, strict=False), c.gateway))
            except ValueError:
                continue  # not an address range: the engine says so at create
        v4 = [(s, g) for s, g in subnets if isinstance(s, ipaddress.IPv4Network)]
        if not v4:
            yield Issue(
                at,
                f"network {net!r} needs an IPv4 subnet of its own for a static address "
                f"(networks.{net}.ipam.config: [{{subnet: ...}}]; Docker refuses one on a "
                "network whose subnet it picked)",
            )
            continue
        inside = [(s, g) for s, g in v4 if address in s]
        if not inside:
            shown = ", ".join(str(s) for s, _ in v4)
            yield Issue(at, f"{address} is not in the subnet of network {net!r} ({shown})")
            continue
        subnet, gateway = inside[0]
        if address in (subnet.network_address, subnet.broadcast_address) or str(address) == (
            gateway or str(subnet.network_address + 1)
        ):
            yield Issue(at, f"{address} is the subnet's own (network, broadcast or gateway)")
        for other, osvc in d.services.items():
            if other >= name or not isinstance(osvc.networks, dict):
                continue
            theirs = osvc.networks.get(net)
            if isinstance(theirs, NetworkAttachDef) and theirs.ipv4_address == str(address):
                yield Issue(at, f"{address} is also held by service {other!r} on network {net!r}")
