"""Rollouts as pure decisions: which revision a service converges on, and how a new replica
is judged. The clock is passed in; nothing here does I/O.

Swarm's updater semantics (swarmkit `manager/orchestrator/update/updater.go`): replicas are
replaced `parallelism` at a time, `delay` apart, each watched for `monitor`; a failure counts
against `max_failure_ratio` and past it `failure_action` decides: roll back to the last
revision that ran healthy (kept in a `RolloutRecord` that outlives the daemon), pause, or
continue. A revision that failed is held until the file changes the service again, and a
rollback is never rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from reconciler.core.model import (
    DEFAULT_UPDATE,
    ContainerSpec,
    ObservedContainer,
    ServiceSpec,
    UpdateConfig,
)

Mode = Literal["normal", "rolled_back", "paused"]
TEMP_SEPARATOR = "_"


def temp_name(spec: ContainerSpec) -> str:
    """The name a replacement is created under, as compose does, until the old one is gone."""
    return f"{spec.spec_hash[:12]}{TEMP_SEPARATOR}{spec.name}"


def is_temp_name(name: str) -> bool:
    prefix, sep, _ = name.partition(TEMP_SEPARATOR)
    return bool(sep) and len(prefix) == 12 and all(ch in "0123456789abcdef" for ch in prefix)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """What the daemon keeps per service across restarts (in its state directory)."""

    stable_revision: str = ""  # the last revision every replica ran healthy
    stable: tuple[ContainerSpec, ...] = ()  # its replica specs: what a rollback returns to
    rolling_revision: str = ""  # a rollout of this revision is under way
    failed_revision: str = ""  # held: not tried again until the file changes the service
    failed_reason: str = ""
    paused_revision: str = ""
    paused_reason: str = ""
    failures: tuple[str, ...] = ()  # failed new replicas (container ids/names) of this rollout
    last_batch_at: float = 0.0  # when the last replaced replica passed its monitor


@dataclass(frozen=True, slots=True)
class Rollout:
    """The rollout facts the planner needs for one service this pass."""

    mode: Mode = "normal"
    config: UpdateConfig = DEFAULT_UPDATE
    failures: int = 0
    last_batch_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["pending", "passed", "failed"]
    reason: str = ""
    recheck_at: float | None = None  # pending: when to look again at the latest


def refresh(record: RolloutRecord, svc: ServiceSpec) -> RolloutRecord:
    """Forget a failed or paused revision once the file asks for another one."""
    if record.failed_revision and record.failed_revision != svc.revision:
        record = replace(record, failed_revision="", failed_reason="", failures=())
    if record.paused_revision and record.paused_revision != svc.revision:
        record = replace(record, paused_revision="", paused_reason="", failures=())
    return record


def target(svc: ServiceSpec, record: RolloutRecord) -> tuple[ServiceSpec, Mode]:
    """The service spec to converge on now: the file's, or the stable one after a failure."""
    if record.failed_revision == svc.revision and record.stable:
        stable = record.stable
        replicas = tuple(
            stable[i] if i < len(stable) else spec for i, spec in enumerate(svc.replicas)
        )
        image = replicas[0].image if replicas else svc.image
        rolled = replace(svc, replicas=replicas, image=image, revision=record.stable_revision)
        return rolled, "rolled_back"
    if record.paused_revision == svc.revision or record.failed_revision == svc.revision:
        return svc, "paused"
    return svc, "normal"


def rollout_for(svc: ServiceSpec, record: RolloutRecord, mode: Mode) -> Rollout:
    config = svc.rollback if mode == "rolled_back" else svc.update
    return Rollout(mode, config, len(record.failures), record.last_batch_at)


def tolerated(rollout: Rollout, replicas: int) -> bool:
    """Whether one more failed replica stays within max_failure_ratio."""
    if rollout.config.failure_action == "continue":
        return True
    return rollout.failures + 1 <= rollout.config.max_failure_ratio * max(replicas, 1)


def judge(spec: ContainerSpec, new: ObservedContainer, config: UpdateConfig, now: float) -> Verdict:
    """Has a started replacement proven itself? It fails when it exits, turns unhealthy, or is
    not running (healthy, with a healthcheck) within start period + interval x retries + monitor.
    """
    if new.state in ("exited", "dead", "restarting", "removing"):
        code = f" with code {new.exit_code}" if new.exit_code is not None else ""
        return Verdict("failed", f"new replica {new.state}{code}")
    if new.health == "unhealthy":
        return Verdict("failed", "new replica unhealthy")
    hc = spec.healthcheck if spec.healthcheck and spec.healthcheck.test != ("NONE",) else None
    started = new.started_at if new.started_at is not None else now
    monitor_end = started + config.monitor_s
    window = config.monitor_s + (hc.start_period_s + hc.interval_s * hc.retries if hc else 0.0)
    deadline = started + window
    ok = new.state == "running" and (hc is None or new.health == "healthy")
    if ok and now >= monitor_end:
        return Verdict("passed")
    if now >= deadline:
        what = "healthy" if hc else "running"
        return Verdict("failed", f"new replica not {what} within {window:g}s")
    return Verdict("pending", recheck_at=monitor_end if now < monitor_end else deadline)


def converged(svc: ServiceSpec, containers: tuple[ObservedContainer, ...]) -> bool:
    """Every replica runs the spec, under its own name, healthy where it has a healthcheck."""
    by_name = {c.name: c for c in containers}
    if len(containers) != len(svc.replicas):
        return False
    for spec in svc.replicas:
        c = by_name.get(spec.name)
        if c is None or c.spec_hash != spec.spec_hash or c.state != "running":
            return False
        if c.health not in (None, "healthy"):
            return False
    return True


def updated_count(svc: ServiceSpec, containers: tuple[ObservedContainer, ...]) -> int:
    """Replicas already on the target spec (for `rolling out 2/3`)."""
    wanted = {(s.name, s.spec_hash) for s in svc.replicas}
    return sum(1 for c in containers if (c.name, c.spec_hash) in wanted)
