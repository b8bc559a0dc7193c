"""A compose project as a user keeps it, applied on the real engine: an included project
with its own .env (its value reaches the container), an override file's `!reset`, and a
`build.dockerfile_inline` (built from its text; an edit rebuilds)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker
import pytest

from reconciler.config import loader
from reconciler.runtime.settle import apply
from reconciler.targets.base import Settings
from reconciler.targets.host.adapter import HostTarget
from tests.conftest import OWNER_LABEL, TEST_LABEL

pytestmark = pytest.mark.docker


def test_an_included_projects_env_reaches_the_container(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DB_PASS", "COMPOSE_PROFILES"):
        monkeypatch.delenv(name, raising=False)
    labels = f"labels: {{{TEST_LABEL}: '1', {OWNER_LABEL}: {project}}}"
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / ".env").write_text("DB_PASS=from-db-env\n")
    (tmp_path / "db" / "compose.yaml").write_text(
        "services:\n  db:\n"
        f"    image: {busybox_image}\n    command: [sleep, '600']\n    {labels}\n"
        "    environment: {PASS: '${DB_PASS:-default}', ROLE: db}\n"
    )
    (tmp_path / "compose.yaml").write_text(
        f"name: {project}\ninclude: [db/compose.yaml]\n"
        f"services:\n  web:\n    image: {busybox_image}\n    command: [sleep, '600']\n"
        f"    {labels}\n    environment: {{DEBUG: '0', TRACE: '1'}}\n"
    )
    (tmp_path / "compose.override.yaml").write_text(
        "services:\n  web:\n    environment:\n      DEBUG: '1'\n      TRACE: !reset\n"
    )
    target = HostTarget(api, loader.load(tmp_path / "compose.yaml"), Settings())
    result = apply(target, timeout_s=120)
    assert result.ok, [(r.key, r.error) for r in result.results if r.error]
    db = api.inspect_container(f"{project}-db-1")["Config"]["Env"]
    web = api.inspect_container(f"{project}-web-1")["Config"]["Env"]
    assert "PASS=from-db-env" in db and "ROLE=db" in db
    assert "DEBUG=1" in web and not any(e.startswith("TRACE=") for e in web)


def test_a_dockerfile_inline_is_built_and_an_edit_rebuilds(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose's `build.dockerfile_inline` (the corpus' most common key reconciler lacked):
    the image is built from the text (the context's own Dockerfile ignored), and a changed
    text is a new build and a new container."""
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch-not-this\n")
    (tmp_path / "app" / "hello.txt").write_text("from the context\n")
    image = f"{project}-inline:1"

    def write(greeting: str) -> Path:
        inline = f"FROM {busybox_image}\\nCOPY hello.txt /hello\\nLABEL greeting={greeting}\\n"
        path = tmp_path / "compose.yaml"
        path.write_text(
            f"name: {project}\nservices:\n  web:\n    image: {image}\n"
            f'    build: {{context: ./app, dockerfile_inline: "{inline}"}}\n'
            f"    command: [sleep, '600']\n"
            f"    labels: {{{TEST_LABEL}: '1', {OWNER_LABEL}: {project}}}\n"
        )
        return path

    try:
        for greeting in ("one", "two"):
            target = HostTarget(api, loader.load(write(greeting)), Settings())
            result = apply(target, timeout_s=120)
            assert result.ok, [(r.key, r.error) for r in result.results if r.error]
            info = api.inspect_image(image)
            assert info["Config"]["Labels"]["greeting"] == greeting
            container = api.inspect_container(f"{project}-web-1")
            assert container["Image"] == info["Id"]  # the new build is the one running
        exec_id = api.exec_create(f"{project}-web-1", ["cat", "/hello"])
        assert api.exec_start(exec_id).decode().strip() == "from the context"
    finally:
        for c in api.containers(all=True, filters={"label": f"{OWNER_LABEL}={project}"}):
            api.remove_container(c["Id"], force=True)
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(image, force=True)
