"""A registry's v2 API, read with the credentials a pull uses: the tags of a repository, and a
tag's digest and creation time (the image config's `created`). Through python-dxf (basic and
token auth, manifest lists); the login is the one docker-py resolves from `docker login`'s file.
Called by the image followers of both targets (through their engines).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import platform
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import docker
import docker.auth
import requests
from docker.utils import parse_repository_tag
from dxf import DXF, DXFBase

from reconciler.core.image_policy import Published
from reconciler.errors import ActionFailed

TIMEOUT_S = 30.0
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


class Registry:
    """Reads one engine's registries; `auth_configs` gives docker-py's current logins and
    `secure(host)` whether the engine talks TLS to that registry."""

    def __init__(
        self, auth_configs: Callable[[], dict[str, Any]], secure: Callable[[str], bool]
    ) -> None:
        self._auth_configs = auth_configs
        self._secure = secure

    def _client(self, image: str) -> tuple[DXF, str]:
        repo, _ = parse_repository_tag(image.partition("@")[0])
        index, name = docker.auth.resolve_repository_name(repo)
        host = index
        if index in DOCKER_HUB:
            host = "registry-1.docker.io"
            name = name if "/" in name else f"library/{name}"
        creds = docker.auth.resolve_authconfig(self._auth_configs(), index) or {}

        def login(dxf: DXFBase, response: requests.Response) -> None:
            dxf.authenticate(
                creds.get("username") or creds.get("Username"),
                creds.get("password") or creds.get("Password"),
                response=response,
            )

        client = DXF(host, name, auth=login, insecure=not self._secure(host), timeout=TIMEOUT_S)
        return client, f"{host}/{name}"

    def tags(self, image: str) -> list[str]:
        """Every tag of `image`'s repository."""
        client, where = self._client(image)
        with _errors(f"list the tags of {where}"):
            return [str(t) for t in client.list_aliases()]

    def published(self, image: str, tag: str) -> Published:
        """`tag` of `image`'s repository: its digest (as a pull pins it) and creation time."""
        client, where = self._client(image)
        with _errors(f"read {where}:{tag}"):
            digest = str(client.get_digest(tag))
            manifest = json.loads(str(client.get_manifest(tag, platform=f"linux/{_arch()}")))
            config = (manifest.get("config") or {}).get("digest")
            created = None
            if config:
                chunks = cast(Iterable[bytes], client.pull_blob(config))
                blob = b"".join(chunks)
                created = _epoch(json.loads(blob).get("created"))
        return Published(tag, digest, created)


def _epoch(text: Any) -> float | None:
    """RFC 3339 (Go writes nanoseconds) -> epoch seconds; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """A registry's failure as ActionFailed, with its own reason (never the credentials)."""
    try:
        yield
    except requests.HTTPError as exc:
        r = exc.response
        reason = f"{r.status_code} {r.reason}" if r is not None else str(exc)[:200]
        raise ActionFailed(f"{what}: {reason}", transient=True) from exc
    except (requests.RequestException, ValueError, KeyError) as exc:
        reason = type(exc).__name__ + (f": {str(exc)[:200]}" if str(exc) else "")
        raise ActionFailed(f"{what}: {reason}", transient=True) from exc


def is_loopback(host: str) -> bool:
    """127.0.0.1:5000, localhost:5000, [::1]:5000: registries Docker reaches over plain HTTP."""
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or "]" in host else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def for_api(api: docker.APIClient, reload_credentials: Callable[[], None]) -> Registry:
    """The registries as `api`'s engine reaches them: its logins (read again when `docker
    login` changed them) and its insecure registries (loopback ones always are)."""

    def auth_configs() -> dict[str, Any]:
        reload_credentials()
        return dict(api._auth_configs or {})

    insecure: set[str] = set()
    looked: list[bool] = []

    def secure(host: str) -> bool:
        if is_loopback(host):
            return False
        if not looked:
            looked.append(True)
            try:
                configs = (api.info().get("RegistryConfig") or {}).get("IndexConfigs") or {}
            except (docker.errors.APIError, requests.RequestException):
                configs = {}
            insecure.update(h for h, c in configs.items() if c.get("Secure") is False)
        return host not in insecure

    return Registry(auth_configs, secure)
