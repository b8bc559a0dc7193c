"""Which of Docker's events concern one project on the single host (containers by our
labels, networks and volumes by name): the filters asked of the engine, and the match."""

from __future__ import annotations

from typing import Any

from reconciler.core.desired import LABEL_MANAGED, LABEL_PROJECT, LABEL_SERVICE, DesiredState

CONTAINER_EVENTS = (
    "start",  # not news (a reconcile, or Docker, started it): its time is noted, no more
    "die",
    "stop",
    "kill",
    "oom",
    "destroy",
    "health_status",
    "pause",
)  # our own creates and starts are not news: a reconcile made them
NETWORK_EVENTS = ("destroy", "disconnect")
VOLUME_EVENTS = ("destroy",)


def filters() -> dict[str, list[str]]:
    """One stream for containers (by our label) and networks/volumes (by type). Docker ORs
    values within a key and ANDs keys, so a label filter would drop network events of
    adopted networks: networks and volumes are matched by name instead."""
    return {
        "type": ["container", "network", "volume"],
        "event": sorted({*CONTAINER_EVENTS, *NETWORK_EVENTS, *VOLUME_EVENTS}),
    }


def container_event(event: dict[str, Any], desired: DesiredState) -> tuple[str, str, str] | None:
    """(service, action, container id) of an event of one of our containers, else None."""
    if event.get("Type") != "container":
        return None
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    action = (event.get("Action") or "").split(":")[0]
    if (
        attrs.get(LABEL_PROJECT) == desired.project
        and attrs.get(LABEL_MANAGED) == "true"
        and action in CONTAINER_EVENTS
    ):
        return attrs.get(LABEL_SERVICE, ""), action, actor.get("ID", "")
    return None


def infra_event(event: dict[str, Any], desired: DesiredState) -> bool:
    """A network or volume of the project went (a resync recreates or rejoins it)."""
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    kind = event.get("Type")
    action = (event.get("Action") or "").split(":")[0]
    if kind == "network" and action in NETWORK_EVENTS:
        return attrs.get("name") in {n.name for n in desired.networks}
    if kind == "volume" and action in VOLUME_EVENTS:
        return actor.get("ID") in {v.name for v in desired.volumes}
    return False
