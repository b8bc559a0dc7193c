"""The keys a `Controller` reconciles (`resync`, `service:NAME`, `image:NAME`) and the
`Outcome` of one reconcile. Shared by the controller and its image follower and fast
heals; `reconciler.runtime.controller` re-exports them for the daemon and `apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.healing import HealingBook
from reconciler.core.model import Plan
from reconciler.runtime.executor import StepResult

RESYNC = "resync"
DEPENDENCY_RECHECK_S = 1.0


def service_key(name: str) -> str:
    return f"service:{name}"


def image_key(name: str) -> str:
    return f"image:{name}"


@dataclass(frozen=True, slots=True)
class Outcome:
    requeue_after: float | None = None
    busy: bool = False  # a rollout, drain, pull or dependency is under way: not settled
    errors: int = 0
    actions: int = 0


def outcome_of(p: Plan, results: tuple[StepResult, ...], book: HealingBook, now: float) -> Outcome:
    """A service reconcile's outcome: when to look again (its plan's and back-offs' next
    wake-up, at once after a success), whether it is settled, its errors and actions."""
    times = [t for t in (p.wake_at, book.next_wakeup(now)) if t is not None]
    delay = max(0.0, min(times) - now) if times else None
    if any(r.outcome == "success" for r in results):
        delay = 0.0  # level-based: look again at once, the next step may be due now
    waiting = any(r.outcome == "waiting" for r in results)
    gated = any("waiting for" in n for n in p.notes)
    if gated:
        delay = DEPENDENCY_RECHECK_S if delay is None else min(delay, DEPENDENCY_RECHECK_S)
    busy = waiting or gated or p.wake_at is not None
    errors = sum(1 for r in results if r.outcome == "error")
    actions = sum(1 for r in results if r.outcome != "waiting")
    return Outcome(delay, busy, errors, actions)
