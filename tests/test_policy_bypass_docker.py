"""The host policy's bypasses closed (issue #11 item 2) against the real engine: a volume
binding /, compose take-over of a denied service, pid/ipc `service:X`, plan and status."""

from __future__ import annotations

import contextlib
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from tests.conftest import OWNER_LABEL, TEST_LABEL, run_cli, running_names, wait_for
from tests.test_takeover import _compose

pytestmark = pytest.mark.docker

DEADLINE_S = 60.0
SLEEP = ["sleep", "100000"]


def _policy(tmp_path: Path, text: str = "allow: []\n") -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n" + text)
    return path


def test_volume_binding_root_is_denied_and_allowed_read_only_by_the_policy(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[[dict[str, Any]], Path],
) -> None:
    """`driver_opts: {type: none, o: bind, device: /}`: validate exits 2, plan exits 1 naming
    it (not "in sync"), apply exits 1 and creates no container of it, status says `denied
    (host_path)`; a policy allowing / read-only lets the `:ro` mount through, and the container
    then sees the host's / read-only."""
    base = {"image": busybox_image, "init": True, "command": SLEEP}
    doc = {
        "services": {"good": dict(base), "bad": {**base, "volumes": ["rootfs:/host"]}},
        "volumes": {"rootfs": {"driver_opts": {"type": "none", "o": "bind", "device": "/"}}},
    }
    path = write_state(doc)
    pol = _policy(tmp_path)
    lock = ["--lock-dir", str(tmp_path)]
    valid = run_cli("validate", str(path), "--policy", str(pol))
    assert valid.returncode == 2, valid.stdout + valid.stderr
    assert "services.bad.volumes: bind mount of / (read-write; reaches /)" in valid.stderr

    applied = run_cli("apply", str(path), "--policy", str(pol), *lock, "--timeout", "60")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert running_names(api, project) == [f"{project}-good-1"]
    assert not api.containers(all=True, filters={"name": f"{project}-bad-1"})

    planned = run_cli("plan", str(path), "--policy", str(pol), *lock)
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "in sync" not in planned.stdout
    assert "service bad is denied by the host policy (rule host_path)" in planned.stdout

    status = run_cli("status", str(path), "--policy", str(pol), *lock)
    assert status.returncode == 0, status.stderr
    bad_row = next(line for line in status.stdout.splitlines() if line.startswith("bad "))
    assert bad_row.endswith("denied (host_path)") and "missing" not in status.stdout

    doc["services"]["bad"]["volumes"] = ["rootfs:/host:ro"]
    path = write_state(doc)
    pol = _policy(tmp_path, "allow:\n  - {rule: host_path, services: [bad], paths: [/]}\n")
    applied = run_cli("apply", str(path), "--policy", str(pol), *lock, "--timeout", "60")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    mounts = api.inspect_container(f"{project}-bad-1")["Mounts"]
    assert [(m["Destination"], m["RW"]) for m in mounts] == [("/host", False)]
    exec_id = api.exec_create(
        f"{project}-bad-1", ["sh", "-c", "test -d /host/etc && touch /host/x"]
    )
    out = api.exec_start(exec_id).decode()
    assert api.exec_inspect(exec_id)["ExitCode"] != 0 and "Read-only file system" in out


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="apt-get install docker-compose")
def test_take_over_never_creates_nor_touches_a_denied_service(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """compose runs `web` and `bad`; the file makes `bad` privileged. `apply
    --take-over-compose` replaces compose's web, leaves compose's bad running as it was and
    creates no `bad` of ours; it exits 1 (a denied service is a problem)."""
    labels = yaml.safe_dump({TEST_LABEL: "1", OWNER_LABEL: project}, default_flow_style=True)
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    (compose_dir / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: {busybox_image}
                command: ["sleep", "100000"]
                labels: {labels.strip()}
              bad:
                image: {busybox_image}
                command: ["sleep", "100000"]
                labels: {labels.strip()}
            networks:
              default:
                labels: {labels.strip()}
            """
        )
    )
    svc = {"image": busybox_image, "command": SLEEP, "labels": {TEST_LABEL: "1"}}
    svc["labels"][OWNER_LABEL] = project
    state = tmp_path / "etc" / "state.yaml"
    state.parent.mkdir()
    state.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "project": project,
                "services": {"web": svc, "bad": {**svc, "privileged": True}},
            }
        )
    )
    try:
        assert _compose(compose_dir, project, "up", "-d").returncode == 0
        compose_label = f"com.docker.compose.project={project}"
        theirs = {
            c["Names"][0].lstrip("/"): c["Id"]
            for c in api.containers(filters={"label": compose_label})
        }
        assert set(theirs) == {f"{project}_web_1", f"{project}_bad_1"}
        taken = run_cli(
            "apply",
            str(state),
            "--take-over-compose",
            "--policy",
            str(_policy(tmp_path)),
            "--lock-dir",
            str(tmp_path),
            "--timeout",
            "120",
        )
        assert taken.returncode == 1, taken.stdout + taken.stderr
        assert "compose containers of services the host policy denies, left alone" in taken.stdout
        left = {
            c["Names"][0].lstrip("/"): c["Id"]
            for c in api.containers(filters={"label": compose_label})
        }
        assert left == {f"{project}_bad_1": theirs[f"{project}_bad_1"]}  # running, untouched
        ours = {
            c["Names"][0].lstrip("/")
            for c in api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
        }
        assert ours == {f"{project}-web-1"}
    finally:
        for c in api.containers(all=True, filters={"label": f"{OWNER_LABEL}={project}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(c["Id"], force=True)
        _compose(compose_dir, project, "down")


def test_pid_and_ipc_of_a_service_join_its_first_replica(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[[dict[str, Any]], Path],
) -> None:
    """`pid: service:x` and `ipc: service:x` (x `ipc: shareable`) are created joined to
    x's first replica, as compose does: y sees x's processes."""
    base = {"image": busybox_image, "init": True}
    path = write_state(
        {
            "services": {
                "y": {**base, "command": SLEEP, "pid": "service:x", "ipc": "service:x"},
                "x": {**base, "command": ["sleep", "100001"], "ipc": "shareable"},
            }
        }
    )
    applied = run_cli("apply", str(path), "--lock-dir", str(tmp_path), "--timeout", "60")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    x = api.inspect_container(f"{project}-x-1")
    y = api.inspect_container(f"{project}-y-1")
    assert y["HostConfig"]["PidMode"] in (f"container:{project}-x-1", f"container:{x['Id']}")
    assert y["HostConfig"]["IpcMode"] in (f"container:{project}-x-1", f"container:{x['Id']}")

    def sees_x() -> bool:
        exec_id = api.exec_create(f"{project}-y-1", ["ps"])
        return "100001" in api.exec_start(exec_id).decode()

    wait_for(sees_x, DEADLINE_S, what="y to see x's sleep in its pid namespace")
