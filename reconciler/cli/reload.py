"""`reconciler reload`: SIGHUP to the daemon holding the project, then wait for its answer
(systemd's ExecReload). No engine call: a signal and the daemon's status file."""

from __future__ import annotations

import argparse
import json as jsonlib
import os

import structlog

from reconciler.cli.commands import EXIT_ERROR, EXIT_OK
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.targets.base import Desired


def reload(args: argparse.Namespace, desired: Desired) -> int:
    """SIGHUP to the daemon, then wait until a reload that began after it has finished (the
    status file says so): `systemctl reload` returns once the file is applied, and fails when
    the daemon rejected it. systemd 252 cannot wait on RELOADING=1/READY=1 by itself."""
    import signal
    import time

    log = structlog.get_logger("reconciler")
    project = desired.project
    pid = args.pid
    if pid is None:
        held = ProjectLock(project, args.lock_dir).holder()
        if held is None or held[1] != "reconciler daemon":
            what = f"only a {held[1]} (pid {held[0]})" if held else "no daemon"
            log.error(f"nothing to reload: {what} acts on project {project}")
            return EXIT_ERROR
        pid = held[0]
    path = status_path(project, args.lock_dir)
    # A daemon takes its project's lock once a SIGHUP can no longer kill it: no lock, no
    # signal (the project's, or another's when the edit renamed it).
    locks = sorted(path.parent.glob("reconciler-*.lock"))
    names = (p.name.removeprefix("reconciler-").removesuffix(".lock") for p in locks)
    if (pid, "reconciler daemon") not in (ProjectLock(n, path.parent).holder() for n in names):
        log.error(
            "not signalling: that process has not announced readiness (it holds no daemon lock)",
            pid=pid,
            lock_dir=str(path.parent),
        )
        return EXIT_ERROR

    def last_reload() -> dict[str, object] | None:
        # The daemon's status file; another project's when the edit renamed the project
        # (the daemon refuses that, and says so in its status file under the old name).
        for candidate in (path, *sorted(path.parent.glob("reconciler-*.status.json"))):
            try:
                data = jsonlib.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if data.get("pid") == pid:
                reload = data.get("reload")
                return reload if isinstance(reload, dict) else None
        return None

    asked = time.monotonic_ns() // 1000
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        log.error("cannot signal the daemon", pid=pid, error=str(exc))
        return EXIT_ERROR
    deadline = time.monotonic() + args.timeout
    while not ((done := last_reload()) and int(str(done.get("monotonic_usec", 0))) >= asked):
        if time.monotonic() > deadline:
            log.error(
                "the daemon did not confirm the reload in time",
                pid=pid,
                timeout_s=args.timeout,
                status_file=str(path),
            )
            return EXIT_ERROR
        time.sleep(0.05)
    if done.get("result") != "success":
        log.error("reload rejected; the daemon keeps the last good state", error=done.get("error"))
        return EXIT_ERROR
    log.info("reloaded", project=project, pid=pid, digest=str(done.get("digest", ""))[:12])
    return EXIT_OK
