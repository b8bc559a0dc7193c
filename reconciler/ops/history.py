"""The history: every action and condition of one project (a `core.events.Event` each) as
one JSON line in `<project>.history.jsonl` in the state directory, bounded and rotated.

`History` is a sink of the event stream (the daemon's Recorder, `apply`'s and `down`'s
Settings.record); `read` serves `reconciler history`. Each line is written by one write()
on an O_APPEND descriptor, so threads and processes (`apply` beside a daemon) never mix
lines; before each write the file's last byte is read (under an flock): a torn tail, whoever
left it (a full disk, a crash, another process), is ended first, never glued to a record,
and is skipped when read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from reconciler.config import secrets
from reconciler.core.events import Event
from reconciler.ops.state_store import default_state_dir

if TYPE_CHECKING:
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
KEEP = 1  # rotated files kept beside the current one
FIELD_MAX = 1000  # a longer text field is cut: a line stays a few KB at most
UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
         "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}  # fmt: skip


def history_path(project: str, directory: Path | None = None) -> Path:
    return (directory or default_state_dir()) / f"{project}.history.jsonl"


def parse_size(text: str) -> int:
    """`10MB`, `512k`, `1g`, `4096` -> bytes (binary units, as Docker's `max-size`)."""
    raw = text.strip().lower().replace(" ", "")
    digits = raw.rstrip("kmgib")
    unit = raw[len(digits) :]
    try:
        number = float(digits)
    except ValueError:
        raise ValueError(f"expected a size such as 10MB or 512k, not {text!r}") from None
    if unit not in UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (k, m, g)")
    size = int(number * UNITS[unit])
    if size < 4096:
        raise ValueError(f"a history of {text!r} is too small (at least 4k)")
    return size


def line_of(
    event: Event, *, project: str, target: str, at: float | None = None, commit: str = ""
) -> bytes:
    """One record as a JSON line (secrets redacted, long texts cut); `commit`: the git
    commit in force when the desired state comes from a repository."""
    at = time.time() if at is None else at

    def text(value: str) -> str:
        value = secrets.redact(value)
        return value if len(value) <= FIELD_MAX else value[: FIELD_MAX - 1] + "…"

    row: dict[str, Any] = {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "ts": round(at, 3),
        "project": project,
        "target": target,
        "service": event.service,
        "replica": event.replica,
        "action": event.kind,
        "trigger": text(event.trigger),
        "cause": text(event.cause),
        "result": event.result,
        "duration_s": event.duration_s,
        "revision": event.revision,
        "message": text(event.message),
        "data": {str(k): text(str(v)) for k, v in event.data.items()},
    }
    if commit:
        row["commit"] = commit
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class History:
    """The append side: a `core.events.Record` sink. It never raises: a history that cannot
    be written is logged (once per failure streak) and counted, and the action goes on."""

    def __init__(
        self,
        project: str,
        directory: Path | None = None,
        *,
        target: str = "host",
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = KEEP,
        metrics: Metrics | None = None,
    ) -> None:
        self.project = project
        self.target = target
        self.path = history_path(project, directory)
        self.keep = max(1, keep)
        # The current file rotates at its share of the cap: all files together stay under it.
        self.rotate_at = max(1, max_bytes // (self.keep + 1))
        self.metrics = metrics
        self._fd: int | None = None
        self._ino: int | None = None
        self._lock = threading.Lock()
        self._failing = False
        self.commit: Callable[[], str] = lambda: ""  # the git commit in force (git source)
        if metrics is not None:
            for result in ("written", "error"):
                metrics.history_records.labels(result)

    def __call__(self, event: Event) -> None:
        self.append(line_of(event, project=self.project, target=self.target, commit=self.commit()))

    def append(self, line: bytes) -> bool:
        """Append one whole line; False (logged, counted) when it could not be written."""
        with self._lock:
            try:
                fd = self._current()
                if os.fstat(fd).st_size + len(line) > self.rotate_at:
                    fd = self._rotate(fd)
                with _flocked(fd):  # our other writers wait; the last byte stays the last
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # a torn piece ends here; the record is whole
                    written = os.write(fd, line)
                if written != len(line):  # a full disk: the next append ends the torn piece
                    self._close()
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
            except OSError as exc:
                self._count("error")
                if not self._failing:
                    log.error("cannot write the history", path=str(self.path), error=str(exc))
                self._failing = True
                return False
        self._failing = False
        self._count("written")
        return True

    def close(self) -> None:
        with self._lock:
            self._close()

    # ------------------------------------------------------------------ files

    def _current(self) -> int:
        """The descriptor of the file at `path` now (another process may have rotated it)."""
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == self._ino:
                    return self._fd
            except FileNotFoundError:
                pass
            self._close()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Read and write: each append reads the last byte (a torn piece is ended first).
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        self._fd, self._ino = fd, st.st_ino
        return fd

    def _rotate(self, fd: int) -> int:
        """`x.jsonl` -> `x.jsonl.1` (-> `.2`...; the oldest dropped), under an flock on the
        file being rotated, so that two processes rotate it once."""
        with _flocked(fd):
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino == self._ino and st.st_size > 0:
                name = self.path.name
                for n in range(self.keep, 0, -1):
                    newer = self.path if n == 1 else self.path.with_name(f"{name}.{n - 1}")
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(newer, self.path.with_name(f"{name}.{n}"))
        self._close()
        return self._current()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._ino = None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.history_records.labels(result).inc()


@contextlib.contextmanager
def _flocked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Read:
    """What `read` found: the records, oldest first, and how many lines were not records;
    `total` and `services`: every record before the filters (an empty window, an unknown
    service are told apart from an empty history)."""

    records: tuple[dict[str, Any], ...]
    skipped: int
    total: int = 0
    services: frozenset[str] = frozenset()
    exists: bool = False  # a history file was found


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records in `data`; a last line without its newline (torn) and any line that is
    not a whole record are skipped (counted)."""
    lines = data.split(b"\n")
    skipped = 1 if lines[-1].strip() else 0  # no newline after it: never a record
    out = []
    for raw in lines[:-1]:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            skipped += 1
            continue
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("ts"), int | float)
            or not isinstance(row.get("action"), str)
        ):
            skipped += 1
            continue
        out.append(row)
    return out, skipped


def read(
    project: str,
    directory: Path | None = None,
    *,
    since: float | None = None,
    service: str | None = None,
) -> Read:
    """The project's history (rotated files first), filtered by time and service.
    Raise OSError when a file exists but cannot be read (another user's, 0600)."""
    path = history_path(project, directory)
    rotated = sorted(
        path.parent.glob(f"{path.name}.*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    records: list[dict[str, Any]] = []
    skipped = 0
    exists = False
    for file in [p for p in rotated if p.suffix[1:].isdigit()] + [path]:
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            continue
        exists = True
        rows, bad = parse_lines(data)
        skipped += bad
        records += rows
    records.sort(key=lambda r: r["ts"])  # two writers' lines may land slightly out of order
    picked = tuple(
        r
        for r in records
        if (since is None or r["ts"] >= since) and (service is None or r.get("service") == service)
    )
    seen = frozenset(str(r.get("service") or "") for r in records) - {""}
    return Read(picked, skipped, len(records), seen, exists)
