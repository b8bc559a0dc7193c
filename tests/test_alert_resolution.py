"""Alerts that fire and resolve as Alertmanager users expect (review of #19, items 1, 2, 6):
unhealthy restarts back off, a held revision resolves when the file goes back to what runs or
a later rollout completes, a service leaving the file resolves, a restart forgets nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from reconciler.config.notify_config import NotifyConfig
from reconciler.core import rollout as ro
from reconciler.core.desired import ContainerSpec, ServiceSpec
from reconciler.core.events import Event
from reconciler.core.healing import HealingBook, LastRun
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.swarm_model import ObservedService, SwarmService
from reconciler.ops.firing_memory import FiringMemory
from reconciler.ops.notifications import Gate, render
from reconciler.runtime.conditions import DaemonConditions
from reconciler.targets.host.conditions import HostConditions
from reconciler.targets.swarm.conditions import SwarmConditions
from tests.test_planner import state

SICK = state(
    {
        "services": {
            "w": {
                "image": "w:1",
                "healthcheck": {"test": "true", "interval": "1s"},
                "heal": {
                    "min_uptime": "10s",
                    "backoff_initial": "1s",
                    "backoff_max": "8s",
                    "unhealthy_grace": "0s",
                },
            }
        }
    }
)
C = ObservedContainer("id1", "p-w-1", "w", 1, "h", "running", health="unhealthy")


def unhealthy_restarts(book: HealingBook, count: int, t: float = 1000.0) -> list[float]:
    """The replica turns unhealthy 2 s after each restart; each restart's wait."""
    waits = []
    for _ in range(count):
        holds = book.holds(SICK, Observed(containers=(C,)), {}, t)
        assert holds.unhealthy_due == {"p-w-1"}
        entry = book.backoffs["container:p-w-1"]
        waits.append(entry.not_before - t)
        assert ("container:p-w-1" in holds.held) == (waits[-1] > 0)
        restarted = max(t, entry.not_before)  # the restart, once the hold is over
        starting = Observed(containers=(replace(C, health="starting"),))
        book.holds(SICK, starting, {}, restarted + 0.1)
        t = restarted + 2.0
    return waits


def test_unhealthy_restarts_back_off_like_exits_and_fire_crash_loop_with_the_cause() -> None:
    book = HealingBook()
    assert unhealthy_restarts(book, 6) == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert book.backoffs["container:p-w-1"].cause == "unhealthy for 0 s"
    seen: list[Event] = []
    svc = SICK.services[0]
    HostConditions(seen.append).service(svc, ro.RolloutRecord(), {"w": book})
    [fired] = seen
    assert (fired.kind, fired.result, fired.cause) == ("crash_loop", "firing", "unhealthy for 0 s")
    assert fired.message.startswith("p-w-1 keeps failing; restarts wait 8 s")


def test_a_replica_healthy_for_min_uptime_starts_its_back_off_over() -> None:
    book = HealingBook()
    unhealthy_restarts(book, 4)
    healthy = Observed(containers=(replace(C, health="healthy"),))
    book.holds(SICK, healthy, {}, 2000.0)
    book.holds(SICK, healthy, {}, 2030.0)  # 30 s healthy > min_uptime
    assert unhealthy_restarts(book, 2, t=2031.0) == [0.0, 1.0]


# ------------------------------------------------------------------ host rollouts


def spec(rev: str) -> ServiceSpec:
    replica = ContainerSpec(
        name="p-web-1", project="p", service="web", replica=1, image="x", spec_hash=rev
    )
    return ServiceSpec(name="web", image="x", replicas=(replica,), revision=rev)


def running(rev: str) -> tuple[ObservedContainer, ...]:
    return (ObservedContainer("c", "p-web-1", "web", 1, rev, "running"),)


class Episodes:
    """Checks a stream of condition events: per (service, kind), firing (repeats allowed)
    then one resolved; never resolved while not firing."""

    def __init__(self) -> None:
        self.open: set[tuple[str, str]] = set()

    def __call__(self, e: Event) -> None:
        key = (e.service, e.kind)
        if e.result == "firing":
            self.open.add(key)
        elif e.result == "resolved":
            assert key in self.open, f"resolved before firing: {e}"
            self.open.discard(key)


class HostRollouts(RuleBasedStateMachine):
    """File edits, rollouts that fail or complete, looks, daemon restarts (firing.json)."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp())
        self.check = Episodes()
        self.cond = self.new()
        self.file = "r1"
        self.runs = "r1"
        self.record = ro.RolloutRecord(stable_revision="r1", stable=spec("r1").replicas)

    def new(self) -> HostConditions:
        cond = HostConditions(self.check)
        cond.keep_in(FiringMemory("p", self.dir))
        return cond

    @rule(rev=st.sampled_from(["r1", "r2", "r3"]))
    def edit(self, rev: str) -> None:
        self.file = rev
        self.record = ro.refresh(self.record, spec(rev))

    @rule(pause=st.booleans())
    def fail(self, pause: bool) -> None:
        if self.file == self.runs or self.record.failed_revision == self.file:
            return
        if pause:
            self.record = replace(self.record, paused_revision=self.file)
            event = ro.RolloutEvent("web", "paused", self.file, "exited 1")
        else:
            self.record = replace(self.record, failed_revision=self.file)
            event = ro.RolloutEvent("web", "rolled_back", self.file, "unhealthy for 3 s")
        self.cond.rollout_event("web", event, pause_chosen=pause)

    @rule()
    def complete(self) -> None:
        if self.file == self.runs or ro.refresh(self.record, spec(self.file)) != self.record:
            return
        if self.record.failed_revision or self.record.paused_revision:
            return
        self.runs = self.file
        self.cond.rollout_event("web", ro.RolloutEvent("web", "completed", self.file))

    @rule()
    def look(self) -> None:
        self.cond.look(spec(self.file), self.record, running(self.runs))

    @rule()
    def restart(self) -> None:
        self.cond = self.new()

    @invariant()
    def held_fires(self) -> None:
        """While a revision is held, its condition is open in the stream."""
        if self.record.failed_revision == self.file or self.record.paused_revision == self.file:
            self.look()
            assert ("web", "rolled_back") in self.check.open or any(
                k in self.check.open for k in (("web", "paused"), ("web", "rollout_failed"))
            )

    def teardown(self) -> None:
        """The file goes back to what runs: every alert resolves."""
        self.edit(self.runs)
        self.look()
        assert not self.check.open
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


TestHostRollouts = HostRollouts.TestCase
TestHostRollouts.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_a_held_revision_fires_again_after_a_restart_and_resolves_later(tmp_path: Path) -> None:
    seen: list[Event] = []
    held = ro.RolloutRecord(
        stable=spec("r1").replicas, failed_revision="r2", failed_reason="unhealthy for 3 s"
    )
    cond = HostConditions(seen.append)  # a fresh daemon: nothing in memory
    cond.keep_in(FiringMemory("p", tmp_path))
    cond.look(spec("r2"), held, running("r1"))
    cond.look(spec("r2"), held, running("r1"))  # once
    assert [(e.kind, e.result, e.cause) for e in seen] == [
        ("rolled_back", "firing", "unhealthy for 3 s")
    ]
    cond.look(spec("r3"), held, running("r1"))  # a later rollout starts: still firing
    assert len(seen) == 1
    cond.look(spec("r3"), held, running("r3"))  # ... and completes
    assert [(e.kind, e.result) for e in seen][1:] == [("rolled_back", "resolved")]


def test_a_service_that_left_the_file_resolves(tmp_path: Path) -> None:
    seen: list[Event] = []
    cond = HostConditions(seen.append)
    cond.crash_loops("worker", frozenset({"p-worker-1"}), 300.0, "exited 137 (OOM killed)")
    cond.rollout_event("web", ro.RolloutEvent("web", "rolled_back", "r2", "x"))
    cond.gone(["db"])
    assert [(e.service, e.kind, e.result) for e in seen] == [
        ("worker", "crash_loop", "firing"),
        ("web", "rolled_back", "firing"),
        ("web", "rolled_back", "resolved"),
        ("worker", "crash_loop", "resolved"),
    ]
    assert seen[0].cause == "exited 137 (OOM killed)"


def test_an_alert_of_the_run_before_is_resolved_and_told(tmp_path: Path) -> None:
    """Fired by one run, cleared after a restart: the receiver hears RESOLVED."""
    first = HostConditions()
    first.keep_in(FiringMemory("p", tmp_path))
    first.rollout_event("web", ro.RolloutEvent("web", "rolled_back", "r2", "x"))
    seen: list[Event] = []
    second = HostConditions(seen.append)
    second.keep_in(FiringMemory("p", tmp_path))
    second.look(spec("r3"), ro.RolloutRecord(), running("r3"))  # moved on, r3 runs
    [resolved] = seen
    assert (resolved.kind, resolved.result) == ("rolled_back", "resolved")
    gate = Gate(NotifyConfig(urls=["json://localhost"]), clock=lambda: 0.0)
    assert gate.decide(resolved) == "resolved"
    assert "after_restart" not in render(resolved, "resolved", "p").body
    assert FiringMemory("p", tmp_path).all() == {}


# ------------------------------------------------------------------ Swarm


def swarm(spec_hash: str = "h2") -> SwarmService:
    return SwarmService(name="web", full_name="p_web", spec_json="{}", spec_hash=spec_hash)


def live(state: str, runs: str, message: str = "") -> dict[str, ObservedService]:
    obs = ObservedService(
        id="x",
        name="p_web",
        version=1,
        labels=(("io.reconciler.spec-hash", runs),),
        spec_json="{}",
        update_state=state,
        update_message=message,
    )
    return {"p_web": obs}


def test_swarm_rollback_has_its_cause_and_resolves_when_the_file_goes_back() -> None:
    seen: list[Event] = []
    cond = SwarmConditions(seen.append)
    why = "update rolled back due to failure or early termination of task x"
    cond.observed([swarm("h3")], live("rollback_started", "h3", why), set())
    cond.observed([swarm("h3")], live("rollback_completed", "h2", why), set())
    assert [(e.kind, e.result, e.cause) for e in seen] == [("rolled_back", "firing", why)]
    cond.observed([swarm("h2")], live("rollback_completed", "h2", why), {"web"})  # file: 3 -> 2
    assert [(e.kind, e.result) for e in seen][1:] == [("rolled_back", "resolved")]


def test_swarm_alerts_survive_a_restart_and_a_service_leaving_resolves(tmp_path: Path) -> None:
    first = SwarmConditions()
    first.keep_in(FiringMemory("p", tmp_path))
    first.observed([swarm("h3")], live("rollback_completed", "h2"), set())
    seen: list[Event] = []
    second = SwarmConditions(seen.append)
    second.keep_in(FiringMemory("p", tmp_path))
    second.observed([swarm("h4")], live("updating", "h4"), set())  # the file moved on
    second.observed([swarm("h4")], live("completed", "h4"), {"web"})
    assert [(e.kind, e.result) for e in seen] == [
        ("rolled_back", "resolved"),
        ("rollout_completed", "success"),
    ]
    assert seen[0].data.get("after_restart") == "yes"
    second.observed([swarm("h5")], live("rollback_completed", "h4"), set())
    second.gone([])
    assert [(e.kind, e.result) for e in seen][2:] == [
        ("rolled_back", "firing"),
        ("rolled_back", "resolved"),
    ]


# ------------------------------------------------------------------ reloads, drift text


def test_one_rejected_file_is_one_record() -> None:
    seen: list[Event] = []
    cond = DaemonConditions(seen.append)
    cond.reload_rejected("f.yaml:3: bad", content="c1")
    cond.reload_rejected("f.yaml:3: bad", content="c1")  # read again: same file, same error
    assert len(seen) == 1
    cond.reload_rejected("f.yaml:3: bad", content="c2")  # the file changed
    cond.reload_rejected("f.yaml:4: worse", content="c2")  # the error changed
    assert len(seen) == 3
    cond.reload_accepted("d")
    cond.reload_rejected("f.yaml:3: bad", content="c1")  # rejected again after a good read
    assert [e.result for e in seen][3:] == ["resolved", "firing"]


def test_the_drift_notification_reads_as_a_sentence() -> None:
    event = Event(
        "drift_corrected",
        service="web",
        replica="shop_web",
        cause="drift: scaled to 1 by hand",
        data={"verb": "scale", "object": "service", "name": "shop_web", "diff": "replicas 1 -> 3"},
    )
    body = render(event, "news", "shop").body
    assert body.splitlines() == [
        "shop_web: scaled to 1 by hand; put back as the file says",
        "changes: replicas 1 -> 3",
    ]


def test_a_looping_replica_that_serves_for_min_uptime_ends_its_crash_loop() -> None:
    book = HealingBook()
    unhealthy_restarts(book, 6)
    svc = SICK.services[0]
    seen: list[Event] = []
    cond = HostConditions(seen.append)
    cond.service(svc, ro.RolloutRecord(), {"w": book})
    healthy = Observed(containers=(replace(C, health="healthy"),))
    book.holds(SICK, healthy, {}, 3000.0)
    assert book.next_wakeup(3000.0) == 3010.0  # looked at again once it has served
    book.holds(SICK, healthy, {}, 3010.0)
    cond.service(svc, ro.RolloutRecord(), {"w": book})
    assert [(e.kind, e.result) for e in seen] == [
        ("crash_loop", "firing"),
        ("crash_loop", "resolved"),
    ]


def test_a_fast_heal_exit_between_two_passes_keeps_the_back_off() -> None:
    """Seen running, then (unseen by any pass) exits quickly and is started again: the
    next pass does not take the old running stretch for min_uptime served."""
    book = HealingBook()
    heal = SICK.services[0].heal
    up = Observed(containers=(replace(C, health="healthy"),))
    book.holds(SICK, up, {}, 1000.0)
    for t in (1011.0, 1012.0):  # two quick exits counted by the fast path
        book.exit_hold("p-w-1", LastRun(t - 0.5, t, 1), heal, t)
    book.holds(SICK, up, {}, 1012.5)  # 12.5 s after the first sighting, 0.5 s after the exit
    assert book.backoffs["container:p-w-1"].failures == 2
    book.holds(SICK, up, {}, 1022.0)  # 10 s serving since the last exit: over
    assert "container:p-w-1" not in book.backoffs
