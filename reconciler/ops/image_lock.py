"""The image lock file: the `repo:tag@digest` every service ran, with what each was resolved
from (the file's image and update range), so that another host (or a later restore) runs exactly
the same images. Written by the daemon and `apply`; `apply --locked` reads it and refuses a
stale one: one whose services or image requests differ from the file's (as a package lock, an
edit elsewhere in the file, a comment, a replica count, an environment value, leaves it good).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.ops.state_store import default_state_dir, write_atomic

VERSION = 2  # 2: `requested` per service (1 held only the file's digest)


class LockStale(ReconcilerError):
    """`--locked` with a lock file that does not match the desired-state file."""


@dataclass(frozen=True)
class ImageLock:
    """What a lock file holds: service -> `repo:tag@digest`, and what each was resolved from."""

    project: str
    requested: Mapping[str, str]  # service -> Desired.image_requests when it was resolved
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
        "requested": dict(sorted(lock.requested.items())),
        "images": dict(sorted(lock.images.items())),
    }
    try:
        old = json.loads(path.read_text())
        old.pop("written_at", None)
        old.pop("written", None)
        if old == body:
            return
    except (OSError, ValueError):
        pass
    at = lock.written_at or time.time()
    body["written_at"] = at
    body["written"] = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")  # readers'
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(body, indent=2) + "\n").encode())


def read_lock(path: Path) -> ImageLock:
    """The lock at `path`; LockStale when it is missing, unreadable or of another version."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise LockStale(
                f"{path}: a lock file of version {data.get('version')} (this reconciler writes "
                f"{VERSION}): run `reconciler apply` once without --locked to write it again"
            )
        images = {str(k): str(v) for k, v in dict(data["images"]).items()}
        requested = {str(k): str(v) for k, v in dict(data["requested"]).items()}
        return ImageLock(str(data["project"]), requested, images, float(data["written_at"]))
    except FileNotFoundError:
        raise LockStale(
            f"{path}: no lock file (run `reconciler apply` once without --locked to write it)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LockStale(f"{path}: not a readable lock file ({exc})") from None


def check_lock(path: Path, lock: ImageLock, project: str, requested: Mapping[str, str]
               ) -> dict[str, str]:  # fmt: skip
    """The locked images of the services in `requested` (Desired.image_requests); LockStale,
    saying why, when the lock was resolved for another project or other image requests."""
    why: list[str] = []
    if lock.project != project:
        why.append(f"it is for project {lock.project}, the file is project {project}")
    missing = [s for s in requested if s not in lock.images]
    if missing:
        why.append(f"no image locked for {', '.join(missing)}")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lock.written_at))
    for service, now in requested.items():
        then = lock.requested.get(service)
        if service in lock.images and then != now:
            why.append(f"{service} asks for {now}, the lock ({when}) was resolved for {then}")
    if why:
        raise LockStale(
            f"{path} is stale: " + "; ".join(why) + ". Refusing --locked: run `reconciler apply` "
            "(or the daemon) without --locked to resolve the images again and rewrite it"
        )
    return {s: lock.images[s] for s in requested}
