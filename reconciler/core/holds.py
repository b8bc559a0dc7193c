"""What the bookkeeping outside the core says about one planning pass (back-offs, drains,
rollouts, the clock): the planner's second input beside desired and observed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core import rollout as ro


@dataclass(frozen=True, slots=True)
class Holds:
    """What the bookkeeping outside the core says about this pass.

    held: action keys not to run now, with the reason (crash-loop or error back-off).
    unhealthy_due: names of unhealthy containers whose grace has run out; None means
        every unhealthy container is due (no grace tracking).
    signalled: container id -> reload-config digest already delivered by a signal.
    now: the time (epoch seconds) monitors, drains and delays are measured against.
    ready: `ready_token`s of the services (`web`: its replicas all run; `web:healthy`,
        `web:completed`); None means order starts inside this plan.
    drained: container id -> when its drain period ends (it has left its DNS aliases).
    rollouts: service -> its rollout (mode, update or rollback config, failures so far).
    outside: container name -> id of containers observed but left out of `observed` (other
        services, in a per-service plan; containers of no project that a `network_mode:
        container:X` names): the owners of network namespaces it joins, and names it must
        not take.
    unhealthy_since: container name -> when it was first seen unhealthy (for the cause).
    absent: `network_mode: container:X` names that are no container of the project and of
        which no container exists: what joins them is blocked (an error, not a wait).
    """

    held: Mapping[str, str] = field(default_factory=dict)
    unhealthy_due: frozenset[str] | None = None
    signalled: Mapping[str, str] = field(default_factory=dict)
    now: float = 0.0
    ready: frozenset[str] | None = None
    drained: Mapping[str, float] = field(default_factory=dict)
    rollouts: Mapping[str, ro.Rollout] = field(default_factory=dict)
    outside: Mapping[str, str] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()
    unhealthy_since: Mapping[str, float] = field(default_factory=dict)  # name -> first seen
    # container id -> reload-config digest its `check` rejected: not checked nor signalled
    # again until the file changes (targets.host.config_checks keeps it)
    rejected: Mapping[str, str] = field(default_factory=dict)


NO_HOLDS = Holds()
