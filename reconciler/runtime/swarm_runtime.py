"""`--target swarm`: one reconcile pass, `apply` (passes until Swarm settles) and the daemon.

The daemon has the single host's shape: a keyed work queue (`service:<name>` per service,
`resync` for the whole project), workers that never hold one key twice, Docker events
(service, node, config, network) and a periodic resync that only enqueue, a file watch and
SIGHUP that reload. Tasks are Swarm's to heal; we keep the services equal to the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

from reconciler.config.web_config import WebConfig
from reconciler.core import swarm_plan as sp
from reconciler.core.policy import Policy
from reconciler.engine.swarm import spec as swarm_file
from reconciler.engine.swarm_engine import SwarmEngine, TaskCounts
from reconciler.errors import ActionFailed, DesiredStateError, EngineUnavailable
from reconciler.ops.http import serve
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.ops.metrics import Metrics
from reconciler.ops.notify import Notifier
from reconciler.runtime.daemon import STOP_WAIT_S
from reconciler.runtime.signals import SignalRelay
from reconciler.runtime.state_store import _write, default_state_dir
from reconciler.runtime.watchers import stamps
from reconciler.runtime.workqueue import ShutDown, WorkQueue

log = structlog.get_logger("reconciler")
RESYNC = "resync"
RETRY_S = 2.0
SETTLE_S = 1.0
SWARM_EVENTS = ("service", "node", "config", "secret", "network")


class SwarmRecord(BaseModel):
    """Per service: the spec hash we last pushed, and one Swarm rolled back (held)."""

    pushed: str = ""
    failed: str = ""
    failed_reason: str = ""


_RECORDS = TypeAdapter(dict[str, SwarmRecord])


class SwarmRecords:
    """`<project>.swarm.json` in the state directory, replaced atomically on change."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self.path = (directory or default_state_dir()) / f"{project}.swarm.json"
        self._lock = threading.Lock()
        try:
            self._records = _RECORDS.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            self._records = {}
        except (OSError, ValidationError, ValueError) as exc:
            log.error("swarm records unreadable; starting without", error=str(exc)[:300])
            self._records = {}

    def get(self, service: str) -> SwarmRecord:
        with self._lock:
            return self._records.get(service, SwarmRecord())

    def all(self) -> dict[str, SwarmRecord]:
        with self._lock:
            return dict(self._records)

    def put(self, service: str, record: SwarmRecord) -> None:
        with self._lock:
            if self._records.get(service) == record:
                return
            self._records[service] = record
            _write(self.path, _RECORDS.dump_json(self._records))


@dataclass(frozen=True, slots=True)
class Result:
    action: sp.SwarmAction
    outcome: str  # success | error | skipped
    error: str | None = None
    transient: bool = False


@dataclass
class Pass:
    results: list[Result] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    drift: int = 0
    settling: bool = False  # a service is updating or rolling back: look again soon


class SwarmReconciler:
    """One pass over the project (or one service): observe, judge rollbacks, plan, act."""

    def __init__(
        self,
        engine: SwarmEngine,
        desired: sp.SwarmDesired,
        records: SwarmRecords,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.desired = desired
        self.records = records
        self.metrics = metrics
        self._lock = threading.Lock()  # one pass at a time may record its judgement
        self._update_states: dict[str, str] = {}  # Swarm's UpdateStatus.State, last seen

    def held(self, observed: sp.SwarmObserved) -> dict[str, str]:
        """Judge Swarm's rollbacks against our records (and persist what changed)."""
        desired = self.desired
        with self._lock:
            records = self.records.all()
            pushed = {k: r.pushed for k, r in records.items() if r.pushed}
            held = {k: r.failed for k, r in records.items() if r.failed}
            new = sp.failed_revisions(desired, observed, pushed, held)
            live = {s.name: s for s in observed.services}
            for svc in desired.services:
                rec = records.get(svc.name, SwarmRecord())
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
                    self.records.put(
                        svc.name, rec.model_copy(update={"failed": failed, "failed_reason": reason})
                    )
        return new

    def run(self, only: str | None = None, *, act: bool = True) -> tuple[sp.SwarmPlan, Pass]:
        desired = self.desired
        observed = self.engine.observe(desired.project)
        the_plan = sp.plan(desired, observed, self.held(observed), only=only)
        done = Pass(notes=the_plan.notes, drift=len(the_plan.actions))
        done.settling = any(
            s.update_state in ("updating", "rollback_started") for s in observed.services
        )
        self._rollout_metrics(observed, only)
        if not act:
            return the_plan, done
        failed_prereq: set[str] = set()
        for action in the_plan.actions:
            needs = set()
            if isinstance(action, sp.CreateService | sp.UpdateService):
                needs = {*action.spec.networks, *action.spec.configs, *action.spec.secrets}
            if needs & failed_prereq:
                done.results.append(
                    Result(action, "skipped", "a network or config it needs failed")
                )
                continue
            try:
                self.engine.execute(action)
            except ActionFailed as exc:
                done.results.append(Result(action, "error", str(exc), exc.transient))
                if isinstance(
                    action, sp.CreateSwarmNetwork | sp.CreateSwarmConfig | sp.CreateSwarmSecret
                ):
                    failed_prereq.add(action.name)
                log.error("action failed", action=sp.describe(action), error=str(exc))
                self._count(action, "error")
                continue
            done.results.append(Result(action, "success"))
            log.info("action", action=sp.describe(action))
            self._count(action, "success")
            if isinstance(action, sp.CreateService | sp.UpdateService):
                done.settling = True
                rec = self.records.get(action.spec.name)
                self.records.put(
                    action.spec.name, rec.model_copy(update={"pushed": action.spec.spec_hash})
                )
        return the_plan, done

    def _rollout_metrics(self, observed: sp.SwarmObserved, only: str | None) -> None:
        """reconciler_rollout_in_progress while Swarm updates or rolls back a service;
        reconciler_rollouts_total{result} when it finishes (rolled_back: see `held`)."""
        if self.metrics is None:
            return
        live = {s.name: s for s in observed.services}
        for svc in self.desired.services:
            if only is not None and svc.name != only:
                continue
            obs = live.get(svc.full_name)
            state = obs.update_state if obs is not None else ""
            before = self._update_states.get(svc.name, "")
            self._update_states[svc.name] = state
            self.metrics.set_rollout(svc.name, state in ("updating", "rollback_started"))
            if state != before and before in ("updating", "rollback_started"):
                if state == "completed":
                    self.metrics.rollout_finished(svc.name, "completed")
                elif state == "paused":
                    self.metrics.rollout_finished(svc.name, "paused")

    def _count(self, action: sp.SwarmAction, result: str) -> None:
        if self.metrics:
            self.metrics.actions.labels(action.verb, action.kind, result).inc()

    def converged(self) -> bool:
        """Every service runs as many tasks as it should (past their healthchecks)."""
        return self.settled(self.tasks())

    def settled(self, counts: dict[str, TaskCounts]) -> bool:
        """`converged` on task counts already read."""
        for svc in self.desired.services:
            c = counts.get(svc.full_name, TaskCounts(0, 0, 0))
            want = c.desired if svc.global_mode else svc.replicas
            if c.healthy < want or (svc.global_mode and want == 0):
                return False
        return True

    def tasks(self) -> dict[str, TaskCounts]:
        return self.engine.tasks([s.full_name for s in self.desired.services])

    def export(self, observed_drift: int | None = None) -> dict[str, TaskCounts]:
        """reconciler_service_replicas from the tasks (and drift) into the metrics."""
        counts = self.tasks()
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


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True, slots=True)
class Applied:
    results: tuple[Result, ...]
    notes: tuple[str, ...]
    settled: bool

    @property
    def ok(self) -> bool:
        last = {sp.describe(r.action): r for r in self.results}
        return self.settled and all(r.outcome == "success" for r in last.values())


def apply_once(
    reconciler: SwarmReconciler,
    *,
    timeout_s: float = 600.0,
    on_result: Callable[[Result], None] | None = None,
    poll_s: float = 1.0,
) -> Applied:
    """Passes until nothing is left to do and Swarm has finished its updates (or timeout)."""
    deadline = time.monotonic() + timeout_s
    results: list[Result] = []
    notes: tuple[str, ...] = ()
    while True:
        the_plan, done = reconciler.run()
        notes = done.notes
        for r in done.results:
            results.append(r)
            if on_result:
                on_result(r)
        errors = [r for r in done.results if r.outcome != "success"]
        if not the_plan.actions and not done.settling and reconciler.converged():
            return Applied(tuple(results), notes, True)
        if errors and not any(r.transient for r in errors) and not done.settling:
            return Applied(tuple(results), notes, True)
        if time.monotonic() > deadline:
            return Applied(tuple(results), notes, False)
        time.sleep(poll_s)


# --------------------------------------------------------------------------- daemon


def event_key(event: dict[str, object], prefix: str) -> str | None:
    """The work-queue key a Docker event asks for: one of our services, the project (a node
    came, went or changed; one of our networks or configs went), or none (someone else's)."""
    kind = event.get("Type")
    actor = event.get("Actor")
    attributes = actor.get("Attributes") if isinstance(actor, dict) else None
    name = str((attributes or {}).get("name", ""))
    if kind == "node":
        return RESYNC
    if not name.startswith(prefix):
        return None
    if kind == "service":
        return f"service:{name.removeprefix(prefix)}"
    if kind in ("config", "secret") or (
        kind == "network" and event.get("Action") in ("destroy", "remove")
    ):
        return RESYNC
    return None


class SwarmDaemon:
    """Keeps one project's Swarm services equal to the file until stopped."""

    def __init__(
        self,
        path: Path,
        desired: sp.SwarmDesired,
        api: docker.APIClient,
        *,
        interval: float = 5.0,
        listen: tuple[tuple[str, int], ...] = (),
        lock_dir: Path | None = None,
        state_dir: Path | None = None,
        workers: int = 2,
        file_poll: float = 1.0,
        metrics: Metrics | None = None,
        signals: SignalRelay | None = None,
        policy: Policy | None = None,
        web: WebConfig | None = None,
    ) -> None:
        self.path = path
        self.policy = policy
        self.web = web
        self.api = api
        self.interval = interval
        self.listen = listen
        self.lock_dir = lock_dir
        self.workers = workers
        self.file_poll = file_poll
        self.metrics = metrics or Metrics()
        self.signals = signals or SignalRelay()
        self.notifier = Notifier()
        self.queue = WorkQueue()
        self.reconciler = SwarmReconciler(
            SwarmEngine(api), desired, SwarmRecords(desired.project, state_dir), self.metrics
        )
        self._stamp = stamps(path, desired.watched)
        self._engine_up = False
        self._ready = False
        self._last_end: float | None = None
        self._reload_error: str | None = None
        self.metrics.loaded(desired.digest)

    @property
    def desired(self) -> sp.SwarmDesired:
        return self.reconciler.desired

    def run(self) -> int:
        lock = ProjectLock(self.desired.project, self.lock_dir)
        lock.acquire()
        servers = []
        try:
            for address in self.listen:
                try:
                    servers.append(
                        serve(
                            address,
                            self.metrics.registry,
                            self.healthz,
                            self.readyz,
                            web=self.web,
                        )
                    )
                except OSError as exc:
                    log.error("cannot serve metrics", address=str(address), error=str(exc))
            threads = [
                threading.Thread(target=self._work, name=f"swarm-{i}", daemon=True)
                for i in range(self.workers)
            ]
            threads += [
                threading.Thread(target=self._ticks, name="ticks", daemon=True),
                threading.Thread(target=self._events, name="events", daemon=True),
                threading.Thread(target=self._reloader, name="reload", daemon=True),
            ]
            for t in threads:
                t.start()
            self.queue.add(RESYNC)
            log.info(
                "started",
                project=self.desired.project,
                target="swarm",
                file=str(self.path),
                interval=self.interval,
                state=str(self.reconciler.records.path),
            )
            self.signals.pump()
            self.notifier.send("STOPPING=1")
            log.info("stopping", project=self.desired.project)
            self.queue.shut_down()
            deadline = time.monotonic() + STOP_WAIT_S  # as the host daemon: one deadline
            for t in threads[: self.workers]:  # let a call under way finish (its own timeout)
                t.join(max(0.0, deadline - time.monotonic()))
            return 0
        finally:
            for server in servers:
                server.shutdown()
            lock.release()

    def stop(self) -> None:
        self.signals.stop.set()

    # ------------------------------------------------------------------ work

    def _work(self) -> None:
        while True:
            try:
                key = self.queue.get()
            except ShutDown:
                return
            started = time.monotonic()
            try:
                only = key.removeprefix("service:") if key.startswith("service:") else None
                if only is not None and only not in {s.name for s in self.desired.services}:
                    only = None  # a service that left the file: the resync removes it
                _, done = self.reconciler.run(only)
                counts = self.reconciler.export(done.drift if only is None else None)
                # Swarm moves and restarts tasks without events we can follow: while they
                # are not where the file wants them, look again soon (metrics stay true).
                done.settling = done.settling or not self.reconciler.settled(counts)
                self._engine_up = True
                self.metrics.docker_up.set(1)
                errors = [r for r in done.results if r.outcome == "error"]
                self.metrics.runs.labels("error" if errors else "success").inc()
                if not errors:
                    self.metrics.last_success.set(time.time())
                if errors:
                    self.queue.add_after(
                        key, RETRY_S if any(r.transient for r in errors) else self.interval
                    )
                elif done.settling:
                    self.queue.add_after(key, SETTLE_S)  # Swarm is at work: watch it finish
                if only is None and not self._ready:
                    self._ready = True
                    self.notifier.send("READY=1", f"STATUS={self.desired.project}: converging")
            except EngineUnavailable as exc:
                self._engine_up = False
                self.metrics.docker_up.set(0)
                log.warning("engine down", error=str(exc))
                self.queue.add_after(key, RETRY_S)
            except ActionFailed as exc:  # an observe call refused (e.g. the node left the swarm)
                log.error("reconcile failed", key=key, error=str(exc))
                self.queue.add_after(key, RETRY_S)
            except Exception:
                log.exception("reconcile failed", key=key)
                self.queue.add_after(key, self.interval)
            finally:
                self.metrics.duration.observe(time.monotonic() - started)
                self._last_end = time.monotonic()
                self.queue.done(key)

    def _ticks(self) -> None:
        next_resync = time.monotonic() + self.interval
        while not self.signals.stop.wait(self.file_poll):
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.interval
                self.metrics.triggers.labels("interval").inc()
                self.queue.add(RESYNC)
            stamp = stamps(self.path, self.desired.watched)
            if stamp != self._stamp:
                self._stamp = stamp
                self.signals.reload.set()

    def _events(self) -> None:
        """Swarm's events only say "look now": a service's key, else a resync."""
        prefix = f"{self.desired.project}_"
        backoff = 0.5
        while not self.signals.stop.is_set():
            stream = None
            try:
                stream = self.api.events(decode=True, filters={"type": list(SWARM_EVENTS)})
                backoff = 0.5
                for event in stream:
                    if self.signals.stop.is_set():
                        break
                    self.metrics.events.inc()
                    key = event_key(event, prefix)
                    if key is not None:
                        self.queue.add(key)
                        self.metrics.triggers.labels("event").inc()
            except Exception as exc:  # the stream broke: reconnect (the resync covers the gap)
                log.debug("event stream lost", error=str(exc))
            finally:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            self.signals.stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _reloader(self) -> None:
        while not self.signals.stop.is_set():
            if not self.signals.reload.wait(0.5):
                continue
            self.signals.reload.clear()
            started_usec = time.monotonic_ns() // 1000
            ok = self.reload()
            # `reconciler reload` (the unit's ExecReload) waits for this line.
            self._write_status(
                {
                    "monotonic_usec": started_usec,
                    "result": "success" if ok else "error",
                    "error": None if ok else self._reload_error,
                    "digest": self.desired.digest,
                }
            )

    def _write_status(self, reload: dict[str, object]) -> None:
        path = status_path(self.desired.project, self.lock_dir)
        data = {
            "project": self.desired.project,
            "pid": os.getpid(),
            "target": "swarm",
            "updated_at": time.time(),
            "reload": reload,
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write status file", path=str(path), error=str(exc))

    def reload(self) -> bool:
        """Re-read the file; a bad one changes nothing (the last good state stays)."""
        try:
            new = swarm_file.load(self.path)
        except DesiredStateError as exc:
            self.metrics.reloads.labels("error").inc()
            self.metrics.state_valid.set(0)
            log.error("desired state rejected; keeping the last good one", error=str(exc))
            self._reload_error = str(exc)
            return False
        self.metrics.reloads.labels("success").inc()
        if self.policy is not None:
            new, denials = swarm_file.judged(new, self.policy)
            for d in denials:
                log.error("denied by the host policy", service=d.service, rule=d.rule)
                self.metrics.policy_denials.labels(d.service, d.rule).inc()
        if new.project != self.desired.project:
            log.error("the project name cannot change while running; restart the daemon")
            self.metrics.state_valid.set(0)
            self._reload_error = "the project name cannot change while running"
            return False
        if new.digest != self.desired.digest:
            self.reconciler.desired = new
            self._stamp = stamps(self.path, new.watched)
            self.metrics.loaded(new.digest)
            log.info("desired state loaded", file=str(self.path), digest=new.digest[:12])
        self.metrics.state_valid.set(1)
        self.queue.add(RESYNC)
        return True

    def healthz(self) -> tuple[bool, str]:
        if self._last_end is None:
            return True, "starting"
        age = time.monotonic() - self._last_end
        ok = age <= 3 * self.interval + 60
        return ok, f"last reconcile {age:.1f}s ago"

    def readyz(self) -> tuple[bool, str]:
        if not self._engine_up:
            return False, "docker engine unreachable"
        if not self._ready:
            return False, "first pass not done"
        return True, "ready"
