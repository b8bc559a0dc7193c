"""Containers of others that stand in the file's way, and taking a compose project over.

Pure. `clashes` names the containers outside this project (a compose project, another
reconciler project, or none) that hold a container name or a host port the file needs: `plan`
and `status` print them. `plan_takeover` is what `--take-over-compose` runs once: per service,
ours are created first, compose's are stopped before ours start where a host port or a name
clashes (else after), then compose's are removed and ours take their names. Volumes and
networks are adopted as they are (their data stays); missing ones are created first.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core import rollout as ro
from reconciler.core.actions import (
    CreateContainer,
    Plan,
    RemoveContainer,
    RenameContainer,
    StartContainer,
    Step,
    StopContainer,
)
from reconciler.core.desired import ContainerSpec, DesiredState
from reconciler.core.notes import Note, note
from reconciler.core.observed import Observed
from reconciler.core.plan_infra import networks, volumes

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
TAKEN_OVER = "taken over from compose"


@dataclass(frozen=True, slots=True)
class ForeignContainer:
    """A container that is not one of this project's (as the engine listed it)."""

    id: str
    name: str
    state: str
    compose_project: str = ""
    compose_service: str = ""
    reconciler_project: str = ""
    host_ports: frozenset[tuple[str, int, str]] = frozenset()  # (ip, port, proto), running

    @property
    def owner(self) -> str:
        if self.compose_project:
            return f"compose project {self.compose_project}"
        if self.reconciler_project:
            return f"reconciler project {self.reconciler_project}"
        return "no project"


def _ports_overlap(ip_a: str, ip_b: str) -> bool:
    wild = ("", "0.0.0.0", "::")
    return ip_a == ip_b or ip_a in wild or ip_b in wild


def _clash(spec: ContainerSpec, c: ForeignContainer) -> list[str]:
    """What of `spec` the container holds: its name, its host ports."""
    out = []
    if c.name == spec.name:
        out.append(f"name {spec.name}")
    for p in spec.ports:
        if p.host_port is None:
            continue
        for ip, port, proto in c.host_ports:
            if port == p.host_port and proto == p.protocol and _ports_overlap(ip, p.host_ip):
                out.append(f"host port {p.host_port}/{p.protocol}")
                break
    return out


def clashes(desired: DesiredState, others: tuple[ForeignContainer, ...]) -> tuple[str, ...]:
    """One line per container outside the project holding what a replica needs."""
    lines = []
    for c in sorted(others, key=lambda c: c.name):
        if c.reconciler_project == desired.project:
            continue  # ours (another replica's name moving is the planner's business)
        held: dict[str, list[str]] = {}
        for svc in desired.services:
            for spec in svc.replicas:
                for what in _clash(spec, c):
                    held.setdefault(what, []).append(spec.name)
        if not held:
            continue
        what = ", ".join(f"{w} (needed by {', '.join(names)})" for w, names in held.items())
        hint = ""
        if c.compose_project == desired.project:
            hint = "; --take-over-compose replaces it"
        lines.append(f"container {c.name} ({c.owner}, {c.state}) holds {what}{hint}")
    return tuple(lines)


def plan_takeover(
    desired: DesiredState, observed: Observed, others: tuple[ForeignContainer, ...]
) -> Plan:
    """Replace the compose project's containers (those labelled with this project's name)
    by ours, service by service; compose's of services not in the file, or denied by the host
    policy (`desired.denied`: ours would not be created), are left alone."""
    notes: list[Note] = []
    steps: list[Step] = [*networks(desired, observed, notes), *volumes(desired, observed, notes)]
    infra = frozenset(s.key for s in steps)
    compose = [c for c in others if c.compose_project == desired.project]
    taken = {c.name for c in others} | {c.name for c in observed.containers}
    ours = {c.name for c in observed.containers}
    started: dict[str, frozenset[str]] = {}  # service -> keys of its starts
    for svc in desired.services:
        if svc.name in desired.denied:
            continue
        theirs = sorted((c for c in compose if c.compose_service == svc.name), key=lambda c: c.name)
        if not theirs:
            continue
        specs = [s for s in svc.replicas if s.name not in ours]
        creates = {
            s.name: CreateContainer(s, TAKEN_OVER, ro.temp_name(s) if s.name in taken else None)
            for s in specs
        }
        clash = any(_clash(s, c) for s in specs for c in theirs)
        deps = frozenset().union(*(started.get(d, frozenset()) for d in svc.depends_on))
        create_keys = frozenset(c.key for c in creates.values())
        stops = [
            StopContainer(c.id, c.name, svc.name, TAKEN_OVER, svc.stop_grace_s)
            for c in theirs
            if c.state in ("running", "restarting", "paused")
        ]
        stop_keys = frozenset(s.key for s in stops)
        starts = [
            StartContainer(c.name, c.name, svc.name, TAKEN_OVER)
            for c in creates.values()
            if svc.state == "running"
        ]
        start_keys = frozenset(s.key for s in starts)
        steps += [Step(c, infra) for c in creates.values()]
        for stop in stops:  # ours exist before theirs stop
            steps.append(Step(stop, create_keys | (frozenset() if clash else start_keys)))
        for start in starts:
            after = (
                frozenset({f"create:{start.name}"}) | deps | (stop_keys if clash else frozenset())
            )
            steps.append(Step(start, after))
        removes = [RemoveContainer(c.id, c.name, svc.name, TAKEN_OVER, 0.0) for c in theirs]
        for rm in removes:
            steps.append(Step(rm, stop_keys | start_keys | create_keys))
        remove_keys = frozenset(r.key for r in removes)
        for create in creates.values():
            if create.as_name:
                rename = RenameContainer(create.as_name, create.as_name, create.spec.name, svc.name)
                own = frozenset({f"create:{create.name}"}) | start_keys
                steps.append(Step(rename, own | remove_keys))
        started[svc.name] = start_keys
        replaced = ", ".join(c.name for c in theirs)
        shared = " (stopped first: a name or host port is shared)" if clash else ""
        says = f"replaces {replaced} of compose project {desired.project}{shared}"
        notes.append(note("taken_over", f"service {svc.name}", says))
    left = sorted(
        c.name for c in compose if c.compose_service not in {s.name for s in desired.services}
    )
    if left:
        names = ", ".join(left)
        text = f"compose containers of services not in the file, left alone: {names}"
        notes.append(Note("left_alone", names, text))
    denied = sorted(c.name for c in compose if c.compose_service in desired.denied)
    if denied:
        names = ", ".join(denied)
        text = f"compose containers of services the host policy denies, left alone: {names}"
        notes.append(Note("denied", names, text))
    return Plan(steps=tuple(steps), notes=tuple(notes))
