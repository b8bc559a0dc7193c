"""One reconcile pass: observe -> holds -> plan -> apply -> bookkeeping.

Used by `reconciler apply` (one pass) and by the daemon (every pass). Logs one
line per action and one per pass; updates the metrics when it has them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from reconciler.core.healing import HealingBook, LastRun
from reconciler.core.model import (
    JUST_CREATED,
    ConnectNetwork,
    CreateContainer,
    CreateVolume,
    DesiredState,
    Observed,
    Plan,
    RecreateContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    UnpauseContainer,
)
from reconciler.core.planner import plan
from reconciler.engine.docker_engine import Engine
from reconciler.runtime.executor import StepResult, apply

if TYPE_CHECKING:  # prometheus_client is imported only where metrics are served
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")


@dataclass(frozen=True, slots=True)
class PassResult:
    plan: Plan
    results: tuple[StepResult, ...]
    duration_s: float
    observed: Observed

    @property
    def errors(self) -> tuple[StepResult, ...]:
        return tuple(r for r in self.results if r.outcome != "success")

    @property
    def ok(self) -> bool:
        return not self.errors


class Reconciler:
    """Runs passes for one project and keeps the healing bookkeeping between them."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        workers: int = 8,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self.workers = workers
        self.book = HealingBook()
        self._known: set[str] = set()  # container names seen before: a create is then a heal
        self._known_volumes: set[str] = set()

    def run_pass(self, desired: DesiredState, trigger: str = "manual") -> PassResult:
        """Converge once; raise EngineUnavailable if the engine cannot be read."""
        start = time.monotonic()
        observed = self.engine.observe(desired.project)
        last_runs: dict[str, LastRun] = {}
        for c in observed.containers:
            if c.state in ("exited", "dead"):
                run = self.engine.last_run(c.id)
                if run is not None:
                    last_runs[c.name] = run
        holds = self.book.holds(desired, observed, last_runs, self.clock())
        the_plan = plan(desired, observed, holds)
        for note in the_plan.notes:
            log.debug("note", project=desired.project, note=note)
        results = apply(the_plan, self.engine.execute, workers=self.workers, on_result=self._report)
        self._remember(desired, observed, results)
        if results and self.metrics is not None:  # replica gauges show the state after the pass
            observed = self.engine.observe(desired.project)
        result = PassResult(the_plan, results, time.monotonic() - start, observed)
        self._pass_metrics(desired, result)
        level = log.info if results else log.debug
        level(
            "pass",
            project=desired.project,
            trigger=trigger,
            actions=len(results),
            errors=len(result.errors),
            held=len(holds.held),
            duration_ms=round(result.duration_s * 1000, 1),
        )
        return result

    def _report(self, r: StepResult) -> None:
        a = r.action
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
        else:
            log.warning("action", error=r.error, **fields)
        if self.metrics and r.outcome != "skipped":
            self.metrics.actions.labels(a.verb, a.kind, r.outcome).inc()
            if r.outcome == "error":
                self.metrics.docker_errors.labels(f"{a.verb}_{a.kind}").inc()
            reason = self._heal_reason(r)
            if reason and r.outcome == "success" and service:
                self.metrics.heals.labels(service, reason).inc()

    def _heal_reason(self, r: StepResult) -> str | None:
        match r.action:
            case StartContainer(reason=reason) if reason != JUST_CREATED:
                return "exited"
            case RestartContainer():
                return "unhealthy"
            case UnpauseContainer():
                return "paused"
            case RecreateContainer(reason="dead"):
                return "dead"
            case CreateContainer(spec=spec) if spec.name in self._known:
                return "removed"
            case ConnectNetwork():
                return "network"
        return None

    def _remember(
        self, desired: DesiredState, observed: Observed, results: tuple[StepResult, ...]
    ) -> None:
        now = self.clock()
        policies = {}
        for s in desired.services:
            policies[f"image:{s.name}"] = s.heal
            for c in s.replicas:
                policies[f"container:{c.name}"] = policies[f"create:{c.name}"] = s.heal
        failed = [(r.action.key, r.error or "") for r in results if r.outcome == "error"]
        succeeded = [r.action.key for r in results if r.outcome == "success"]
        self.book.record_failures(failed, succeeded, policies, now)
        for r in results:
            if isinstance(r.action, SignalContainer) and r.outcome == "success":
                self.book.signalled[r.action.id] = r.action.digest
        for r in results:
            if (
                isinstance(r.action, CreateVolume)
                and r.outcome == "success"
                and r.action.spec.name in self._known_volumes
            ):
                log.warning(
                    "volume was removed and is recreated EMPTY: its data is gone",
                    volume=r.action.spec.name,
                    project=desired.project,
                )
        self._known_volumes |= {v.name for v in observed.volumes} & {
            v.name for v in desired.volumes
        }
        self._known_volumes |= {
            r.action.spec.name
            for r in results
            if isinstance(r.action, CreateVolume) and r.outcome == "success"
        }
        self._known |= {c.name for c in observed.containers}
        self._known |= {
            r.action.spec.name
            for r in results
            if isinstance(r.action, CreateContainer) and r.outcome == "success"
        }

    def _pass_metrics(self, desired: DesiredState, result: PassResult) -> None:
        m = self.metrics
        if m is None:
            return
        m.docker_up.set(1)
        m.runs.labels("success" if result.ok else "error").inc()
        m.duration.observe(result.duration_s)
        if result.ok:
            m.last_success.set(self.clock())
        for kind in ("network", "volume", "image", "container"):
            out_of_sync = {a.name for a in result.plan.actions if a.kind == kind}
            m.drift.labels(kind).set(len(out_of_sync))
        live = {c.name: c for c in result.observed.containers}
        rows = []
        for s in desired.services:
            cs = [live[c.name] for c in s.replicas if c.name in live]
            running = sum(1 for c in cs if c.state == "running")
            healthy = sum(1 for c in cs if c.state == "running" and c.health in (None, "healthy"))
            rows.append((s.name, len(s.replicas), running, healthy))
        m.set_replicas(rows)
        loops: dict[str, int] = {}
        services = {c.name: s.name for s in desired.services for c in s.replicas}
        for name in self.book.crashlooping(self.clock()):
            if name in services:
                loops[services[name]] = loops.get(services[name], 0) + 1
        m.set_crashloop(loops, [s.name for s in desired.services])
