"""`reconciler apply`: drive the same keyed work as the daemon until the project settles.

Settled means no key is queued or running and none is busy (a rollout being monitored, a
drain, a pull, a dependency starting); keys only waiting out a back-off do not hold it up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core.model import DesiredState
from reconciler.core.notes import Note
from reconciler.engine.docker_engine import Engine
from reconciler.errors import EngineUnavailable
from reconciler.runtime.controller import RESYNC, Controller, service_key
from reconciler.runtime.executor import StepResult
from reconciler.runtime.state_store import StateStore
from reconciler.runtime.workqueue import ShutDown, WorkQueue


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply_once` did: every result in order, the planner's notes, and whether the
    project settled in time."""

    results: tuple[StepResult, ...]
    notes: tuple[Note, ...]
    settled: bool

    @property
    def errors(self) -> tuple[StepResult, ...]:
        """The last result of each action that did not succeed in the end."""
        last = {r.action.key: r for r in self.results if r.outcome != "waiting"}
        return tuple(r for r in last.values() if r.outcome != "success")

    @property
    def ok(self) -> bool:
        return self.settled and not self.errors


def apply_once(
    engine: Engine,
    desired: DesiredState,
    store: StateStore,
    *,
    timeout_s: float = 600.0,
    on_result: Callable[[StepResult], None] | None = None,
) -> Applied:
    """Converge `desired` with the daemon's own work queue and rollouts, then return."""
    results: list[StepResult] = []
    notes: list[Note] = []
    lock = threading.Lock()

    def record(r: StepResult) -> None:
        if r.outcome == "waiting":
            return
        with lock:
            results.append(r)
        if on_result:
            on_result(r)

    controller = Controller(engine, desired, store, on_result=record, on_note=notes.append)
    settled = settle(controller, timeout_s=timeout_s)
    return Applied(tuple(results), tuple(dict.fromkeys(notes)), settled)


def settle(controller: Controller, *, timeout_s: float, workers: int = 4) -> bool:
    """Reconcile every key until settled; False when `timeout_s` ran out first.

    Raise EngineUnavailable if the engine cannot be reached.
    """
    queue = WorkQueue()
    busy: dict[str, bool] = {}
    failure: list[EngineUnavailable] = []
    lock = threading.Lock()
    controller.enqueue = queue.add_after

    def work() -> None:
        while True:
            try:
                key = queue.get()
            except ShutDown:
                return
            try:
                outcome = controller.reconcile(key)
            except EngineUnavailable as exc:
                failure.append(exc)
                queue.done(key)
                queue.shut_down()
                return
            with lock:
                busy[key] = outcome.busy
            queue.done(key)
            if outcome.requeue_after is not None and (outcome.busy or outcome.requeue_after == 0):
                queue.add_after(key, outcome.requeue_after)

    for svc in controller.desired.services:
        busy[service_key(svc.name)] = True
        queue.add(service_key(svc.name))
    queue.add(RESYNC)
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    settled = False
    while time.monotonic() < deadline and not failure:
        with lock:
            quiet = not any(busy.values())
        if quiet and queue.idle():
            settled = True
            break
        time.sleep(0.05)
    queue.shut_down()
    for t in threads:
        t.join(5.0)
    if failure:
        raise failure[0]
    return settled
