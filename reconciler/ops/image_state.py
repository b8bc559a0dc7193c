"""What the image followers keep per service between runs (`<project>.image-policy.json` in
the state directory): the tag and digest an update policy chose, the one before it (what a
rollback returns to) and the versions held after a failed rollout. Read by `status` and `plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.ops.state_store import JsonStore

KIND = "image-policy"


@dataclass(frozen=True)
class ImageRecord:
    """One service's followed image: `base` is the file's `image:` it was chosen for."""

    base: str = ""
    tag: str = ""
    digest: str = ""
    previous_tag: str = ""
    previous_digest: str = ""
    held: list[str] = field(default_factory=list)  # tag@digest refs that failed their rollout
    pending: str = ""  # tag@digest rolling out now

    @property
    def ref(self) -> str:
        return f"{self.tag}@{self.digest}" if self.digest else ""

    def taken(self, tag: str, digest: str) -> ImageRecord:
        """A new version chosen: the current one becomes what a rollback returns to."""
        return replace(
            self,
            tag=tag,
            digest=digest,
            previous_tag=self.tag,
            previous_digest=self.digest,
            pending=f"{tag}@{digest}",
        )

    def rolled_back(self) -> ImageRecord:
        """The pending version failed: held, and the previous one chosen again."""
        held = [*self.held, self.pending][-20:] if self.pending else self.held
        return replace(
            self, tag=self.previous_tag, digest=self.previous_digest, held=held, pending=""
        )


class ImageStates:
    """service -> ImageRecord of one project (atomic JSON, 0600, as the rollout records)."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self._store: JsonStore[ImageRecord] = JsonStore(project, KIND, ImageRecord, directory)

    def get(self, service: str, base: str) -> ImageRecord:
        """The record for `base` (the file's image); a fresh one when the file names another."""
        found = self._store.get(service)
        return found if found is not None and found.base == base else ImageRecord(base=base)

    def put(self, service: str, record: ImageRecord) -> None:
        self._store.put(service, record)

    def all(self) -> dict[str, ImageRecord]:
        return self._store.all()
