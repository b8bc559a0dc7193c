"""The git webhook's check: is a POST to /hooks/git signed with our secret? GitHub's
`X-Hub-Signature-256: sha256=HMAC`, Gitea/Forgejo's `X-Gitea-Signature: HMAC` (hex), GitLab's
`X-Gitlab-Token: SECRET`; compared in constant time. ops.http calls `Webhook.handle`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from pathlib import Path

MAX_BODY_BYTES = 1024 * 1024  # GitHub caps payloads at 25 MB; a push event is a few KiB
PATH = "/hooks/git"


def signed(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """True when one of the forges' signature headers matches `body` under `secret`."""
    if not secret:
        return False
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    github = headers.get("x-hub-signature-256")
    if github is not None:
        return hmac.compare_digest(github.strip().encode(), f"sha256={mac}".encode())
    gitea = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature")
    if gitea is not None:
        return hmac.compare_digest(gitea.strip().lower().encode(), mac.encode())
    gitlab = headers.get("x-gitlab-token")
    if gitlab is not None:
        return hmac.compare_digest(gitlab.strip().encode(), secret)
    return False


def read_secret(path: Path) -> bytes:
    """The shared secret (the file's content without its final newline)."""
    return path.read_bytes().rstrip(b"\r\n")


class Webhook:
    """Accepts signed POSTs and calls `on_push` (which only enqueues: a flood of hooks is
    one fetch); counts and reports refusals through `on_refused(reason)`."""

    def __init__(
        self,
        secret_file: Path,
        on_push: Callable[[], None],
        on_refused: Callable[[str], None],
    ) -> None:
        self.secret_file = secret_file
        self.on_push, self.on_refused = on_push, on_refused

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) for one POST."""
        try:
            secret = read_secret(self.secret_file)  # read each time: a rotated secret holds
        except OSError as exc:
            self.on_refused(f"cannot read the webhook secret file: {exc.strerror}")
            return 500, b"webhook secret unavailable\n"
        if not signed(headers, body, secret):
            self.on_refused("bad or missing signature")
            return 401, b"bad signature\n"
        if headers.get("x-github-event") == "ping" or headers.get("x-gitea-event") == "ping":
            return 200, b"pong\n"
        self.on_push()
        return 202, b"fetch queued\n"
