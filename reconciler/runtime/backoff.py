"""Per-key exponential back-off with jitter (client-go's ItemExponentialFailureRateLimiter):
a key that keeps failing is retried after 0.5, 1, 2, 4, 8 s (each ±20 %), one that succeeds
is forgotten. Used by the daemon and `apply` alike, whichever the target."""

from __future__ import annotations

import random
import threading

from reconciler.core.events import FOLLOW_UPS
from reconciler.targets.base import Outcome

BASE_S = 0.5
CAP_S = 8.0
JITTER = 0.2


class Backoff:
    def __init__(
        self, base: float = BASE_S, cap: float = CAP_S, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, key: str) -> float:
        """The delay before `key` is retried after one more failure."""
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
            jitter = 1.0 + self._rng.uniform(-JITTER, JITTER)
        return min(self.base * 2.0 ** min(n, 32), self.cap) * jitter

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)


# What asked for a pass (the daemon's label: logs, `reconciler_reconcile_trigger_total`, and
# through core.events.TRIGGERS the history). A follow-up is a pass no outside cause asked for.
START = "start"  # the first pass after the daemon started (and the keys it queued)
REQUEUE, BACKOFF = FOLLOW_UPS  # the target asked to look again; a retry after an error


def requeue_delay(outcome: Outcome, key: str, backoff: Backoff) -> float | None:
    """When a key comes back after a reconcile: its own requeue, or (it failed, asked for
    none and is busy) the key's back-off with jitter; a pass without errors forgets the
    back-off. None: only when something asks."""
    return requeue(outcome, key, backoff)[0]


def requeue(outcome: Outcome, key: str, backoff: Backoff) -> tuple[float | None, str]:
    """`requeue_delay` and what to call the pass it queues: `requeue` when the target asked
    for it (with or without errors), `backoff` only for a retry after an error."""
    if not outcome.errors:
        backoff.forget(key)
        return outcome.requeue_after, REQUEUE
    if outcome.requeue_after is not None:
        return outcome.requeue_after, REQUEUE
    return (backoff.next(key) if outcome.busy else None), BACKOFF
