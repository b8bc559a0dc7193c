"""A registry's v2 API, read with the credentials a pull uses: the tags of a repository, and a
tag's digest and creation time (the image config's `created`). Plain `requests` (docker-py's
own HTTP client) with the registry's Basic or Bearer-token challenge answered from the login
docker-py resolves (`docker login`'s file); python-dxf was tried and refuses any login over
plain HTTP, which Docker allows for loopback and insecure registries.
Called by the image followers of both targets (through their engines).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import platform
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import docker
import docker.auth
import docker.errors
import requests
from docker.utils import config as docker_config
from docker.utils import parse_repository_tag
from requests.utils import parse_dict_header

from reconciler.core.image_policy import Published
from reconciler.errors import ActionFailed

TIMEOUT_S = 30.0
MAX_TAG_PAGES = 50
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
MANIFESTS = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


class _Repository:
    """One repository of one registry, with its login; answers 401 challenges once each."""

    def __init__(self, base: str, name: str, creds: dict[str, Any]) -> None:
        self.base, self.name = base, name
        user = creds.get("username") or creds.get("Username")
        password = creds.get("password") or creds.get("Password")
        self.login = (str(user), str(password)) if user and password else None
        self.session = requests.Session()

    def get(self, path: str, accept: str = "") -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}/v2/{self.name}/{path}"
        headers = {"Accept": accept} if accept else {}
        r = self.session.get(url, headers=headers, timeout=TIMEOUT_S)
        if r.status_code == 401 and self._answer(r.headers.get("WWW-Authenticate", "")):
            r = self.session.get(url, headers=headers, timeout=TIMEOUT_S)
        r.raise_for_status()
        return r

    def _answer(self, challenge: str) -> bool:
        """Set the session's credentials for `challenge`; False when there is nothing to try."""
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic" and self.login:
            self.session.auth = self.login
            return True
        if scheme.lower() != "bearer":
            return False
        info = parse_dict_header(params)
        query = {"service": info.get("service") or "", "scope": info.get("scope") or
                 f"repository:{self.name}:pull"}  # fmt: skip
        r = requests.get(str(info.get("realm")), params=query, auth=self.login, timeout=TIMEOUT_S)
        r.raise_for_status()
        body = r.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self.session.headers["Authorization"] = f"Bearer {token}"
        return True


class Registry:
    """Reads one engine's registries; `auth_configs` gives docker-py's current logins and
    `secure(host)` whether the engine talks TLS to that registry."""

    def __init__(
        self, auth_configs: Callable[[], dict[str, Any]], secure: Callable[[str], bool]
    ) -> None:
        self._auth_configs = auth_configs
        self._secure = secure

    def _repository(self, image: str) -> tuple[_Repository, str]:
        repo, _ = parse_repository_tag(image.partition("@")[0])
        index, name = docker.auth.resolve_repository_name(repo)
        host = index
        if index in DOCKER_HUB:
            host = "registry-1.docker.io"
            name = name if "/" in name else f"library/{name}"
        creds = docker.auth.resolve_authconfig(self._auth_configs(), index) or {}
        scheme = "https" if self._secure(host) else "http"
        return _Repository(f"{scheme}://{host}", name, creds), f"{host}/{name}"

    def tags(self, image: str) -> list[str]:
        """Every tag of `image`'s repository (following the registry's pages)."""
        client, where = self._repository(image)
        out: list[str] = []
        with _errors(f"list the tags of {where}"):
            r = client.get("tags/list?n=1000")
            for _ in range(MAX_TAG_PAGES):
                out += [str(t) for t in r.json().get("tags") or []]
                nxt = r.links.get("next", {}).get("url")
                if not nxt:
                    break
                r = client.get(nxt if nxt.startswith("http") else client.base + nxt)
        return out

    def published(self, image: str, tag: str) -> Published:
        """`tag` of `image`'s repository: its digest (as a pull pins it) and creation time."""
        client, where = self._repository(image)
        with _errors(f"read {where}:{tag}"):
            r = client.get(f"manifests/{tag}", MANIFESTS)
            digest = r.headers.get("Docker-Content-Digest") or (
                "sha256:" + hashlib.sha256(r.content).hexdigest()
            )
            manifest = r.json()
            if "manifests" in manifest:  # a list / index: this machine's platform
                mine = [
                    m
                    for m in manifest["manifests"]
                    if (m.get("platform") or {}).get("os") == "linux"
                    and (m.get("platform") or {}).get("architecture") == _arch()
                ]
                if not mine:
                    return Published(tag, digest, None)
                manifest = client.get(f"manifests/{mine[0]['digest']}", MANIFESTS).json()
            config = (manifest.get("config") or {}).get("digest")
            created = (
                _epoch(client.get(f"blobs/{config}").json().get("created")) if config else None
            )
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


class Credentials:
    """docker-py reads $DOCKER_CONFIG/config.json (or ~/.docker/config.json) once: `reload`
    reads it again when it changed (a `docker login` since)."""

    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self._stamp: tuple[str, int, int] | None = None  # the file last read

    def reload(self) -> None:
        path = docker_config.find_config_file()
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        stamp = (path, st.st_mtime_ns, st.st_size) if path and st else None
        if stamp != self._stamp:
            self.api.reload_config()
            self._stamp = stamp


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
