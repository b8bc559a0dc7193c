"""The console script: catches signals before the heavy imports, then runs the CLI."""

from __future__ import annotations

import sys


def main() -> int:
    relay = None
    if "run" in sys.argv[1:]:  # the daemon: an early SIGHUP or SIGTERM must not kill it
        from reconciler.runtime.signals import SignalRelay

        relay = SignalRelay().install()
    from reconciler.cli import main as cli_main

    return cli_main(signals=relay)
