"""How one pass changes a service's rollout record (pure; the clock is passed in).

The runtime calls `advance` after applying a service's plan: verdicts on replacements and
replacements Docker refused count as failures; past max_failure_ratio the failure_action
holds the revision as failed (rollback) or paused; a service converged on its file spec
makes that spec the stable one a later rollback returns to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from reconciler.core import rollout as ro
from reconciler.core.model import ObservedContainer, ServiceSpec, SlotVerdict

MAX_FAILURES_KEPT = 50


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    kind: Literal["started", "completed", "rolled_back", "paused"]
    revision: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Docker refused to create or start a replacement (its error text)."""

    name: str
    reason: str


def advance(
    record: ro.RolloutRecord,
    file_svc: ServiceSpec,
    target: ServiceSpec,
    mode: ro.Mode,
    verdicts: tuple[SlotVerdict, ...],
    refusals: tuple[Refusal, ...],
    containers: tuple[ObservedContainer, ...],
    now: float,
) -> tuple[ro.RolloutRecord, tuple[RolloutEvent, ...]]:
    """The record after a pass, and what happened to the rollout (for logs and metrics)."""
    events: list[RolloutEvent] = []
    rollout = ro.rollout_for(file_svc, record, mode)
    failures = list(record.failures)
    failure: str | None = None
    for v in verdicts:
        if v.passed:
            record = replace(record, last_batch_at=now)
        elif v.container not in failures:
            failures.append(v.container)
            if not v.tolerated:
                failure = failure or v.reason
    for r in refusals:
        tolerated = ro.tolerated(replace(rollout, failures=len(failures)), len(target.replicas))
        failures.append(f"refused:{r.name}:{now:.3f}")
        if not tolerated:
            failure = failure or f"Docker refused the new replica: {r.reason}"
    record = replace(record, failures=tuple(failures[-MAX_FAILURES_KEPT:]))
    if failure is not None and mode != "paused":
        record, event = _fail(record, file_svc, mode, failure)
        return record, (event,)

    if mode == "normal" and ro.converged(target, containers):
        if record.rolling_revision == target.revision:
            events.append(RolloutEvent("completed", target.revision))
        record = replace(
            record,
            stable_revision=target.revision,
            stable=target.replicas,
            rolling_revision="",
            failures=(),
        )
    elif mode == "rolled_back" and ro.converged(target, containers):
        record = replace(record, rolling_revision="")
    elif (
        mode == "normal"
        and _replacing(target, containers)
        and record.rolling_revision != target.revision
    ):
        events.append(RolloutEvent("started", target.revision))
        record = replace(record, rolling_revision=target.revision, failures=())
    return record, tuple(events)


def _fail(
    record: ro.RolloutRecord, svc: ServiceSpec, mode: ro.Mode, reason: str
) -> tuple[ro.RolloutRecord, RolloutEvent]:
    if mode == "rolled_back":  # a rollback is never rolled back
        why = f"rollback to {record.stable_revision[:12]} failed too: {reason}"
        return _pause(record, svc, why)
    action = svc.update.failure_action
    if action == "rollback" and record.stable:
        failed = replace(
            record,
            failed_revision=svc.revision,
            failed_reason=reason,
            rolling_revision="",
            failures=(),
        )
        return failed, RolloutEvent("rolled_back", svc.revision, reason)
    if action == "rollback":
        reason = f"{reason} (no earlier revision ran healthy: nothing to roll back to)"
    return _pause(record, svc, reason)


def _pause(
    record: ro.RolloutRecord, svc: ServiceSpec, reason: str
) -> tuple[ro.RolloutRecord, RolloutEvent]:
    paused = replace(
        record, paused_revision=svc.revision, paused_reason=reason, rolling_revision=""
    )
    return paused, RolloutEvent("paused", svc.revision, reason)


def _replacing(target: ServiceSpec, containers: tuple[ObservedContainer, ...]) -> bool:
    """Some replica runs another spec than the target (a rollout is, or is about to be, on)."""
    wanted = {s.replica: s.spec_hash for s in target.replicas}
    return any(
        c.replica in wanted and c.spec_hash != wanted[c.replica] and not ro.is_temp_name(c.name)
        for c in containers
    )
