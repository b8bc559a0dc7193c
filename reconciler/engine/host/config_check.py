"""A config's `check` command, run inside the running container (docker exec) before its
reload signal; called by `Containers.execute` for a `CheckConfig` action. A non-zero exit is
`ConfigRejected` (the edit is refused, not signalled); no answer within the time limit is a
transient `ActionFailed` (retried, still not signalled).
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from typing import Any

import docker

from reconciler.core.actions import CheckConfig
from reconciler.engine.client import docker_errors
from reconciler.errors import ActionFailed, ConfigRejected

CHECK_TIMEOUT_S = 20.0  # below the client's read timeout, so this limit is the one reported
MAX_OUTPUT_CHARS = 700  # what the history and the log quote of a check's output


def trim(output: bytes | str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """The command's output on one line (its non-empty lines joined by ` | `), cut to
    `limit` characters with a note of how much was left out."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(line) <= limit:
        return line
    return f"{line[:limit]}... ({len(line) - limit} more characters)"


def run_check(
    api: docker.APIClient,
    action: CheckConfig,
    call: Callable[[str], None],
    timeout_s: float = CHECK_TIMEOUT_S,
) -> None:
    """Run each of `action.command` in the container in turn; raise on the first that fails."""
    for argv in action.command:
        code, output = _exec(api, action.id, action.name, argv, call, timeout_s)
        if code != 0:
            said = trim(output) or "(no output)"
            raise ConfigRejected(
                f"config check failed in {action.name}: `{shlex.join(argv)}` exited {code}: "
                f"{said}; not signalled, it keeps running its last good config",
                exit_code=code,
                output=said,
            )


def _exec(
    api: docker.APIClient,
    cid: str,
    name: str,
    argv: tuple[str, ...],
    call: Callable[[str], None],
    timeout_s: float,
) -> tuple[int, bytes]:
    command = shlex.join(argv)
    with docker_errors(f"check config in {name} (`{command}`)"):
        call("container_exec")
        exec_id = api.exec_create(cid, list(argv), stdout=True, stderr=True)["Id"]
    done: dict[str, Any] = {}

    def start() -> None:
        try:
            done["output"] = api.exec_start(exec_id)
        except Exception as exc:  # re-raised below, mapped by docker_errors
            done["error"] = exc

    runner = threading.Thread(target=start, name=f"check-{name}", daemon=True)
    runner.start()
    runner.join(timeout_s)
    if runner.is_alive():
        raise ActionFailed(
            f"config check in {name}: `{command}` did not finish within {timeout_s:g}s; "
            "not signalled (tried again)",
            transient=True,
        )
    with docker_errors(f"check config in {name} (`{command}`)"):
        if "error" in done:
            raise done["error"]
        code = api.exec_inspect(exec_id).get("ExitCode")
    if code is None:  # still running by Docker's account: treat as no verdict
        raise ActionFailed(f"config check in {name}: `{command}` gave no exit code", transient=True)
    output = done.get("output") or b""
    return int(code), output if isinstance(output, bytes) else str(output).encode()
