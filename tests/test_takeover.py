"""Taking a running compose project over (`--take-over-compose`), and naming the containers of
others that hold what the file needs (plan, status)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from reconciler.config import loader
from reconciler.core.actions import (
    CreateContainer,
    RemoveContainer,
    RenameContainer,
    StartContainer,
    StopContainer,
)
from reconciler.core.observed import Observed
from reconciler.core.takeover import ForeignContainer, clashes, plan_takeover
from tests.conftest import (
    OWNER_LABEL,
    TEST_LABEL,
    DaemonProcess,
    free_port,
    run_cli,
    wait_for,
)

FILE = """
project: shop
services:
  db: {image: x, container_name: shop-db}
  web:
    image: x
    ports: ["127.0.0.1:8000:80"]
    depends_on: [db]
  api: {image: x}
"""


def _state():  # type: ignore[no-untyped-def]
    return loader.parse(FILE, source="s.yaml", base_dir=Path("/srv"))


def _order(steps: tuple, first: type, name: str, then: type, other: str) -> bool:  # type: ignore[type-arg]
    """Whether the step (then, other) waits, directly or not, on (first, name)."""
    by_key = {s.key: s for s in steps}
    target = next(s for s in steps if isinstance(s.action, first) and s.action.name == name)
    start = next(s for s in steps if isinstance(s.action, then) and s.action.name == other)
    seen, stack = set(), [start]
    while stack:
        s = stack.pop()
        if s.key == target.key:
            return True
        for k in s.after - seen:
            seen.add(k)
            if k in by_key:
                stack.append(by_key[k])
    return False


def test_takeover_creates_first_and_stops_theirs_before_ours_start_on_a_clash() -> None:
    """web (host port shared) and db (name shared): ours created, theirs stopped, ours started,
    theirs removed, ours renamed; api (nothing shared): ours start before theirs stop."""
    state = _state()
    others = (
        ForeignContainer(
            "i1",
            "shop_web_1",
            "running",
            "shop",
            "web",
            "",
            frozenset({("127.0.0.1", 8000, "tcp")}),
        ),
        ForeignContainer("i2", "shop-db", "running", "shop", "db"),
        ForeignContainer("i3", "shop_api_1", "running", "shop", "api"),
        ForeignContainer("i4", "shop_cache_1", "running", "shop", "cache"),
        ForeignContainer("i5", "other_web_1", "running", "other", "web"),
    )
    p = plan_takeover(state, Observed(), others)
    steps = p.steps
    web = state.service("web").replicas[0]
    assert _order(steps, CreateContainer, web.name, StopContainer, "shop_web_1")
    assert _order(steps, StopContainer, "shop_web_1", StartContainer, web.name)
    assert _order(steps, StartContainer, web.name, RemoveContainer, "shop_web_1")
    (db_create,) = [
        s.action
        for s in steps
        if isinstance(s.action, CreateContainer) and s.action.spec.service == "db"
    ]
    assert db_create.as_name is not None  # the name is compose's until theirs is removed
    assert _order(steps, RemoveContainer, "shop-db", RenameContainer, db_create.as_name)
    assert _order(steps, StartContainer, db_create.as_name, StartContainer, web.name)  # depends_on
    api = state.service("api").replicas[0]
    assert _order(steps, StartContainer, api.name, StopContainer, "shop_api_1")
    touched = {
        s.action.name for s in steps if isinstance(s.action, StopContainer | RemoveContainer)
    }
    assert touched == {
        "shop_web_1",
        "shop-db",
        "shop_api_1",
    }  # not cache (not in the file), not other
    assert any("left alone: shop_cache_1" in n for n in p.notes)


def test_clashes_name_the_holder_and_what_it_holds() -> None:
    """A compose container on a needed host port, a container of no project on a needed name."""
    others = (
        ForeignContainer(
            "i1", "shop_web_1", "running", "shop", "web", "", frozenset({("0.0.0.0", 8000, "tcp")})
        ),
        ForeignContainer("i2", "shop-db", "exited"),
        ForeignContainer(
            "i3", "elsewhere", "running", host_ports=frozenset({("0.0.0.0", 9000, "tcp")})
        ),
    )
    lines = clashes(_state(), others)
    assert lines == (
        "container shop-db (no project, exited) holds name shop-db (needed by shop-db)",
        "container shop_web_1 (compose project shop, running) holds host port 8000/tcp (needed "
        "by shop-web-1); --take-over-compose replaces it",
    )


# --------------------------------------------------------------------------- real engine


def _compose(folder: Path, project: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-p", project, "-f", str(folder / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=folder,
    )


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="apt-get install docker-compose")
def test_take_over_a_running_compose_project(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """Debian's docker-compose runs the project and data is written into its volume; without
    the flag plan names the clash and apply touches nothing of compose's; with it, ours replace
    compose's (one shares a host port, one a container name) and the data is still there."""
    port = free_port()
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    (compose_dir / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""\
            version: "3.7"
            services:
              web:
                image: {busybox_image}
                command: ["httpd", "-f", "-p", "80", "-h", "/data"]
                ports: ["127.0.0.1:{port}:80"]
                volumes: [data:/data]
                labels: {yaml.safe_dump(labels, default_flow_style=True).strip()}
              worker:
                image: {busybox_image}
                container_name: {project}-worker-1
                command: ["sleep", "600"]
                volumes: [data:/data]
                labels: {yaml.safe_dump(labels, default_flow_style=True).strip()}
            volumes:
              data:
                labels: {yaml.safe_dump(labels, default_flow_style=True).strip()}
            networks:
              default:
                labels: {yaml.safe_dump(labels, default_flow_style=True).strip()}
            """
        )
    )
    try:
        up = _compose(compose_dir, project, "up", "-d")
        assert up.returncode == 0, up.stderr
        theirs = {
            c["Names"][0].lstrip("/"): c["Id"]
            for c in api.containers(filters={"label": f"com.docker.compose.project={project}"})
        }
        assert set(theirs) == {f"{project}_web_1", f"{project}-worker-1"}
        exec_id = api.exec_create(f"{project}_web_1", ["sh", "-c", "echo kept > /data/f"])
        api.exec_start(exec_id)
        wait_for(lambda: _get(port, "/f") == "kept\n", what="compose's web serving the file")

        state = tmp_path / "etc" / "state.yaml"
        state.parent.mkdir()
        imported = run_cli(
            "import",
            str(compose_dir / "docker-compose.yml"),
            "--project",
            project,
            "-o",
            str(state),
        )
        assert imported.returncode == 0, imported.stderr

        planned = run_cli("plan", str(state))
        assert (
            f"container {project}_web_1 (compose project {project}, running) holds host port "
            f"{port}/tcp (needed by {project}-web-1); --take-over-compose replaces it"
        ) in planned.stdout
        assert f"container {project}-worker-1 (compose project {project}, running) holds name" in (
            planned.stdout
        )
        status = run_cli("status", str(state))
        assert f"note: container {project}_web_1 (compose project {project}" in status.stdout
        refused = run_cli("apply", str(state), "--timeout", "15")
        assert refused.returncode == 1
        still = {
            c["Names"][0].lstrip("/"): c["Id"]
            for c in api.containers(filters={"label": f"com.docker.compose.project={project}"})
        }
        assert still == theirs  # untouched, still running

        taken = run_cli("apply", str(state), "--take-over-compose", "--timeout", "120")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert not api.containers(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        ours = {
            c["Names"][0].lstrip("/")
            for c in api.containers(filters={"label": f"io.reconciler.project={project}"})
        }
        assert ours == {f"{project}-web-1", f"{project}-worker-1"}
        assert wait_for(lambda: _get(port, "/f"), what="our web serving") == "kept\n"
        assert (
            api.inspect_volume(f"{project}_data")["Labels"].get("com.docker.compose.project")
            == project
        )
        assert run_cli("plan", str(state)).returncode == 0  # in sync; no clash left
    finally:
        for c in api.containers(all=True, filters={"label": f"{OWNER_LABEL}={project}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(c["Id"], force=True)
        _compose(compose_dir, project, "down", "-v")


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="apt-get install docker-compose")
def test_run_takes_over_at_start(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """`run --take-over-compose` on the compose file itself (its project named by .env's
    COMPOSE_PROJECT_NAME, not the folder): the daemon replaces compose's container before its
    first pass and serves the data of compose's volume (`<project>_data`) on the same port."""
    port = free_port()
    labels = yaml.safe_dump({TEST_LABEL: "1", OWNER_LABEL: project}, default_flow_style=True)
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    (compose_dir / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: {busybox_image}
                command: ["httpd", "-f", "-p", "80", "-h", "/data"]
                ports: ["127.0.0.1:{port}:80"]
                volumes: [data:/data]
                labels: {labels.strip()}
            volumes:
              data:
                labels: {labels.strip()}
            networks:
              default:
                labels: {labels.strip()}
            """
        )
    )
    d: DaemonProcess | None = None
    try:
        assert _compose(compose_dir, project, "up", "-d").returncode == 0
        exec_id = api.exec_create(f"{project}_web_1", ["sh", "-c", "echo from-compose > /data/f"])
        api.exec_start(exec_id)
        (compose_dir / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
        d = daemon(compose_dir / "docker-compose.yml", interval=2.0, extra=("--take-over-compose",))
        wait_for(
            lambda: (
                not api.containers(
                    all=True, filters={"label": f"com.docker.compose.project={project}"}
                )
            ),
            timeout=60,
            what="compose's container removed",
        )
        got = wait_for(lambda: _get(port, "/f"), timeout=60, what="our web serving")
        assert got == "from-compose\n"
        assert any(e["note"].startswith("service web") for e in d.events("take over compose"))
        assert d.proc.poll() is None  # the daemon runs on
        ours = api.containers(filters={"label": f"io.reconciler.project={project}"})
        assert [c["Names"][0] for c in ours] == [f"/{project}-web-1"]
        assert [m["Name"] for m in ours[0]["Mounts"]] == [f"{project}_data"]
        assert not api.volumes(filters={"name": "^data$"})["Volumes"]  # no empty stand-in
    finally:
        if d is not None:
            d.stop()  # before removing: it would heal what is removed
        for c in api.containers(all=True, filters={"label": f"{OWNER_LABEL}={project}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(c["Id"], force=True)
        _compose(compose_dir, project, "down", "-v")
