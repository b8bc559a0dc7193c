"""The daemon's own conditions as events (core.events): the engine unreachable for longer
than a set time, services the host policy denies, a reload rejected; each firing once when
it starts and `resolved` when it clears. Owned by the `Daemon` (and its `Reloader`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from reconciler.core.events import Event, Record
from reconciler.core.policy import Denial

ENGINE_UNREACHABLE_AFTER_S = 60.0


class DaemonConditions:
    """Turns what the daemon sees into firing/resolved events, each transition once."""

    def __init__(
        self,
        record: Record,
        *,
        engine_after: float = ENGINE_UNREACHABLE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.record = record
        self.engine_after = engine_after
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._down_error = ""
        self._engine_firing = False
        self._denied: dict[str, str] = {}  # service -> rules
        self._rejected: tuple[str, str] | None = None  # (error, content) last rejected
        self.after_reload: Callable[[], None] = lambda: None  # e.g. read `notify:` again

    # ------------------------------------------------------------------ the engine

    def engine_down(self, error: str) -> None:
        """A call found the engine gone (again)."""
        with self._lock:
            if self._down_since is None:
                self._down_since = self.clock()
            self._down_error = error
        self.tick()

    def engine_ok(self) -> None:
        with self._lock:
            since, firing = self._down_since, self._engine_firing
            self._down_since, self._engine_firing = None, False
        if firing and since is not None:
            gone = self.clock() - since
            self.record(
                Event(
                    "engine_unreachable",
                    message=f"the Docker engine answers again (gone {gone:.0f} s)",
                    trigger="engine",
                    result="resolved",
                    duration_s=round(gone, 1),
                )
            )

    def tick(self) -> None:
        """Called often (the file watch's tick too): fires once the engine has been gone
        for `engine_after` seconds."""
        with self._lock:
            since = self._down_since
            if since is None or self._engine_firing:
                return
            gone = self.clock() - since
            if gone < self.engine_after:
                return
            self._engine_firing = True
            error = self._down_error
        self.record(
            Event(
                "engine_unreachable",
                message=f"the Docker engine has been unreachable for {gone:.0f} s; retrying",
                trigger="engine",  # the daemon's own calls found it gone
                cause=error,
                result="firing",
                duration_s=round(gone, 1),
            )
        )

    # ------------------------------------------------------------------ policy and reloads

    def denials(
        self, denials: Iterable[Denial], services: Iterable[str], trigger: str = "resync"
    ) -> None:
        """The denials of the state just loaded: new ones fire, those gone (or of services
        no longer in the file) are resolved; `trigger`: what had it loaded (the start's
        first pass: `resync`; a reload: `file edit`, `reload signal`, `git commit`)."""
        rules: dict[str, set[str]] = {}
        for d in denials:
            rules.setdefault(d.service, set()).add(d.rule)
        now = {svc: ", ".join(sorted(r)) for svc, r in rules.items()}
        wanted = set(services)
        with self._lock:
            before, self._denied = self._denied, now
        for svc, text in sorted(now.items()):
            if before.get(svc) != text:
                self.record(
                    Event(
                        "denied",
                        service=svc,
                        message=f"service {svc} is denied by the host policy; not created",
                        trigger=trigger,
                        cause=f"rule {text}",
                        result="firing",
                    )
                )
        for svc in sorted(before.keys() - now.keys()):
            gone = "left the file" if svc not in wanted else "is allowed now"
            self.record(
                Event(
                    "denied",
                    service=svc,
                    message=f"service {svc} {gone}",
                    trigger=trigger,
                    result="resolved",
                )
            )

    def reload_rejected(
        self, error: str, trigger: str = "", revision: str = "", content: str = ""
    ) -> None:
        """A rejected read: one row per rejected content and error (`content`: a digest of
        the file); the same file read again with the same error is not told twice."""
        with self._lock:
            before, self._rejected = self._rejected, (error, content)
        if before == (error, content):
            return
        self.record(
            Event(
                "reload_rejected",
                message="the desired state was rejected; the last good one stays",
                trigger=trigger,
                cause=error,
                result="firing",
                revision=revision,
            )
        )

    def reload_accepted(self, digest: str) -> None:
        with self._lock:
            was, self._rejected = self._rejected is not None, None
        self.after_reload()
        if was:
            self.record(
                Event(
                    "reload_rejected",
                    message="the desired state was read and accepted",
                    revision=digest,
                    result="resolved",
                )
            )
