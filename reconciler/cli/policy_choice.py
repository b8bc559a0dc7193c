"""Which host policy a command judges the file under: `--policy`, else for `plan` and
`status` the one the project's running daemon judges by (its status file names it), else the
default. Never a file found beside the desired state: its author must not grant itself
rights. `reconciler.cli.main` calls `choose`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.cli.status_view import daemon_status
from reconciler.config import policy_file
from reconciler.core.policy import DEFAULT, Policy
from reconciler.errors import DesiredStateError
from reconciler.ops.lock import status_path

FOLLOWS_DAEMON = ("plan", "status")  # commands that show what the daemon would do


@dataclass(frozen=True)
class Chosen:
    """The policy, and (when it is not the default) a line saying which one and why."""

    policy: Policy
    said: str | None = None


def choose(args: argparse.Namespace, project: str) -> Chosen:
    """The policy `args.command` judges by (DesiredStateError when it cannot be read)."""
    if args.policy is not None:
        policy = policy_file.load(args.policy)
        if args.policy == policy_file.DEFAULT_PATH:
            return Chosen(policy)
        return Chosen(policy, f"judged under the host policy {policy.source} (--policy)")
    if args.command in FOLLOWS_DAEMON:
        lock_dir = getattr(args, "lock_dir", None)
        status = daemon_status(project, lock_dir, status_path(project, lock_dir))
        recorded = str(status.get("policy") or "") if status else ""
        if status and recorded:
            return _daemons(recorded, int(status.get("pid") or 0))
    return Chosen(policy_file.load(None))


def _daemons(recorded: str, pid: int) -> Chosen:
    """The running daemon's policy: the path it recorded (relative to its working folder
    when it was started with a relative path), or the built-in one."""
    if recorded == DEFAULT.source:
        return Chosen(DEFAULT)
    path = Path(recorded)
    if not path.is_absolute():
        with contextlib.suppress(OSError):  # started with a relative --policy: its folder's
            path = Path(os.readlink(f"/proc/{pid}/cwd")) / path
    try:
        policy = policy_file.load(path)
    except DesiredStateError as exc:
        raise DesiredStateError(
            exc.source,
            [*exc.problems, f"(the host policy of the running daemon, pid {pid}; give --policy)"],
        ) from None
    if path == policy_file.DEFAULT_PATH:
        return Chosen(policy)
    said = f"judged under the host policy {recorded} (the running daemon's, pid {pid})"
    return Chosen(policy, said)
