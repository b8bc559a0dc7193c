"""An in-memory model of the engine: what executing a plan does to an `Observed`.

The contract test in test_converge_docker.py checks it against the real engine, so
the planner properties proved against it hold for Docker too. `Daemon` adds what the
runtime keeps between passes (the clock, drains, rollout records), so that properties can
run pass after pass without Docker.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from reconciler.core import rollout as ro
from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DrainContainer,
    EnsureImage,
    Plan,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.desired import ContainerSpec, DesiredState, ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer, ObservedNetwork, ObservedVolume
from reconciler.core.planner import Holds, plan

_ids = itertools.count(1)


_HEALTHCHECKED: set[str] = set()  # spec hashes of specs with a healthcheck

Failure = Literal["exited", "unhealthy"]


class NameConflict(Exception):
    """Docker's 409: a container of that name exists."""


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


def fail(c: ObservedContainer, how: Failure) -> ObservedContainer:
    """A container of a bad spec, failing: it exits (code 1), or runs unhealthy."""
    if how == "exited":
        return replace(c, state="exited", exit_code=1, health=None)
    return replace(c, state="running", health="unhealthy")


def simulate(
    observed: Observed,
    plan: Plan,
    project: str = "",
    now: float = 0.0,
    *,
    failing: Mapping[str, Failure] | None = None,
) -> Observed:
    """Apply every step of `plan` to `observed`, as the engine would when all succeed.

    `failing`: spec hashes whose containers fail as soon as they are started. A create or
    rename to a name that exists raises NameConflict, as Docker refuses it.
    """
    failing = failing or {}
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
                if action.name in containers:
                    raise NameConflict(f"create {action.name}: the name is taken")
                mode = spec.network_mode or ""
                owner = containers.get(mode.removeprefix("container:"))
                target = owner.id if mode.startswith("container:") and owner else ""
                c = container_from(spec, target)  # created, started by a later step
                containers[action.name] = replace(c, name=action.name, state="created", health=None)
            case StartContainer(name=n) | RestartContainer(name=n) | UnpauseContainer(name=n):
                c = containers[n]
                hc = c.spec_hash in _HEALTHCHECKED
                c = replace(
                    c,
                    state="running",
                    health="healthy" if hc else None,
                    exit_code=None,
                    started_at=now,
                )
                how = failing.get(c.spec_hash)
                containers[n] = fail(c, how) if how else c
            case RenameContainer(name=n, new_name=new):
                if new in containers:
                    raise NameConflict(f"rename {n} to {new}: the name is taken")
                containers[new] = replace(containers.pop(n), name=new)
            case DrainContainer():
                pass  # aliases are not observed: the drain is the runtime's `drained` record
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


@dataclass
class Daemon:
    """The runtime's loop without Docker: target, plan, simulate, then its bookkeeping
    (`drained` by `rollout.drained_after`, records by `rollout.record_pass`), clock injected.

    `fixed`: services planned with this rollout instead of their record (records untouched).
    `failing`: spec hash -> (how, after how many seconds of running) for bad revisions.
    """

    desired: DesiredState
    observed: Observed = field(default_factory=Observed)
    now: float = 0.0
    drained: dict[str, float] = field(default_factory=dict)
    records: dict[str, ro.RolloutRecord] = field(default_factory=dict)
    fixed: Mapping[str, ro.Rollout] = field(default_factory=dict)
    failing: dict[str, tuple[Failure, float]] = field(default_factory=dict)
    events: list[ro.RolloutEvent] = field(default_factory=list)

    def target(self, svc: ServiceSpec) -> tuple[ServiceSpec, ro.Mode, ro.RolloutRecord]:
        record = ro.refresh(self.records.get(svc.name, ro.RolloutRecord()), svc)
        target, mode = ro.target(svc, record)
        return target, mode, record

    def run_pass(self) -> Plan:
        """One pass: plan against the targets, apply every step, update the bookkeeping."""
        targets = {s.name: self.target(s) for s in self.desired.services}
        rollouts = {}
        for svc in self.desired.services:
            _, mode, record = targets[svc.name]
            rollouts[svc.name] = self.fixed.get(svc.name) or ro.rollout_for(svc, record, mode)
        planned = replace(self.desired, services=tuple(t for t, _, _ in targets.values()))
        holds = Holds(now=self.now, drained=dict(self.drained), rollouts=rollouts)
        the_plan = plan(planned, self.observed, holds)
        before = self.observed
        at_once = {h: how for h, (how, after) in self.failing.items() if after <= 0}
        self.observed = simulate(before, the_plan, now=self.now, failing=at_once)
        drain_s = {s.name: s.drain_s for s in self.desired.services}
        self.drained = ro.drained_after(
            self.drained,
            [(a, True) for a in the_plan.actions],
            drain_s,
            self.now,
            alive={c.id for c in self.observed.containers},
        )
        for svc in self.desired.services:
            if svc.name in self.fixed:
                continue
            target, mode, record = targets[svc.name]
            record, events = ro.record_pass(
                record, svc, target, mode, the_plan.verdicts, (), before.containers, self.now
            )
            self.records[svc.name] = record
            self.events += events
        return the_plan

    def advance(self, seconds: float) -> None:
        """Let time pass: containers of failing specs fail once they ran long enough."""
        self.now += seconds
        aged = tuple(self._aged(c) for c in self.observed.containers)
        self.observed = replace(self.observed, containers=aged)

    def _aged(self, c: ObservedContainer) -> ObservedContainer:
        bad = self.failing.get(c.spec_hash)
        if bad is None or c.state != "running" or c.health == "unhealthy" or c.started_at is None:
            return c
        how, after = bad
        return fail(c, how) if self.now >= c.started_at + after else c

    def restart(self) -> None:
        """The daemon restarts: what it kept in memory (drains) is gone, records are kept."""
        self.drained = {}

    def settle(self, rounds: int = 200, step: float = 0.0) -> Plan:
        """Pass after pass (time jumps to the plan's wake_at when it has nothing to do) until
        a plan has no step and no wake_at; AssertionError if `rounds` passes do not suffice."""
        for _ in range(rounds):
            the_plan = self.run_pass()
            if not the_plan.steps and the_plan.wake_at is None:
                return the_plan
            if the_plan.steps:
                self.advance(step)
            else:
                assert the_plan.wake_at is not None
                self.advance(the_plan.wake_at - self.now)
        raise AssertionError(f"not settled after {rounds} passes: {the_plan}")
