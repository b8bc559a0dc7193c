"""What both engine adapters share: the connection, the error mapping, transfer deadlines.

Called by the host engine (`engine.host`), the Swarm engine (`engine.swarm`) and the CLI.
SDK errors are mapped onto ours: connection errors mean the engine is down, a read timeout
that it is slow, 5xx is transient, 409 on a name is a conflict with a foreign container.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.constants import MINIMUM_DOCKER_API_VERSION

from reconciler.core.desired import LABEL_MANAGED, LABEL_PROJECT
from reconciler.errors import ActionFailed, EngineSlow, EngineUnavailable, NameConflict

FALLBACK_API_VERSION = "1.41"  # when the engine is down at start there is nothing to negotiate
PROGRESS_EVERY_S = 5.0  # a transfer under way reports this often


def connect(
    timeout: float = 30.0, version: str | None = None, *, lazy: bool = False
) -> docker.APIClient:
    """A low-level client from the environment (DOCKER_HOST and friends).

    Without `version` the client takes the engine's own API version, as docker-py's `auto`:
    asked at once (one `/version` call), or with `lazy` read from the first answer's
    `API-Version` header (no call of its own). Either way an unreachable engine is an
    EngineUnavailable saying "cannot reach the Docker engine".
    """
    try:
        if lazy and version is None:
            return _LazyDockerClient.from_env(timeout=timeout).api
        return docker.from_env(timeout=timeout, version=version).api
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(f"cannot reach the Docker engine: {exc}") from exc


class LazyVersionClient(docker.APIClient):
    """An APIClient whose API version is that of the engine's first answer.

    Until then requests go unversioned (the engine serves them at its own version, the one
    `/version` would name). An engine that does not serve a path unversioned (a 404 without
    `API-Version`) is asked its version and the request sent again; a request that cannot
    reach the engine asks too, so an engine that is down fails as `connect()` says it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._known: str | None = None
        self._asking = False
        kwargs["version"] = MINIMUM_DOCKER_API_VERSION  # skips docker-py's negotiation
        super().__init__(*args, **kwargs)
        self._known = None

    @property  # type: ignore[override]
    def _version(self) -> str:
        if self._known is None:
            self._known = self._negotiate()
        return self._known

    @_version.setter
    def _version(self, value: str) -> None:
        self._known = value

    def _negotiate(self) -> str:
        self._asking = True
        try:
            return str(self._retrieve_server_version())
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"cannot reach the Docker engine: {exc}") from exc
        finally:
            self._asking = False

    def _url(self, pathfmt: str, *args: Any, **kwargs: Any) -> str:
        if self._known is None and kwargs.get("versioned_api", True):
            kwargs["versioned_api"] = False
        return str(super()._url(pathfmt, *args, **kwargs))

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if self._known is not None or self._asking:
            return super().request(method, url, *args, **kwargs)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.RequestException:
            _ = self._version  # still unreachable: EngineUnavailable, as connect() would say
            raise
        version = response.headers.get("Api-Version")
        if version:
            self._known = self._known or version
            return response
        if response.status_code != 404:
            return response
        response.close()  # no such unversioned path: ask, and send it again versioned
        path = str(url).removeprefix(self.base_url)
        return super().request(method, f"{self.base_url}/v{self._version}{path}", *args, **kwargs)


class _LazyDockerClient(docker.DockerClient):
    """`docker.from_env()` (environment and contexts alike) with a LazyVersionClient."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = LazyVersionClient(*args, **kwargs)


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Map SDK exceptions onto ours, keeping Docker's own text."""
    try:
        yield
    except requests.exceptions.ReadTimeout as exc:  # the engine is there, but slow: retry
        raise EngineSlow(f"{what}: Docker did not answer in time") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError):
            text = exc.explanation or str(exc)
            if exc.status_code == 409 and "is already in use by container" in str(text):
                raise NameConflict(f"{what}: {text}") from exc
            raise ActionFailed(f"{what}: {text}", transient=exc.is_server_error()) from exc
        if isinstance(exc, docker.errors.BuildError | docker.errors.ImageNotFound):
            raise ActionFailed(f"{what}: {exc}") from exc
        raise EngineUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc


def owned(labels: dict[str, str] | None, project: str) -> bool:
    """Whether an object's labels say reconciler manages it for `project`."""
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_PROJECT) == project


class Deadline:
    """A transfer's time limit: closes its HTTP response when the time is up or on cancel."""

    def __init__(self, timeout_s: float) -> None:
        self.expired = self.cancelled = False
        self._response: Any = None
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        self._last_progress = time.monotonic()

    def attach(self, response: Any) -> None:
        self._response = response

    def _expire(self) -> None:
        self.expired = True
        self._close_response()

    def cancel(self) -> None:
        self.cancelled = True
        self._close_response()

    def check(self) -> None:
        if self.expired or self.cancelled:
            raise requests.exceptions.ConnectionError("transfer cut off")

    def due_for_progress(self) -> bool:
        self.check()
        if time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return False
        self._last_progress = time.monotonic()
        return True

    def _close_response(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()

    def close(self) -> None:
        self._timer.cancel()
        self._close_response()


class Transfers:
    """The transfers (pulls, builds) under way, each under its Deadline; all can be cut off."""

    def __init__(self) -> None:
        self._live: set[Deadline] = set()

    @contextmanager
    def deadline(self, timeout_s: float, what: str) -> Iterator[Deadline]:
        """A Deadline for one transfer: cut off or cancelled, it fails as a transient
        ActionFailed naming `what`."""
        watch = Deadline(timeout_s)
        self._live.add(watch)
        try:
            yield watch
        except (requests.exceptions.RequestException, docker.errors.DockerException, OSError):
            if watch.expired or watch.cancelled:
                why = "cancelled" if watch.cancelled else f"timed out after {timeout_s:g}s"
                raise ActionFailed(f"{what}: {why}", transient=True) from None
            raise
        finally:
            watch.close()
            self._live.discard(watch)

    def cancel_all(self) -> None:
        """Cut off every transfer under way (shutdown)."""
        for watch in list(self._live):
            watch.cancel()
