"""The `reconciler` command: validate, plan, apply, run, reload, status.

Exit codes: 0 done / in sync; 2 bad input (for `plan`: changes pending); 1 other errors
(for `plan`: also bad input, since 2 already means "changes pending").
"""

from __future__ import annotations

import argparse
import json as jsonlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from reconciler import __version__
from reconciler.config import loader as desired_file
from reconciler.config import policy_file, secrets, strict_modes, web_config
from reconciler.core.model import DesiredState, describe
from reconciler.core.planner import EXTERNAL_MISSING, NAMESPACE_MISSING, foreign_namespaces, plan
from reconciler.core.policy import Denial, enforce
from reconciler.core.takeover import clashes
from reconciler.engine.docker_engine import FALLBACK_API_VERSION, Engine, connect
from reconciler.errors import DesiredStateError, EngineUnavailable, LockHeld
from reconciler.ops import logs
from reconciler.runtime.signals import SignalRelay

if TYPE_CHECKING:
    from reconciler.runtime.executor import StepResult

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2
EXIT_PENDING = 2
DEFAULT_LISTEN = (("127.0.0.1", 9816),)


def _listen(text: str) -> tuple[str, int] | None:
    if text in ("", "none", "off"):
        return None
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} in {text!r} is not in 1..65535")
    return (host.strip("[]") or "127.0.0.1", number)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler", description="Keep a Docker host converged on desired_state.yaml."
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("validate", "check the file and exit"),
        ("plan", "print the actions a pass would take (exit 2 when changes are pending)"),
        ("apply", "run one pass, then exit"),
        ("run", "run the daemon"),
        ("reload", "make the running daemon re-read the file, and wait until it has"),
        ("status", "a table of services: desired, running, healthy, restarts, image"),
        ("down", "stop and remove the project's containers and networks (volumes: --volumes)"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("file", nargs="?", default="desired_state.yaml", type=Path)
        if name in ("validate", "plan", "apply", "run", "status"):
            p.add_argument(
                "--policy",
                type=Path,
                default=None,
                help="the host policy: what services may ask of the host "
                f"(default {policy_file.DEFAULT_PATH}; absent: deny all that is root on the host)",
            )
        p.add_argument(
            "--no-strict-modes",
            action="store_true",
            help="accept input files others can write (development only; says so loudly)",
        )
        if name == "down":
            p.add_argument(
                "--volumes",
                action="store_true",
                help="also remove the volumes this project created (their data is lost)",
            )
        if name in ("validate", "plan", "apply", "run", "status", "reload", "down"):
            p.add_argument(
                "--target",
                choices=["host", "swarm"],
                default=None,
                help="the single Docker host (default), or Docker Swarm services "
                "(default $RECONCILER_TARGET)",
            )
        if name in ("run", "status", "apply", "plan", "down", "reload"):
            p.add_argument(
                "--lock-dir",
                type=Path,
                default=None,
                help="where the daemon keeps its lock and status file",
            )
            p.add_argument(
                "--state-dir",
                type=Path,
                default=None,
                help="where rollout records (the spec a rollback returns to) are kept "
                "(default $STATE_DIRECTORY, /var/lib/reconciler or ~/.local/state/reconciler)",
            )
        if name in ("apply", "run"):
            p.add_argument(
                "--take-over-compose",
                action="store_true",
                help="first replace the containers of the compose project of the same name "
                "with ours, service by service (volumes and networks adopted with their data)",
            )
        if name == "apply":
            p.add_argument(
                "--timeout",
                type=float,
                default=600.0,
                help="seconds to wait for rollouts to finish (default 600)",
            )
        if name == "reload":
            p.add_argument(
                "--pid",
                type=int,
                default=None,
                help="the daemon's pid (systemd: $MAINPID; default: the holder of the lock)",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=30.0,
                help="seconds to wait for the daemon to confirm (default 30)",
            )
        if name == "run":
            p.add_argument("--interval", type=float, default=5.0, help="seconds between resyncs")
            p.add_argument(
                "--pull-timeout", type=float, default=600.0, help="seconds a pull or build may take"
            )
            p.add_argument(
                "--workers", type=int, default=4, help="services reconciled at once (default 4)"
            )
            p.add_argument(
                "--prune-images",
                action="store_true",
                help="remove images this daemon pulled once no container uses them (keeping "
                "each service's previous one); off by default: others on the host may want them",
            )
            p.add_argument(
                "--listen",
                type=_listen,
                action="append",
                help="HOST:PORT for /metrics, /healthz, /readyz; repeat for several, "
                "'off' for none (default 127.0.0.1:9816)",
            )
            p.add_argument(
                "--web-config-file",
                type=Path,
                default=None,
                help="TLS and basic auth for those endpoints (Prometheus exporter-toolkit format)",
            )
    imp = sub.add_parser(
        "import",
        help="write a desired-state file from a compose file",
        description="Convert a compose file (version 2, 3.x or none) into a desired-state "
        "file; volumes and networks keep compose's names so their data is adopted.",
    )
    imp.add_argument("compose_file", type=Path)
    imp.add_argument("--project", default=None, help="project name (default: compose's)")
    imp.add_argument("-o", "--output", type=Path, default=None, help="file to write (stdout)")
    imp.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="leave out the keys reconciler cannot carry (listed as warnings) instead of failing",
    )
    return parser


def main(argv: Sequence[str] | None = None, signals: SignalRelay | None = None) -> int:
    """The CLI; returns the exit code. `signals`: handlers the entry point installed first."""
    args = build_parser().parse_args(argv)
    if args.command == "import":  # prints the file it writes: nothing to redact there
        return _main(args, signals)
    with secrets.redacted_output():  # no printer shows what a secret-looking variable gave
        return _main(args, signals)


def _main(args: argparse.Namespace, signals: SignalRelay | None) -> int:
    if args.command == "run":
        args.signals = signals or SignalRelay().install()
    json = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(args.log_level, json=json)
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
        return _import(args)
    web_path = getattr(args, "web_config_file", None)
    target = getattr(args, "target", None) or os.environ.get("RECONCILER_TARGET") or "host"
    if target == "swarm":
        from reconciler import swarm_cli

        return swarm_cli.main(args, error, bad_input)
    if target != "host":
        error(f"error: RECONCILER_TARGET must be host or swarm, not {target!r}")
        return EXIT_INPUT
    try:
        desired = desired_file.load(args.file)
        policy_path = getattr(args, "policy", None)
        policy = policy_file.load(policy_path) if hasattr(args, "policy") else None
        args.web = web_config.load(web_path) if web_path else None
    except DesiredStateError as exc:
        error(str(exc))
        return bad_input
    if args.no_strict_modes:
        structlog.get_logger("reconciler").warning(strict_modes.warn_off())
    else:
        inputs = [args.file, *desired.watched]
        if hasattr(args, "policy"):
            inputs.append(policy_path or policy_file.DEFAULT_PATH)
        if args.web is not None:
            inputs += [web_path, *args.web.files]
        insecure = strict_modes.problems(inputs)
        if insecure and args.command in ("run", "apply"):
            error(str(strict_modes.InsecureInput(str(args.file), insecure)))
            return EXIT_INPUT
        for line in insecure:
            if journal:
                structlog.get_logger("reconciler").warning("input not safe", problem=line)
            else:
                print(f"warning: {line}", file=sys.stderr)
    denials: tuple[Denial, ...] = ()
    if policy is not None:
        desired, denials = enforce(desired, policy)
        for d in denials if args.command != "run" else ():  # the daemon logs its own
            print(f"denied: {d.message(desired.source, policy)}", file=sys.stderr)
        args.policy_obj = policy
    args.denials = denials
    if args.command == "validate":
        services = ", ".join(f"{s.name} x{len(s.replicas)}" for s in desired.services)
        if denials:
            denied = ", ".join(sorted(desired.denied))
            print(f"{args.file}: valid, but the host policy denies: {denied}")
            return EXIT_INPUT
        print(f"{args.file}: valid (project {desired.project}: {services})")
        return EXIT_OK
    try:
        return _COMMANDS[args.command](args, desired)
    except EngineUnavailable as exc:
        error(f"error: {exc}")
        return EXIT_ERROR
    except LockHeld as exc:
        error(f"error: {exc}")
        return EXIT_INPUT


def _plan(args: argparse.Namespace, desired: DesiredState) -> int:
    import time
    from dataclasses import replace

    from reconciler.core import rollout as ro
    from reconciler.core.images import pin_all
    from reconciler.core.planner import Holds
    from reconciler.runtime.state_store import StateStore

    engine = Engine(connect())
    store = StateStore(desired.project, args.state_dir)
    desired = pin_all(desired, engine.local_digest)  # a followed tag runs pinned to a digest
    services, rollouts = [], {}
    for svc in desired.services:
        record = ro.refresh(store.get(svc.name), svc)
        target, mode = ro.target(svc, record)
        services.append(target)
        rollouts[svc.name] = ro.rollout_for(svc, record, mode)
        if mode == "rolled_back":
            print(
                f"# service {svc.name}: revision {svc.revision[:12]} is held as failed "
                f"({record.failed_reason}); it runs {record.stable_revision[:12]} until the "
                "file changes the service again"
            )
        elif mode == "paused":
            print(f"# service {svc.name}: rollout paused ({record.paused_reason})")
    foreign = engine.find_containers(foreign_namespaces(desired))
    absent = foreign_namespaces(desired) - set(foreign)
    holds = Holds(now=time.time(), rollouts=rollouts, outside=foreign, absent=absent)
    observed = engine.observe(desired.project)
    if desired.denied:  # denied by the host policy (shown above): neither created nor removed
        services = [s for s in services if s.name not in desired.denied]
        kept = tuple(c for c in observed.containers if c.service not in desired.denied)
        observed = replace(observed, containers=kept)
    the_plan = plan(replace(desired, services=tuple(services)), observed, holds)
    for note in the_plan.notes:
        print(f"# {note}")
    for line in clashes(desired, engine.others(desired.project)):
        print(f"# {line}")
    if _external_missing(the_plan.notes) + _namespace_missing(the_plan.notes):
        return EXIT_ERROR
    for name, rules in sorted(_denied_rules(args.denials).items()):  # as apply: never in sync
        print(f"error: service {name} is denied by the host policy (rule {rules}); not created")
    if not the_plan and not desired.denied:
        print(f"{desired.project}: in sync")
        return EXIT_OK
    for step in the_plan.steps:
        print(describe(step.action))
    return EXIT_ERROR if desired.denied else EXIT_PENDING


def _denied_rules(denials: Sequence[Denial]) -> dict[str, str]:
    """service -> the rules the host policy denies it by ("cap_add, privileged")."""
    rules: dict[str, set[str]] = {}
    for d in denials:
        rules.setdefault(d.service, set()).add(d.rule)
    return {svc: ", ".join(sorted(r)) for svc, r in rules.items()}


def _external_missing(notes: Sequence[str]) -> int:
    """How many external networks/volumes are missing (an error: never ours to create)."""
    missing = [n for n in notes if EXTERNAL_MISSING in n]
    for note in missing:
        print(f"error: {note.partition(':')[0]} is declared external but does not exist")
    return len(missing)


def _namespace_missing(notes: Sequence[str]) -> int:
    """How many creates join the network namespace of a container that does not exist."""
    missing = list(dict.fromkeys(n for n in notes if NAMESPACE_MISSING in n))
    for note in missing:
        key, _, reason = note.partition(": held back (")
        print(f"error: {key}: {reason.removesuffix(')')}")
    return len(missing)


def _apply(args: argparse.Namespace, desired: DesiredState) -> int:
    from reconciler.ops.lock import ProjectLock
    from reconciler.runtime.oneshot import apply_once
    from reconciler.runtime.state_store import StateStore

    def show(r: StepResult) -> None:
        if r.outcome != "waiting":
            line = f"{r.outcome:8} {describe(r.action)}"
            text = line if r.error is None else f"{line}: {r.error}"
            print(secrets.redact(text), flush=True)  # Docker's error may quote a secret

    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler apply")
    try:
        engine = Engine(connect())
        if args.take_over_compose and not _take_over(engine, desired, show):
            return EXIT_ERROR
        store = StateStore(desired.project, args.state_dir)
        applied = apply_once(engine, desired, store, timeout_s=args.timeout, on_result=show)
        held = clashes(desired, engine.others(desired.project))
    finally:
        lock.release()
    for line in held:
        print(f"# {line}")
    for note in applied.notes:
        print(f"# {note}")
    problems = len(desired.denied)  # each was shown as "denied: ..."
    for svc in desired.services:
        record = store.get(svc.name)
        if record.failed_revision == svc.revision:
            print(f"rollout of {svc.name} failed ({record.failed_reason}); rolled back")
            problems += 1
        elif record.paused_revision == svc.revision:
            print(f"rollout of {svc.name} paused ({record.paused_reason})")
            problems += 1
    problems += _external_missing(applied.notes) + _namespace_missing(applied.notes)
    if not applied.settled:
        print(f"not converged within {args.timeout:g}s (see `reconciler status`)")
    elif not applied.results and not problems:
        print(f"{desired.project}: in sync")
    return EXIT_OK if applied.ok and not problems else EXIT_ERROR


def _take_over(
    engine: Engine,
    desired: DesiredState,
    show: Callable[[StepResult], None],
    *,
    log: bool = False,
) -> bool:
    """Replace the compose project's containers with ours (`--take-over-compose`)."""
    from reconciler.core.takeover import plan_takeover
    from reconciler.runtime.executor import apply

    logger = structlog.get_logger("reconciler")
    the_plan = plan_takeover(
        desired, engine.observe(desired.project), engine.others(desired.project)
    )
    for note in the_plan.notes:
        if log:
            logger.info("take over compose", project=desired.project, note=note)
        else:
            print(f"# {note}")
    results = apply(the_plan, engine.execute)
    for r in results:
        show(r)
        if log:
            logger.info(
                "action", verb=r.action.verb, name=r.action.name, outcome=r.outcome, error=r.error
            )
    failed = [r for r in results if r.outcome != "success"]
    if failed:
        text = (
            f"taking over compose project {desired.project} stopped: {len(failed)} step(s) failed"
        )
        if log:
            logger.error(text)
        else:
            print(text)
    return not failed


def _run(args: argparse.Namespace, desired: DesiredState) -> int:
    from reconciler.runtime.daemon import Daemon, Options

    listen = DEFAULT_LISTEN if args.listen is None else tuple(a for a in args.listen if a)
    opts = Options(
        path=args.file,
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
    )
    try:
        api = connect()
    except EngineUnavailable as exc:  # the daemon waits for the engine; it must start anyway
        structlog.get_logger("reconciler").warning("engine down at start", error=str(exc))
        api = connect(version=FALLBACK_API_VERSION)
    if args.take_over_compose:
        from reconciler.ops.lock import ProjectLock

        lock = ProjectLock(desired.project, args.lock_dir)
        lock.acquire(role="reconciler run --take-over-compose")
        try:
            taken = _take_over(Engine(api), desired, lambda r: None, log=True)
        finally:
            lock.release()  # the daemon takes it again at once
        if not taken:
            return EXIT_ERROR
    daemon = Daemon(opts, desired, api, signals=args.signals, policy=args.policy_obj)
    code = daemon.run()
    if daemon.unfinished:  # do not let the interpreter wait for that call's thread at exit
        sys.stdout.flush()
        os._exit(code)
    return code


def _reload(args: argparse.Namespace, desired: DesiredState) -> int:
    """SIGHUP to the daemon, then wait until a reload that began after it has finished (the
    status file says so): `systemctl reload` returns once the file is applied, and fails when
    the daemon rejected it. systemd 252 cannot wait on RELOADING=1/READY=1 by itself."""
    import json
    import os
    import signal
    import time

    from reconciler.ops.lock import ProjectLock, status_path

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
                data = json.loads(candidate.read_text())
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


def _status(args: argparse.Namespace, desired: DesiredState) -> int:
    from reconciler.ops.lock import status_path
    from reconciler.ops.status import render_status
    from reconciler.runtime.state_store import StateStore

    status_file = status_path(desired.project, args.lock_dir)
    store = StateStore(desired.project, args.state_dir)
    engine = Engine(connect())
    print(render_status(desired, engine, status_file, store, _denied_rules(args.denials)))
    for line in clashes(desired, engine.others(desired.project)):
        print(f"note: {line}")
    return EXIT_OK


def _down(args: argparse.Namespace, desired: DesiredState) -> int:
    from reconciler.core.planner import plan_down
    from reconciler.ops.lock import ProjectLock
    from reconciler.runtime.executor import apply

    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler down")
    try:
        engine = Engine(connect())
        the_plan = plan_down(desired, engine.observe(desired.project), volumes=args.volumes)
        results = apply(the_plan, engine.execute)
    finally:
        lock.release()
    for r in results:
        line = f"{r.outcome:8} {describe(r.action)}"
        print(line if r.error is None else f"{line}: {r.error}")
    if not results:
        print(f"{desired.project}: nothing to remove")
    return EXIT_OK if all(r.outcome == "success" for r in results) else EXIT_ERROR


def _import(args: argparse.Namespace) -> int:
    from reconciler.config.compose_import import compose_environment, import_compose

    out_dir = (args.output.parent if args.output else Path.cwd()).resolve()
    try:
        result = import_compose(
            args.compose_file,
            output_dir=out_dir,
            project=args.project,
            drop_unsupported=args.drop_unsupported,
        )
    except DesiredStateError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT
    source = str(args.compose_file)
    for f in result.unsupported:
        kind = "warning: dropped" if args.drop_unsupported else "error"
        print(f"{kind}: {f.show(source)}", file=sys.stderr)
    if result.unsupported and not args.drop_unsupported:
        print(
            f"{len(result.unsupported)} key(s) cannot be carried; nothing written "
            "(--drop-unsupported leaves them out)",
            file=sys.stderr,
        )
        return EXIT_INPUT
    try:  # what the daemon would say of the file (the compose folder's .env gives ${VAR}),
        desired_file.parse(  # pointing at the compose file's lines (the result is not written)
            result.text,
            source=source,
            base_dir=out_dir,
            environ=compose_environment(args.compose_file.resolve().parent),
            positions=result.positions,
            warn=lambda line: print(f"warning: {line}", file=sys.stderr),
        )
    except DesiredStateError as exc:
        print(str(exc), file=sys.stderr)
        print("the converted file does not validate; nothing written", file=sys.stderr)
        return EXIT_INPUT
    for f in result.converted:
        print(f"converted: {f.show(source)}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
    else:
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(result.text)
        tmp.replace(args.output)
        print(f"wrote {args.output} (project {result.project})", file=sys.stderr)
    return EXIT_OK


_COMMANDS = {
    "plan": _plan,
    "apply": _apply,
    "run": _run,
    "reload": _reload,
    "status": _status,
    "down": _down,
}
