"""A keyed work queue in the manner of client-go's: a key waits in the queue once however
often it is added, is never handed to two workers at once, and a key added while a worker
has it runs again afterwards. `add_after` is the requeue with a deadline (no sleeping).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque

# The longest a delayed key waits, and the longest a worker sleeps before looking again: far
# beyond any real requeue, far below what a timer can hold (threading.TIMEOUT_MAX, time_t).
MAX_DELAY_S = 86400.0


class ShutDown(Exception):
    """The queue was shut down: the worker should return."""


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # waiting to be processed
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []  # (due, seq, key) heap
        self._due: dict[str, float] = {}  # the earliest due time per delayed key
        self._seq = itertools.count()
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Add `key` after `delay` seconds (the earliest of several such requests wins; a key
        queued meanwhile still comes back then)."""
        if not delay > 0:  # also NaN
            self.add(key)
            return
        due = time.monotonic() + min(delay, MAX_DELAY_S)
        with self._cond:
            if self._shutdown or self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._seq), key))
            self._cond.notify()

    def get(self) -> str:
        """The next key (blocks); raise ShutDown once the queue is shut down."""
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown
                timeout = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                self._cond.wait(timeout)

    def _promote_due(self) -> float | None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)
        return min(self._delayed[0][0] - now, MAX_DELAY_S) if self._delayed else None

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing queued, nothing being processed (delayed keys do not count)."""
        with self._cond:
            return not self._queue and not self._processing

    def pending(self) -> set[str]:
        with self._cond:
            return set(self._queue) | set(self._processing) | set(self._due)
