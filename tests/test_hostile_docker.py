"""Issue #23 with a real engine: once `/_ping` answers again after an outage the event watcher
reconnects at once, not when a back-off grown during the outage ends (the outage is a unix
socket proxy to the engine that the test stops and starts: the machine's dockerd is never
touched); a daemon whose saves fail on a full disk leaves no temporary file behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.engine.events import follow
from reconciler.targets.host.events import filters
from tests.conftest import wait_for

pytestmark = pytest.mark.docker

_REQUEST = re.compile(rb"(?:GET|POST|HEAD|PUT|DELETE) (/\S*) HTTP/1\.[01]\r\n")


class EngineProxy:
    """A unix socket that forwards to the engine's; `stop()` is an outage (listener gone,
    every connection cut), `start()` the engine back. Records each request's path (no query)."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self.requests: list[tuple[float, str]] = []  # (monotonic time, path)
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def paths_since(self, since: float) -> list[str]:
        with self._lock:
            return [p for t, p in self.requests if t >= since]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(self.upstream)
            except OSError:
                client.close()
                engine.close()
                continue
            with self._lock:
                self._socks += [client, engine]
            threading.Thread(target=self._pump, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(engine, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests:
                    now = time.monotonic()
                    with self._lock:
                        found = _REQUEST.findall(data)
                        self.requests += [(now, m.decode().split("?")[0]) for m in found]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class CountingClient(docker.APIClient):
    """Counts the event-stream connections that failed (the engine was away)."""

    failed_events = 0

    def events(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().events(*args, **kwargs)
        except Exception:
            self.failed_events += 1
            raise


def _engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip("the engine is not on a unix socket")
    return host.removeprefix("unix://")


def test_event_stream_reconnects_as_soon_as_the_engine_answers(
    api: docker.APIClient, tmp_path: Path
) -> None:
    """The engine is away long enough for the back-off to reach 8 s; when it is back, the
    first request the watcher makes is a `/_ping` and the next one the event stream: it did
    not wait out the 8 s. The resync callback runs after the reconnect."""
    proxy = EngineProxy(tmp_path / "engine.sock", _engine_socket())
    proxy.start()
    client = CountingClient(base_url=f"unix://{proxy.path}", version=api.api_version, timeout=10)
    project = f"hostile-events-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    resyncs: list[float] = []
    watcher = threading.Thread(
        target=follow,
        args=(client, filters(), stop),
        kwargs={
            "on_event": lambda event: None,
            "on_reconnect": lambda: resyncs.append(time.monotonic()),
            "project": project,
        },
        daemon=True,
    )
    try:
        watcher.start()
        wait_for(lambda: any(p.endswith("/events") for p in proxy.paths_since(0)), 60)
        proxy.stop()  # the outage: 0.5 + 1 + 2 + 4 s of back-off, then one of 8 s
        wait_for(lambda: client.failed_events >= 4, 60, what="the back-off to reach 8 s")
        back = time.monotonic()
        proxy.start()
        wait_for(
            lambda: any(p.endswith("/events") for p in proxy.paths_since(back)),
            60,
            what="the event stream again",
        )
        paths = proxy.paths_since(back)
        reconnected = next(t for t, p in proxy.requests if t >= back and p.endswith("/events"))
        print(f"event stream reconnected {reconnected - back:.2f} s after the engine was back")
        assert paths[0].endswith("/_ping") and paths[1].endswith("/events"), paths
        wait_for(lambda: any(t >= back for t in resyncs), 60, what="the resync after it")
    finally:
        stop.set()  # ends the stream too
        proxy.stop()
        client.close()


def _full_disk() -> None:
    """In the daemon, before exec: files of at most 2 KiB (a write past it fails with EFBIG,
    as on a full disk; Python ignores SIGXFSZ). The lock and status files fit, a rollout
    record holding a 4 KiB environment value does not."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_daemon_saves_on_a_full_disk_leave_no_temporary_file(
    busybox_image: str, project: str, tmp_path: Path, write_state: Callable[..., Path]
) -> None:
    """The daemon converges a service, its rollout record's saves fail (logged), and the state
    folder holds no `.<project>.*.json-*` afterwards (the issue: one per failure, forever)."""
    web = {"image": busybox_image, "init": True, "command": ["sleep", "100000"]}
    path = write_state({"services": {"web": {**web, "environment": {"PAD": "x" * 4096}}}})
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "reconciler", "--log-format", "json", "run", str(path)]
    argv += ["--listen", "off", "--lock-dir", str(tmp_path), "--state-dir", str(state)]
    lines: list[str] = []
    proc = subprocess.Popen(  # the log to a pipe: the size limit is for files
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_full_disk
    )
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()

    def failed_saves() -> list[dict[str, Any]]:
        found = []
        for line in list(lines):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "cannot save state":
                    found.append(entry)
        return found

    try:
        wait_for(failed_saves, 120, what="a save refused by the full disk")
        assert "File too large" in failed_saves()[0]["error"]
        assert proc.poll() is None
        assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
