"""What tells the daemon its inputs changed: change stamps of the desired-state file and of
every file or folder it names (configs it mounts). Polled; only enqueues a reload."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.config import tree


def stamps(path: Path, watched: tuple[str, ...]) -> tuple[object, ...]:
    """Change stamps of the desired-state file and of the config files it mounts."""
    return (_stamp(path), *(_tree_stamp(Path(p)) for p in watched))


def _tree_stamp(path: Path) -> tuple[object, ...]:
    if not path.is_dir():
        return (_stamp(path),)
    try:
        return tuple(
            (str(p), _stamp(p)) for p in sorted(p for p, _ in tree.walk(path, follow=False))
        )
    except tree.TreeError as exc:  # grown past the cap: the reload it triggers says so
        return (str(exc),)


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # Mode and owner too: a chmod that makes a file unsafe is a reason to look (StrictModes).
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)
