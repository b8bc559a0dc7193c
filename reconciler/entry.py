"""The console script: catches signals before anything else is imported, then runs the CLI.

`reconciler run` must outlive a SIGHUP or SIGTERM sent right after exec: the first
statements below (the standard library only) note them, and `SignalRelay` takes over what
they noted. What remains is Python's own start-up before this module runs (README).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_early: list[int] = []  # signals noted before the relay took over


def _note(signum: int, frame: FrameType | None) -> None:
    _early.append(signum)


if "run" in sys.argv[1:]:  # the daemon: an early SIGHUP or SIGTERM must not kill it
    signal.signal(signal.SIGHUP, _note)
    signal.signal(signal.SIGTERM, _note)


def main() -> int:
    relay = None
    if "run" in sys.argv[1:]:
        from reconciler.runtime.signals import SignalRelay

        relay = SignalRelay().install(noted=_early)
    from reconciler.cli import main as cli_main

    return cli_main(signals=relay)
