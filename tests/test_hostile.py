"""Issue #23 against the real command and daemon, without Docker (the daemon is pointed at an
engine socket that does not exist: it starts anyway and waits for the engine): an alias of a
large string is refused cheaply at the alias (and a fuzz of nested anchors stays within a
small memory budget), a SIGHUP as soon as Python runs our first line does not kill the
daemon and `reconciler reload` signals only a daemon that announced itself, 1,000 slow
clients do not keep a scrape out, and failed saves leave no temporary file behind."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.hostile import SlowClients
from reconciler.config import loader
from reconciler.config.yamlread import MAX_EXPANDED_BYTES, MAX_NODES, YamlError, compose, read
from reconciler.errors import DesiredStateError
from reconciler.ops.lock import ProjectLock, status_path
from tests.conftest import free_port, run_cli, wait_for

BUDGET = 64 * 1024 * 1024  # bytes Python may allocate at once to read any of these files


def _name(kind: str) -> str:
    return f"hostile-{kind}-{uuid.uuid4().hex[:8]}"


def _state(tmp: Path, project: str) -> Path:
    path = tmp / f"{project}.yaml"
    path.write_text(f"project: {project}\nservices:\n  web:\n    image: busybox:1\n")
    return path


@contextlib.contextmanager
def _daemon(tmp: Path, path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`reconciler run` on `path`, no engine, its log in tmp/daemon.log; stopped afterwards."""
    argv = [sys.executable, "-m", "reconciler", "--log-format", "json", "run", str(path)]
    argv += ["--lock-dir", str(tmp), *args]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp}/no-engine.sock", "PYTHONUNBUFFERED": "1"}
    with (tmp / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _announced(tmp: Path, project: str, pid: int) -> bool:
    return ProjectLock(project, tmp).holder() == (pid, "reconciler daemon")


def _reloaded(tmp: Path, project: str) -> bool:
    """The daemon's status file records a successful reload asked by a signal."""
    with contextlib.suppress(OSError, ValueError):
        done = json.loads(status_path(project, tmp).read_text()).get("reload") or {}
        return done.get("trigger") == "signal" and done.get("result") == "success"
    return False


# --------------------------------------------------------------------------- aliases


def _alias_text(size: int = 600 * 1024, uses: int = 1500) -> str:
    """The issue's file: one string of `size` bytes anchored once, used `uses` times."""
    head = "project: hostile-alias\nservices:\n  web:\n    image: busybox:1\n    environment:\n"
    lines = [f"      V0: &big {'A' * size}", *(f"      V{i}: *big" for i in range(1, uses))]
    return head + "\n".join(lines) + "\n"


def test_alias_of_a_large_string_is_refused_at_the_alias(tmp_path: Path) -> None:
    """`reconciler validate` refuses it with the file, line and column of the alias that
    passes the bound (the 6th: with the anchor, 7 x 600 KiB > 4 MiB); reading it allocates a
    few MiB at most (it took 3.5 GB to be called valid)."""
    path = tmp_path / "alias.yaml"
    path.write_text(_alias_text())
    proc = run_cli("validate", str(path))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert f"{path}:12:11: with this alias the document expands to more than 4 MiB" in said

    tracemalloc.start()
    try:
        with pytest.raises(DesiredStateError, match=r"s\.yaml:12:11: with this alias"):
            loader.parse(_alias_text(), source="s.yaml", base_dir=tmp_path, environ={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak


def test_one_alias_may_not_stand_for_more_than_a_file() -> None:
    """Per value: an alias of a collection that grew past 1 MiB through nested aliases is
    refused at that alias, before the total is reached."""
    text = textwrap.dedent(
        f"""\
        x-a: &a "{"A" * 200_000}"
        x-b: &b [*a, *a, *a, *a, *a, *a]
        x-c: [*b]
        project: p
        services: {{web: {{image: busybox:1}}}}
        """
    )
    with pytest.raises(DesiredStateError) as info:
        loader.parse(text, source="s.yaml", base_dir=Path("/srv"), environ={})
    assert "s.yaml:3:7: this alias stands for 1.1 MiB of text, more than the 1 MiB" in str(
        info.value
    )


def test_aliases_within_the_bound_still_work() -> None:
    """Six uses of a 600 KiB string (3.5 MiB expanded) are valid, and each value is the text."""
    state = loader.parse(_alias_text(uses=6), source="s.yaml", base_dir=Path("/srv"), environ={})
    env = state.service("web").replicas[0].environment
    assert len(env) == 6 and all(len(e) == len("V0=") + 600 * 1024 for e in env)


@st.composite
def _anchor_towers(draw: st.DrawFn) -> str:
    """Nested anchors (the billion-laughs shape and its variants): each level uses the one
    below `width` times, as a list, a mapping or merge keys; the base string is used again
    as environment values."""
    levels, width = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    base, shape = draw(st.integers(0, 50_000)), draw(st.sampled_from(["seq", "map", "merge"]))
    text = f'"{"A" * base}"'
    lines = [f"x-l0: &l0 {{k: {text}}}" if shape == "merge" else f"x-l0: &l0 {text}"]
    for i in range(1, levels + 1):
        below = f"*l{i - 1}"
        if shape == "seq":
            body = "[" + ", ".join([below] * width) + "]"
        elif shape == "map":
            body = "{" + ", ".join(f"k{j}: {below}" for j in range(width)) + "}"
        else:  # merged mappings, and the level below kept whole beside them
            body = "{<<: [" + ", ".join([below] * width) + f"], all{i}: {below}}}"
        lines.append(f"x-l{i}: &l{i} {body}")
    lines.append(f"x-top: [*l{levels}, *l{levels}]")
    # The base again as environment values: a string, or a mapping (merge) the schema refuses.
    uses = ", ".join(f"V{j}: *l0" for j in range(draw(st.integers(0, 40))))
    lines.append(f"project: p\nservices: {{web: {{image: busybox:1, environment: {{{uses}}}}}}}")
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_anchor_towers())
def test_alias_expansion_stays_within_a_small_budget(text: str) -> None:
    """Whatever the tower, the loader answers (valid, or its own error) visiting at most
    MAX_NODES values and allocating at most BUDGET bytes at once: counted, not timed."""
    visits = 0

    def count(path: object, scalar: object) -> None:
        nonlocal visits
        visits += 1

    try:
        node = compose(text)
        if node is not None:
            read(node, count)
    except YamlError as exc:
        assert exc.mark is not None, exc.message
    assert visits <= MAX_NODES

    tracemalloc.start()
    try:
        with contextlib.suppress(DesiredStateError):
            loader.parse(text, source="s.yaml", base_dir=Path("/srv"), environ={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BUDGET, (peak, MAX_EXPANDED_BYTES)


# --------------------------------------------------------------------------- SIGHUP


def _hup_handled(pid: int) -> bool:
    """SIGHUP caught or ignored by `pid` (its default would kill it), read from /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = dict(line.split(":\t", 1) for line in text.splitlines() if line.startswith("Sig"))
    bit = 1 << (signal.SIGHUP - 1)
    return bool((int(masks["SigCgt"], 16) | int(masks["SigIgn"], 16)) & bit)


def test_sighups_from_the_first_line_on_do_not_kill_the_daemon(tmp_path: Path) -> None:
    """SIGHUP every millisecond from the moment Python runs the entry point's first line
    (what comes before is Python's own start-up: README), through the imports and the first
    read of the file, until the daemon announces itself: it survives, reloads, and stops
    cleanly on SIGTERM."""
    project = _name("hup")
    with _daemon(tmp_path, _state(tmp_path, project), "--listen", "off") as proc:
        wait_for(lambda: _hup_handled(proc.pid) or proc.poll() is not None, 60, interval=0)
        sent = 0
        for _ in range(50):  # the first 50 ms of our code, and more
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.001)

        def hup_until_announced() -> bool:
            nonlocal sent
            if proc.poll() is not None:
                return True
            proc.send_signal(signal.SIGHUP)
            sent += 1
            return _announced(tmp_path, project, proc.pid)

        wait_for(hup_until_announced, 60, interval=0.005, what="the daemon to take its lock")
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
        assert sent >= 50
        wait_for(lambda: _reloaded(tmp_path, project), 60, what="the reload the SIGHUPs asked")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_sigterm_noted_before_the_relay_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    """A SIGTERM the first handler noted is handed to the relay: exit 0, not death by it."""
    with _daemon(tmp_path, _state(tmp_path, _name("term")), "--listen", "off") as proc:
        wait_for(lambda: _hup_handled(proc.pid) or proc.poll() is not None, 60, interval=0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_reload_signals_only_a_daemon_that_announced_itself(tmp_path: Path) -> None:
    """`reconciler reload --pid` of a process holding no daemon lock (one still starting, or
    any other) refuses without signalling it; once the daemon holds its lock, it works."""
    project = _name("reload")
    path = _state(tmp_path, project)
    bystander = subprocess.Popen(["sleep", "600"])  # SIGHUP would kill it
    try:
        pid = str(bystander.pid)
        proc = run_cli("reload", str(path), "--lock-dir", str(tmp_path), "--pid", pid)
        lines = [json.loads(x) for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
        assert proc.returncode == 1, lines
        assert "has not announced readiness" in lines[-1]["event"], lines
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    with _daemon(tmp_path, path, "--listen", "off") as daemon:
        wait_for(lambda: _announced(tmp_path, project, daemon.pid), 60, what="the lock")
        proc = run_cli("reload", str(path), "--lock-dir", str(tmp_path), "--pid", str(daemon.pid))
        assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- slow clients


def _scrape(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            return r.status == 200 and b"reconciler_docker_up" in r.read()
    except OSError:
        return False


def _threads_and_rss(pid: int) -> tuple[int, int]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) * 1024


def test_scrapes_are_answered_under_1000_slow_clients(tmp_path: Path) -> None:
    """1,000 clients on 127.0.0.1 each send a request one byte per second (and connect again
    when closed): every scrape is answered, the daemon's threads and memory stay bounded."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        if hard != resource.RLIM_INFINITY and hard < 2000:
            pytest.skip("needs 2,000 file descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2000, hard))
    port = free_port()
    try:
        with _daemon(
            tmp_path, _state(tmp_path, _name("slow")), "--listen", f"127.0.0.1:{port}"
        ) as proc:
            wait_for(lambda: _scrape(port), 60, what="a first scrape")
            with SlowClients(port, 1000) as slow:
                wait_for(lambda: slow.ticks >= 2, 60, what="the slow clients to trickle")
                answered = sum(_scrape(port) for _ in range(20))
                threads, rss = _threads_and_rss(proc.pid)
                assert slow.ticks >= 2
            assert answered == 20
            assert threads < 32, threads  # 46 when each connection had a thread
            assert rss < 256 * 1024 * 1024, rss
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- failed saves

_SAVES_ON_A_FULL_DISK = """
import resource, sys
from pathlib import Path
from reconciler.ops.state_store import StateStore
resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))  # Python ignores SIGXFSZ: EFBIG
store = StateStore(sys.argv[1], Path(sys.argv[2]))
for i in range(7):
    store.put_drains("web", {f"replica-{j}": float(i) for j in range(100)})
"""


def test_failed_saves_leave_no_temporary_file(tmp_path: Path) -> None:
    """Seven saves refused by a full disk (a file-size limit: each write fails with EFBIG,
    as ENOSPC would) leave no `.<project>.*.json-*` behind; each is logged."""
    project = _name("save")
    proc = subprocess.run(
        [sys.executable, "-c", _SAVES_ON_A_FULL_DISK, project, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("cannot save state") == 7, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_daemon_sweeps_stale_temporary_files_at_start(tmp_path: Path) -> None:
    """Temporary files a crash left (`.<project>.*.json-*`) are removed once the daemon holds
    its project's lock; another project's, and the records themselves, are kept."""
    project = _name("sweep")
    state = tmp_path / "state"
    state.mkdir()
    stale = [state / f".{project}.{kind}.json-x1y2z3" for kind in ("rollouts", "drains", "swarm")]
    kept = [state / f".{project}x.rollouts.json-a1b2c3", state / f"{project}.drains.json"]
    for p in [*stale, *kept]:
        p.write_text("{}" if p.name.endswith(".json") else "")
    path = _state(tmp_path, project)
    with _daemon(tmp_path, path, "--listen", "off", "--state-dir", str(state)) as proc:
        wait_for(lambda: not any(p.exists() for p in stale), 60, what="the sweep")
        assert all(p.exists() for p in kept)
        assert proc.poll() is None
