"""The pure core: `plan(desired, observed) -> Plan`.

No Docker, no clock, no I/O. Level-based: the plan depends only on what is
desired and what is observed now (plus the healing bookkeeping passed in as
`Holds`), never on remembered events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from reconciler.core.model import (
    JUST_CREATED,
    Action,
    ConnectNetwork,
    ContainerSpec,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DesiredState,
    EnsureImage,
    Observed,
    ObservedContainer,
    Plan,
    RecreateContainer,
    RemoveContainer,
    RestartContainer,
    ServiceSpec,
    SignalContainer,
    StartContainer,
    Step,
    StopContainer,
    UnpauseContainer,
)


@dataclass(frozen=True, slots=True)
class Holds:
    """What the healing bookkeeping says about this pass (computed outside the core).

    held: action keys not to run now, with the reason (crash-loop or error backoff).
    unhealthy_due: names of unhealthy containers whose grace has run out; None means
        every unhealthy container is due (no grace tracking).
    signalled: container id -> reload-config digest already delivered by a signal.
    """

    held: Mapping[str, str] = field(default_factory=dict)
    unhealthy_due: frozenset[str] | None = None
    signalled: Mapping[str, str] = field(default_factory=dict)


NO_HOLDS = Holds()


def plan(desired: DesiredState, observed: Observed, holds: Holds = NO_HOLDS) -> Plan:
    """The ordered steps that bring `observed` to `desired`, and notes to report."""
    notes: list[str] = []
    infra = list(_networks(desired, observed, notes)) + list(_volumes(desired, observed, notes))
    infra_keys = {s.key for s in infra}
    by_name = {c.name: c for c in observed.containers}
    removals = _removals(desired, observed)
    removal_keys: dict[str, set[str]] = {}
    for step in removals:
        assert isinstance(step.action, RemoveContainer)
        removal_keys.setdefault(step.action.service, set()).add(step.key)

    images: list[Step] = []
    containers: list[Step] = []
    brought_up: dict[str, set[str]] = {}  # service -> keys of the steps that bring it up
    recreated: set[str] = set()  # names of containers (re)created by this plan
    for svc in desired.services:
        actions = list(_service_steps(svc, by_name, holds, recreated))
        if not actions:
            continue
        new = [a for a in actions if isinstance(a, CreateContainer | RecreateContainer)]
        recreated |= {a.name for a in new}
        image_key = None
        if new:
            image = EnsureImage(svc.name, svc.image, svc.pull, svc.build)
            images.append(Step(image))
            image_key = image.key
        deps = set().union(*(brought_up.get(d, set()) for d in svc.depends_on))
        prerequisites = removal_keys.get(svc.name, set()) | ({image_key} if image_key else set())
        service_steps = _ordered(actions, infra_keys, prerequisites, deps)
        containers += service_steps
        brought_up[svc.name] = {
            s.key
            for s in service_steps
            if not isinstance(s.action, StopContainer | CreateContainer)
        }

    steps = [*infra, *images, *removals, *containers]
    return Plan(steps=_drop_held(steps, holds.held, notes), notes=tuple(notes))


def _ordered(
    actions: list[Action], infra_keys: set[str], prerequisites: set[str], deps: set[str]
) -> list[Step]:
    """Steps of one service: what each waits on (infrastructure, its image, removals of the
    service, the services it depends on, the previous replica's recreate, its reconnects)."""
    steps = []
    previous_recreate: str | None = None
    connects: dict[str, set[str]] = {}
    created: dict[str, str] = {}
    for action in actions:
        after: set[str] = set()
        if isinstance(action, CreateContainer | RecreateContainer):
            after |= _infra_deps(action.spec, infra_keys) | prerequisites
        if isinstance(action, CreateContainer):
            created[action.name] = action.key
        if isinstance(action, RecreateContainer):
            if previous_recreate:  # rolling: one replica of a service at a time
                after.add(previous_recreate)
            previous_recreate = action.key
        if isinstance(action, ConnectNetwork):
            after |= {f"network:{action.attachment.network}"} & infra_keys
            connects.setdefault(action.name, set()).add(action.key)
        elif isinstance(action, StartContainer | UnpauseContainer | RestartContainer):
            after |= connects.get(action.name, set())
            if action.name in created:
                after.add(created[action.name])
        # Creating needs no running dependency (unless it joins one's network namespace):
        # only starts wait for depends_on, so every create can run at once.
        early = isinstance(action, CreateContainer) and not _namespace_owner(action.spec)
        if not early and not isinstance(action, StopContainer):
            after |= deps
        steps.append(Step(action, frozenset(after)))
    return steps


def _networks(desired: DesiredState, observed: Observed, notes: list[str]) -> Iterable[Step]:
    live = {n.name: n for n in observed.networks}
    for spec in desired.networks:
        net = live.get(spec.name)
        if net is None:
            yield Step(CreateNetwork(spec, desired.project))
        elif not net.owned:
            notes.append(f"network {spec.name}: adopted, not owned (no reconciler labels)")
    wanted = {n.name for n in desired.networks}
    for name in sorted(observed.project_networks - wanted):
        notes.append(f"network {name}: orphaned (no longer in the file; not removed)")


def _volumes(desired: DesiredState, observed: Observed, notes: list[str]) -> Iterable[Step]:
    live = {v.name: v for v in observed.volumes}
    for spec in desired.volumes:
        vol = live.get(spec.name)
        if vol is None:
            yield Step(CreateVolume(spec, desired.project))
        elif not vol.owned:
            notes.append(f"volume {spec.name}: adopted, not owned (no reconciler labels)")
    wanted = {v.name for v in desired.volumes}
    patterns = [t.replace("{replica}", "[0-9]*") for t in desired.volume_templates]
    for name in sorted(observed.project_volumes - wanted):
        if not any(fnmatchcase(name, p) for p in patterns):
            notes.append(f"volume {name}: orphaned (no longer in the file; never removed)")


def _removals(desired: DesiredState, observed: Observed) -> list[Step]:
    services = {s.name: s for s in desired.services}
    wanted = {c.name for s in desired.services for c in s.replicas}
    steps = []
    for c in sorted(observed.containers, key=lambda c: (c.service, c.replica, c.name)):
        if c.name in wanted:
            continue
        svc = services.get(c.service)
        if svc is None:
            reason = "service removed from the file"
        elif c.replica > len(svc.replicas):
            reason = "scaled down"
        else:
            reason = "name changed"
        steps.append(Step(RemoveContainer(c.id, c.name, c.service, reason)))
    return steps


def _service_steps(
    svc: ServiceSpec, by_name: Mapping[str, ObservedContainer], holds: Holds, recreated: set[str]
) -> Iterable[Action]:
    for spec in svc.replicas:
        c = by_name.get(spec.name)
        if c is None:
            if svc.state == "running":
                yield CreateContainer(spec, "missing")
                yield StartContainer(spec.name, spec.name, svc.name, JUST_CREATED)
            continue
        if svc.state == "stopped":  # kept down on purpose: stop it, change nothing else
            if c.state in ("running", "paused", "restarting"):
                yield StopContainer(c.id, c.name, c.service)
            continue
        if c.state == "dead":
            yield RecreateContainer(c.id, spec, "dead")
            continue
        if c.spec_hash != spec.spec_hash:
            yield RecreateContainer(c.id, spec, "spec changed")
            continue
        owner = _namespace_owner(spec)
        if owner and (
            owner in recreated
            or by_name.get(owner) is None
            or by_name[owner].id != c.network_target
        ):
            # Its network namespace belongs to a container that was (or is being) recreated.
            yield RecreateContainer(c.id, spec, f"network namespace owner {owner} was recreated")
            continue
        if c.state in ("running", "exited", "created", "paused") and spec.network_mode is None:
            for attachment in spec.networks:
                if attachment.network not in c.networks:
                    yield ConnectNetwork(c.id, c.name, c.service, attachment)
        match c.state:
            case "exited":
                yield StartContainer(c.id, c.name, c.service, f"exited ({c.exit_code})")
            case "created":
                yield StartContainer(c.id, c.name, c.service, "created, never started")
            case "paused":
                yield UnpauseContainer(c.id, c.name, c.service)
            case "running":
                yield from _running(spec, c, holds)
            case _:  # restarting (Docker is on it) or removing
                pass


def _running(spec: ContainerSpec, c: ObservedContainer, holds: Holds) -> Iterable[Action]:
    if c.health == "unhealthy" and (holds.unhealthy_due is None or c.name in holds.unhealthy_due):
        yield RestartContainer(c.id, c.name, c.service, "unhealthy")
        return
    if spec.reload_digest and spec.reload_signal:
        delivered = holds.signalled.get(c.id, c.config_hash)
        if delivered != spec.reload_digest:
            yield SignalContainer(
                c.id, c.name, c.service, spec.reload_signal, spec.reload_digest, "config changed"
            )


def _namespace_owner(spec: ContainerSpec) -> str | None:
    mode = spec.network_mode or ""
    return mode.removeprefix("container:") if mode.startswith("container:") else None


def _infra_deps(spec: ContainerSpec, infra_keys: set[str]) -> set[str]:
    keys = {f"network:{a.network}" for a in spec.networks} | {f"volume:{v}" for v in spec.volumes}
    return keys & infra_keys


def _drop_held(steps: list[Step], held: Mapping[str, str], notes: list[str]) -> tuple[Step, ...]:
    """Leave out held steps and every step that waits on one."""
    if not held:
        return tuple(steps)
    dropped: set[str] = set()
    kept = []
    for step in steps:  # steps come after their dependencies
        if step.key in held:
            dropped.add(step.key)
            notes.append(f"{step.key}: held back ({held[step.key]})")
        elif step.after & dropped:
            dropped.add(step.key)
        else:
            kept.append(step)
    return tuple(kept)
