"""StrictModes for the daemon's inputs, as sshd checks `authorized_keys` and sudo `sudoers`.

Whoever can write the desired state (or a file it pulls in) is root on the host: a file, and
every folder above it after symlinks are resolved, must be owned by root or by the daemon's
own user and not writable by group or others. A root-owned folder with the sticky bit (`/tmp`)
is accepted: others can add entries to it but cannot replace ours. The CLI and the daemon's
reloader call `check`; `--no-strict-modes` skips it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from reconciler.config import tree
from reconciler.errors import DesiredStateError

MAX_TREE_ENTRIES = tree.MAX_ENTRIES  # a config folder: entries checked (more is a problem)
WRITABLE = "is writable by group or others"  # as `_entry` says it


class InsecureInput(DesiredStateError):
    """An input file or one of its folders can be written by someone other than us or root."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(source, problems)
        lines = "\n".join(f"  {p}" for p in problems)
        text = f"{source}: refused, an input is not safe (StrictModes):\n{lines}"
        if any(WRITABLE in p for p in problems):
            text += "\n" + fix_hint(source)
        self.args = (text,)

    def __str__(self) -> str:
        return str(self.args[0])


def fix_hint(source: str) -> str:
    """How to fix group-writable inputs (never by weakening the check)."""
    folder = Path(source).resolve().parent
    return (
        "  to fix: `chmod go-w FILE` for a file, `chmod -R go-w DIR` for a folder and all in "
        "it; a checkout made under umask 002 (Ubuntu's default for users) is group-writable "
        f"throughout: `chmod -R go-w {folder}`"
    )


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def check(paths: Iterable[str | Path], *, source: str, uids: frozenset[int] | None = None) -> None:
    """Raise InsecureInput listing every unsafe path among `paths` (absent ones are skipped:
    the loader reports those)."""
    found = problems(paths, uids=uids)
    if found:
        raise InsecureInput(source, found)


def problems(paths: Iterable[str | Path], *, uids: frozenset[int] | None = None) -> list[str]:
    """One line per unsafe file or folder, naming it, its mode and owner, and what is wrong."""
    ok = trusted_uids() if uids is None else uids
    out: list[str] = []
    seen: set[Path] = set()
    for given in paths:
        try:
            real = Path(given).resolve(strict=True)
        except (OSError, RuntimeError):
            continue  # absent (or a symlink loop): the loader says so when it matters
        for line in _path_problems(Path(given), real, ok, seen):
            if line not in out:
                out.append(line)
    return out


def _path_problems(given: Path, real: Path, ok: frozenset[int], seen: set[Path]) -> list[str]:
    out: list[str] = []
    shown = f"{given} (-> {real})" if str(given) != str(real) and given.is_symlink() else str(given)
    line = _entry(real, ok, shown, is_parent=False)
    if line:
        out.append(line)
    if real.is_dir():  # a config folder: everything in it is mounted into a container
        try:  # symlinked folders are walked once each: a loop ends, /usr stops at the cap
            for entry, _ in tree.walk(real, follow=True, max_entries=MAX_TREE_ENTRIES):
                if not entry.is_symlink():
                    line = _entry(entry, ok, str(entry), is_parent=False)
                    if line:
                        out.append(line)
                    continue
                try:
                    target = entry.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                via = f"{entry} (-> {target})"
                line = _entry(target, ok, via, is_parent=False)
                if line:
                    out.append(line)
                out.extend(_parents(target, ok, via, seen))
        except tree.TreeError as exc:
            out.append(f"{exc}; not checked further")
    out.extend(_parents(real, ok, shown, seen))
    return out


def _parents(real: Path, ok: frozenset[int], shown: str, seen: set[Path]) -> list[str]:
    out: list[str] = []
    for parent in real.parents:
        if parent in seen:
            continue
        seen.add(parent)
        line = _entry(parent, ok, str(parent), is_parent=True, of=shown)
        if line:
            out.append(line)
    return out


def _entry(
    path: Path, ok: frozenset[int], shown: str, *, is_parent: bool, of: str = ""
) -> str | None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{shown}: cannot check: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    what = f"{shown} (mode {mode:04o}, owner uid {st.st_uid})"
    if is_parent:
        what = f"{what}, a folder above {of},"
    if st.st_uid not in ok:
        owners = " or ".join(f"uid {u}" for u in sorted(ok))
        return f"{what} is owned by someone else than {owners}; refusing it (StrictModes)"
    if mode & 0o022:
        if is_parent and mode & stat.S_ISVTX and st.st_uid == 0:
            return None  # /tmp: others cannot replace what is not theirs
        return (
            f"{what} is writable by group or others; refusing it (StrictModes: chmod go-w {path})"
        )
    return None


def warn_off() -> str:
    """The line said loudly when the check is off."""
    return (
        "STRICT MODES ARE OFF (--no-strict-modes): input files writable by others are "
        "accepted; whoever can write them is root on this host. Development only."
    )
