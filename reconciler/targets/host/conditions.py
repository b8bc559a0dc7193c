"""A host service's conditions as events (core.events): its rollout rolled back or paused
(resolved once nothing is held for the service and its replicas run the file's revision), a
completed rollout, replicas in crash loop at the back-off cap, and an image update rolled out.
Each transition once; a held revision found in rollouts.json fires again after a restart.
Owned by the controller's `ServiceMetrics` and `ImageFollower`, which call it after a pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from reconciler.core import rollout as ro
from reconciler.core.desired import HealPolicy, ServiceSpec
from reconciler.core.events import Event, EventKind, Record, discard
from reconciler.core.healing import HealingBook
from reconciler.core.observed import ObservedContainer
from reconciler.ops.firing_memory import AFTER_RESTART, FiringMemory


def runs_revision(svc: ServiceSpec, containers: Iterable[ObservedContainer]) -> bool:
    """Every replica the file asks for exists on the file's spec (and no other is left)."""
    live = {c.name: c.spec_hash for c in containers}
    wanted = {spec.name: spec.spec_hash for spec in svc.replicas}
    return live == wanted


def held_kind(svc: ServiceSpec, record: ro.RolloutRecord) -> EventKind | None:
    """The condition a rollout record holds for the file's revision (None: nothing held)."""
    failed = record.failed_revision == svc.revision
    paused = record.paused_revision == svc.revision
    if failed and paused:
        return "rollout_failed"  # the rollback failed too
    if failed:
        return "rolled_back" if record.stable else "rollout_failed"
    if paused:
        return "paused" if svc.update.failure_action == "pause" else "rollout_failed"
    return None


def at_cap(heal: HealPolicy, failures: int) -> bool:
    """A replica's crash-loop back-off has grown to its cap (`backoff_max`)."""
    if failures <= 1:
        return False
    return heal.backoff_initial_s * 2 ** (failures - 2) >= heal.backoff_max_s


_TEXT: dict[str, str] = {
    "rolled_back": "the rollout of {service} to revision {rev} failed; rolling back",
    "paused": "the rollout of {service} to revision {rev} is paused",
    "rollout_failed": "the rollout of {service} to revision {rev} failed and is held",
}


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
        self._derived: set[str] = set()  # services whose record was read for what it holds
        self._memory: FiringMemory | None = None
        self._carried: set[str] = set()  # services whose firing an earlier run told

    def keep_in(self, memory: FiringMemory) -> None:
        """The daemon: what fires is kept there, and what an earlier run left firing is
        taken up again (resolved when it clears, like any other)."""
        self._memory = memory
        for key, value in memory.all().items():
            what, _, service = key.partition(":")
            with self._lock:
                if what == "rollout" and value.get("kind") in _TEXT:
                    kind: EventKind = value["kind"]  # type: ignore[assignment]
                    self._rollout[service] = (kind, value.get("revision", ""))
                elif what == "crash_loop" and value.get("replicas"):
                    self._looping[service] = frozenset(value["replicas"].split(","))
                else:
                    continue
                self._carried.add(service)

    def _save(self, service: str) -> None:
        if self._memory is None:
            return
        with self._lock:
            rollout = self._rollout.get(service)
            looping = self._looping.get(service, frozenset())
        self._memory.put(
            f"rollout:{service}", {"kind": rollout[0], "revision": rollout[1]} if rollout else {}
        )
        replicas = ",".join(sorted(looping))
        self._memory.put(f"crash_loop:{service}", {"replicas": replicas} if replicas else {})

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
            self._save(service)
            if before is not None and before[0] != kind:
                self._resolve(service, before, f"now {kind.replace('_', ' ')}")
            text = _TEXT[kind].format(service=service, rev=rev[:12])
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
        self,
        svc: ServiceSpec,
        record: ro.RolloutRecord,
        books: Mapping[str, HealingBook],
        containers: Iterable[ObservedContainer] | None = None,
    ) -> None:
        """After a pass: the rollout condition (`look`); crash loops."""
        if containers is not None:
            self.look(svc, record, containers)
        book = books.get(svc.name, HealingBook())
        names = {c.name for c in svc.replicas}
        at = {
            key.removeprefix("container:"): b
            for key, b in list(book.backoffs.items())
            if key.removeprefix("container:") in names
            and b.seen_finish is not None
            and at_cap(svc.heal, b.failures)
        }
        causes = {b.cause for b in at.values() if b.cause}
        self.crash_loops(svc.name, frozenset(at), svc.heal.backoff_max_s, "; ".join(sorted(causes)))

    def look(
        self, svc: ServiceSpec, record: ro.RolloutRecord, containers: Iterable[ObservedContainer]
    ) -> None:
        """The service's rollout condition from its record (`ro.refresh`ed) and replicas: a
        firing one resolves once nothing is held and the file's revision runs; the daemon's
        first look (`keep_in`) fires what rollouts.json still holds."""
        record = ro.refresh(record, svc)
        kind = held_kind(svc, record)
        with self._lock:
            first = svc.name not in self._derived and self._memory is not None  # the daemon
            self._derived.add(svc.name)
            firing = self._rollout.get(svc.name)
            if kind is not None and firing is not None and svc.name in self._carried:
                kind = firing[0]  # as the run before judged it (from the rollout's events)
            refire = first and kind is not None and (firing is None or svc.name in self._carried)
            if refire and kind is not None:
                self._rollout[svc.name] = (kind, svc.revision)
        if refire and kind is not None:
            self._save(svc.name)
            reason = record.failed_reason or record.paused_reason
            self.record(
                Event(
                    kind,
                    service=svc.name,
                    message=f"{_TEXT[kind].format(service=svc.name, rev=svc.revision[:12])} "
                    "(found held at start)",
                    cause=reason,
                    revision=svc.revision,
                    result="firing",
                )
            )
        elif firing is not None and kind is None and runs_revision(svc, containers):
            self._clear_rollout(
                svc.name, f"its replicas run revision {svc.revision[:12]}", svc.revision
            )

    def gone(self, wanted: Iterable[str]) -> None:
        """Services no longer in the file: what they fire is resolved."""
        keep = set(wanted)
        with self._lock:
            names = (self._rollout.keys() | self._looping.keys()) - keep
            self._derived &= keep
        for name in sorted(names):
            self._clear_rollout(name, "it left the file", "")
            with self._lock:
                looping = self._looping.pop(name, frozenset())
            self._save(name)
            if looping:
                self.record(
                    Event(
                        "crash_loop",
                        service=name,
                        message=f"{name} left the file",
                        result="resolved",
                        data=self._after_restart(name),
                    )
                )

    def crash_loops(
        self, service: str, looping: frozenset[str], cap: float, cause: str = ""
    ) -> None:
        """The replicas at the back-off cap now (`cause`: their last failures)."""
        with self._lock:
            before = self._looping.get(service, frozenset())
            self._looping[service] = looping
        if looping != before:
            self._save(service)
        if looping and not before:
            names = sorted(looping)
            verb = "keeps failing" if len(names) == 1 else "keep failing"
            trigger, seen = self.context(service, names[0])
            cause = cause or seen
            self.record(
                Event(
                    "crash_loop",
                    service=service,
                    trigger=trigger,
                    message=f"{', '.join(names)} {verb}; restarts wait {cap:g} s "
                    "(the back-off cap)",
                    replica=names[0],
                    cause=cause,
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
                    data=self._after_restart(service),
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
            self._save(service)
            self._resolve(service, before, why, revision)

    def _after_restart(self, service: str) -> dict[str, str]:
        """A resolved event's data: marked while an earlier run's firing is still carried
        (the notifications then tell it resolved although this run never told it firing)."""
        with self._lock:
            carried = service in self._carried
            if service not in self._rollout and service not in self._looping:
                self._carried.discard(service)
        return {AFTER_RESTART: "yes"} if carried else {}

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
                data=self._after_restart(service),
            )
        )
