"""A Swarm service's conditions as events (core.events), from Swarm's UpdateStatus: a rollout
rolled back or paused (resolved once an update completes, the file goes back to the spec that
runs, or the service leaves the file), a completed rollout, and drift
undone (a service scaled or changed by hand, put back). Called by `SwarmTarget` each pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping

from reconciler.core import swarm_model as sp
from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.core.events import Event, EventKind, Record, discard
from reconciler.ops.firing_memory import AFTER_RESTART, FiringMemory

UPDATING = ("updating", "rollback_started")
ROLLBACK = ("rollback_started", "rollback_completed", "rollback_paused")
MANUAL = "manually requested rollback"  # Swarm's message for `docker service rollback`
KINDS = ("rolled_back", "paused", "rollout_failed")
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


def _rollback(obs: sp.ObservedService | None) -> str:
    """Which rollback Swarm's status tells of: when it started, and the spec it left."""
    return f"{obs.update_started}|{obs.previous_hash}" if obs is not None else ""


class SwarmConditions:
    """Per service: the last update state seen and the conditions it fires. `revision`: the
    file's digest now (each row's revision, as the host's; the service's is in its data)."""

    def __init__(self, record: Record = discard, revision: Callable[[], str] = str) -> None:
        self.record = record
        self.revision = revision
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._firing: dict[str, EventKind] = {}
        # Conditions fired before the current one and not resolved (a rollback that then
        # paused: still firing, resolved with it; never a success while it got worse).
        self._open: dict[str, set[EventKind]] = {}
        self._settled: dict[str, str] = {}  # service -> the rollback resolved (`_rollback`)
        self._pending: dict[str, tuple[str, str]] = {}  # service -> (hash pushed, its status)
        self._memory: FiringMemory | None = None
        self._carried: set[str] = set()  # firing told by an earlier run of the daemon

    def keep_in(self, memory: FiringMemory) -> None:
        """The daemon: what fires is kept there; what an earlier run left firing is taken
        up again (resolved when it clears)."""
        self._memory = memory
        for key, value in memory.all().items():
            what, _, service = key.partition(":")
            if what == "swarm" and value.get("kind") in KINDS:
                with self._lock:
                    self._firing[service] = value["kind"]  # type: ignore[assignment]
                    also = {k for k in value.get("also", "").split(",") if k in KINDS}
                    if also:
                        self._open[service] = also  # type: ignore[assignment]
                    self._carried.add(service)

    def _save(self, service: str) -> None:
        if self._memory is not None:
            kind = self._firing.get(service)
            also = ",".join(sorted(self._open.get(service, ())))
            value = {"kind": kind, **({"also": also} if also else {})} if kind else {}
            self._memory.put(f"swarm:{service}", value)

    def started(self, service: str, spec_hash: str, obs: sp.ObservedService | None) -> None:
        """We pushed `spec_hash` (a rollout): its completion is told once Swarm's status is
        about it (not the status `obs` showed before the push)."""
        with self._lock:
            self._pending[service] = (spec_hash, obs.update_started if obs is not None else "")

    def observed(
        self,
        services: Iterable[sp.SwarmService],
        live: Mapping[str, sp.ObservedService],
        settled: Collection[str] | None = None,
    ) -> None:
        """One look at the services' update states (those of `services` only). `settled`:
        services whose file spec runs and of which no revision is held (the file went back to
        what Swarm rolled back to): a rollback of theirs is resolved, and never fires again
        (Swarm keeps showing it until its next update). A rollback an operator asked for
        (`docker service rollback`) is drift the planner puts back, not a failed update. The
        first look (the daemon's start) fires what Swarm still shows rolled back or paused."""
        for svc in services:
            obs = live.get(svc.full_name)
            state = obs.update_state if obs is not None else ""
            now = condition(state)
            back = state == "rollback_completed" and settled is not None and svc.name in settled
            manual = obs is not None and state in ROLLBACK and obs.update_message == MANUAL
            which = _rollback(obs)
            stale = now == "rolled_back" and self._settled.get(svc.name) == which
            if back or manual or stale:
                now = None
            with self._lock:
                if back:
                    self._settled[svc.name] = which
                before = self._states.get(svc.name)
                self._states[svc.name] = state
                firing = self._firing.get(svc.name)
                clears = now is None and (back or state == "completed" or obs is None)
                earlier = set(self._open.get(svc.name, ()))
                if now is not None:
                    if firing is not None and firing != now:
                        self._open.setdefault(svc.name, set()).add(firing)
                    self._open.get(svc.name, set()).discard(now)
                    self._firing[svc.name] = now
                elif clears:
                    self._firing.pop(svc.name, None)
                    self._open.pop(svc.name, None)
                if firing != self._firing.get(svc.name) or earlier != self._open.get(svc.name):
                    self._save(svc.name)
            if firing is not None and now is None and clears:
                why = "its file spec runs again" if back else f"update {state or 'gone'}"
                for kind in (firing, *sorted(earlier - {firing})):
                    self._emit(kind, svc, f"{svc.name}: {why}", "resolved")
            again = now is not None and now == firing and condition(before or "") is None
            restarted = before is None and svc.name in self._carried  # told again at start
            if now is not None and (now != firing or (again and before is not None) or restarted):
                text = {
                    "rolled_back": f"Swarm is rolling {svc.name} back: its update failed",
                    "paused": f"Swarm paused the update of {svc.name}",
                    "rollout_failed": f"Swarm paused the rollback of {svc.name}: it failed too",
                }.get(now, state)
                cause = obs.update_message if obs is not None else ""
                self._emit(now, svc, text, "firing", cause, obs)
            self._completed(svc, obs, state, before)

    def _completed(
        self, svc: sp.SwarmService, obs: sp.ObservedService | None, state: str, before: str | None
    ) -> None:
        """`rollout_completed` once Swarm completed the update we pushed (or one we saw)."""
        with self._lock:
            pushed, status_then = self._pending.get(svc.name, ("", ""))
            ours = (
                obs is not None
                and bool(pushed)
                and obs.label(LABEL_SPEC_HASH) == pushed
                and obs.update_started != status_then
            )
            done = state == "completed" and (before in UPDATING or ours)
            if done or obs is None or obs.label(LABEL_SPEC_HASH) != pushed:
                self._pending.pop(svc.name, None)  # told, or another spec took its place
        if done:
            self.record(
                Event(
                    "rollout_completed",
                    service=svc.name,
                    message=f"Swarm completed the update of {svc.name}",
                    trigger="swarm",
                    revision=self.revision()[:12],
                    data={"service_revision": svc.spec_hash[:12]},
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

    def _emit(
        self,
        kind: EventKind,
        svc: sp.SwarmService | str,
        text: str,
        result: str,
        cause: str = "",
        obs: sp.ObservedService | None = None,
    ) -> None:
        """A condition's row: the file's revision, and the service's (the spec a rollback
        concerns: the one Swarm left, as PreviousSpec) in its data."""
        service = svc if isinstance(svc, str) else svc.name
        data: dict[str, str] = {}
        if not isinstance(svc, str):
            rolled = obs.previous_hash if obs is not None and kind == "rolled_back" else ""
            data["service_revision"] = (rolled or svc.spec_hash)[:12]
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
                revision=self.revision()[:12],
                data=data,
            )
        )
