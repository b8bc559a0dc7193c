"""Where rollout records live between daemon runs: one JSON file per project in the state
directory (systemd's `StateDirectory=`), replaced atomically on every change.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import structlog
from pydantic import TypeAdapter, ValidationError

from reconciler.core.rollout import RolloutRecord

log = structlog.get_logger("reconciler")
_RECORDS = TypeAdapter(dict[str, RolloutRecord])


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else /var/lib/reconciler when writable, else
    $XDG_STATE_HOME/reconciler (~/.local/state/reconciler)."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    system = Path("/var/lib/reconciler")
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(home) / "reconciler"


class StateStore:
    """Rollout records of one project; readable by `status` and `plan` while a daemon runs."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self.path = (directory or default_state_dir()) / f"{project}.rollouts.json"
        self._lock = threading.Lock()
        self._records = self._read()

    def _read(self) -> dict[str, RolloutRecord]:
        try:
            return _RECORDS.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValidationError, ValueError) as exc:
            # A damaged record only costs the ability to roll back: say so, start afresh.
            log.error(
                "rollout records unreadable; starting without",
                path=str(self.path),
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
            data = _RECORDS.dump_json(self._records)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rollouts-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                log.error("cannot save rollout records", path=str(self.path), error=str(exc))
