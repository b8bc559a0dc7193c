"""The compose spellings of one value read one way: ports, volume mounts, secret targets,
`service:X` namespaces, extra hosts, words and scalars.

Shared by the rules (`rules`, `names`, `swarm_rules`) and the renderers (`render`, Swarm's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.config.schema import PortDef, SecretRefDef, ServiceDef, VolumeMountDef

MAX_PORT = 65535
SECRETS_DIR = "/run/secrets"
JOIN_KEYS = ("network_mode", "pid", "ipc")  # `service:X` joins X's namespace (as compose)
PORT = re.compile(
    r"^(?:(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?:(?P<host>[0-9]{1,10}(?:-[0-9]{1,10})?):)?"
    r"(?P<container>[0-9]{1,10})(?:/(?P<proto>tcp|udp|sctp))?$"
)


def port_text(port: str | int | PortDef) -> str:
    """A port entry in the short syntax (the long one converted)."""
    return port.text() if isinstance(port, PortDef) else str(port)


def joins(svc: ServiceDef) -> list[tuple[str, str]]:
    """(key, service) of each `service:X` namespace mode."""
    modes = ((key, getattr(svc, key) or "") for key in JOIN_KEYS)
    return [(k, mode.removeprefix("service:")) for k, mode in modes if mode.startswith("service:")]


def links(svc: ServiceDef) -> list[tuple[str, str]]:
    """(service, alias) of each `links` entry: `db` is (db, db), `db:database` (db, database)."""
    out = []
    for entry in svc.links:
        service, _, alias = entry.partition(":")
        out.append((service, alias or service))
    return out


def depends(svc: ServiceDef) -> list[str]:
    """The services it starts after: depends_on, those whose namespace it joins, and those it
    links to (as compose)."""
    joined = (owner for _, owner in joins(svc))
    linked = (service for service, _ in links(svc))
    return list(dict.fromkeys([*svc.depends_on, *joined, *linked]))


def required(svc: ServiceDef, dep: str) -> bool:
    """Whether a depends_on entry must be part of the project (compose's `required: false`:
    a dependency that is not, left out by a profile or not defined, is no error)."""
    deps = svc.depends_on
    return not isinstance(deps, dict) or dep not in deps or deps[dep].required


def secret_ref(ref: str | SecretRefDef) -> tuple[str, str]:
    """(secret name, path in the container): /run/secrets/NAME unless a target is given."""
    if isinstance(ref, str):
        return ref, f"{SECRETS_DIR}/{ref}"
    target = ref.target or ref.source
    return ref.source, target if target.startswith("/") else f"{SECRETS_DIR}/{target}"


@dataclass(frozen=True, slots=True)
class Mount:
    """One `volumes:` entry: type (bind, volume or tmpfs), source, target, read-only."""

    type: str
    source: str
    target: str
    read_only: bool
    propagation: str = ""  # a bind's: rslave, rshared... ("": Docker's rprivate)


PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")


def mount(vol: str | VolumeMountDef) -> Mount | None:
    """A `volumes:` entry, short or long syntax; None if the short one cannot be read (its
    mode: ro or rw, and a bind's propagation, `ro,rslave`, as compose)."""
    if isinstance(vol, VolumeMountDef):
        chosen = (vol.bind.propagation if vol.bind else None) or ""
        return Mount(vol.type, vol.source or "", vol.target, vol.read_only, chosen)
    parts = vol.split(":")
    if len(parts) == 1:
        return Mount("volume", "", parts[0], False)  # anonymous volume
    if len(parts) > 3:
        return None
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    modes = parts[2].split(",") if len(parts) == 3 else []
    access = [m for m in modes if m in ("ro", "rw")]
    propagation = [m for m in modes if m in PROPAGATIONS]
    if len(access) + len(propagation) != len(modes) or len(access) > 1 or len(propagation) > 1:
        return None
    if propagation and kind != "bind":
        return None
    return Mount(kind, source, target, access == ["ro"], "".join(propagation))


def scalar(value: Any) -> str:
    """A YAML scalar as Docker takes it: `true`/`false`, "" for null, else its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def extra_hosts(hosts: list[str] | Mapping[str, str | list[str]]) -> tuple[str, ...]:
    """HOST:IP entries; the map form (`host: ip` or a list of IPs) as compose writes it."""
    if isinstance(hosts, list):
        return tuple(hosts)
    out: list[str] = []
    for host, ips in hosts.items():
        out += [f"{host}:{ip}" for ip in ([ips] if isinstance(ips, str) else ips)]
    return tuple(out)


def words(value: str | list[str]) -> tuple[str, ...]:
    """One string or a list of them, as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value)
