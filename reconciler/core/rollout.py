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

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from reconciler.core.actions import (
    ConnectNetwork,
    CreateContainer,
    DrainContainer,
    EnsureImage,
    HostAction,
    RemoveContainer,
    SlotVerdict,
    StartContainer,
)
from reconciler.core.desired import DEFAULT_UPDATE, ContainerSpec, ServiceSpec, UpdateConfig
from reconciler.core.observed import ObservedContainer

Mode = Literal["normal", "rolled_back", "paused"]
TEMP_SEPARATOR = "_"
IMAGE_HEALTHCHECK_WAIT_S = 90.0  # Docker's defaults: interval 30 s x 3 retries


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
    # What started the rollout under way (`file`, `image`, `git`...): its later steps, and its
    # rollback, say so in the history, after a restart too (targets/host/recording).
    trigger: str = ""
    failed_at: float = 0.0  # when the failed revision was rolled back (0: not known)
    # The rollout under way returns to the stable revision (a rollback): converged, it is the
    # rollback's end, never a completed rollout, even if the file went back to that revision.
    returning: bool = False


@dataclass(frozen=True, slots=True)
class Rollout:
    """The rollout facts the planner needs for one service this pass."""

    mode: Mode = "normal"
    config: UpdateConfig = DEFAULT_UPDATE
    failures: int = 0
    last_batch_at: float = 0.0
    # The failures already counted (RolloutRecord.failures): a replacement judged again on a
    # later pass (its old replica still draining) stays tolerated, it is not counted twice.
    failed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["pending", "passed", "failed"]
    reason: str = ""
    recheck_at: float | None = None  # pending: when to look again at the latest


def refresh(record: RolloutRecord, svc: ServiceSpec) -> RolloutRecord:
    """Forget a failed or paused revision once the file asks for another one."""
    if record.failed_revision and record.failed_revision != svc.revision:
        record = replace(record, failed_revision="", failed_reason="", failed_at=0.0, failures=())
    if record.paused_revision and record.paused_revision != svc.revision:
        record = replace(record, paused_revision="", paused_reason="", failures=())
    return record


def target(svc: ServiceSpec, record: RolloutRecord) -> tuple[ServiceSpec, Mode]:
    """The service spec to converge on now: the file's, or the stable one after a failure.

    A rollback that failed in turn (rollback_config's failure_action pause) stays on the
    stable spec, paused: it is never rolled forward again, nor rolled back.
    """
    if record.failed_revision == svc.revision and record.stable:
        stable = record.stable
        # Swarm's rollback returns to the previous spec whole: replicas the failed edit added
        # have no healthy spec to run, so they go with it (never the held revision).
        replicas = stable[: len(svc.replicas)]
        image = replicas[0].image if replicas else svc.image
        rolled = replace(svc, replicas=replicas, image=image, revision=record.stable_revision)
        return rolled, "paused" if record.paused_revision == svc.revision else "rolled_back"
    if record.paused_revision == svc.revision or record.failed_revision == svc.revision:
        return svc, "paused"
    return svc, "normal"


def rollout_for(svc: ServiceSpec, record: RolloutRecord, mode: Mode) -> Rollout:
    """The planner's view of the rollout; rollback_config applies while the revision is
    failed (rolling back, or paused after the rollback failed too)."""
    rolling_back = mode == "rolled_back" or (
        bool(record.failed_revision) and record.failed_revision == svc.revision
    )
    config = svc.rollback if rolling_back else svc.update
    return Rollout(
        mode, config, len(record.failures), record.last_batch_at, frozenset(record.failures)
    )


def tolerated(rollout: Rollout, replicas: int, container: str = "", earlier: int = 0) -> bool:
    """Whether one more failed replica stays within max_failure_ratio.

    `container`: the failed replacement; one counted on an earlier pass stays tolerated.
    `earlier`: failures judged before it in the same pass (not in `rollout.failures` yet).
    """
    if rollout.config.failure_action == "continue":
        return True
    if container and container in rollout.failed:
        return True
    allowed = rollout.config.max_failure_ratio * max(replicas, 1)
    return rollout.failures + earlier + 1 <= allowed + 1e-9


def judge(
    spec: ContainerSpec,
    new: ObservedContainer,
    config: UpdateConfig,
    now: float,
    job: bool = False,
) -> Verdict:
    """Has a started replacement proven itself? It fails when it exits, turns unhealthy, or is
    not running (healthy, with a healthcheck) within start period + interval x retries + monitor.
    A job's replacement (a service_completed_successfully dependency) passes by exiting 0.
    """
    if job and new.state == "exited" and new.exit_code == 0:
        return Verdict("passed")
    if new.state in ("exited", "dead", "restarting", "removing"):
        code = f" with code {new.exit_code}" if new.exit_code is not None else ""
        return Verdict("failed", f"new replica {new.state}{code}")
    if new.health == "unhealthy":
        return Verdict("failed", "new replica unhealthy")
    hc = spec.healthcheck if spec.healthcheck and spec.healthcheck.test != ("NONE",) else None
    # A HEALTHCHECK of the image itself (none in the file): Docker reports a health too, and
    # a new version whose own check fails must not pass; its timing is unknown here, so the
    # wait is Docker's defaults (interval 30 s x 3 retries).
    image_hc = hc is None and new.health is not None
    started = new.started_at if new.started_at is not None else now
    monitor_end = started + config.monitor_s
    window = config.monitor_s + (hc.start_period_s + hc.interval_s * hc.retries if hc else 0.0)
    window += IMAGE_HEALTHCHECK_WAIT_S if image_hc else 0.0
    deadline = started + window
    gated = hc is not None or image_hc
    ok = new.state == "running" and (not gated or new.health == "healthy")
    if ok and now >= monitor_end:
        return Verdict("passed")
    if now >= deadline:
        what = "healthy" if gated else "running"
        return Verdict("failed", f"new replica not {what} within {window:g}s")
    return Verdict("pending", recheck_at=monitor_end if now < monitor_end else deadline)


def converged(svc: ServiceSpec, containers: tuple[ObservedContainer, ...]) -> bool:
    """Every replica runs the spec, under its own name, healthy where it has a healthcheck."""
    by_name = {c.name: c for c in containers}
    if len(containers) != len(svc.replicas):
        return False
    for spec in svc.replicas:
        c = by_name.get(spec.name)
        if c is None or c.spec_hash != spec.spec_hash:
            return False
        if c.state != "running" and not (svc.job and c.state == "exited" and c.exit_code == 0):
            return False
        if c.health not in (None, "healthy"):
            return False
    return True


def updated_count(svc: ServiceSpec, containers: tuple[ObservedContainer, ...]) -> int:
    """Replicas already on the target spec (for `rolling out 2/3`)."""
    wanted = {(s.name, s.spec_hash) for s in svc.replicas}
    return sum(1 for c in containers if (c.name, c.spec_hash) in wanted)


def rolling(svc: ServiceSpec, containers: Iterable[ObservedContainer]) -> bool:
    """Some container in a slot of `svc` (a replica, or a replacement beside it) was created
    from another spec than the slot's: a rollout is under way. A missing, down or dead replica
    on its spec is healing, not a rollout."""
    specs = {s.replica: s.spec_hash for s in svc.replicas}
    return any(
        c.service == svc.name and c.replica in specs and c.spec_hash != specs[c.replica]
        for c in containers
    )


# --------------------------------------------------------------------------- records

EventKind = Literal[
    "started", "failure", "completed", "rolled_back", "paused", "rollback_completed"
]


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """What one pass did to a service's rollout, for the log and the metrics.

    started: a rollout of `revision` began. failure: a replacement failed (`reason` says
    whether it was tolerated). completed, rolled_back, paused: the rollout of `revision`
    ended so (the `reconciler_rollouts_total` results). rollback_completed: every replica
    runs the stable revision `revision` again.
    """

    service: str
    kind: EventKind
    revision: str
    reason: str = ""


def record_pass(
    record: RolloutRecord,
    svc: ServiceSpec,
    target_svc: ServiceSpec,
    mode: Mode,
    verdicts: Iterable[SlotVerdict],
    action_failures: Iterable[tuple[HostAction, str]],
    containers: Iterable[ObservedContainer],
    now: float,
) -> tuple[RolloutRecord, tuple[RolloutEvent, ...]]:
    """The record of `svc` after one pass, and what to report about it.

    `svc` is the file's service, (`target_svc`, `mode`) what `target()` returned for the
    pass, `verdicts` the plan's, `action_failures` the actions of the pass Docker refused
    (with its error), `containers` the observation the pass planned from (the one after its
    actions works as well), `now` the clock. Other services' entries are ignored.

    - A rollout is under way while a slot runs another spec than the target's (`rolling`):
      `rolling_revision` is set (event started, except for a rollback) and the failures of a
      rollout it superseded are forgotten.
    - A passed verdict sets `last_batch_at` (the delay before the next batch counts from it).
    - A failed replacement is a failed verdict, or, during a rollout, a refused create or
      start of a replacement or a refused image. Tolerated ones (the verdict's flag; for
      refused actions `tolerated()`) are kept in `failures` (a verdict once: it is judged
      again while its old replica drains; a refused action each time it is refused); they
      count against max_failure_ratio, and the planner lets the rollout go on past the
      replicas they kept.
    - The first failure that is not tolerated, during a rollout that is not paused, applies
      the failure_action: rollback -> `failed_revision` (target() returns the stable spec;
      event rolled_back), or, with nothing to roll back to, pause; pause, or a rollback that
      fails -> `paused_revision` (event paused). Failures outside a rollout are only reported.
    - Converged on a normal target: the rollout is over (event completed, if one was under
      way); the target becomes the stable spec (`stable`, `stable_revision`) unless failures
      were tolerated on the way (they are kept until the next rollout starts: a revision
      whose replicas failed is not one to roll back to). Converged after a rollback: the
      rollback is over (event rollback_completed); the failed revision stays held until the
      file changes the service.
    """
    record = refresh(record, svc)
    events: list[RolloutEvent] = []
    mine = tuple(c for c in containers if c.service == svc.name)
    revision = target_svc.revision
    if mode != "paused" and rolling(target_svc, mine) and record.rolling_revision != revision:
        record = replace(
            record, rolling_revision=revision, failures=(), returning=mode == "rolled_back"
        )
        if mode == "normal":
            events.append(RolloutEvent(svc.name, "started", revision))
    under_way = mode != "paused" and bool(revision) and record.rolling_revision == revision

    judged = [v for v in verdicts if v.service == svc.name]
    if any(v.passed for v in judged):
        record = replace(record, last_batch_at=now)
    failed: list[tuple[str, str, bool | None]] = [
        (v.container, v.reason or "failed", v.tolerated) for v in judged if not v.passed
    ]
    if under_way:
        failed += [
            (f"{a.key}@{now:g}#{i}", f"{a.verb} {a.name} refused: {error}", None)
            for i, (a, error) in enumerate(action_failures)
            if a.service == svc.name and _replacement_action(a)
        ]
    rollout = rollout_for(svc, record, mode)
    replicas = len(target_svc.replicas)
    earlier = 0
    trigger = ""
    for ident, reason, ok in failed:
        if ident in record.failures:  # tolerated and counted on an earlier pass
            continue
        if ok is None:
            ok = tolerated(rollout, replicas, ident, earlier)
        earlier += 1
        events.append(
            RolloutEvent(svc.name, "failure", revision, f"{reason}{' (tolerated)' if ok else ''}")
        )
        if ok:
            record = replace(record, failures=(*record.failures, ident))
        elif not ok and under_way and not trigger:
            trigger = reason
    if trigger:
        return _fail(record, svc, mode, trigger, events, now)

    # Over when every replica runs the target healthy, or, with failures tolerated on the way
    # (failure_action continue, max_failure_ratio), once every replica runs it at all.
    replaced_all = not rolling(target_svc, mine) and not any(is_temp_name(c.name) for c in mine)
    done = converged(target_svc, mine) or (bool(record.failures) and replaced_all)
    if mode != "paused" and done:
        if mode == "normal" and record.returning and record.rolling_revision == revision:
            events.append(RolloutEvent(svc.name, "rollback_completed", revision))
            record = replace(record, rolling_revision="", failures=(), returning=False)
        if mode == "normal":
            if record.rolling_revision:
                n = len(record.failures)
                why = f"with {n} tolerated failure{'s' if n > 1 else ''}" if n else ""
                events.append(RolloutEvent(svc.name, "completed", revision, why))
                record = replace(record, rolling_revision="")
            if not record.failures:  # a revision that failed on the way never becomes stable
                record = replace(record, stable=target_svc.replicas, stable_revision=revision)
        elif record.rolling_revision:
            events.append(RolloutEvent(svc.name, "rollback_completed", revision))
            record = replace(record, rolling_revision="", failures=(), returning=False)
    return record, tuple(events)


def _fail(
    record: RolloutRecord,
    svc: ServiceSpec,
    mode: Mode,
    reason: str,
    events: list[RolloutEvent],
    now: float = 0.0,
) -> tuple[RolloutRecord, tuple[RolloutEvent, ...]]:
    """Apply the failure_action of the rollout under way."""
    done = replace(record, rolling_revision="", failures=(), returning=False)
    if mode == "rolled_back":
        why = f"rollback failed: {reason}"
        done = replace(done, paused_revision=svc.revision, paused_reason=why)
        return done, (*events, RolloutEvent(svc.name, "paused", svc.revision, why))
    can_roll_back = bool(record.stable) and record.stable_revision != svc.revision
    if svc.update.failure_action == "rollback" and can_roll_back:
        done = replace(
            done,
            failed_revision=svc.revision,
            failed_reason=reason,
            failed_at=now,
            rolling_revision=record.stable_revision,
            returning=True,
        )
        return done, (*events, RolloutEvent(svc.name, "rolled_back", svc.revision, reason))
    why = reason if svc.update.failure_action == "pause" else f"{reason}; no stable revision"
    done = replace(done, paused_revision=svc.revision, paused_reason=why)
    return done, (*events, RolloutEvent(svc.name, "paused", svc.revision, why))


def is_replacement(action: HostAction) -> bool:
    """A create or start of a replacement: Docker refusing it fails the rollout."""
    if isinstance(action, CreateContainer):
        return action.as_name is not None
    return isinstance(action, StartContainer) and is_temp_name(action.name)


def _replacement_action(action: HostAction) -> bool:
    """A create or start of a replacement, or an image: refused, the rollout cannot proceed."""
    return is_replacement(action) or isinstance(action, EnsureImage)


# --------------------------------------------------------------------------- drains

DEFAULT_DRAIN_S = 3.0  # for containers of services gone from the file


def drained_after(
    drained: Mapping[str, float],
    results: Iterable[tuple[HostAction, bool]],
    drain_s: Mapping[str, float],
    now: float,
    alive: Collection[str] | None = None,
) -> dict[str, float]:
    """`Holds.drained` after a pass (`results`: each action run, and whether it succeeded).

    A drain that succeeded starts its period (`drain_s` by service; DEFAULT_DRAIN_S for a
    service gone from the file). A container removed, or connected again without a refused
    connect (it serves under its aliases again), is forgotten: else the planner would
    reconnect it on every pass. `alive`: the container ids observed; others are forgotten.
    """
    out = dict(drained)
    rejoined: set[str] = set()
    refused: set[str] = set()
    for action, ok in results:
        if isinstance(action, DrainContainer) and ok:
            out[action.id] = now + drain_s.get(action.service, DEFAULT_DRAIN_S)
        elif isinstance(action, RemoveContainer) and ok:
            out.pop(action.id, None)
        elif isinstance(action, ConnectNetwork):
            (rejoined if ok else refused).add(action.id)
    for cid in rejoined - refused:
        out.pop(cid, None)
    if alive is not None:
        out = {cid: until for cid, until in out.items() if cid in alive}
    return out
