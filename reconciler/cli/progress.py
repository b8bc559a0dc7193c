"""`apply` on a terminal, as `docker compose up` shows it: one line per object, updated in
place with its state and cause, an N/M counter, errors kept on screen at the end.

`cli.commands` uses it when stdout is a terminal (or `--progress tty`); elsewhere, and with
`-v`, `apply` prints its plain result lines and the logs as before. Drawn with rich.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from reconciler.config import secrets
from reconciler.targets.base import Done

PAST = {
    "create": "Created",
    "start": "Started",
    "stop": "Stopped",
    "remove": "Removed",
    "recreate": "Recreated",
    "replace": "Replaced",
    "rename": "Renamed",
    "pull": "Pulled",
    "build": "Built",
    "update": "Updated",
    "connect": "Connected",
    "disconnect": "Disconnected",
    "restart": "Restarted",
    "heal": "Healed",
    "rollback": "Rolled back",
    "scale": "Scaled",
}


def wants_view(command: str, progress: str, verbose: bool) -> bool:
    """Whether `apply` draws the live view: `--progress tty`, or auto on a terminal."""
    if command != "apply" or verbose or progress == "plain":
        return False
    return progress == "tty" or sys.stdout.isatty()


def objects_in(steps: tuple[str, ...]) -> int:
    """How many objects a plan's steps touch (`create container web-1 (missing)` and
    `start container web-1 (...)` are one line of the view); an `ensure image` step is
    left out: it does nothing when the image is there."""
    return len({tuple(step.split()[1:3]) for step in steps if not step.startswith("ensure ")})


def past(verb: str) -> str:
    """`create` -> `Created` (a verb we have no word for: capitalised as is)."""
    return PAST.get(verb, verb.replace("_", " ").capitalize())


@dataclass
class Row:
    """One object's line: its latest result and when it came."""

    kind: str
    name: str
    state: str
    cause: str
    outcome: str
    error: str | None
    at: float


class ProgressView:
    """A context manager: `update(done)` for each result (from any thread), `close` draws
    the final frame and then the errors, in full, under it."""

    def __init__(self, project: str, total: int = 0, console: Console | None = None) -> None:
        self.project = project
        self.total = total
        self.console = console or Console(highlight=False)
        self._rows: dict[tuple[str, str], Row] = {}
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=8,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> ProgressView:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, done: Done) -> None:
        """Record one result; the object's line shows the latest one."""
        action = done.action
        error = secrets.redact(done.error) if done.error else None
        with self._lock:
            self._rows[(action.kind, action.name)] = Row(
                kind=action.kind,
                name=action.name,
                state=past(action.verb) if done.outcome == "success" else done.outcome.capitalize(),
                cause=secrets.redact(action.reason),
                outcome=done.outcome,
                error=error,
                at=time.monotonic() - self._start,
            )

    @property
    def errors(self) -> tuple[Row, ...]:
        with self._lock:
            return tuple(r for r in self._rows.values() if r.outcome == "error")

    def close(self) -> None:
        """Stop redrawing (the last frame stays), then list each error in full."""
        if not self._live.is_started:
            return
        self._finished = True
        self._live.stop()
        for row in self.errors:
            self.console.print(Text(f"error: {row.kind} {row.name}: {row.error}", style="red"))

    _finished = False

    def _render(self) -> RenderableType:
        with self._lock:
            rows = list(self._rows.values())
        done = sum(r.outcome == "success" for r in rows)
        total = max(self.total, len(rows))
        failed = any(r.outcome == "error" for r in rows)
        word, style = ("Running", "bold")  # compose: an error marks the summary, in red
        if self._finished:
            word, style = ("Failed", "bold red") if failed else ("Done", "bold")
        title = Text.assemble(
            ("[+] ", style),
            (word, style),
            f" {done}/{total}",
            (f"  {self.project}", "dim"),
        )
        table = Table.grid(padding=(0, 1))
        for _ in range(5):
            table.add_column()
        for row in rows:
            mark, style = {"success": ("✔", "green"), "error": ("✘", "red")}.get(
                row.outcome, ("-", "yellow")
            )
            table.add_row(
                Text(mark, style=style),
                Text(f"{row.kind.capitalize()} {row.name}"),
                Text(row.state, style=style),
                Text(row.cause, style="dim"),
                Text(f"{row.at:.1f}s", style="dim"),
            )
        head: RenderableType = title if self._finished else Group(Spinner("dots", text=title))
        return Group(head, table)
