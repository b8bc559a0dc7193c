"""What the replicas' runs were: when each started and exited, as Docker's `start` and `die`
events said (the daemon), else from one inspect each. The controller asks it for a
service's exited replicas and its replacements being judged; fast heals for one death.
One record serves all three, so an exit reaches the healing book with one finish time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from reconciler.core import rollout as ro
from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.core.healing import LastRun
from reconciler.core.observed import ObservedContainer
from reconciler.engine.host.engine import Engine


@dataclass(frozen=True, slots=True)
class Exit:
    """What Docker's `die` event says of a replica: name, spec-hash label, exit code, when."""

    name: str
    spec_hash: str
    exit_code: int | None
    at: float

    @classmethod
    def of(cls, attrs: Mapping[str, str], at: float) -> Exit:
        code = attrs.get("exitCode", "")
        exit_code = int(code) if code.lstrip("-").isdigit() else None
        return cls(attrs.get("name", ""), attrs.get(LABEL_SPEC_HASH, ""), exit_code, at)


class Runs:
    """Starts and exits from the events (any thread), and per service (each touched by its
    own worker only) the last runs and start times used, remembered."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._run_starts: dict[str, float] = {}  # container id -> its last `start` event
        self._exits: dict[str, Exit] = {}  # container id -> its last `die` event
        self._ooms: dict[str, float] = {}  # container id -> its last `oom` event
        # Per service: exited container id -> its last run; replacement id -> when it started.
        self._last_runs: dict[str, dict[str, LastRun]] = {}
        self._started: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ events

    def note_started(self, container_id: str, at: float) -> None:
        """A container of the project started (its `start` event)."""
        with self._lock:
            self._run_starts[container_id] = at

    def note_died(self, container_id: str, exit: Exit) -> None:
        """A container of the project died (its `die` event)."""
        with self._lock:
            self._exits[container_id] = exit

    def note_oom(self, container_id: str, at: float) -> None:
        """The kernel's OOM killer hit a container of the project (its `oom` event, which
        Docker sends before the `die`)."""
        with self._lock:
            self._ooms[container_id] = at

    def _oom(self, container_id: str, began: float, exit: Exit) -> bool:
        with self._lock:
            at = self._ooms.get(container_id)
        return at is not None and began <= at <= exit.at + 1.0

    def forget(self, container_id: str) -> None:
        """A container of the project was removed."""
        with self._lock:
            self._run_starts.pop(container_id, None)
            self._exits.pop(container_id, None)
            self._ooms.pop(container_id, None)

    def of_exit(self, container_id: str, exit: Exit | None) -> LastRun | None:
        """The run a `die` event ended, when its `start` was seen too (else None)."""
        with self._lock:
            began = self._run_starts.get(container_id)
        if exit is not None and began is not None and began <= exit.at:
            return LastRun(began, exit.at, exit.exit_code, self._oom(container_id, began, exit))
        return None

    # ------------------------------------------------------------------ one service

    def _event_run(self, c: ObservedContainer) -> LastRun | None:
        """The last run of an exited container as its events told it, when they agree with
        what the list says (its exit code); None when events are missing (`apply`, a
        container that exited before the daemon watched)."""
        with self._lock:
            began, exit = self._run_starts.get(c.id), self._exits.get(c.id)
        if began is None or exit is None or began > exit.at:
            return None
        if None not in (c.exit_code, exit.exit_code) and c.exit_code != exit.exit_code:
            return None
        return LastRun(began, exit.at, exit.exit_code, self._oom(c.id, began, exit))

    def restarted(self, service: str, container_id: str) -> None:
        """The controller started this replica: its last run is over (an exit seen from now
        on is a new one)."""
        self._last_runs.get(service, {}).pop(container_id, None)
        with self._lock:
            self._exits.pop(container_id, None)

    def with_start_times(
        self, service: str, containers: tuple[ObservedContainer, ...]
    ) -> tuple[ObservedContainer, ...]:
        """Replacements being judged need their start time (their `start` event, else one
        inspect each; remembered)."""
        known = self._started.setdefault(service, {})  # only this service's worker uses it
        out = []
        for c in containers:
            if ro.is_temp_name(c.name) and c.state != "created":
                if c.id not in known:
                    with self._lock:
                        at = self._run_starts.get(c.id)
                    if at is None:
                        at = self.engine.started_at(c.id)
                    if at is not None:
                        known[c.id] = at
                c = replace(c, started_at=known.get(c.id))
            out.append(c)
        live = {c.id for c in containers}
        for cid in [k for k in known if k not in live]:
            del known[cid]
        return tuple(out)

    def last_runs(
        self, service: str, containers: tuple[ObservedContainer, ...]
    ) -> dict[str, LastRun]:
        """Last runs of exited replicas: from their events, else one inspect per exit (in
        parallel when a mass failure left many), remembered while the container stays exited
        (the run first used for an exit stays the one its back-off counts)."""
        known = self._last_runs.setdefault(service, {})  # only this service's worker uses it
        down = [c for c in containers if c.state in ("exited", "dead")]
        down_ids = {c.id for c in down}
        for cid in [k for k in known if k not in down_ids]:
            del known[cid]  # started again, or gone
        missing = []
        for c in down:
            if c.id not in known:
                run = self._event_run(c)
                if run is None:
                    missing.append(c.id)
                else:
                    known[c.id] = run
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                found = dict(zip(missing, pool.map(self.engine.last_run, missing), strict=True))
        else:
            found = {cid: self.engine.last_run(cid) for cid in missing}
        known.update({cid: run for cid, run in found.items() if run is not None})
        return {c.name: known[c.id] for c in down if c.id in known}
