"""Real-engine helpers for the tests and the benchmarks: local images, labelled cleanup.

No registry is reachable here, so images are built FROM scratch: busybox-static gives a
shell, `httpd`, `nc` and `sleep`; real programs from Debian packages (haproxy,
prometheus, node-exporter) are packed with the libraries `ldd` lists.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors

TEST_LABEL = "io.reconciler.test"
_LDD = re.compile(r"(/\S+)")


class ImageBuildError(RuntimeError):
    """A local image could not be built."""


def libraries(binary: Path) -> list[Path]:
    """The shared libraries (and loader) `ldd` lists for `binary`."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = _LDD.search(line.split("=>")[-1])
        if m and Path(m.group(1)).exists():
            libs.append(Path(m.group(1)))
    return libs


def build_scratch_image(
    api: docker.APIClient,
    tag: str,
    files: dict[str, Path] | None = None,
    *,
    binaries: Iterable[str | Path] = (),
    extra: Iterable[str] = (),
) -> str:
    """Build `tag` FROM scratch: busybox, `files` (image path -> host path), and `binaries`
    (host paths, copied to the same path with their libraries), then `extra` lines."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ImageBuildError("busybox is not installed (apt-get install busybox-static)")
    wanted: dict[str, Path] = dict(files or {})
    for binary in binaries:
        path = Path(binary)
        if not path.exists():
            raise ImageBuildError(f"{path} is not installed")
        wanted[str(path)] = path
        for lib in libraries(path):
            wanted[str(lib)] = lib
    with tempfile.TemporaryDirectory() as ctx:
        ctx_path = Path(ctx)
        shutil.copy(busybox, ctx_path / "busybox")
        lines = [
            "FROM scratch",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
            'RUN ["/bin/mkdir", "-p", "/tmp", "/etc", "/data"]',
            'RUN ["/bin/chmod", "1777", "/tmp"]',
            'RUN ["/bin/sh", "-c", "echo root:x:0:0::/root:/bin/sh > /etc/passwd; '
            'echo nobody:x:65534:65534::/:/bin/sh >> /etc/passwd; echo root:x:0: > /etc/group"]',
        ]
        for i, (target, source) in enumerate(sorted(wanted.items())):
            name = f"f{i}"
            if source.is_dir():
                shutil.copytree(source, ctx_path / name, symlinks=False)
            else:
                shutil.copy(source, ctx_path / name)
            lines.append(f"COPY {name} {target}")
        lines += [*extra, f"LABEL {TEST_LABEL}=1"]
        (ctx_path / "Dockerfile").write_text("\n".join(lines) + "\n")
        for chunk in api.build(path=ctx, tag=tag, rm=True, forcerm=True, decode=True):
            if "error" in chunk:
                raise ImageBuildError(f"building {tag}: {chunk['error'].strip()}")
    return tag


def remove_labelled(api: docker.APIClient, label: str) -> None:
    """Force-remove every container, network and volume carrying `label` (KEY=VALUE)."""
    for c in api.containers(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(c["Id"], force=True, v=True)
    for n in api.networks(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            api.remove_network(n["Id"])
    for v in api.volumes(filters={"label": label}).get("Volumes") or []:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_volume(v["Name"], force=True)


class CountingClient:
    """A real low-level client whose HTTP requests are recorded (method, path)."""

    def __init__(self, timeout: int = 120) -> None:
        self.api = docker.from_env(timeout=timeout).api
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.api.hooks["response"].append(self._record)

    def _record(self, response: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append((response.request.method, response.request.path_url))

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in ("POST", "DELETE", "PUT")]


class EventRecorder:
    """Docker events matching `filters`, recorded live from the moment it is made.

    Subscribe BEFORE injecting a fault: the engine keeps only its last few hundred events
    (a busy engine overwrites them within seconds), so replaying history afterwards loses
    events. The subscription also asks for events `since` its own creation time,
    which covers the instant between the engine answering and it registering the listener.
    """

    def __init__(self, filters: dict[str, Any], *, timeout: int = 60) -> None:
        self.api = docker.from_env(timeout=timeout).api
        self.since = time.time()
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_change = time.monotonic()
        self._stream = self.api.events(since=f"{self.since:.9f}", decode=True, filters=filters)
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                with self._lock:
                    self._events.append(event)
                    if not _noise(event):
                        self._last_change = time.monotonic()
        except Exception:  # the stream was closed
            return

    def events(
        self, *, name: str | None = None, actions: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Events so far, oldest first; only those of container/object `name` and `actions`
        (an action like `health_status: healthy` matches `health_status`) when given."""
        wanted = set(actions) if actions is not None else None
        with self._lock:
            out = list(self._events)
        if name is not None:
            out = [e for e in out if actor_name(e) == name]
        if wanted is not None:
            out = [e for e in out if action(e) in wanted]
        return out

    def actions(self, *, name: str | None = None) -> list[str]:
        """The actions of `events(name=...)`, without the exec and health-check noise."""
        return [action(e) for e in self.events(name=name) if not _noise(e)]

    def quiet_for(self) -> float:
        """Seconds since the last event (exec and health-check noise aside), or since the
        recording began: an observation window can end once nothing has happened for a while."""
        with self._lock:
            return time.monotonic() - self._last_change

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.api.close()


def _noise(event: dict[str, Any]) -> bool:
    return action(event).startswith("exec_") or action(event) == "health_status"


def action(event: dict[str, Any]) -> str:
    """An event's action without its detail (`health_status: healthy` -> `health_status`)."""
    return str(event.get("Action") or event.get("status") or "").split(":")[0]


def actor_name(event: dict[str, Any]) -> str | None:
    """The name of the container, network or volume an event is about."""
    actor = event.get("Actor") or {}
    name = (actor.get("Attributes") or {}).get("name")
    if name is None and event.get("Type") == "volume":
        name = actor.get("ID")  # a volume's ID is its name
    return name
