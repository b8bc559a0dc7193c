"""One daemon per project: an exclusive flock on a per-project file."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from reconciler.errors import LockHeld


def systemd_dir(variable: str, system: Path, fallback: Path, *, mode: int = 0o755) -> Path:
    """The folder systemd gave us in `variable` (RUNTIME_DIRECTORY, STATE_DIRECTORY), else
    `system` when we can write there (created with `mode`), else `fallback` (an unprivileged
    user's)."""
    given = os.environ.get(variable)
    if given:
        return Path(given.split(":")[0])
    try:
        system.mkdir(mode=mode, parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return fallback


def default_lock_dir() -> Path:
    """$RUNTIME_DIRECTORY (systemd), else /run/reconciler when writable, else the temp dir."""
    return systemd_dir("RUNTIME_DIRECTORY", Path("/run/reconciler"), Path(tempfile.gettempdir()))


def status_path(project: str, directory: Path | None = None) -> Path:
    """Where the daemon leaves its crash-loop state for `reconciler status`."""
    return (directory or default_lock_dir()) / f"reconciler-{project}.status.json"


class LockUnavailable(LockHeld):
    """The lock file cannot be created (its folder cannot be made, or is not writable)."""


class ProjectLock:
    """Held for the daemon's lifetime; the kernel releases it if the process dies."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self.path = (directory or default_lock_dir()) / f"reconciler-{project}.lock"
        self._fd: int | None = None

    def acquire(self, role: str = "reconciler daemon") -> None:
        """Take the lock or raise LockHeld naming who holds it (`role` is what we are)."""
        try:  # --lock-dir is created as --state-dir is
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockUnavailable(
                f"cannot take the project lock {self.path}: {exc.strerror} (see --lock-dir)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 128, 0).decode(errors="replace").strip()
            pid, _, holder = text.partition(" ")
            os.close(fd)
            raise LockHeld(
                f"a {holder or 'reconciler'} (pid {pid or 'unknown'}) already acts on this "
                f"project (lock {self.path}); it applies the file itself: stop it first, "
                f"or let it converge. Refusing to run a {role} beside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> tuple[int, str] | None:
        """(pid, role) of the process holding the lock now; None when no one holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, _, role = os.pread(fd, 128, 0).decode(errors="replace").strip().partition(" ")
                return (int(pid), role) if pid.isdigit() else None
            return None  # free: the file is left over from a process that is gone
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
