"""Swarm's plans that explain: per service the field diff between the spec Swarm holds and
the file's, the steps with their causes, what is held (a revision Swarm rolled back: why,
since when). Called by the Swarm adapter's `plan`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from reconciler.core import swarm_plan as sp
from reconciler.core.notes import Note
from reconciler.core.plan_explain import ServicePlan, Wait, explain, held_revision, swarm_changes
from reconciler.core.spec_diff import FieldChange


class _Held(Protocol):
    failed: str
    failed_reason: str
    failed_at: float


def held_waits(desired: sp.SwarmDesired, records: Any) -> dict[str, Wait]:
    """Services whose file revision Swarm rolled back (held until the file changes them);
    `records`: the adapter's store of `SwarmRecord`s (`get(name)`)."""
    out = {}
    for svc in desired.services:
        rec: _Held | None = records.get(svc.name)
        if rec is None or not rec.failed or rec.failed != svc.spec_hash:
            continue
        at = time.strftime("%H:%M:%S", time.localtime(rec.failed_at)) if rec.failed_at else ""
        cause = rec.failed_reason or "its update failed"
        out[svc.name] = held_revision(
            svc.name, svc.spec_hash, "", cause, at, by="Swarm rolled it back"
        )
    return out


def held_note(n: Note, held: Mapping[str, Wait]) -> bool:
    """The planner's own note of a revision `held` explains better."""
    return n.kind == "held" and n.subject.removeprefix("service ") in held


def explain_swarm(
    desired: sp.SwarmDesired,
    observed: sp.SwarmObserved,
    plan: sp.SwarmPlan,
    held: Mapping[str, Wait] | None = None,
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
    return explain(names, plan.actions, plan.notes, changes, held=held)
