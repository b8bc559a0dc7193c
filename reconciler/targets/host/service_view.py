"""Pure views of one service within a project's desired and observed state, and how a
step's result reads: what the controller plans one service from. No I/O, no state.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.actions import CreateContainer
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.targets.host.executor import StepResult


def containers_of(observed: Observed, service: str) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in observed.containers if c.service == service)


def outside(observed: Observed, service: str) -> dict[str, str]:
    """Names and ids of the other services' containers (names are shared by the engine)."""
    return {c.name: c.id for c in observed.containers if c.service != service}


def without_project_objects(observed: Observed) -> Observed:
    """For one service's plan: orphaned networks and volumes are the resync's to report."""
    return replace(observed, project_networks=frozenset(), project_volumes=frozenset())


def restrict(desired: DesiredState, svc: ServiceSpec) -> DesiredState:
    """The desired state of one service: it and the networks and volumes it uses."""
    nets = {a.network for c in svc.replicas for a in c.networks}
    vols = {v for c in svc.replicas for v in c.volumes}
    return replace(
        desired,
        networks=tuple(n for n in desired.networks if n.name in nets),
        volumes=tuple(v for v in desired.volumes if v.name in vols),
        services=(svc,),
    )


def ready(desired: DesiredState, observed: Observed) -> frozenset[str]:
    """What a dependent's start waits for (`ready_token`s): services whose every replica
    runs (`web`), runs healthy or without a healthcheck (`web:healthy`), exited 0
    (`web:completed`)."""
    seen = {c.name: c for c in observed.containers}
    out: set[str] = set()
    for s in desired.services:
        mine = [seen.get(c.name) for c in s.replicas]
        if all(c is not None and c.state == "running" for c in mine):
            out.add(s.name)
            if all(c is not None and c.health in (None, "healthy") for c in mine):
                out.add(f"{s.name}:healthy")
        if all(c is not None and c.state == "exited" and c.exit_code == 0 for c in mine):
            out.add(f"{s.name}:completed")
    return frozenset(out)


def image_gone(r: StepResult) -> bool:
    """A create Docker refused because its image is not there (removed since it was made
    present): the image is made present again; the spec is not at fault."""
    return (
        r.outcome == "error"
        and isinstance(r.action, CreateContainer)
        and "No such image" in (r.error or "")
    )


def keys_of(name: str) -> tuple[str, ...]:
    """The healing book's keys for one replica (its start or restart, its create)."""
    return (f"container:{name}", f"create:{name}")
