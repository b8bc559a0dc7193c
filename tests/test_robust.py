"""Robustness against hostile or odd inputs (review: symlink loops, FIFOs, devices, huge
trees, out-of-range values), without an engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.config import loader, strict_modes, tree
from reconciler.errors import DesiredStateError
from reconciler.runtime.watchers import stamps

HEAD = "version: 1\nproject: rob\nservices:\n  web:\n    image: busybox\n"


def _state(tmp_path: Path, source: str) -> Path:
    f = tmp_path / "d.yaml"
    f.write_text(HEAD + f"    configs: [{{source: {source}, target: /conf}}]\n")
    return f


def _error(f: Path) -> str:
    with pytest.raises(DesiredStateError) as info:
        loader.load(f)
    return str(info.value)


# --------------------------------------------------------------------------- config sources


def test_symlink_loop_in_config_folder_is_walked_once(tmp_path: Path) -> None:
    """`ln -s . conf/self` neither recurses without end (StrictModes) nor hides the files."""
    conf = tmp_path / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "a.txt").write_text("a\n")
    (conf / "self").symlink_to(".")
    (conf / "sub" / "up").symlink_to("..")
    f = _state(tmp_path, "./conf")
    desired = loader.load(f)
    assert strict_modes.problems([f, *desired.watched]) == []
    (conf / "b.txt").write_text("b\n")
    (conf / "b.txt").chmod(0o666)
    [line] = strict_modes.problems([conf])
    assert str(conf / "b.txt") in line
    assert stamps(f, desired.watched)  # the watcher walks it too


def test_fifo_config_is_refused_not_read(tmp_path: Path) -> None:
    """A FIFO would block the reader for ever: refused by type, naming it."""
    os.mkfifo(tmp_path / "ff")
    assert "ff is a FIFO, not a regular file" in _error(_state(tmp_path, "./ff"))
    conf = tmp_path / "conf"
    conf.mkdir()
    os.mkfifo(conf / "pipe")
    assert f"{conf / 'pipe'} is a FIFO" in _error(_state(tmp_path, "./conf"))


def test_device_config_is_refused(tmp_path: Path) -> None:
    assert "/dev/zero is a device, not a regular file" in _error(_state(tmp_path, "/dev/zero"))


def test_config_file_size_is_capped(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as fh:  # sparse: no disk used
        fh.truncate(tree.MAX_FILE_BYTES + 1)
    assert f"{big} is larger than 16 MiB" in _error(_state(tmp_path, "./big"))


def test_config_folder_total_size_is_capped(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for i in range(5):
        with (conf / f"f{i}").open("wb") as fh:
            fh.truncate(tree.MAX_FILE_BYTES)
    assert f"{conf}: its files hold more than 64 MiB" in _error(_state(tmp_path, "./conf"))


def test_config_folder_entries_are_capped(tmp_path: Path) -> None:
    """`configs: [{source: /usr}]` stops at the entry cap, quickly and with a clear error."""
    conf = tmp_path / "conf"
    conf.mkdir()
    for i in range(tree.MAX_ENTRIES + 1):
        (conf / str(i)).touch()
    f = _state(tmp_path, "./conf")
    assert f"{conf}: more than {tree.MAX_ENTRIES} entries" in _error(f)
    [line] = strict_modes.problems([conf])
    assert "more than" in line
    assert stamps(f, (str(conf),))  # the watcher does not raise


def test_walk_enters_a_folder_once_however_reached(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "again").symlink_to(tmp_path / "a" / "b")
    names = [p.name for p, _ in tree.walk(tmp_path, follow=True)]
    assert sorted(names) == ["a", "again", "b", "loop"]
