"""What a daemon keeps between runs, in the state directory (systemd's `StateDirectory=`):
one typed JSON file per project and kind (`<project>.rollouts.json`, `.drains.json`,
`.images.json`, `.swarm.json`), read once, replaced atomically on every change, 0600. A save
that fails (a full disk) leaves no temporary file behind; the daemon sweeps older ones at start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog
from pydantic import TypeAdapter, ValidationError

from reconciler.core.rollout import RolloutRecord
from reconciler.ops import sealed_env
from reconciler.ops.lock import systemd_dir

log = structlog.get_logger("reconciler")
V = TypeVar("V")


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else /var/lib/reconciler when writable, else
    $XDG_STATE_HOME/reconciler (~/.local/state/reconciler)."""
    home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return systemd_dir(
        "STATE_DIRECTORY", Path("/var/lib/reconciler"), Path(home) / "reconciler", mode=0o700
    )


class JsonStore(Generic[V]):
    """key -> value (of type `value`, checked by pydantic) in `<project>.<kind>.json`.

    A damaged file only costs what it remembered: it is reported and the store starts empty.
    """

    def __init__(self, project: str, kind: str, value: Any, directory: Path | None = None) -> None:
        self.path = (directory or default_state_dir()) / f"{project}.{kind}.json"
        self._adapter: TypeAdapter[dict[str, V]] = TypeAdapter(dict[str, value])  # type: ignore[valid-type]
        self._lock = threading.Lock()
        self._values: dict[str, V] = self._read()

    def _read(self) -> dict[str, V]:
        try:
            return self._adapter.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValidationError, ValueError) as exc:
            log.error("state file unreadable; starting without", path=str(self.path),
                      error=str(exc)[:300])  # fmt: skip
            return {}

    def get(self, key: str) -> V | None:
        with self._lock:
            return self._values.get(key)

    def all(self) -> dict[str, V]:
        with self._lock:
            return dict(self._values)

    def put(self, key: str, value: V) -> None:
        """Set and save (nothing is written when the value is unchanged)."""
        with self._lock:
            if key in self._values and self._values[key] == value:
                return
            self._values[key] = value
            write_atomic(self.path, self._adapter.dump_json(self._values))

    def drop(self, key: str) -> None:
        """Forget `key` (and save; nothing is written when it was not there)."""
        with self._lock:
            if self._values.pop(key, None) is not None:
                write_atomic(self.path, self._adapter.dump_json(self._values))


class StateStore:
    """Rollout records and drains of one project; readable by `status` and `plan` while a
    daemon runs. Drains: replicas out of DNS must be let back in after a crash."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self._records: JsonStore[RolloutRecord] = JsonStore(
            project, "rollouts", RolloutRecord, directory
        )
        self._drains: JsonStore[dict[str, float]] = JsonStore(
            project, "drains", dict[str, float], directory
        )
        # replica -> how often a heal brought it back (`status`'s RESTARTS, beside Docker's)
        self.restarts: JsonStore[int] = JsonStore(project, "restarts", int, directory)
        self.path = self._records.path

    def get(self, service: str) -> RolloutRecord:
        found = self._records.get(service)
        return sealed_env.unseal(found, str(self.path)) if found else RolloutRecord()

    def all(self) -> dict[str, RolloutRecord]:
        return {k: sealed_env.unseal(v, str(self.path)) for k, v in self._records.all().items()}

    def put(self, service: str, record: RolloutRecord) -> None:
        if self._records.get(service) is None and record == RolloutRecord():
            return
        if self._records.get(service) is not None and self.get(service) == record:
            return  # sealing is not deterministic: compare what it holds, not its bytes
        self._records.put(service, sealed_env.seal(record))  # encrypted env values at rest

    def drains(self, service: str) -> dict[str, float]:
        return dict(self._drains.get(service) or {})

    def put_drains(self, service: str, drains: dict[str, float]) -> None:
        if not drains and not self._drains.get(service):
            return
        self._drains.put(service, dict(drains))


def write_atomic(path: Path, data: bytes) -> None:
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


def sweep(project: str, directory: Path | None = None) -> int:
    """Remove the temporary files saves of `project` left (`.<project>.*.json-*`: a crash
    between creating one and renaming it); call it holding the project's lock, so that no
    save of ours is under way. Returns how many were removed. Also a volume snapshot's
    partial tar (`<project>.snapshots/.partial-*`: a crash during the copy)."""
    folder = directory or default_state_dir()
    removed = 0
    partial = (folder / f"{project}.snapshots").glob(".partial-*")
    for stale in itertools.chain(folder.glob(f".{project}.*.json-*"), partial):
        try:
            stale.unlink()
            removed += 1
        except OSError as exc:
            log.warning("cannot remove a stale temporary file", path=str(stale), error=str(exc))
    if removed:
        log.info("removed stale temporary files", folder=str(folder), count=removed)
    return removed
