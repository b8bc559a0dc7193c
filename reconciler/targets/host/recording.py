"""The host's share of the event stream (core.events): each executed step, rollout change and
moved tag as an `Event`, with what asked for the pass that took it. Owned by `ServiceMetrics`;
the `Controller` tells it each pass's trigger (`begin`) and what a resync queued (`asked`).
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.core import rollout as ro
from reconciler.core.action_events import TAG_MOVED, event_of, kind_of
from reconciler.core.actions import EnsureImage
from reconciler.core.events import Event, EventKind, Record, Result, trigger_text
from reconciler.targets.host.executor import StepResult

FOLLOW_UP = "backoff"  # a pass the adapter queued itself (a requeue): it inherits its cause

ROLLOUT_KINDS: dict[str, tuple[EventKind, Result]] = {
    "started": ("rollout_started", "success"),
    "failure": ("rollout_step", "error"),
    "rollback_completed": ("rollout_step", "success"),
}


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

    def begin(self, key: str, trigger: str) -> None:
        """A pass of `key` starts. A follow-up (a requeue, a key a resync or a pull queued)
        keeps what started the work: a rollout's later steps say `file edit` too."""
        kind, _, name = key.partition(":")
        if kind not in ("service", "image"):
            return
        if trigger != FOLLOW_UP:
            self._asked.pop(name, None)
            self._current[key] = trigger
        elif kind == "image":  # a pull the service's pass asked for: that pass's cause
            self._current[key] = self._current.get(f"service:{name}", FOLLOW_UP)
        elif name in self._asked:
            self._current[key] = self._asked.pop(name)
        else:
            self._current.setdefault(key, FOLLOW_UP)
        self._last = self._current[key]

    def asked(self, service: str, trigger: str) -> None:
        """A pass with `trigger` (a resync, a moved tag) queued `service`."""
        if trigger != FOLLOW_UP:
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

    def step(
        self,
        r: StepResult,
        heal_reason: str | None = None,
        *,
        job: bool = False,
        trigger: str | None = None,
    ) -> None:
        """One executed step (never a `waiting` one: it did nothing yet)."""
        if r.outcome == "waiting":
            return
        a = r.action
        service = a.service or ""
        data = {}
        if isinstance(a, EnsureImage) and a.reason == TAG_MOVED:
            data["digest"] = self._moved.get(service, "")
        why = trigger or self.trigger(service, image=job and isinstance(a, EnsureImage))
        if trigger is None and service in self._rolling and kind_of(a) == "rollout_step":
            why = self._rolling[service]  # a rollout's later steps: what started it
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
            )
        )

    def rollout(self, service: str, event: ro.RolloutEvent) -> str:
        """A rollout began, failed a replica or finished its rollback: its history row.
        Its ends (completed, rolled back, paused) are the conditions' events (HostConditions),
        one row each; returns the trigger they carry (what started the rollout)."""
        if event.kind == "started":
            self._rolling[service] = self.trigger(service)
        trigger = trigger_text(self._rolling.get(service) or self.trigger(service))
        if event.kind in ("completed", "rolled_back", "paused", "rollback_completed"):
            self._rolling.pop(service, None)
        if event.kind not in ("started", "failure", "rollback_completed"):
            return trigger
        kind, result = ROLLOUT_KINDS[event.kind]
        text = {
            "started": "rollout started",
            "failure": "a new replica failed",
            "rollback_completed": "rollback completed",
        }[event.kind]
        self.record(
            Event(
                kind=kind,
                service=service,
                message=f"{service}: {text}" + (f" ({event.reason})" if event.reason else ""),
                trigger=trigger,
                cause=event.reason,
                result=result,
                revision=self._revision()[:12],
                data={"service_revision": event.revision[:12]},
            )
        )
        return trigger
