"""The heal fast path: a replica that just died (Docker's `die` event) is started again on a
heal pool, without a full observe, when it is plainly ours to start. Owned by the
`Controller`, which asks it first in each service reconcile (`take`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import structlog

from reconciler.core import causes
from reconciler.core.actions import Plan, StartContainer, Step
from reconciler.core.desired import LABEL_SPEC_HASH, DesiredState, ServiceSpec
from reconciler.core.healing import HealingBook, LastRun, docker_will_restart
from reconciler.engine.host.engine import Engine
from reconciler.targets.base import service_key
from reconciler.targets.host.executor import StepResult
from reconciler.targets.host.runs import Exit, Runs

log = structlog.get_logger("reconciler")

VERIFY_AFTER_FAST_HEAL_S = 0.5
# Replicas started at once after a mass failure. Measured with 50: 12 and 64 side by side
# bring them back equally fast; the engine's own start throughput is the limit.
HEAL_POOL = 16


class FastHeal:
    """Hints of deaths, the heals under way, and the pool they run on.

    Fast heals run beside their service's key (each its own container, each a start of a
    replica on its current spec); the service's full reconcile waits for them.
    """

    def __init__(
        self,
        engine: Engine,
        runs: Runs,
        *,
        book: Callable[[str], HealingBook],
        apply: Callable[[Plan, str | None], tuple[StepResult, ...]],
        after: Callable[[str, tuple[StepResult, ...], HealingBook], None],
        enqueue: Callable[[str, float], None],
        clock: Callable[[], float],
        cancelled: Callable[[], bool],
        trigger: Callable[[str], str] = lambda service: "event",
    ) -> None:
        """`book`: a service's healing book; `apply`: run a plan (reported with the trigger
        given); `after`: the controller's bookkeeping after a heal's step, under the
        service's book lock; `trigger`: what asked for a service's pass under way (a heal
        is the pass's that handed it over, whatever pass runs when it is reported)."""
        self.engine = engine
        self.runs = runs
        self._book = book
        self._apply = apply
        self._after = after
        self._enqueue = enqueue
        self._clock = clock
        self._cancelled = cancelled
        self._trigger = trigger
        self._lock = threading.Lock()
        # service -> replicas that just died (id -> what the event said)
        self._hints: dict[str, dict[str, Exit | None]] = {}
        self._healing: dict[str, set[str]] = {}  # service -> ids being started
        self._deferred: set[str] = set()  # services whose reconcile waited for fast heals
        self._book_locks: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=HEAL_POOL, thread_name_prefix="heal")
        self._quiet: set[str] = set()  # services whose last reconcile found nothing to do

    def hint_died(self, service: str, container_id: str, exit: Exit | None = None) -> None:
        """A replica died: the next reconcile of its service may start it straight away."""
        with self._lock:
            self._hints.setdefault(service, {})[container_id] = exit

    def is_quiet(self, service: str) -> bool:
        """Did the service's last full reconcile find nothing to do?"""
        return service in self._quiet

    def set_quiet(self, service: str, quiet: bool) -> None:
        if quiet:
            self._quiet.add(service)
        else:
            self._quiet.discard(service)

    def close(self) -> None:
        """Fast heals not started yet are dropped (the daemon is stopping)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def take(
        self, desired: DesiredState, name: str, svc: ServiceSpec | None
    ) -> Literal["denied", "busy"] | None:
        """A service's reconcile begins: its hints are taken. "busy": its dead replicas are
        being started here, or heals are under way and the full reconcile waits for them
        (the service is queued again when they end). "denied": the host policy denies the
        service. None: go on with the full reconcile."""
        with self._lock:
            hints = self._hints.pop(name, {})
            healing = self._healing.setdefault(name, set())
            if name in desired.denied:  # the host policy denies it (reported at load)
                return "denied"
            if svc is not None and hints and name in self._quiet:
                # Replicas died and nothing else is pending: each is started on one inspect,
                # in parallel and without waiting for the others (a mass failure comes back
                # as fast as Docker brings back its own).
                asked = self._trigger(name)
                for cid in sorted(hints.keys() - healing):
                    healing.add(cid)
                    self._pool.submit(self._job, svc, cid, hints[cid], asked)
                return "busy"
            if healing:  # the full reconcile waits for the fast heals under way
                self._deferred.add(name)
                return "busy"
        return None

    def _job(self, svc: ServiceSpec, cid: str, exit: Exit | None, asked: str) -> None:
        """A fast heal on the heal pool; then its service is looked at again (at once when
        it was not plainly ours to start, or its reconcile waited for it)."""
        started = False
        try:
            started = not self._cancelled() and self._heal(svc, cid, exit, asked)
        except Exception as exc:  # an engine fault: the full reconcile takes over
            log.warning("fast heal failed", service=svc.name, container=cid[:12], error=str(exc))
        with self._lock:
            healing = self._healing.get(svc.name, set())
            healing.discard(cid)
            waited = not healing and svc.name in self._deferred
            if waited:
                self._deferred.discard(svc.name)
            if not started:
                self._quiet.discard(svc.name)
        now = not started or waited
        self._enqueue(service_key(svc.name), 0.0 if now else VERIFY_AFTER_FAST_HEAL_S)

    def _heal(self, svc: ServiceSpec, cid: str, exit: Exit | None, asked: str) -> bool:
        """Start a replica that just died when it is plainly ours to start: its spec is
        current, no back-off holds it, Docker's restart policy will not. Its last run comes
        from the events (its `start`, then this `die`), else from one inspect."""
        run: LastRun | None = self.runs.of_exit(cid, exit)
        if exit is not None and run is not None:
            name, spec_hash, status = exit.name, exit.spec_hash, "exited"
        else:
            info = self.engine.inspect(cid)
            if info is None:
                return False
            name = str(info.get("Name", "")).lstrip("/")
            status = (info.get("State") or {}).get("Status", "")
            spec_hash = ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_SPEC_HASH, "")
            run = self.engine.last_run_of(info)
        spec = next((c for c in svc.replicas if c.name == name), None)
        if (
            spec is None
            or svc.state != "running"
            or status != "exited"
            or spec_hash != spec.spec_hash
            or run is None
            or docker_will_restart(spec.restart, run)
            or (svc.job and run.exit_code == 0)  # a job that completed: done
        ):
            return False
        with self._book_lock(svc.name):
            book = self._book(svc.name)
            if book.exit_hold(name, run, svc.heal, self._clock()) is not None:
                return False
        why = causes.exited(run.exit_code, run.oom_killed)
        action = StartContainer(cid, name, svc.name, why.text, why)
        results = self._apply(Plan(steps=(Step(action),)), asked)
        with self._book_lock(svc.name):
            self._after(svc.name, results, book)
        return bool(results) and results[0].outcome == "success"

    def _book_lock(self, service: str) -> threading.Lock:
        """Fast heals of one service run side by side: their bookkeeping takes turns."""
        with self._lock:
            return self._book_locks.setdefault(service, threading.Lock())
