"""Update policies on a real one-node swarm: a registry with htpasswd holding versions of a
small image, a service following `^1.0` (the newest in range rolled out by Swarm), a
never-healthy 1.2.0 rolled back by Swarm's update_config and held, and the lock file."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from reconciler.engine.swarm import spec as swarm_file
from reconciler.targets.base import RESYNC, Settings
from reconciler.targets.swarm.adapter import SwarmTarget
from tests.registrykit import Publisher
from tests.swarmkit import one_node_swarm, remove_project
from tests.test_image_policy_docker import versions  # noqa: F401 (a fixture)

pytestmark = pytest.mark.docker


@pytest.fixture
def sproject(api: docker.APIClient) -> Iterator[str]:
    with one_node_swarm(api):
        name = f"s{uuid.uuid4().hex[:8]}"
        try:
            yield name
        finally:
            remove_project(api, name)


def test_swarm_follows_a_range_and_holds_a_version_swarm_rolled_back(
    versions: Publisher,  # noqa: F811
    api: docker.APIClient,
    sproject: str,
    tmp_path: Path,
) -> None:
    v = versions
    for tag in ("1.0.0", "1.1.0", "2.0.0"):
        v.push(tag)
    doc = {
        "version": 1,
        "project": sproject,
        "services": {
            "app": {
                "image": f"{v.repo}:1.0.0",
                "pull_policy": "every_1s",
                "x-reconciler": {"update": {"semver": "^1.0"}},
                "command": ["sleep", "100000"],
                "labels": {"io.reconciler.test": "1"},
                "stop_grace_period": "1s",
                "healthcheck": {
                    "test": ["CMD", "test", "-f", "/healthy"],
                    "interval": "1s",
                    "retries": 1,
                },
                "deploy": {"update_config": {"monitor": "3s", "failure_action": "rollback"}},
            }
        },
    }
    path = tmp_path / "desired_state.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    state = tmp_path / "state"
    target = SwarmTarget(api, swarm_file.load(path), Settings(state_dir=state, daemon=True))
    full = f"{sproject}_app"

    def runs(tag: str) -> bool:
        target.reconcile(RESYNC, "interval")
        spec = api.inspect_service(full)
        image = str(spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
        state_now = (spec.get("UpdateStatus") or {}).get("State", "")
        done = ("", "completed", "rollback_completed")
        return image.endswith(f":{tag}@{v.digests[tag]}") and state_now in done

    def until(check: object, what: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(1.0)

    until(lambda: runs("1.1.0"), "1.1.0 to run (2.0.0 is outside ^1.0)")
    v.push("1.2.0", healthy=False)

    def held() -> bool:
        target.reconcile(RESYNC, "interval")
        records = json.loads((state / f"{sproject}.image-policy.json").read_text())
        return records["app"]["held"] == [f"1.2.0@{v.digests['1.2.0']}"]

    until(held, "Swarm to roll 1.2.0 back and the policy to hold it")
    until(lambda: runs("1.1.0"), "1.1.0 to run again")
    for _ in range(3):  # held: not pushed again
        target.reconcile(RESYNC, "interval")
        time.sleep(1.1)
    assert runs("1.1.0")
    lock = json.loads((state / f"{sproject}.images.lock.json").read_text())
    assert lock["images"] == {"app": f"{v.repo}:1.1.0@{v.digests['1.1.0']}"}
    skipped = target.status_data()["images"]["app"]["skipped"]  # type: ignore[index]
    assert any("2.0.0 (range" in s for s in skipped) and any("(held" in s for s in skipped)
    status_file = tmp_path / "status.json"  # as the daemon leaves it for `status`
    status_file.write_text(json.dumps({"updated_at": time.time(), **target.status_data()}))
    text = target.status(status_file, {})
    assert "follows" in text and "^1.0: running 1.1.0@" in text, text
    assert "newest published 2.0.0" in text and f"held 1.2.0@{v.digests['1.2.0'][:19]}" in text
    notes = target.plan().notes  # plan says which version the policy holds, as on one host
    assert any(f"1.2.0@{v.digests['1.2.0'][:19]} held (its rollout failed" in n for n in notes)
