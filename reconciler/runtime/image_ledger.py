"""The images this daemon pulled, per service (oldest first), kept in the state directory so
that `--prune-images` removes only what the daemon itself brought onto the host.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from reconciler.runtime.state_store import _write, default_state_dir

_LEDGER = TypeAdapter(dict[str, list[str]])


class ImageLedger:
    """service -> image ids pulled for it; read and written by the image workers only."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self.path = (directory or default_state_dir()) / f"{project}.images.json"
        self._lock = threading.Lock()
        try:
            self._ids = _LEDGER.validate_json(self.path.read_bytes())
        except (OSError, ValidationError, ValueError):
            self._ids = {}  # none known: nothing is pruned that was pulled before

    def of(self, service: str) -> list[str]:
        with self._lock:
            return list(self._ids.get(service, []))

    def add(self, service: str, image_id: str) -> None:
        with self._lock:
            ids = [i for i in self._ids.get(service, []) if i != image_id]
            self._ids[service] = [*ids, image_id]
            _write(self.path, _LEDGER.dump_json(self._ids))

    def forget(self, service: str, image_id: str) -> None:
        with self._lock:
            self._ids[service] = [i for i in self._ids.get(service, []) if i != image_id]
            _write(self.path, _LEDGER.dump_json(self._ids))
