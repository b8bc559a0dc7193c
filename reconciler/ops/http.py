"""HTTP endpoints: /metrics, /healthz (the loop is alive), /readyz (able to converge).

One asyncio event loop in its own thread serves every connection: an idle or slow client
costs a socket and a few KiB, never a thread. A request's head (request line and headers)
must arrive within `header_timeout`, no read or write may wait past `timeout`, no connection
may last past `deadline`. At most `max_connections` connections are open, `per_address` from
one client address; past either cap the oldest connection still waiting for its request head
is closed to make room, so a complete request (a scrape) always gets in and a slow one never
holds a place. With a web config (config.web_config, the exporter-toolkit format): TLS, and
basic auth checked against bcrypt hashes in a small pool (bcrypt is slow on purpose). The
daemon calls `serve`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import email.utils
import hashlib
import hmac
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.config.web_config import WebConfig

Check = Callable[[], tuple[bool, str]]
# (method, target, headers with lowercase names, body) -> (status, content type, body, extra)
Response = tuple[int, str, bytes, tuple[tuple[str, str], ...]]
App = Callable[[str, str, dict[str, str], bytes], Awaitable[Response]]
# A POST route (the git webhook): (headers, body) -> (status, body); it must not block.
Hook = Callable[[Mapping[str, str], bytes], tuple[int, bytes]]
MAX_BODY_BYTES = 1024 * 1024  # a POST's body (a forge's push event is a few KiB)

# Seconds a read or a write may wait for the client: a client that reads no answer does not
# keep its socket forever.
CONNECTION_TIMEOUT = 5.0
# Seconds the request head may take in all, however it trickles its bytes (slowloris).
HEADER_TIMEOUT = 5.0
# Seconds a whole connection may last.
REQUEST_DEADLINE = 15.0
MAX_CONNECTIONS = 256  # open at once (each costs a file descriptor and a few KiB)
MAX_PER_ADDRESS = 32  # from one client address; Prometheus needs one
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
# Connections the kernel holds until accepted (capped by net.core.somaxconn): a burst of
# connects must not drop a scrape's SYN (the client would retry only a second later).
BACKLOG = 1024
AUTH_THREADS = 2  # bcrypt checks at once
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    """The request head is larger than MAX_HEAD_BYTES."""


@dataclass(eq=False)
class _Conn:
    """One accepted connection; `waiting` until its request head is complete."""

    peer: str
    sock: socket.socket
    task: asyncio.Task[None] | None = None
    transport: asyncio.Transport | None = None
    waiting: bool = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        else:
            self.sock.close()
        if self.task is not None:
            self.task.cancel()


class Server:
    """What `serve` returns: `server_address`, `refused` (connections closed to make room
    or refused for lack of it) and `shutdown()`."""

    def __init__(
        self,
        sock: socket.socket,
        app: App,
        *,
        timeout: float,
        header_timeout: float,
        deadline: float,
        max_connections: int,
        per_address: int,
        tls: ssl.SSLContext | None,
        pool: concurrent.futures.Executor | None = None,
    ) -> None:
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self.refused = 0
        self._sock, self._app, self._tls, self._pool = sock, app, tls, pool
        self.timeout, self.header_timeout, self.deadline = timeout, header_timeout, deadline
        self.max_connections, self.per_address = max_connections, per_address
        self._conns: dict[_Conn, None] = {}  # oldest first
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self.stopped: concurrent.futures.Future[None] | None = None  # set by shutdown()
        self._accepting: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop listening, close every connection, end the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stopped = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        with contextlib.suppress(Exception):
            self.stopped.result(10)
        # Stopped only once `_stop`'s result is delivered (a loop stopped from inside it
        # never delivers it: shutdown waited the whole 10 s).
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    server_close = shutdown

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._accepting = self._loop.create_task(self._accept())
        try:
            self._loop.run_forever()
        finally:
            self._sock.close()
            self._loop.close()

    async def _stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()
        for conn in list(self._conns):
            conn.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError:  # out of file descriptors, say: the kernel keeps the backlog
                await asyncio.sleep(0.1)
                continue
            peer = str(addr[0])
            if not self._make_room(peer):
                self.refused += 1
                sock.close()
                continue
            conn = _Conn(peer, sock)
            self._conns[conn] = None
            conn.task = loop.create_task(self._serve(conn))
            # An accept that needs no wait does not yield: let the newcomers read their
            # heads before the next one is taken (a burst must not push out a scrape).
            await asyncio.sleep(0)

    def _make_room(self, peer: str) -> bool:
        mine = [c for c in self._conns if c.peer == peer]
        if len(mine) >= self.per_address and not self._evict(mine):
            return False
        return len(self._conns) < self.max_connections or self._evict(list(self._conns))

    def _evict(self, conns: list[_Conn]) -> bool:
        """Close the oldest of `conns` still waiting for its request head."""
        victim = next((c for c in conns if c.waiting), None)
        if victim is None:
            return False
        self._conns.pop(victim, None)
        victim.close()
        self.refused += 1
        return True

    async def _serve(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.deadline):
                async with asyncio.timeout(self.header_timeout):
                    reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES, loop=loop)
                    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        conn.sock,
                        ssl=self._tls,
                        ssl_handshake_timeout=self.header_timeout if self._tls else None,
                        ssl_shutdown_timeout=self.timeout if self._tls else None,
                    )
                    conn.transport = transport
                    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                    try:
                        head, rest = await self._head(reader)
                    except _BadRequest:
                        head, rest = None, b""
                conn.waiting = False
                if head is None:
                    response: Response = 431, _TEXT, b"request head too large\n", ()
                else:
                    response = await self._respond(head, rest, reader)
                writer.write(_message(*response))
                await asyncio.wait_for(writer.drain(), self.timeout)
                writer.close()  # HTTP/1.0: one request per connection, as before
                await asyncio.wait_for(writer.wait_closed(), self.timeout)
        except (
            TimeoutError,
            ConnectionError,
            OSError,
            ssl.SSLError,
            asyncio.CancelledError,
            asyncio.IncompleteReadError,
        ):
            pass  # a client that went away, or was cut off, is not news
        finally:
            self._conns.pop(conn, None)
            if conn.transport is not None:
                conn.transport.abort()
            else:
                conn.sock.close()

    async def _head(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        """The request head and what came after it (a POST's body begins there); no read
        waits past `timeout` (the whole head: header_timeout)."""
        data = b""
        while True:
            end, gap = data.find(b"\r\n\r\n"), 4
            if end < 0 and (bare := data.find(b"\n\n")) >= 0:
                end, gap = bare, 2
            if (end if end >= 0 else len(data)) > MAX_HEAD_BYTES:
                raise _BadRequest
            if end >= 0:
                return data[:end], data[end + gap :]
            chunk = await asyncio.wait_for(reader.read(4096), self.timeout)
            if not chunk:
                raise ConnectionResetError("the client closed before its request was complete")
            data += chunk

    async def _respond(self, head: bytes, rest: bytes, reader: asyncio.StreamReader) -> Response:
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, _TEXT, b"bad request\n", ()
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                return 400, _TEXT, b"bad request\n", ()
            headers.setdefault(name.strip().lower(), value.strip())
        method, target = parts[0], parts[1]
        body = b""
        if method == "POST":
            try:
                length = int(headers.get("content-length", ""))
            except ValueError:
                return 411, _TEXT, b"a POST needs a Content-Length\n", ()
            if not 0 <= length <= MAX_BODY_BYTES:
                return 413, _TEXT, b"body too large\n", ()
            body = rest[:length]
            if len(body) < length:
                more = reader.readexactly(length - len(body))
                body += await asyncio.wait_for(more, self.timeout)
        elif method != "GET":
            return 501, _TEXT, b"only GET and POST are served\n", ()
        try:
            return await self._app(method, target, headers, body)
        except Exception:  # a check that failed: say so, keep serving
            return 500, _TEXT, b"internal error\n", ()


def _message(status: int, ctype: str, body: bytes, extra: tuple[tuple[str, str], ...]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.0 {status} {reason}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _listen(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    address: tuple[str, int],
    registry: CollectorRegistry,
    healthz: Check,
    readyz: Check,
    *,
    timeout: float = CONNECTION_TIMEOUT,
    header_timeout: float = HEADER_TIMEOUT,
    deadline: float = REQUEST_DEADLINE,
    max_connections: int = MAX_CONNECTIONS,
    per_address: int = MAX_PER_ADDRESS,
    web: WebConfig | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> Server:
    """Start serving in a daemon thread (an OSError if the address cannot be bound); call
    `.shutdown()` to stop. See the module doc for what each bound does."""
    web = web or WebConfig()
    auth = _BasicAuth(web.users) if web.users else None
    pool: concurrent.futures.ThreadPoolExecutor | None = None
    if auth is not None:
        pool = concurrent.futures.ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="http-auth")

    async def app(method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        path = target.split("?", 1)[0]
        hook = (hooks or {}).get(path)
        if hook is not None:  # signed by the forge (HMAC): no basic auth asked
            if method != "POST":
                return 405, _TEXT, b"POST only\n", (("Allow", "POST"),)
            status, text = hook(headers, body)
            return status, _TEXT, text, ()
        if method != "GET":
            return 405, _TEXT, b"GET only\n", (("Allow", "GET"),)
        if auth is not None and pool is not None:
            given = headers.get("authorization", "")
            if not auth.known(given):
                loop = asyncio.get_running_loop()
                if not await loop.run_in_executor(pool, auth.check, given):
                    return 401, _TEXT, b"", (("WWW-Authenticate", 'Basic realm="reconciler"'),)
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(registry), ()
        if path in ("/healthz", "/readyz"):
            ok, why = (healthz if path == "/healthz" else readyz)()
            return 200 if ok else 503, _TEXT, (why + "\n").encode(), ()
        return 404, _TEXT, b"not found\n", ()

    tls = None
    if web.cert_file is not None and web.key_file is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(web.cert_file, web.key_file)
    return Server(
        _listen(address),
        app,
        timeout=timeout,
        header_timeout=min(header_timeout, deadline),
        deadline=deadline,
        max_connections=max_connections,
        per_address=min(per_address, max_connections),
        tls=tls,
        pool=pool,
    )


class _BasicAuth:
    """Basic auth against bcrypt hashes; a success is remembered (bcrypt is slow on purpose,
    and Prometheus sends the same credentials on every scrape)."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def _parse(self, header: str) -> tuple[str, bytes, bytes] | None:
        """(password, its hash, the key a success is remembered by), if well formed."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return None
        return password, hashed, hashlib.sha256(hashed + b"\0" + password.encode()).digest()

    def known(self, header: str) -> bool:
        """Credentials that passed before (cheap: no bcrypt)."""
        parsed = self._parse(header)
        if parsed is None:
            return False
        with self._lock:
            return any(hmac.compare_digest(parsed[2], k) for k in self._ok)

    def check(self, header: str) -> bool:
        import bcrypt

        parsed = self._parse(header)
        if parsed is None:
            return False
        password, hashed, key = parsed
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
