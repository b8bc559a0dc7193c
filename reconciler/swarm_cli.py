"""`reconciler validate|plan|apply|run|status --target swarm` (called by `cli.main`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from reconciler.config import policy_file, secrets, strict_modes, web_config
from reconciler.core import swarm_plan as sp
from reconciler.core.policy import Denial
from reconciler.engine.docker_engine import connect
from reconciler.engine.swarm import spec as swarm_file
from reconciler.engine.swarm_engine import SwarmEngine, TaskCounts, check_manager
from reconciler.errors import (
    ActionFailed,
    DesiredStateError,
    EngineUnavailable,
    LockHeld,
    NotASwarmManager,
)
from reconciler.runtime.swarm_runtime import (
    Result,
    SwarmDaemon,
    SwarmReconciler,
    SwarmRecords,
    apply_once,
)

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_PENDING = 0, 1, 2, 2
DEFAULT_LISTEN = (("127.0.0.1", 9816),)


def main(args: argparse.Namespace, error: Callable[[str], None], bad_input: int) -> int:
    web_path = getattr(args, "web_config_file", None)
    try:
        desired = swarm_file.load(args.file)
        policy = policy_file.load(args.policy) if hasattr(args, "policy") else None
        args.web = web_config.load(web_path) if web_path else None
    except DesiredStateError as exc:
        error(str(exc))
        return bad_input
    if not _strict_modes(args, desired, error):
        return EXIT_INPUT
    denials: tuple[Denial, ...] = ()
    if policy is not None:
        desired, denials = swarm_file.judged(desired, policy)
        for d in denials:
            print(f"denied: {d.message(desired.source, policy)}", file=sys.stderr)
        args.policy_obj = policy
    if args.command == "validate" and denials:
        print(
            f"{args.file}: valid, but the host policy denies: {', '.join(sorted(desired.denied))}"
        )
        return EXIT_INPUT
    if args.command == "validate":
        services = ", ".join(
            f"{s.name} {'global' if s.global_mode else f'x{s.replicas}'}" for s in desired.services
        )
        print(f"{args.file}: valid for swarm (project {desired.project}: {services})")
        return EXIT_OK
    try:
        if args.command == "reload":  # a signal and a file: no Docker call
            return _reload(args, desired, None)
        api = connect()
        check_manager(api)
        return _COMMANDS[args.command](args, desired, api)
    except (EngineUnavailable, NotASwarmManager) as exc:
        error(f"error: {exc}")
        return EXIT_ERROR
    except LockHeld as exc:
        error(f"error: {exc}")
        return EXIT_INPUT


def _strict_modes(
    args: argparse.Namespace, desired: sp.SwarmDesired, error: Callable[[str], None]
) -> bool:
    """StrictModes as on the single host: files others can write refuse run and apply."""
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
        print(f"warning: {line}", file=sys.stderr)
    return True


def _reconciler(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> SwarmReconciler:
    return SwarmReconciler(
        SwarmEngine(api),  # type: ignore[arg-type]
        desired,
        SwarmRecords(desired.project, args.state_dir),
    )


def _plan(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    the_plan, _ = _reconciler(args, desired, api).run(act=False)
    for note in the_plan.notes:
        print(f"# {note}")
    if not the_plan and not desired.denied:  # a denied service: an error, as on one host
        print(f"{desired.project}: in sync")
        return EXIT_OK
    for action in the_plan.actions:
        print(sp.describe(action))
    return EXIT_ERROR if desired.denied else EXIT_PENDING


def _apply(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    from reconciler.ops.lock import ProjectLock

    def show(r: Result) -> None:
        line = f"{r.outcome:8} {sp.describe(r.action)}"
        print(secrets.redact(line if r.error is None else f"{line}: {r.error}"), flush=True)

    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler apply")
    try:
        rec = _reconciler(args, desired, api)
        applied = apply_once(rec, timeout_s=args.timeout, on_result=show)
    finally:
        lock.release()
    for note in applied.notes:
        print(f"# {note}")
    problems = 0
    for svc in desired.services:
        record = rec.records.get(svc.name)
        if record.failed and record.failed == svc.spec_hash:
            print(f"rollout of {svc.name} failed; Swarm rolled it back ({record.failed_reason})")
            problems += 1
    if not applied.settled:
        print(f"not converged within {args.timeout:g}s (see `reconciler status --target swarm`)")
    elif not applied.results and not problems:
        print(f"{desired.project}: in sync")
    return EXIT_OK if applied.ok and not problems else EXIT_ERROR


def _run(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    listen = DEFAULT_LISTEN if args.listen is None else tuple(a for a in args.listen if a)
    daemon = SwarmDaemon(
        args.file,
        desired,
        api,  # type: ignore[arg-type]
        interval=args.interval,
        listen=listen,
        lock_dir=args.lock_dir,
        state_dir=args.state_dir,
        workers=min(args.workers, 4),
        signals=args.signals,
        policy=getattr(args, "policy_obj", None),
        web=args.web,
    )
    structlog.get_logger("reconciler").info("target swarm")
    return daemon.run()


def render_status(
    desired: sp.SwarmDesired,
    observed: sp.SwarmObserved,
    counts: dict[str, TaskCounts],
    records: SwarmRecords,
) -> str:
    """A table of services (desired, running, healthy, update state, image), then the tasks
    of each service per node."""
    live = {s.name: s for s in observed.services}
    head = ("SERVICE", "MODE", "DESIRED", "RUNNING", "HEALTHY", "UPDATE", "IMAGE")
    rows = [head]
    nodes: list[str] = []
    for svc in desired.services:
        c = counts.get(svc.full_name, TaskCounts(0, 0, 0))
        obs = live.get(svc.full_name)
        want = c.desired if svc.global_mode else svc.replicas
        healthy = c.healthy if svc.has_healthcheck else c.running
        image = ""
        update = "missing"
        if obs is not None:
            image = obs.spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")
            update = obs.update_state or ("in sync" if sp.drift(svc, obs) is None else "drifted")
        record = records.get(svc.name)
        if record.failed and record.failed == svc.spec_hash:
            update = "held (rolled back)"
        mode = "global" if svc.global_mode else "replicated"
        rows.append((svc.name, mode, str(want), str(c.running), str(healthy), update, image))
        for node, states in c.nodes:
            text = ", ".join(f"{n} {state}" for state, n in states)
            nodes.append(f"  {svc.name:20} {node:24} {text}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines.append("TASKS PER NODE")
    lines.extend(nodes or ["  (none)"])
    return "\n".join(lines)


def _status(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    rec = _reconciler(args, desired, api)
    observed = rec.engine.observe(desired.project)
    print(render_status(desired, observed, rec.tasks(), rec.records))
    return EXIT_OK


def _reload(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    """As for the single host: SIGHUP, then wait for the daemon's status file."""
    from reconciler.cli import _reload as reload_daemon

    return reload_daemon(args, desired)  # type: ignore[arg-type]  # uses .project only


def _down(args: argparse.Namespace, desired: sp.SwarmDesired, api: object) -> int:
    from reconciler.ops.lock import ProjectLock

    lock = ProjectLock(desired.project, args.lock_dir)
    lock.acquire(role="reconciler down")
    try:
        engine = SwarmEngine(api)  # type: ignore[arg-type]
        the_plan = sp.plan_down(desired, engine.observe(desired.project))
        failed = 0
        for action in the_plan.actions:
            try:
                engine.execute(action)
                print(f"{'success':8} {sp.describe(action)}")
            except ActionFailed as exc:
                failed += 1
                print(f"{'error':8} {sp.describe(action)}: {exc}")
    finally:
        lock.release()
    if not the_plan.actions:
        print(f"{desired.project}: nothing to remove")
    return EXIT_ERROR if failed else EXIT_OK


_COMMANDS = {
    "plan": _plan,
    "apply": _apply,
    "run": _run,
    "status": _status,
    "reload": _reload,
    "down": _down,
}
