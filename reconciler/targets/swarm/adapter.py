"""Docker Swarm as a target (`--target swarm`): one project's services, configs, secrets and
overlay networks, kept equal to the file. Tasks are Swarm's to heal; its rollouts and
rollbacks are its own (a rollback is held here until the file changes the service).

Keys: `service:NAME` (one service), `resync` (the project). Swarm's events (service, node,
config, secret, network) only emit keys; the daemon around it is the host's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

from reconciler.core import swarm_plan as sp
from reconciler.core.action_events import event_of
from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.core.policy import Denial, Policy
from reconciler.engine.client import FALLBACK_API_VERSION, connect
from reconciler.engine.events import follow
from reconciler.engine.swarm import spec as swarm_file
from reconciler.engine.swarm.engine import SwarmEngine, TaskCounts, check_manager
from reconciler.errors import ActionFailed, EngineUnavailable, NotASwarmManager
from reconciler.ops.firing_memory import FiringMemory
from reconciler.ops.metrics import Metrics
from reconciler.ops.status import policy_line, read_crashloops
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
)
from reconciler.targets.decisions import Decisions
from reconciler.targets.image_updates import policy_notes
from reconciler.targets.swarm.conditions import SwarmConditions
from reconciler.targets.swarm.crashloops import SwarmCrashLoops
from reconciler.targets.swarm.events import SWARM_EVENTS, event_key
from reconciler.targets.swarm.explain import explain_swarm, held_note, held_waits
from reconciler.targets.swarm.images import SwarmImages
from reconciler.targets.swarm.records import SwarmRecord, records
from reconciler.targets.swarm.rollouts import announce, rollout_of
from reconciler.targets.swarm.status_view import render_status

log = structlog.get_logger("reconciler")
SETTLE_S = 1.0  # Swarm is at work (an update, tasks not yet where they should be): look again
UPDATING = ("updating", "rollback_started")
READY_WAIT_S = 60.0  # the first round waits this long at most for Swarm to start the tasks


@dataclass
class Pass:
    results: list[Done] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    drift: int = 0
    settling: bool = False  # a service is updating or rolling back: look again soon
    transient: bool = False  # an error that may go away by itself
    trigger: str = "manual"  # what asked for the pass (the history's trigger)


class SwarmKind:
    """Swarm's file rules (what it cannot honour is an error with its line)."""

    name = "swarm"
    capabilities = Capabilities()

    def load(self, path: Path) -> sp.SwarmDesired:
        return swarm_file.load(path)

    def judge(self, desired: Desired, policy: Policy) -> tuple[sp.SwarmDesired, tuple[Denial, ...]]:
        return swarm_file.judged(cast(sp.SwarmDesired, desired), policy)

    def summary(self, desired: Desired) -> str:
        d = cast(sp.SwarmDesired, desired)
        services = ", ".join(
            f"{s.name} {'global' if s.global_mode else f'x{s.replicas}'}" for s in d.services
        )
        dormant = f"; not selected: {', '.join(sorted(d.dormant))}" if d.dormant else ""
        return f"valid for swarm (project {d.project}: {services}{dormant})"

    def open(self, desired: Desired, settings: Settings) -> SwarmTarget:
        try:
            api = connect(lazy=not settings.daemon)  # a command asks no version of its own
            check_manager(api)
        except EngineUnavailable as exc:
            if not settings.daemon:
                raise
            # The daemon waits for the engine (and checks it manages a swarm at each pass).
            log.warning("engine down at start", error=str(exc))
            api = connect(version=FALLBACK_API_VERSION)
        return SwarmTarget(api, cast(sp.SwarmDesired, desired), settings)


class SwarmTarget:
    """One project's Swarm services: observe, judge rollbacks, plan, act, per key."""

    def __init__(
        self,
        api: Any,
        desired: sp.SwarmDesired,
        settings: Settings,
    ) -> None:
        self.api = api
        self.engine = SwarmEngine(api)
        self.desired: sp.SwarmDesired = desired  # type: ignore[assignment]
        self.records = records(desired.project, settings.state_dir)
        self.metrics: Metrics | None = settings.metrics
        self.record = settings.record  # the history (core.events)
        self.hold_removals = False
        self.on_done: Callable[[Done], None] | None = None
        self._notes: list[str] = []
        self._lock = threading.Lock()  # one pass at a time may record its judgement
        self._update_states: dict[str, str] = {}  # Swarm's UpdateStatus.State, last seen
        self._taken: dict[str, str] = {}  # service -> the foreign service holding its name
        self._born = 0.0  # the first reconcile (how long READY=1 may wait for the tasks)
        # What may notify (core.events); each row with the file's revision.
        self.conditions = SwarmConditions(settings.record, lambda: self.desired.digest)
        if settings.daemon:  # what fires is resolved even after a restart
            self.conditions.keep_in(FiringMemory(desired.project, settings.state_dir))
        self.decisions = Decisions()  # what `status` shows of the daemon's choices
        self.crashloops = SwarmCrashLoops(settings.record, settings.metrics)  # from the tasks
        self.images = SwarmImages(self.engine, desired.project, settings)  # x-reconciler.update

    # ------------------------------------------------------------------ the daemon's seam

    def first_keys(self) -> Iterable[str]:
        return [RESYNC]

    def bind(self, emit: Emit) -> None:
        pass  # every key it needs comes from events and the daemon's resync

    def reconcile(self, key: str, trigger: str) -> Outcome:
        started = time.monotonic()
        only = key.removeprefix("service:") if key.startswith("service:") else None
        if only is not None and only not in {s.name for s in self.desired.services}:
            only = None  # a service that left the file: the resync removes it
        try:
            _, done = self.run(only, trigger)
        except EngineUnavailable:
            if self.metrics:
                self.metrics.runs.labels("error").inc()
            raise
        except (ActionFailed, NotASwarmManager) as exc:  # e.g. the node left the swarm
            log.error("reconcile failed", key=key, error=str(exc))
            if self.metrics:
                self.metrics.runs.labels("error").inc()
            return Outcome(errors=1, busy=True)
        counts = self.export(done.drift if only is None else None)
        # Swarm moves and restarts tasks without events we can follow: while they are not
        # where the file wants them, look again soon (the metrics stay true meanwhile).
        settling = done.settling or not self.settled(counts)
        errors = sum(1 for r in done.results if r.outcome == "error")
        if self.metrics:
            m = self.metrics
            m.docker_up.set(1)
            m.runs.labels("error" if errors else "success").inc()
            m.duration.observe(time.monotonic() - started)
            if not errors:
                m.last_success.set(time.time())
        level = log.info if done.results or trigger not in ("interval", "backoff") else log.debug
        level("pass", project=self.desired.project, key=key, trigger=trigger,
              actions=len(done.results), errors=errors,
              duration_ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip
        if errors and done.transient:
            return Outcome(busy=True, errors=errors, actions=len(done.results))
        # Ready (READY=1) once the tasks run as the file says, as the host once its first pass
        # started the containers; not for longer than READY_WAIT_S (a task that never starts).
        self._born = self._born or time.monotonic()
        ready = not settling or errors > 0 or time.monotonic() - self._born > READY_WAIT_S
        return Outcome(SETTLE_S if settling else None, settling, errors, len(done.results), ready)

    def watch(self, stop: threading.Event, emit: Emit, count: Callable[[], None]) -> None:
        prefix = f"{self.desired.project}_"

        def on_event(event: dict[str, Any]) -> None:
            count()
            key = event_key(event, prefix)
            if key is not None:
                emit(key, 0.0)

        follow(
            self.api,
            {"type": list(SWARM_EVENTS)},
            stop,
            on_event=on_event,
            on_reconnect=lambda: emit(RESYNC, 0.0),
            project=self.desired.project,
        )

    def status_data(self) -> Mapping[str, object]:
        return {"decisions": self.decisions.data(), "images": self.images.status()}

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ one pass

    def held(
        self, observed: sp.SwarmObserved, desired: sp.SwarmDesired | None = None
    ) -> dict[str, str]:
        """Judge Swarm's rollbacks against our records (and persist what changed)."""
        desired = desired or self.desired
        with self._lock:
            recs = self.records.all()
            pushed = {k: r.pushed for k, r in recs.items() if r.pushed}
            held = {k: r.failed for k, r in recs.items() if r.failed}
            new = sp.failed_revisions(desired, observed, pushed, held)
            live = {s.name: s for s in observed.services}
            for svc in desired.services:
                rec = recs.get(svc.name, SwarmRecord())
                failed = new.get(svc.name, "")
                if failed != rec.failed:
                    obs = live.get(svc.full_name)
                    reason = obs.update_message if obs and failed else ""
                    if failed:
                        log.warning(
                            "Swarm rolled back a revision; held until the file changes it",
                            service=svc.name,
                            reason=reason,
                        )
                        if self.metrics:
                            self.metrics.rollout_finished(svc.name, "rolled_back")
                    at = time.time() if failed else 0.0
                    self.records.put(
                        svc.name,
                        rec.model_copy(
                            update={"failed": failed, "failed_reason": reason, "failed_at": at}
                        ),
                    )
        return new

    def the_plan(self, only: str | None = None) -> tuple[sp.SwarmPlan, sp.SwarmObserved]:
        observed = self.engine.observe(self.desired.project)
        desired = self.images.resolve(self.desired)  # update policies' and --locked images
        failed = self.held(observed, desired)
        self.images.judge(self.desired, observed, failed)
        desired = self.images.resolve(self.desired)  # a rolled-back version: the one before
        known = {k for k, r in self.records.all().items() if r.pushed}  # created by us
        the_plan = sp.plan(desired, observed, failed, only=only, known=known)
        self._taken = sp.taken_names(desired, observed)
        if self.hold_removals:  # the file may be half written: remove nothing yet
            kept = tuple(a for a in the_plan.actions if a.verb != "remove")
            the_plan = sp.SwarmPlan(kept, the_plan.notes)
        return the_plan, observed

    def run(self, only: str | None = None, trigger: str = "manual") -> tuple[sp.SwarmPlan, Pass]:
        if only is None:
            self.images.look(self.desired, time.time())  # registries, when due
        the_plan, observed = self.the_plan(only)
        done = Pass(notes=tuple(map(str, the_plan.notes)), drift=len(the_plan.actions))
        done.trigger = trigger
        for svc in self.desired.services:  # what the daemon holds back, for `status`
            if only in (None, svc.name):
                says = [str(n) for n in the_plan.notes if n.subject == f"service {svc.name}"]
                self.decisions.waiting(svc.name, says)
        # A service holding one of our names without our labels is not ours: its update
        # state and tasks say nothing of ours (its create fails, see engine.execute).
        project = self.desired.project
        observed = sp.SwarmObserved(tuple(s for s in observed.services if s.owned_by(project)))
        done.settling = any(s.update_state in UPDATING for s in observed.services)
        live = {s.name: s for s in observed.services}
        for note in done.notes:
            if note not in self._notes:
                self._notes.append(note)
        self._rollout_metrics(observed, only)
        self.conditions.observed(
            (s for s in self.desired.services if only is None or s.name == only),
            {s.name: s for s in observed.services},
            self._settled(observed),
        )
        if only is None:
            self.conditions.gone(s.name for s in self.desired.services)
        failed_prereq: set[str] = set()
        for action in the_plan.actions:
            needs = set()
            if isinstance(action, sp.CreateService | sp.UpdateService):
                needs = {*action.spec.networks, *action.spec.configs, *action.spec.secrets}
            if needs & failed_prereq:
                self._done(done, action, "skipped", "a network or config it needs failed")
                continue
            started = time.monotonic()
            try:
                self.engine.execute(action)
            except ActionFailed as exc:
                self._done(done, action, "error", str(exc), time.monotonic() - started)
                done.transient = done.transient or exc.transient
                if action.verb == "create" and action.kind in ("network", "config", "secret"):
                    failed_prereq.add(action.name)
                continue
            self._done(done, action, "success", "", time.monotonic() - started)
            if isinstance(action, sp.UpdateService) and rollout_of(action):
                announce(action, done.trigger, self.desired.digest, self.record)
                self.conditions.started(action.spec.name, action.spec.spec_hash,
                                        live.get(action.name))  # fmt: skip
            if isinstance(action, sp.RemoveService):
                self.records.put(action.service, SwarmRecord())  # gone: a create is no drift
            if isinstance(action, sp.CreateService | sp.UpdateService):
                done.settling = True
                rec = self.records.get(action.spec.name) or SwarmRecord()
                self.records.put(
                    action.spec.name, rec.model_copy(update={"pushed": action.spec.spec_hash})
                )
        return the_plan, done

    def _settled(self, observed: sp.SwarmObserved) -> set[str]:
        """Services that run their file spec, with no revision held (for SwarmConditions)."""
        live = {s.name: s for s in observed.services}
        held = {k for k, r in self.records.all().items() if r.failed}
        return {
            svc.name
            for svc in self.images.resolve(self.desired).services
            if svc.name not in held
            and (obs := live.get(svc.full_name)) is not None
            and obs.label(LABEL_SPEC_HASH) == svc.spec_hash
        }

    def _done(
        self,
        done: Pass,
        action: sp.SwarmAction,
        outcome: str,
        error: str = "",
        duration_s: float | None = None,
    ) -> None:
        text = sp.describe(action)
        result = Done(action, outcome, error or None)
        self.record(event_of(action, outcome, trigger=done.trigger, error=error or None,
                             duration_s=duration_s, revision=self.desired.digest))  # fmt: skip
        done.results.append(result)
        self.decisions.done(result)
        if outcome == "error":
            log.error("action failed", action=text, error=error)
        else:
            log.info("action", action=text, result=outcome)
        if self.metrics and outcome != "skipped":
            self.metrics.actions.labels(action.verb, action.kind, outcome).inc()
        if self.on_done is not None:
            self.on_done(result)

    def _rollout_metrics(self, observed: sp.SwarmObserved, only: str | None) -> None:
        """reconciler_rollout_in_progress while Swarm updates or rolls back a service;
        reconciler_rollouts_total{result} when it finishes (rolled_back: see `held`); its
        events are SwarmConditions'."""
        live = {s.name: s for s in observed.services}
        for svc in self.desired.services:
            if only is not None and svc.name != only:
                continue
            obs = live.get(svc.full_name)
            state = obs.update_state if obs is not None else ""
            before = self._update_states.get(svc.name, "")
            self._update_states[svc.name] = state
            finished = state != before and before in UPDATING and state in ("completed", "paused")
            if self.metrics is not None:
                self.metrics.set_rollout(svc.name, state in UPDATING)
                if finished:
                    self.metrics.rollout_finished(svc.name, state)

    def settled(self, counts: dict[str, TaskCounts]) -> bool:
        """Every service runs as many tasks as it should (past their healthchecks)."""
        for svc in self.desired.services:
            if svc.name in self.desired.denied or svc.name in self._taken:
                continue  # never created (denied, or its name is taken): nothing to wait for
            c = counts.get(svc.full_name, TaskCounts(0, 0, 0))
            want = c.desired if svc.global_mode else svc.replicas
            if c.healthy < want or (svc.global_mode and want == 0):
                return False
        return True

    def tasks(self, taken: Mapping[str, str] | None = None) -> dict[str, TaskCounts]:
        """Task counts of our services (none for one whose name another service holds)."""
        taken = self._taken if taken is None else taken
        names = [s.full_name for s in self.desired.services if s.name not in taken]
        return self.engine.tasks(names)

    def export(self, observed_drift: int | None = None) -> dict[str, TaskCounts]:
        """reconciler_service_replicas from the tasks (and drift) into the metrics; crash
        loops told (SwarmCrashLoops)."""
        counts = self.tasks()
        self.crashloops.look(self.desired.services, counts)
        if self.metrics:
            rows = []
            for svc in self.desired.services:
                c = counts.get(svc.full_name, TaskCounts(0, 0, 0))
                want = c.desired if svc.global_mode else svc.replicas
                healthy = c.healthy if svc.has_healthcheck else c.running
                rows.append((svc.name, want, c.running, healthy))
            self.metrics.set_replicas(rows)
            if observed_drift is not None:
                self.metrics.drift.labels("service").set(observed_drift)
        return counts

    # ------------------------------------------------------------------ the CLI's seam

    def plan(self) -> PlanReport:
        the_plan, observed = self.the_plan()
        held = held_waits(self.desired, self.records)  # why, since when, what retries it
        notes = [str(n) for n in the_plan.notes if not held_note(n, held)]
        host = self.desired.host.services if self.desired.host is not None else ()
        notes += policy_notes(host, self.images.states)  # versions an update policy holds
        return PlanReport(
            self.desired.project,
            notes=(*map(str, held.values()), *notes),
            steps=tuple(sp.describe(a) for a in the_plan.actions),
            services=explain_swarm(self.desired, observed, the_plan, held),
            actions=the_plan.actions,
        )

    def apply_report(self) -> ApplyReport:
        self.images.write_lock(self.desired)  # what apply ran, for --locked
        problems = []
        for svc in self.desired.services:
            record = self.records.get(svc.name) or SwarmRecord()
            if record.failed and record.failed == svc.spec_hash:
                problems.append(
                    f"rollout of {svc.name} failed; Swarm rolled it back ({record.failed_reason})"
                )
        return ApplyReport(notes=tuple(self._notes), problems=tuple(problems))

    def take_over(self, show: Callable[[Done], None], *, log_only: bool = False) -> bool:
        raise NotImplementedError("--take-over-compose is for the single host")

    def status(self, status_file: Path, denials: Mapping[str, str]) -> str:
        observed = self.engine.observe(self.desired.project)
        counts = self.tasks(sp.taken_names(self.desired, observed))
        text = render_status(self.desired, observed, counts, self.records, denials)
        followed = SwarmImages.policies(self.desired)  # update policies: what the daemon saw
        for name, seen in read_crashloops(status_file, "images").items():
            if name in followed:
                running = counts.get(f"{self.desired.project}_{name}", TaskCounts(0, 0, 0))
                text += "\n" + policy_line(followed[name], "", running.running, seen)
        return text

    def down(self, *, volumes: bool) -> tuple[Done, ...]:
        the_plan = sp.plan_down(self.desired, self.engine.observe(self.desired.project))
        out = []
        for action in the_plan.actions:
            started = time.monotonic()
            try:
                self.engine.execute(action)
                out.append(Done(action, "success"))
                if isinstance(action, sp.RemoveService):
                    self.records.put(action.service, SwarmRecord())  # `down`: not drift
            except ActionFailed as exc:
                out.append(Done(action, "error", str(exc)))
            self.record(  # the history: `operator (down)`
                event_of(action, out[-1].outcome, trigger="down", error=out[-1].error,
                         duration_s=time.monotonic() - started, revision=self.desired.digest)
            )  # fmt: skip
        return tuple(out)


KIND = SwarmKind()
