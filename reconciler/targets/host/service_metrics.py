"""What the controller tells: each action's log line and counters (a heal counted by its
reason), rollout events, and per service the replica rows, rollout and crash-loop gauges.
Owned by the `Controller`; called from its workers, the apply pool and the heal pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog

from reconciler.core import rollout as ro
from reconciler.core.action_events import REMOVALS, replica_of
from reconciler.core.actions import (
    STARTS_OF_CREATION,
    ConnectNetwork,
    CreateContainer,
    EnsureImage,
    RemoveContainer,
    RestartContainer,
    StartContainer,
    UnpauseContainer,
)
from reconciler.core.actions import HostAction as Action
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.events import Record, discard
from reconciler.core.healing import HealingBook
from reconciler.core.observed import ObservedContainer
from reconciler.targets.host.conditions import HostConditions
from reconciler.targets.host.executor import StepResult
from reconciler.targets.host.recording import Recording

if TYPE_CHECKING:  # prometheus_client is imported only where metrics are served
    from reconciler.ops.metrics import Metrics
    from reconciler.ops.state_store import JsonStore

log = structlog.get_logger("reconciler")


class ServiceMetrics:
    """Reports actions and rollouts (logs, `on_result`, metrics) and keeps the gauges."""

    def __init__(
        self,
        metrics: Metrics | None,
        *,
        desired: Callable[[], DesiredState],
        books: Callable[[], Mapping[str, HealingBook]],
        clock: Callable[[], float],
        on_result: Callable[[StepResult], None],
        record: Record = discard,
        restarts: JsonStore[int] | None = None,
    ) -> None:
        """`restarts`: where the heals of each replica are kept across daemon restarts."""
        self.metrics = metrics
        self._kept = restarts
        self._desired = desired
        self._books = books
        self._clock = clock
        self._on_result = on_result
        self.conditions = HostConditions(record)  # what may notify (core.events)
        self._known: set[str] = set()  # container names seen: a create is then a heal
        # replica -> heals that brought it back (status's RESTARTS), kept across restarts
        self._restarts: dict[str, int] = restarts.all() if restarts is not None else {}
        self._rows: dict[str, tuple[str, int, int, int]] = {}
        self._lock = threading.Lock()  # the rows: several services' workers share them
        self.recording = Recording(record, lambda: self._desired().digest)  # the history's
        self.conditions.context = self.recording.context  # a crash loop's trigger and cause

    def note_created(self, name: str) -> None:
        """A replica was created under its own name: creating it again is a heal."""
        self._known.add(name)

    # ------------------------------------------------------------------ actions

    def report(self, r: StepResult, *, job: bool = False, trigger: str | None = None) -> None:
        """One step's result: its log line, `on_result`, counters (`job`: a pull or build
        reported by its image key; `trigger`: what asked for the pass that took it, when
        that pass is over already: a fast heal's)."""
        a = r.action
        if isinstance(a, EnsureImage) and not job and r.outcome in ("success", "waiting"):
            return  # the image was there, or its pull is queued: the pull itself reports
        if r.shared:
            return  # another service's worker did it, and reported it (once)
        service = a.service
        fields = {
            "service": service,
            "container": a.name if a.kind == "container" else None,
            "object": a.name if a.kind != "container" else None,
            "action": a.verb,
            "kind": a.kind,
            "reason": a.reason,
            "duration_ms": round(r.duration_s * 1000, 1),
            "result": r.outcome,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if r.outcome == "success":
            log.info("action", **fields)
        elif r.outcome == "waiting":
            log.info("action", note=r.error, **fields)
        else:
            log.warning("action", error=r.error, **fields)
        self._on_result(r)
        reason = self._heal_reason(a)
        self.recording.step(r, reason, job=job, trigger=trigger)
        if reason in ("exited", "unhealthy", "dead") and r.outcome == "success":
            with self._lock:  # `status`'s RESTARTS: ours, beside Docker's RestartCount
                replica = replica_of(a)
                self._restarts[replica] = n = self._restarts.get(replica, 0) + 1
                if self._kept is not None:
                    self._kept.put(replica, n)
        elif isinstance(a, RemoveContainer) and a.reason in REMOVALS and r.outcome == "success":
            with self._lock:  # the replica is gone (scaled down, down): a new one starts at 0
                self._known.discard(a.name)  # and scaling up again creates it: no heal
                self._restarts.pop(a.name, None)
                if self._kept is not None:
                    self._kept.drop(a.name)
        if self.metrics and r.outcome in ("success", "error"):
            self.metrics.actions.labels(a.verb, a.kind, r.outcome).inc()
            if r.outcome == "error":
                self.metrics.docker_errors.labels(f"{a.verb}_{a.kind}").inc()
            if reason and r.outcome == "success" and service:
                self.metrics.heals.labels(service, reason).inc()

    def _heal_reason(self, a: Action) -> str | None:
        match a:
            case StartContainer(reason=reason) if reason not in STARTS_OF_CREATION and not (
                ro.is_temp_name(a.name) or reason.startswith("replaces")
            ):
                return "exited"
            case RestartContainer():
                return "unhealthy"
            case UnpauseContainer():
                return "paused"
            case CreateContainer(reason="dead"):
                return "dead"
            case CreateContainer(spec=spec, as_name=None) if spec.name in self._known:
                return "removed"
            case ConnectNetwork(reconnect=False):
                return "network"
        return None

    def count_update(self, service: str, result: str) -> None:
        """A followed tag's check or update: unchanged, updated, rolled_back, paused, error."""
        if self.metrics:
            self.metrics.image_updates.labels(service, result).inc()

    # ------------------------------------------------------------------ services

    def rollout_event(
        self, service: str, event: ro.RolloutEvent, changes: list[str] | None = None
    ) -> None:
        """A rollout's log line (`changes`: its field diff, on `rollout started`)."""
        fields = {"service": service, "revision": event.revision[:12]}
        match event.kind:
            case "started":
                log.info("rollout started", changes=changes or [], **fields)
            case "completed":
                log.info("rollout completed", note=event.reason or None, **fields)
            case "failure":
                log.warning("rollout: a new replica failed", reason=event.reason, **fields)
            case "rolled_back":
                log.warning("rollout failed; rolling back", reason=event.reason, **fields)
            case "rollback_completed":
                log.info("rollback completed", **fields)
            case "paused":
                log.warning("rollout paused", reason=event.reason, **fields)
        trigger = self.recording.rollout(service, event, changes)
        svc = next((s for s in self._desired().services if s.name == service), None)
        chosen = svc is not None and svc.update.failure_action == "pause"
        self.conditions.rollout_event(
            service,
            event,
            pause_chosen=chosen,
            trigger=trigger,
            file_revision=self._desired().digest[:12],
        )
        if self.metrics and event.kind in ("completed", "rolled_back", "paused"):
            self.metrics.rollout_finished(service, event.kind)

    def service(
        self,
        svc: ServiceSpec,
        target: ServiceSpec,
        containers: tuple[ObservedContainer, ...],
        record: ro.RolloutRecord,
    ) -> None:
        """After a service's reconcile: its replica row, rollout and crash-loop gauges."""
        self.conditions.service(svc, record, self._books(), containers)
        if self.metrics is None:
            return
        live = {c.name: c for c in containers}
        cs = [live[c.name] for c in target.replicas if c.name in live]
        running = sum(1 for c in cs if c.state == "running")
        healthy = sum(1 for c in cs if c.state == "running" and c.health in (None, "healthy"))
        rolling = bool(record.rolling_revision) or (
            record.failed_revision == svc.revision and not ro.converged(target, containers)
        )
        with self._lock:
            self._rows[svc.name] = (svc.name, len(svc.replicas), running, healthy)
            wanted = {s.name for s in self._desired().services}
            rows = [row for name, row in self._rows.items() if name in wanted]
            self.metrics.set_replicas(rows)
            self.metrics.set_rollout(svc.name, rolling)
            loops = sum(
                1 for _ in self._books().get(svc.name, HealingBook()).crashlooping(self._clock())
            )
            self.metrics.crashloop.labels(svc.name).set(loops)

    def restarts(self) -> dict[str, dict[str, object]]:
        """Per replica, how often a heal restarted it (for `reconciler status`)."""
        with self._lock:
            return {name: {"count": n} for name, n in self._restarts.items()}

    def crashloops(self) -> dict[str, dict[str, object]]:
        """Replicas in crash-loop back-off, for `reconciler status` (JSON-ready)."""
        now = self._clock()
        out: dict[str, dict[str, object]] = {}
        for book in list(self._books().values()):
            out |= book.snapshot(now)
        return out
