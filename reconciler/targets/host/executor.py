"""Run a plan's steps: independent steps in parallel, dependents after their dependencies.

A failing step is data: the others still run, only the steps that wait on it are
skipped, and every outcome (with Docker's error text) comes back as a `StepResult`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Literal

from reconciler.core.actions import HostAction as Action
from reconciler.core.actions import Plan, Step
from reconciler.errors import ActionFailed, Deferred, EngineSlow, EngineUnavailable

Outcome = Literal["success", "error", "skipped", "waiting"]


class DoneElsewhere(Exception):
    """Raised by `execute`: another service's worker already did this shared step (a network
    or volume several services use). Its dependents go on; it is not reported as done here."""


@dataclass(frozen=True, slots=True)
class StepResult:
    action: Action
    outcome: Outcome
    error: str | None = None
    duration_s: float = 0.0
    transient: bool = False  # retrying soon may help (back off briefly)
    engine_fault: bool = False  # the engine was away or too slow: says nothing of the action
    shared: bool = False  # a success another worker brought about (DoneElsewhere): not ours


def apply(
    plan: Plan,
    execute: Callable[[Action], None],
    *,
    workers: int = 8,
    on_result: Callable[[StepResult], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[StepResult, ...]:
    """Execute `plan`; return one result per step, in completion order. Once `cancelled()`
    says so (shutdown), steps not yet started are skipped."""
    steps = {s.key: s for s in plan.steps}
    pending: dict[str, Step] = dict(steps)
    results: dict[str, StepResult] = {}
    ordered: list[StepResult] = []
    running: dict[Future[StepResult], str] = {}

    def finish(result: StepResult, key: str) -> None:
        results[key] = result
        ordered.append(result)
        if on_result:
            on_result(result)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="apply") as pool:
        while pending or running:
            for key, step in list(pending.items()):
                deps = [d for d in step.after if d in steps]
                failed = next(
                    (d for d in deps if d in results and results[d].outcome != "success"), None
                )
                if failed or cancelled():
                    del pending[key]
                    why = f"{failed} did not succeed" if failed else "shutting down"
                    finish(StepResult(step.action, "skipped", f"skipped: {why}"), key)
                elif all(d in results for d in deps):
                    del pending[key]
                    running[pool.submit(_run, step.action, execute)] = key
            if not running:
                if pending:  # unreachable with a well-formed plan: a dependency cycle
                    for key, step in pending.items():
                        finish(StepResult(step.action, "skipped", "skipped: dependency cycle"), key)
                    pending.clear()
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(future.result(), running.pop(future))
    return tuple(ordered)


def _run(action: Action, execute: Callable[[Action], None]) -> StepResult:
    start = time.monotonic()
    try:
        execute(action)
    except Deferred as exc:
        return StepResult(action, "waiting", str(exc), time.monotonic() - start)
    except DoneElsewhere:
        return StepResult(action, "success", None, time.monotonic() - start, shared=True)
    except EngineUnavailable as exc:
        return StepResult(action, "error", str(exc), time.monotonic() - start, True, True)
    except ActionFailed as exc:
        took = time.monotonic() - start
        return StepResult(
            action, "error", str(exc), took, exc.transient, isinstance(exc, EngineSlow)
        )
    except Exception as exc:  # a bug must not kill the pass; report it as this step's error
        return StepResult(action, "error", f"{type(exc).__name__}: {exc}", time.monotonic() - start)
    return StepResult(action, "success", None, time.monotonic() - start)
