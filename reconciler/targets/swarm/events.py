"""Which work-queue key a Swarm event asks for (the adapter's `watch`)."""

from __future__ import annotations

from reconciler.targets.base import RESYNC

SWARM_EVENTS = ("service", "node", "config", "secret", "network")


def event_key(event: dict[str, object], prefix: str) -> str | None:
    """The work-queue key a Docker event asks for: one of our services, the project (a node
    came, went or changed; one of our networks or configs went), or none (someone else's)."""
    kind = event.get("Type")
    actor = event.get("Actor")
    attributes = actor.get("Attributes") if isinstance(actor, dict) else None
    name = str((attributes or {}).get("name", ""))
    if kind == "node":
        return RESYNC
    if not name.startswith(prefix):
        return None
    if kind == "service":
        return f"service:{name.removeprefix(prefix)}"
    if kind in ("config", "secret") or (
        kind == "network" and event.get("Action") in ("destroy", "remove")
    ):
        return RESYNC
    return None
