"""`reconciler status --target swarm`: services (desired, running, healthy, update state,
image), then each service's tasks per node, then the crash loops."""

from __future__ import annotations

import time
from collections.abc import Mapping

from reconciler.core import swarm_plan as sp
from reconciler.engine.swarm.engine import TaskCounts
from reconciler.ops.state_store import JsonStore
from reconciler.targets.swarm.crashloops import loops_of, status_lines
from reconciler.targets.swarm.records import SwarmRecord


def render_status(
    desired: sp.SwarmDesired,
    observed: sp.SwarmObserved,
    counts: dict[str, TaskCounts],
    records: JsonStore[SwarmRecord],
    denials: Mapping[str, str] | None = None,
) -> str:
    """A table of services (desired, running, healthy, update state, image), then the tasks
    of each service per node."""
    denials = denials or {}
    live = {s.name: s for s in observed.services}
    head = ("SERVICE", "MODE", "DESIRED", "RUNNING", "HEALTHY", "UPDATE", "IMAGE")
    rows = [head]
    nodes: list[str] = []
    for svc in desired.services:
        c = counts.get(svc.full_name, TaskCounts(0, 0, 0))
        obs = live.get(svc.full_name)
        want = c.desired if svc.global_mode else svc.replicas
        healthy = c.healthy if svc.has_healthcheck else c.running
        image = ""
        update = "missing"
        if obs is not None and not obs.owned_by(desired.project):
            update = f"missing: the name is taken by service {obs.id[:12]} (not ours)"
        elif obs is not None:
            image = obs.spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")
            update = obs.update_state or ("in sync" if sp.drift(svc, obs) is None else "drifted")
        record = records.get(svc.name) or SwarmRecord()
        if svc.name in denials:
            update = f"denied ({denials[svc.name]})"
        elif record.failed and record.failed == svc.spec_hash:
            update = "held (rolled back)"
        mode = "global" if svc.global_mode else "replicated"
        rows.append((svc.name, mode, str(want), str(c.running), str(healthy), update, image))
        for node, states in c.nodes:
            text = ", ".join(f"{n} {state}" for state, n in states)
            nodes.append(f"  {svc.name:20} {node:24} {text}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines.append("TASKS PER NODE")
    lines.extend(nodes or ["  (none)"])
    looping = status_lines(loops_of(desired.services, counts, time.time()))
    if looping:
        lines += ["", "CRASH LOOPS", *looping]
    return "\n".join(lines)
