"""Encrypted secrets on the single host: a bind mount needs a file, so the plaintext of an
`*.age` (or SOPS) secret is written to a tmpfs (memory: $RUNTIME_DIRECTORY, /run/reconciler
or /dev/shm), owner-only, named by its digest; never to the checkout or the state dir, and
removed once no container binds it. engine.host.containers calls `bind_source` when it
creates a container and `forget_unused` when it has removed one.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import docker

from reconciler.config import encrypted
from reconciler.errors import ActionFailed

GRACE_S = 120.0  # a plaintext written (or used) this recently may be about to be bound


def _fs_type(path: Path) -> str:
    """The type of the filesystem `path` lives on (from /proc/self/mountinfo)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        point = fields[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind


def _memory_dir(create: bool) -> Path | None:
    candidates = [os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0], "/run/reconciler"]
    candidates.append("/dev/shm")
    for base in filter(None, candidates):
        root = Path(base)
        if root.is_dir() and os.access(root, os.W_OK) and _fs_type(root) == "tmpfs":
            folder = root / f"reconciler-secrets-{os.getuid()}"
            if create:
                folder.mkdir(mode=0o700, exist_ok=True)
            return folder
    return None


def memory_dir() -> Path:
    """A folder on a tmpfs that only we can read (created on first use)."""
    folder = _memory_dir(create=True)
    if folder is None:
        raise ActionFailed("no tmpfs to hold a decrypted secret ($RUNTIME_DIRECTORY, /dev/shm)")
    return folder


def forget_unused(api: docker.APIClient, grace_s: float = GRACE_S) -> list[Path]:
    """Remove the plaintexts no container (of any project: the folder is shared by this
    user's daemons) binds any more; one untouched for less than `grace_s` is kept, as it
    may be about to be bound (bind_source touches it each time). Returns those removed."""
    folder = _memory_dir(create=False)
    try:
        files = [p for p in folder.iterdir() if p.is_file()] if folder else []
        now = time.time()
        stale = [p for p in files if now - p.stat().st_mtime > grace_s]
    except OSError:
        return []
    if not stale:
        return []  # the usual case costs no engine call
    used: set[str] = set()
    try:
        containers = api.containers(all=True)
    except (docker.errors.DockerException, OSError):
        return []  # the next removal tries again
    for c in containers:
        for m in c.get("Mounts") or []:
            source = str(m.get("Source") or "")
            used |= {source, os.path.realpath(source)}
    gone = [p for p in stale if str(p) not in used and os.path.realpath(p) not in used]
    for p in gone:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return gone


def bind_source(source: str, digest: str) -> str:
    """The host path to bind for a secret: the file itself, or its plaintext in memory."""
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ActionFailed(f"cannot read secret file {source}: {exc.strerror}") from None
    if not encrypted.is_encrypted(path, data):
        return source
    try:
        plain = encrypted.plaintext(path, data)
    except encrypted.DecryptError as exc:
        raise ActionFailed(str(exc)) from None
    target = memory_dir() / digest[:32]
    if not target.exists():
        if encrypted.secret_digest(plain) != digest:  # e.g. a rollback to an older secret
            raise ActionFailed(
                f"secret file {source} no longer holds the version this container is made "
                "with, and that version's plaintext is no longer in memory: not bound (the "
                "wrong secret is worse than none)"
            )
        tmp = target.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a crash's leftover (read-only: O_TRUNC would be refused)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        try:
            os.write(fd, plain)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    else:
        os.utime(target)  # in use again: forget_unused leaves it alone for a while
    return str(target)
