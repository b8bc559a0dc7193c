"""Robustness fixes whose behaviour is Docker's, shown on the real engine."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import run_cli, with_test_labels


def _write(path: Path, project: str, services: dict[str, object], **literal: str) -> Path:
    """The state file; each `literal` key written in place of its placeholder, unquoted."""
    text = yaml.safe_dump(with_test_labels(project, {"services": services}), sort_keys=False)
    for placeholder, value in literal.items():
        text = text.replace(placeholder, value)
    path.write_text(text)
    return path


@pytest.mark.docker
def test_tmpfs_mode_is_octal_in_docker(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """`mode: 0o1777` and `mode: 1777` are the sticky, world-writable 1777 inside."""
    vols = [
        {"type": "tmpfs", "target": "/t", "tmpfs": {"size": "1m", "mode": "MODE_A"}},
        {"type": "tmpfs", "target": "/u", "tmpfs": {"mode": "MODE_B"}},
    ]
    web = {"image": busybox_image, "command": ["sleep", "600"], "volumes": vols}
    path = _write(tmp_path / "d.yaml", project, {"web": web}, MODE_A="0o1777", MODE_B="1777")
    done = run_cli("apply", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    name = f"{project}-web-1"
    tmpfs = api.inspect_container(name)["HostConfig"]["Tmpfs"]
    assert tmpfs == {"/t": "size=1048576,mode=1777", "/u": "mode=1777"}
    exec_id = api.exec_create(name, ["stat", "-c", "%a", "/t", "/u"])["Id"]
    assert api.exec_start(exec_id).decode().split() == ["1777", "1777"]
