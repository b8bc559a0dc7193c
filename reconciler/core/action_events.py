"""One executed action of either target as a history `Event`: which kind of action it was
(create, heal, rollout step, removal...), the replica it touched, its cause and result.

Pure; called by the host's recording (targets/host/recording.py) and the Swarm adapter.
"""

from __future__ import annotations

from reconciler.core import rollout as ro
from reconciler.core import swarm_model as sm
from reconciler.core.actions import (
    STARTS_OF_CREATION,
    Action,
    CheckConfig,
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DrainContainer,
    EnsureImage,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.events import Event, EventKind, Result, trigger_text

TAG_MOVED = "the tag moved"  # the reason of a followed tag's pull (targets/host/image_follower)
ROLLBACK = "its replacement failed"  # an old replica started again after its replacement failed
REMOVALS = ("scaled down", "service removed from the file", "down")
TEXT_MAX = 500  # a cause or error longer than this is cut (a history line stays small)


def cut(text: str, limit: int = TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def replica_of(action: Action) -> str:
    """The replica (container or Swarm service) an action is about; "" for a network, a
    volume, an image, a config or a secret."""
    match action:
        case CreateContainer(spec=spec):
            return spec.name
        case RenameContainer(new_name=new_name):
            return new_name
        case EnsureImage() | CreateNetwork() | CreateVolume():
            return ""
    if action.kind in ("container", "service"):
        name = action.name
        return name.partition(ro.TEMP_SEPARATOR)[2] if ro.is_temp_name(name) else name
    return ""


def kind_of(action: Action, heal_reason: str | None = None) -> EventKind:
    """The history's word for an action. `heal_reason`: what the host's heal counter says
    of it (exited, unhealthy, removed, dead, paused, network), None when it is no heal."""
    reason = action.reason
    match action:
        case EnsureImage():
            return "pull"  # a moved tag's update is told once rolled out (HostConditions)
        case StartContainer() | UnpauseContainer() if reason == ROLLBACK:
            return "rollback"
        case CreateContainer(as_name=as_name) if as_name is not None:
            return "recreate" if reason == "dead" or "was recreated" in reason else "rollout_step"
        case StartContainer() if reason in STARTS_OF_CREATION:
            return "start"
        case StartContainer() if ro.is_temp_name(action.name) or reason.startswith("replaces"):
            return "rollout_step"
        case RenameContainer() | DrainContainer():
            return "rollout_step" if reason not in REMOVALS else "remove"
        case RemoveContainer():
            return "remove" if reason in REMOVALS else "rollout_step"
        case StopContainer():
            return "rollout_step" if reason.startswith("replaced") else "drift_corrected"
        case SignalContainer() | CheckConfig():
            return "reload"
        case sm.CreateService() if "by hand" in reason:  # `docker service rm`, put back
            return "drift_corrected"
        case sm.UpdateService() | sm.ScaleService():
            return "drift_corrected" if "by hand" in reason else "rollout_step"
    if heal_reason == "dead":
        return "recreate"
    if heal_reason is not None or isinstance(
        action, RestartContainer | UnpauseContainer | ConnectNetwork | StartContainer
    ):
        return "heal"
    return "remove" if action.verb == "remove" else "create"


def event_of(
    action: Action,
    outcome: str,
    *,
    trigger: str,
    error: str | None = None,
    duration_s: float | None = None,
    revision: str = "",
    heal_reason: str | None = None,
    data: dict[str, str] | None = None,
    kind: EventKind | None = None,
) -> Event:
    """The history's record of one executed action (`outcome`: success, error, skipped);
    `kind`: the caller's word for it (a step of a rollback), else `kind_of`'s."""
    result: Result = outcome if outcome in ("success", "error", "skipped") else "error"  # type: ignore[assignment]
    extra = {"verb": action.verb, "object": action.kind, "name": action.name}
    changes = action.cause.changes
    if changes:  # the field diff behind a spec change (secret values hidden)
        extra["diff"] = cut("; ".join(map(str, changes)))
    if error:
        extra["error"] = cut(error)
    return Event(
        kind=kind or kind_of(action, heal_reason),
        service=action.service or "",
        message=cut(action.describe()),
        replica=replica_of(action),
        trigger=trigger_text(trigger),
        cause=cut(str(action.cause)),
        result=result,
        duration_s=None if duration_s is None else round(duration_s, 3),
        revision=revision[:12],
        data={**extra, **(data or {})},
    )


SWARM_CONDITIONS: dict[str, str] = {
    "rolled_back": "Swarm rolled the update back; held until the file changes it",
    "paused": "Swarm paused the update",
    "rollout_completed": "update completed",
}


def swarm_condition(service: str, kind: str, result: str, reason: str, revision: str) -> Event:
    """A service update Swarm finished, paused or rolled back (Swarm's doing: trigger `swarm`)."""
    text = SWARM_CONDITIONS[kind]
    return Event(
        kind=kind,  # type: ignore[arg-type]
        service=service,
        message=f"{service}: {text}" + (f" ({reason})" if reason else ""),
        trigger="swarm",
        cause=cut(reason),
        result=result,  # type: ignore[arg-type]
        revision=revision[:12],
    )
