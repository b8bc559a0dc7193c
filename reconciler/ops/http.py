"""HTTP endpoints: /metrics, /healthz (the loop is alive), /readyz (able to converge)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, str]]

# Seconds a connection may sit idle on a read or a write before it is closed: a client that
# sends half a request, or reads no answer, does not keep its thread and socket forever.
CONNECTION_TIMEOUT = 5.0


def serve(
    address: tuple[str, int],
    registry: CollectorRegistry,
    healthz: Check,
    readyz: Check,
    *,
    timeout: float = CONNECTION_TIMEOUT,
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; call `.shutdown()` to stop.

    Each connection gets its own daemon thread and a socket `timeout`, so a slow or stuck
    client neither blocks the other scrapes nor keeps the process from exiting.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
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
    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
