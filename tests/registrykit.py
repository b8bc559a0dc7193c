"""A private registry for the tests: Debian's docker-registry on 127.0.0.1 behind htpasswd
(apache2-utils), a `docker login` into a DOCKER_CONFIG folder, an image pushed to it and
removed from the engine, so only a pull with those credentials brings it back.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import pytest

from tests.conftest import REQUIRE_DOCKER, free_port, wait_for

DEADLINE_S = 120.0


def need(ok: object, message: str) -> None:
    """Skip without a piece the test needs, or fail in CI (RECONCILER_REQUIRE_DOCKER=1)."""
    if not ok:
        if REQUIRE_DOCKER:
            pytest.fail(message)
        pytest.skip(message)


@dataclass(frozen=True)
class Registry:
    """A running registry and the one user its htpasswd knows."""

    address: str  # 127.0.0.1:PORT
    user: str
    password: str

    def secrets(self, config: Path) -> list[str]:
        """Every form the credentials could leak in: the password, the `auth` field of
        config.json, and the X-Registry-Auth header docker-py makes of it."""
        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        found = docker.auth.resolve_authconfig(
            docker.auth.load_config(str(config / "config.json")), self.address
        )
        assert found and found.get("password") == self.password, "not the right login"
        return [self.password, auth, docker.auth.encode_header(found).decode()]


@contextlib.contextmanager
def running_registry() -> Iterator[Registry]:
    """docker-registry on 127.0.0.1:<free port> with htpasswd auth; stopped afterwards."""
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    need(binary, "docker-registry is not installed (apt-get install docker-registry)")
    need(htpasswd, "htpasswd is not installed (apt-get install apache2-utils)")
    assert binary and htpasswd
    user, password = f"u{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="reconciler-registry-") as tmp:
        folder = Path(tmp)
        subprocess.run(
            [htpasswd, "-Bbc", str(folder / "htpasswd"), user, password],
            check=True,
            capture_output=True,
        )
        port = free_port()
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
            "http": {"addr": f"127.0.0.1:{port}"},
            "auth": {"htpasswd": {"realm": "reconciler-test", "path": str(folder / "htpasswd")}},
        }
        (folder / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        log = (folder / "registry.log").open("w")
        proc = subprocess.Popen(
            [binary, "serve", str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
        try:

            def answers() -> bool:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                except urllib.error.HTTPError as exc:
                    return exc.code == 401  # up, and asking for credentials
                except OSError:
                    assert proc.poll() is None, (folder / "registry.log").read_text()
                    return False
                return False

            wait_for(answers, 30, what="the registry to answer")
            yield Registry(f"127.0.0.1:{port}", user, password)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def docker_cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    need(shutil.which("docker"), "the docker command is not installed")
    return subprocess.run(
        ["docker", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


def login(config: Path, registry: Registry, password: str | None = None) -> None:
    proc = docker_cli(
        config,
        "login",
        registry.address,
        "--username",
        registry.user,
        "--password-stdin",
        stdin=password or registry.password,
    )
    assert proc.returncode == 0, proc.stderr


@contextlib.contextmanager
def pushed_image(
    api: docker.APIClient, source: str, registry: Registry, workdir: Path
) -> Iterator[str]:
    """`source` pushed under a unique name to the registry (with a login of its own in
    `workdir`), then removed from the engine; removed from the engine again afterwards."""
    image = f"{registry.address}/reconciler-test-{uuid.uuid4().hex[:10]}/app:1"
    pusher = workdir / "pusher-config"
    pusher.mkdir(parents=True, exist_ok=True)
    login(pusher, registry)
    api.tag(source, image.rsplit(":", 1)[0], "1")
    try:
        pushed = docker_cli(pusher, "push", image)
        assert pushed.returncode == 0, pushed.stderr
        api.remove_image(image)  # the tag only: the layers stay under `source`
        with pytest.raises(docker.errors.ImageNotFound):
            api.inspect_image(image)
        yield image
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(image)


class Publisher:
    """Builds small distinct images (a label; `/healthy` in the good ones) and pushes each under
    a tag, as a release pipeline on another machine would: through the name localhost:PORT
    and a login of its own, so the daemon's engine only learns of them by pulling."""

    def __init__(self, api: docker.APIClient, registry: Registry, busybox: str, work: Path):
        self.api, self.busybox = api, busybox
        port = registry.address.rsplit(":", 1)[1]
        self.path = f"reconciler-test-{uuid.uuid4().hex[:10]}/app"
        self.repo = f"{registry.address}/{self.path}"  # what the daemon pulls from
        self._remote = f"localhost:{port}/{self.path}"
        self.config = work / "pusher-config"
        self.config.mkdir()
        login(self.config, replace(registry, address=f"localhost:{port}"))
        self.ids: list[str] = []  # every image built (by id: removing it removes its pulls)
        self.digests: dict[str, str] = {}  # tag -> the digest last pushed under it
        self._sources: list[str] = []

    def push(self, tag: str, healthy: bool = True) -> str:
        """Build a new image, push it as `tag`; its digest."""
        marker = uuid.uuid4().hex
        lines = [f"FROM {self.busybox}", f"LABEL version={tag} marker={marker}"]
        if healthy:
            lines.append('RUN ["/bin/touch", "/healthy"]')
        source = f"reconciler-test-publish-src:{marker[:12]}"
        self._sources.append(source)
        for chunk in self.api.build(
            fileobj=io.BytesIO("\n".join(lines).encode()), tag=source, rm=True, decode=True
        ):
            assert "error" not in chunk, chunk
        self.ids.append(self.api.inspect_image(source)["Id"])
        self.api.tag(source, self._remote, tag)
        pushed = docker_cli(self.config, "push", f"{self._remote}:{tag}")
        assert pushed.returncode == 0, pushed.stderr
        digest = str(self.api.inspect_image(source)["RepoDigests"][0].partition("@")[2])
        # Untag only (`source` keeps the image): deleting it while the daemon pulls the same
        # image races in the engine, which can delete what the pull just tagged.
        self.api.remove_image(f"{self._remote}:{tag}")
        self.digests[tag] = digest
        return digest

    def untag_sources(self) -> None:
        """Leave the pushed images with the names the daemon pulled them by only."""
        for source in self._sources:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_image(source)

    def cleanup(self) -> None:
        for ref in self.ids:  # by id, forced: the sources and every name they were pulled by
            with contextlib.suppress(docker.errors.APIError):
                self.api.remove_image(ref, force=True)


def pulled_service(image: str, **keys: Any) -> dict[str, Any]:
    """A file with one service `app` of a Publisher's image, looked up every 2 s, healthy when
    its image has /healthy, quick to drain, stop and judge (a rollout monitored for 1 s)."""
    return {
        "services": {
            "app": {
                "image": image,
                "pull_policy": "every_2s",
                **keys,
                "init": True,
                "command": ["sleep", "100000"],
                "healthcheck": {
                    "test": ["CMD", "test", "-f", "/healthy"],
                    "interval": "1s",
                    "retries": 2,
                },
                "drain_period": "0s",
                "stop_grace_period": "1s",
                "deploy": {"update_config": {"monitor": "1s"}},
            }
        }
    }
