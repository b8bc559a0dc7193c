"""The Swarm target after Swarm's own rollbacks (pure, with tests/swarm_simulator.py): a
paused rollback is settled (edits pushed, hand scales put back), a hand rollback is drift, a
hand removal is drift put back; and what SwarmConditions tells of them (never a rollback
twice, never a success while it got worse, a rollout's start and end as the host's)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.core import swarm_plan as sp
from reconciler.core.action_events import event_of
from reconciler.core.events import Event
from reconciler.core.swarm_model import ObservedService, SwarmService
from reconciler.targets.swarm.conditions import SwarmConditions
from reconciler.targets.swarm.rollouts import rollout_of, started_event
from tests.test_swarm_plan import load, observed_of, with_spec

WORKER = {"image": "busybox", "command": ["sh", "-c", "exit 2"]}


def _worker(tmp_path: Path, **extra: object) -> sp.SwarmDesired:
    return load({"services": {"worker": {**WORKER, **extra}}}, tmp_path)


def _paused(tmp_path: Path) -> tuple[sp.SwarmDesired, sp.SwarmObserved, dict[str, str]]:
    """worker's `exit 2` revision pushed, Swarm's rollback to the one before paused."""
    d = _worker(tmp_path)
    o = observed_of(d)
    obs = o.services[0]
    before = with_spec(obs, Labels={**dict(obs.labels), "io.reconciler.spec-hash": "before"})
    before = replace(
        before,
        update_state="rollback_paused",
        update_message="update rolled back due to failure; rollback paused",
        previous_hash=d.service("worker").spec_hash,
    )
    o = sp.SwarmObserved((before,), o.networks)
    pushed = {"worker": d.service("worker").spec_hash}
    return d, o, sp.failed_revisions(d, o, pushed, {})


def test_a_paused_rollback_is_settled_edits_are_pushed_and_scales_put_back(
    tmp_path: Path,
) -> None:
    d, o, held = _paused(tmp_path)
    assert held == {"worker": d.service("worker").spec_hash}
    p = sp.plan(d, o, held)
    assert not p.actions and not any("rolling it back" in str(n) for n in p.notes)
    # A hand scale while the rollback is paused is put back (the revision stays held).
    obs = o.services[0]
    scaled = sp.SwarmObserved((with_spec(obs, Mode={"Replicated": {"Replicas": 3}}),), o.networks)
    assert [a.verb for a in sp.plan(d, scaled, held).actions] == ["scale"]
    # A file edit (a good spec, or a new variable) is pushed.
    edited = _worker(tmp_path, environment={"B": "1"})
    pushed = {"worker": d.service("worker").spec_hash}
    assert sp.failed_revisions(edited, o, pushed, held) == {}
    (update,) = sp.plan(edited, o, {}).actions
    assert update.verb == "update" and update.name == "demo_worker"
    assert sp.plan(edited, simulate_one(o, update), {}).actions == ()


def simulate_one(o: sp.SwarmObserved, action: sp.SwarmAction) -> sp.SwarmObserved:
    from tests.swarm_simulator import simulate

    return simulate(o, sp.SwarmPlan((action,)), "demo")


def test_a_rollback_by_hand_is_drift_and_a_removal_by_hand_too(tmp_path: Path) -> None:
    d = _worker(tmp_path)
    o = observed_of(d)
    obs = o.services[0]
    want = d.service("worker").spec_hash
    back = with_spec(obs, Labels={**dict(obs.labels), "io.reconciler.spec-hash": "before"})
    back = replace(
        back,
        update_state="rollback_completed",
        update_message=sp.MANUAL_ROLLBACK,
        previous_hash=want,
    )
    o2 = sp.SwarmObserved((back,), o.networks)
    assert sp.failed_revisions(d, o2, {"worker": want}, {}) == {}
    (update,) = sp.plan(d, o2).actions
    assert update.reason == "drift: rolled back by hand" and update.cause.kind == "drift"
    assert event_of(update, "success", trigger="swarm").kind == "drift_corrected"
    # Swarm's status stays `manually requested rollback` after we put it back: a file edit
    # since is a change of the file, not drift.
    ours = replace(obs, update_state="rollback_completed", update_message=sp.MANUAL_ROLLBACK)
    (edit,) = sp.plan(
        _worker(tmp_path, environment={"B": "1"}), sp.SwarmObserved((ours,), o.networks)
    ).actions
    assert edit.cause.kind == "spec_changed"
    # `docker service rm` of a service we created: created again, as drift put back.
    empty = sp.SwarmObserved((), o.networks)
    (create,) = sp.plan(d, empty, known={"worker"}).actions
    assert create.reason == "drift: removed by hand"
    assert event_of(create, "success", trigger="swarm").kind == "drift_corrected"
    (first,) = sp.plan(d, empty).actions
    assert first.reason == "missing" and event_of(first, "success", trigger="x").kind == "create"


# --------------------------------------------------------------------------- conditions


def _svc(spec_hash: str = "new") -> SwarmService:
    return SwarmService(name="web", full_name="p_web", spec_json="{}", spec_hash=spec_hash)


def _obs(
    state: str, label: str, started: str, previous: str = "", message: str = ""
) -> ObservedService:
    return ObservedService(
        id="x",
        name="p_web",
        version=1,
        labels=(("io.reconciler.spec-hash", label),),
        spec_json="{}",
        update_state=state,
        update_message=message or state,
        update_started=started,
        previous_hash=previous,
    )


def _look(cond: SwarmConditions, svc: SwarmService, obs: ObservedService) -> None:
    settled = {svc.name} if obs.label("io.reconciler.spec-hash") == svc.spec_hash else set()
    cond.observed([svc], {svc.full_name: obs}, settled)


def test_a_resolved_rollback_never_fires_again_for_a_later_edit() -> None:
    seen: list[Event] = []
    cond = SwarmConditions(seen.append, lambda: "f" * 64)
    bad, good, later = _svc("bad"), _svc("good"), _svc("later")
    _look(cond, bad, _obs("rollback_started", "good", "t1", "bad"))
    _look(cond, bad, _obs("rollback_completed", "good", "t1", "bad"))
    _look(cond, good, _obs("rollback_completed", "good", "t1", "bad"))  # the file reverted
    # A healthy edit: the pass before its push still sees the old rollback's status.
    _look(cond, later, _obs("rollback_completed", "good", "t1", "bad"))
    cond.started("web", "later", _obs("rollback_completed", "good", "t1", "bad"))
    _look(cond, later, _obs("rollback_completed", "later", "t1", "good"))  # pushed, stale
    _look(cond, later, _obs("completed", "later", "t2", "good"))
    assert [(e.kind, e.result) for e in seen] == [
        ("rolled_back", "firing"),
        ("rolled_back", "resolved"),
        ("rollout_completed", "success"),
    ]
    fired = seen[0]
    assert fired.revision == "f" * 12 and fired.data["service_revision"] == "bad"
    assert seen[2].revision == "f" * 12 and seen[2].data["service_revision"] == "later"


def test_a_paused_rollback_keeps_firing_and_a_hand_rollback_is_no_failed_update() -> None:
    seen: list[Event] = []
    cond = SwarmConditions(seen.append)
    bad = _svc("bad")
    _look(cond, bad, _obs("rollback_started", "good", "t1", "bad"))
    _look(cond, bad, _obs("rollback_paused", "good", "t1", "bad"))
    assert [(e.kind, e.result) for e in seen] == [
        ("rolled_back", "firing"),
        ("rollout_failed", "firing"),
    ]
    fixed = _svc("fixed")
    _look(cond, fixed, _obs("updating", "fixed", "t2", "good"))
    _look(cond, fixed, _obs("completed", "fixed", "t2", "good"))
    assert sorted((e.kind, e.result) for e in seen[2:]) == [
        ("rolled_back", "resolved"),
        ("rollout_completed", "success"),
        ("rollout_failed", "resolved"),
    ]
    manual: list[Event] = []
    cond = SwarmConditions(manual.append)
    web = _svc("ours")
    msg = sp.MANUAL_ROLLBACK
    _look(cond, web, _obs("rollback_started", "old", "t3", "ours", msg))
    _look(cond, web, _obs("rollback_completed", "old", "t3", "ours", msg))
    assert manual == []


def test_a_rollout_starts_with_its_diff_and_a_new_count_alone_is_no_rollout(
    tmp_path: Path,
) -> None:
    d = load({"services": {"web": {"image": "w:1", "replicas": 2}}}, tmp_path)
    o = observed_of(d)
    scaled = load({"services": {"web": {"image": "w:1", "replicas": 3}}}, tmp_path)
    (scale,) = sp.plan(scaled, o).actions
    assert isinstance(scale, sp.UpdateService) and not rollout_of(scale)
    monitor = {"update_config": {"monitor": "2s", "failure_action": "pause"}}
    edited = load(
        {"services": {"web": {"image": "w:2", "replicas": 2, "deploy": monitor}}}, tmp_path
    )
    (update,) = sp.plan(edited, o).actions
    assert isinstance(update, sp.UpdateService) and rollout_of(update)
    row = started_event(update, "file", "a" * 64)
    assert (row.kind, row.revision, row.trigger) == ("rollout_started", "a" * 12, "file edit")
    assert row.data["service_revision"] == update.spec.spec_hash[:12]
    # The file's names and units, not Swarm's (`{"FailureAction": ..., "Monitor": 2000000000}`).
    assert "deploy.update_config.monitor 5s -> 2s" in row.data["diff"]
    assert "deploy.update_config.failure_action rollback -> pause" in row.data["diff"]
