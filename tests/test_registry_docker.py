"""A private registry for real: Debian's docker-registry on 127.0.0.1 behind htpasswd, the
credentials written by `docker login` into a temporary DOCKER_CONFIG, and the daemon (with that
DOCKER_CONFIG) pulling from it. Bad credentials, an unknown tag or an unknown registry fail that
service alone, retried with back-off; credentials never show in the log, `status`, `plan` or
/metrics.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import DaemonProcess, free_port, run_cli, wait_for
from tests.registrykit import DEADLINE_S, Registry, login, pushed_image, running_registry

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as r:
        yield r


@pytest.fixture
def private_image(
    api: docker.APIClient, busybox_image: str, registry: Registry, tmp_path: Path
) -> Iterator[str]:
    """A unique image in the registry and not on the engine: only a pull with credentials
    brings it back."""
    with pushed_image(api, busybox_image, registry, tmp_path) as image:
        yield image


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DOCKER_CONFIG for the daemon (and the CLI runs) of this test."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def services(busybox_image: str, **images: str) -> dict[str, Any]:
    sleep = {"init": True, "command": ["sleep", "100000"]}
    doc = {"local": {"image": busybox_image, **sleep}}
    doc.update({name: {"image": image, **sleep} for name, image in images.items()})
    return {"services": doc}


def running(api: docker.APIClient, name: str) -> bool:
    try:
        return bool(api.inspect_container(name)["State"]["Running"])
    except docker.errors.NotFound:
        return False


def pulls(d: DaemonProcess, service: str, result: str) -> list[dict[str, Any]]:
    return [
        e
        for e in d.events("action")
        if e.get("service") == service and e.get("action") == "pull" and e.get("result") == result
    ]


def assert_no_credentials(registry: Registry, config: Path, *texts: str) -> None:
    for text in texts:
        for secret in registry.secrets(config):
            assert secret not in text, f"a credential leaked: ...{secret[:4]}..."


def outputs(d: DaemonProcess, path: Path) -> list[str]:
    """The daemon's log, `reconciler status` and `reconciler plan` (both ways), /metrics."""
    status, plan = run_cli("status", str(path)), run_cli("plan", str(path))
    return [
        d.log_path.read_text(),
        status.stdout + status.stderr,
        plan.stdout + plan.stderr,
        d.get("/metrics")[1],
    ]


def test_a_private_image_is_pulled_with_the_docker_login_credentials(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    registry: Registry,
    private_image: str,
    docker_config: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """After `docker login` into DOCKER_CONFIG, the daemon pulls the private image and runs
    the service; the credentials appear nowhere in what it says."""
    login(docker_config, registry)
    path = write_state(services(busybox_image, private=private_image))
    d = daemon(path)
    wait_for(lambda: running(api, f"{project}-private-1"), DEADLINE_S, what="private to run")
    assert running(api, f"{project}-local-1")
    assert pulls(d, "private", "success")
    assert api.inspect_image(private_image)
    assert_no_credentials(registry, docker_config, *outputs(d, path))


def test_bad_credentials_an_unknown_tag_or_registry_fail_that_service_alone(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    registry: Registry,
    private_image: str,
    docker_config: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A wrong password: the pull fails with the registry's reason for that service, retried
    with growing back-off, while the other service converges; a `docker login` while the daemon
    runs is used by the next retry (the config file is read again). An unknown tag and a
    registry nobody answers for stay clear errors of their own services. No credential in the
    log, `status`, `plan` or /metrics."""
    wrong = base64.b64encode(f"{registry.user}:not-{registry.password}".encode()).decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {registry.address: {"auth": wrong}}})
    )
    ghost = private_image.rsplit(":", 1)[0] + ":no-such-tag"
    nowhere = f"127.0.0.1:{free_port()}/reconciler-test/app:1"  # nothing listens there
    path = write_state(services(busybox_image, private=private_image, ghost=ghost, nowhere=nowhere))
    d = daemon(path)
    wait_for(lambda: running(api, f"{project}-local-1"), DEADLINE_S, what="local to run")

    def backoff() -> list[float]:
        """The distinct delays the daemon set before retrying `private`."""
        delays = [p["requeue_s"] for p in d.passes() if p.get("key") == "service:private"]
        return sorted({s for s in delays if s and s >= 1.0})

    # Retried later and later (1 s, 2 s, ...), not in a hot loop.
    wait_for(lambda: len(backoff()) >= 2, DEADLINE_S, what="two growing back-offs")
    failures = pulls(d, "private", "error")
    assert len(failures) >= 3, failures
    for failure in failures:
        assert private_image in failure["error"], failure
        assert "unauthorized" in failure["error"] or "authentication" in failure["error"], failure
    assert not running(api, f"{project}-private-1")
    assert running(api, f"{project}-local-1")  # converged meanwhile

    login(docker_config, registry)  # rewrites config.json with the right password
    wait_for(lambda: running(api, f"{project}-private-1"), DEADLINE_S, what="private to run")
    assert pulls(d, "private", "success")

    # With the right login, the unknown tag fails for what it is (was: unauthorized).
    unknown = wait_for(
        lambda: [f for f in pulls(d, "ghost", "error") if "manifest unknown" in f["error"]],
        DEADLINE_S,
        what="the unknown tag's own error",
    )
    assert all(ghost in f["error"] for f in unknown), unknown
    assert not running(api, f"{project}-ghost-1")
    refused = pulls(d, "nowhere", "error")
    assert refused and all(nowhere in f["error"] for f in refused), refused
    assert any("connection refused" in f["error"] for f in refused), refused
    assert not running(api, f"{project}-nowhere-1")
    assert running(api, f"{project}-local-1") and running(api, f"{project}-private-1")
    texts = outputs(d, path)
    assert_no_credentials(registry, docker_config, *texts)
    assert not any(wrong in text for text in texts)  # nor the wrong ones
