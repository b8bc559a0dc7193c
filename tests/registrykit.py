"""A private registry for the tests: Debian's docker-registry on 127.0.0.1 behind htpasswd
(apache2-utils), a `docker login` into a DOCKER_CONFIG folder, an image pushed to it and
removed from the engine, so only a pull with those credentials brings it back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
