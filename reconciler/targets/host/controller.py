"""Reconciles one key of one project: `resync`, `service:NAME` or `image:NAME`.

Called by the workers of a `WorkQueue` (the daemon, and `reconciler apply`): a key is
never handled by two workers at once, so each service's bookkeeping is its own. Nothing
here waits: a rollout monitor, a drain, a back-off or a pull in progress is a requeue
(`Outcome.requeue_after`). Pulls and builds run under their own keys, with a deadline
(`ImageFollower`); a replica that just died may be started by a `FastHeal`; what is
reported and measured is `ServiceMetrics`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from reconciler.core import rollout as ro
from reconciler.core.actions import (
    CheckConfig,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    EnsureImage,
    Plan,
    SignalContainer,
    StartContainer,
)
from reconciler.core.actions import HostAction as Action
from reconciler.core.desired import DesiredState, HealPolicy, ServiceSpec
from reconciler.core.events import FOLLOW_UPS, Record, discard
from reconciler.core.healing import HealingBook
from reconciler.core.notes import Note
from reconciler.core.observed import ObservedContainer
from reconciler.core.plan_explain import WAIT_KINDS
from reconciler.core.planner import Holds, foreign_namespaces, plan
from reconciler.engine.host.engine import Engine
from reconciler.errors import EngineUnavailable
from reconciler.ops.state_store import StateStore
from reconciler.targets.base import RESYNC, Outcome, image_key, service_key
from reconciler.targets.host.config_checks import ConfigChecks
from reconciler.targets.host.executor import DoneElsewhere, StepResult, apply
from reconciler.targets.host.explain import rollout_diff
from reconciler.targets.host.fast_heal import FastHeal
from reconciler.targets.host.image_follower import ImageFollower
from reconciler.targets.host.image_ledger import ImageLedger
from reconciler.targets.host.outcome import outcome_of
from reconciler.targets.host.runs import Exit, Runs
from reconciler.targets.host.service_metrics import ServiceMetrics
from reconciler.targets.host.service_view import (
    containers_of,
    image_gone,
    keys_of,
    outside,
    ready,
    restrict,
    without_project_objects,
)
from reconciler.targets.host.snapshots import VolumeSnapshots

if TYPE_CHECKING:  # prometheus_client is imported only where metrics are served
    from reconciler.ops.metrics import Metrics

__all__ = ["RESYNC", "Controller", "Exit", "Outcome", "image_key", "service_key"]

log = structlog.get_logger("reconciler")

HEALTH_RECHECK_S = 1.0


class Controller:
    """Keeps one project converged, one key at a time."""

    def __init__(
        self,
        engine: Engine,
        desired: DesiredState,
        store: StateStore,
        *,
        metrics: Metrics | None = None,
        enqueue: Callable[[str, float], None] = lambda key, delay: None,
        clock: Callable[[], float] = time.time,
        workers: int = 16,
        pull_timeout_s: float = 600.0,
        cancelled: Callable[[], bool] = lambda: False,
        on_result: Callable[[StepResult], None] | None = None,
        on_note: Callable[[Note], None] = lambda note: None,
        follow_tags: bool = False,
        ledger: ImageLedger | None = None,
        record: Record = discard,
        snapshots: VolumeSnapshots | None = None,
        image_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.desired = desired
        self.snapshots = snapshots  # volume snapshots around rollouts (opt-in)
        self.store = store
        self.metrics = metrics
        self.enqueue = enqueue  # callers may set it later (their queue): always called late
        self.clock = clock
        self.workers = workers
        self.pull_timeout_s = pull_timeout_s
        self.cancelled = cancelled
        self.on_result = on_result
        self.on_note = on_note
        self.books: dict[str, HealingBook] = {}
        self.waits: dict[str, tuple[str, ...]] = {}  # service -> its held steps, last pass
        self._drained: dict[str, dict[str, float]] = {}  # service -> container id -> until
        # Services gone from the file are left alone while set (the daemon, when it starts on
        # a file that has just changed: two-step edits).
        self.hold_removals = False
        self._known_volumes: set[str] = set()
        self._infra_lock = threading.Lock()
        self.runs = Runs(engine)
        self.checks = ConfigChecks(metrics, record)  # edits a config's `check` refused
        self.reporter = ServiceMetrics(
            metrics,
            desired=lambda: self.desired,
            books=lambda: self.books,
            clock=lambda: self.clock(),
            on_result=self._on_result,
            record=record,
            restarts=store.restarts,  # kept across daemon restarts
        )
        self.images = ImageFollower(
            engine,
            store,
            self.reporter,
            desired=lambda: self.desired,
            book=self._book,
            enqueue=lambda key, delay: self.enqueue(key, delay),
            clock=lambda: self.clock(),
            pull_timeout_s=pull_timeout_s,
            follow_tags=follow_tags,
            ledger=ledger,
            **(image_options or {}),  # x-reconciler.update: states, record, lock file, locked
        )
        self.heals = FastHeal(
            engine,
            self.runs,
            book=self._book,
            apply=lambda p, trigger: self._apply(p, trigger),
            trigger=lambda service: self.reporter.recording.trigger(service),
            after=self._after_heal,
            enqueue=lambda key, delay: self.enqueue(key, delay),
            clock=lambda: self.clock(),
            cancelled=lambda: self.cancelled(),
        )

    # ------------------------------------------------------------------ entry points

    def hint_died(self, service: str, container_id: str, exit: Exit | None = None) -> None:
        """A replica died (Docker event): the next reconcile of its service may start it
        straight away, without a full observe, if nothing else is pending for the service."""
        if exit is not None:
            self.runs.note_died(container_id, exit)
            self.reporter.recording.died(exit.name, container_id)  # its heal: `engine event`
        self.heals.hint_died(service, container_id, exit)

    def note_started(self, container_id: str, at: float) -> None:
        """A container of the project started (Docker event): with the time of its `die`,
        its last run is known without an inspect."""
        self.runs.note_started(container_id, at)
        self.reporter.recording.started(container_id)

    def forget(self, container_id: str) -> None:
        """A container of the project was removed."""
        self.runs.forget(container_id)

    def close(self) -> None:
        """Fast heals not started yet are dropped (the daemon is stopping)."""
        self.heals.close()

    def crashloops(self) -> dict[str, dict[str, object]]:
        """Replicas in crash-loop back-off, for `reconciler status` (JSON-ready)."""
        return self.reporter.crashloops()

    def restarts(self) -> dict[str, dict[str, object]]:
        """Per replica, how often a heal restarted it (for `reconciler status`)."""
        return self.reporter.restarts()

    def tags(self) -> dict[str, dict[str, object]]:
        """The followed tags, for `reconciler status` (JSON-ready)."""
        return self.images.tags()

    def reconcile(self, key: str, trigger: str = "manual") -> Outcome:
        """One reconcile of one key; raise EngineUnavailable if the engine cannot be read."""
        kind, _, name = key.partition(":")
        start = time.monotonic()
        self.reporter.recording.begin(key, trigger)  # what the history says asked
        try:
            if kind == "service":
                outcome = self._service(name)
            elif kind == "image":
                outcome = self.images.reconcile(name)
            else:
                outcome = self._resync(trigger)
        except EngineUnavailable:
            if self.metrics:
                self.metrics.runs.labels("error").inc()
            raise
        level = (
            log.info if outcome.actions or trigger not in ("interval", *FOLLOW_UPS) else log.debug
        )
        level(
            "pass",
            project=self.desired.project,
            key=key,
            trigger=trigger,
            actions=outcome.actions,
            errors=outcome.errors,
            requeue_s=None if outcome.requeue_after is None else round(outcome.requeue_after, 3),
            duration_ms=round((time.monotonic() - start) * 1000, 1),
        )
        if self.metrics and kind != "image":
            m = self.metrics
            m.docker_up.set(1)
            m.runs.labels("error" if outcome.errors else "success").inc()
            m.duration.observe(time.monotonic() - start)
            if not outcome.errors:
                m.last_success.set(self.clock())
        return outcome

    def _book(self, service: str) -> HealingBook:
        return self.books.setdefault(service, HealingBook())

    def _on_result(self, r: StepResult) -> None:
        if self.on_result:
            self.on_result(r)

    def _namespaces(self, desired: DesiredState) -> tuple[dict[str, str], frozenset[str]]:
        """Containers outside the project that a `network_mode: container:X` joins: those
        that exist (name -> id), and the names of which none exists."""
        wanted = foreign_namespaces(desired)
        if not wanted:
            return {}, frozenset()
        found = self.engine.find_containers(wanted)
        return found, wanted - set(found)

    # ------------------------------------------------------------------ resync

    def _resync(self, trigger: str = "interval") -> Outcome:
        """Observe the project once; queue every service that has something to do."""
        desired = self.desired
        observed = self.engine.observe(desired.project)
        now = self.clock()
        drift: dict[str, int] = {}
        for note in plan(desired, observed, Holds(now=now)).notes:
            if note.kind in ("orphaned", "adopted"):
                log.debug("note", project=desired.project, note=str(note))
                self.on_note(note)
        observed = without_project_objects(observed)  # reported above, once
        foreign, absent = self._namespaces(desired)
        self.reporter.conditions.gone(s.name for s in desired.services)
        self.checks.gone(s.name for s in desired.services)
        for svc in map(self.images.pinned, desired.services):
            if svc.name in desired.denied:
                continue  # the host policy denies it: never created nor touched
            self.images.schedule(svc, now)
            target, _, rollout = self._target(svc)
            mine = containers_of(observed, svc.name)
            # A held revision fires (at the start), the file going back to what runs resolves
            # it even when the service has nothing to do.
            self.reporter.conditions.look(svc, self.store.get(svc.name), mine)
            holds = Holds(
                now=now,
                drained=dict(self._drained.get(svc.name, {})),
                rollouts={svc.name: rollout},
                outside=foreign,
                absent=absent,
            )
            p = plan(restrict(desired, target), replace(observed, containers=mine), holds)
            for note in p.notes:
                log.debug("note", project=desired.project, service=svc.name, note=str(note))
                self.on_note(note)
            for a in p.actions:
                drift[a.kind] = drift.get(a.kind, 0) + 1
            if p.steps or p.wake_at or not self.heals.is_quiet(svc.name):
                self.reporter.recording.asked(svc.name, trigger)
                self.enqueue(service_key(svc.name), 0.0)
        wanted = {s.name for s in desired.services} | desired.dormant  # profiles: left alone
        for gone in sorted({c.service for c in observed.containers} - wanted):
            self.reporter.recording.asked(gone, trigger)
            self.enqueue(service_key(gone), 0.0)
            drift["container"] = drift.get("container", 0) + 1
        if self.metrics:
            for kind in ("network", "volume", "image", "container"):
                self.metrics.drift.labels(kind).set(drift.get(kind, 0))
        return Outcome()

    # ------------------------------------------------------------------ services

    def _target(self, svc: ServiceSpec) -> tuple[ServiceSpec, ro.Mode, ro.Rollout]:
        record = ro.refresh(self.store.get(svc.name), svc)
        target, mode = ro.target(svc, record)
        return target, mode, ro.rollout_for(svc, record, mode)

    def _service(self, name: str) -> Outcome:
        desired = self.desired
        svc = next((self.images.pinned(s) for s in desired.services if s.name == name), None)
        if svc is None and self.hold_removals:  # the daemon's start: the file may be half
            return Outcome()  # written; it is read again before anything is removed
        if svc is None and name in desired.dormant:  # a profile not selected: left alone
            return Outcome()
        # Replicas that just died may be started on the heal pool; the full reconcile waits.
        taken = self.heals.take(desired, name, svc)
        if taken is not None:
            return Outcome(busy=taken == "busy")
        now = self.clock()
        observed = without_project_objects(self.engine.observe(desired.project))
        mine = self.runs.with_start_times(name, containers_of(observed, name))
        book = self.books.setdefault(name, HealingBook())
        if name not in self._drained:
            self._drained[name] = self.store.drains(name)  # a crash must not strand a drain
        drained = self._drained[name]

        if svc is None:  # gone from the file: drain and remove what is left of it
            self.reporter.conditions.gone(s.name for s in desired.services)
            sub = DesiredState(desired.project, (), (), ())
            holds = Holds(now=now, drained=dict(drained), outside=outside(observed, name))
            p = plan(sub, replace(observed, containers=mine), holds)
            results = self._apply(p)
            self._after(name, results, book, drained, now, {}, mine)
            self.heals.set_quiet(name, False)
            return outcome_of(p, results, book, now)

        record = ro.refresh(self.store.get(name), svc)
        foreign, absent = self._namespaces(desired)
        target, mode = ro.target(svc, record)
        rollout = ro.rollout_for(svc, record, mode)
        sub = restrict(desired, target)
        sub_observed = replace(observed, containers=mine)
        last_runs = self.runs.last_runs(name, mine)
        oom = {n for n, run in last_runs.items() if run.oom_killed}
        if oom:  # the cause of its restart says so
            mine = tuple(replace(c, oom_killed=c.name in oom) for c in mine)
            sub_observed = replace(observed, containers=mine)
        base = book.holds(sub, sub_observed, last_runs, now)
        holds = replace(
            base,
            now=now,
            ready=ready(desired, observed),
            drained=dict(drained),
            rollouts={name: rollout},
            outside={**foreign, **outside(observed, name)},
            absent=absent,
            rejected=self.checks.rejected(target, mine),
        )
        p = plan(sub, sub_observed, holds)
        for note in p.notes:
            log.debug("note", project=desired.project, service=name, note=str(note))
            self.on_note(note)
        self.waits[name] = tuple(str(n) for n in p.notes if n.kind in WAIT_KINDS)
        self.reporter.recording.under_way(name, record, mode)  # a rollout's, a rollback's
        results = self._apply(p)
        policies = {f"image:{name}": svc.heal} | {
            k: svc.heal for c in target.replicas for k in keys_of(c.name)
        }
        self._after(name, results, book, drained, now, policies, mine)

        # Docker refusing a replacement fails the rollout; a timeout or an engine that went
        # away for a moment is retried (back-off), never held against the revision.
        refused = [
            (r.action, r.error or "")
            for r in results
            if r.outcome == "error" and not r.engine_fault and not image_gone(r)
        ]
        after = self.engine.containers(desired.project) if results else observed.containers
        after_mine = tuple(c for c in after if c.service == name)
        new_record, events = ro.record_pass(
            record, svc, target, mode, p.verdicts, refused, after_mine, now
        )
        new_record = self.reporter.recording.kept(name, new_record, events)  # its trigger
        self.store.put(name, new_record)
        started = any(e.kind == "started" for e in events)
        changes = rollout_diff(target, mine, desired.secrets) if started else None
        for event in events:
            self.reporter.rollout_event(name, event, changes)
            self.images.rollout_event(name, event)
        self.reporter.service(svc, target, after_mine, new_record)
        if any(r.outcome == "success" and isinstance(r.action, StartContainer) for r in results):
            for other in desired.services:  # dependents may start now
                if name in other.depends_on:
                    self.enqueue(service_key(other.name), 0.0)
        outcome = outcome_of(p, results, book, now)
        if events and events[-1].kind in ("rolled_back", "paused"):
            return replace(outcome, requeue_after=0.0, busy=True)  # act on the new target now
        # A rollout under way keeps `apply` waiting (a crash loop on the right spec does not).
        wanted = {s.replica: s.spec_hash for s in target.replicas}
        rolling = mode != "paused" and any(
            ro.is_temp_name(c.name) or wanted.get(c.replica, c.spec_hash) != c.spec_hash
            for c in after_mine
        )
        if rolling:
            outcome = replace(outcome, busy=True)
        if any(c.health == "starting" for c in after_mine):  # look again once it has a verdict
            again = HEALTH_RECHECK_S if outcome.requeue_after is None else outcome.requeue_after
            outcome = replace(outcome, busy=True, requeue_after=min(again, HEALTH_RECHECK_S))
        self.heals.set_quiet(name, not p.steps and p.wake_at is None and not book.next_wakeup(now))
        return outcome

    # ------------------------------------------------------------------ apply

    def _execute(self, action: Action) -> None:
        if self.snapshots is not None and self.snapshots.before(action):
            return  # a restore before the old replica starts again has started it
        if isinstance(action, EnsureImage):
            self.images.ensure(action)
        elif isinstance(action, CheckConfig):
            self.checks.run(action, self.engine.execute)
        elif isinstance(action, CreateNetwork | CreateVolume):
            # Services share networks and volumes: one creator at a time, and only once
            # (Docker lets two networks have one name); the others report nothing.
            with self._infra_lock:
                if self.engine.exists(action.kind, action.name):
                    raise DoneElsewhere(f"{action.kind} {action.name} exists")
                self.engine.execute(action)
        else:
            self.engine.execute(action)

    def _apply(self, p: Plan, trigger: str | None = None) -> tuple[StepResult, ...]:
        """Run a plan's steps, each reported (`trigger`: what asked for a fast heal's pass)."""
        if not p.steps:
            return ()
        return apply(
            p,
            self._execute,
            workers=self.workers,
            on_result=lambda r: self.reporter.report(r, trigger=trigger),
            cancelled=self.cancelled,
        )

    def _after(
        self,
        service: str,
        results: tuple[StepResult, ...],
        book: HealingBook,
        drained: dict[str, float],
        now: float,
        policies: Mapping[str, HealPolicy],
        observed: tuple[ObservedContainer, ...] | None,
    ) -> None:
        """Bookkeeping after a service's steps: back-offs, drains, signals, known names.
        `observed`: the service's containers the steps were planned from (None: unknown)."""
        failed = [
            (r.action.key, r.error or "", r.transient)
            for r in results
            if r.outcome == "error" and (r.engine_fault or not ro.is_replacement(r.action))
        ]
        succeeded = [r.action.key for r in results if r.outcome == "success"]
        book.record_failures(failed, succeeded, policies, now)
        svc = next((s for s in self.desired.services if s.name == service), None)
        drains = {service: svc.drain_s} if svc else {}
        ran = [(r.action, r.outcome == "success") for r in results if r.outcome != "skipped"]
        alive = None if observed is None else {c.id for c in observed}
        kept = ro.drained_after(drained, ran, drains, now, alive)
        drained.clear()
        drained.update(kept)
        self.store.put_drains(service, kept)
        for r in results:
            a = r.action
            if image_gone(r):  # removed behind our back: make it present again next pass
                self.images.image_gone(service)
            if r.outcome != "success" or r.shared:
                continue
            if isinstance(a, SignalContainer):
                book.signalled[a.id] = a.digest
            elif isinstance(a, CreateVolume):
                if a.spec.name in self._known_volumes:
                    log.warning(
                        "volume was removed and is recreated EMPTY: its data is gone",
                        volume=a.spec.name,
                        project=self.desired.project,
                    )
                self._known_volumes.add(a.spec.name)
            elif isinstance(a, CreateContainer) and a.as_name is None:
                self.reporter.note_created(a.spec.name)
            elif isinstance(a, StartContainer):
                self.runs.restarted(service, a.id)

    def _after_heal(self, service: str, results: tuple[StepResult, ...], book: HealingBook) -> None:
        """`_after` for a fast heal's start (under its service's book lock)."""
        drained = self._drained.setdefault(service, {})
        self._after(service, results, book, drained, self.clock(), {}, None)
