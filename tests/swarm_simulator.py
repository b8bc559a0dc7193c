"""An in-memory model of a swarm: what executing a Swarm plan does to a `SwarmObserved`.

The convergence property in test_swarm_plan.py runs plans against it; the contract test in
test_swarm_sim_contract_docker.py checks it against a real one-node swarm.
"""

from __future__ import annotations

import json

from reconciler.core.swarm_model import (
    CreateService,
    CreateSwarmConfig,
    CreateSwarmNetwork,
    CreateSwarmSecret,
    ObservedObject,
    ObservedService,
    RemoveService,
    RemoveSwarmConfig,
    RemoveSwarmNetwork,
    RemoveSwarmSecret,
    ScaleService,
    SwarmObserved,
    SwarmPlan,
    UpdateService,
)


def simulate(observed: SwarmObserved, the_plan: SwarmPlan, project: str) -> SwarmObserved:
    """What the engine would observe after the plan ran (for the convergence property)."""
    services = {s.name: s for s in observed.services}
    nets = {n.name: n for n in observed.networks}
    configs = {c.name: c for c in observed.configs}
    secrets = {c.name: c for c in observed.secrets}
    for a in the_plan.actions:
        match a:
            case CreateSwarmNetwork(spec=n):
                nets[n.name] = ObservedObject(n.name, f"id-{n.name}", True)
            case CreateSwarmConfig(spec=c):
                configs[c.name] = ObservedObject(c.name, f"id-{c.name}", True)
            case CreateSwarmSecret(spec=c):
                secrets[c.name] = ObservedObject(c.name, f"id-{c.name}", True)
            case RemoveSwarmSecret(name=n):
                secrets.pop(n, None)
            case CreateService(taken_by=holder) if holder:
                pass  # the name is someone else's: the create fails, nothing changes
            case CreateService(spec=s) | UpdateService(spec=s):
                spec = s.spec
                old = services.get(s.full_name)  # its spec becomes PreviousSpec: still in use
                services[s.full_name] = ObservedService(
                    id=f"id-{s.full_name}",
                    name=s.full_name,
                    version=old.version + 1 if old else 1,
                    labels=tuple(sorted(spec.get("Labels", {}).items())),
                    spec_json=s.spec_json,
                    configs_in_use=_in_use(s.configs, old, "Configs"),
                    secrets_in_use=_in_use(s.secrets, old, "Secrets"),
                )
            case ScaleService(name=n, spec_json=body):
                services[n] = ObservedService(
                    id=services[n].id,
                    name=n,
                    version=services[n].version + 1,
                    labels=services[n].labels,
                    spec_json=body,
                    configs_in_use=services[n].configs_in_use,
                    secrets_in_use=services[n].secrets_in_use,
                )
            case RemoveService(name=n):
                services.pop(n, None)
            case RemoveSwarmConfig(name=n):
                configs.pop(n, None)
            case RemoveSwarmNetwork(name=n):
                nets.pop(n, None)
    return SwarmObserved(
        tuple(services.values()),
        tuple(nets.values()),
        tuple(configs.values()),
        tuple(secrets.values()),
    )


def _in_use(new: tuple[str, ...], old: ObservedService | None, kind: str) -> tuple[str, ...]:
    """Configs (secrets) a service uses after an update: its new spec's, and the replaced
    spec's, which Swarm keeps as PreviousSpec for a rollback."""
    if old is None:
        return new
    refs = json.loads(old.spec_json).get("TaskTemplate", {}).get("ContainerSpec", {}).get(kind)
    previous = {r.get(f"{kind[:-1]}Name", "") for r in refs or ()}
    return tuple(sorted({*new, *previous} - {""}))
