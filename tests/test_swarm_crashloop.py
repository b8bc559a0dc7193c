"""Crash loops on Swarm (pure): which slots loop by their task lists, and the condition,
metric and status line told of them as the host tells its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from reconciler.core.events import Event
from reconciler.core.swarm_crashloop import TaskEnd, looping
from reconciler.core.swarm_model import SwarmService
from reconciler.engine.swarm.engine import TaskCounts, task_end
from reconciler.ops.metrics import Metrics
from reconciler.targets.swarm.crashloops import SwarmCrashLoops, loops_of, status_lines

NOW = 1000.0


def _failed(slot: str, at: float, code: int = 1) -> TaskEnd:
    return TaskEnd(slot, at, "failed", code, f"task: non-zero exit ({code})")


def test_a_slot_whose_last_tasks_failed_in_a_row_loops() -> None:
    loop = [_failed("1", NOW - 5), _failed("1", NOW - 12), _failed("1", NOW - 19)]
    pending = TaskEnd("1", NOW - 1, "ready")
    (found,) = looping([*loop, pending], NOW)
    assert (found.slot, found.failures, found.exit_code) == ("1", 3, 1)
    assert "3 tasks failed in a row, last exit code 1" in found.text()
    assert looping([*loop, TaskEnd("1", NOW, "running")], NOW) == ()  # it runs again
    assert looping(loop[:2], NOW) == ()  # two are no loop yet
    assert looping(loop, NOW + 600) == ()  # long ago
    ok = TaskEnd("1", NOW - 30, "shutdown")
    assert looping([loop[0], loop[1], ok], NOW) == ()  # a replaced task breaks the row
    assert looping([*loop, TaskEnd("2", NOW, "running")], NOW)[0].slot == "1"


def test_the_task_of_swarm_becomes_a_task_end() -> None:
    t = {
        "Slot": 2,
        "Status": {
            "Timestamp": "2026-01-02T03:04:05.123456789Z",
            "State": "failed",
            "Err": "task: non-zero exit (1)",
            "ContainerStatus": {"ExitCode": 1},
        },
    }
    end = task_end(t)
    assert (end.slot, end.state, end.exit_code, end.error) == (
        "2",
        "failed",
        1,
        "task: non-zero exit (1)",
    )
    assert round(end.at, 3) == 1767323045.123


def test_a_crash_loop_fires_once_sets_the_metric_and_resolves() -> None:
    seen: list[Event] = []
    metrics = Metrics(CollectorRegistry(), process=False)
    loops = SwarmCrashLoops(seen.append, metrics, clock=lambda: NOW)
    svc = SwarmService(name="worker", full_name="p_worker", spec_json="{}", spec_hash="h")
    ends = (_failed("1", NOW - 5), _failed("1", NOW - 12), _failed("1", NOW - 19))
    bad = {"p_worker": TaskCounts(1, 0, 0, ended=ends)}
    loops.look([svc], bad)
    loops.look([svc], bad)
    sample = metrics.registry.get_sample_value
    assert sample("reconciler_crashloop_replicas", {"service": "worker"}) == 1
    assert status_lines(loops_of([svc], bad, NOW)) == [
        "  worker: CrashLoopBackOff (slot 1: 3 tasks failed in a row, last exit code 1: "
        "task: non-zero exit (1))"
    ]
    good = {"p_worker": TaskCounts(1, 1, 1, ended=(TaskEnd("1", NOW, "running"), *ends))}
    loops.look([svc], good)
    assert [(e.kind, e.result) for e in seen] == [
        ("crash_loop", "firing"),
        ("crash_loop", "resolved"),
    ]
    assert seen[0].cause == "task: non-zero exit (1)"
    assert sample("reconciler_crashloop_replicas", {"service": "worker"}) == 0
