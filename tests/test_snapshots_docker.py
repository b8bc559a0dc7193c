"""Volume snapshots on the real engine: a "migrating" version rewrites its volume and fails its
healthcheck; the rollback brings the old data back and the old version is healthy again;
`snapshots` lists, `restore` by hand works, a volume past max_size is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import run_cli, wait_for
from tests.enginekit import build_scratch_image

pytestmark = pytest.mark.docker

# v1 writes its marker once; it is healthy only on data it can read (marker v1). v2 "migrates"
# the volume (marker v2 and a new file) and then fails its healthcheck.
APP = {
    "1": "[ -f /data/marker ] || echo v1 > /data/marker; trap 'exit 0' TERM; sleep 100000 & wait",
    "2": "echo v2 > /data/marker; echo new > /data/migrated; trap 'exit 0' TERM; "
    "sleep 100000 & wait",
    "3": "trap 'exit 0' TERM; sleep 100000 & wait",
}
HEALTH = {"1": "grep -q v1 /data/marker", "2": "false", "3": "true"}


@pytest.fixture
def images(api: docker.APIClient, busybox_image: str, project: str) -> Iterator[dict[str, str]]:
    """Three versions of a scratch image (busybox-static), removed afterwards."""
    tags = {v: f"{project}-app:{v}" for v in ("1", "2", "3")}
    try:
        for v, tag in tags.items():
            build_scratch_image(api, tag, extra=[f"ENV APP_VERSION={v}"])
        yield tags
    finally:
        for tag in tags.values():
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(tag, force=True)


def doc(images: dict[str, str], version: str, snapshots: dict[str, Any]) -> dict[str, Any]:
    volume = images["1"].split("-app:")[0] + "-data"  # the project's: names are global
    return {
        "volumes": {volume: {}},
        "services": {
            "app": {
                "image": images[version],
                "command": ["sh", "-c", APP[version]],
                "volumes": [f"{volume}:/data"],
                "healthcheck": {
                    "test": ["CMD-SHELL", HEALTH[version]],
                    "interval": "1s",
                    "retries": 2,
                },
                "stop_grace_period": "2s",
                "drain_period": "0s",
                "deploy": {"update_config": {"monitor": "1s"}},
                "x-reconciler": {"snapshots": snapshots},
            }
        },
    }


def app(api: docker.APIClient, project: str) -> dict[str, Any]:
    found = api.containers(
        all=True,
        filters={"label": [f"io.reconciler.project={project}", "io.reconciler.service=app"]},
    )
    assert len(found) == 1, found
    return dict(api.inspect_container(found[0]["Id"]))


def sh(api: docker.APIClient, container: str, command: str) -> str:
    exec_id = api.exec_create(container, ["sh", "-c", command])["Id"]
    return str(api.exec_start(exec_id).decode().strip())


def healthy(api: docker.APIClient, project: str, version: str) -> bool:
    try:
        c = app(api, project)
    except AssertionError:
        return False
    env = c["Config"]["Env"] or []
    health = (c["State"].get("Health") or {}).get("Status")
    return f"APP_VERSION={version}" in env and health == "healthy"


def test_rollback_brings_the_data_back(
    api: docker.APIClient,
    images: dict[str, str],
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    state = tmp_path / "state"
    common = ("--lock-dir", str(tmp_path), "--state-dir", str(state))
    keep = {"keep": 2, "max_size": "10m", "min_free": "1m"}

    # v1 runs and writes its marker.
    path = write_state(doc(images, "1", keep))
    first = run_cli("apply", str(path), *common)
    assert first.returncode == 0, first.stdout + first.stderr
    wait_for(lambda: healthy(api, project, "1"), 60, what="v1 healthy")
    old_id = app(api, project)["Id"]
    sh(api, old_id, "echo kept > /data/kept; chown 65534:65534 /data/kept; chmod 640 /data/kept")

    # v2 migrates the volume and fails: rolled back, the data restored before v1 starts.
    write_state(doc(images, "2", keep))
    second = run_cli("apply", str(path), *common, timeout=240)
    out = second.stdout + second.stderr
    assert "rolled back" in out, out
    assert "volume snapshot taken" in out and "rollback: volumes restored" in out, out
    wait_for(lambda: healthy(api, project, "1"), 90, what="v1 healthy after the rollback")
    c = app(api, project)["Id"]
    assert sh(api, c, "cat /data/marker") == "v1"
    assert sh(api, c, "cat /data/kept; stat -c '%u:%g %a' /data/kept") == "kept\n65534:65534 640"
    assert sh(api, c, "ls /data/migrated 2>/dev/null || echo absent") == "absent"

    # The snapshot is listed, its file is 0600 in a 0700 folder, its checksum indexed.
    listed = run_cli("snapshots", "app", "-f", str(path), *common)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = [line for line in listed.stdout.splitlines() if f"{project}-data" in line]
    assert len(rows) == 1, listed.stdout
    ident = rows[0].split()[-1]
    index = json.loads((state / f"{project}.snapshots.json").read_text())
    (entry,) = index["app"]
    assert entry["id"] == ident and len(entry["sha256"]) == 64 and entry["size"] > 0
    folder = state / f"{project}.snapshots"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / entry["file"]).stat().st_mode & 0o777 == 0o600

    # A restore by hand: the volume is changed, then put back (the service stopped for it).
    sh(api, c, "echo scribbled > /data/marker; echo junk > /data/junk")
    restored = run_cli("restore", "app", ident[:8], "-f", str(path), *common)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    wait_for(lambda: healthy(api, project, "1"), 60, what="v1 healthy after restore")
    c = app(api, project)["Id"]
    assert sh(api, c, "cat /data/marker; ls /data/junk 2>/dev/null || echo absent") == "v1\nabsent"

    # Past max_size: the snapshot is skipped with a warning, the rollout goes on (v3 healthy).
    sh(api, c, "dd if=/dev/zero of=/data/big bs=1024 count=2048 2>/dev/null")
    small = {**keep, "max_size": "1m"}
    write_state(doc(images, "3", small))
    third = run_cli("apply", str(path), *common, timeout=240)
    out = third.stdout + third.stderr
    assert third.returncode == 0, out
    assert "volume snapshot skipped" in out and "max_size" in out, out
    wait_for(lambda: healthy(api, project, "3"), 60, what="v3 healthy")
    index = json.loads((state / f"{project}.snapshots.json").read_text())
    assert len(index["app"]) == 1  # nothing new was kept

    # A restore that cannot be done (another container mounts the volume) leaves the service
    # stopped and held, loudly; a restore by hand, once it is gone, brings it back.
    volume = f"{project}-data"
    foreign = api.create_container(
        images["1"],
        ["true"],
        labels={"io.reconciler.test": "1"},
        host_config=api.create_host_config(binds=[f"{volume}:/x:ro"]),
    )["Id"]
    try:
        write_state(doc(images, "2", keep))
        fourth = run_cli("apply", str(path), *common, "--timeout", "15", timeout=240)
        out = fourth.stdout + fourth.stderr
        assert fourth.returncode != 0 and "rollback restore failed" in out, out
        assert "held stopped" in out, out
        assert not app(api, project)["State"]["Running"]
        listed = run_cli("snapshots", "app", "-f", str(path), *common)
        assert "held stopped: app" in listed.stdout, listed.stdout
        newest = listed.stdout.splitlines()[-2].split()[-1]
    finally:
        api.remove_container(foreign, force=True)
    restored = run_cli("restore", "app", newest, "-f", str(path), *common)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    wait_for(lambda: healthy(api, project, "3"), 60, what="v3 healthy after restore")
    c = app(api, project)["Id"]
    assert sh(api, c, "cat /data/marker; ls /data/migrated 2>/dev/null || echo absent") == (
        "v1\nabsent"
    )
    assert "held stopped" not in run_cli("snapshots", "-f", str(path), *common).stdout

    # Swarm keeps no snapshots: refused clearly.
    refused = run_cli("snapshots", "-f", str(path), "--target", "swarm", *common)
    assert refused.returncode == 2 and "host-only" in refused.stderr, refused.stderr


def test_several_replicas_on_one_volume(
    api: docker.APIClient,
    images: dict[str, str],
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    """Two replicas share the volume: one snapshot (read from the first stopped replica, the
    other paused for the copy); the rollback restores the old data and both replicas run the
    old version again, healthy."""
    state = tmp_path / "state"
    common = ("--lock-dir", str(tmp_path), "--state-dir", str(state))

    def two(version: str) -> dict[str, Any]:
        d = doc(images, version, {})
        d["services"]["app"]["replicas"] = 2
        return d

    path = write_state(two("1"))
    first = run_cli("apply", str(path), *common)
    assert first.returncode == 0, first.stdout + first.stderr
    write_state(two("2"))
    second = run_cli("apply", str(path), *common, timeout=240)
    out = second.stdout + second.stderr
    assert "volume snapshot taken" in out and "rollback: volumes restored" in out, out
    taken = [json.loads(line) for line in out.splitlines() if "volume snapshot taken" in line]
    assert len(taken) == 1  # once per rollout

    def both_v1() -> bool:
        found = api.containers(
            all=True,
            filters={"label": [f"io.reconciler.project={project}", "io.reconciler.service=app"]},
        )
        infos = [api.inspect_container(c["Id"]) for c in found]
        return len(infos) == 2 and all(
            "APP_VERSION=1" in (i["Config"]["Env"] or [])
            and (i["State"].get("Health") or {}).get("Status") == "healthy"
            for i in infos
        )

    wait_for(both_v1, 90, what="both replicas v1 and healthy")
    found = api.containers(filters={"label": f"io.reconciler.project={project}"})
    assert sh(api, found[0]["Id"], "cat /data/marker; ls /data/migrated 2>/dev/null || echo -") == (
        "v1\n-"
    )
