"""A slow image pull on 127.0.0.1: a private registry behind a rate-limited TCP proxy.

Debian's `docker-registry` (distribution 2.8) serves a filesystem store on 127.0.0.1;
images are pushed to it directly and removed from the engine, then pulled through a
small TCP proxy whose bytes going back to the engine pass one token bucket (~1 MB/s).
The engine treats 127.0.0.0/8 as an insecure registry, so no daemon setting is needed.

    with SlowRegistry(Path(tmp), rate=1_000_000) as reg:
        ref = reg.push_random_image(api, "base:1", "bench-x-slow", "t0", 30_000_000)
        # `docker pull ref` now takes ~30 s

Every object it makes is named by the caller (a unique prefix) and is removed by `close`
(images: `remove_images`).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import docker
import docker.errors

CHUNK = 16 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TokenBucket:
    """`rate` bytes per second, bursts up to `burst` bytes; `take` blocks until allowed."""

    def __init__(self, rate: float, burst: int = 4 * CHUNK) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= n:
                    self._tokens -= n
                    return
                wait = (n - self._tokens) / self.rate
            time.sleep(wait)


class RateLimitedProxy:
    """TCP proxy 127.0.0.1:port -> 127.0.0.1:upstream; the replies share one token bucket."""

    def __init__(self, upstream_port: int, rate: float) -> None:
        self.upstream_port = upstream_port
        self.bucket = TokenBucket(rate)
        self.bytes_down = 0  # bytes sent back to clients, in total
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="slowpull-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._socks |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if limited:
                    self.bucket.take(len(data))
                dst.sendall(data)
                if limited:
                    with self._lock:
                        self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class SlowRegistry:
    """`docker-registry serve` on 127.0.0.1 (storage in `workdir`) plus a slow proxy to it."""

    def __init__(self, workdir: Path, rate: float = 1_000_000) -> None:
        self.workdir = workdir
        self.rate = rate
        self.port = 0
        self.proxy: RateLimitedProxy | None = None
        self.pushed: list[str] = []  # refs as the engine pulls them (through the proxy)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SlowRegistry:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        binary = ensure_registry_installed()
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            "health:\n  storagedriver:\n    enabled: false\n"
        )
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready()
        self.proxy = RateLimitedProxy(self.port, self.rate)

    def _wait_ready(self, timeout: float = 15) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_tail()}")
            try:
                with opener.open(f"http://127.0.0.1:{self.port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"docker-registry not ready: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "registry.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def push_random_image(
        self, api: docker.APIClient, base: str, name: str, tag: str, size: int
    ) -> str:
        """Build `base` + one layer of `size` random bytes, push it, remove it from the
        engine; return the reference that pulls it through the proxy."""
        assert self.proxy is not None
        direct = f"127.0.0.1:{self.port}/{name}"
        dockerfile = (
            f"FROM {base}\n"
            f"RUN head -c {size} /dev/urandom > /random-{name}-{tag}.bin\n"  # unique: no cache
        )
        for chunk in api.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=f"{direct}:{tag}",
            rm=True,
            forcerm=True,
            nocache=True,
            decode=True,
        ):
            if "error" in chunk:
                raise RuntimeError(f"building {direct}:{tag}: {chunk['error'].strip()}")
        try:
            for chunk in api.push(direct, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise RuntimeError(f"pushing {direct}:{tag}: {chunk['error'].strip()}")
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_image(f"{direct}:{tag}", force=True)
        ref = f"127.0.0.1:{self.proxy.port}/{name}:{tag}"
        self.pushed.append(ref)
        return ref

    def remove_images(self, api: docker.APIClient) -> None:
        """Remove what the engine pulled of the pushed images (call after their containers)."""
        for ref in self.pushed:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_image(ref, force=True)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def ensure_registry_installed() -> str:
    """The `docker-registry` binary; installs Debian's package when it is missing."""
    found = shutil.which("docker-registry")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "docker-registry"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = shutil.which("docker-registry")
    if not found:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    return found


def _demo() -> None:
    """Measure one slow pull: `python -m bench.slowpull`."""
    import tempfile
    import uuid

    from tests.enginekit import build_scratch_image

    api = docker.from_env(timeout=300).api
    base = build_scratch_image(api, "reconciler-bench-busybox:1")
    name = f"bench-{uuid.uuid4().hex[:8]}-slow"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        reg = SlowRegistry(Path(tmp))
        with reg:
            ref = reg.push_random_image(api, base, name, "t0", 30_000_000)
            t0 = time.monotonic()
            try:
                api.pull(ref.rsplit(":", 1)[0], tag="t0")
                print(f"pulled {ref} in {time.monotonic() - t0:.1f} s")
            finally:
                reg.remove_images(api)


if __name__ == "__main__":
    _demo()
