"""Why a step is needed, as data on the action (`Action.cause`): its kind, the line `plan` and
the logs print, and the field diff behind it. Built by the planners (core.plan_slots,
core.swarm_plan); read by `plan`, `plan --json`, the daemon's log lines and the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.core.spec_diff import FieldChange, fields_text

CauseKind = Literal[
    "missing",  # it does not exist
    "spec_changed",  # the file asks something else of it (the changes say what)
    "image_moved",  # a followed tag now names another digest
    "drift",  # changed by hand (Swarm): put back
    "exited",  # stopped: exit code (and OOM kill)
    "unhealthy",  # its healthcheck fails
    "dead",  # Docker marked it dead
    "other",  # every other step: the text says it
]
SIGNALS = {130: "SIGINT", 137: "SIGKILL", 143: "SIGTERM", 134: "SIGABRT", 139: "SIGSEGV"}


@dataclass(frozen=True, slots=True)
class Cause:
    """The real cause of one step."""

    kind: CauseKind
    text: str
    changes: tuple[FieldChange, ...] = ()

    def __str__(self) -> str:
        return self.text


def of(reason: str) -> Cause:
    """A step whose reason is all there is to say (a drain, a rename, a removal...)."""
    return Cause("missing" if reason == "missing" else "other", reason)


MISSING = Cause("missing", "missing")


def spec_changed(changes: tuple[FieldChange, ...]) -> Cause:
    """`spec changed: environment.A, image`; `image tag moved to sha256:...` when the only
    change is the digest a followed tag is pinned to."""
    if len(changes) == 1 and changes[0].field == "image":
        moved = _moved(changes[0])
        if moved:
            return Cause("image_moved", f"image tag moved to {moved}", changes)
    if not changes:  # made before its spec was kept in a label: the fields are not known
        return Cause("spec_changed", "spec changed")
    return Cause("spec_changed", f"spec changed: {fields_text(changes)}", changes)


def _moved(change: FieldChange) -> str:
    """The new digest when both images are one tag pinned to two digests."""
    old, new = change.old, change.new
    if not (isinstance(old, str) and isinstance(new, str)):
        return ""
    (old_ref, _, old_digest), (new_ref, _, new_digest) = old.partition("@"), new.partition("@")
    if old_ref == new_ref and new_digest and old_digest != new_digest:
        return new_digest[:19] + "..."
    return ""


def exited(code: int | None, oom_killed: bool = False) -> Cause:
    """`exited 137 (OOM killed)`, `exited 143 (SIGTERM)`, `exited 1`."""
    if code is None:
        return Cause("exited", "exited")
    if oom_killed:
        return Cause("exited", f"exited {code} (OOM killed)")
    signal = SIGNALS.get(code)
    return Cause("exited", f"exited {code} ({signal})" if signal else f"exited {code}")


def unhealthy(for_s: float | None) -> Cause:
    """`unhealthy for 31 s` (or `unhealthy` when nobody saw it turn)."""
    if for_s is None:
        return Cause("unhealthy", "unhealthy")
    return Cause("unhealthy", f"unhealthy for {max(0, round(for_s))} s")


def drift(text: str, changes: tuple[FieldChange, ...] = ()) -> Cause:
    """`drift: scaled to 1 by hand`."""
    return Cause("drift", f"drift: {text}", changes)
