"""The pure planner: cases, and hypothesis properties against the engine model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import loader as desired
from reconciler.core import rollout as ro
from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DrainContainer,
    EnsureImage,
    Plan,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.actions import HostAction as Action
from reconciler.core.desired import DesiredState, UpdateConfig
from reconciler.core.observed import Observed, ObservedContainer, ObservedNetwork, ObservedVolume
from reconciler.core.planner import Holds, plan
from tests.simulator import Daemon, container_from, simulate


def state(doc: dict[str, Any]) -> DesiredState:
    doc = {"version": 1, "project": "p", **doc}
    return desired.parse(yaml.safe_dump(doc), source="s.yaml", base_dir=Path("/srv"))


def stack(web: dict[str, Any] | None = None, **web_keys: Any) -> DesiredState:
    """db <- web (2 replicas) on one network; `web_keys` change the web service."""
    web = {
        "image": "web:1",
        "replicas": 2,
        "depends_on": ["db"],
        "networks": ["net"],
        **(web or {}),
        **web_keys,
    }
    return state(
        {
            "networks": {"net": {}},
            "volumes": {"data": {}},
            "services": {
                "db": {"image": "db:1", "volumes": ["data:/data"], "networks": ["net"]},
                "web": web,
            },
        }
    )


STACK = stack()


def converged(d: DesiredState) -> Observed:
    return simulate(Observed(), plan(d, Observed()))


_CONVERGED = converged(STACK)


def _id(name: str, obs: Observed = _CONVERGED) -> str:
    return next(c.id for c in obs.containers if c.name == name)


def _with(who: str, obs: Observed = _CONVERGED, **changes: Any) -> Observed:
    """`obs` with the container named `who` changed."""
    cs = tuple(replace(c, **changes) if c.name == who else c for c in obs.containers)
    return replace(obs, containers=cs)


def _kinds(p: Plan) -> list[str]:
    return [type(a).__name__ for a in p.actions]


def _web(d: DesiredState, replica: int = 1) -> Any:
    return d.service("web").replicas[replica - 1]


def rollouts(d: DesiredState, **changes: Any) -> dict[str, ro.Rollout]:
    """Every service's rollout as the file configures it (normal mode), with `changes`."""
    return {s.name: replace(ro.Rollout(config=s.update), **changes) for s in d.services}


def test_from_empty_creates_everything_in_order() -> None:
    """Networks, volumes, images, then containers (create, start) in depends_on order."""
    actions = plan(STACK, Observed()).actions
    kinds = [type(a).__name__ for a in actions]
    assert kinds[:4] == ["CreateNetwork", "CreateVolume", "EnsureImage", "EnsureImage"]
    assert kinds[4:] == ["CreateContainer", "StartContainer"] * 3
    starts = [a.name for a in actions if isinstance(a, StartContainer)]
    assert starts == ["p-db-1", "p-web-1", "p-web-2"]
    assert all(a.as_name is None for a in actions if isinstance(a, CreateContainer))


def test_creates_run_early_and_starts_wait_for_dependencies() -> None:
    """Creating waits for network, volume and image; starting waits for its dependencies."""
    steps = {s.key: s for s in plan(STACK, Observed()).steps}
    assert steps["create:p-db-1"].after == {"network:net", "volume:data", "image:db"}
    assert steps["create:p-web-1"].after == {"network:net", "image:web"}
    assert steps["container:p-db-1"].after == {"create:p-db-1"}
    assert steps["container:p-web-1"].after == {"create:p-web-1", "container:p-db-1"}


def test_converged_plans_nothing() -> None:
    """A converged project needs no action, and no wake-up."""
    result = plan(STACK, _CONVERGED)
    assert not result and result.wake_at is None and not result.verdicts


def test_scale_down_drains_then_removes_highest_replicas() -> None:
    """A replica beyond `replicas` leaves DNS first, then is removed with the service's grace."""
    keys = {"stop_grace_period": "1500ms", "drain_period": "2s"}
    live = converged(stack(**keys))
    web2 = _id("p-web-2", live)
    smaller = stack(replicas=1, **keys)
    first = plan(smaller, live, Holds(now=100.0))
    assert first.actions == (DrainContainer(web2, "p-web-2", "web", ("net",), "scaled down"),)
    assert first.wake_at == 102.0
    draining = plan(smaller, live, Holds(now=101.0, drained={web2: 102.0}))
    assert not draining and draining.wake_at == 102.0
    said = [(str(n), n.detail) for n in draining.notes if n.kind == "draining"]
    assert said == [("p-web-2: draining for 1 s more", "its drain to end (in 1 s)")]  # no epoch
    done = plan(smaller, live, Holds(now=102.0, drained={web2: 102.0}))
    assert done.actions == (RemoveContainer(web2, "p-web-2", "web", "scaled down", 1.5),)


def test_scale_down_of_a_stopped_replica_removes_it_at_once() -> None:
    """A replica that is not running has no traffic to drain: it is removed directly."""
    obs = _with("p-web-2", state="exited", exit_code=0)
    assert _kinds(plan(stack(replicas=1), obs)) == ["RemoveContainer"]


def test_exited_is_started() -> None:
    """An exited container (crash or docker stop) is started again."""
    (a,) = plan(STACK, _with("p-db-1", state="exited", exit_code=137)).actions
    assert (
        isinstance(a, StartContainer)
        and a.reason == "exited 137 (SIGKILL)"
        and a.cause.kind == "exited"
    )


def test_paused_is_unpaused() -> None:
    """A paused container is unpaused."""
    (a,) = plan(STACK, _with("p-db-1", state="paused")).actions
    assert isinstance(a, UnpauseContainer)


def test_dead_is_replaced_beside_the_old_container() -> None:
    """A dead replica is replaced beside it under the temporary name, started at once, and only
    then removed and renamed over."""
    spec = STACK.service("db").replicas[0]
    obs = _with("p-db-1", state="dead")
    first = plan(STACK, obs)
    (create,) = [a for a in first.actions if isinstance(a, CreateContainer)]
    assert create == CreateContainer(spec, "dead", ro.temp_name(spec))
    assert not any(isinstance(a, RemoveContainer) for a in first.actions)
    obs = simulate(obs, first, now=10.0)
    second = plan(STACK, obs, Holds(now=10.0))
    assert _kinds(second) == ["StartContainer"] and second.actions[0].name == create.name
    obs = simulate(obs, second, now=10.0)
    judged = plan(STACK, obs, Holds(now=15.0))
    assert _kinds(judged) == ["RemoveContainer", "RenameContainer"]
    assert judged.verdicts[0].passed and judged.verdicts[0].service == "db"
    assert not plan(STACK, simulate(obs, judged), Holds(now=15.0))


def test_restarting_is_left_to_docker() -> None:
    """A container Docker is restarting is not touched."""
    assert not plan(STACK, _with("p-db-1", state="restarting"))


def test_unhealthy_restarts_only_after_grace() -> None:
    """Unhealthy is restarted when its grace ran out, not before."""
    obs = _with("p-db-1", health="unhealthy")
    assert not plan(STACK, obs, Holds(unhealthy_due=frozenset()))
    (a,) = plan(STACK, obs, Holds(unhealthy_due=frozenset({"p-db-1"}))).actions
    assert isinstance(a, RestartContainer)


# ----------------------------------------------------------------- replacing a changed spec

CHANGED = stack(environment={"A": "2"})


def _step(d: DesiredState, obs: Observed, holds: Holds) -> tuple[Plan, Observed]:
    p = plan(d, obs, holds)
    return p, simulate(obs, p, now=holds.now)


def test_changed_spec_stop_first_replaces_one_replica_at_a_time() -> None:
    """stop-first replaces one replica at a time: create beside, drain, stop old and start new,
    judge for `monitor`, remove old, rename new."""
    new1 = ro.temp_name(_web(CHANGED))
    old1 = _id("p-web-1")
    p, obs = _step(CHANGED, _CONVERGED, Holds(now=0.0))
    assert [a.name for a in p.actions if isinstance(a, CreateContainer)] == [new1]
    assert "p-web-2: replacement waits (1 of parallelism 1 in flight)" not in map(str, p.notes)
    assert any("p-web-2: replacement waits" in n for n in p.notes)

    p, obs = _step(CHANGED, obs, Holds(now=0.0))
    assert p.actions == (DrainContainer(old1, "p-web-1", "web", ("net",), "replaced (stop-first)"),)
    assert p.wake_at == 3.0  # drain_period defaults to 3 s
    drained = {old1: 3.0}
    p, obs = _step(CHANGED, obs, Holds(now=1.0, drained=drained))
    assert not p and p.wake_at == 3.0

    p, obs = _step(CHANGED, obs, Holds(now=3.0, drained=drained))
    stop, start = p.steps
    assert isinstance(stop.action, StopContainer) and stop.action.id == old1
    assert isinstance(start.action, StartContainer) and start.action.name == new1
    assert stop.key in start.after

    p, obs = _step(CHANGED, obs, Holds(now=4.0, drained=drained))
    assert not p and p.wake_at == 8.0  # monitor: 5 s from the start at 3.0

    new_id = _id(new1, obs)
    p, obs = _step(CHANGED, obs, Holds(now=8.0, drained=drained))
    remove, rename = p.steps
    assert remove.action == RemoveContainer(old1, "p-web-1", "web", "replaced")
    assert rename.action == RenameContainer(new_id, new1, "p-web-1", "web")
    assert remove.key in rename.after
    assert [(v.replica, v.passed) for v in p.verdicts] == [(1, True)]

    p, obs = _step(CHANGED, obs, Holds(now=8.0))
    assert [a.name for a in p.actions if isinstance(a, CreateContainer)] == [
        ro.temp_name(_web(CHANGED, 2))
    ]


def test_start_first_starts_the_new_one_while_the_old_one_serves() -> None:
    """start-first: the new replica starts at once; the old one is drained only once the new
    one passed, then removed."""
    d = stack(environment={"A": "2"}, deploy={"update_config": {"order": "start-first"}})
    new1 = ro.temp_name(_web(d))
    _, obs = _step(d, _CONVERGED, Holds(now=0.0))
    p, obs = _step(d, obs, Holds(now=0.0))
    assert _kinds(p) == ["StartContainer"] and p.actions[0].name == new1
    p, obs = _step(d, obs, Holds(now=5.0))
    assert p.actions == (DrainContainer(_id("p-web-1"), "p-web-1", "web", ("net",), "replaced"),)
    assert p.verdicts[0].passed
    p, obs = _step(d, obs, Holds(now=8.0, drained={_id("p-web-1"): 8.0}))
    assert _kinds(p) == ["RemoveContainer", "RenameContainer"]


def test_parallelism_bounds_replicas_in_flight() -> None:
    """parallelism 2 replaces two of three replicas at once; 0 replaces all."""
    three = {"replicas": 3, "environment": {"A": "2"}}
    base = converged(stack(replicas=3))
    for parallelism, expected in ((2, 2), (0, 3)):
        d = stack(three, deploy={"update_config": {"parallelism": parallelism}})
        creates = [a for a in plan(d, base).actions if isinstance(a, CreateContainer)]
        assert len(creates) == expected
        assert all(a.as_name == ro.temp_name(a.spec) for a in creates)


def test_delay_holds_the_next_batch() -> None:
    """The next batch waits `delay` after the last batch passed; the plan wakes up then."""
    d = stack(environment={"A": "2"}, deploy={"update_config": {"delay": "10s"}})
    early = plan(d, _CONVERGED, Holds(now=15.0, rollouts=rollouts(d, last_batch_at=10.0)))
    assert not early and early.wake_at == 20.0
    assert any("update delay 10s" in n for n in early.notes)
    late = plan(d, _CONVERGED, Holds(now=20.0, rollouts=rollouts(d, last_batch_at=10.0)))
    assert "CreateContainer" in _kinds(late)


def test_running_replicas_wait_while_another_is_down() -> None:
    """A down replica of the old spec is replaced at once; running ones wait for it."""
    obs = _with("p-web-2", state="exited", exit_code=1)
    p = plan(CHANGED, obs)
    creates = [a for a in p.actions if isinstance(a, CreateContainer)]
    assert [a.spec.name for a in creates] == ["p-web-2"]
    assert any(
        "p-web-1: replacement waits (for p-web-2 to serve again (exited 1))" in n for n in p.notes
    )


def test_paused_rollout_heals_as_is_but_replaces_dead() -> None:
    """In mode paused running replicas keep their spec, an exited one is started as it is,
    and only a dead one is replaced."""
    holds = Holds(rollouts=rollouts(CHANGED, mode="paused"))
    assert not plan(CHANGED, _CONVERGED, holds)
    exited = plan(CHANGED, _with("p-web-1", state="exited", exit_code=1), holds)
    assert _kinds(exited) == ["StartContainer"]
    dead = plan(CHANGED, _with("p-web-1", state="dead"), holds)
    assert [a.name for a in dead.actions if isinstance(a, CreateContainer)] == [
        ro.temp_name(_web(CHANGED))
    ]


def _judging(d: DesiredState, **new: Any) -> tuple[Observed, str, str]:
    """web-1 stopped (stop-first) and its replacement running since t=0, then `new`."""
    obs = simulate(_CONVERGED, plan(d, _CONVERGED), now=0.0)
    temp = ro.temp_name(_web(d))
    obs = _with("p-web-1", obs, state="exited", exit_code=0)
    obs = _with(temp, obs, **{"state": "running", "started_at": 0.0, **new})
    return obs, temp, _id("p-web-1")


def test_failed_replacement_is_removed_and_the_old_one_runs_again() -> None:
    """A replacement that exits is removed; the old replica gets its aliases back and starts."""
    obs, temp, old = _judging(CHANGED, state="exited", exit_code=1)
    p = plan(CHANGED, obs, Holds(now=1.0, drained={old: 0.0}))
    assert _kinds(p) == ["RemoveContainer", "ConnectNetwork", "StartContainer"]
    remove, connect, start = p.steps
    assert remove.action.name == temp and remove.action.grace_s == 0.0
    assert isinstance(connect.action, ConnectNetwork) and connect.action.reconnect
    assert start.action.id == old and {remove.key, connect.key} <= start.after
    (verdict,) = p.verdicts
    assert not verdict.passed and not verdict.tolerated and "exited with code 1" in verdict.reason


def test_unhealthy_replacement_fails_and_a_paused_old_one_is_unpaused() -> None:
    """A replacement turning unhealthy fails; an old replica left paused is unpaused."""
    obs, _temp, _old = _judging(CHANGED, health="unhealthy")
    obs = _with("p-web-1", obs, state="paused")
    p = plan(CHANGED, obs, Holds(now=1.0))
    assert _kinds(p) == ["RemoveContainer", "ConnectNetwork", "UnpauseContainer"]
    assert p.verdicts[0].reason == "new replica unhealthy"


def test_failed_start_first_replacement_gives_a_drained_old_one_its_aliases_back() -> None:
    """start-first: an old replica drained once its replacement looked good rejoins DNS when the
    replacement fails after all."""
    obs, _temp, old = _judging(CHANGED, state="exited", exit_code=1)
    obs = _with("p-web-1", obs, state="running", exit_code=None)
    p = plan(CHANGED, obs, Holds(now=1.0, drained={old: 2.0}))
    assert _kinds(p) == ["RemoveContainer", "ConnectNetwork"]
    assert p.actions[1].id == old and p.actions[1].reconnect


def test_tolerated_failure_keeps_the_new_replica() -> None:
    """Within max_failure_ratio the failed replacement is kept: the old replica goes."""
    d = stack(environment={"A": "2"}, deploy={"update_config": {"max_failure_ratio": 0.5}})
    obs, temp, old = _judging(d, state="exited", exit_code=1)
    p = plan(d, obs, Holds(now=1.0, rollouts=rollouts(d)))
    assert _kinds(p) == ["RemoveContainer", "RenameContainer"] and p.actions[0].id == old
    assert p.verdicts[0].tolerated and not p.verdicts[0].passed
    # One failure already counted: the next one is past the ratio (1 of 2 allowed).
    again = plan(d, obs, Holds(now=1.0, rollouts=rollouts(d, failures=1, failed=frozenset("x"))))
    assert not again.verdicts[0].tolerated
    # The same replacement judged again on a later pass (counted then) stays tolerated.
    counted = rollouts(d, failures=1, failed=frozenset({_id(temp, obs)}))
    assert plan(d, obs, Holds(now=1.0, rollouts=counted)).verdicts[0].tolerated


def test_failures_in_one_pass_count_together() -> None:
    """Two replacements failing in the same pass are two failures against the ratio."""
    three = {"replicas": 3, "environment": {"A": "2"}}
    d = stack(three, deploy={"update_config": {"parallelism": 2, "max_failure_ratio": 0.4}})
    obs = converged(stack(replicas=3))
    obs = simulate(obs, plan(d, obs), now=0.0)
    for i in (1, 2):
        obs = _with(f"p-web-{i}", obs, state="exited", exit_code=0)
        obs = _with(ro.temp_name(_web(d, i)), obs, state="exited", exit_code=1, started_at=0.0)
    verdicts = plan(d, obs, Holds(now=1.0, rollouts=rollouts(d))).verdicts
    assert [v.tolerated for v in verdicts] == [True, False]  # 0.4 x 3 = 1.2 failures allowed


def test_a_kept_tolerated_failure_does_not_hold_the_rollout_back() -> None:
    """A replica kept as a tolerated failure does not hold the next batch back; any other replica
    down does."""
    d = stack(environment={"A": "2"}, deploy={"update_config": {"max_failure_ratio": 0.5}})
    obs = simulate(_CONVERGED, plan(d, _CONVERGED))
    obs = simulate(obs, plan(d, obs, Holds(now=0.0, rollouts=rollouts(d))), now=0.0)  # drain
    kept = ro.temp_name(_web(d))
    obs = _with(kept, obs, state="exited", exit_code=1, started_at=0.0)
    obs = replace(obs, containers=tuple(c for c in obs.containers if c.name != "p-web-1"))
    obs = simulate(obs, plan(d, obs, Holds(now=1.0, rollouts=rollouts(d))))  # adopted
    kept_id = _id("p-web-1", obs)
    obs = _with("p-web-1", obs, state="exited", exit_code=1)
    accepted = rollouts(d, failures=1, failed=frozenset({kept_id}))
    p = plan(d, obs, Holds(now=2.0, rollouts=accepted))
    assert [a.name for a in p.actions if isinstance(a, CreateContainer)] == [
        ro.temp_name(_web(d, 2))
    ]
    held = plan(d, obs, Holds(now=2.0, rollouts=rollouts(d)))
    assert any(
        "p-web-2: replacement waits (for p-web-1 to serve again (exited 1))" in n
        for n in held.notes
    )


def test_a_stopped_replacement_being_replaced_in_turn_is_judged_against() -> None:
    """A stopped leftover replacement, all that is left of a replica, is what a failed new one
    falls back to (the new one is not adopted)."""
    obs, stale, old = _judging(CHANGED)
    obs = _with(stale, obs, state="exited", exit_code=0)
    again = stack(environment={"A": "3"})
    new = ro.temp_name(_web(again))
    failed = container_from(_web(again))
    failed = replace(failed, name=new, state="exited", exit_code=1, started_at=0.0)
    obs = replace(obs, containers=(*[c for c in obs.containers if c.id != old], failed))
    p = plan(again, obs, Holds(now=1.0))
    assert [(type(a).__name__, a.name) for a in p.actions if a.service == "web"] == [
        ("RemoveContainer", new),
        ("ConnectNetwork", stale),
        ("StartContainer", stale),
    ]
    assert not p.verdicts[0].passed


def test_failure_action_continue_tolerates_every_failure() -> None:
    """failure_action continue keeps every failed replacement."""
    d = stack(environment={"A": "2"}, deploy={"update_config": {"failure_action": "continue"}})
    obs, _, _ = _judging(d, state="exited", exit_code=1)
    assert plan(d, obs, Holds(now=1.0, rollouts=rollouts(d))).verdicts[0].tolerated


def test_replacement_pending_until_monitor_then_passes() -> None:
    """A running replacement is judged after `monitor`; until then the plan wakes up at it."""
    obs, _, _ = _judging(CHANGED)
    pending = plan(CHANGED, obs, Holds(now=2.0))
    assert not pending and pending.wake_at == 5.0 and not pending.verdicts
    assert plan(CHANGED, obs, Holds(now=5.0)).verdicts[0].passed


def test_a_replacement_of_a_superseded_spec_goes_and_the_replica_is_replaced_again() -> None:
    """A never-judged replacement of a superseded spec leaves (drained first) and the replica it
    stopped is replaced again; with nothing else left, it is the replica."""
    obs, stale, _ = _judging(CHANGED)
    again = stack(environment={"A": "3"})
    p = plan(again, obs, Holds(now=1.0))
    assert p.actions[1:] == (
        DrainContainer(_id(stale, obs), stale, "web", ("net",), "stale replacement"),
        CreateContainer(_web(again), "spec changed", ro.temp_name(_web(again))),
    )
    assert not any(isinstance(a, RemoveContainer) for a in p.actions)
    gone = replace(obs, containers=tuple(c for c in obs.containers if c.name != stale))
    alone = _with("p-web-1", gone, name=stale, state="running")  # only the leftover remains
    p = plan(again, alone, Holds(now=1.0))
    assert [a.name for a in p.actions if isinstance(a, CreateContainer)] == [
        ro.temp_name(_web(again))
    ]
    assert not any(isinstance(a, RemoveContainer | DrainContainer) for a in p.actions)


def test_drained_replica_whose_replacement_did_not_happen_serves_again() -> None:
    """A drained replica on the target spec (the file changed back) rejoins its aliases."""
    p = plan(STACK, _CONVERGED, Holds(now=50.0, drained={_id("p-web-1"): 10.0}))
    (a,) = p.actions
    assert isinstance(a, ConnectNetwork) and a.reconnect and a.id == _id("p-web-1")


def test_missing_network_is_reconnected() -> None:
    """A container that lost a network it belongs on is connected again."""
    (a,) = plan(STACK, _with("p-db-1", networks=frozenset())).actions
    assert isinstance(a, ConnectNetwork) and a.attachment.network == "net" and not a.reconnect


def test_unowned_network_and_volume_are_adopted_not_created() -> None:
    """Existing objects without our labels are used as they are and reported."""
    obs = Observed(
        networks=(ObservedNetwork("net", "x", owned=False),),
        volumes=(ObservedVolume("data", owned=False),),
    )
    result = plan(STACK, obs)
    assert not any(isinstance(a, CreateNetwork | CreateVolume) for a in result.actions)
    assert any("net: adopted, not owned" in n for n in result.notes)
    assert any("data: adopted, not owned" in n for n in result.notes)


def test_orphans_are_reported_never_removed() -> None:
    """A network or volume gone from the file is reported, not removed."""
    obs = replace(
        _CONVERGED,
        project_networks=frozenset({"net", "old"}),
        project_volumes=frozenset({"data", "olddata"}),
    )
    result = plan(STACK, obs)
    assert not result
    assert "network old: orphaned" in " ".join(map(str, result.notes))
    assert "volume olddata: orphaned" in " ".join(map(str, result.notes))
    orphaned = {n.subject for n in result.notes if n.kind == "orphaned"}
    assert orphaned == {"network old", "volume olddata"}


def test_service_removed_from_file_is_drained_then_removed() -> None:
    """Containers of a service gone from the file leave DNS, then are removed."""
    extra = ObservedContainer("x1", "p-old-1", "old", 1, "h", "running", networks=frozenset({"n"}))
    obs = replace(_CONVERGED, containers=(*_CONVERGED.containers, extra))
    first = plan(STACK, obs, Holds(now=0.0))
    assert first.actions == (
        DrainContainer("x1", "p-old-1", "old", ("n",), "service removed from the file"),
    )
    assert first.wake_at == ro.DEFAULT_DRAIN_S
    (a,) = plan(STACK, obs, Holds(now=3.0, drained={"x1": 3.0})).actions
    assert a == RemoveContainer("x1", "p-old-1", "old", "service removed from the file")


def test_held_steps_and_their_dependents_are_left_out() -> None:
    """A held image holds back the containers that need it."""
    result = plan(STACK, Observed(), Holds(held={"image:db": "retry in 2s"}))
    keys = {s.key for s in result.steps}
    assert "image:db" not in keys and "container:p-db-1" not in keys
    assert "container:p-web-1" not in keys  # web depends on db
    assert "image:web" in keys
    assert any("held back (retry in 2s)" in n for n in result.notes)
    (held,) = [n for n in result.notes if n.kind == "held"]
    assert (held.subject, held.detail) == ("image:db", "retry in 2s")
    assert str(held) == "image:db: held back (retry in 2s)"


def test_held_removal_holds_back_the_rename() -> None:
    """The new replica takes the name only after the old one is removed: a held removal
    holds the rename back too."""
    obs, _temp, _old = _judging(CHANGED)
    result = plan(CHANGED, obs, Holds(now=5.0, held={"remove:p-web-1": "retry in 1s"}))
    assert not any(isinstance(a, RenameContainer) for a in result.actions)


def test_starts_wait_for_dependencies_not_ready() -> None:
    """Per-service plans: starts wait for dependencies not ready, and so does a stop-first stop (it
    would leave the replica down)."""
    fresh = plan(STACK, Observed(), Holds(ready=frozenset()))
    assert "container:p-web-1" not in {s.key for s in fresh.steps}
    assert "create:p-web-1" in {s.key for s in fresh.steps}
    assert any("waiting for db to run" in n for n in fresh.notes)
    assert "container:p-web-1" in {n.subject for n in fresh.notes if n.kind == "waiting"}
    obs = simulate(_CONVERGED, plan(CHANGED, _CONVERGED))
    drained = {_id("p-web-1"): 0.0}
    waiting = plan(CHANGED, obs, Holds(now=1.0, drained=drained, ready=frozenset()))
    assert not any(isinstance(a, StopContainer | StartContainer) for a in waiting.actions)
    ready = plan(CHANGED, obs, Holds(now=1.0, drained=drained, ready=frozenset({"db"})))
    assert _kinds(ready) == ["StopContainer", "StartContainer"]


def test_a_name_taken_by_another_slot_is_used_once_free() -> None:
    """A replica whose name another slot's container still holds runs under its temporary name and
    takes its name once free."""
    before = state({"services": {"a": {"image": "x:1", "container_name": "cn"}}})
    after = state(
        {"services": {"a": {"image": "x:1"}, "b": {"image": "x:1", "container_name": "cn"}}}
    )
    temp = ro.temp_name(after.service("b").replicas[0])
    daemon = Daemon(after, converged(before))
    first = daemon.run_pass()
    assert {"create:cn", "container:cn"}.isdisjoint(s.key for s in first.steps)
    assert {f"create:{temp}", f"container:{temp}"} <= {s.key for s in first.steps}
    assert any(f"cn: name taken, created as {temp}" in n for n in first.notes)
    daemon.settle()
    names = {c.name: c.service for c in daemon.observed.containers}
    assert names == {"p-a-1": "a", "cn": "b"}


def test_a_rename_waits_for_its_name() -> None:
    """A rename to a name another container holds follows the step that frees the name."""
    obs, temp, old = _judging(CHANGED)
    blocker = ObservedContainer("zz", "p-web-1", "zz", 1, "h", "exited")
    obs = replace(obs, containers=(*[c for c in obs.containers if c.id != old], blocker))
    steps = {s.key: s for s in plan(CHANGED, obs, Holds(now=5.0)).steps}
    assert steps["remove:p-web-1"].action.id == "zz"
    assert "remove:p-web-1" in steps[f"rename:{temp}"].after
    held = plan(CHANGED, obs, Holds(now=5.0, held={"remove:p-web-1": "retry in 1s"}))
    assert not any(isinstance(a, RenameContainer) for a in held.actions)


def test_a_rename_to_a_name_another_slot_holds_waits_for_the_next_pass() -> None:
    """A rename to a name another slot holds waits a pass, while that container gets its own name
    back."""
    obs, temp, old = _judging(CHANGED)
    moved = tuple(
        replace(c, name="p-web-1") if c.name == "p-web-2" else c
        for c in obs.containers
        if c.id != old
    )
    first = plan(CHANGED, replace(obs, containers=moved), Holds(now=5.0))
    assert [(a.name, a.new_name) for a in first.actions] == [("p-web-1", "p-web-2")]
    assert any("name p-web-1 is taken by a container of web replica 2" in n for n in first.notes)
    second = plan(CHANGED, simulate(replace(obs, containers=moved), first), Holds(now=5.0))
    assert [(a.name, a.new_name) for a in second.actions] == [(temp, "p-web-1")]


def test_network_namespace_sharers_follow_their_owner() -> None:
    """Namespace sharers are replaced once their owner has its name back, and created after a
    missing owner starts."""

    def d(v: int) -> DesiredState:
        return state(
            {
                "services": {
                    "vpn": {"image": "v:1", "environment": {"V": v}},
                    "app": {"image": "a:1", "network_mode": "service:vpn"},
                }
            }
        )

    live = converged(d(1))
    assert not plan(d(1), live)
    daemon = Daemon(d(2), live)
    daemon.settle()
    (vpn,) = [c for c in daemon.observed.containers if c.service == "vpn"]
    (app,) = [c for c in daemon.observed.containers if c.service == "app"]
    assert app.network_target == vpn.id and app.name == "p-app-1"
    assert app.id != _id("p-app-1", live)

    removed = replace(live, containers=tuple(c for c in live.containers if c.name != "p-vpn-1"))
    steps = {s.key: s for s in plan(d(1), removed).steps}
    temp = ro.temp_name(d(1).service("app").replicas[0])
    assert "container:p-vpn-1" in steps[f"create:{temp}"].after
    assert "network namespace owner" in steps[f"create:{temp}"].action.reason


def test_per_service_plans_see_containers_outside_through_holds() -> None:
    """A per-service plan finds its namespace owner and the names other services hold in
    Holds.outside."""
    d = state(
        {
            "services": {
                "vpn": {"image": "v:1"},
                "app": {"image": "a:1", "network_mode": "service:vpn"},
            }
        }
    )
    live = converged(d)
    app = replace(d, services=(d.service("app"),))
    mine = replace(live, containers=tuple(c for c in live.containers if c.service == "app"))
    outside = {c.name: c.id for c in live.containers if c.service != "app"}
    assert not plan(app, mine, Holds(outside=outside))
    blind = plan(app, mine)  # without them, its namespace owner looks gone: it waits
    assert not any(isinstance(a, CreateContainer) for a in blind.actions)
    assert any("waits for p-vpn-1, whose network namespace it joins" in n for n in blind.notes)
    clash = state({"services": {"web": {"image": "w:1", "container_name": "p-vpn-1"}}})
    web = plan(clash, Observed(), Holds(outside=outside))
    temp = ro.temp_name(clash.service("web").replicas[0])
    assert [a.name for a in web.actions if isinstance(a, CreateContainer)] == [temp]


def test_stopped_state_stops_and_does_not_create() -> None:
    """state: stopped keeps a service down on purpose."""
    d = state({"services": {"w": {"image": "w:1", "state": "stopped"}}})
    assert not any(isinstance(a, CreateContainer) for a in plan(d, Observed()).actions)
    running = simulate(Observed(), plan(state({"services": {"w": {"image": "w:1"}}}), Observed()))
    assert isinstance(plan(d, running).actions[-1], StopContainer)


# ----------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "d"])
OTHER_NAMES = ["cn-x", "cn-y", "p-a-1", "p-b-2", "p-c-1"]  # where a container_name moved


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    services: dict[str, Any] = {}
    chosen = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    container_names = iter(draw(st.permutations(["cn-x", "cn-y", "cn-z", "cn-w"])))
    for i, name in enumerate(chosen):
        svc: dict[str, Any] = {
            "image": draw(st.sampled_from(["x:1", "y:2"])),
            "replicas": draw(st.integers(0, 3)),
            "environment": {"V": draw(st.integers(0, 2))},
            "networks": draw(st.sampled_from([[], ["n1"], ["n1", "n2"]])),
            "drain_period": draw(st.sampled_from(["0s", "1s", "3s"])),
        }
        if draw(st.booleans()):
            svc["volumes"] = ["v_{replica}:/data"]
        if draw(st.booleans()):
            svc["healthcheck"] = {"test": "true", "interval": "1s"}
        if i and draw(st.booleans()):
            svc["depends_on"] = [chosen[draw(st.integers(0, i - 1))]]
        if i and draw(st.integers(0, 3)) == 0:
            owner = chosen[draw(st.integers(0, i - 1))]
            services[owner]["replicas"] = max(1, services[owner]["replicas"])
            services[owner].pop("state", None)
            svc["network_mode"] = f"service:{owner}"
            svc["networks"] = []
        elif svc["replicas"] == 1 and draw(st.integers(0, 3)) == 0:
            svc["container_name"] = next(container_names)
        shared = "network_mode" in svc or "container_name" in svc
        svc["deploy"] = {
            "update_config": {
                "parallelism": draw(st.integers(0, 2)),
                "delay": draw(st.sampled_from(["0s", "2s"])),
                "order": "stop-first" if shared else draw(st.sampled_from(ORDERS)),
                "monitor": draw(st.sampled_from(["0s", "1s", "5s"])),
                "failure_action": draw(st.sampled_from(["rollback", "pause", "continue"])),
                "max_failure_ratio": draw(st.sampled_from([0, 0.5])),
            }
        }
        if draw(st.booleans()):
            svc["state"] = "stopped"
        services[name] = svc
    return state(
        {"networks": {"n1": {}, "n2": {}}, "volumes": {"v_{replica}": {}}, "services": services}
    )


ORDERS = ["stop-first", "start-first"]
STATES = ["created", "running", "paused", "restarting", "exited", "dead"]


@st.composite
def observed_for(draw: st.DrawFn, d: DesiredState) -> Observed:
    """Live states near `d`: missing, drifted, failed, moved names, replacements in flight
    and stale ones, extra replicas and removed services. Names are unique, as in Docker."""
    containers: list[ObservedContainer] = []
    by_name: dict[str, ObservedContainer] = {}

    def add(c: ObservedContainer) -> None:
        if c.name not in by_name:
            containers.append(c)
            by_name[c.name] = c

    def some_state(c: ObservedContainer) -> ObservedContainer:
        return replace(
            c,
            state=draw(st.sampled_from(STATES)),
            health=draw(st.sampled_from([c.health, "unhealthy"])) if c.health else None,
            networks=draw(st.sampled_from([c.networks, frozenset()])),
        )

    for svc in d.services:
        for spec in svc.replicas:
            owner = by_name.get((spec.network_mode or "").removeprefix("container:"))
            target = draw(st.sampled_from([owner.id if owner else "", "gone"]))
            if draw(st.booleans()):  # the replica (or missing)
                c = some_state(container_from(spec, target))
                moved = draw(st.integers(0, 5)) == 0  # created under a name it no longer has
                name = draw(st.sampled_from(OTHER_NAMES)) if moved else spec.name
                stale = moved or draw(st.booleans())
                add(replace(c, name=name, spec_hash="stale" if stale else spec.spec_hash))
            if draw(st.integers(0, 3)) == 0:  # its replacement, in flight
                c = some_state(container_from(spec, target))
                # observe() reports when a replacement started (unknown: never started).
                started = None if c.state == "created" else draw(st.sampled_from([-30.0, 0.0]))
                add(replace(c, name=ro.temp_name(spec), started_at=started))
            if draw(st.integers(0, 5)) == 0:  # a replacement of a spec since superseded
                c = some_state(container_from(spec, target))
                add(replace(c, name=f"{'0' * 12}_{spec.name}", spec_hash="0" * 64))
    for i in range(draw(st.integers(0, 2))):  # leftovers: scaled down or removed services
        svc_name = draw(st.sampled_from(["a", "zz"]))
        add(
            ObservedContainer(
                f"extra{i}",
                f"p-{svc_name}-{9 + i}",
                svc_name,
                9 + i,
                "h",
                draw(st.sampled_from(STATES)),
                networks=draw(st.sampled_from([frozenset(), frozenset({"n1"})])),
            )
        )
    nets = [
        ObservedNetwork(n, n, owned=draw(st.booleans()))
        for n in ("n1", "n2", "p_default")
        if draw(st.booleans())
    ]
    vols = [
        ObservedVolume(v.name, owned=draw(st.booleans())) for v in d.volumes if draw(st.booleans())
    ]
    return Observed(
        containers=tuple(containers),
        networks=tuple(nets),
        volumes=tuple(vols),
        project_networks=frozenset(n.name for n in nets if n.owned),
        project_volumes=frozenset(v.name for v in vols if v.owned),
    )


@st.composite
def holds_for(draw: st.DrawFn, d: DesiredState, obs: Observed) -> Holds:
    """A pass at t=10: some containers drained (over or not), rollouts in any mode."""
    drained = {
        c.id: draw(st.sampled_from([5.0, 12.0])) for c in obs.containers if draw(st.booleans())
    }
    rollouts = {
        s.name: ro.Rollout(
            mode=draw(st.sampled_from(["normal", "paused", "rolled_back"])),
            config=s.update,
            failures=draw(st.integers(0, 1)),
            last_batch_at=draw(st.sampled_from([0.0, 9.0])),
        )
        for s in d.services
    }
    return Holds(now=10.0, drained=drained, rollouts=rollouts)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[DesiredState, Observed, Holds]:
    d = draw(desired_states())
    obs = draw(observed_for(d))
    return d, obs, draw(holds_for(d, obs))


def _slot_of(d: DesiredState, c: ObservedContainer) -> tuple[str, int] | None:
    """The slot a container belongs to, if the file wants it running."""
    svc = next((s for s in d.services if s.name == c.service), None)
    if svc is None or svc.state != "running" or not 1 <= c.replica <= len(svc.replicas):
        return None
    return c.service, c.replica


def _named(action: Action) -> str | None:
    """The name a create or rename gives a container."""
    if isinstance(action, CreateContainer):
        return action.name
    return action.new_name if isinstance(action, RenameContainer) else None


@settings(max_examples=1000, deadline=None)
@given(scenarios())
def test_never_touches_what_it_did_not_observe(
    scenario: tuple[DesiredState, Observed, Holds],
) -> None:
    """Actions name only observed containers, creates and renames take no held name, no slot loses
    its last container, and a running replica goes only once a replacement passed."""
    d, obs, holds = scenario
    p = plan(d, obs, holds)
    by_id = {c.id: c for c in obs.containers}
    holders = {c.name for c in obs.containers}
    created: set[str] = set()
    freed: dict[str, str] = {}
    for step in p.steps:
        a = step.action
        if isinstance(a, StartContainer) and a.id in created:
            assert f"create:{a.id}" in step.after  # started by name after its create
        elif hasattr(a, "id"):
            assert a.id in by_id, a  # no container is stopped, removed ... unless observed
        name = _named(a)
        if name is not None:
            assert name not in created, f"{name} created twice"
            assert name not in holders or freed.get(name) in step.after, f"{a}: name is taken"
            created.add(name)
        if isinstance(a, RemoveContainer | RenameContainer):
            freed[a.name] = step.key
        if isinstance(a, CreateNetwork):
            assert a.spec.name not in {n.name for n in obs.networks}
        if isinstance(a, CreateVolume):
            assert a.spec.name not in {v.name for v in obs.volumes}

    removed = {a.id for a in p.actions if isinstance(a, RemoveContainer)}
    for cid in removed:
        c = by_id[cid]
        slot = _slot_of(d, c)
        if slot is None:
            continue
        kept = [o for o in obs.containers if _slot_of(d, o) == slot and o.id not in removed]
        assert kept, f"{c.name}: the slot's last container is removed"
        if c.state != "running" or ro.is_temp_name(c.name):
            continue  # a replacement that failed, or of a spec since superseded
        # A working replica goes only once a replacement beside it passed (or was tolerated).
        good = {v.container for v in p.verdicts if (v.service, v.replica) == slot}
        good &= {v.container for v in p.verdicts if v.passed or v.tolerated}
        replaced = any(o.id in good and o.state == "running" for o in kept)
        assert replaced, f"{c.name} removed before a replacement passed"


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from([0.0, 0.5, 2.0]))
def test_passes_converge(scenario: tuple[DesiredState, Observed, Holds], step: float) -> None:
    """Pass after pass (time moving to each wake_at, drains recorded) reaches a plan with no
    step and no wake_at, on the file's specs under their own names, nobody left drained."""
    d, obs, holds = scenario
    fixed = {
        name: replace(r, failures=0, mode="paused" if r.mode == "paused" else "normal")
        for name, r in holds.rollouts.items()
    }
    daemon = Daemon(d, obs, now=holds.now, drained=dict(holds.drained), fixed=fixed)
    daemon.settle(rounds=60, step=step)
    final = daemon.observed
    assert daemon.run_pass().actions == ()  # settled means settled
    by_slot: dict[tuple[str, int], list[ObservedContainer]] = {}
    for c in final.containers:
        by_slot.setdefault((c.service, c.replica), []).append(c)
    holders = {c.name: (c.service, c.replica) for c in final.containers}
    wanted = {(s.name, spec.replica) for s in d.services for spec in s.replicas}
    assert set(by_slot) <= wanted, "extra replicas or removed services left"
    for svc in d.services:
        for spec in svc.replicas:
            slot = by_slot.get((svc.name, spec.replica), [])
            if svc.state == "stopped":
                assert all(c.state in ("exited", "created", "dead") for c in slot)
                continue
            if holders.get(spec.name, (svc.name, spec.replica)) != (svc.name, spec.replica):
                continue  # its name is held by a paused service's old replica
            # Containers Docker is restarting are left to Docker: they count as running.
            assert [c.state in ("running", "restarting") for c in slot] == [True], slot
            (c,) = slot
            if c.state == "running":
                assert c.health != "unhealthy"
                in_dns = not spec.networks or spec.network_mode or c.id not in daemon.drained
                assert in_dns, f"{c.name} left out of DNS"
            assert c.name == spec.name  # paused too: a replica serving under another name
            if fixed[svc.name].mode == "normal":
                assert c.spec_hash == spec.spec_hash


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_is_deterministic_and_dependencies_come_first(
    scenario: tuple[DesiredState, Observed, Holds],
) -> None:
    """Same input, same plan; every step comes after the steps it waits on."""
    d, obs, holds = scenario
    p = plan(d, obs, holds)
    assert p == plan(d, obs, holds)
    seen: set[str] = set()
    keys = {s.key for s in p.steps}
    assert len(keys) == len(p.steps)  # one step per key
    for step in p.steps:
        assert (step.after & keys) <= seen
        seen.add(step.key)
    assert all(not isinstance(a, EnsureImage) or a.image in ("x:1", "y:2") for a in p.actions)
    assert p.wake_at is None or p.wake_at > holds.now


def test_update_config_default_is_swarms() -> None:
    """The planner's default rollout is Swarm's update_config: one at a time, stop-first."""
    assert ro.Rollout().config == UpdateConfig(1, 0.0, "stop-first", 5.0, "rollback", 0.0)


def test_scaled_to_zero_replicas_are_stopped_with_the_services_grace() -> None:
    """Scaling a service to 0 leaves no replica spec to read the grace from: it comes from
    the service, not Docker's 10 s default."""
    one = state({"services": {"w": {"image": "w:1", "stop_grace_period": "60s"}}})
    live = converged(one)
    none = state({"services": {"w": {"image": "w:1", "replicas": 0, "stop_grace_period": "60s"}}})
    (remove,) = plan(none, live, Holds(drained={c.id: 0.0 for c in live.containers})).actions
    assert isinstance(remove, RemoveContainer) and remove.grace_s == 60.0


def test_a_missing_external_network_holds_connects_and_names_itself() -> None:
    """The file's network made external under a name that does not exist: nothing is tried
    (a connect would fail every pass), the plan says which network is missing."""
    missing = state(
        {
            "networks": {"net": {"external": True, "name": "nosuchnet"}},
            "volumes": {"data": {}},
            "services": {
                "db": {"image": "db:1", "volumes": ["data:/data"], "networks": ["net"]},
                "web": {"image": "web:1", "replicas": 2, "depends_on": ["db"], "networks": ["net"]},
            },
        }
    )
    p = plan(missing, _CONVERGED, Holds(now=0.0, rollouts=rollouts(missing)))
    assert not [a for a in p.actions if isinstance(a, ConnectNetwork | CreateContainer)], p.actions
    assert any("external nosuchnet not found" in str(n) for n in p.notes), p.notes
