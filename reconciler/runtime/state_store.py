"""Where rollout records live between daemon runs: one JSON file per project in the state
directory (systemd's `StateDirectory=`), replaced atomically on every change. A save that
fails (a full disk) leaves no temporary file behind; the daemon sweeps older ones at start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from reconciler.core.rollout import RolloutRecord
from reconciler.ops.lock import systemd_dir

log = structlog.get_logger("reconciler")
_RECORDS = TypeAdapter(dict[str, RolloutRecord])
_DRAINS = TypeAdapter(dict[str, dict[str, float]])


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else /var/lib/reconciler when writable, else
    $XDG_STATE_HOME/reconciler (~/.local/state/reconciler)."""
    home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return systemd_dir(
        "STATE_DIRECTORY", Path("/var/lib/reconciler"), Path(home) / "reconciler", mode=0o700
    )


class StateStore:
    """Rollout records of one project; readable by `status` and `plan` while a daemon runs."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        folder = directory or default_state_dir()
        self.project = project
        self.path = folder / f"{project}.rollouts.json"
        # Replicas out of DNS (drained) must be let back in by a daemon started after a crash.
        self.drains_path = folder / f"{project}.drains.json"
        self._lock = threading.Lock()
        self._records = self._read(self.path, _RECORDS)
        self._drains: dict[str, dict[str, float]] = self._read(self.drains_path, _DRAINS)

    def sweep(self) -> int:
        """Remove the temporary files saves of this project left (`.<project>.*.json-*`: a
        crash between creating one and renaming it); call it holding the project's lock,
        so that no save of ours is under way. Returns how many were removed."""
        removed = 0
        for stale in self.path.parent.glob(f".{self.project}.*.json-*"):
            try:
                stale.unlink()
                removed += 1
            except OSError as exc:
                log.warning("cannot remove a stale temporary file", path=str(stale), error=str(exc))
        if removed:
            log.info("removed stale temporary files", folder=str(self.path.parent), count=removed)
        return removed

    def _read(self, path: Path, adapter: TypeAdapter[Any]) -> Any:
        try:
            return adapter.validate_json(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValidationError, ValueError) as exc:
            # A damaged record only costs the ability to roll back: say so, start afresh.
            log.error(
                "rollout records unreadable; starting without",
                path=str(path),
                error=str(exc)[:300],
            )
            return {}

    def get(self, service: str) -> RolloutRecord:
        with self._lock:
            return self._records.get(service, RolloutRecord())

    def all(self) -> dict[str, RolloutRecord]:
        with self._lock:
            return dict(self._records)

    def put(self, service: str, record: RolloutRecord) -> None:
        with self._lock:
            if self._records.get(service, RolloutRecord()) == record:
                return
            self._records[service] = record
            _write(self.path, _RECORDS.dump_json(self._records))

    def drains(self, service: str) -> dict[str, float]:
        with self._lock:
            return dict(self._drains.get(service, {}))

    def put_drains(self, service: str, drains: dict[str, float]) -> None:
        with self._lock:
            if self._drains.get(service, {}) == drains:
                return
            self._drains[service] = dict(drains)
            _write(self.drains_path, _DRAINS.dump_json(self._drains))


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically (a crash leaves the old file or the new one, never half).

    The records hold the environment a rollback recreates containers with (secrets too):
    the file is 0600 (mkstemp's mode) and a folder created for it 0700. A failed save
    (ENOSPC, EFBIG, EIO) removes its temporary file before it is logged.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.error("cannot save state", path=str(path), error=str(exc))
    finally:
        if tmp is not None:  # on every failure path, whatever was raised
            with contextlib.suppress(OSError):
                os.unlink(tmp)
