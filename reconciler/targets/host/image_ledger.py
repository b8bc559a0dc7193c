"""The images this daemon pulled, per service (oldest first), kept in the state directory so
that `--prune-images` removes only what the daemon itself brought onto the host.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.ops.state_store import JsonStore


class ImageLedger:
    """service -> image ids pulled for it; read and written by the image workers only."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self._ids: JsonStore[list[str]] = JsonStore(project, "images", list[str], directory)
        self.path = self._ids.path

    def of(self, service: str) -> list[str]:
        return list(self._ids.get(service) or [])

    def add(self, service: str, image_id: str) -> None:
        ids = [i for i in self.of(service) if i != image_id]
        self._ids.put(service, [*ids, image_id])

    def forget(self, service: str, image_id: str) -> None:
        self._ids.put(service, [i for i in self.of(service) if i != image_id])
