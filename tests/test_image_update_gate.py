"""Image updates as a new user meets them (pure): a version whose image carries its own
HEALTHCHECK is judged by it, an update of what runs waits until the service has a revision to
roll back to, and `status` shows a service held stopped after a failed snapshot restore.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from reconciler.config import loader
from reconciler.core import rollout as ro
from reconciler.core.desired import DesiredState
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.ops.state_store import StateStore
from reconciler.ops.status import render_status
from reconciler.targets.host import image_follower as fol


def parse(doc: dict[str, Any]) -> DesiredState:
    return loader.parse(yaml.safe_dump(doc), source="state.yaml", base_dir=Path("/srv/app"))


def app(**fields: Any) -> DesiredState:
    return parse({"project": "p", "services": {"app": {"image": "busybox:1", **fields}}})


def test_a_replacement_is_judged_by_the_images_own_healthcheck() -> None:
    """No healthcheck in the file, but Docker reports one (the image's HEALTHCHECK)."""
    spec = app().service("app").replicas[0]
    config = ro.UpdateConfig(monitor_s=1.0)

    def seen(health: Any) -> ObservedContainer:
        return ObservedContainer("i", "n", "app", 1, spec.spec_hash, "running", health,
                                 started_at=100.0)  # fmt: skip

    # Starting: not passed once monitor is over (it was before: only the file's check counted).
    verdict = ro.judge(spec, seen("starting"), config, 105.0)
    assert verdict.outcome == "pending"
    assert ro.judge(spec, seen("unhealthy"), config, 102.0).outcome == "failed"
    assert ro.judge(spec, seen("healthy"), config, 101.5).outcome == "passed"
    late = 100.0 + config.monitor_s + ro.IMAGE_HEALTHCHECK_WAIT_S + 1
    failed = ro.judge(spec, seen("starting"), config, late)
    assert failed.outcome == "failed" and "not healthy" in (failed.reason or "")
    # No health at all: running for monitor is enough, as before.
    assert ro.judge(spec, seen(None), config, 101.5).outcome == "passed"


def test_an_update_waits_for_a_revision_to_roll_back_to(tmp_path: Path) -> None:
    store = StateStore("p", tmp_path)
    now = [1000.0]
    follower = fol.ImageFollower(
        SimpleNamespace(),  # type: ignore[arg-type]
        store,
        SimpleNamespace(metrics=None),  # type: ignore[arg-type]
        desired=app,
        book=lambda s: None,  # type: ignore[arg-type,return-value]
        enqueue=lambda key, delay: None,
        clock=lambda: now[0],
        pull_timeout_s=60.0,
        follow_tags=True,
        ledger=None,
    )
    assert "not run healthy yet" in follower.update_waits("app")
    now[0] += fol.SETTLE_MAX_WAIT_S - 1
    assert "not run healthy yet" in follower.update_waits("app")
    now[0] += 2  # a first version that never gets healthy: the update may fix it
    assert follower.update_waits("app") == ""

    stable = app().service("app").replicas
    store.put(
        "app", ro.RolloutRecord(stable_revision="aaa", stable=stable, rolling_revision="b" * 12)
    )
    assert "rollout of revision bbbbbbbbbbbb is under way" in follower.update_waits("app")
    store.put("app", ro.RolloutRecord(stable_revision="aaa", stable=stable))
    assert follower.update_waits("app") == ""


class _Engine:
    def observe(self, project: str) -> Observed:
        return Observed(containers=(ObservedContainer("i", "p-app-1", "app", 1, "h", "exited"),))

    def inspect(self, cid: str) -> dict[str, Any]:
        return {"RestartCount": 0}

    def log_tail(self, cid: str, n: int) -> list[str]:
        return []


def test_status_shows_a_service_held_stopped() -> None:
    why = "restore of snapshot 3f2a9c before the rollback failed: disk full"
    out = render_status(app(), _Engine(), held={"app": why})  # type: ignore[arg-type]
    row = next(line for line in out.splitlines() if line.startswith("app"))
    assert row.endswith("held stopped"), out
    assert f"app: HELD STOPPED: {why}" in out and "reconciler restore app SNAPSHOT" in out
