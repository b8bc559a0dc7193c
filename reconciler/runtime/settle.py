"""`reconciler apply`: drive the daemon's keyed work on any target until the project settles.

Settled means no key is queued or running and none is busy (a rollout being monitored, a
drain, a pull, a dependency starting, Swarm updating); keys only waiting out a back-off do
not hold it up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.errors import EngineUnavailable
from reconciler.runtime.backoff import Backoff, requeue_delay
from reconciler.runtime.workqueue import ShutDown, WorkQueue
from reconciler.targets.base import RESYNC, Done, Target


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` did: every result in order, and whether the project settled in time."""

    results: tuple[Done, ...]
    settled: bool

    @property
    def errors(self) -> tuple[Done, ...]:
        """The last result of each action that did not succeed in the end."""
        last = {r.key: r for r in self.results}
        return tuple(r for r in last.values() if r.outcome != "success")

    @property
    def ok(self) -> bool:
        return self.settled and not self.errors


def apply(
    target: Target, *, timeout_s: float, on_done: Callable[[Done], None] | None = None
) -> Applied:
    """Converge with the daemon's own keyed work, collecting every action's result."""
    results: list[Done] = []
    lock = threading.Lock()

    def record(r: Done) -> None:
        with lock:
            results.append(r)
        if on_done is not None:
            on_done(r)

    before, target.on_done = target.on_done, record
    try:
        settled = settle(target, timeout_s=timeout_s)
    finally:
        target.on_done = before
    return Applied(tuple(results), settled)


def settle(target: Target, *, timeout_s: float, workers: int = 4) -> bool:
    """Reconcile every key until settled; False when `timeout_s` ran out first.

    Raise EngineUnavailable if the engine cannot be reached.
    """
    queue = WorkQueue()
    backoff = Backoff()
    busy: dict[str, bool] = {}
    failure: list[EngineUnavailable] = []
    lock = threading.Lock()
    target.bind(queue.add_after)

    def work() -> None:
        while True:
            try:
                key = queue.get()
            except ShutDown:
                return
            try:
                outcome = target.reconcile(key, "manual")
            except EngineUnavailable as exc:
                failure.append(exc)
                queue.done(key)
                queue.shut_down()
                return
            with lock:
                busy[key] = outcome.busy
            queue.done(key)
            delay = requeue_delay(outcome, key, backoff)
            if delay is not None and (outcome.busy or delay == 0):
                queue.add_after(key, delay)

    for key in target.first_keys():
        busy[key] = True
        queue.add(key)
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
