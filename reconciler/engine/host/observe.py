"""Reading one Docker host: list calls turned into `Observed` snapshots, single inspects.

Called by `engine.host.engine.Engine` (its observe, others, find_containers, inspect ...).
An idle observe is three list calls whatever the project's size; `observe_all` answers what
`plan` needs (the project, every other container, the namespaces outside) in three too.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker
import docker.errors

from reconciler.core.desired import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
)
from reconciler.core.healing import LastRun
from reconciler.core.observed import Observed, ObservedContainer, ObservedNetwork, ObservedVolume
from reconciler.core.spec_fields import LABEL_SPEC_VIEW
from reconciler.core.takeover import COMPOSE_PROJECT, COMPOSE_SERVICE, ForeignContainer
from reconciler.engine.client import docker_errors, owned
from reconciler.errors import ActionFailed

_EXIT = re.compile(r"Exited \((-?\d+)\)")
_HEALTH = (
    ("(unhealthy)", "unhealthy"),
    ("(healthy)", "healthy"),
    ("(health: starting)", "starting"),
)


@dataclass(frozen=True, slots=True)
class HostView:
    """One project on one host as `plan` needs it: the project's snapshot, every other
    container (who holds what), and name -> id of the outside namespaces that exist."""

    observed: Observed
    others: tuple[ForeignContainer, ...] = ()
    outside: dict[str, str] = field(default_factory=dict)


def project_filter(project: str) -> dict[str, list[str]]:
    """The label filter of a project's containers."""
    return {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]}


def is_ours(c: dict[str, Any], project: str) -> bool:
    """Whether a listed container is one of the project's (what `project_filter` selects)."""
    return owned(c.get("Labels"), project)


def observe(api: docker.APIClient, project: str) -> Observed:
    """The project's containers, and every network and volume (three list calls)."""
    with docker_errors("observe"):
        containers = api.containers(all=True, filters=project_filter(project))
        networks = api.networks()
        volumes = api.volumes().get("Volumes") or []
    return snapshot(containers, networks, volumes, project)


def observe_all(
    api: docker.APIClient,
    project: str,
    namespaces: Iterable[str],
    call: Callable[[str], None] = lambda operation: None,
) -> HostView:
    """What `observe`, `others` and `find_containers(namespaces)` say together, from three
    list calls: every container (split here by the project's labels), networks, volumes.
    Only a namespace that is neither a listed name nor ID but could be an ID prefix is
    inspected (Docker resolves prefixes; the list cannot)."""
    with docker_errors("observe"):
        every = api.containers(all=True)
        networks = api.networks()
        volumes = api.volumes().get("Volumes") or []
    ours = [c for c in every if is_ours(c, project)]
    ids = {c["Id"] for c in every}
    names = {n.lstrip("/"): c["Id"] for c in every for n in c.get("Names") or ()}
    outside, unsure = {}, []
    for name in sorted(set(namespaces)):
        if name in ids:
            outside[name] = name
        elif name in names and "/" not in name:
            outside[name] = names[name]
        elif name and all(ch in string.hexdigits for ch in name):
            unsure.append(name)
    outside |= find_containers(api, unsure, call)
    return HostView(
        observed=snapshot(ours, networks, volumes, project),
        others=foreign(every, project),
        outside=dict(sorted(outside.items())),
    )


def snapshot(
    containers: list[dict[str, Any]],
    networks: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    project: str,
) -> Observed:
    """The Observed of one project from the three lists."""
    return Observed(
        containers=tuple(sorted((container_of(c) for c in containers), key=lambda c: c.name)),
        networks=tuple(
            ObservedNetwork(n["Name"], n["Id"], owned(n.get("Labels"), project)) for n in networks
        ),
        volumes=tuple(ObservedVolume(v["Name"], owned(v.get("Labels"), project)) for v in volumes),
        project_networks=frozenset(n["Name"] for n in networks if owned(n.get("Labels"), project)),
        project_volumes=frozenset(v["Name"] for v in volumes if owned(v.get("Labels"), project)),
    )


def exists(api: docker.APIClient, kind: str, name: str) -> bool:
    """Whether a network or volume of that exact name exists (one call)."""
    with docker_errors(f"inspect {kind} {name}"):
        if kind == "network":
            return any(n["Name"] == name for n in api.networks(names=[name]))
        try:
            api.inspect_volume(name)
            return True
        except docker.errors.NotFound:
            return False


def containers(api: docker.APIClient, project: str) -> tuple[ObservedContainer, ...]:
    """The project's containers only (one list call)."""
    with docker_errors("observe containers"):
        found = api.containers(all=True, filters=project_filter(project))
    return tuple(sorted((container_of(c) for c in found), key=lambda c: c.name))


def find_containers(
    api: docker.APIClient, names: Iterable[str], call: Callable[[str], None]
) -> dict[str, str]:
    """Name -> id of those of `names` that exist (one inspect each; looked at, never
    touched: a `network_mode: container:X` outside the project)."""
    out = {}
    for name in sorted(names):
        with docker_errors(f"inspect container {name}"):
            call("container_inspect")
            try:
                out[name] = api.inspect_container(name)["Id"]
            except docker.errors.NotFound:
                continue
    return out


def others(api: docker.APIClient, project: str) -> tuple[ForeignContainer, ...]:
    """Every container that is not this project's (one list call): who holds what."""
    with docker_errors("observe other containers"):
        found = api.containers(all=True)
    return foreign(found, project)


def foreign(found: list[dict[str, Any]], project: str) -> tuple[ForeignContainer, ...]:
    """The listed containers that are not the project's, by name."""
    out = []
    for c in found:
        if is_ours(c, project):
            continue
        labels = c.get("Labels") or {}
        ours = labels.get(LABEL_MANAGED) == "true"
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


def inspect(api: docker.APIClient, container_id: str) -> dict[str, Any] | None:
    """Full inspect of one container (None when it is gone)."""
    try:
        with docker_errors(f"inspect {container_id[:12]}"):
            info: dict[str, Any] = api.inspect_container(container_id)
            return info
    except ActionFailed as exc:
        if isinstance(exc.__cause__, docker.errors.NotFound):
            return None
        raise


def last_run_of(info: dict[str, Any] | None) -> LastRun | None:
    """Start and finish time of an exited container's last run, from its inspect."""
    state = (info or {}).get("State") or {}
    started, finished = timestamp(state.get("StartedAt")), timestamp(state.get("FinishedAt"))
    if started is None or finished is None:
        return None
    return LastRun(started, finished, state.get("ExitCode"), bool(state.get("OOMKilled")))


def log_tail(api: docker.APIClient, container_id: str, lines: int = 5) -> list[str]:
    """The last lines of a container's output (for status; never logged by the daemon)."""
    with docker_errors(f"logs {container_id[:12]}"):
        raw = api.logs(container_id, tail=lines, stdout=True, stderr=True)
    return raw.decode(errors="replace").splitlines()[-lines:]


def container_of(c: dict[str, Any]) -> ObservedContainer:
    """One listed container as an ObservedContainer."""
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
        spec_view=labels.get(LABEL_SPEC_VIEW, ""),
        network_target=mode.removeprefix("container:") if mode.startswith("container:") else "",
    )


def timestamp(text: str | None) -> float | None:
    """Epoch seconds from Docker's RFC 3339 time with nanoseconds (None for the zero time)."""
    if not text or text.startswith("0001-"):
        return None
    main, _, frac = text.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    parsed = datetime.fromisoformat(f"{main}.{frac or '0'}+00:00")
    return parsed.timestamp()
