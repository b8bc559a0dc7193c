"""The HTTP endpoints under slow and hostile clients; TLS and basic auth (issue: security)."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from reconciler.config import web_config
from reconciler.errors import DesiredStateError
from reconciler.ops.http import serve
from tests.conftest import free_port, wait_for

OK = lambda: (True, "ok")  # noqa: E731


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("sec_test_things", "A counter.", registry=r).inc()
    return r


def _get(url: str, headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _threads() -> int:
    return threading.active_count()


def test_half_open_connections_keep_threads_bounded(registry: CollectorRegistry) -> None:
    """100 clients that send half a request: at most max_connections threads serve them at
    any time, the others are closed at accept (or wait in the kernel's backlog); all are gone
    after their timeouts and a scrape answers again."""
    port = free_port()
    # Slots held 5 s: long enough that, however slowly this machine runs, the other 92
    # arrive while all 8 are taken.
    server = serve(("127.0.0.1", port), registry, OK, OK, timeout=5.0, max_connections=8)
    try:
        base = _threads()
        socks = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        peak = 0
        for _ in range(20):
            time.sleep(0.1)
            peak = max(peak, _threads() - base)
        assert peak <= 8 + 1, peak  # the slots, and the one deadline thread
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/metrics") == 200, 60, what="a scrape again")
        wait_for(lambda: _threads() - base <= 1, 60, what="the threads to end")
        assert server.refused > 0  # type: ignore[attr-defined]
        for s in socks:
            s.close()
    finally:
        server.shutdown()


def test_trickling_client_is_cut_at_the_deadline(registry: CollectorRegistry) -> None:
    """A client sending one byte per 0.5 s (under the socket timeout) is cut off at the
    whole-connection deadline."""
    port = free_port()
    server = serve(("127.0.0.1", port), registry, OK, OK, timeout=5.0, deadline=2.0)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        cut = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 60:
            try:
                s.sendall(bytes([byte]))
                time.sleep(0.5)
            except OSError:
                cut = True
                break
            if time.monotonic() - start > 20:
                break
        if not cut:  # the peer closed: a read sees EOF
            s.settimeout(5)
            cut = s.recv(1) == b""
        assert cut
        s.close()
    finally:
        server.shutdown()


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    yield cert, key


def test_web_config_tls_and_basic_auth(
    registry: CollectorRegistry, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """exporter-toolkit's format: TLS with the given cert, basic auth against a bcrypt hash;
    plain HTTP and wrong passwords get nothing."""
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prom: '{hashed}'\n"
    )
    web = web_config.load(cfg)
    assert web.cert_file == tls_files[0] and "s3cret" not in repr(web)
    port = free_port()
    server = serve(("127.0.0.1", port), registry, OK, OK, web=web)
    try:
        ctx = ssl.create_default_context(cafile=str(tls_files[0]))
        url = f"https://127.0.0.1:{port}/metrics"

        def auth(user: str, password: str) -> dict[str, str]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}

        assert _get(url, auth("prom", "s3cret"), ctx) == 200
        assert _get(url, auth("prom", "s3cret"), ctx) == 200  # remembered
        assert _get(url, auth("prom", "wrong"), ctx) == 401
        assert _get(url, auth("other", "s3cret"), ctx) == 401
        assert _get(url, None, ctx) == 401
        assert _get(f"http://127.0.0.1:{port}/metrics") == 0  # no plain HTTP
    finally:
        server.shutdown()


def test_web_config_errors(tmp_path: Path) -> None:
    """A plain-text password or an unknown key is refused with the file's line."""
    cfg = tmp_path / "web.yml"
    cfg.write_text("basic_auth_users:\n  prom: plain\n")
    with pytest.raises(DesiredStateError, match="must be a bcrypt hash"):
        web_config.load(cfg)
    cfg.write_text("tls_server_config:\n  cert: x\n")
    with pytest.raises(DesiredStateError, match=r"web\.yml:2"):
        web_config.load(cfg)


def test_shutdown_finishes_its_stop_instead_of_timing_out(registry: CollectorRegistry) -> None:
    """The endpoints' shutdown (at SIGTERM, once per --listen address) completes its stop
    coroutine: it stopped the loop from inside that coroutine, never got its result, and
    waited out its 10 s timeout per address."""
    server = serve(("127.0.0.1", free_port()), registry, lambda: (True, "ok"), lambda: (True, "ok"))
    server.shutdown()
    assert server.stopped is not None and server.stopped.done()
    assert server.stopped.exception() is None
