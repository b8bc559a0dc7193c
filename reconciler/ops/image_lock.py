"""The image lock file: the `repo:tag@digest` every service ran, with the digest of the file it
was resolved for, so that another host (or a later restore) runs exactly the same images.
Written by the daemon and `apply`; `apply --locked` reads it and refuses a stale one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.ops.state_store import default_state_dir, write_atomic

VERSION = 1


class LockStale(ReconcilerError):
    """`--locked` with a lock file that does not match the desired-state file."""


@dataclass(frozen=True)
class ImageLock:
    """What a lock file holds: service -> `repo:tag@digest`, for the file of `digest`."""

    project: str
    digest: str  # the desired state's digest (the file, its configs, .env)
    images: Mapping[str, str]
    written_at: float = 0.0


def lock_path(project: str, state_dir: Path | None, given: Path | None = None) -> Path:
    """`--lock-file`, else `<state-dir>/<project>.images.lock.json`."""
    return given or (state_dir or default_state_dir()) / f"{project}.images.lock.json"


def write_lock(path: Path, lock: ImageLock) -> None:
    """Replace the lock file atomically (nothing is written when only the time would change)."""
    body = {
        "version": VERSION,
        "project": lock.project,
        "file_digest": lock.digest,
        "images": dict(sorted(lock.images.items())),
    }
    try:
        old = json.loads(path.read_text())
        old.pop("written_at", None)
        if old == body:
            return
    except (OSError, ValueError):
        pass
    body["written_at"] = lock.written_at or time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(body, indent=2) + "\n").encode())


def read_lock(path: Path) -> ImageLock:
    """The lock at `path`; LockStale when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        images = {str(k): str(v) for k, v in dict(data["images"]).items()}
        return ImageLock(
            str(data["project"]), str(data["file_digest"]), images, float(data["written_at"])
        )
    except FileNotFoundError:
        raise LockStale(
            f"{path}: no lock file (run `reconciler apply` once without --locked to write it)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LockStale(f"{path}: not a readable lock file ({exc})") from None


def check_lock(path: Path, lock: ImageLock, project: str, digest: str, services: Sequence[str]
               ) -> dict[str, str]:  # fmt: skip
    """The locked images to run; LockStale (saying why) when the lock does not fit the file."""
    why: list[str] = []
    if lock.project != project:
        why.append(f"it is for project {lock.project}, the file is project {project}")
    if lock.digest != digest:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lock.written_at))
        why.append(f"the file (or a config or .env it uses) changed since the lock ({when})")
    missing = [s for s in services if s not in lock.images]
    if missing:
        why.append(f"no image locked for {', '.join(missing)}")
    if why:
        raise LockStale(
            f"{path} is stale: " + "; ".join(why) + ". Refusing --locked: run `reconciler apply` "
            "(or the daemon) without --locked to resolve the images again and rewrite it"
        )
    return {s: lock.images[s] for s in services}
