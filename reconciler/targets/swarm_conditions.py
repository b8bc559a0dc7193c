"""A Swarm service's conditions as events (core.events), from Swarm's UpdateStatus: a rollout
rolled back or paused (resolved once an update completes), a completed rollout, and drift
undone (a service scaled or changed by hand, put back). Called by `SwarmTarget` each pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from reconciler.core import swarm_model as sp
from reconciler.core.events import Event, EventKind, Record, discard

UPDATING = ("updating", "rollback_started")
FILE_CHANGED = "the file changed it"  # swarm_plan.drift's reason for an edit, not drift


def condition(state: str) -> EventKind | None:
    """What Swarm's UpdateStatus.State means for us: rolled back, paused, or nothing."""
    if state in ("rollback_started", "rollback_completed"):
        return "rolled_back"
    if state == "paused":  # update_config's failure_action pause
        return "paused"
    if state == "rollback_paused":  # the rollback failed too: held as it is
        return "rollout_failed"
    return None


class SwarmConditions:
    """Per service: the last update state seen and the condition it fires."""

    def __init__(self, record: Record = discard) -> None:
        self.record = record
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._firing: dict[str, EventKind] = {}

    def observed(
        self, services: Iterable[sp.SwarmService], live: Mapping[str, sp.ObservedService]
    ) -> None:
        """One look at the services' update states (those of `services` only)."""
        for svc in services:
            obs = live.get(svc.full_name)
            state = obs.update_state if obs is not None else ""
            with self._lock:
                before = self._states.get(svc.name)
                self._states[svc.name] = state
                firing = self._firing.get(svc.name)
                now = condition(state)
                if now is not None:
                    self._firing[svc.name] = now
                elif state == "completed" or obs is None:
                    self._firing.pop(svc.name, None)
            if state == before:
                continue
            if firing is not None and firing != now and (now or state == "completed"):
                self._emit(firing, svc.name, f"{svc.name}: update {state or 'gone'}", "resolved")
            if now is not None and now != firing:
                text = {
                    "rolled_back": f"Swarm is rolling {svc.name} back: its update failed",
                    "paused": f"Swarm paused the update of {svc.name}",
                    "rollout_failed": f"Swarm paused the rollback of {svc.name}: it failed too",
                }.get(now, state)
                self._emit(now, svc.name, text, "firing")
            if state == "completed" and before in UPDATING:
                self.record(
                    Event(
                        "rollout_completed",
                        service=svc.name,
                        message=f"Swarm completed the update of {svc.name}",
                        trigger="swarm",
                        revision=svc.spec_hash,
                    )
                )

    def _emit(self, kind: EventKind, service: str, text: str, result: str) -> None:
        self.record(
            Event(
                kind,
                service=service,
                message=text,
                trigger="swarm",
                result="firing" if result == "firing" else "resolved",
            )
        )
