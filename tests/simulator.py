"""An in-memory model of the engine: what executing a plan does to an `Observed`.

The contract test in test_engine_docker.py checks it against the real engine, so
the planner properties proved against it hold for Docker too.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from reconciler.core.model import (
    ConnectNetwork,
    ContainerSpec,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    EnsureImage,
    Observed,
    ObservedContainer,
    ObservedNetwork,
    ObservedVolume,
    Plan,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)

_ids = itertools.count(1)


_HEALTHCHECKED: set[str] = set()  # spec hashes of specs with a healthcheck


def container_from(spec: ContainerSpec, network_target: str = "") -> ObservedContainer:
    """What observe() reports for a freshly created and started container."""
    if spec.healthcheck and spec.healthcheck.test != ("NONE",):
        _HEALTHCHECKED.add(spec.spec_hash)
    return ObservedContainer(
        id=f"sim{next(_ids):08d}",
        name=spec.name,
        service=spec.service,
        replica=spec.replica,
        spec_hash=spec.spec_hash,
        state="running",
        health="healthy" if spec.healthcheck and spec.healthcheck.test != ("NONE",) else None,
        networks=frozenset(a.network for a in spec.networks)
        if not spec.network_mode
        else frozenset(),
        image=spec.image,
        config_hash=spec.reload_digest,
        network_target=network_target,
    )


def simulate(observed: Observed, plan: Plan, project: str = "", now: float = 0.0) -> Observed:
    """Apply every step of `plan` to `observed`, as the engine would when all succeed."""
    containers = {c.name: c for c in observed.containers}
    networks = {n.name: n for n in observed.networks}
    volumes = {v.name: v for v in observed.volumes}
    project_networks, project_volumes = (
        set(observed.project_networks),
        set(observed.project_volumes),
    )
    for action in plan.actions:
        match action:
            case CreateNetwork(spec=spec):
                networks[spec.name] = ObservedNetwork(spec.name, f"net-{spec.name}", owned=True)
                project_networks.add(spec.name)
            case CreateVolume(spec=spec):
                volumes[spec.name] = ObservedVolume(spec.name, owned=True)
                project_volumes.add(spec.name)
            case EnsureImage():
                pass
            case CreateContainer(spec=spec):
                mode = spec.network_mode or ""
                owner = containers.get(mode.removeprefix("container:"))
                target = owner.id if mode.startswith("container:") and owner else ""
                c = container_from(spec, target)  # created, started by a later step
                containers[action.name] = replace(c, name=action.name, state="created", health=None)
            case StartContainer(name=n) | RestartContainer(name=n) | UnpauseContainer(name=n):
                c = containers[n]
                hc = c.spec_hash in _HEALTHCHECKED
                containers[n] = replace(
                    c,
                    state="running",
                    health="healthy" if hc else None,
                    exit_code=None,
                    started_at=now,
                )
            case RenameContainer(name=n, new_name=new):
                containers[new] = replace(containers.pop(n), name=new)
            case StopContainer(name=n):
                containers[n] = replace(containers[n], state="exited", exit_code=0)
            case ConnectNetwork(name=n, attachment=att):
                c = containers[n]
                containers[n] = replace(c, networks=c.networks | {att.network})
            case SignalContainer(name=n, digest=digest):
                containers[n] = replace(containers[n], config_hash=digest)
            case RemoveContainer(name=n):
                del containers[n]
    return Observed(
        containers=tuple(sorted(containers.values(), key=lambda c: c.name)),
        networks=tuple(networks.values()),
        volumes=tuple(volumes.values()),
        project_networks=frozenset(project_networks),
        project_volumes=frozenset(project_volumes),
    )
