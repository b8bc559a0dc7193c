"""Bounded reads of the config files and folders a desired state mounts.

A config source is read by the loader (its digest), by StrictModes and by the file watcher.
None of them may hang or grow without bound on what they are pointed at: a FIFO, a device,
`/usr`, a symlink loop. Only regular files are read, each at most MAX_FILE_BYTES; a folder
holds at most MAX_ENTRIES entries and MAX_TOTAL_BYTES in all; a folder reached through
symlinks is walked once (by device and inode) and the walk is a loop, not a recursion.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024  # one config file
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # all files of one config folder
MAX_ENTRIES = 10_000  # entries of one config folder (files, folders, symlinks)


class TreeError(Exception):
    """A config source that cannot be used; the message names the file or folder."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a regular file. Opened without blocking (a FIFO would
    wait for a writer; with O_NONBLOCK it opens at once) and refused when it is not a
    regular file (OSError EISDIR-like: "not a regular file")."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(21, "not a regular file")
        return f.read(limit + 1)


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes; never reads more than `limit` + 1 bytes, never opens a FIFO
    (it would block) or a device."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TreeError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise TreeError(f"{path} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
    try:
        data = read_regular(path, limit)  # swapped for a FIFO since the stat: refused
    except IsADirectoryError as exc:
        raise TreeError(f"{path} is not a regular file; refusing to read it") from exc
    except OSError as exc:
        raise TreeError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise TreeError(f"{path} is larger than {limit // 1024 // 1024} MiB (a config file)")
    return data


def walk(
    root: Path, *, follow: bool, max_entries: int = MAX_ENTRIES
) -> Iterator[tuple[Path, os.DirEntry[str]]]:
    """Every entry under the folder `root`, depth first. Symlinked folders are entered only
    when `follow` is set, and every folder at most once; more than `max_entries` entries is
    a TreeError naming `root`."""
    try:
        st = os.stat(root)
    except OSError as exc:
        raise TreeError(f"cannot read {root}: {exc.strerror}") from exc
    seen = {(st.st_dev, st.st_ino)}
    stack = [root]
    count = 0
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise TreeError(f"cannot read {folder}: {exc.strerror}") from exc
        below = []
        for entry in entries:
            count += 1
            if count > max_entries:
                raise TreeError(
                    f"{root}: more than {max_entries} entries; a config folder is for a few "
                    "files (point it at a smaller folder)"
                )
            yield Path(entry.path), entry
            try:
                if not entry.is_dir(follow_symlinks=follow):
                    continue
                est = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # a dangling symlink: nothing to walk
            key = (est.st_dev, est.st_ino)
            if key not in seen:
                seen.add(key)
                below.append(Path(entry.path))
        stack.extend(reversed(below))


def files(root: Path) -> list[Path]:
    """The regular files under folder `root` (reached through symlinks to files, not through
    symlinked folders), sorted as paths; anything else that is not a folder or a dangling
    symlink (a FIFO, a device, a socket) is a TreeError naming it."""
    out = []
    for path, entry in walk(root, follow=False):
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:
            continue  # dangling symlink
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise TreeError(f"{path} is {_kind(st.st_mode)}, not a regular file; refusing it")
        out.append(path)
    return sorted(out)


def read_tree(root: Path) -> Iterator[tuple[Path, bytes]]:
    """(path, bytes) of each regular file under `root`, in `files` order, within the caps."""
    total = 0
    for path in files(root):
        data = read_file(path)
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise TreeError(
                f"{root}: its files hold more than {MAX_TOTAL_BYTES // 1024 // 1024} MiB "
                "(a config folder)"
            )
        yield path, data


def tree_digest(path: Path) -> str:
    """sha256 over a file's bytes, or over every file (name and bytes) under a folder."""
    if not path.is_dir():
        return hashlib.sha256(read_file(path)).hexdigest()
    h = hashlib.sha256()
    for item, data in read_tree(path):
        h.update(str(item.relative_to(path)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"
