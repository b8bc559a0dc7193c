"""The step executor: parallel where independent, dependents skipped on failure."""

from __future__ import annotations

import threading

from reconciler.core.actions import HostAction as Action
from reconciler.core.actions import Plan, StartContainer, Step
from reconciler.errors import ActionFailed
from reconciler.targets.host.executor import apply


def start(name: str) -> StartContainer:
    return StartContainer(f"id-{name}", name, "svc", "test")


def test_failure_skips_only_dependents() -> None:
    """One failing step does not stop the others; only the steps after it are skipped."""
    plan = Plan(
        steps=(
            Step(start("a")),
            Step(start("b"), frozenset({"container:a"})),
            Step(start("c")),
        )
    )

    def execute(action: Action) -> None:
        if action.name == "a":
            raise ActionFailed("boom from docker")

    results = {r.action.name: r for r in apply(plan, execute)}
    assert results["a"].outcome == "error" and results["a"].error == "boom from docker"
    assert results["b"].outcome == "skipped" and "container:a" in (results["b"].error or "")
    assert results["c"].outcome == "success"


def test_independent_steps_run_in_parallel() -> None:
    """Independent steps overlap in time (a bounded pool), dependents wait."""
    active, peak, lock = 0, 0, threading.Lock()
    full = threading.Event()  # 4 steps running at once: each holds its worker until then
    order: list[str] = []

    def execute(action: Action) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 4:
                full.set()
        full.wait(30)
        with lock:
            active -= 1
            order.append(action.name)

    plan = Plan(
        steps=(
            *(Step(start(f"s{i}")) for i in range(6)),
            Step(start("last"), frozenset(f"container:s{i}" for i in range(6))),
        )
    )
    apply(plan, execute, workers=4)
    assert peak == 4
    assert order[-1] == "last"


def test_unexpected_exception_is_reported_not_raised() -> None:
    """A bug in one step becomes that step's error; the pass goes on."""

    def execute(action: Action) -> None:
        raise KeyError("oops")

    (r,) = apply(Plan(steps=(Step(start("a")),)), execute)
    assert r.outcome == "error" and "KeyError" in (r.error or "")
