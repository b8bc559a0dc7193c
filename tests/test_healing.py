"""Crash-loop and error back-off bookkeeping, with an explicit clock."""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.desired import HealPolicy
from reconciler.core.healing import TRANSIENT_MAX_S, HealingBook, LastRun
from reconciler.core.observed import Observed, ObservedContainer
from tests.test_planner import state

D = state(
    {
        "services": {
            "w": {
                "image": "w:1",
                "heal": {"min_uptime": "10s", "backoff_initial": "1s", "backoff_max": "8s"},
            }
        }
    }
)
C = ObservedContainer("id1", "p-w-1", "w", 1, "h", "exited", exit_code=1)
OBS = Observed(containers=(C,))


def quick_exits(book: HealingBook, count: int, start: float = 1000.0) -> list[float]:
    """Let the replica exit `count` times, 0.5 s after each start; return each hold's delay."""
    delays = []
    t = start
    for _ in range(count):
        run = LastRun(t, t + 0.5, 1)
        holds = book.holds(D, OBS, {"p-w-1": run}, t + 0.5)
        entry = book.backoffs.get("container:p-w-1")
        delays.append((entry.not_before - (t + 0.5)) if entry else 0.0)
        assert ("container:p-w-1" in holds.held) == (delays[-1] > 0)
        t = max(t + 0.5, entry.not_before if entry else t) + 0.01
    return delays


def test_first_quick_exit_heals_at_once_then_doubles_up_to_the_cap() -> None:
    """0, 1, 2, 4, 8, 8: Docker's doubling rule, capped at backoff_max."""
    assert quick_exits(HealingBook(), 6) == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_long_run_resets_the_backoff() -> None:
    """A replica that ran longer than min_uptime before failing is healed at once."""
    book = HealingBook()
    quick_exits(book, 4)
    long_run = LastRun(5000.0, 5020.0, 1)
    holds = book.holds(D, OBS, {"p-w-1": long_run}, 5020.0)
    assert not holds.held
    assert quick_exits(book, 2, start=6000.0) == [0.0, 1.0]


def test_removed_replica_starts_over() -> None:
    """A removed replica is recreated at once and its back-off forgotten."""
    book = HealingBook()
    quick_exits(book, 4)
    assert not book.holds(D, Observed(), {}, 2000.0).held
    assert "container:p-w-1" not in book.backoffs


def test_same_exit_is_counted_once() -> None:
    """Observing the same exit in several passes does not grow the back-off."""
    book = HealingBook()
    quick_exits(book, 3)
    before = book.backoffs["container:p-w-1"].failures
    run = LastRun(0, 0, 1)
    entry = book.backoffs["container:p-w-1"]
    run = LastRun(entry.seen_finish - 0.5, entry.seen_finish, 1)
    book.holds(D, OBS, {"p-w-1": run}, entry.seen_finish + 0.1)
    assert book.backoffs["container:p-w-1"].failures == before


def test_unhealthy_grace_defaults_to_one_interval() -> None:
    """Unhealthy is due only once it has stayed unhealthy for one health interval."""
    d = state(
        {"services": {"w": {"image": "w:1", "healthcheck": {"test": "true", "interval": "5s"}}}}
    )
    sick = Observed(containers=(replace(C, state="running", health="unhealthy"),))
    book = HealingBook()
    assert book.holds(d, sick, {}, 100.0).unhealthy_due == frozenset()
    assert book.holds(d, sick, {}, 104.0).unhealthy_due == frozenset()
    assert book.holds(d, sick, {}, 105.0).unhealthy_due == {"p-w-1"}


def test_failed_actions_back_off_and_clear_on_success() -> None:
    """A refused request waits from its first failure, later and later; a success forgets it."""
    book = HealingBook()
    policy = {"image:w": HealPolicy(backoff_initial_s=1, backoff_max_s=4)}
    book.record_failures([("image:w", "pull failed", False)], [], policy, 0.0)
    assert book.backoffs["image:w"].not_before == 1.0
    for now in (1.0, 2.0, 3.0):
        book.record_failures([("image:w", "pull failed", False)], [], policy, now)
    assert book.backoffs["image:w"].not_before == 3.0 + 4.0
    assert "retry in 4s: pull failed" in book.holds(D, Observed(), {}, 3.5).held["image:w"]
    book.record_failures([], ["image:w"], policy, 8.0)
    assert "image:w" not in book.backoffs


def test_transient_errors_are_retried_at_once_then_capped() -> None:
    """A timeout or a busy engine is retried at once the first time, never beyond the cap."""
    book = HealingBook()
    policy = {"container:x": HealPolicy(backoff_initial_s=1, backoff_max_s=600)}
    book.record_failures([("container:x", "timed out", True)], [], policy, 0.0)
    assert book.backoffs["container:x"].not_before == 0.0
    for now in range(1, 20):
        book.record_failures([("container:x", "timed out", True)], [], policy, float(now))
    assert book.backoffs["container:x"].not_before == 19.0 + TRANSIENT_MAX_S


def test_docker_gets_the_first_turn_with_a_restart_policy() -> None:
    """An exit under `restart: always` is left to Docker for a moment, then healed by us."""
    d = state({"services": {"w": {"image": "w:1", "restart": "always"}}})
    book = HealingBook()
    run = LastRun(100.0, 200.0, 137)
    assert "container:p-w-1" in book.holds(d, OBS, {"p-w-1": run}, 200.2).held
    assert book.next_wakeup(200.2) == 201.0
    assert "container:p-w-1" not in book.holds(d, OBS, {"p-w-1": run}, 201.1).held


def test_on_failure_does_not_restart_a_clean_exit() -> None:
    """on-failure leaves exit code 0 alone, so there is nothing to wait for."""
    d = state({"services": {"w": {"image": "w:1", "restart": "on-failure:3"}}})
    clean = LastRun(100.0, 200.0, 0)
    assert not HealingBook().holds(d, OBS, {"p-w-1": clean}, 200.1).held
