"""A Swarm service's conditions as events (core.events), from Swarm's UpdateStatus: a rollout
rolled back or paused (resolved once an update completes, the file goes back to the spec that
runs, or the service leaves the file), a completed rollout, and drift
undone (a service scaled or changed by hand, put back). Called by `SwarmTarget` each pass.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping

from reconciler.core import swarm_model as sp
from reconciler.core.events import Event, EventKind, Record, discard
from reconciler.ops.firing_memory import AFTER_RESTART, FiringMemory

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
        self._memory: FiringMemory | None = None
        self._carried: set[str] = set()  # firing told by an earlier run of the daemon

    def keep_in(self, memory: FiringMemory) -> None:
        """The daemon: what fires is kept there; what an earlier run left firing is taken
        up again (resolved when it clears)."""
        self._memory = memory
        for key, value in memory.all().items():
            what, _, service = key.partition(":")
            if what == "swarm" and value.get("kind") in ("rolled_back", "paused", "rollout_failed"):
                with self._lock:
                    self._firing[service] = value["kind"]  # type: ignore[assignment]
                    self._carried.add(service)

    def _save(self, service: str) -> None:
        if self._memory is not None:
            kind = self._firing.get(service)
            self._memory.put(f"swarm:{service}", {"kind": kind} if kind else {})

    def observed(
        self,
        services: Iterable[sp.SwarmService],
        live: Mapping[str, sp.ObservedService],
        settled: Collection[str] | None = None,
    ) -> None:
        """One look at the services' update states (those of `services` only). `settled`:
        services whose file spec runs and of which no revision is held (the file went back to
        what Swarm rolled back to): a rollback of theirs is resolved. The first look (the
        daemon's start) fires what Swarm still shows rolled back or paused."""
        for svc in services:
            obs = live.get(svc.full_name)
            state = obs.update_state if obs is not None else ""
            now = condition(state)
            back = state == "rollback_completed" and settled is not None and svc.name in settled
            if back:
                now = None
            with self._lock:
                before = self._states.get(svc.name)
                self._states[svc.name] = state
                firing = self._firing.get(svc.name)
                clears = now is None and (back or state == "completed" or obs is None)
                if now is not None:
                    self._firing[svc.name] = now
                elif clears:
                    self._firing.pop(svc.name, None)
                if firing != self._firing.get(svc.name):
                    self._save(svc.name)
            if firing is not None and firing != now and (now is not None or clears):
                why = "its file spec runs again" if back else f"update {state or 'gone'}"
                self._emit(firing, svc.name, f"{svc.name}: {why}", "resolved")
            again = now is not None and now == firing and condition(before or "") is None
            restarted = before is None and svc.name in self._carried  # told again at start
            if now is not None and (now != firing or (again and before is not None) or restarted):
                text = {
                    "rolled_back": f"Swarm is rolling {svc.name} back: its update failed",
                    "paused": f"Swarm paused the update of {svc.name}",
                    "rollout_failed": f"Swarm paused the rollback of {svc.name}: it failed too",
                }.get(now, state)
                cause = obs.update_message if obs is not None else ""
                self._emit(now, svc.name, text, "firing", cause)
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

    def gone(self, wanted: Iterable[str]) -> None:
        """Services no longer in the file: what they fire is resolved."""
        keep = set(wanted)
        with self._lock:
            left = {n: k for n, k in self._firing.items() if n not in keep}
            for name in left:
                del self._firing[name]
                self._save(name)
            for name in [n for n in self._states if n not in keep]:
                del self._states[name]
        for name, kind in sorted(left.items()):
            self._emit(kind, name, f"{name} left the file", "resolved")

    def _emit(self, kind: EventKind, service: str, text: str, result: str, cause: str = "") -> None:
        data: dict[str, str] = {}
        if result != "firing" and service in self._carried:
            self._carried.discard(service)
            data[AFTER_RESTART] = "yes"
        self.record(
            Event(
                kind,
                service=service,
                message=text,
                trigger="swarm",
                cause=cause,
                result="firing" if result == "firing" else "resolved",
                data=data,
            )
        )
