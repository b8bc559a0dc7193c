"""The host's plans that explain: per service the field diff against the running containers,
the steps with their causes, the waits; and the diff the daemon logs with a rollout.

Called by the host adapter's `plan` and by the controller when a rollout starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from reconciler.core.actions import Plan
from reconciler.core.desired import ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.plan_explain import ServicePlan, explain, host_changes
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


def explain_host(
    services: Sequence[ServiceSpec], observed: Observed, plan: Plan, hidden: frozenset[str]
) -> tuple[ServicePlan, ...]:
    """Per service of the plan (denied ones left out): its diff, steps and waits."""
    changes = {s.name: host_changes(s, observed.containers, hidden) for s in services}
    owners = {c.name: c.service for c in observed.containers}
    owners |= {spec.name: s.name for s in services for spec in s.replicas}
    return explain([s.name for s in services], plan.actions, plan.notes, changes, owners)


def rollout_diff(
    svc: ServiceSpec, containers: Iterable[ObservedContainer], hidden: frozenset[str]
) -> list[str]:
    """The diff a rollout's log line carries: `environment.A "1" -> "2"` each."""
    return [str(c) for c in host_changes(svc, containers, hidden)]
