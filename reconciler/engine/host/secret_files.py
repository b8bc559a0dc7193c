"""Encrypted secrets on the single host: a bind mount needs a file, so the plaintext of an
`*.age` (or SOPS) secret is written to a tmpfs (memory: $RUNTIME_DIRECTORY, /run/reconciler
or /dev/shm), owner-only, named by its digest; never to the checkout or the state dir.
engine.host.containers calls `bind_source` when it creates a container.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from reconciler.config import encrypted
from reconciler.errors import ActionFailed


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


def memory_dir() -> Path:
    """A folder on a tmpfs that only we can read (created on first use)."""
    candidates = [os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0], "/run/reconciler"]
    candidates.append("/dev/shm")
    for base in filter(None, candidates):
        root = Path(base)
        if root.is_dir() and os.access(root, os.W_OK) and _fs_type(root) == "tmpfs":
            folder = root / f"reconciler-secrets-{os.getuid()}"
            folder.mkdir(mode=0o700, exist_ok=True)
            return folder
    raise ActionFailed("no tmpfs to hold a decrypted secret ($RUNTIME_DIRECTORY, /dev/shm)")


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
        tmp = target.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a crash's leftover (read-only: O_TRUNC would be refused)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        try:
            os.write(fd, plain)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    return str(target)
