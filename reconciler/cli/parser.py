"""The command line: its commands and options (`reconciler --help`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler import __version__, targets
from reconciler.cli import git_args, global_options, history
from reconciler.cli.snapshots import add_parsers as add_snapshot_parsers
from reconciler.config import policy_file
from reconciler.ops import listen_address

DEFAULT_LISTEN = (("127.0.0.1", 9816),)


def listen(text: str) -> tuple[str, int] | None:
    try:
        return listen_address.parse(text)
    except listen_address.ListenError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = global_options.CommandParser(
        prog="reconciler", description="Keep a Docker host converged on desired_state.yaml."
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    global_options.add(parser, defaults=True)  # also after the command: add_global_options
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("validate", "check the file and exit"),
        ("plan", "print the actions a pass would take (exit 2 when changes are pending)"),
        ("apply", "converge once: run a pass, wait for its rollouts (up to --timeout), exit"),
        ("run", "run the daemon"),
        ("reload", "make the running daemon re-read the file, and wait until it has"),
        ("status", "a table of services: desired, running, healthy, restarts, image"),
        ("down", "stop and remove the project's containers and networks (volumes: --volumes)"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("file", nargs="?", default=None, type=Path)
        _file_options(p)
        if name in ("validate", "plan", "apply", "run", "status"):
            daemons = "the running daemon's, else " if name in ("plan", "status") else ""
            p.add_argument(
                "--policy",
                type=Path,
                default=None,
                help="the host policy: what services may ask of the host "
                f"(default {daemons}{policy_file.DEFAULT_PATH}; absent: deny all that is "
                "root on the host)",
            )
        p.add_argument(
            "--no-strict-modes",
            action="store_true",
            help="accept input files others can write (development only; says so loudly)",
        )
        p.add_argument(
            "--profile",
            action="append",
            metavar="NAME",
            help="run the services of this profile too (repeatable; '*' for all; default "
            "$COMPOSE_PROFILES); services without profiles always run",
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
                choices=targets.names(),
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
        if name in ("validate", "plan", "apply", "run", "status", "reload", "down"):
            git_args.add_arguments(p, name)
        if name in ("apply", "run"):
            p.add_argument(
                "--take-over-compose",
                action="store_true",
                help="first replace the containers of the compose project of the same name "
                "with ours, service by service (volumes and networks adopted with their data)",
            )
        if name in ("apply", "run", "down"):
            history.add_size_option(p)
        if name == "plan":
            p.add_argument(
                "--json",
                action="store_true",
                help="the plan as data (schema reconciler.plan/v1: see README, Plans)",
            )
        if name == "apply":
            p.add_argument(
                "--locked",
                action="store_true",
                help="run exactly the images of the lock file (refused when it is stale: a "
                "service asks for another image or update range, or is missing from it)",
            )
            p.add_argument(
                "--lock-file",
                type=Path,
                default=None,
                help="the image lock file to write (and read with --locked), e.g. next to the "
                "file (default <state-dir>/<project>.images.lock.json)",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=600.0,
                help="seconds to wait for rollouts to finish (default 600)",
            )
            p.add_argument(
                "--progress",
                choices=["auto", "tty", "plain"],
                default="auto",
                help="tty: one line per object updated in place, as `docker compose up`; "
                "plain: a line per result and the logs (auto: tty on a terminal)",
            )
            p.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                help="the logs and a line per result, as --progress plain",
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
            p.add_argument(
                "--interval",
                type=float,
                default=5.0,
                help="seconds between resyncs (default: %(default)s)",
            )
            p.add_argument(
                "--notify",
                action="append",
                metavar="URL",
                help="send notifications to this Apprise URL (repeat for several; also the "
                "file's notify: block and $RECONCILER_NOTIFY_URLS_FILE); prefer those for secrets",
            )
            p.add_argument(
                "--pull-timeout",
                type=float,
                default=600.0,
                help="seconds a pull or build may take (default: %(default)s)",
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
                type=listen,
                action="append",
                help="HOST:PORT for /metrics, /healthz, /readyz; HOST may be an interface "
                "(docker0:9816: its IPv4 address at start); repeat for several, "
                "'off' for none (default 127.0.0.1:9816)",
            )
            p.add_argument(
                "--web-config-file",
                type=Path,
                default=None,
                help="TLS and basic auth for those endpoints (Prometheus exporter-toolkit format)",
            )
    history.add_parser(sub)
    add_snapshot_parsers(sub)
    imp = sub.add_parser(
        "import",
        help="write a desired-state file from a compose file",
        description="Convert a compose file (version 2, 3.x or none) into a desired-state "
        "file; volumes and networks keep compose's names so their data is adopted.",
    )
    imp.add_argument("compose_file", nargs="?", default=None, type=Path)
    _file_options(imp)
    imp.add_argument("--project", default=None, help="project name (default: compose's)")
    imp.add_argument("-o", "--output", type=Path, default=None, help="file to write (stdout)")
    imp.add_argument(
        "--profile",
        action="append",
        metavar="NAME",
        help="validate the result with these profiles selected (repeatable; default "
        "$COMPOSE_PROFILES, else every profile); the file keeps every service",
    )
    imp.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="leave out the keys reconciler cannot carry (listed as warnings) instead of failing",
    )
    parser.add_global_options()
    return parser


def _file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        type=Path,
        default=None,
        metavar="FILE",
        help="a compose file to merge over the ones before it (repeat; compose's rules); "
        "default $COMPOSE_FILE, else the file named (with its folder's override file)",
    )
