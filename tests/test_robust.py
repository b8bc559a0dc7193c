"""Robustness against hostile or odd inputs (review: symlink loops, FIFOs, devices, huge
trees, out-of-range values), without an engine."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.config import loader, strict_modes, tree
from reconciler.config.schema import parse_pull_policy
from reconciler.errors import DesiredStateError, LockHeld
from reconciler.ops.lock import ProjectLock
from reconciler.runtime.daemon import Daemon, Options
from reconciler.runtime.watchers import stamps
from reconciler.runtime.workqueue import WorkQueue
from reconciler.targets.host import KIND as HOST
from tests.conftest import run_cli

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


# --------------------------------------------------------------------------- supervision


def test_a_huge_delay_does_not_kill_the_worker_waiting() -> None:
    """every_99999999999h once overflowed the queue's timed wait (time_t) in `get`, killing
    every image worker; delays are clamped now."""
    q = WorkQueue()
    q.add_after("far", 99999999999 * 3600.0)
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.append(q.get()), daemon=True)
    worker.start()
    time.sleep(0.2)  # let it wait on the far key
    q.add("near")
    worker.join(30)
    assert got == ["near"]
    assert q.pending() == {"near", "far"}
    q.add_after("nan", float("nan"))  # not a delay: now
    q.done("near")
    assert q.get() == "nan"


def test_pull_every_is_bounded_and_days_are_explained() -> None:
    with pytest.raises(ValueError, match="between 1s and 8760h"):
        parse_pull_policy("every_99999999999h")
    with pytest.raises(ValueError, match="write days in hours"):
        parse_pull_policy("every_1d")
    assert parse_pull_policy("every_8760h") == ("missing", 365 * 86400.0)


def test_reload_thread_survives_an_unexpected_error(tmp_path: Path, monkeypatch: Any) -> None:
    """An exception in a reload (it was a RecursionError) is a failed reload: the last good
    state stays, /readyz says invalid, the metric is 0, and the next reload is served."""
    f = tmp_path / "d.yaml"
    f.write_text(HEAD)
    desired = loader.load(f)
    options = Options(path=f, state_dir=tmp_path, lock_dir=tmp_path, settle=0.01)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    d = Daemon(options, HOST, desired)
    real_load = d.reloader.load

    def boom() -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(d.reloader, "load", boom)
    thread = threading.Thread(target=d.reloader.loop, daemon=True)
    thread.start()
    try:
        d.signals.reload.set()
        _wait(lambda: d.reloader.last is not None)
        assert d.reloader.last is not None and d.reloader.last["result"] == "error"
        assert "RecursionError" in str(d.reloader.last["error"])
        assert d.readyz() == (False, "docker engine unreachable; desired state invalid")
        assert d.metrics.state_valid._value.get() == 0
        assert d.desired.digest == desired.digest
        monkeypatch.setattr(d.reloader, "load", real_load)
        f.write_text(HEAD.replace("busybox", "busybox:1"))
        d.signals.reload.set()
        _wait(lambda: d.desired.digest != desired.digest)
        assert thread.is_alive() and d.state_valid
    finally:
        d.signals.stop.set()
        thread.join(10)


def _wait(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --------------------------------------------------------------------------- CLI options


def test_lock_dir_is_created_or_a_clear_error(tmp_path: Path) -> None:
    lock = ProjectLock("rob", tmp_path / "new" / "locks")
    lock.acquire()
    try:
        assert lock.path.exists()
    finally:
        lock.release()
    (tmp_path / "file").write_text("")
    with pytest.raises(LockHeld, match=r"cannot take the project lock .*file/x.*--lock-dir"):
        ProjectLock("rob", tmp_path / "file" / "x").acquire()


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:-1"])
def test_listen_port_out_of_range_is_a_usage_error(tmp_path: Path, listen: str) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(HEAD)
    done = run_cli("run", str(f), "--listen", listen)
    assert done.returncode == 2
    assert "not in 1..65535" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("volumes", "where"),
    [
        ("  v: {}\n", "d.yaml:7:6: volumes.v:"),
        ("  data: {name: x}\n", "d.yaml:7:16: volumes.data.name:"),
        ("  v:\n", "volumes.v:"),
    ],
)
def test_volume_name_docker_refuses_is_refused_at_its_line(
    tmp_path: Path, volumes: str, where: str
) -> None:
    """Docker wants 2+ characters ("volume name is too short"): said by validate, at the line."""
    f = tmp_path / "d.yaml"
    f.write_text(HEAD + "volumes:\n" + volumes)
    message = _error(f)
    assert "is not a valid volume name: two or more" in message and where in message


@pytest.mark.parametrize("written", ["0o1777", "1777", "'01777'", "01777"])
def test_tmpfs_mode_is_octal_as_written(tmp_path: Path, written: str) -> None:
    """`mode: 0o1777` (YAML's 1023), `1777` and `"01777"` are one mode, given Docker in octal."""
    text = HEAD + f"    volumes: [{{type: tmpfs, target: /t, tmpfs: {{mode: {written}}}}}]\n"
    d = loader.parse(text, source="d.yaml", base_dir=tmp_path, environ={})
    assert d.service("web").replicas[0].options.tmpfs == (("/t", "mode=1777"),)


@pytest.mark.parametrize("written", ["0o17777", "1789", "rwx", "true"])
def test_tmpfs_mode_not_octal_is_refused(tmp_path: Path, written: str) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(HEAD + f"    volumes: [{{type: tmpfs, target: /t, tmpfs: {{mode: {written}}}}}]\n")
    message = _error(f)
    assert "d.yaml:6:15: services.web.volumes[0]" in message and "must be an octal mode" in message


# --------------------------------------------------------------------------- planner


@pytest.mark.parametrize("network", ["host", "none"])
def test_scale_down_of_host_or_none_network_replica_stops_without_drain(network: str) -> None:
    """network_mode host/none has no DNS to leave (Docker refuses to disconnect `host`): the
    replica is removed with its grace at once, never drained."""
    from dataclasses import replace as _replace

    from reconciler.core.actions import RemoveContainer
    from reconciler.core.observed import Observed
    from reconciler.core.planner import Holds, plan
    from tests.simulator import simulate

    def state(replicas: int) -> Any:
        text = HEAD.replace("busybox\n", f"busybox\n    network_mode: {network}\n")
        text += f"    replicas: {replicas}\n    drain_period: 5s\n"
        return loader.parse(text, source="d.yaml", base_dir=Path("/srv"), environ={})

    live = simulate(Observed(), plan(state(2), Observed()))
    live = _replace(
        live, containers=tuple(_replace(c, networks=frozenset({network})) for c in live.containers)
    )
    result = plan(state(1), live, Holds(now=100.0))
    assert [type(a) for a in result.actions] == [RemoveContainer], result.actions


def test_namespace_owner_of_no_container_is_blocked_not_waiting() -> None:
    """container:X of no project: joined when it exists (`outside`), blocked with an error
    note when it does not (`absent`); a project's own owner still waits as before."""
    from reconciler.core.actions import CreateContainer
    from reconciler.core.observed import Observed
    from reconciler.core.planner import NAMESPACE_MISSING, Holds, foreign_namespaces, plan

    text = HEAD + "    network_mode: container:elsewhere\n  side:\n    image: busybox\n"
    text += "    network_mode: service:web\n"
    d = loader.parse(text, source="d.yaml", base_dir=Path("/srv"), environ={})
    assert foreign_namespaces(d) == {"elsewhere"}
    blocked = plan(d, Observed(), Holds(absent=frozenset({"elsewhere"})))
    assert any(NAMESPACE_MISSING in n and "create:rob-web-1" in n for n in blocked.notes)
    joined = plan(d, Observed(), Holds(outside={"elsewhere": "abc"}))
    creates = [a.name for a in joined.actions if isinstance(a, CreateContainer)]
    assert creates == ["rob-web-1", "rob-side-1"]


@pytest.mark.parametrize("fifo", [".env", "policy.yaml", "d.yaml"])
def test_a_fifo_input_is_refused_not_waited_on(tmp_path: Path, fifo: str) -> None:
    """A FIFO as the file, its .env or the policy: `validate` refuses it with the path (it
    used to open it and wait for a writer forever; the daemon's reload thread with it)."""
    (tmp_path / "d.yaml").write_text(HEAD)
    target = tmp_path / fifo
    target.unlink(missing_ok=True)
    os.mkfifo(target, 0o644)
    argv = [sys.executable, "-m", "reconciler", "validate", str(tmp_path / "d.yaml")]
    argv += ["--policy", str(tmp_path / "policy.yaml")] if fifo == "policy.yaml" else []
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a regular file" in proc.stderr, proc.stderr


def test_ready_waits_for_a_first_pass_that_is_done(tmp_path: Path, monkeypatch: Any) -> None:
    """READY=1 comes with the first pass of a first-round key that is done (Swarm's tasks
    running: `Outcome.ready`), not with the one that only asked Swarm to start them."""
    from reconciler.targets.base import Outcome

    f = tmp_path / "d.yaml"
    f.write_text(HEAD)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    passes: list[str] = []

    class Settling:
        desired = loader.load(f)
        hold_removals = False

        def bind(self, emit: Any) -> None:
            pass

        def status_data(self) -> dict[str, object]:
            return {}

        def reconcile(self, key: str, trigger: str) -> Outcome:
            passes.append(key)
            return Outcome(0.01, True, ready=len(passes) >= 3)

    options = Options(path=f, state_dir=tmp_path, lock_dir=tmp_path, settle=0.01)
    d = Daemon(options, HOST, Settling.desired, target=Settling())  # type: ignore[arg-type]
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(d.notifier, "send", lambda *lines: sent.append((lines[0], len(passes))))
    d._first_round = {"resync"}
    d._engine_up = True
    d.queue.add_after("resync", 0.0)
    worker = threading.Thread(target=d._work, args=(d.queue,), daemon=True)
    worker.start()
    try:
        _wait(lambda: any(line == "READY=1" for line, _ in sent))
        assert ("READY=1", 3) in sent
    finally:
        d.queue.shut_down()
        worker.join(10)
