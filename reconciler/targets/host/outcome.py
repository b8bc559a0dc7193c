"""The `Outcome` of one host service reconcile: when to look again and whether it is settled
(the controller's; keys and `Outcome` itself are the seam's, targets.base)."""

from __future__ import annotations

from reconciler.core.actions import Plan
from reconciler.core.healing import HealingBook
from reconciler.targets.base import Outcome
from reconciler.targets.host.executor import StepResult

DEPENDENCY_RECHECK_S = 1.0


def outcome_of(p: Plan, results: tuple[StepResult, ...], book: HealingBook, now: float) -> Outcome:
    """A service reconcile's outcome: when to look again (its plan's and back-offs' next
    wake-up, at once after a success), whether it is settled, its errors and actions."""
    times = [t for t in (p.wake_at, book.next_wakeup(now)) if t is not None]
    delay = max(0.0, min(times) - now) if times else None
    if any(r.outcome == "success" for r in results):
        delay = 0.0  # level-based: look again at once, the next step may be due now
    waiting = any(r.outcome == "waiting" for r in results)
    gated = any(n.kind == "waiting" for n in p.notes)
    if gated:
        delay = DEPENDENCY_RECHECK_S if delay is None else min(delay, DEPENDENCY_RECHECK_S)
    busy = waiting or gated or p.wake_at is not None
    errors = sum(1 for r in results if r.outcome == "error")
    actions = sum(1 for r in results if r.outcome != "waiting" and not r.shared)
    return Outcome(delay, busy, errors, actions)
