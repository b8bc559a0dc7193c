"""The console script: catches signals before anything else is imported, then runs the CLI.

`reconciler run` must outlive a SIGHUP or SIGTERM sent right after exec: the first
statements below (the standard library only) note them, and `SignalRelay` takes over what
they noted. What remains is Python's own start-up before this module runs (README).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a command its reader left

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

    try:
        code = cli_main(signals=relay)
        sys.stdout.flush()  # here, so a reader gone at the last line is caught below
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """stdout's reader went away (`reconciler status | head -4`): end quietly, as CLI tools
    do, instead of a traceback. Not SIGPIPE's default action, which would also kill the
    process on a write to a Docker or HTTP socket. Python's own flush at exit goes to
    /dev/null (else it prints `Exception ignored ... BrokenPipeError`)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE
