"""Crash loops on Swarm, judged from a service's task list (Swarm restarts failed tasks itself,
so the host's back-off counter is not there to read): a slot whose last tasks failed, several
within a short window, and that runs nothing now is crash-looping. Pure; the engine gathers
the `TaskEnd`s (engine/swarm/engine.py), targets/swarm/crashloops.py tells of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

WINDOW_S = 120.0  # failures further apart than this are no loop
LEAST = 3  # failed tasks in a row (Swarm keeps 5 per slot by default: task history limit)
FAILED = ("failed", "rejected")


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """One task of a service as the loop judgement needs it: its slot (replica number, or
    node for a global service), when its status last changed (epoch s), its state, exit code
    and Swarm's error text."""

    slot: str
    at: float
    state: str
    exit_code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Loop:
    """A crash-looping slot: how many tasks failed in a row, the last one's code and error."""

    slot: str
    failures: int
    exit_code: int | None
    error: str

    def text(self) -> str:
        code = "?" if self.exit_code is None else str(self.exit_code)
        why = f": {self.error}" if self.error else ""
        return (
            f"slot {self.slot}: {self.failures} tasks failed in a row, last exit code {code}{why}"
        )


def looping(tasks: Iterable[TaskEnd], now: float, window_s: float = WINDOW_S) -> tuple[Loop, ...]:
    """The slots whose newest task is not running and whose last `LEAST` tasks all failed,
    the newest within `window_s` of `now`, each within `window_s` of the next."""
    slots: dict[str, list[TaskEnd]] = {}
    for t in tasks:
        slots.setdefault(t.slot, []).append(t)
    out = []
    for slot, ts in sorted(slots.items()):
        ts.sort(key=lambda t: t.at, reverse=True)
        if ts[0].state in ("running", "starting"):
            continue  # it runs now (a new task past its failures)
        run = [t for t in ts if t.state not in ("new", "pending", "assigned", "accepted",
                                                 "preparing", "ready")]  # fmt: skip
        failed: list[TaskEnd] = []
        for t in run:
            if t.state not in FAILED or (failed and failed[-1].at - t.at > window_s):
                break
            failed.append(t)
        if len(failed) >= LEAST and now - failed[0].at <= window_s:
            last = failed[0]
            out.append(Loop(slot, len(failed), last.exit_code, last.error))
    return tuple(out)
