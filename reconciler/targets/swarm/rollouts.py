"""A rollout the Swarm adapter starts (an update of a service's tasks, not a scale nor a
drift put back): its log line and history row `rollout_started` with the field diff, as the
host writes them. Called by targets/swarm.SwarmTarget after each update it pushed."""

from __future__ import annotations

import structlog

from reconciler.core.action_events import cut
from reconciler.core.events import Event, Record, trigger_text
from reconciler.core.swarm_model import UpdateService

log = structlog.get_logger("reconciler")


def rollout_of(action: UpdateService) -> bool:
    """Does this update replace the tasks (a rollout Swarm runs with update_config)? A hand
    change put back is drift; a new replica count alone only scales (no UpdateStatus)."""
    cause = action.cause
    if cause.kind == "drift":
        return False
    return not cause.changes or any(c.field != "replicas" for c in cause.changes)


def announce(action: UpdateService, trigger: str, file_revision: str, record: Record) -> None:
    """The log line (as the host's: the rollout Swarm now runs, and its field diff) and the
    history row of a rollout just pushed."""
    log.info(
        "rollout started",
        service=action.spec.name,
        revision=action.spec.spec_hash[:12],
        changes=[str(c) for c in action.cause.changes],
    )
    record(started_event(action, trigger, file_revision))


def started_event(action: UpdateService, trigger: str, file_revision: str) -> Event:
    """The history's row of a rollout Swarm now runs: the file's revision (as every row),
    the service's and the field diff in its data."""
    data = {"service_revision": action.spec.spec_hash[:12]}
    changes = [str(c) for c in action.cause.changes]
    if changes:
        data["diff"] = cut("; ".join(changes))
    return Event(
        "rollout_started",
        service=action.spec.name,
        message=f"{action.spec.name}: rollout started",
        trigger=trigger_text(trigger),
        cause=cut(str(action.cause)),
        revision=file_revision[:12],
        data=data,
    )
