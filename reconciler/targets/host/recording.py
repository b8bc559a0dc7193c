"""The host's share of the event stream (core.events): each executed step, rollout change and
moved tag as an `Event`, with what asked for the pass that took it. Owned by `ServiceMetrics`;
the `Controller` tells it each pass's trigger (`begin`), what a resync queued (`asked`), the
deaths the engine announced (`died`) and each service pass's rollout (`under_way`, `kept`).

The rule: a step's trigger is what asked for the pass that took it (a fast heal: the pass that
handed it to the heal pool, never a later one). Work that spans passes keeps what started it:
a rollout's steps and its rollback (persisted in the rollout record, so after a restart too),
a replica's removal after its drain, and a heal of a death the engine's event announced, even
when a resync's pass is the one that gets to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from reconciler.core import rollout as ro
from reconciler.core.action_events import TAG_MOVED, cut, event_of, kind_of, replica_of
from reconciler.core.actions import EnsureImage, RemoveContainer
from reconciler.core.events import FOLLOW_UPS, Event, EventKind, Record, Result, trigger_text
from reconciler.targets.host.executor import StepResult

FOLLOW_UP = "requeue"  # a pass the adapter queued itself: it inherits its cause

ROLLOUT_KINDS: dict[str, tuple[EventKind, Result]] = {
    "started": ("rollout_started", "success"),
    "failure": ("rollout_step", "error"),
    "rollback_completed": ("rollback", "success"),
}
HEALS = ("heal", "recreate")
PASSING = (
    "interval",
    "start",
    *FOLLOW_UPS,
)  # triggers that only looked: an announced death outranks them


class Recording:
    """Turns the host's results into Events on `record`, with each pass's trigger."""

    def __init__(self, record: Record, revision: Callable[[], str]) -> None:
        self.record = record
        self._revision = revision  # the desired state's digest now
        self._asked: dict[str, str] = {}  # service -> what the resync that queued it was for
        self._current: dict[str, str] = {}  # service -> the trigger of its last pass
        self._moved: dict[str, str] = {}  # service -> the digest its followed tag moved to
        self._last = FOLLOW_UP  # the trigger of the latest pass (for a network or volume)
        self._rolling: dict[str, str] = {}  # service -> what started its rollout under way
        self._rolling_back: set[str] = set()  # services whose pass returns to the stable spec
        self._died: dict[str, str] = {}  # replica -> container id a `die` event announced
        self._removing: dict[str, str] = {}  # replica -> what started its removal (its drain)
        self._healed: dict[str, str] = {}  # replica -> the cause of its last heal

    def begin(self, key: str, trigger: str) -> None:
        """A pass of `key` starts. A follow-up (a requeue, a key a resync or a pull queued)
        keeps what started the work: a rollout's later steps say `file edit` too."""
        kind, _, name = key.partition(":")
        if kind not in ("service", "image"):
            return
        if kind == "service" and trigger in PASSING and name in self._asked:
            self._current[key] = self._asked.pop(name)  # a resync or a moved tag queued it
        elif trigger not in FOLLOW_UPS:
            self._asked.pop(name, None)
            self._current[key] = trigger
        elif kind == "image":  # a pull the service's pass asked for: that pass's cause
            self._current[key] = self._current.get(f"service:{name}", FOLLOW_UP)
        else:
            self._current.setdefault(key, FOLLOW_UP)
        self._last = self._current[key]

    def asked(self, service: str, trigger: str) -> None:
        """A pass with `trigger` (a resync, a moved tag) queued `service`."""
        if trigger not in FOLLOW_UPS:
            self._asked[service] = trigger

    def trigger(self, service: str, *, image: bool = False) -> str:
        """What asked for the pass of `service` under way ("": a network or a volume, which
        belong to no one service: the latest pass's)."""
        if not service:
            return self._last
        return self._current.get(f"{'image' if image else 'service'}:{service}", FOLLOW_UP)

    def tag_moved(self, service: str, digest: str) -> None:
        """A followed tag moved: its pull, and the rollout after it, say `image digest`."""
        self._moved[service] = digest
        self._current[f"image:{service}"] = "image"
        self.asked(service, "image")

    def died(self, replica: str, container_id: str) -> None:
        """The engine announced a replica's death (`die`): its heal says `engine event`."""
        if replica:
            self._died[replica] = container_id

    def started(self, container_id: str) -> None:
        """A container started (its `start` event): a death it announced is over."""
        for replica, cid in list(self._died.items()):
            if cid == container_id:
                self._died.pop(replica, None)

    def under_way(self, service: str, record: ro.RolloutRecord, mode: ro.Mode) -> None:
        """A service pass is about to act on `record` (as read from the store): a rollout
        under way keeps what started it (after a restart, from the record); a pass in rollback
        records its steps as `rollback`."""
        if record.rolling_revision and record.trigger:
            self._rolling.setdefault(service, record.trigger)
        if mode == "rolled_back" and record.rolling_revision:
            self._rolling_back.add(service)
        else:
            self._rolling_back.discard(service)

    def kept(
        self, service: str, record: ro.RolloutRecord, events: Sequence[ro.RolloutEvent]
    ) -> ro.RolloutRecord:
        """`record` as stored after a pass: with the trigger of its rollout while one (or its
        rollback) is under way, so that a restarted daemon says what started it."""
        if not record.rolling_revision:
            return replace(record, trigger="") if record.trigger else record
        if any(e.kind == "started" for e in events):
            why = self.trigger(service)
        else:
            why = record.trigger or self._rolling.get(service) or self.trigger(service)
        return record if record.trigger == why else replace(record, trigger=why)

    def context(self, service: str, replica: str) -> tuple[str, str]:
        """(trigger, cause) for a condition a service pass noticed (a crash loop): what
        asked for that pass, and the cause of the replica's last heal."""
        return trigger_text(self.trigger(service)), self._healed.get(replica, "")

    def step(
        self,
        r: StepResult,
        heal_reason: str | None = None,
        *,
        job: bool = False,
        trigger: str | None = None,
    ) -> None:
        """One executed step (never a `waiting` one: it did nothing yet). `trigger`: what
        asked for the pass that took it, when the caller knows it better (a fast heal, down)."""
        if r.outcome == "waiting":
            return
        a = r.action
        service = a.service or ""
        replica = replica_of(a)
        data = {}
        if isinstance(a, EnsureImage) and a.reason == TAG_MOVED:
            data["digest"] = self._moved.get(service, "")
        why = trigger or self.trigger(service, image=job and isinstance(a, EnsureImage))
        kind = kind_of(a, heal_reason)
        if trigger is None and service in self._rolling_back and kind != "pull":
            kind = "rollback"  # a start, reconnect or removal on the way back is the rollback's
            why = self._rolling.get(service, why)
        elif trigger is None and service in self._rolling and kind in ("rollout_step", "rollback"):
            why = self._rolling[service]  # a rollout's later steps: what started it
        if kind in HEALS and why in PASSING and replica in self._died:
            why = "event"  # the engine announced this death first
        if kind == "remove" and replica:
            why = self._removing.setdefault(replica, why)  # its drain's trigger
            if isinstance(a, RemoveContainer) and r.outcome == "success":
                self._removing.pop(replica, None)
        if replica:
            self._died.pop(replica, None)
            if kind in HEALS:
                self._healed[replica] = cut(str(a.cause))
        self.record(
            event_of(
                a,
                r.outcome,
                trigger=why,
                error=r.error,
                duration_s=r.duration_s,
                revision=self._revision(),
                heal_reason=heal_reason,
                data=data,
                kind=kind,
            )
        )

    def rollout(
        self, service: str, event: ro.RolloutEvent, changes: Sequence[str] | None = None
    ) -> str:
        """A rollout began (`changes`: its field diff), failed a replica or finished its
        rollback: its history row. Its ends (completed, rolled back, paused) are the
        conditions' events (HostConditions), one row each; returns the trigger they carry
        (what started the rollout)."""
        if event.kind == "started":
            self._rolling[service] = self.trigger(service)
        trigger = trigger_text(self._rolling.get(service) or self.trigger(service))
        if event.kind in ("completed", "paused", "rollback_completed"):
            self._rolling.pop(service, None)  # a rollback keeps it: its steps are the rollout's
        if event.kind not in ("started", "failure", "rollback_completed"):
            return trigger
        kind, result = ROLLOUT_KINDS[event.kind]
        text = {
            "started": "rollout started",
            "failure": "a new replica failed",
            "rollback_completed": "rollback completed",
        }[event.kind]
        data = {"service_revision": event.revision[:12]}
        if event.kind == "started" and changes:
            data["diff"] = cut("; ".join(changes))
        self.record(
            Event(
                kind=kind,
                service=service,
                message=f"{service}: {text}" + (f" ({event.reason})" if event.reason else ""),
                trigger=trigger,
                cause=event.reason,
                result=result,
                revision=self._revision()[:12],
                data=data,
            )
        )
        return trigger
