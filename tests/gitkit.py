"""Git on 127.0.0.1 for the tests: bare repositories served over smart HTTP by git's own
`git http-backend` (behind a small threading HTTP server that can be stopped and started
again on the same port), and a working clone that commits and pushes.
"""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import threading
from pathlib import Path

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **GIT_ENV, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


class GitHTTPServer:
    """`git http-backend` as CGI for every repository under `root`; stop() and start()
    again keep the port."""

    def __init__(self, root: Path, port: int = 0, token: str | None = None) -> None:
        self.root = root
        self.token = token  # when set: HTTP basic auth with any user and this password
        self.seen_auth: list[str] = []
        self.port = port
        self._server: http.server.ThreadingHTTPServer | None = None
        self.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        root, outer = self.root, self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "")
                outer.seen_auth.append(given)
                if not given.startswith("Basic "):
                    return False
                _, _, password = base64.b64decode(given[6:]).decode().partition(":")
                return password == outer.token

            def do_GET(self) -> None:
                self._cgi()

            def do_POST(self) -> None:
                self._cgi()

            def _cgi(self) -> None:
                if outer.token is not None and not self._authorized():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    **os.environ,
                    "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(length),
                    "REMOTE_USER": "test",
                    "REMOTE_ADDR": "127.0.0.1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run(
                    [HTTP_BACKEND], input=body, capture_output=True, env=env, timeout=60
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Repo:
    """A bare repository `ROOT/NAME.git` and a working clone that pushes to it."""

    def __init__(self, root: Path, name: str = "stack", branch: str = "main") -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        self.branch = branch
        self.remote = str(self.bare)  # where pushes go (a test may push over HTTP)
        git(root, "init", "--quiet", "--bare", "-b", branch, str(self.bare))
        git(self.bare, "config", "http.receivepack", "true")
        git(root, "init", "--quiet", "-b", branch, str(self.work))

    def commit(
        self, files: dict[str, str | bytes], message: str, *sign: str, force: bool = False
    ) -> str:
        """Write `files`, commit them (`sign`: extra `git commit` options) and push."""
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message, *sign)
        self.push(force)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, force: bool = False) -> None:
        flags = ["--force"] if force else []
        git(self.work, "push", "--quiet", *flags, self.remote, f"HEAD:{self.branch}")
