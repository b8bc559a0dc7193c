"""The pure core: `plan(desired, observed, holds) -> Plan`, and `plan_down`.

No Docker, no clock, no I/O. Level-based: the plan depends only on what is desired and
what is observed now, plus the bookkeeping passed in as `Holds` (back-offs, drains, the
rollout of each service and the time), never on remembered events. Waiting is never done
here: a plan says when it wants to be looked at again (`Plan.wake_at`).

A replica is a slot (service, replica number): core.plan_slots plans each slot, core.plan_infra
the networks and volumes, core.plan_order the order of the steps. No create or rename takes a
name a container holds: it follows the step that frees the name, or waits (a replica whose
name another slot still holds is created under its temporary name and renamed later).
"""

from __future__ import annotations

from reconciler.core import plan_infra
from reconciler.core.actions import (
    CreateContainer,
    EnsureImage,
    Plan,
    RemoveContainer,
    RemoveNetwork,
    RemoveVolume,
    RestartContainer,
    StartContainer,
    Step,
    UnpauseContainer,
)
from reconciler.core.desired import DesiredState
from reconciler.core.holds import NO_HOLDS, Holds
from reconciler.core.notes import Note
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.plan_infra import EXTERNAL_MISSING, external_missing
from reconciler.core.plan_order import (
    NAMESPACE_MISSING,
    claim_names,
    drop_held,
    gate_on_dependencies,
    held_back,
    namespace_owner,
    ordered,
)
from reconciler.core.plan_slots import (
    DEFAULT_DRAIN_S,
    NO_DNS_NETWORKS,
    PlanPass,
    removals,
    service_steps,
)

__all__ = [
    "DEFAULT_DRAIN_S",
    "EXTERNAL_MISSING",
    "NAMESPACE_MISSING",
    "NO_DNS_NETWORKS",
    "NO_HOLDS",
    "Holds",
    "foreign_namespaces",
    "plan",
    "plan_down",
]


def foreign_namespaces(desired: DesiredState) -> frozenset[str]:
    """The X of each `network_mode: container:X` that is no container of this project."""
    ours = {c.name for s in desired.services for c in s.replicas}
    owners = {namespace_owner(c) for s in desired.services for c in s.replicas}
    return frozenset(o for o in owners if o is not None and o not in ours)


def plan(desired: DesiredState, observed: Observed, holds: Holds = NO_HOLDS) -> Plan:
    """The ordered steps that bring `observed` to `desired`, and notes to report."""
    ids = {**holds.outside, **{c.name: c.id for c in observed.containers}}
    p = PlanPass(holds, ids, hidden=desired.secrets)
    infra = [*plan_infra.networks(desired, observed, p.notes)]
    infra += plan_infra.volumes(desired, observed, p.notes)
    infra_keys = {s.key for s in infra}
    services = {s.name: s for s in desired.services}
    slots: dict[str, dict[int, list[ObservedContainer]]] = {}
    extra: list[ObservedContainer] = []
    for c in sorted(observed.containers, key=lambda c: (c.service, c.replica, c.name)):
        svc = services.get(c.service)
        if svc is None and c.service in desired.dormant:
            continue  # of a profile not selected: not part of the project, left alone
        if svc is None or not 1 <= c.replica <= len(svc.replicas):
            extra.append(c)
        else:
            slots.setdefault(c.service, {}).setdefault(c.replica, []).append(c)
    gone = removals(extra, services, p)
    removal_keys: dict[str, set[str]] = {}
    for step in gone:
        removal_keys.setdefault(step.action.service or "", set()).add(step.key)

    images: list[Step] = []
    containers: list[Step] = []
    brought_up: dict[str, set[str]] = {}  # service -> keys of the steps that bring it up
    for svc in desired.services:
        svc_slots = slots.get(svc.name, {})
        local = service_steps(svc, svc_slots, p)
        if holds.ready is not None:
            local = gate_on_dependencies(svc, local, holds.ready, p.notes)
        if not local:
            continue
        creates = [a for a, _ in local if isinstance(a, CreateContainer)]
        image_key = None
        if creates:
            image = EnsureImage(svc.name, svc.image, svc.pull, svc.build)
            images.append(Step(image))
            image_key = image.key
        deps = set().union(*(brought_up.get(d, set()) for d in svc.depends_on))
        prerequisites = removal_keys.get(svc.name, set()) | ({image_key} if image_key else set())
        own_steps = ordered(local, infra_keys, prerequisites, deps)
        containers += own_steps
        brought_up[svc.name] = {
            s.key
            for s in own_steps
            if isinstance(s.action, StartContainer | UnpauseContainer | RestartContainer)
        }

    steps, taken = claim_names(
        [*infra, *images, *gone, *containers], observed, holds.outside, holds.absent
    )
    held: dict[str, Note] = {k: held_back(k, why) for k, why in holds.held.items()}
    held |= taken
    held |= {k: held_back(k, why) for k, why in external_missing(desired, observed, steps).items()}
    kept = drop_held(steps, held, p.notes)
    needed = set().union(*(s.after for s in kept))  # an image no create is left to wait on
    future = [t for t in p.wakes if t > holds.now]
    return Plan(
        steps=tuple(s for s in kept if not isinstance(s.action, EnsureImage) or s.key in needed),
        notes=tuple(p.notes),
        wake_at=min(future) if future else None,
        verdicts=tuple(p.verdicts),
    )


def plan_down(desired: DesiredState, observed: Observed, *, volumes: bool = False) -> Plan:
    """`reconciler down`: every container of the project (stopped with its service's grace),
    then the networks it created; its volumes only when asked. Adopted objects stay."""
    graces = {s.name: s.stop_grace_s for s in desired.services}
    removes = [
        Step(RemoveContainer(c.id, c.name, c.service, "down", graces.get(c.service)))
        for c in sorted(observed.containers, key=lambda c: c.name)
    ]
    after = frozenset(s.key for s in removes)
    steps = removes + [
        Step(RemoveNetwork(name), after) for name in sorted(observed.project_networks)
    ]
    if volumes:
        steps += [Step(RemoveVolume(name), after) for name in sorted(observed.project_volumes)]
    return Plan(steps=tuple(steps))
