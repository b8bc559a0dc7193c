"""Ordering a plan: what each step waits on, dependency gating, name claims, held steps.

Pure; core.planner calls it once the per-service actions are known (core.plan_slots) and
turns them into ordered `Step`s, leaving out what is held back this pass (with a Note).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    HostAction,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    Step,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.desired import ContainerSpec, ServiceSpec
from reconciler.core.notes import Note, NoteKind, note
from reconciler.core.observed import Observed

NAMESPACE_MISSING = "no such container"  # in a note: a network_mode container:X not found

# An action and the keys of the actions of its own service it must follow.
Local: TypeAlias = tuple[HostAction, frozenset[str]]


def namespace_owner(spec: ContainerSpec) -> str | None:
    """The X of `network_mode: container:X`."""
    mode = spec.network_mode or ""
    return mode.removeprefix("container:") if mode.startswith("container:") else None


def joined_owner(spec: ContainerSpec) -> str | None:
    """The container whose network, pid or ipc namespace `spec` joins (created first)."""
    for mode in (spec.network_mode, spec.pid, spec.ipc):
        if mode and mode.startswith("container:"):
            return mode.removeprefix("container:")
    return None


def ordered(
    local: list[Local], infra_keys: set[str], prerequisites: set[str], deps: set[str]
) -> list[Step]:
    """Steps of one service: what each waits on (its own earlier steps, infrastructure, its
    image, removals of the service, the services it depends on, its reconnects)."""
    steps = []
    connects: dict[str, set[str]] = {}
    for action, after_local in local:
        after: set[str] = set(after_local)
        if isinstance(action, CreateContainer):
            after |= _infra_deps(action.spec, infra_keys) | prerequisites
        if isinstance(action, ConnectNetwork):
            after |= {f"network:{action.attachment.network}"} & infra_keys
            connects.setdefault(action.name, set()).add(action.key)
        elif isinstance(action, StartContainer | UnpauseContainer | RestartContainer):
            after |= connects.get(action.name, set())
        # Creating needs no running dependency (unless it joins one's network namespace):
        # only starts wait for depends_on, so every create can run at once.
        early = isinstance(action, CreateContainer) and not joined_owner(action.spec)
        if isinstance(action, CreateContainer | StartContainer | UnpauseContainer) and not early:
            after |= deps
        steps.append(Step(action, frozenset(after)))
    return steps


def gate_on_dependencies(
    svc: ServiceSpec, local: list[Local], ready: frozenset[str], notes: list[Note]
) -> list[Local]:
    """Per-service plans: starts (and namespace sharers' creates) wait for dependencies, and
    so does the stop of an old replica whose replacement's start waits (stop-first)."""
    waiting = [d for d in svc.waits_for() if d not in ready]
    if not waiting:
        return local

    def gated(action: HostAction) -> bool:
        return isinstance(action, StartContainer | UnpauseContainer) or (
            isinstance(action, CreateContainer) and joined_owner(action.spec) is not None
        )

    stops = set().union(*(after for action, after in local if gated(action)))
    kept = []
    for action, after in local:
        if gated(action):
            deps = f"{', '.join(waiting)} to run"
            notes.append(note("waiting", action.key, f"waiting for {deps}", deps, action.reason))
        elif not (isinstance(action, StopContainer) and action.key in stops):
            kept.append((action, after))
    return kept


def _infra_deps(spec: ContainerSpec, infra_keys: set[str]) -> set[str]:
    keys = {f"network:{a.network}" for a in spec.networks} | {f"volume:{v}" for v in spec.volumes}
    return keys & infra_keys


def held_back(key: str, reason: str, kind: NoteKind = "held") -> Note:
    """The note of a step held back this pass (`detail`: the reason alone)."""
    return note(kind, key, f"held back ({reason})", reason)


def claim_names(
    steps: list[Step], observed: Observed, outside: Mapping[str, str], absent: frozenset[str]
) -> tuple[list[Step], dict[str, Note]]:
    """A create or rename waits for its name: after the step of this plan that frees it
    (removes or renames the container holding it), else it is held back this pass. A create
    joining another container's network namespace (by name) waits until that name exists.

    `outside` and `absent` are `Holds.outside` and `Holds.absent`."""
    holders = {name: "a container of another service" for name in outside}
    holders |= {
        c.name: f"a container of {c.service} replica {c.replica}" for c in observed.containers
    }
    freed: dict[str, str] = {}  # name -> key of the earlier step that frees it
    claimed: dict[str, str] = {}  # name -> key of the earlier step that takes it
    held: dict[str, Note] = {}
    out = []
    for step in steps:
        action = step.action
        if isinstance(action, RemoveContainer | RenameContainer):
            freed[action.name] = step.key
        name = (
            action.name
            if isinstance(action, CreateContainer)
            else action.new_name
            if isinstance(action, RenameContainer)
            else None
        )
        if name is None:
            out.append(step)
            continue
        holder = holders.get(name)
        spec = action.spec if isinstance(action, CreateContainer) else None
        owner = joined_owner(spec) if spec is not None else None
        key = step.key
        if spec is not None and owner is not None and owner in absent:
            why = f"network_mode container:{owner}: {NAMESPACE_MISSING}, of this project or another"
            held[key] = held_back(key, why, "namespace_missing")
        elif (
            spec is not None
            and owner is not None
            and not (owner in claimed or (owner in holders and owner not in freed))
        ):
            kind = "network namespace" if owner == namespace_owner(spec) else "namespace"
            held[key] = held_back(key, f"waits for {owner}, whose {kind} it joins")
        elif name in claimed:
            held[key] = held_back(key, f"name {name} is wanted by {claimed[name]} too")
        elif holder is not None and name not in freed:
            held[key] = held_back(key, f"name {name} is taken by {holder}")
        else:
            claimed[name] = key
            if holder is not None:
                step = Step(action, step.after | {freed[name]})
        out.append(step)
    return out, held


def drop_held(steps: list[Step], held: Mapping[str, Note], notes: list[Note]) -> tuple[Step, ...]:
    """Leave out held steps (noting each) and every step that waits on one."""
    if not held:
        return tuple(steps)
    dropped: set[str] = set()
    kept = []
    for step in steps:  # steps come after their dependencies
        if step.key in held:
            dropped.add(step.key)
            notes.append(held[step.key])
        elif step.after & dropped:
            dropped.add(step.key)
        else:
            kept.append(step)
    return tuple(kept)
