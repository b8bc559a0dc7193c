"""Where volume snapshots live: tar files in `<state dir>/<project>.snapshots/` (0700, each
file 0600) and their index `<project>.snapshots.json` (a JsonStore: service -> entries), plus
the services held stopped after a restore failed (`<project>.snapshot-holds.json`).

Written by targets/host/snapshots.py (the daemon, `apply`, `reconciler restore`), read by
`reconciler snapshots`. The index is read afresh on each call: another process may have
written it (a command while no daemon runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from reconciler.core.snapshots import SnapshotEntry, retain
from reconciler.ops.state_store import JsonStore, default_state_dir

FREE_CHECK_EVERY = 64 << 20  # bytes read between two looks at the free space


class SnapshotStore:
    """The snapshots of one project."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self.project = project
        self.directory = directory or default_state_dir()
        self.folder = self.directory / f"{project}.snapshots"
        self._lock = threading.Lock()

    def _index(self) -> JsonStore[tuple[SnapshotEntry, ...]]:
        return JsonStore(self.project, "snapshots", tuple[SnapshotEntry, ...], self.directory)

    def _holds(self) -> JsonStore[str]:
        return JsonStore(self.project, "snapshot-holds", str, self.directory)

    # ------------------------------------------------------------------ reading

    def entries(self, service: str | None = None) -> list[SnapshotEntry]:
        """Every snapshot (of `service`), oldest first."""
        found = [
            e
            for svc, entries in self._index().all().items()
            if service is None or svc == service
            for e in entries
        ]
        return sorted(found, key=lambda e: (e.created, e.id))

    def find(self, service: str, ident: str) -> SnapshotEntry:
        """The snapshot of `service` whose id is or starts with `ident` (KeyError: none, or
        several)."""
        hits = [e for e in self.entries(service) if e.id == ident or e.id.startswith(ident)]
        if len(hits) != 1:
            known = ", ".join(e.id for e in self.entries(service)) or "none"
            why = "no" if not hits else "more than one"
            raise KeyError(f"{why} snapshot {ident!r} of service {service} (known: {known})")
        return hits[0]

    def path(self, entry: SnapshotEntry) -> Path:
        return self.folder / entry.file

    def verify(self, entry: SnapshotEntry) -> str | None:
        """Why the file cannot be restored (missing, another size or checksum); None: fine."""
        path = self.path(entry)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            size = path.stat().st_size
        except OSError as exc:
            return f"snapshot file {path}: {exc.strerror or exc}"
        if size != entry.size or digest.hexdigest() != entry.sha256:
            return f"snapshot file {path} is damaged (size or sha256 differs from the index)"
        try:  # every member reads: a tar the engine can put back
            with tarfile.open(path, "r:") as tar:
                for _ in tar:
                    pass
        except (OSError, tarfile.TarError) as exc:
            return f"snapshot file {path} is no readable tar: {exc}"
        return None

    def free_bytes(self) -> int:
        """Free bytes on the state directory's disk."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return shutil.disk_usage(self.folder).free

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self) -> Iterator[tuple[IO[bytes], Path]]:
        """A new 0600 file in the snapshot folder; removed unless `commit` renamed it."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".partial-", suffix=".tar")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def commit(self, tmp: Path, entry: SnapshotEntry, keep: int) -> tuple[SnapshotEntry, ...]:
        """Keep `tmp` as `entry`'s file and index it; delete the snapshots of its volume past
        the newest `keep`. Returns those deleted."""
        with self._lock:
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path(entry))
            index = self._index()
            mine = (*(index.get(entry.service) or ()), entry)
            same = [e for e in mine if e.volume == entry.volume]
            _, dropped = retain(same, keep)
            index.put(entry.service, tuple(e for e in mine if e not in dropped))
            for e in dropped:
                with contextlib.suppress(OSError):
                    self.path(e).unlink()
            return dropped

    # ------------------------------------------------------------------ holds

    def held(self, service: str) -> str:
        """Why `service` is held stopped ("" when it is not)."""
        return self._holds().get(service) or ""

    def hold(self, service: str, reason: str) -> None:
        with self._lock:
            self._holds().put(service, reason)

    def release(self, service: str) -> None:
        with self._lock:
            holds = self._holds()
            if holds.get(service):
                holds.put(service, "")


class FreeFloor:
    """`keep_going` for a read: the disk keeps `min_free` bytes (looked at every 64 MiB)."""

    def __init__(self, store: SnapshotStore, min_free: int) -> None:
        self.store = store
        self.min_free = min_free
        self.next_look = FREE_CHECK_EVERY

    def ok(self, size: int) -> bool:
        if size < self.next_look:
            return True
        self.next_look = size + FREE_CHECK_EVERY
        return self.store.free_bytes() >= self.min_free
