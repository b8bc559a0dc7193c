"""The commands that act on a target: plan, apply, run, status, down (`reconciler.cli.main`
loads the file and calls them)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from reconciler.cli import history, notify_setup, plan_output, status_view
from reconciler.cli.parser import DEFAULT_LISTEN
from reconciler.cli.progress import ProgressView, objects_in
from reconciler.cli.snapshots import restore, snapshots
from reconciler.config import secrets
from reconciler.core.policy import Denial
from reconciler.ops.image_lock import check_lock, lock_path, read_lock
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.ops.metrics import Metrics
from reconciler.runtime.conditions import ENGINE_UNREACHABLE_AFTER_S
from reconciler.runtime.daemon import Daemon, Options
from reconciler.runtime.git_source import GitSource, source_lines
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.settle import apply
from reconciler.targets.base import Desired, Done, Settings, TargetKind

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2
EXIT_PENDING = 2


class Unsupported(Exception):
    """An option the chosen target cannot honour (a capability it lacks)."""


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(state_dir=args.state_dir)


def _recording(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> Settings:
    """The settings of a command that acts (`apply`, `down`): it writes the history."""
    return Settings(state_dir=args.state_dir, record=history.sink(args, desired.project, kind.name))


def _require(kind: TargetKind, wanted: bool, capability: str, option: str) -> None:
    """Refuse an option the target cannot honour (instead of ignoring it)."""
    if wanted and not getattr(kind.capabilities, capability):
        raise Unsupported(f"{option} is not supported by --target {kind.name}")


def _plan(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    report = kind.open(desired, _settings(args)).plan()
    if args.policy_said:  # not the default policy: say which (the daemon's, or --policy)
        print(f"# {args.policy_said}", file=sys.stderr if args.json else sys.stdout)
    return plan_output.show(report, desired, denied_rules(args.denials), kind.name, args.json)


def denied_rules(denials: Sequence[Denial]) -> dict[str, str]:
    """service -> the rules the host policy denies it by ("cap_add, privileged")."""
    rules: dict[str, set[str]] = {}
    for d in denials:
        rules.setdefault(d.service, set()).add(d.rule)
    return {svc: ", ".join(sorted(r)) for svc, r in rules.items()}


def _show(r: Done) -> None:
    line = f"{r.outcome:8} {r.text}"
    text = line if r.error is None else f"{line}: {r.error}"
    print(secrets.redact(text), flush=True)  # Docker's error may quote a secret


def _apply(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    _require(kind, args.take_over_compose, "takes_over_compose", "--take-over-compose")
    settings = locked_settings(args, desired)  # --locked, --lock-file (image lock file)
    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler apply")
    try:
        target = kind.open(desired, settings)
        if args.take_over_compose and not target.take_over(_show, log_only=False):
            return EXIT_ERROR
        if getattr(args, "view", False):  # a terminal: one line per object, N/M
            total = objects_in(target.plan().steps)
            with ProgressView(desired.project, total=total) as view:
                applied = apply(target, timeout_s=args.timeout, on_done=view.update)
        else:
            applied = apply(target, timeout_s=args.timeout, on_done=_show)
        report = target.apply_report()
    finally:
        lock.release()
    for note in report.notes:
        print(f"# {note}")
    for line in report.problems:
        print(line)
    problems = len(desired.denied) + len(report.problems)  # each denial was shown above
    if not applied.settled:
        status = "reconciler status" + ("" if kind.name == "host" else f" --target {kind.name}")
        print(f"not converged within {args.timeout:g}s (see `{status}`)")
    elif not applied.results and not problems:
        print(f"{desired.project}: in sync")
    return EXIT_OK if applied.ok and not problems else EXIT_ERROR


def locked_settings(args: argparse.Namespace, desired: Desired) -> Settings:
    """apply's settings: where the image lock file is, and with --locked what it pins (a
    stale lock raises LockStale, before anything is touched)."""
    path = lock_path(desired.project, args.state_dir, args.lock_file)
    locked = None
    if args.locked:
        found = read_lock(path)
        locked = check_lock(path, found, desired.project, desired.image_requests)
    return Settings(
        state_dir=args.state_dir,
        image_lock=path,
        locked=locked,
        record=history.sink(args, desired.project, "host" if args.target is None else args.target),
    )


def _run(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    _require(kind, args.take_over_compose, "takes_over_compose", "--take-over-compose")
    _require(kind, args.prune_images, "prunes_images", "--prune-images")
    listen = DEFAULT_LISTEN if args.listen is None else tuple(a for a in args.listen if a)
    git = getattr(args, "git", None)
    atomic = {"settle": 0.0, "removal_settle": 0.0} if git else {}  # a commit is never half
    metrics = Metrics()
    journal = history.sink(args, desired.project, kind.name, metrics)
    record = Recorder(journal)
    sender, notify = notify_setup.sink(args, desired.project, metrics)
    if sender is not None:
        record.add(sender)
    opts = Options(
        path=args.file,
        **atomic,  # type: ignore[arg-type]
        interval=args.interval,
        listen=listen,
        lock_dir=args.lock_dir,
        state_dir=args.state_dir,
        pull_timeout=args.pull_timeout,
        workers=args.workers,
        prune_images=args.prune_images,
        policy=args.policy,
        strict_modes=not args.no_strict_modes,
        web=args.web,
        engine_unreachable_after=notify.engine_unreachable_after
        if notify
        else ENGINE_UNREACHABLE_AFTER_S,
    )
    daemon = Daemon(
        opts,
        kind,
        desired,
        signals=args.signals,
        policy=args.policy_obj,
        metrics=metrics,
        record=record,
    )
    if sender is not None:
        daemon.conditions.after_reload = lambda: notify_setup.reread(
            args, sender, daemon.conditions
        )
    if git is not None:
        source = daemon.source = GitSource(daemon, git, args.git_refused)
        journal.commit = lambda: source.current.sha if source.current else ""
    if args.take_over_compose:
        lock = ProjectLock(desired.project, args.lock_dir)
        lock.acquire(role="reconciler run --take-over-compose")
        try:
            taken = daemon.target.take_over(lambda r: None, log_only=True)
        finally:
            lock.release()  # the daemon takes it again at once
        if not taken:
            return EXIT_ERROR
    code = daemon.run()
    if sender is not None:
        sender.close()  # what is queued (a last `resolved`) gets a moment to go out
    if daemon.unfinished:  # do not let the interpreter wait for that call's thread at exit
        sys.stdout.flush()
        os._exit(code)
    return code


def _status(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    target = kind.open(desired, _settings(args))
    status_file = status_path(desired.project, args.lock_dir)
    daemon = status_view.daemon_status(desired.project, args.lock_dir, status_file)
    denied = status_view.denials_of(daemon, denied_rules(args.denials))  # the daemon's, if any
    print(target.status(status_file, denied))
    own = args.policy_obj.source if args.policy_obj is not None else "the default policy"
    print(status_view.account(desired.project, daemon, own))
    for line in source_lines(status_file):
        print(line)
    return EXIT_OK


def _down(args: argparse.Namespace, kind: TargetKind, desired: Desired) -> int:
    _require(kind, args.volumes, "removes_volumes", "--volumes")
    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler down")
    try:
        results = kind.open(desired, _recording(args, kind, desired)).down(volumes=args.volumes)
    finally:
        lock.release()
    for r in results:
        line = f"{r.outcome:8} {r.text}"
        print(line if r.error is None else f"{line}: {r.error}")
    if not results:
        print(f"{desired.project}: nothing to remove")
    return EXIT_OK if all(r.outcome == "success" for r in results) else EXIT_ERROR


COMMANDS: dict[str, Callable[[argparse.Namespace, TargetKind, Desired], int]] = {
    "plan": _plan,
    "apply": _apply,
    "run": _run,
    "status": _status,
    "down": _down,
    "snapshots": snapshots,
    "restore": restore,
}
