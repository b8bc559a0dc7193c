"""HTTP endpoints: /metrics, /healthz (the loop is alive), /readyz (able to converge).

Slow or hostile clients stay cheap: each connection has a socket timeout and a whole-request
deadline, and at most `max_connections` are served at once (more are closed at accept). With
a web config (config.web_config, the exporter-toolkit format): TLS, and basic auth checked
against bcrypt hashes. The daemon calls `serve`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.config.web_config import WebConfig

Check = Callable[[], tuple[bool, str]]

# Seconds a connection may sit idle on a read or a write before it is closed: a client that
# sends half a request, or reads no answer, does not keep its thread and socket forever.
CONNECTION_TIMEOUT = 5.0
# Seconds a whole connection may last, however it trickles its bytes (slowloris); checked by
# one thread a few times a second.
REQUEST_DEADLINE = 15.0
MAX_CONNECTIONS = 32  # served at once; Prometheus needs one


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int,
        deadline: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.deadline = deadline
        self.tls = tls
        self.refused = 0  # connections closed because all slots were taken
        self._open: dict[int, tuple[float, socket.socket]] = {}  # thread id -> (deadline, socket)
        self._open_lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap, name="http-deadline", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        """One thread cuts every connection past its deadline (no timer per connection)."""
        while True:
            time.sleep(min(0.5, self.deadline / 4))
            now = time.monotonic()
            with self._open_lock:
                late = [sock for end, sock in self._open.values() if end <= now]
            for sock in late:
                _abort(sock)

    def _track(self, sock: socket.socket | None) -> None:
        me = threading.get_ident()
        with self._open_lock:
            if sock is None:
                self._open.pop(me, None)
            else:
                end = self._open.get(me, (time.monotonic() + self.deadline, sock))[0]
                self._open[me] = (end, sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._track(request)
        try:
            if self.tls is not None:  # the handshake here, not in the accepting thread
                request.settimeout(CONNECTION_TIMEOUT)
                try:
                    request = self.tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    self.shutdown_request(request)
                    return
                self._track(request)  # the deadline now shuts the TLS socket
            super().process_request_thread(request, client_address)
        finally:
            self._track(None)
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (or was cut off at its deadline) is not news


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def serve(
    address: tuple[str, int],
    registry: CollectorRegistry,
    healthz: Check,
    readyz: Check,
    *,
    timeout: float = CONNECTION_TIMEOUT,
    deadline: float = REQUEST_DEADLINE,
    max_connections: int = MAX_CONNECTIONS,
    web: WebConfig | None = None,
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; call `.shutdown()` to stop.

    Each connection gets its own daemon thread (at most `max_connections`), a socket
    `timeout` and a `deadline` for the whole connection, so slow or stuck clients neither
    block the other scrapes nor pile up threads, nor keep the process from exiting.
    """
    web = web or WebConfig()
    auth = _BasicAuth(web.users) if web.users else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if auth is not None and not auth.check(self.headers.get("Authorization", "")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="reconciler"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (healthz if path == "/healthz" else readyz)()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    Handler.timeout = timeout  # StreamRequestHandler.setup() applies it to each connection
    tls = None
    if web.cert_file is not None and web.key_file is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(web.cert_file, web.key_file)
    server = _Server(address, Handler, max_connections=max_connections, deadline=deadline, tls=tls)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class _BasicAuth:
    """Basic auth against bcrypt hashes; a success is remembered (bcrypt is slow on purpose,
    and Prometheus sends the same credentials on every scrape)."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str) -> bool:
        import bcrypt

        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return False
        key = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        with self._lock:
            if any(hmac.compare_digest(key, k) for k in self._ok):
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._ok) < 64:
                    self._ok.add(key)
        return ok
