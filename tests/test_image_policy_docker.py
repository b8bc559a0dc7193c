"""Image update policies for real: Debian's docker-registry on 127.0.0.1 with htpasswd, several
versions of a small busybox image pushed by the test, and the daemon following `^1.0` of it:
the newest version in the range runs (2.0.0 skipped for the range), a never-healthy 1.2.0 is
rolled back and held, 1.3.0 is taken, a cooldown and a closed window (real time) hold 1.4.0
back until the window opens; then the lock file, `apply --locked`, a stale lock refused, and
`apply` resolving the range as the daemon does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import DaemonProcess, run_cli, wait_for
from tests.registrykit import DEADLINE_S, Publisher, login, pulled_service, running_registry

pytestmark = pytest.mark.docker


@pytest.fixture
def versions(
    api: docker.APIClient, busybox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Publisher]:
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    with running_registry() as registry:
        v = Publisher(api, registry, busybox_image, tmp_path)
        login(folder, registry)  # the daemon's own login (DOCKER_CONFIG)
        try:
            yield v
        finally:
            v.cleanup()


def running_tags(api: docker.APIClient, project: str) -> list[str]:
    """`tag@digest` of each running container of the project (the pinned refs)."""
    cs = api.containers(filters={"label": f"io.reconciler.project={project}"})
    return sorted(
        str(c["Image"]).rsplit("/", 1)[1].partition(":")[2] for c in cs if c["State"] == "running"
    )


def service(v: Publisher, **update: Any) -> dict[str, Any]:
    """1.0.0 of the published image, following `^1.0` (and `update`'s other keys)."""
    return pulled_service(
        f"{v.repo}:1.0.0", **{"x-reconciler": {"update": {"semver": "^1.0", **update}}}
    )


def test_a_range_is_followed_a_bad_version_held_cooldown_window_and_the_lock_file(
    versions: Publisher,
    api: docker.APIClient,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    state_directory: Path,
) -> None:
    v = versions
    for tag in ("1.0.0", "1.1.0", "2.0.0"):
        v.push(tag)
    path = write_state(service(v))
    d = daemon(path)

    def ref(tag: str) -> str:
        return f"{tag}@{v.digests[tag]}"

    def skipped(reason: str) -> float:
        return d.metric("reconciler_image_update_skipped_total", service="app", reason=reason) or 0

    # 1. The newest version inside ^1.0 runs; 2.0.0 is skipped for the range.
    wait_for(lambda: running_tags(api, project) == [ref("1.1.0")], DEADLINE_S, what="1.1.0")
    wait_for(lambda: skipped("range") >= 1, DEADLINE_S, what="2.0.0 skipped for the range")

    # 2. A never-healthy 1.2.0: rolled back to 1.1.0 and held (in the state dir).
    v.push("1.2.0", healthy=False)
    wait_for(lambda: skipped("held") >= 1, DEADLINE_S, what="1.2.0 rolled back and held")
    wait_for(lambda: running_tags(api, project) == [ref("1.1.0")], DEADLINE_S, what="1.1.0 again")
    states = json.loads((state_directory / f"{project}.image-policy.json").read_text())
    assert states["app"]["held"] == [ref("1.2.0")]
    planned = run_cli("plan", str(path))
    assert f"1.2.0@{v.digests['1.2.0'][:19]} held (its rollout failed" in planned.stdout, planned
    started = len(d.events("rollout started"))
    looks = d.metric("reconciler_image_updates_total", service="app", result="unchanged") or 0
    wait_for(
        lambda: (
            (d.metric("reconciler_image_updates_total", service="app", result="unchanged") or 0)
            >= looks + 3
        ),
        DEADLINE_S,
        what="three more looks",
    )
    assert len(d.events("rollout started")) == started  # held: not retried

    # 3. A newer good version ends the hold.
    v.push("1.3.0")
    wait_for(lambda: running_tags(api, project) == [ref("1.3.0")], DEADLINE_S, what="1.3.0")

    # 4. Cooldown: 1.4.0 is a minute old at most, the policy wants an hour.
    loaded = len(d.events("desired state loaded"))
    write_state(service(v, cooldown="1h"))  # in force before 1.4.0 exists (else it is taken)
    wait_for(lambda: len(d.events("desired state loaded")) > loaded, DEADLINE_S, what="cooldown")
    v.push("1.4.0")
    wait_for(lambda: skipped("cooldown") >= 1, DEADLINE_S, what="1.4.0 skipped (cooldown)")
    status = run_cli("status", str(path), "--lock-dir", str(d.log_path.parent))
    out = status.stdout
    assert f"running 1.3.0@{v.digests['1.3.0'][:19]}" in out, out
    assert "newest published 2.0.0" in out and f"held 1.2.0@{v.digests['1.2.0'][:19]}" in out, out
    assert "(cooldown: published" in out, out

    # 5. A window (real time): opens at each minute for 10 s. Edit while it is closed.
    wait_for(lambda: 15 <= time.time() % 60 <= 40, 70, interval=0.5, what="a closed window")
    write_state(service(v, window={"cron": "* * * * *", "duration": "10s"}))
    wait_for(lambda: skipped("window") >= 1, DEADLINE_S, what="1.4.0 skipped (window)")
    assert running_tags(api, project) == [ref("1.3.0")]
    wait_for(lambda: running_tags(api, project) == [ref("1.4.0")], 120, what="1.4.0 in the window")
    assert [e for e in d.events("image update taken") if "1.4.0" in e.get("image", "")]
    assert d.stop() == 0

    # 6. The lock file: what ran, for this file; --locked runs it; a stale lock is refused.
    lock_file = state_directory / f"{project}.images.lock.json"
    lock = json.loads(lock_file.read_text())
    assert lock["images"] == {"app": f"{v.repo}:{ref('1.4.0')}"}
    beside = path.parent / "images.lock.json"
    beside.write_text(lock_file.read_text())
    applied = run_cli("apply", str(path), "--locked", "--lock-file", str(beside))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert running_tags(api, project) == [ref("1.4.0")]
    # An edit that asks for no other image (an environment value) keeps the lock good: the
    # replica is recreated with it, on the locked image.
    doc = service(v, window={"cron": "* * * * *", "duration": "10s"})
    doc["services"]["app"]["environment"] = {"EDITED": "1"}
    write_state(doc)
    applied = run_cli("apply", str(path), "--locked", "--lock-file", str(beside))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert running_tags(api, project) == [ref("1.4.0")]
    (running,) = api.containers(filters={"label": f"io.reconciler.project={project}"})
    assert "EDITED=1" in api.inspect_container(running["Id"])["Config"]["Env"]
    # Another range asks for other images: the lock is stale, nothing is touched.
    doc["services"]["app"]["x-reconciler"]["update"]["semver"] = "^2.0"
    write_state(doc)
    stale = run_cli("apply", str(path), "--locked", "--lock-file", str(beside))
    assert stale.returncode == 2, stale.stdout + stale.stderr
    assert "is stale: app asks for" in stale.stderr and "semver ^2.0" in stale.stderr, stale.stderr
    assert running_tags(api, project) == [ref("1.4.0")]  # nothing touched

    # 7. `apply` without --locked resolves the range as the daemon would (1.5.0, rolled out
    # health-gated) and writes the lock again with it; `--locked` then finds it in sync.
    v.push("1.5.0")
    doc["services"]["app"]["x-reconciler"]["update"] = {"semver": "^1.0"}
    write_state(doc)
    applied = run_cli("apply", str(path), "--lock-file", str(beside))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert running_tags(api, project) == [ref("1.5.0")], applied.stdout
    assert json.loads(beside.read_text())["images"] == {"app": f"{v.repo}:{ref('1.5.0')}"}
    applied = run_cli("apply", str(path), "--locked", "--lock-file", str(beside))
    assert applied.returncode == 0 and "in sync" in applied.stdout, applied.stdout
