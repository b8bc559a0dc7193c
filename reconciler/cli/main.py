"""`reconciler`'s entry: parse, configure logs, load the file for the chosen target (with
StrictModes and the host policy), then run the command.

Exit codes: 0 done / in sync; 2 bad input (for `plan`: changes pending); 1 other errors
(for `plan`: also bad input, since 2 already means "changes pending").
"""

from __future__ import annotations

import argparse
import contextlib
import json as jsonlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from reconciler import targets
from reconciler.cli import git_args, history, policy_choice, progress
from reconciler.cli.commands import COMMANDS, EXIT_ERROR, EXIT_INPUT, EXIT_OK, Unsupported
from reconciler.cli.importer import import_compose_file
from reconciler.cli.parser import build_parser
from reconciler.cli.reload import reload
from reconciler.config import policy_file, profiles, secrets, strict_modes, web_config
from reconciler.config.compose_sources import chosen
from reconciler.core.policy import Denial
from reconciler.errors import DesiredStateError, EngineUnavailable, LockHeld, NotASwarmManager
from reconciler.ops import logs
from reconciler.ops.image_lock import LockStale
from reconciler.runtime.signals import SignalRelay
from reconciler.targets.base import Desired


def main(argv: Sequence[str] | None = None, signals: SignalRelay | None = None) -> int:
    """The CLI; returns the exit code. `signals`: handlers the entry point installed first."""
    args = build_parser().parse_args(argv)
    _choose_files(args)
    with selected_profiles(getattr(args, "profile", None)):
        if args.command == "import":  # prints the file it writes: nothing to redact there
            return _main(args, signals)
        with secrets.redacted_output():  # no printer shows what a secret-looking variable gave
            return _main(args, signals)


@contextlib.contextmanager
def selected_profiles(names: list[str] | None) -> Iterator[None]:
    """`--profile` replaces COMPOSE_PROFILES for this run, as compose: the loader reads it
    there, so the daemon's reloads select the same services."""
    if not names:
        yield
        return
    before = os.environ.get(profiles.ENV)
    os.environ[profiles.ENV] = ",".join(names)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(profiles.ENV, None)
        else:
            os.environ[profiles.ENV] = before


def _choose_files(args: argparse.Namespace) -> None:
    """`-f` files, COMPOSE_FILE or the file named: one path (`compose_sources.chosen`).
    (`history`, `snapshots` and `restore` read one file's project name: their own -f.)"""
    if not hasattr(args, "files"):
        return
    from reconciler.config.compose_import import compose_environment

    environ = compose_environment(Path.cwd())  # COMPOSE_FILE in ./.env too, as compose
    if args.command == "import":
        args.compose_file = chosen(args.compose_file, args.files, environ)
    else:
        default = Path("desired_state.yaml")
        args.file = chosen(args.file, args.files, environ, default)


def _main(args: argparse.Namespace, signals: SignalRelay | None) -> int:
    if args.command == "run":
        args.signals = signals or SignalRelay().install()
    json = {"auto": None, "json": True, "console": False}[args.log_format]
    args.view = progress.wants_view(
        args.command, getattr(args, "progress", "plain"), getattr(args, "verbose", False)
    )
    logs.configure("error" if args.view else args.log_level, json=json)  # the view says it
    bad_input = EXIT_ERROR if args.command == "plan" else EXIT_INPUT
    # Under systemd (`run`, and `reload` as ExecReload) the journal gets JSON lines only.
    journal = args.command in ("run", "reload") and (
        json if json is not None else not sys.stderr.isatty()
    )

    def error(text: str) -> None:
        if journal:
            line = {"event": f"reconciler {args.command} failed", "error": text, "level": "error"}
            print(jsonlib.dumps(line), file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    if args.command == "import":
        return import_compose_file(args)
    if args.command == "history":  # reads a file of the state directory: no engine, no lock
        return history.show(args)
    web_path = getattr(args, "web_config_file", None)
    name = getattr(args, "target", None) or os.environ.get("RECONCILER_TARGET") or "host"
    try:
        kind = targets.kind(name)
    except KeyError:
        error(f"error: RECONCILER_TARGET must be one of {', '.join(targets.names())}, not {name!r}")
        return bad_input
    try:
        git_args.prepare(args, kind)  # a git source: args.file is its commit's file
        desired = kind.load(args.file)
        judged = policy_choice.choose(args, desired.project) if hasattr(args, "policy") else None
        policy = judged.policy if judged is not None else None
        args.policy_said = judged.said if judged is not None else None  # plan says which
        args.web = web_config.load(web_path) if web_path else None
    except DesiredStateError as exc:
        error(str(exc))
        return bad_input
    if not _strict_modes(args, desired, journal, error):
        return EXIT_INPUT
    denials: tuple[Denial, ...] = ()
    if policy is not None:
        desired, denials = kind.judge(desired, policy)
        for d in denials if args.command not in ("run", "status") else ():  # status: its table
            print(f"denied: {d.message(desired.source, policy)}", file=sys.stderr)
    args.policy_obj = policy
    args.denials = denials
    if args.command == "validate":
        shown = args.git.describe() if args.git is not None else args.file
        if denials:
            denied = ", ".join(sorted(desired.denied))
            print(f"{shown}: valid, but the host policy denies: {denied}")
            return EXIT_INPUT
        print(f"{shown}: {kind.summary(desired)}")
        return EXIT_OK
    if args.command == "reload":  # a signal and a file: no engine call
        return reload(args, desired)
    try:
        return COMMANDS[args.command](args, kind, desired)
    except (EngineUnavailable, NotASwarmManager) as exc:
        error(f"error: {exc}")
        return EXIT_ERROR
    except (LockHeld, Unsupported, LockStale) as exc:
        error(f"error: {exc}")
        return EXIT_INPUT


def _strict_modes(
    args: argparse.Namespace, desired: Desired, journal: bool, error: Callable[[str], None]
) -> bool:
    """StrictModes: inputs others can write refuse `run` and `apply`, and warn elsewhere."""
    if args.no_strict_modes:
        structlog.get_logger("reconciler").warning(strict_modes.warn_off())
        return True
    inputs: list[str | Path] = [args.file, *desired.watched]
    if hasattr(args, "policy"):
        inputs.append(args.policy or policy_file.DEFAULT_PATH)
    if args.web is not None:
        inputs += [args.web_config_file, *args.web.files]
    insecure = strict_modes.problems(inputs)
    if insecure and args.command in ("run", "apply"):
        error(str(strict_modes.InsecureInput(str(args.file), insecure)))
        return False
    for line in insecure:
        if journal:
            structlog.get_logger("reconciler").warning("input not safe", problem=line)
        else:
            print(f"warning: {line}", file=sys.stderr)
    return True
