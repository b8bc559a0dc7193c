"""Issue #23's hostile inputs, measured against the real `reconciler` command (no Docker):

    python -m bench.hostile alias        # validate time and peak memory of an alias of 600 KiB
    python -m bench.hostile sighup       # deaths of 20 daemons sent SIGHUP 0-50 ms after exec
                                         # (--tree DIR: a source tree instead; --tree python:
                                         # a bare script ignoring SIGHUP first, the floor)
    python -m bench.hostile slowclients  # /metrics probes answered under 1,000 slow clients

Each daemon talks to an engine socket that does not exist (it starts anyway and waits for
the engine), listens on 127.0.0.1 only, and keeps its lock in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIG = 600 * 1024  # bytes of the anchored string
USES = 1500  # aliases of it, as environment values


def alias_file(path: Path, size: int = BIG, uses: int = USES) -> Path:
    """One string of `size` bytes anchored once and used `uses` times as environment values."""
    lines = [
        "project: hostile-alias",
        "services:",
        "  web:",
        "    image: busybox:1",
        "    environment:",
        f"      V0: &big {'A' * size}",
        *(f"      V{i}: *big" for i in range(1, uses)),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


FLOOR = Path("python")  # a script whose first statement ignores SIGHUP: Python's own start-up


def _command(tree: Path | None = None) -> list[str]:
    """The console script systemd starts (ExecStart); with `tree`, the same two lines run
    from that source tree (to compare revisions under the same load)."""
    if tree == FLOOR:
        script = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(60)"
        return [sys.executable, "-c", script]
    if tree is not None:
        script = "import re, sys; from reconciler.entry import main; sys.exit(main())"
        return ["env", f"PYTHONPATH={tree}", sys.executable, "-c", script]
    script = shutil.which("reconciler", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "reconciler"]


def _state(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"project: {name}\nservices:\n  web:\n    image: busybox:1\n")
    return path


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{tmp}/no-engine.sock", "PYTHONUNBUFFERED": "1"}


def bench_alias(tmp: Path) -> None:
    path = alias_file(tmp / "alias.yaml")
    timed = ["/usr/bin/time", "-f", "%e %M"]
    proc = subprocess.run(
        [*timed, *_command(), "validate", str(path)], capture_output=True, text=True
    )
    seconds, kib = proc.stderr.strip().splitlines()[-1].split()
    said = (proc.stdout + proc.stderr).strip().splitlines()
    print(f"file: {path.stat().st_size / 1000:.0f} KB; exit {proc.returncode}")
    print(f"validate: {float(seconds):.2f} s, peak RSS {int(kib) / 1024:.0f} MiB")
    print(f"said: {said[0][:200] if said else ''}")


def _hup_handled(pid: int) -> bool:
    """SIGHUP caught or ignored by `pid` now (its default would kill it)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    bit = 1 << (signal.SIGHUP - 1)
    masks = dict(line.split(":\t", 1) for line in text.splitlines() if line.startswith("Sig"))
    return bool((int(masks["SigCgt"], 16) | int(masks["SigIgn"], 16)) & bit)


def _daemon(tmp: Path, name: str, tree: Path | None) -> subprocess.Popen[bytes]:
    path = _state(tmp, name)
    argv = [*_command(tree), "run", str(path), "--listen", "off", "--lock-dir", str(tmp)]
    return subprocess.Popen(  # returns once the child has exec'd
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp)
    )


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _one_hup(tmp: Path, name: str, tree: Path | None, window_s: float) -> bool:
    """Start a daemon, SIGHUP it 0-`window_s` after exec: did it die of it?"""
    proc = _daemon(tmp, name, tree)
    try:
        time.sleep(random.uniform(0, window_s))
        proc.send_signal(signal.SIGHUP)
        lock = tmp / f"reconciler-{name}.lock"
        deadline = time.monotonic() + (1 if tree == FLOOR else 30)
        while proc.poll() is None and time.monotonic() < deadline:
            if lock.exists() and lock.read_text().strip():
                break
            time.sleep(0.05)
        return proc.poll() == -signal.SIGHUP
    finally:
        _end(proc)


def _time_to_handler(tmp: Path, name: str, tree: Path | None) -> float:
    """Milliseconds from exec until SIGHUP no longer kills the process (polled via /proc)."""
    proc = _daemon(tmp, name, tree)
    start = time.monotonic()
    try:
        while proc.poll() is None and not _hup_handled(proc.pid):
            pass
        return (time.monotonic() - start) * 1000
    finally:
        _end(proc)


def bench_sighup(
    tmp: Path, trees: list[Path | None], runs: int = 20, window_s: float = 0.05
) -> None:
    """Deaths of `runs` daemons per tree (interleaved), then when the handler is in place."""
    deaths = [0] * len(trees)
    handler_ms: list[list[float]] = [[] for _ in trees]
    for i in range(runs):
        for t, tree in enumerate(trees):
            deaths[t] += _one_hup(tmp, f"hostile-hup-{os.getpid()}-{t}-{i}", tree, window_s)
    for i in range(runs):
        for t, tree in enumerate(trees):
            handler_ms[t].append(_time_to_handler(tmp, f"hostile-at-{os.getpid()}-{t}-{i}", tree))
    for t, tree in enumerate(trees):
        ms = sorted(handler_ms[t])
        print(
            f"{tree or 'installed'}: SIGHUP 0-{window_s * 1000:.0f} ms after exec: {deaths[t]} "
            f"of {runs} daemons died; SIGHUP handled from {ms[len(ms) // 2]:.0f} ms after "
            f"exec (median; {ms[0]:.0f}-{ms[-1]:.0f})"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlowClients:
    """`count` clients on 127.0.0.1, each sending a request one byte per second, never
    finishing it; a client the server closes connects again (one thread, one selector)."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.reconnects = 0
        self.ticks = 0  # seconds in which every open client sent its byte
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _connect(self, sel: selectors.BaseSelector) -> None:
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", self.port))
        sel.register(s, selectors.EVENT_READ, [0])  # bytes sent so far

    def _run(self) -> None:
        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100_000
        sel = selectors.DefaultSelector()
        closed = 0  # clients the server closed: they connect again at the next tick
        try:
            for _ in range(self.count):
                self._connect(sel)
            next_tick = time.monotonic() + 1.0
            while not self.stop.is_set():
                for key, _ in sel.select(timeout=max(0.0, next_tick - time.monotonic())):
                    try:
                        gone = key.fileobj.recv(4096) == b""  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                        closed += 1
                if time.monotonic() < next_tick:
                    continue
                next_tick += 1.0
                for key in list(sel.get_map().values()):
                    sent = key.data
                    with contextlib.suppress(OSError):  # not connected yet, or closed
                        key.fileobj.send(request[sent[0] : sent[0] + 1])  # type: ignore[union-attr]
                        sent[0] += 1
                for _ in range(closed):
                    self._connect(sel)
                self.reconnects += closed
                closed = 0
                self.ticks += 1
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()


def bench_slowclients(tmp: Path, clients: int = 1000, probes: int = 120) -> None:
    port = _free_port()
    path = _state(tmp, f"hostile-slow-{os.getpid()}")
    argv = [*_command(), "run", str(path), "--listen", f"127.0.0.1:{port}"]
    log = (tmp / "daemon.log").open("w")
    proc = subprocess.Popen(
        [*argv, "--lock-dir", str(tmp)], stdout=log, stderr=subprocess.STDOUT, env=_env(tmp)
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while not _probe(url, 5.0) and time.monotonic() < deadline:
            time.sleep(0.2)
        with SlowClients(port, clients) as slow:
            time.sleep(5)  # all connected, trickling
            answered, took = 0, []
            for _ in range(probes):
                start = time.monotonic()
                if _probe(url, 1.0):
                    answered += 1
                    took.append(time.monotonic() - start)
                time.sleep(0.25)
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
            rss = _rss_mib(proc.pid)
        worst = f"{max(took) * 1000:.0f} ms" if took else "-"
        print(
            f"{clients} slow clients ({slow.reconnects} reconnects): {answered} of {probes} "
            f"probes answered within 1 s (slowest {worst}); daemon: {threads} threads, "
            f"{rss:.0f} MiB RSS"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _probe(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200 and b"reconciler_" in r.read()
    except OSError:
        return False


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def _tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as d:
        yield Path(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["alias", "sighup", "slowclients"])
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="sighup: a source tree to compare (repeat; default: the installed command; "
        "'python': a bare script ignoring SIGHUP first, the floor)",
    )
    parser.add_argument("--runs", type=int, default=20, help="sighup: daemons per tree")
    args = parser.parse_args()
    with _tmp() as tmp:
        if args.what == "sighup":
            bench_sighup(tmp, args.tree or [None], runs=args.runs)
        else:
            {"alias": bench_alias, "slowclients": bench_slowclients}[args.what](tmp)


if __name__ == "__main__":
    main()
