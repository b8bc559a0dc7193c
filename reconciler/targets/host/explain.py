"""The host's plans that explain: per service the field diff against the running containers,
the steps with their causes, the waits; and the diff the daemon logs with a rollout.

Called by the host adapter's `plan` and by the controller when a rollout starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from reconciler.core import rollout as ro
from reconciler.core.actions import Plan
from reconciler.core.desired import ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.plan_explain import ServicePlan, Wait, explain, held_revision, host_changes
from reconciler.engine.host.engine import Engine

KILLED = 137  # 128 + SIGKILL: the kernel's OOM killer, or a kill -9


def oom_marked(observed: Observed, engine: Engine) -> Observed:
    """Exited replicas killed by SIGKILL, marked when the OOM killer did it (one inspect
    each: only those, so a cause can say `exited 137 (OOM killed)`)."""
    marked = []
    for c in observed.containers:
        if c.state == "exited" and c.exit_code == KILLED:
            run = engine.last_run(c.id)
            c = replace(c, oom_killed=bool(run and run.oom_killed))
        marked.append(c)
    return replace(observed, containers=tuple(marked))


def clock(at: float) -> str:
    """`17:50:36` (local time), "" when not known."""
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else ""


def held_wait(svc: ServiceSpec, record: ro.RolloutRecord) -> Wait:
    """The file's revision of `svc`, rolled back and held: why, since when, what runs."""
    return held_revision(
        svc.name,
        svc.revision,
        record.stable_revision,
        record.failed_reason,
        clock(record.failed_at),
    )


def explain_host(
    services: Sequence[ServiceSpec],
    observed: Observed,
    plan: Plan,
    hidden: frozenset[str],
    held: Mapping[str, Wait] | None = None,
) -> tuple[ServicePlan, ...]:
    """Per service of the plan (denied ones left out): its diff against the file's
    `services` (also while a held revision runs the stable one instead), steps and waits."""
    changes = {s.name: host_changes(s, observed.containers, hidden) for s in services}
    owners = {c.name: c.service for c in observed.containers}
    owners |= {spec.name: s.name for s in services for spec in s.replicas}
    names = [s.name for s in services]
    return explain(names, plan.actions, plan.notes, changes, owners, held)


def rollout_diff(
    svc: ServiceSpec, containers: Iterable[ObservedContainer], hidden: frozenset[str]
) -> list[str]:
    """The diff a rollout's log line carries: `environment.A "1" -> "2"` each."""
    return [str(c) for c in host_changes(svc, containers, hidden)]
