"""`reconciler snapshots [SERVICE]` and `reconciler restore SERVICE SNAPSHOT`: the volume
snapshots rollouts took (x-reconciler.snapshots), listed and restored by hand. Host only.

`build_parser` adds the parsers (`add_parsers`); `reconciler.cli.commands.COMMANDS` runs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Protocol, cast

from reconciler.config import policy_file
from reconciler.core.snapshots import SnapshotEntry, size_text
from reconciler.errors import ReconcilerError
from reconciler.ops.lock import ProjectLock
from reconciler.targets.base import Desired, Settings, TargetKind

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2


class _Snapshots(Protocol):
    def restore_by_hand(self, service: str, ident: str) -> SnapshotEntry: ...


class _Store(Protocol):
    def entries(self, service: str | None = None) -> list[SnapshotEntry]: ...
    def held(self, service: str) -> str: ...


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The two commands' parsers (`file` is -f: the positionals name what to show)."""
    for name, text in [
        ("snapshots", "list the volume snapshots rollouts took (x-reconciler.snapshots)"),
        ("restore", "put a snapshot back into its volume (the service is stopped for it)"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        if name == "snapshots":
            p.add_argument("service", nargs="?", default=None)
        else:
            p.add_argument("service")
            p.add_argument("snapshot", help="its id (or the start of it), from `snapshots`")
        p.add_argument("-f", "--file", type=Path, default=Path("desired_state.yaml"))
        p.add_argument("--target", default=None, help="host only (Swarm keeps no snapshots)")
        p.add_argument("--lock-dir", type=Path, default=None)
        p.add_argument("--state-dir", type=Path, default=None)
        p.add_argument("--no-strict-modes", action="store_true")
        if name == "restore":
            p.add_argument(
                "--policy",
                type=Path,
                default=None,
                help=f"the host policy (default {policy_file.DEFAULT_PATH})",
            )


def _refused(kind: TargetKind) -> bool:
    """Swarm keeps no snapshots: said clearly (exit 2), never an empty list."""
    if kind.capabilities.snapshots:
        return False
    print(
        f"error: --target {kind.name} keeps no volume snapshots: they are host-only (a "
        "task's volumes live on whichever node runs it); `snapshots` and `restore` refused",
        file=sys.stderr,
    )
    return True


def snapshots(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    """The table: time, service, volume, size, revision, id (and services held stopped)."""
    if _refused(kind):
        return EXIT_INPUT
    target = kind.open(desired, Settings(state_dir=args.state_dir))
    store = cast(_Store, target.snapshots.store)  # type: ignore[attr-defined]
    entries = store.entries(args.service)
    if not entries:
        print(f"{desired.project}: no snapshots" + (f" of {args.service}" if args.service else ""))
    else:
        print(f"{'TIME (UTC)':20} {'SERVICE':14} {'VOLUME':28} {'SIZE':>10} {'REVISION':12} ID")
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
            print(
                f"{when:20} {e.service:14} {e.volume:28} {size_text(e.size):>10} "
                f"{e.revision[:12]:12} {e.id}"
            )
    for svc in [args.service] if args.service else [s.name for s in desired.services]:
        held = store.held(svc)
        if held:
            print(f"held stopped: {svc}: {held}")
    return EXIT_OK


def restore(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    """Stop the service, restore, start it (holding the project lock: no daemon may run)."""
    if _refused(kind):
        return EXIT_INPUT
    if args.service in desired.denied:
        print(f"error: service {args.service} is denied by the host policy; not restored")
        return EXIT_ERROR
    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler restore")
    try:
        target = kind.open(desired, Settings(state_dir=args.state_dir))
        snaps = cast(_Snapshots, target.snapshots)  # type: ignore[attr-defined]
        try:
            entry = snaps.restore_by_hand(args.service, args.snapshot)
        except (KeyError, ReconcilerError) as exc:
            text = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            print(f"error: restore failed: {text}")
            return EXIT_ERROR
    finally:
        lock.release()
    print(
        f"restored volume {entry.volume} of {args.service} from snapshot {entry.id} "
        f"({size_text(entry.size)}, revision {entry.revision[:12]})"
    )
    return EXIT_OK
