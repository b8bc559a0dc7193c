"""A volume's content through the engine's archive API (`GET`/`PUT /containers/{id}/archive`,
what `docker cp` uses): read from, and written into, a container that mounts it. Needs no
extra image and no host path. Called by targets/host/snapshots.py and bench/snapshot.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import queue
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import docker
import docker.errors

from reconciler.engine.client import docker_errors
from reconciler.errors import ActionFailed

CHUNK = 1 << 20


class TooLarge(Exception):
    """The archive grew past the limit it was read under."""


def read_volume(
    api: docker.APIClient,
    container_id: str,
    path: str,
    out: IO[bytes],
    *,
    limit: int | None = None,
    keep_going: Callable[[int], bool] = lambda size: True,
) -> tuple[int, str]:
    """Stream the tar of `path` in the container into `out`; return (bytes, sha256 hex).
    Raise TooLarge past `limit` bytes, or when `keep_going(bytes so far)` says no.

    The checksum and the file are written on a thread of their own while the next chunk is
    read (hashlib lets go of the GIL): sha256 costs about as much as the read itself."""
    digest = hashlib.sha256()
    size = 0
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    failed: list[BaseException] = []

    def sink() -> None:
        while (chunk := chunks.get()) is not None:
            if failed:
                continue  # drain: the reader must never block on a full queue
            try:
                digest.update(chunk)
                out.write(chunk)
            except BaseException as exc:  # a full disk: reported by the reader
                failed.append(exc)

    writer = threading.Thread(target=sink, name="snapshot-writer", daemon=True)
    writer.start()
    try:
        with docker_errors(f"read {path} of container {container_id[:12]}"):
            stream, _ = api.get_archive(container_id, path, chunk_size=CHUNK)
            for chunk in stream:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TooLarge(f"more than {limit} bytes")
                if not keep_going(size):
                    raise TooLarge("the state directory's disk is below its free-space floor")
                if failed:
                    break
                chunks.put(chunk)
    finally:
        chunks.put(None)
        writer.join()
    if failed:
        raise failed[0]
    return size, digest.hexdigest()


def write_volume(api: docker.APIClient, container_id: str, path: str, data: IO[bytes]) -> None:
    """Extract a tar read by `read_volume(path)` back at `path` (its top entry is the last
    part of `path`, so it goes into the parent); ownership and modes come from the tar."""
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    with docker_errors(f"write {path} of container {container_id[:12]}"):
        if not api.put_archive(container_id, parent, _chunks(data)):
            raise ActionFailed(f"the engine refused the archive for {path}")


def _chunks(data: IO[bytes]) -> Iterator[bytes]:
    while chunk := data.read(CHUNK):
        yield chunk


def pause(api: docker.APIClient, container_id: str) -> bool:
    """Freeze a running container (its writes stop); False when it was not running."""
    try:
        api.pause(container_id)
    except docker.errors.APIError:
        return False
    return True


def unpause(api: docker.APIClient, container_id: str) -> None:
    with contextlib.suppress(docker.errors.APIError):  # gone or not paused: nothing to undo
        api.unpause(container_id)


def users_of(api: docker.APIClient, volume: str) -> list[dict[str, Any]]:
    """Every container (anyone's, any state) that mounts `volume`."""
    with docker_errors(f"list containers of volume {volume}"):
        found: list[dict[str, Any]] = api.containers(all=True, filters={"volume": volume})
    return found


def remove_volume(api: docker.APIClient, volume: str) -> None:
    with docker_errors(f"remove volume {volume}"):
        api.remove_volume(volume)
