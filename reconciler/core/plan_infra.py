"""Planning the project's networks and volumes: create missing ones, note adopted and
orphaned ones, and hold back containers whose external network or volume is missing.

Pure; core.planner (each pass) and core.takeover call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase

from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    Step,
)
from reconciler.core.desired import DesiredState
from reconciler.core.notes import Note, note
from reconciler.core.observed import Observed

# A network or volume marked external: that does not exist (we never create it).
EXTERNAL_MISSING = "external, not found: create it"
_ADOPTED = "adopted, not owned (no reconciler labels)"


def networks(desired: DesiredState, observed: Observed, notes: list[Note]) -> Iterator[Step]:
    """Creates of the file's missing networks; notes on external missing, adopted, orphaned."""
    live = {n.name: n for n in observed.networks}
    for spec in desired.networks:
        net = live.get(spec.name)
        subject = f"network {spec.name}"
        if net is None and spec.external:
            notes.append(
                note("external_missing", subject, f"{EXTERNAL_MISSING} (docker network create)")
            )
        elif net is None:
            yield Step(CreateNetwork(spec, desired.project))
        elif not net.owned and not spec.external:
            notes.append(note("adopted", subject, _ADOPTED))
    wanted = {n.name for n in desired.networks}
    for name in sorted(observed.project_networks - wanted):
        notes.append(
            note("orphaned", f"network {name}", "orphaned (no longer in the file; not removed)")
        )


def volumes(desired: DesiredState, observed: Observed, notes: list[Note]) -> Iterator[Step]:
    """Creates of the file's missing volumes; notes on external missing, adopted, orphaned
    (a volume of a per-replica template is no orphan)."""
    live = {v.name: v for v in observed.volumes}
    for spec in desired.volumes:
        vol = live.get(spec.name)
        subject = f"volume {spec.name}"
        if vol is None and spec.external:
            notes.append(
                note("external_missing", subject, f"{EXTERNAL_MISSING} (docker volume create)")
            )
        elif vol is None:
            yield Step(CreateVolume(spec, desired.project))
        elif not vol.owned and not spec.external:
            notes.append(note("adopted", subject, _ADOPTED))
    wanted = {v.name for v in desired.volumes}
    patterns = [t.replace("{replica}", "[0-9]*") for t in desired.volume_templates]
    for name in sorted(observed.project_volumes - wanted):
        if not any(fnmatchcase(name, p) for p in patterns):
            why = "orphaned (no longer in the file; never removed)"
            notes.append(note("orphaned", f"volume {name}", why))


def external_missing(
    desired: DesiredState, observed: Observed, steps: Iterable[Step]
) -> dict[str, str]:
    """Creates of containers that use an external network or volume that does not exist
    (Docker would make a missing volume itself, unlabelled: that is not ours to make), and
    connects to such a network (they would fail every pass until someone creates it)."""
    nets = {n.name for n in observed.networks}
    vols = {v.name for v in observed.volumes}
    missing = {n.name for n in desired.networks if n.external and n.name not in nets} | {
        v.name for v in desired.volumes if v.external and v.name not in vols
    }
    held: dict[str, str] = {}
    for step in steps:
        if isinstance(step.action, CreateContainer):
            spec = step.action.spec
            used = {a.network for a in spec.networks} | set(spec.volumes)
            if used & missing:
                what = ", ".join(sorted(used & missing))
                held[step.key] = f"external {what} not found"
        elif isinstance(step.action, ConnectNetwork) and step.action.attachment.network in missing:
            held[step.key] = f"external {step.action.attachment.network} not found"
    return held
