"""Swarm target, pure planning: desired Swarm objects + observed ones -> the actions that
converge them (`plan`, `plan_down`), Swarm's own rollbacks held (`failed_revisions`).
Nothing here does I/O (the simulator the convergence property runs plans against is
tests/swarm_simulator.py).

The values and actions are in core.swarm_model; the names callers use as `sp.X` are
re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from reconciler.core import causes
from reconciler.core.causes import Cause
from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.core.notes import Note, note
from reconciler.core.plan_explain import swarm_changes
from reconciler.core.spec_diff import fields_text
from reconciler.core.spec_fields import covers
from reconciler.core.swarm_model import (
    STACK_NAMESPACE,
    CreateService,
    CreateSwarmConfig,
    CreateSwarmNetwork,
    CreateSwarmSecret,
    ObservedService,
    RemoveService,
    RemoveSwarmConfig,
    RemoveSwarmNetwork,
    RemoveSwarmSecret,
    ScaleService,
    SwarmAction,
    SwarmDesired,
    SwarmNetwork,
    SwarmObserved,
    SwarmPlan,
    SwarmService,
    UpdateService,
    describe,
)

__all__ = [
    "MANUAL_ROLLBACK",
    "ROLLBACK_STATES",
    "STACK_NAMESPACE",
    "CreateService",
    "CreateSwarmNetwork",
    "ObservedService",
    "RemoveSwarmConfig",
    "SwarmAction",
    "SwarmDesired",
    "SwarmNetwork",
    "SwarmObserved",
    "SwarmPlan",
    "UpdateService",
    "covers",
    "describe",
    "drift",
    "drift_cause",
    "failed_revisions",
    "plan",
    "plan_down",
    "rolled_back",
    "rolled_back_by_hand",
    "taken_names",
]

# Swarm's UpdateStatus.State values after a rollback it started itself.
ROLLBACK_STATES = frozenset({"rollback_started", "rollback_completed", "rollback_paused"})
MANUAL_ROLLBACK = "manually requested rollback"


# --------------------------------------------------------------------------- planning


def rolled_back_by_hand(svc: SwarmService, obs: ObservedService) -> bool:
    """An operator's `docker service rollback` took the service off the file's spec (drift
    to put back, not a failed update): Swarm's status says so, and the spec it left is the
    file's (a file edit since is a change of the file, whatever the status still says)."""
    return (
        obs.update_state in ROLLBACK_STATES
        and obs.update_message == MANUAL_ROLLBACK
        and obs.previous_hash == svc.spec_hash
        and obs.label(LABEL_SPEC_HASH) != svc.spec_hash
    )


def drift(svc: SwarmService, obs: ObservedService) -> str | None:
    """Why the observed service differs from the desired one (None: it does not)."""
    if rolled_back_by_hand(svc, obs):
        return "rolled back by hand"
    if obs.label(LABEL_SPEC_HASH) != svc.spec_hash:
        return "the file changed it"
    current, wanted = obs.spec, svc.spec
    if not covers(current.get("Mode"), wanted.get("Mode")):
        return "replicas changed by hand"
    image = current.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image")
    if image != wanted["TaskTemplate"]["ContainerSpec"]["Image"]:
        return "image changed by hand"
    if not covers(current, wanted):
        return "changed by hand"
    return None


def drift_cause(svc: SwarmService, obs: ObservedService, hidden: frozenset[str]) -> Cause:
    """`drift`'s answer as a cause with its field diff: `spec changed: environment.A`,
    `drift: scaled to 1 by hand`, `drift: image changed to x by hand`."""
    changes = swarm_changes(svc, obs, hidden)
    if rolled_back_by_hand(svc, obs):
        return causes.drift("rolled back by hand", changes)
    if obs.label(LABEL_SPEC_HASH) != svc.spec_hash:
        return causes.spec_changed(changes)
    current = obs.spec
    replicas = current.get("Mode", {}).get("Replicated", {}).get("Replicas")
    if not covers(current.get("Mode"), svc.spec.get("Mode")):
        if replicas is None:
            return causes.drift("mode changed by hand", changes)
        return causes.drift(f"scaled to {replicas} by hand", changes)
    image = current.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image")
    if image != svc.spec["TaskTemplate"]["ContainerSpec"]["Image"]:
        return causes.drift(f"image changed to {image} by hand", changes)
    fields = fields_text(changes)
    return causes.drift(f"changed by hand: {fields}" if fields else "changed by hand", changes)


def rolled_back(obs: ObservedService) -> bool:
    """Did Swarm roll this service back by itself (a failed update), not by a user's request?"""
    return obs.update_state in ROLLBACK_STATES and obs.update_message != MANUAL_ROLLBACK


def taken_names(desired: SwarmDesired, observed: SwarmObserved) -> dict[str, str]:
    """Services of the file whose Swarm name a service without our labels holds: service ->
    that service's ID (none of ours runs; its tasks are not ours to count)."""
    live = {s.name: s for s in observed.services}
    return {
        svc.name: obs.id
        for svc in desired.services
        if (obs := live.get(svc.full_name)) is not None and not obs.owned_by(desired.project)
    }


def _unlabelled(subject: str) -> Note:
    """A network or config of the file that exists without our labels (used as it is)."""
    return Note("adopted", subject, f"{subject} exists without our labels: used as it is")


def plan(
    desired: SwarmDesired,
    observed: SwarmObserved,
    held: Mapping[str, str] | None = None,
    only: str | None = None,
    known: Collection[str] = (),
) -> SwarmPlan:
    """The actions converging `observed` on `desired`.

    `held`: service -> a spec hash Swarm rolled back; while the file asks for that same
    spec, the service is left as Swarm left it. `only`: plan that one service (and the
    networks and configs it needs), as a per-service work-queue key does. `known`: services
    we created before (one of them missing was removed by hand: drift put back).
    """
    held = held or {}
    project = desired.project
    hidden = desired.host.secrets if desired.host is not None else frozenset()
    services = [s for s in desired.services if only is None or s.name == only]
    allowed = [s for s in services if s.name not in desired.denied]
    needed = {  # by the services this pass plans (`only`)
        "network": {n for s in allowed for n in s.networks},
        "config": {c for s in allowed for c in s.configs},
        "secret": {c for s in allowed for c in s.secrets},
    }
    existing = {
        "network": {n.name: n for n in observed.networks},
        "config": {c.name: c for c in observed.configs},
        "secret": {c.name: c for c in observed.secrets},
    }
    live = {s.name: s for s in observed.services}
    actions: list[SwarmAction] = []
    notes: list[Note] = []

    creates: list[CreateSwarmNetwork | CreateSwarmConfig | CreateSwarmSecret] = [
        *map(CreateSwarmNetwork, desired.networks),
        *map(CreateSwarmConfig, desired.configs),
        *map(CreateSwarmSecret, desired.secrets),
    ]
    for create in creates:
        if only is not None and create.name not in needed[create.kind]:
            continue
        have = existing[create.kind].get(create.name)
        if have is None:
            actions.append(create)
        elif not have.owned and create.kind != "secret":  # a secret's labels go unchecked
            notes.append(_unlabelled(f"{create.kind} {create.name}"))

    for svc in services:
        if svc.name in desired.denied:
            says = "denied by the host policy; left as it is"
            notes.append(note("denied", f"service {svc.name}", says))
            continue
        obs = live.get(svc.full_name)
        if obs is None:
            actions.append(CreateService(svc, removed_by_hand=svc.name in known))
            continue
        if not obs.owned_by(project):
            # Ours is missing and cannot be created under its name (as the host's container
            # whose name is taken): a step that fails, never a touch of the other service.
            subject = f"service {svc.full_name}"
            text = f"{subject} exists without our labels for project {project}: left alone"
            notes.append(Note("foreign", subject, f"{text} (remove it or rename ours)"))
            actions.append(CreateService(svc, taken_by=obs.id))
            continue
        # A rollback under way is Swarm's; a paused one (rollback_paused) is settled: a file
        # edit is pushed, a hand scale put back (the held revision below still holds).
        if obs.update_state == "rollback_started" and rolled_back(obs):
            says = f"Swarm is rolling it back ({obs.update_message})"
            notes.append(note("rolling_back", f"service {svc.name}", says))
            continue
        why = drift(svc, obs)
        if why is None:
            if obs.update_state == "paused":
                says = f"update paused ({obs.update_message})"
                notes.append(note("paused", f"service {svc.name}", says))
            continue
        if held.get(svc.name) == svc.spec_hash:
            says = "Swarm rolled this revision back; held until the file changes the service"
            notes.append(note("held", f"service {svc.name}", says))
            current = obs.spec
            if not covers(current.get("Mode"), svc.spec["Mode"]):
                was = current.get("Mode", {}).get("Replicated", {}).get("Replicas")
                current["Mode"] = svc.spec["Mode"]
                actions.append(
                    ScaleService(
                        obs.id,
                        obs.name,
                        svc.name,
                        obs.version,
                        json.dumps(current, sort_keys=True),
                        svc.replicas,
                        f"drift: scaled to {was} by hand (revision held)",
                        causes.drift(f"scaled to {was} by hand (revision held)"),
                    )
                )
            continue
        cause = drift_cause(svc, obs, hidden)
        actions.append(UpdateService(svc, obs.id, obs.version, cause.text, obs.force_update, cause))

    if only is None:
        wanted = {s.full_name for s in desired.services}
        wanted |= {f"{project}_{name}" for name in desired.dormant}  # left alone (profiles)
        for obs in observed.services:
            if obs.owned_by(project) and obs.name not in wanted:
                actions.append(RemoveService(obs.id, obs.name, obs.service))
        # Configs of ours no service uses any more (nor could roll back to), nor the file.
        in_use = {c for o in observed.services for c in o.configs_in_use}
        in_use |= {c.name for c in desired.configs}
        for cfg_obs in observed.configs:
            if cfg_obs.owned and cfg_obs.name not in in_use:
                actions.append(RemoveSwarmConfig(cfg_obs.id, cfg_obs.name))
        used = {c for o in observed.services for c in o.secrets_in_use}
        used |= {c.name for c in desired.secrets}
        for sec_obs in observed.secrets:
            if sec_obs.owned and sec_obs.name not in used:
                actions.append(RemoveSwarmSecret(sec_obs.id, sec_obs.name))
    return SwarmPlan(tuple(actions), tuple(notes))


def plan_down(desired: SwarmDesired, observed: SwarmObserved) -> SwarmPlan:
    """`docker stack rm` for our objects only: services, then configs and networks."""
    project = desired.project
    actions: list[SwarmAction] = [
        RemoveService(s.id, s.name, s.service, "down")
        for s in observed.services
        if s.owned_by(project)
    ]
    actions += [RemoveSwarmConfig(c.id, c.name) for c in observed.configs if c.owned]
    actions += [RemoveSwarmSecret(c.id, c.name) for c in observed.secrets if c.owned]
    actions += [RemoveSwarmNetwork(n.id, n.name) for n in observed.networks if n.owned]
    return SwarmPlan(tuple(actions))


def failed_revisions(
    desired: SwarmDesired,
    observed: SwarmObserved,
    pushed: Mapping[str, str],
    held: Mapping[str, str],
) -> dict[str, str]:
    """`held` updated from what Swarm did: a service Swarm rolled back by itself holds the
    spec we had pushed (or, with no record, the file's); a file that changed the service
    lets it go."""
    out = dict(held)
    live = {s.name: s for s in observed.services}
    for svc in desired.services:
        if out.get(svc.name) not in (None, svc.spec_hash):
            del out[svc.name]  # the file moved on: push the new spec
        obs = live.get(svc.full_name)
        if obs is None or not obs.owned_by(desired.project) or not rolled_back(obs):
            continue
        failed = pushed.get(svc.name) or svc.spec_hash
        if obs.label(LABEL_SPEC_HASH) != failed and failed == svc.spec_hash:
            out[svc.name] = failed
    for name in list(out):
        if name not in {s.name for s in desired.services}:
            del out[name]
    return out
