"""Swarm's plans that explain: per service the field diff between the spec Swarm holds and
the file's, the steps with their causes, what is held. Called by the Swarm adapter's `plan`."""

from __future__ import annotations

from reconciler.core import swarm_plan as sp
from reconciler.core.plan_explain import ServicePlan, explain, swarm_changes
from reconciler.core.spec_diff import FieldChange


def explain_swarm(
    desired: sp.SwarmDesired, observed: sp.SwarmObserved, plan: sp.SwarmPlan
) -> tuple[ServicePlan, ...]:
    """Per service of the file (denied ones left out): its diff, steps and held notes."""
    hidden = desired.host.secrets if desired.host is not None else frozenset()
    live = {s.name: s for s in observed.services}
    changes: dict[str, tuple[FieldChange, ...]] = {}
    names = [s.name for s in desired.services if s.name not in desired.denied]
    for svc in desired.services:
        obs = live.get(svc.full_name)
        if obs is not None and obs.owned_by(desired.project) and sp.drift(svc, obs):
            changes[svc.name] = swarm_changes(svc, obs, hidden)
    return explain(names, plan.actions, plan.notes, changes)
