"""Following a moving tag for real: Debian's docker-registry on 127.0.0.1 with htpasswd, a
service with `pull_policy: every_2s`, and new images pushed under its tag from "another
machine" (the same registry reached as localhost:PORT, so the engine's own copy of the
daemon's tag does not move with the push). A healthy new digest is rolled out; a never-healthy
one is rolled back and held while the tag stays; a registry that is down changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import DaemonProcess, run_cli, wait_for
from tests.registrykit import (
    DEADLINE_S,
    Publisher,
    Registry,
    login,
    pulled_service,
    running_registry,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


@pytest.fixture
def pusher(
    api: docker.APIClient, busybox_image: str, tmp_path: Path
) -> Iterator[tuple[Publisher, Registry, Callable[[], None]]]:
    with contextlib.ExitStack() as stack:
        registry_cm = running_registry()
        registry = stack.enter_context(registry_cm)
        p = Publisher(api, registry, busybox_image, tmp_path)
        stack.callback(p.cleanup)

        def stop_registry() -> None:
            registry_cm.__exit__(None, None, None)

        yield p, registry, stop_registry


def running_digests(api: docker.APIClient, project: str) -> list[str]:
    """The digests the service's running containers were created from (pinned refs)."""
    cs = api.containers(filters={"label": f"io.reconciler.project={project}"})
    return sorted(str(c["Image"]).partition("@")[2] for c in cs if c["State"] == "running")


def following(p: Publisher) -> dict[str, Any]:
    """Two replicas of the followed tag, checked every 2 s, healthy when /healthy exists."""
    return pulled_service(f"{p.repo}:t", replicas=2)


def events(d: DaemonProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in d.events(name) if all(e.get(k) == v for k, v in fields.items())]


def test_a_moving_tag_is_rolled_out_rolled_back_held_and_left_alone_when_the_registry_is_down(
    pusher: tuple[Publisher, Registry, Callable[[], None]],  # first: its images go last
    api: docker.APIClient,
    project: str,
    docker_config: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """every_2s: a healthy digest pushed under the tag runs within seconds (health-gated
    rollout); a never-healthy one is rolled back to the previous digest and held, not tried
    again while the tag stays; a good one after it rolls out; with the registry stopped the
    checks fail with back-off and no container is touched."""
    p, registry, stop_registry = pusher
    login(docker_config, registry)
    v1 = p.push("t", healthy=True)
    path = write_state(following(p))
    d = daemon(path)
    wait_for(lambda: running_digests(api, project) == [v1, v1], DEADLINE_S, what="v1 to run")

    # 1. A healthy new digest under the tag: pulled and rolled out.
    v2 = p.push("t", healthy=True)
    wait_for(lambda: running_digests(api, project) == [v2, v2], DEADLINE_S, what="v2 rolled out")
    wait_for(
        lambda: d.metric("reconciler_image_updates_total", service="app", result="updated"),
        DEADLINE_S,
        what="the update to be counted",
    )
    assert events(d, "image tag moved; pulling", service="app", newest=v2)

    # 2. A never-healthy digest: rolled back to v2 and held.
    v3 = p.push("t", healthy=False)
    wait_for(
        lambda: d.metric("reconciler_image_updates_total", service="app", result="rolled_back"),
        DEADLINE_S,
        what="the bad digest to be rolled back",
    )
    wait_for(
        lambda: (
            running_digests(api, project) == [v2, v2]
            and events(d, "rollback completed", service="app")
        ),
        DEADLINE_S,
        what="v2 to run again",
    )
    started = len(events(d, "rollout started", service="app"))
    unchanged = d.metric("reconciler_image_updates_total", service="app", result="unchanged") or 0
    wait_for(
        lambda: (
            (d.metric("reconciler_image_updates_total", service="app", result="unchanged") or 0)
            >= unchanged + 3
        ),
        DEADLINE_S,
        what="three more checks of the unchanged tag",
    )
    assert len(events(d, "rollout started", service="app")) == started  # held: not retried
    assert running_digests(api, project) == [v2, v2]
    status = run_cli("status", str(path), "--lock-dir", str(d.log_path.parent))
    assert f"running {v2[:19]} (2)" in status.stdout, status.stdout
    assert f"newest {v3[:19]}" in status.stdout, status.stdout
    assert "rolled back from" in status.stdout, status.stdout
    plan = run_cli("plan", str(path), "--lock-dir", str(d.log_path.parent))
    # The tag names v3, v2 runs: pending, held (never `in sync` while they differ).
    assert plan.returncode == 2 and "is held (rolled back at" in plan.stdout, plan.stdout

    # 3. The tag moves on to a good digest: the hold ends with it.
    v4 = p.push("t", healthy=True)
    wait_for(lambda: running_digests(api, project) == [v4, v4], DEADLINE_S, what="v4 rolled out")
    wait_for(
        lambda: len(events(d, "rollout completed", service="app")) >= 2,  # v2's, then v4's
        DEADLINE_S,
        what="v4's rollout to complete",
    )

    # 4. The registry goes away: checks fail and back off; nothing is touched.
    ids = sorted(
        c["Id"] for c in api.containers(filters={"label": f"io.reconciler.project={project}"})
    )
    stop_registry()
    wait_for(
        lambda: len(events(d, "image check failed; what runs is left alone", service="app")) >= 3,
        DEADLINE_S,
        what="three failed checks",
    )
    failures = events(d, "image check failed; what runs is left alone", service="app")
    delays = [f["retry_s"] for f in failures]
    assert delays[:3] == sorted(delays[:3]) and delays[1] > delays[0], delays
    assert all(f"{p.repo}:t" in f["error"] for f in failures), failures
    assert d.metric("reconciler_image_updates_total", service="app", result="error")
    after = sorted(
        c["Id"] for c in api.containers(filters={"label": f"io.reconciler.project={project}"})
    )
    assert after == ids
    assert running_digests(api, project) == [v4, v4]
    assert not d.events("image pruned")  # --prune-images is off by default


def test_prune_images_removes_what_the_daemon_pulled_and_nothing_uses_keeping_the_previous(
    pusher: tuple[Publisher, Registry, Callable[[], None]],
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    docker_config: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """With --prune-images, after the tag moved v1 -> v2 -> v3, v1 (pulled by the daemon,
    used by no container) is removed; v2 (the previous one) and v3 stay, and so does every
    image the daemon did not pull."""
    p, registry, _ = pusher
    login(docker_config, registry)
    v1 = p.push("t", healthy=True)
    d = daemon(write_state(following(p)), extra=("--prune-images",))
    wait_for(lambda: running_digests(api, project) == [v1, v1], DEADLINE_S, what="v1 to run")
    v2 = p.push("t", healthy=True)
    wait_for(lambda: running_digests(api, project) == [v2, v2], DEADLINE_S, what="v2 to run")
    v3 = p.push("t", healthy=True)
    wait_for(lambda: running_digests(api, project) == [v3, v3], DEADLINE_S, what="v3 to run")
    p.untag_sources()  # as if pulled from elsewhere: only the daemon's names are left

    def gone(image_id: str) -> bool:
        try:
            api.inspect_image(image_id)
        except docker.errors.NotFound:
            return True
        return False

    wait_for(lambda: gone(p.ids[0]), DEADLINE_S, what="v1 to be pruned")
    # Logged once the engine answered the removal: the line may come a moment after.
    wait_for(lambda: events(d, "image pruned", service="app"), 30, what="the prune logged")
    assert not gone(p.ids[1]) and not gone(p.ids[2])
    assert api.inspect_image(busybox_image)
    assert running_digests(api, project) == [v3, v3]
