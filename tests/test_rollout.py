"""Rollouts, pure: the record the runtime keeps (record_pass), drains, and a state machine
of one service edited, judged, rolled back and restarted under an injected clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from reconciler.config import loader as desired
from reconciler.core import rollout as ro
from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    DrainContainer,
    EnsureImage,
    RemoveContainer,
    SlotVerdict,
    StartContainer,
    StopContainer,
)
from reconciler.core.desired import DesiredState, NetworkAttachment, ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.planner import Holds, plan
from tests.simulator import Daemon, Failure, simulate

SERVICE = "web"


def state(
    revision: int,
    replicas: int = 2,
    update: dict[str, Any] | None = None,
    rollback: dict[str, Any] | None = None,
    healthcheck: bool = False,
    drain: str = "3s",
) -> DesiredState:
    """One service; `revision` changes its containers (an environment variable)."""
    svc: dict[str, Any] = {
        "image": "app:1",
        "replicas": replicas,
        "networks": ["net"],
        "environment": {"REVISION": str(revision)},
        "drain_period": drain,
        "deploy": {"update_config": update or {}, "rollback_config": rollback or {}},
    }
    if healthcheck:
        svc["healthcheck"] = {"test": "true", "interval": "1s", "retries": 1}
    doc = {"version": 1, "project": "p", "networks": {"net": {}}, "services": {SERVICE: svc}}
    return desired.parse(yaml.safe_dump(doc), source="s.yaml", base_dir=Path("/srv"))


def web(d: DesiredState) -> ServiceSpec:
    return d.service(SERVICE)


def mine(obs: Observed) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in obs.containers if c.service == SERVICE)


def converged_daemon(d: DesiredState) -> Daemon:
    daemon = Daemon(d)
    daemon.settle()
    return daemon


def verdict(container: str, passed: bool, tolerated: bool = False) -> SlotVerdict:
    return SlotVerdict(SERVICE, 1, container, passed, "" if passed else "boom", tolerated)


# ----------------------------------------------------------------- record_pass

V1, V2 = state(1), state(2)
STABLE = ro.RolloutRecord(stable_revision=web(V1).revision, stable=web(V1).replicas)


def record(
    rec: ro.RolloutRecord,
    d: DesiredState,
    containers: tuple[ObservedContainer, ...],
    verdicts: tuple[SlotVerdict, ...] = (),
    failures: tuple[tuple[Any, str], ...] = (),
    now: float = 0.0,
) -> tuple[ro.RolloutRecord, list[tuple[str, str]]]:
    """record_pass for the target the record gives; the events as (kind, reason)."""
    svc = web(d)
    target, mode = ro.target(svc, ro.refresh(rec, svc))
    rec, events = ro.record_pass(rec, svc, target, mode, verdicts, failures, containers, now)
    assert all(e.service == SERVICE for e in events)
    return rec, [(e.kind, e.reason) for e in events]


def test_first_convergence_makes_the_spec_stable_without_events() -> None:
    """A service converged for the first time is the stable spec; no rollout happened."""
    containers = mine(converged_daemon(V1).observed)
    rec, events = record(ro.RolloutRecord(), V1, containers)
    assert rec.stable_revision == web(V1).revision and rec.stable == web(V1).replicas
    assert events == []
    assert record(ro.RolloutRecord(), V1, containers[:1])[0].stable == ()  # one replica short


def test_a_rollout_starts_completes_and_becomes_stable() -> None:
    """Another spec in a slot starts a rollout (once); converged on it, it completes."""
    old = mine(converged_daemon(V1).observed)
    rec, events = record(STABLE, V2, old)
    assert events == [("started", "")] and rec.rolling_revision == web(V2).revision
    assert record(rec, V2, old)[1] == []  # not twice
    new = mine(converged_daemon(V2).observed)
    rec, events = record(rec, V2, new)
    assert events == [("completed", "")]
    assert rec.stable_revision == web(V2).revision and not rec.rolling_revision


def test_scaling_up_is_not_a_rollout() -> None:
    """A missing replica is created, not rolled out: no event, no rolling revision."""
    one = mine(converged_daemon(state(1, replicas=1)).observed)
    rec, events = record(STABLE, V1, one)
    assert events == [] and not rec.rolling_revision


def test_passed_verdict_sets_the_batch_time() -> None:
    """The delay before the next batch counts from the last replacement that passed."""
    old = mine(converged_daemon(V1).observed)
    rec, _ = record(STABLE, V2, old, (verdict("n1", True),), now=42.0)
    assert rec.last_batch_at == 42.0


def test_tolerated_failure_is_counted_once() -> None:
    """A tolerated replacement is judged again while its old replica drains: one failure."""
    old = mine(converged_daemon(V1).observed)
    failed = (verdict("n1", False, tolerated=True),)
    rec, events = record(STABLE, V2, old, failed)
    rec, again = record(rec, V2, old, failed)
    assert rec.failures == ("n1",) and again == []
    assert [k for k, _ in events] == ["started", "failure"] and "tolerated" in events[1][1]


def test_failure_past_the_ratio_rolls_back_to_the_stable_spec() -> None:
    """failure_action rollback holds the revision as failed; target() gives the stable replicas
    back, under the rollback config."""
    old = mine(converged_daemon(V1).observed)
    rec, events = record(STABLE, V2, old, (verdict("n1", False),))
    assert [k for k, _ in events] == ["started", "failure", "rolled_back"]
    assert rec.failed_revision == web(V2).revision and rec.failed_reason == "boom"
    assert rec.rolling_revision == web(V1).revision  # rolling back
    target, mode = ro.target(web(V2), rec)
    assert mode == "rolled_back" and target.replicas == web(V1).replicas
    assert ro.rollout_for(web(V2), rec, mode).config == web(V2).rollback
    rec, events = record(rec, V2, old)
    assert events == [("rollback_completed", "")] and not rec.rolling_revision
    assert rec.failed_revision == web(V2).revision  # held until the file changes again
    assert ro.target(web(state(3)), ro.refresh(rec, web(state(3))))[1] == "normal"


def test_the_return_of_a_rollback_is_never_a_completed_rollout() -> None:
    """A rollback's return to the stable revision ends as `rollback_completed` (counted and
    recorded as the rollback's end), also when the file goes back to what runs meanwhile:
    nothing was rolled out (review: completed 1 and rolled_back 1 for one failed update)."""
    old = mine(converged_daemon(V1).observed)
    rolled, _ = record(STABLE, V2, old, (verdict("n1", False),))
    rec, events = record(rolled, V1, old)  # the file is reverted to what runs
    assert events == [("rollback_completed", "")] and not rec.rolling_revision
    assert rec.stable_revision == web(V1).revision
    rec, events = record(rec, V2, old)  # the held revision released: a real rollout again
    assert events == [("started", "")]
    new = mine(converged_daemon(V2).observed)
    assert record(rec, V2, new)[1] == [("completed", "")]


def test_failure_with_pause_or_nothing_to_roll_back_to_pauses() -> None:
    """failure_action pause, or rollback without a stable spec: the rollout pauses."""
    old = mine(converged_daemon(V1).observed)
    paused_v2 = state(2, update={"failure_action": "pause"})
    for rec0, d in ((STABLE, paused_v2), (ro.RolloutRecord(), V2)):
        rec, events = record(rec0, d, old, (verdict("n1", False),))
        assert events[-1][0] == "paused" and rec.paused_revision == web(d).revision
        assert ro.target(web(d), rec)[1] == "paused"
        assert not rec.rolling_revision


def test_a_failed_rollback_pauses_on_the_stable_spec() -> None:
    """A rollback is never rolled back: when it fails too, it pauses on the stable spec."""
    old = mine(converged_daemon(V1).observed)
    rec, _ = record(STABLE, V2, old, (verdict("n1", False),))
    new = mine(converged_daemon(V2).observed)  # the rollback replaces these ...
    rec, events = record(rec, V2, new, (verdict("n2", False),))  # ... and fails
    assert events[-1][0] == "paused" and "rollback failed" in events[-1][1]
    target, mode = ro.target(web(V2), rec)
    assert mode == "paused" and target.replicas == web(V1).replicas
    assert ro.rollout_for(web(V2), rec, mode).config == web(V2).rollback


def test_a_failure_outside_a_rollout_is_only_reported() -> None:
    """A dead replica's replacement failing on the stable spec changes no revision."""
    live = mine(converged_daemon(V1).observed)
    rec, events = record(STABLE, V1, live, (verdict("n1", False),))
    assert [k for k, _ in events] == ["failure"]
    assert not rec.failed_revision and not rec.paused_revision


def test_refused_replacements_count_each_time() -> None:
    """Docker refusing a replacement's create counts as a failure every time it happens."""
    d = state(2, update={"max_failure_ratio": 0.5})  # one failure of two tolerated
    old = mine(converged_daemon(V1).observed)
    spec = web(d).replicas[0]
    create = CreateContainer(spec, "spec changed", ro.temp_name(spec))
    rec, events = record(STABLE, d, old, failures=((create, "no such image"),), now=1.0)
    assert len(rec.failures) == 1 and not rec.failed_revision
    assert "refused: no such image (tolerated)" in events[-1][1]
    rec, events = record(rec, d, old, failures=((create, "no such image"),), now=2.0)
    assert rec.failed_revision == web(d).revision and events[-1][0] == "rolled_back"
    image = EnsureImage(SERVICE, "app:1", "missing")
    rec, _ = record(STABLE, d, old, failures=((image, "pull failed"),) * 2, now=3.0)
    assert rec.failed_revision == web(d).revision
    start = StartContainer("x", "p-web-1", SERVICE, "exited")  # healing, not the rollout
    assert record(STABLE, d, old, failures=((start, "boom"),) * 2)[0].failures == ()


def test_a_revision_with_tolerated_failures_does_not_become_stable() -> None:
    """Completed with tolerated failures: reported, but not a spec to roll back to."""
    old = mine(converged_daemon(V1).observed)
    rec, _ = record(STABLE, V2, old, (verdict("n1", False, tolerated=True),))
    new = mine(converged_daemon(V2).observed)
    rec, events = record(rec, V2, new)
    assert events == [("completed", "with 1 tolerated failure")]
    assert record(rec, V2, new)[0].stable_revision == web(V1).revision


def test_tolerated_counts_failures_of_earlier_passes_and_of_this_one() -> None:
    """max_failure_ratio x replicas failures are tolerated, whichever pass they come in."""
    cfg = ro.Rollout(config=replace(ro.Rollout().config, max_failure_ratio=0.29))
    assert ro.tolerated(replace(cfg, failures=28), 100)  # 29 of 100: float-safe
    assert not ro.tolerated(replace(cfg, failures=28), 100, earlier=1)
    assert ro.tolerated(replace(cfg, failures=29, failed=frozenset({"c"})), 100, "c")
    assert not ro.tolerated(ro.Rollout(), 4)  # ratio 0
    continue_ = replace(cfg.config, failure_action="continue")
    assert ro.tolerated(ro.Rollout(config=continue_, failures=100), 1)


# ----------------------------------------------------------------- drains


def test_drained_after_starts_periods_and_forgets_what_serves_again() -> None:
    """Drains start their period; removed, rejoined (no reconnect refused) and unobserved
    containers are forgotten."""
    net = NetworkAttachment("net", ("web",))
    results = [
        (DrainContainer("a", "p-web-1", SERVICE, ("net",), "replaced"), True),
        (DrainContainer("b", "p-gone-1", "gone", ("net",), "removed"), True),
        (DrainContainer("c", "p-web-3", SERVICE, ("net",), "replaced"), False),
        (RemoveContainer("d", "p-web-4", SERVICE, "replaced"), True),
        (ConnectNetwork("e", "p-web-5", SERVICE, net, reconnect=True), True),
        (ConnectNetwork("f", "p-web-6", SERVICE, net, reconnect=True), True),
        (ConnectNetwork("f", "p-web-6", SERVICE, replace(net, network="n2")), False),
        (StopContainer("g", "p-web-7", SERVICE), True),
    ]
    before = {"d": 1.0, "e": 1.0, "f": 1.0, "g": 1.0, "h": 1.0}
    after = ro.drained_after(before, results, {SERVICE: 2.0}, 10.0)
    assert after == {"a": 12.0, "b": 10.0 + ro.DEFAULT_DRAIN_S, "f": 1.0, "g": 1.0, "h": 1.0}
    assert ro.drained_after(before, [], {}, 10.0, alive={"e"}) == {"e": 1.0}


def test_without_forgetting_a_rejoined_replica_it_would_be_reconnected_forever() -> None:
    """The rejoin of a drained replica is planned while it is recorded as drained."""
    daemon = converged_daemon(V1)
    cid = next(c.id for c in daemon.observed.containers)
    daemon.drained = {cid: 0.0}
    rejoin = daemon.run_pass()
    assert [type(a) for a in rejoin.actions] == [ConnectNetwork]
    assert daemon.drained == {} and not daemon.run_pass()


# ----------------------------------------------------------------- the state machine

UPDATE = st.fixed_dictionaries(
    {
        "parallelism": st.integers(0, 3),
        "delay": st.sampled_from(["0s", "2s"]),
        "order": st.sampled_from(["stop-first", "start-first"]),
        "monitor": st.sampled_from(["0s", "2s", "5s"]),
        "failure_action": st.sampled_from(["rollback", "pause", "continue"]),
        "max_failure_ratio": st.sampled_from([0, 0.5]),
    }
)
ROLLBACK = st.fixed_dictionaries(
    {
        "parallelism": st.integers(0, 2),
        "order": st.sampled_from(["stop-first", "start-first"]),
        "monitor": st.sampled_from(["0s", "2s"]),
        "failure_action": st.sampled_from(["pause", "continue"]),
    }
)


class Rollouts(RuleBasedStateMachine):
    """One service of N replicas under a random update config: the file is edited to good
    and bad revisions (a bad one's containers exit or turn unhealthy once started), time
    passes, passes run (recording verdicts as the runtime will), the daemon restarts."""

    daemon: Daemon

    @initialize(
        replicas=st.integers(1, 4),
        update=UPDATE,
        rollback=ROLLBACK,
        healthcheck=st.booleans(),
        drain=st.sampled_from(["0s", "1s", "3s"]),
    )
    def start(
        self,
        replicas: int,
        update: dict[str, Any],
        rollback: dict[str, Any],
        healthcheck: bool,
        drain: str,
    ) -> None:
        self.keys = {
            "replicas": replicas,
            "update": update,
            "rollback": rollback,
            "healthcheck": healthcheck,
            "drain": drain,
        }
        self.revision = 0
        self.bad: set[str] = set()  # spec hashes of bad revisions
        self.good: set[str] = set()  # service revisions that run well
        self.daemon = converged_daemon(self.state(0, good=True))
        assert self.record().stable_revision == web(self.daemon.desired).revision
        self.last_plan = self.daemon.run_pass()

    def state(self, revision: int, good: bool) -> DesiredState:
        d = state(revision, **self.keys)
        if good:
            self.good.add(web(d).revision)
        return d

    def record(self) -> ro.RolloutRecord:
        return self.daemon.records.get(SERVICE, ro.RolloutRecord())

    # --- rules

    @rule(
        kind=st.sampled_from(["good", "bad", "bad", "revert"]),
        how=st.sampled_from(["exited", "unhealthy"]),
        late=st.booleans(),
    )
    def edit(self, kind: str, how: Failure, late: bool) -> None:
        """The file changes the service: to a new revision, good or bad, or back to the
        first one (it ran well)."""
        if kind == "revert":
            self.daemon.desired = self.state(0, good=True)
            return
        self.revision += 1
        d = self.state(self.revision, kind == "good")
        self.daemon.desired = d
        if kind == "bad":
            if not self.keys["healthcheck"]:
                how = "exited"  # without a healthcheck nothing turns unhealthy
            monitor = float(self.keys["update"]["monitor"].removesuffix("s"))
            # A bad replica fails at once, or later but within its monitor.
            after = monitor / 2 if late and monitor else 0.0
            for spec in web(d).replicas:
                self.bad.add(spec.spec_hash)
                self.daemon.failing[spec.spec_hash] = (how, after)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.daemon.advance(seconds)

    @precondition(lambda self: self.last_plan.wake_at is not None)
    @rule()
    def wake(self) -> None:
        """Time moves to when the last plan asked to be looked at again."""
        assert self.last_plan.wake_at is not None
        self.daemon.advance(max(0.0, self.last_plan.wake_at - self.daemon.now))

    @rule()
    def run_pass(self) -> None:
        self.last_plan = self.daemon.run_pass()

    @rule()
    def restart(self) -> None:
        """The daemon restarts: drains in memory are lost, the record is kept."""
        self.daemon.restart()

    # --- invariants

    def slots(self) -> dict[int, list[ObservedContainer]]:
        out: dict[int, list[ObservedContainer]] = {i: [] for i in range(1, self.replicas + 1)}
        for c in mine(self.daemon.observed):
            out.setdefault(c.replica, []).append(c)
        return out

    @property
    def replicas(self) -> int:
        return int(self.keys["replicas"])

    @invariant()
    def names_are_unique(self) -> None:
        names = [c.name for c in self.daemon.observed.containers]
        assert len(names) == len(set(names))

    @invariant()
    def no_replica_is_lost(self) -> None:
        """Every slot keeps its replica, or its replacement beside it."""
        for replica, containers in self.slots().items():
            assert containers, f"replica {replica} lost"
            assert 1 <= replica <= self.replicas

    @invariant()
    def at_most_parallelism_replicas_down_for_the_rollout(self) -> None:
        """Slots without a running container, not counting bad replicas kept on purpose
        (tolerated failures crash-looping): never more than a batch."""
        down = [
            replica
            for replica, containers in self.slots().items()
            if not any(c.state == "running" for c in containers)
            and not any(c.spec_hash in self.bad and not ro.is_temp_name(c.name) for c in containers)
        ]
        batch = max(
            self.keys["update"]["parallelism"] or self.replicas,
            self.keys["rollback"]["parallelism"] or self.replicas,
        )
        assert len(down) <= batch, (down, batch)

    def teardown(self) -> None:
        """Left alone, a good revision converges; a bad one ends rolled back to the stable
        spec or paused, never with every replica on it (unless failure_action continue)."""
        if not hasattr(self, "daemon"):
            return
        daemon = self.daemon
        settled = False
        for _ in range(400):
            the_plan = daemon.run_pass()
            self.names_are_unique()
            self.no_replica_is_lost()
            self.at_most_parallelism_replicas_down_for_the_rollout()
            if not the_plan.steps and the_plan.wake_at is None:
                settled = True
                break
            wait = the_plan.wake_at - daemon.now if the_plan.wake_at and not the_plan.steps else 0
            daemon.advance(max(wait, 0.5))
        svc = web(daemon.desired)
        rec = ro.refresh(self.record(), svc)
        target, mode = ro.target(svc, rec)
        containers = mine(daemon.observed)
        if svc.revision in self.good:
            assert settled, "a good revision did not converge"
            assert mode == "normal" and ro.converged(target, containers), (mode, containers)
            assert rec.stable_revision == svc.revision
            return
        if self.keys["update"]["failure_action"] == "continue":
            return
        assert mode in ("rolled_back", "paused"), mode
        assert not all(c.spec_hash in self.bad for c in containers), "every replica is bad"
        kinds = {e.kind for e in daemon.events if e.revision == svc.revision}
        assert kinds & {"rolled_back", "paused"}
        if mode == "rolled_back":
            assert rec.stable and rec.stable_revision in self.good
            assert settled and ro.converged(target, containers), containers


Rollouts.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRollouts = Rollouts.TestCase


def test_a_bad_revision_is_rolled_back_step_by_step() -> None:
    """A bad revision's first replacement exits and is removed, and the old replica rejoins DNS,
    starts again and stays (rolled back)."""
    daemon = converged_daemon(V1)
    old = {c.name: c.id for c in daemon.observed.containers}
    daemon.desired = V2
    for spec in web(V2).replicas:
        daemon.failing[spec.spec_hash] = ("exited", 0.0)
    seen: list[str] = []
    for _ in range(50):
        p = daemon.run_pass()
        seen += [f"{a.verb} {getattr(a, 'name', '')}" for a in p.actions if a.kind == "container"]
        if not p.steps and p.wake_at is None:
            break
        daemon.advance(p.wake_at - daemon.now if p.wake_at and not p.steps else 0.0)
    temp = ro.temp_name(web(V2).replicas[0])
    assert seen == [
        f"create {temp}",
        "drain p-web-1",
        "stop p-web-1",
        f"start {temp}",
        f"remove {temp}",
        "connect p-web-1",
        "start p-web-1",
    ]
    assert {c.name: c.id for c in daemon.observed.containers} == old
    kinds = [e.kind for e in daemon.events]
    assert kinds == ["started", "failure", "rolled_back", "rollback_completed"]
    assert ro.target(web(V2), daemon.records[SERVICE])[1] == "rolled_back"
    assert not plan(V1, daemon.observed, Holds(now=daemon.now))


def test_a_kept_tolerated_failure_does_not_stall_the_rollout() -> None:
    """A tolerated failure is kept even as it crash-loops and the rollout goes on, until a failure
    past the ratio rolls back."""
    d = state(2, update={"max_failure_ratio": 0.5}, drain="0s")
    daemon = converged_daemon(state(1, drain="0s"))
    daemon.desired = d
    for spec in web(d).replicas:
        daemon.failing[spec.spec_hash] = ("exited", 0.0)
    for _ in range(100):
        p = daemon.run_pass()
        if not p.steps and p.wake_at is None:
            break
        daemon.advance(p.wake_at - daemon.now if p.wake_at and not p.steps else 0.5)
    kinds = [e.kind for e in daemon.events]
    assert kinds == ["started", "failure", "failure", "rolled_back", "rollback_completed"]
    target, mode = ro.target(web(d), daemon.records[SERVICE])
    assert mode == "rolled_back" and ro.converged(target, mine(daemon.observed))


def test_simulated_start_of_a_bad_spec_fails() -> None:
    """The engine model: a failing spec exits (or turns unhealthy) as soon as it starts."""
    d = state(1, replicas=1)
    spec = web(d).replicas[0]
    p = plan(d, Observed())
    (c,) = simulate(Observed(), p, failing={spec.spec_hash: "exited"}).containers
    assert (c.state, c.exit_code) == ("exited", 1)
    (c,) = simulate(Observed(), p, failing={spec.spec_hash: "unhealthy"}).containers
    assert (c.state, c.health) == ("running", "unhealthy")


# ----------------------------------------------------------------- review findings


def test_an_unhealthy_replica_holds_the_next_batch_back() -> None:
    """While one replica on the file's spec is unhealthy, no healthy one is taken away."""
    d1 = state(1, replicas=3, healthcheck=True)
    live = converged_daemon(d1).observed
    d2 = state(2, replicas=3, healthcheck=True)
    # Replica 3 already runs revision 2 but is unhealthy; 1 and 2 run revision 1, healthy.
    new3 = next(s for s in web(d2).replicas if s.replica == 3)
    sick = tuple(
        replace(c, spec_hash=new3.spec_hash, health="unhealthy") if c.replica == 3 else c
        for c in live.containers
    )
    p = plan(d2, replace(live, containers=sick), Holds(now=100.0, unhealthy_due=frozenset()))
    assert not [a for a in p.actions if isinstance(a, CreateContainer)]
    assert any("to serve again (unhealthy)" in n for n in p.notes), p.notes


def test_an_unhealthy_replica_of_the_old_spec_is_replaced_at_once() -> None:
    """A replica that does not serve (unhealthy, old spec) is replaced outside the budget;
    the healthy one waits until its replacement is up."""
    d1 = state(1, replicas=2, healthcheck=True)
    live = converged_daemon(d1).observed
    sick = tuple(replace(c, health="unhealthy") if c.replica == 2 else c for c in live.containers)
    d2 = state(2, replicas=2, healthcheck=True)
    p = plan(d2, replace(live, containers=sick), Holds(now=100.0, unhealthy_due=frozenset()))
    created = [a for a in p.actions if isinstance(a, CreateContainer)]
    assert {a.spec.replica for a in created} == {2}


def test_a_replacement_waiting_for_a_name_another_service_holds_does_not_stall_the_rest() -> None:
    """Replica 1's replacement serves, its old one is gone, but its name is held by a container
    of another service (which may keep it forever): the rollout goes on with replica 2."""
    d1 = state(1, replicas=2)
    live = converged_daemon(d1).observed
    d2 = state(2, replicas=2)
    one, two = sorted(web(d2).replicas, key=lambda s: s.replica)
    squatter = replace(
        next(c for c in live.containers if c.replica == 1),
        id="squatter",
        service="other",
        spec_hash="x",
    )
    containers = tuple(
        replace(c, id="new1", name=ro.temp_name(one), spec_hash=one.spec_hash)
        if c.replica == 1 and c.service == SERVICE
        else c
        for c in live.containers
    )
    p = plan(d2, replace(live, containers=(*containers, squatter)), Holds(now=100.0))
    created = [a for a in p.actions if isinstance(a, CreateContainer)]
    assert [a.spec.replica for a in created] == [two.replica]


def test_a_rollback_never_keeps_replicas_on_the_held_revision() -> None:
    """Scaled up and changed in one edit, then rolled back: the rollback is the stable spec
    whole, so the added replica goes rather than running the failed revision."""
    bigger_bad = state(2, replicas=4)
    rec = replace(STABLE, failed_revision=web(bigger_bad).revision, failed_reason="boom")
    target, mode = ro.target(web(bigger_bad), rec)
    assert mode == "rolled_back"
    assert target.replicas == STABLE.stable  # 2 replicas, revision 1
    smaller = state(2, replicas=1)
    rec = replace(STABLE, failed_revision=web(smaller).revision, failed_reason="boom")
    assert ro.target(web(smaller), rec)[0].replicas == STABLE.stable[:1]


def test_continue_completes_the_rollout_with_its_tolerated_failures() -> None:
    """failure_action continue: once every replica runs the new spec (crash-looping), the
    rollout is over and counted, and the failing revision does not become stable."""
    d = state(2, update={"failure_action": "continue"})
    new = mine(converged_daemon(d).observed)
    sick = tuple(replace(c, state="exited", exit_code=1) for c in new)
    rec = replace(STABLE, rolling_revision=web(d).revision, failures=("a", "b"))
    rec, events = record(rec, d, sick)
    assert [k for k, _ in events] == ["completed"] and "2 tolerated" in events[0][1]
    assert rec.stable_revision == STABLE.stable_revision and not rec.rolling_revision
