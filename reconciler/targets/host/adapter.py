"""The single Docker host as a target: containers, networks and volumes of one project.

Maps the daemon's keys onto the `Controller` (resync, service:NAME, image:NAME), Docker's
container/network/volume events onto keys, and `plan`, `apply`'s report, `status`, `down`
and `--take-over-compose` onto the planner and the engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import structlog

from reconciler.config import loader
from reconciler.core import rollout as ro
from reconciler.core.desired import DesiredState
from reconciler.core.notes import Note
from reconciler.core.plan_explain import plan_line
from reconciler.core.planner import Holds, foreign_namespaces
from reconciler.core.planner import plan as plan_of
from reconciler.core.policy import Denial, Policy, enforce
from reconciler.core.takeover import clashes, plan_takeover
from reconciler.engine.client import FALLBACK_API_VERSION, connect
from reconciler.engine.events import follow
from reconciler.engine.host.engine import Engine
from reconciler.errors import EngineUnavailable
from reconciler.ops.firing_memory import FiringMemory
from reconciler.ops.image_lock import lock_path
from reconciler.ops.image_state import ImageStates
from reconciler.ops.snapshot_store import SnapshotStore
from reconciler.ops.state_store import StateStore
from reconciler.ops.status import render_status
from reconciler.targets.base import (
    RESYNC,
    ApplyReport,
    Capabilities,
    Desired,
    Done,
    Emit,
    Outcome,
    PlanReport,
    Settings,
    service_key,
)
from reconciler.targets.decisions import Decisions
from reconciler.targets.host.controller import Controller
from reconciler.targets.host.events import container_event, filters, infra_event
from reconciler.targets.host.executor import StepResult, apply
from reconciler.targets.host.explain import explain_host, held_wait, oom_marked
from reconciler.targets.host.image_ledger import ImageLedger
from reconciler.targets.host.runs import Exit
from reconciler.targets.host.snapshots import VolumeSnapshots
from reconciler.targets.image_updates import policy_notes

log = structlog.get_logger("reconciler")

# Docker's container list can lag its own events (a `die` or `pause` still shows "running"
# for up to ~0.2 s): a service is looked at once more a moment after its event.
EVENT_RECHECK_S = 0.5
# A network or volume event asks for a resync a moment later, so a burst (every replica
# that dies leaves its networks: 50 `disconnect`s in a mass failure) is one resync.
RESYNC_COALESCE_S = 0.25


def done_of(r: StepResult) -> Done:
    return Done(r.action, r.outcome, r.error)


class HostKind:
    """The single host's file rules (the loader) and the policy's judgement."""

    name = "host"
    capabilities = Capabilities(
        prunes_images=True,
        takes_over_compose=True,
        removes_volumes=True,
        snapshots=True,
    )

    def load(self, path: Path) -> DesiredState:
        return loader.load(path)

    def judge(self, desired: Desired, policy: Policy) -> tuple[DesiredState, tuple[Denial, ...]]:
        return enforce(cast(DesiredState, desired), policy)

    def summary(self, desired: Desired) -> str:
        d = cast(DesiredState, desired)
        services = ", ".join(f"{s.name} x{len(s.replicas)}" for s in d.services)
        dormant = f"; not selected: {', '.join(sorted(d.dormant))}" if d.dormant else ""
        return f"valid (project {d.project}: {services}{dormant})"

    def open(self, desired: Desired, settings: Settings) -> HostTarget:
        try:  # a command asks no version of its own: the first answer gives it
            api = connect(lazy=not settings.daemon)
        except EngineUnavailable as exc:
            if not settings.daemon:
                raise
            # The daemon waits for the engine; it must start anyway.
            log.warning("engine down at start", error=str(exc))
            api = connect(version=FALLBACK_API_VERSION)
        return HostTarget(api, cast(DesiredState, desired), settings)


class HostTarget:
    """One project's containers on one engine, reconciled one key at a time."""

    def __init__(
        self,
        api: Any,
        desired: DesiredState,
        settings: Settings,
    ) -> None:
        self.api = api
        self.engine = Engine(api)
        self.settings = settings
        self.store = StateStore(desired.project, settings.state_dir)
        self._notes: dict[str, Note] = {}  # text -> note, in order, once each
        self.on_done: Callable[[Done], None] | None = None
        self.decisions = Decisions()  # what `status` shows of the daemon's choices
        self.controller = Controller(
            self.engine,
            desired,
            self.store,
            metrics=settings.metrics,
            pull_timeout_s=settings.pull_timeout,
            cancelled=settings.cancelled,
            on_result=self._result,
            on_note=self._note,
            follow_tags=settings.daemon,
            ledger=ImageLedger(desired.project, settings.state_dir)
            if settings.prune_images
            else None,
            record=settings.record,
            image_options={
                "states": ImageStates(desired.project, settings.state_dir),
                "record": settings.record,
                "lock_file": lock_path(desired.project, settings.state_dir, settings.image_lock),
                "locked": settings.locked,
            },
        )
        if settings.daemon:  # what fires is resolved even after a restart
            memory = FiringMemory(desired.project, settings.state_dir)
            self.controller.reporter.conditions.keep_in(memory)
        self.snapshots = VolumeSnapshots(
            self.engine,
            SnapshotStore(desired.project, settings.state_dir),
            self.store,
            self._running_desired,
            settings.record,
        )
        self.controller.snapshots = self.snapshots

    def _running_desired(self) -> DesiredState:
        """The file with each service pinned as it runs (followed tags, update policies,
        --locked): the revision a rollout goes to, and the one a restore starts."""
        d = self.controller.desired
        return replace(d, services=tuple(map(self.controller.images.pinned, d.services)))

    # ------------------------------------------------------------------ the daemon's seam

    @property
    def desired(self) -> DesiredState:
        return self.controller.desired

    @desired.setter
    def desired(self, value: Desired) -> None:
        self.controller.desired = cast(DesiredState, value)

    @property
    def hold_removals(self) -> bool:
        return self.controller.hold_removals

    @hold_removals.setter
    def hold_removals(self, value: bool) -> None:
        self.controller.hold_removals = value

    def first_keys(self) -> Iterable[str]:
        desired = self.desired  # a denied service is never reconciled: nothing to wait for
        return [service_key(s.name) for s in desired.services if s.name not in desired.denied]

    def bind(self, emit: Emit) -> None:
        self.controller.enqueue = emit

    def reconcile(self, key: str, trigger: str) -> Outcome:
        return self.controller.reconcile(key, trigger)

    def watch(self, stop: threading.Event, emit: Emit, count: Callable[[], None]) -> None:
        def on_event(event: dict[str, Any]) -> None:
            count()
            desired = self.desired
            seen = container_event(event, desired)
            if seen is None:  # a network or volume of ours: one resync for a burst
                if infra_event(event, desired):
                    emit(RESYNC, RESYNC_COALESCE_S)
                return
            service, action, container_id = seen
            at = event.get("timeNano", 0) / 1e9 or time.time()
            if action == "start":  # not news: its time makes a later exit's run known
                self.controller.note_started(container_id, at)
                return
            if action == "oom":  # the `die` that follows is an OOM kill (its cause says so)
                self.controller.runs.note_oom(container_id, at)
            if action == "destroy":
                self.controller.forget(container_id)
            if action == "die":
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                self.controller.hint_died(service, container_id, Exit.of(attrs, at))
            emit(service_key(service), 0.0)
            emit(service_key(service), EVENT_RECHECK_S)

        follow(
            self.api,
            filters(),
            stop,
            on_event=on_event,
            on_reconnect=lambda: emit(RESYNC, RESYNC_COALESCE_S),
            project=self.desired.project,
        )

    def status_data(self) -> Mapping[str, object]:
        for service, texts in list(self.controller.waits.items()):
            self.decisions.waiting(service, texts)
        return {
            "crashloop": self.controller.crashloops(),
            "restarts": self.controller.restarts(),
            "images": self.controller.tags(),
            "decisions": self.decisions.data(),
        }

    def close(self) -> None:
        self.engine.cancel_transfers()
        self.controller.close()

    # ------------------------------------------------------------------ the CLI's seam

    def _result(self, r: StepResult) -> None:
        if r.outcome != "waiting":
            self.decisions.done(done_of(r))
        if self.on_done is not None and r.outcome != "waiting":
            self.on_done(done_of(r))

    def _note(self, note: Note) -> None:
        self._notes.setdefault(str(note), note)

    def plan(self) -> PlanReport:
        desired = self.desired
        engine = self.engine
        pinned = tuple(map(self.controller.images.pinned, desired.services))
        desired = replace(desired, services=pinned)  # followed tags, policies, --locked
        notes: list[str] = []
        services, rollouts, held = [], {}, {}
        for svc in desired.services:
            record = ro.refresh(self.store.get(svc.name), svc)
            target, mode = ro.target(svc, record)
            services.append(target)
            rollouts[svc.name] = ro.rollout_for(svc, record, mode)
            if mode == "rolled_back":  # the file's revision does not run: never in sync
                held[svc.name] = held_wait(svc, record)
                notes.append(str(held[svc.name]))
            elif mode == "paused":
                notes.append(f"service {svc.name}: rollout paused ({record.paused_reason})")
        wanted = foreign_namespaces(desired)
        seen = engine.observe_all(desired.project, wanted)  # three list calls in all
        foreign = seen.outside
        holds = Holds(
            now=time.time(), rollouts=rollouts, outside=foreign, absent=wanted - set(foreign)
        )
        observed = seen.observed
        if desired.denied:  # denied by the host policy: neither created nor removed
            services = [s for s in services if s.name not in desired.denied]
            kept = tuple(c for c in observed.containers if c.service not in desired.denied)
            observed = replace(observed, containers=kept)
        observed = oom_marked(observed, engine)
        the_plan = plan_of(replace(desired, services=tuple(services)), observed, holds)
        notes += [str(n) for n in the_plan.notes]
        if self.controller.images.states is not None:  # versions an update policy holds
            notes += policy_notes(self.desired.services, self.controller.images.states)
        notes += clashes(desired, seen.others)
        return PlanReport(
            desired.project,
            notes=tuple(notes),
            errors=_missing(the_plan.notes),
            steps=tuple(plan_line(step.action) for step in the_plan.steps),
            services=explain_host(  # the diff: what runs against what the file asks
                [s for s in desired.services if s.name not in desired.denied],
                observed,
                the_plan,
                desired.secrets,
                held,
            ),
            actions=the_plan.actions,
        )

    def apply_report(self) -> ApplyReport:
        self.controller.images.write_image_lock()  # what apply resolved, for --locked
        desired = self.desired
        held = clashes(desired, self.engine.others(desired.project))
        problems = []
        for svc in desired.services:
            record = self.store.get(svc.name)
            if record.failed_revision == svc.revision:
                problems.append(
                    f"rollout of {svc.name} failed ({record.failed_reason}); rolled back"
                )
            elif record.paused_revision == svc.revision:
                problems.append(f"rollout of {svc.name} paused ({record.paused_reason})")
        problems += [f"error: {e}" for e in _missing(tuple(self._notes.values()))]
        return ApplyReport(notes=(*held, *self._notes), problems=tuple(problems))

    def take_over(self, show: Callable[[Done], None], *, log_only: bool = False) -> bool:
        """Replace the compose project's containers with ours (`--take-over-compose`)."""
        desired, engine = self.desired, self.engine
        the_plan = plan_takeover(
            desired, engine.observe(desired.project), engine.others(desired.project)
        )
        for note in the_plan.notes:
            if log_only:
                log.info("take over compose", project=desired.project, note=str(note))
            else:
                print(f"# {note}")
        results = apply(the_plan, engine.execute)
        for r in results:
            show(done_of(r))
            if log_only:
                log.info(
                    "action",
                    verb=r.action.verb,
                    name=r.action.name,
                    outcome=r.outcome,
                    error=r.error,
                )
        failed = [r for r in results if r.outcome != "success"]
        if failed:
            text = (
                f"taking over compose project {desired.project} stopped: "
                f"{len(failed)} step(s) failed"
            )
            if log_only:
                log.error(text)
            else:
                print(text)
        return not failed

    def status(self, status_file: Path, denials: Mapping[str, str]) -> str:
        desired = self.desired
        held = {s.name: why for s in desired.services if (why := self.snapshots.store.held(s.name))}
        text = render_status(desired, self.engine, status_file, self.store, dict(denials),
                             pin=self.controller.images.pinned, held=held)  # fmt: skip
        lines = [f"note: {line}" for line in clashes(desired, self.engine.others(desired.project))]
        return "\n".join([text, *lines])

    def down(self, *, volumes: bool) -> tuple[Done, ...]:
        from reconciler.core.planner import plan_down

        the_plan = plan_down(
            self.desired, self.engine.observe(self.desired.project), volumes=volumes
        )
        recording = self.controller.reporter.recording  # the history: `operator (down)`
        results = apply(
            the_plan, self.engine.execute, on_result=lambda r: recording.step(r, trigger="down")
        )
        self.engine.forget_secrets()  # decrypted secrets the removed containers bound
        return tuple(done_of(r) for r in results)


def _missing(notes: Sequence[Note]) -> tuple[str, ...]:
    """Errors the notes carry: a missing external network/volume (never ours to create), a
    namespace (`container:X`) that no container gives."""
    out = [
        f"{n.subject} is declared external but does not exist"
        for n in notes
        if n.kind == "external_missing"
    ]
    held = dict.fromkeys(n for n in notes if n.kind == "namespace_missing")
    return (*out, *(f"{n.subject}: {n.detail}" for n in held))


KIND = HostKind()
