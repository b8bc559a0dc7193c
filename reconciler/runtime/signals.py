"""Signals, caught before anything else happens: SIGTERM/SIGINT ask to stop, SIGHUP asks
for a reload. The handlers only set flags: a handler may interrupt the main thread anywhere,
even inside a lock, so it takes none. `pump` turns the flags into events (main thread)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType

PUMP_INTERVAL_S = 0.1


class SignalRelay:
    """Install once at start-up (`reconciler run`), before the file is even read."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self._stop_asked = False
        self._reload_asked = False
        self.hups = 0  # SIGHUPs delivered as reload requests (a reload may also be a file's)

    def install(self, noted: Iterable[int] = ()) -> SignalRelay:
        """Take the signals over; `noted`: those the entry point's first handler saw."""

        def on_term(signum: int, frame: FrameType | None) -> None:
            self._stop_asked = True

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload_asked = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        for signum in list(noted):  # read once ours are in: none falls between the two
            if signum == signal.SIGHUP:
                self._reload_asked = True
            else:
                self._stop_asked = True
        return self

    def pump(self) -> None:
        """Deliver what the handlers noted, until a stop is asked (run it in the main thread).

        Many SIGHUPs between two looks are one reload request."""
        while not self.stop.is_set():
            if self._reload_asked:
                self._reload_asked = False
                self.hups += 1
                self.reload.set()
            if self._stop_asked:
                self.stop.set()
                return
            self.stop.wait(PUMP_INTERVAL_S)
