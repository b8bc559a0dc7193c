"""Where `reconciler import -o PATH` writes: `-` and /dev/stdout are standard output; a
symlink is written through (its final target replaced atomically, beside it), a FIFO or
device written directly. Called by `cli.importer`."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

STDOUT_NAMES = frozenset({"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})


def is_stdout(output: Path | None) -> bool:
    """No -o, `-o -` or `-o /dev/stdout`: the result goes to standard output."""
    return output is None or str(output) in STDOUT_NAMES


def target(output: Path) -> Path:
    """The file a write to `output` changes: a symlink's final target (may not exist yet)."""
    return Path(os.path.realpath(output))


def write(output: Path, text: str) -> Path:
    """Write `text` to `output` (not standard output); the path written, symlinks followed.

    A regular file (or a new one) is replaced atomically by a temporary file beside it,
    keeping its mode; anything else (a FIFO, a device) is opened and written."""
    real = target(output)
    try:
        st = real.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with real.open("w") as f:
            f.write(text)
        return real
    tmp = real.with_name(f".{real.name}.tmp")
    tmp.write_text(text)
    if st is not None:
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
    tmp.replace(real)
    return real


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
