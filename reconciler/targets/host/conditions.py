"""A host service's conditions as events (core.events): its rollout rolled back or paused
(resolved once the file's revision runs, or the file moves on), a completed rollout, replicas
in crash loop at the back-off cap, and an image update rolled out. Each transition once.
Owned by the controller's `ServiceMetrics` and `ImageFollower`, which call it after a pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from reconciler.core import rollout as ro
from reconciler.core.desired import HealPolicy, ServiceSpec
from reconciler.core.events import Event, EventKind, Record, discard
from reconciler.core.healing import HealingBook


def at_cap(heal: HealPolicy, failures: int) -> bool:
    """A replica's crash-loop back-off has grown to its cap (`backoff_max`)."""
    if failures <= 1:
        return False
    return heal.backoff_initial_s * 2 ** (failures - 2) >= heal.backoff_max_s


class HostConditions:
    """Per service: which conditions fire now; `record` hears each change."""

    def __init__(self, record: Record = discard) -> None:
        self.record = record
        self._lock = threading.Lock()
        self._rollout: dict[str, tuple[EventKind, str]] = {}  # service -> (kind, rev) firing
        self._looping: dict[str, frozenset[str]] = {}  # service -> replicas at the cap
        # (service, replica) -> (trigger, cause) of a crash loop: what asked for the pass that
        # saw it, the replica's last exit (set by ServiceMetrics from its Recording)
        self.context: Callable[[str, str], tuple[str, str]] = lambda service, replica: ("", "")

    def rollout_event(
        self,
        service: str,
        event: ro.RolloutEvent,
        pause_chosen: bool = False,
        trigger: str = "",
        file_revision: str = "",
    ) -> None:
        """A rollout's end: completed (news; clears what fired), rolled back, paused (the
        file's `failure_action: pause`, `pause_chosen`) or failed (paused with nothing to
        return to: no stable revision, or the rollback failed too). Its row's revision is
        the file's (`file_revision`, beside `trigger`), the service's is in its data."""
        rev = event.revision
        data = {"service_revision": rev[:12]}
        if event.kind == "completed":
            self._clear_rollout(service, f"revision {rev[:12]} rolled out", rev)
            self.record(
                Event(
                    "rollout_completed",
                    service=service,
                    message=f"every replica of {service} runs revision {rev[:12]}",
                    trigger=trigger,
                    cause=event.reason,
                    revision=file_revision or rev,
                    data=data,
                )
            )
        elif event.kind in ("rolled_back", "paused"):
            with self._lock:
                before = self._rollout.get(service)
                kind: EventKind = "rolled_back" if event.kind == "rolled_back" else "paused"
                rollback_failed = before is not None and before[0] == "rolled_back"
                if kind == "paused" and (rollback_failed or not pause_chosen):
                    kind = "rollout_failed"
                self._rollout[service] = (kind, rev)
            if before is not None and before[0] != kind:
                self._resolve(service, before, f"now {kind.replace('_', ' ')}")
            text = {
                "rolled_back": f"the rollout of {service} to revision {rev[:12]} failed; "
                "rolling back",
                "paused": f"the rollout of {service} to revision {rev[:12]} is paused",
                "rollout_failed": f"the rollout of {service} to revision {rev[:12]} failed "
                "and is held",
            }[kind]
            self.record(
                Event(
                    kind,
                    service=service,
                    message=text,
                    trigger=trigger,
                    cause=event.reason,
                    revision=file_revision or rev,
                    data=data,
                    result="firing",
                )
            )

    def service(
        self, svc: ServiceSpec, record: ro.RolloutRecord, books: Mapping[str, HealingBook]
    ) -> None:
        """After a pass: a rollback or pause the file moved past clears; crash loops."""
        with self._lock:
            firing = self._rollout.get(svc.name)
        held = {record.failed_revision, record.paused_revision} - {""}
        if firing is not None and firing[1] not in held:
            self._clear_rollout(svc.name, "the file no longer asks for that revision", "")
        book = books.get(svc.name, HealingBook())
        names = {c.name for c in svc.replicas}
        looping = frozenset(
            key.removeprefix("container:")
            for key, b in list(book.backoffs.items())
            if key.removeprefix("container:") in names
            and b.seen_finish is not None
            and at_cap(svc.heal, b.failures)
        )
        self.crash_loops(svc.name, looping, svc.heal.backoff_max_s)

    def crash_loops(self, service: str, looping: frozenset[str], cap: float) -> None:
        with self._lock:
            before = self._looping.get(service, frozenset())
            self._looping[service] = looping
        if looping and not before:
            trigger, cause = self.context(service, sorted(looping)[0])
            self.record(
                Event(
                    "crash_loop",
                    service=service,
                    trigger=trigger,
                    cause=cause,
                    message=f"{', '.join(sorted(looping))} keep exiting; restarts wait {cap:g} s "
                    "(the back-off cap)",
                    replica=sorted(looping)[0],
                    result="firing",
                )
            )
        elif before and not looping:
            self.record(
                Event(
                    "crash_loop",
                    service=service,
                    message=f"{service}'s replicas stopped crash-looping",
                    result="resolved",
                )
            )

    def image_updated(self, service: str, image: str, digest: str, revision: str = "") -> None:
        """A followed tag moved and its rollout completed."""
        self.record(
            Event(
                "image_update",
                service=service,
                message=f"{image} moved to {digest[:19]}; rolled out",
                trigger="image digest",
                revision=revision,
                data={"image": image, "digest": digest},
            )
        )

    def _clear_rollout(self, service: str, why: str, revision: str) -> None:
        with self._lock:
            before = self._rollout.pop(service, None)
        if before is not None:
            self._resolve(service, before, why, revision)

    def _resolve(
        self, service: str, before: tuple[EventKind, str], why: str, revision: str = ""
    ) -> None:
        self.record(
            Event(
                before[0],
                service=service,
                message=f"{service}: {why}",
                revision=revision or before[1],
                result="resolved",
            )
        )
