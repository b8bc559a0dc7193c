"""Crash loops on Swarm as the host tells them: the `crash_loop` condition (firing when a
service's tasks start failing in a row, resolved when none does), the metric
reconciler_crashloop_replicas, and the status line. The judgement is core.swarm_crashloop's,
on the task lists the adapter reads each pass (SwarmTarget.export)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

from reconciler.core.events import Event, Record, discard
from reconciler.core.swarm_crashloop import Loop, looping
from reconciler.core.swarm_model import SwarmService
from reconciler.engine.swarm.engine import TaskCounts
from reconciler.ops.metrics import Metrics


def loops_of(
    services: Iterable[SwarmService], counts: Mapping[str, TaskCounts], now: float
) -> dict[str, tuple[Loop, ...]]:
    """Per service of the file, its crash-looping slots (none: left out)."""
    out = {}
    for svc in services:
        c = counts.get(svc.full_name)
        found = looping(c.ended, now) if c is not None else ()
        if found:
            out[svc.name] = found
    return out


def status_lines(loops: Mapping[str, tuple[Loop, ...]]) -> list[str]:
    """`  worker: CrashLoopBackOff (slot 1: 4 tasks failed in a row, last exit code 1: ...)`"""
    return [
        f"  {name}: CrashLoopBackOff ({'; '.join(loop.text() for loop in found)})"
        for name, found in sorted(loops.items())
    ]


class SwarmCrashLoops:
    """Per service: the slots crash-looping at the last look, and what that fires."""

    def __init__(
        self,
        record: Record = discard,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.record = record
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._looping: dict[str, tuple[Loop, ...]] = {}

    def look(self, services: Iterable[SwarmService], counts: Mapping[str, TaskCounts]) -> None:
        """One look at the services' tasks (those of `services` only)."""
        services = list(services)
        now = loops_of(services, counts, self.clock())
        if self.metrics is not None:
            sizes = {name: len(found) for name, found in now.items()}
            self.metrics.set_crashloop(sizes, [s.name for s in services])
        for svc in services:
            found = now.get(svc.name, ())
            with self._lock:
                before = self._looping.get(svc.name, ())
                self._looping[svc.name] = found
            if found and not before:
                last = found[0]
                self.record(
                    Event(
                        "crash_loop",
                        service=svc.name,
                        trigger="swarm",
                        message=f"{svc.name}'s tasks keep failing ({last.text()}); Swarm "
                        "restarts them (its restart_policy)",
                        replica=f"{svc.full_name}.{last.slot}",
                        cause=last.error or f"exit code {last.exit_code}",
                        result="firing",
                    )
                )
            elif before and not found:
                self.record(
                    Event(
                        "crash_loop",
                        service=svc.name,
                        trigger="swarm",
                        message=f"{svc.name}'s tasks stopped crash-looping",
                        result="resolved",
                    )
                )
