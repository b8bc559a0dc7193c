"""What happened, as data: one `Event` per action taken or condition met, on either target.

Adapters and the daemon emit them through one `Record` callable (targets.base.Settings.record,
the daemon's own recorder); the history (a JSON-lines file), the notifications and the logs
are sinks of that one stream, so what is reported is what happened, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal[
    # actions (the history's rows)
    "create",
    "start",
    "heal",
    "recreate",
    "rollout_step",
    "rollback",  # a step returning a service to its stable revision (and the rollback's end)
    "remove",
    "image_update",
    "drift_corrected",
    "reload",
    "operator",
    "pull",  # an image pulled or built (a moved tag's pull is an image_update)
    "rollout_started",
    "rollout_completed",
    "rollout_failed",
    "rolled_back",
    "paused",
    "crash_loop",
    "denied",
    "engine_unreachable",
    "reload_rejected",
    "config_rejected",  # a config edit its `check` refused (not signalled)
]

# What a notification tells (ops.notifications): conditions fire until an event with result
# "resolved" clears them; news is told once (a rollout completed, an image update, a drift undone).
CONDITIONS: frozenset[EventKind] = frozenset(
    {
        "rollout_failed",
        "rolled_back",
        "paused",
        "crash_loop",
        "denied",
        "engine_unreachable",
        "reload_rejected",
        "config_rejected",
    }
)
NEWS: frozenset[EventKind] = frozenset({"rollout_completed", "image_update", "drift_corrected"})

Result = Literal["success", "error", "skipped", "started", "firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened.

    `trigger` says what asked (`file edit`, `engine event`, `resync`, `image digest`,
    `operator`, a git commit...), `cause` why the step was needed (`missing`,
    `spec changed: environment.A`, `exited 137 (OOM killed)`), `data` carries what a
    consumer quotes as is (the field diff, a digest, a commit): strings only, secrets never.
    """

    kind: EventKind
    service: str = ""  # the file's service; "" for the project (a reload, the engine)
    message: str = ""  # one line for humans (the action's line, the condition's text)
    replica: str = ""  # a container's or task's name
    trigger: str = ""
    cause: str = ""
    result: Result = "success"
    duration_s: float | None = None
    revision: str = ""  # the desired state's digest (or commit) the event belongs to
    data: Mapping[str, str] = field(default_factory=dict)


Record = Callable[[Event], None]


# What asked for a pass, as the daemon and `apply` name it, in the words the history shows.
TRIGGERS = {
    "start": "start",  # the first pass after the daemon started
    "file": "file edit",
    "signal": "reload signal",
    "interval": "resync",
    "event": "engine event",
    "requeue": "requeue",  # the target asked to look again (a monitor, a settle re-check)
    "backoff": "retry",  # a retry after an error
    "manual": "operator (apply)",
    "down": "operator (down)",
    "image": "image digest",
    "git": "git commit",
}


# Passes no outside cause asked for: they inherit what started the work they go on with.
FOLLOW_UPS = ("requeue", "backoff")


def trigger_text(trigger: str) -> str:
    """`file` -> `file edit`; a trigger without a name of its own is shown as it is."""
    return TRIGGERS.get(trigger, trigger)


def discard(event: Event) -> None:
    """The record of a process that keeps no history (`plan`, tests)."""
