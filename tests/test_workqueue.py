"""The keyed work queue: dedup, one worker per key, re-run after a mid-flight add, delays."""

from __future__ import annotations

import threading

import pytest

from reconciler.runtime.workqueue import ShutDown, WorkQueue


def test_a_key_added_twice_waits_once() -> None:
    """Adding a queued key again does not queue it twice."""
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert [q.get(), q.get()] == ["a", "b"]
    assert q.pending() == {"a", "b"}  # both processing
    q.done("a")
    q.done("b")
    assert q.idle()


def test_a_key_is_never_handed_out_twice_at_once_and_runs_again_after() -> None:
    """A key added while a worker has it is held back, then handed out once more after done."""
    q = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add("a")  # while processing
    q.add("b")
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(q.get()), daemon=True)
    t.start()
    t.join(60)
    assert got == ["b"]  # "a", queued first, is not handed to a second worker meanwhile
    q.done("a")
    assert q.get() == "a"


def test_add_after_keeps_the_earliest_due_time() -> None:
    """Of several delayed adds of one key the earliest wins; an immediate add beats them all."""
    q = WorkQueue()
    q.add_after("a", 300.0)
    q.add_after("a", 0.05)
    q.add_after("a", 600.0)
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(q.get()), daemon=True)
    t.start()
    t.join(60)  # generous: only the 0.05 s request can have been served by now
    assert got == ["a"]
    q.done("a")
    q.add_after("b", 60.0)
    q.add("b")
    assert q.get() == "b"


def test_shutdown_wakes_waiting_workers() -> None:
    """A worker blocked in get() returns once the queue is shut down."""
    q = WorkQueue()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            q.get()
        except ShutDown as exc:
            errors.append(exc)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    q.shut_down()
    t.join(5)
    assert len(errors) == 1
    with pytest.raises(ShutDown):
        q.get()


def test_a_delayed_add_survives_an_immediate_one() -> None:
    """A key queued now and asked for again later comes back later too (the re-check)."""
    q = WorkQueue()
    q.add("a")
    q.add_after("a", 0.05)
    assert q.get() == "a"
    q.done("a")
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(q.get()), daemon=True)
    t.start()
    t.join(60)
    assert got == ["a"]
