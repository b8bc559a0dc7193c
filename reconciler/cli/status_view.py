"""`reconciler status`'s account of the running daemon: whether one runs for the project, the
policy it judges by, the services it denies, what it holds back and the causes of its last
actions (its status file); without one, it says so. Called by `reconciler.cli.commands`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.ops.lock import ProjectLock

DAEMON_ROLE = "reconciler daemon"


def daemon_status(project: str, lock_dir: Path | None, status_file: Path) -> dict[str, Any] | None:
    """The running daemon's status file ({"pid": N} alone while it has written none yet);
    None when no daemon holds the project."""
    held = ProjectLock(project, lock_dir).holder()
    if held is None or held[1] != DAEMON_ROLE:
        return None
    try:
        data = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return {"pid": held[0]}
    if not isinstance(data, dict) or data.get("pid") != held[0]:
        return {"pid": held[0]}
    return data


def denials_of(status: Mapping[str, Any] | None, own: Mapping[str, str]) -> dict[str, str]:
    """The services the daemon denies (its policy's judgement), else this command's own."""
    if status is None or "denied" not in status:
        return dict(own)
    return {str(k): str(v) for k, v in dict(status["denied"]).items()}


def _clock(at: object) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(str(at))))
    except ValueError:
        return "?"


def account(project: str, status: Mapping[str, Any] | None, own_policy: str) -> str:
    """The lines under the table: who decides, and what it decided."""
    if status is None:
        return (
            f"no daemon runs for project {project}: nothing keeps it converged. What is denied "
            f"above is this command's own judgement of the file under {own_policy}."
        )
    pid = status.get("pid")
    if "updated_at" not in status:
        return (
            f"daemon pid {pid} runs project {project} (starting: no status yet). What is denied "
            f"above is this command's own judgement under {own_policy}."
        )
    lines = [
        f"daemon pid {pid} runs project {project} under {status.get('policy', '?')} "
        f"(status of {_clock(status['updated_at'])}); its decisions:"
    ]
    decisions = dict(status.get("decisions") or {})
    for name, rules in sorted(dict(status.get("denied") or {}).items()):
        lines.append(f"  {name}: denied by the host policy (rule {rules}); never created")
    for name, seen in sorted(decisions.items()):
        who = name or f"project {project}"  # a network, volume, config of the project
        for wait in seen.get("waits") or ():
            lines.append(f"  {who}: holds {wait}")
        for row in seen.get("recent") or ():
            line = f"  {who}: {_clock(row.get('at'))} {row.get('result')} {row.get('action')}"
            lines.append(line + (f": {row['error']}" if row.get("error") else ""))
    if len(lines) == 1:
        lines.append("  nothing held, no action taken yet")
    return "\n".join(lines)
