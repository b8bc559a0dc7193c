"""`reconciler history [SERVICE] [--since 1h] [--json]`: what the daemon, `apply` and `down`
did to a project, read from its history file (ops.history) whether or not a daemon runs;
and the history sink those commands write through (`sink`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import targets
from reconciler.cli import git_args
from reconciler.errors import DesiredStateError
from reconciler.ops import history
from reconciler.ops.metrics import Metrics

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
HEAD = ("TIME", "SERVICE", "REPLICA", "ACTION", "TRIGGER", "CAUSE", "DURATION", "RESULT")
CUT = (HEAD.index("TRIGGER"), HEAD.index("CAUSE"))  # cut to fit a terminal (--json: whole)
COLUMN_MIN = 16  # a cut column keeps at least this much


def size(text: str) -> int:
    try:
        return history.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_size_option(p: argparse.ArgumentParser) -> None:
    """--history-max-size, for the commands that write the history (run, apply, down)."""
    p.add_argument(
        "--history-max-size",
        type=size,
        default=history.DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="the most the history file may take in the state directory, with its one "
        "rotated file (default 10MB; units k, m, g)",
    )


def add_parser(sub: Any) -> None:
    text = "what the daemon, apply and down did: time, service, replica, action, cause, result"
    p = sub.add_parser("history", help=text, description=text)
    p.add_argument("service", nargs="?", default=None, help="only this service")
    p.add_argument(
        "--since",
        type=since,
        default=None,
        help="only records this recent (30s, 10m, 1h, 2d) or after an ISO time "
        "(UTC unless it says otherwise)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines, as stored")
    p.add_argument(
        "-f",
        "--file",
        type=Path,
        default=Path("desired_state.yaml"),
        help="the desired-state file that names the project (default %(default)s)",
    )
    p.add_argument("--project", default=None, help="the project (instead of reading the file)")
    p.add_argument(
        "--target",
        choices=targets.names(),
        default=None,
        help="how to read the file (default $RECONCILER_TARGET, else host)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the daemon keeps its state (default $STATE_DIRECTORY, "
        "/var/lib/reconciler or ~/.local/state/reconciler)",
    )


def since(text: str, now: float | None = None) -> float:
    """`90s`, `10m`, `1h30m`, `2d` ago, or an ISO time (naive: UTC) -> epoch seconds."""
    now = time.time() if now is None else now
    raw = text.strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", raw)
    if parts and "".join(n + u for n, u in parts) == raw:
        return now - sum(float(n) * UNITS[u] for n, u in parts)
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes a duration (30s, 10m, 1h, 2d) or an ISO time, not {text!r}"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def sink(
    args: argparse.Namespace, project: str, target: str, metrics: Metrics | None = None
) -> history.History:
    """The history a command that acts writes to (its state directory, its size)."""
    return history.History(
        project,
        args.state_dir,
        target=target,
        max_bytes=getattr(args, "history_max_size", history.DEFAULT_MAX_BYTES),
        metrics=metrics,
    )


class UnknownProject(Exception):
    """Neither --project nor a readable file names the project."""


def project_of(args: argparse.Namespace) -> tuple[str, frozenset[str] | None]:
    """--project, else the project the file names (read with its target's rules), and the
    services the file names (None: not read)."""
    name = args.target or os.environ.get("RECONCILER_TARGET") or "host"
    try:
        file = git_args.followed_file(args) or args.file  # a followed repository's, if any
        desired = targets.kind(name).load(file)
    except (DesiredStateError, OSError, KeyError) as exc:
        if args.project:
            return str(args.project), None
        text = f"cannot tell the project from {args.file} ({exc}); give --project"
        raise UnknownProject(text) from None
    if args.project and args.project != desired.project:
        return str(args.project), None
    return desired.project, frozenset(s.name for s in desired.services)


def show(args: argparse.Namespace) -> int:
    """Print the records (a table, or JSON lines). Exit codes as `docker compose logs` and
    `journalctl`: 0 with records or an empty window (`-- No entries --`), 1 for a service
    neither the file nor the history knows, or a history that cannot be read, 2 when the
    project is unknown."""
    try:
        project, in_file = project_of(args)
    except UnknownProject as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        found = history.read(project, args.state_dir, since=args.since, service=args.service)
    except OSError as exc:
        print(f"error: cannot read the history of {project}: {exc}", file=sys.stderr)
        return 1
    where = history.history_path(project, args.state_dir)
    service = args.service
    if service and service not in found.services and service not in (in_file or ()):
        known = sorted((in_file or frozenset()) | found.services)
        names = ", ".join(known) if known else "none"
        print(f"error: no such service: {service} (project {project}: {names})", file=sys.stderr)
        return 1
    if found.skipped:
        print(f"note: {found.skipped} line(s) that are no whole record skipped", file=sys.stderr)
    if args.json:
        for row in found.records:
            print(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        return 0
    if found.records:
        print(table(found.records, width=terminal_width()))
    elif not found.exists:
        print(f"{project}: no history yet ({where} does not exist)")
    else:
        print(f"{project}: {empty(found, service, args.since)} ({where})")
    return 0


def empty(found: history.Read, service: str | None, since: float | None) -> str:
    """Why nothing is listed from a history that exists."""
    window = (
        f" since {datetime.fromtimestamp(since, UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC"
        if since is not None
        else ""
    )
    if service:
        return f"no records of {service}{window}"
    if found.total:
        return f"no records{window} ({found.total} older)"
    return "the history has no records"


def terminal_width() -> int | None:
    """The terminal's columns when stdout is one; None (never cut) for a pipe or a file."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def table(rows: tuple[dict[str, Any], ...] | list[dict[str, Any]], width: int | None = None) -> str:
    """The records as aligned columns, oldest first; with `width` (a terminal's), TRIGGER and
    CAUSE are cut (`…`) only as much as the line needs to fit it."""
    lines = [HEAD] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    if width is not None:
        widths = _fit(widths, width)
        lines = [tuple(_cut(c, w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _fit(widths: list[int], width: int) -> list[int]:
    """Narrow the cut columns (the widest first, to COLUMN_MIN at least) until a line fits."""
    out = list(widths)
    over = sum(out) + 2 * (len(out) - 1) - width
    while over > 0:
        i = max(CUT, key=lambda c: out[c])
        if out[i] <= COLUMN_MIN:
            break
        step = min(over, out[i] - COLUMN_MIN, max(1, out[i] - max(out[c] for c in CUT if c != i)))
        out[i] -= step
        over -= step
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def one_line(text: str) -> str:
    """A cell on one line: a multi-line text (a rejected file's errors) joined with ` / `."""
    return " / ".join(part.strip() for part in text.splitlines() if part.strip())


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    at = datetime.fromtimestamp(float(r["ts"]), UTC).strftime("%Y-%m-%d %H:%M:%S")
    data = r.get("data") or {}
    action = str(r.get("action", ""))
    verb = data.get("verb", "")
    if verb and verb != action:
        action = f"{action}: {verb}"
    if data.get("object") not in (None, "", "container", "service"):
        action += f" {data['object']}"
    trigger = str(r.get("trigger") or "-")
    if trigger in ("file edit", "reload signal") and r.get("revision"):
        trigger += f" @{str(r['revision'])[:8]}"
    duration = r.get("duration_s")
    result = str(r.get("result", ""))
    if data.get("error"):
        result += f": {data['error']}"
    replica = str(r.get("replica") or ("" if verb == "" else data.get("name", "")))
    cells = (
        at,
        str(r.get("service") or "-"),
        replica or "-",
        action,
        trigger,
        str(r.get("cause") or "-"),
        "-" if duration is None else f"{float(duration):.2f}s",
        result,
    )
    return tuple(one_line(c) or "-" for c in cells)
