"""What the running daemon decided, per service, for its status file: the steps it holds back
(and what each waits for) and its last actions with their causes. Both adapters keep one
(`status_data`); `reconciler status` shows it instead of judging the file again."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from reconciler.config import secrets
from reconciler.targets.base import Done

KEEP = 5  # last actions kept per service


class Decisions:
    """Held steps and recent causes per service (any thread)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._waits: dict[str, tuple[str, ...]] = {}
        self._recent: dict[str, deque[dict[str, object]]] = {}

    def waiting(self, service: str, texts: Iterable[str]) -> None:
        """The held steps of a service's latest pass (none: nothing waits)."""
        with self._lock:
            self._waits[service] = tuple(texts)

    def done(self, d: Done) -> None:
        """One action taken, with its cause."""
        service = d.action.service or ""
        row: dict[str, object] = {
            "at": round(self._clock(), 3),
            "action": d.text,
            "cause": d.action.cause.text,
            "result": d.outcome,
        }
        if d.error:
            row["error"] = secrets.redact(d.error)  # Docker's error may quote a secret
        with self._lock:
            self._recent.setdefault(service, deque(maxlen=KEEP)).append(row)

    def data(self) -> dict[str, dict[str, object]]:
        """{service: {"waits": [...], "recent": [...]}} (JSON-ready)."""
        with self._lock:
            names = sorted(set(self._waits) | set(self._recent))
            return {
                n: {"waits": list(self._waits.get(n, ())), "recent": list(self._recent.get(n, ()))}
                for n in names
            }
