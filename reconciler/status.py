"""`reconciler status`: a table of services, read from the engine (not the hot path)."""

from __future__ import annotations

from reconciler.engine import Engine
from reconciler.model import DesiredState


def render_status(desired: DesiredState, engine: Engine) -> str:
    """service, desired, running, healthy, restarts, image — plus a line per broken replica."""
    observed = engine.observe(desired.project)
    live = {c.name: c for c in observed.containers}
    rows = [("SERVICE", "DESIRED", "RUNNING", "HEALTHY", "RESTARTS", "IMAGE")]
    problems: list[str] = []
    for svc in desired.services:
        running = healthy = restarts = 0
        for spec in svc.replicas:
            c = live.get(spec.name)
            if c is None:
                problems.append(f"  {spec.name}: missing")
                continue
            info = engine.inspect(c.id) or {}
            restarts += int(info.get("RestartCount") or 0)
            if c.state == "running":
                running += 1
                healthy += c.health in (None, "healthy")
            if c.state != "running" or c.health == "unhealthy":
                state = c.state if c.exit_code is None else f"{c.state} ({c.exit_code})"
                if c.health == "unhealthy":
                    state = "unhealthy"
                problems.append(f"  {spec.name}: {state}")
        rows.append(
            (svc.name, str(len(svc.replicas)), str(running), str(healthy), str(restarts), svc.image)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines + problems)
