"""Planning the replicas of one service: classify each slot, heal it, replace it (a rollout
batch within its budget), judge a replacement in flight, drain before stopping.

Pure; core.planner calls `service_steps` and `removals` once per service and pass. A slot
whose container runs another spec is replaced through a container under a temporary name:
created beside the old one, started (after the old one is drained and stopped, for
`stop-first`), judged by `rollout.judge`, and only then is the old one removed and the new
one renamed. A replacement that fails is removed and the old one runs again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core import causes
from reconciler.core import rollout as ro
from reconciler.core.actions import (
    JUST_CREATED,
    NEVER_STARTED,
    CheckConfig,
    ConnectNetwork,
    CreateContainer,
    DrainContainer,
    HostAction,
    RemoveContainer,
    RenameContainer,
    RestartContainer,
    SignalContainer,
    SlotVerdict,
    StartContainer,
    Step,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.causes import Cause
from reconciler.core.desired import ContainerSpec, ServiceSpec
from reconciler.core.holds import Holds
from reconciler.core.notes import Note, note
from reconciler.core.observed import ObservedContainer
from reconciler.core.plan_order import Local, namespace_owner
from reconciler.core.spec_diff import FieldChange, conceal, decode, diff
from reconciler.core.spec_fields import host_view

DEFAULT_DRAIN_S = ro.DEFAULT_DRAIN_S  # for containers of services gone from the file
NO_DNS_NETWORKS = frozenset({"host", "none"})  # Docker's own: no aliases, never left
_NO: frozenset[str] = frozenset()


@dataclass(slots=True)
class PlanPass:
    """What planning one pass collects beside the steps."""

    holds: Holds
    ids: Mapping[str, str]  # container name -> id, of every container observed (or outside)
    notes: list[Note] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    verdicts: list[SlotVerdict] = field(default_factory=list)
    hidden: frozenset[str] = frozenset()  # values never shown (DesiredState.secrets)

    def wake(self, at: float | None) -> None:
        if at is not None:
            self.wakes.append(at)


def removals(
    extra: list[ObservedContainer], services: Mapping[str, ServiceSpec], p: PlanPass
) -> list[Step]:
    """Containers beyond the replica count or of services gone: drained, then removed."""
    steps = []
    for c in extra:
        svc = services.get(c.service)
        reason = "service removed from the file" if svc is None else "scaled down"
        drain_s = svc.drain_s if svc else DEFAULT_DRAIN_S
        grace = svc.stop_grace_s if svc else None
        drain, drained = _drain(c, drain_s, reason, p)
        steps += [Step(a) for a, _ in drain]
        if drained:
            steps.append(Step(RemoveContainer(c.id, c.name, c.service, reason, grace)))
    return steps


def _serving(c: ObservedContainer) -> bool:
    """Up as far as a rollout is concerned: running and not unhealthy, or being restarted by
    Docker (its health is the last run's, so it is not read)."""
    return c.state == "restarting" or (c.state == "running" and c.health != "unhealthy")


def service_steps(
    svc: ServiceSpec,
    slots: Mapping[int, list[ObservedContainer]],
    p: PlanPass,
) -> list[Local]:
    """The actions for one service's replicas (`slots`: replica number -> its containers),
    each with the keys of the service's own actions it must follow."""
    holds = p.holds
    rollout = holds.rollouts.get(svc.name) or ro.Rollout(config=svc.update)
    out: list[Local] = []
    if svc.state == "stopped":  # kept down on purpose: stop it, change nothing else
        for spec in svc.replicas:
            for c in slots.get(spec.replica, ()):
                if c.state in ("running", "paused", "restarting"):
                    out.append((StopContainer(c.id, c.name, c.service, grace_s=_grace(spec)), _NO))
        return out

    classified = [_classify(spec, slots.get(spec.replica, [])) for spec in svc.replicas]
    # A replacement whose old replica is gone, that serves and waits only for its name (held
    # by a container of another service, which may never let it go) is the replica now, not
    # a batch in flight: it must not hold the rollout of the other replicas back forever.
    own = {c.id for containers in slots.values() for c in containers}
    in_flight = sum(
        1
        for spec, s in zip(svc.replicas, classified, strict=True)
        if s.new is not None
        and not (
            s.current is None
            and _serving(s.new)
            and s.new.health != "starting"
            and p.ids.get(spec.name, "") not in ("", *own)
        )
    )
    # A rollout starts replacing running replicas only while every replica is up; a replica
    # kept as a tolerated failure (crash-looping on the new spec) does not hold it back, else
    # failure_action would never come.
    # An unhealthy replica holds the next batch back too (one still starting does not: Docker
    # gives it a verdict soon, and the new replica's own judge waits for health anyway; one
    # Docker is restarting is left to Docker).
    all_up = all(s.current is not None or s.new is not None for s in classified) and all(
        s.current is None
        or _serving(s.current)
        or s.new is not None
        or s.current.id in rollout.failed
        for s in classified
    )
    config = rollout.config
    budget = (config.parallelism or len(svc.replicas)) - in_flight
    waiting_reason = f"parallelism {config.parallelism or 'all'} reached"
    if rollout.mode == "paused":
        budget, waiting_reason = 0, "rollout paused"
    elif not all_up:
        budget, waiting_reason = 0, _waits_for(svc.replicas, classified, rollout)
    elif rollout.last_batch_at and holds.now < rollout.last_batch_at + config.delay_s:
        p.wake(rollout.last_batch_at + config.delay_s)
        budget, waiting_reason = 0, f"update delay {config.delay_s:g}s"

    failed_now: list[str] = []  # replacements of the service judged failed in this pass
    for spec, slot in zip(svc.replicas, classified, strict=True):
        for c in slot.stale:  # replacements of another spec, duplicates: out of the way
            drain, drained = _drain(c, svc.drain_s, "stale replacement", p)
            out += drain
            if drained:
                out.append((RemoveContainer(c.id, c.name, c.service, "stale", _grace(spec)), _NO))
        cur, new = slot.current, slot.new
        if cur is None and new is None:
            # Its name still held by a container of another slot (a container_name that moved
            # to this service): it serves under the temporary name until that one is gone.
            as_name = ro.temp_name(spec) if spec.name in p.ids else None
            if as_name:
                why = f"name taken, created as {as_name} until it is free"
                p.notes.append(note("name_taken", spec.name, why, "its name to be free"))
            create = CreateContainer(spec, "missing", as_name, causes.MISSING)
            out.append((create, _NO))
            start = StartContainer(create.name, create.name, svc.name, JUST_CREATED)
            out.append((start, _keys(create)))
        elif cur is None and new is not None:  # the old one is gone: finish the replacement
            # Started first, renamed after: a name still taken holds back only the rename.
            rename = RenameContainer(new.id, new.name, spec.name, svc.name)
            if new.state in ("created", "exited"):
                start = StartContainer(new.id, new.name, svc.name, "replacement")
                out += [(start, _NO), (rename, _keys(start))]
            else:
                out.append((rename, _NO))
        elif cur is not None and new is None:
            owner = namespace_owner(spec)
            # Its network namespace belongs to a container that was replaced since.
            moved = owner is not None and p.ids.get(owner) != cur.network_target
            if cur.spec_hash == spec.spec_hash and cur.state != "dead" and not moved:
                out += _heal(spec, cur, holds, svc.job)
                continue
            # Not serving (exited, dead, unhealthy): replaced at once, outside the budget.
            down = not _serving(cur) or moved
            cause = _why_replace(cur, spec, moved, p.hidden)
            create = CreateContainer(spec, cause.text, ro.temp_name(spec), cause)
            if down and (rollout.mode != "paused" or cur.state == "dead" or moved):
                out.append((create, _NO))
            elif not down and budget > 0:
                budget -= 1
                out.append((create, _NO))
            else:
                if not down:
                    why = f"replacement waits ({waiting_reason}); needed: {cause.text}"
                    waits = note("replacement_waits", spec.name, why, waiting_reason, cause.text)
                    p.notes.append(waits)
                out += _heal(spec, cur, holds, svc.job)
                if cur.name != spec.name:  # serving under another name: give it the replica's
                    why = "serving under another name"
                    out.append((RenameContainer(cur.id, cur.name, spec.name, svc.name, why), _NO))
        elif cur is not None and new is not None:
            out += _in_flight(svc, spec, cur, new, rollout, p, failed_now)
    return out


@dataclass(frozen=True, slots=True)
class _Slot:
    current: ObservedContainer | None  # the replica as it runs now
    new: ObservedContainer | None  # its replacement, under the temporary name
    stale: tuple[ObservedContainer, ...]


def _classify(spec: ContainerSpec, containers: list[ObservedContainer]) -> _Slot:
    """The replica (under its name, else any other non-temporary one), its replacement (under
    the target's temporary name), and the rest: replacements of specs since superseded, never
    judged, go (the replica, even stopped for one of them, is what a failure falls back to).
    With nothing else left of the replica, such a replacement is the replica (the serving one
    first): replaced through a judged replacement, or renamed, not removed."""
    temp = ro.temp_name(spec)
    new = next((c for c in containers if c.name == temp), None)
    rest = [c for c in containers if c is not new]
    current = next((c for c in rest if c.name == spec.name), None)
    if current is None:
        current = next((c for c in rest if not ro.is_temp_name(c.name)), None)
    if current is None:  # only replacements of other specs: the one serving, else any
        current = next((c for c in rest if c.state == "running"), next(iter(rest), None))
    stale = tuple(c for c in rest if c is not current)
    return _Slot(current, new, stale)


def _why_replace(
    cur: ObservedContainer, spec: ContainerSpec, moved: bool, hidden: frozenset[str]
) -> Cause:
    if cur.state == "dead":
        return Cause("dead", "dead")
    if moved:
        return causes.of(f"network namespace owner {namespace_owner(spec)} was recreated")
    return causes.spec_changed(changes(cur, spec, hidden))


def changes(
    cur: ObservedContainer, spec: ContainerSpec, hidden: frozenset[str] = frozenset()
) -> tuple[FieldChange, ...]:
    """The fields of `spec` that differ from what `cur` was created from (() when `cur`
    carries no view of its spec: made by an older version)."""
    old = decode(cur.spec_view)
    if old is None or cur.spec_hash == spec.spec_hash:
        return ()
    return diff(conceal(old, hidden), host_view(spec, hidden))


def _waits_for(specs: tuple[ContainerSpec, ...], slots: list[_Slot], rollout: ro.Rollout) -> str:
    """What holds a rollout back, named: `for p-web-3 to run (missing, created in this
    pass)`, `for p-web-2 to serve again (exited 1)`."""
    waits = []
    for spec, s in zip(specs, slots, strict=True):
        if s.current is None and s.new is None:
            waits.append(f"{spec.name} to run (missing, created in this pass)")
        elif (
            s.current is not None
            and s.new is None
            and not _serving(s.current)
            and s.current.id not in rollout.failed
        ):
            waits.append(f"{spec.name} to serve again ({_state(s.current)})")
    return "for " + ", ".join(waits) if waits else "a replica is not up"


def _state(c: ObservedContainer) -> str:
    if c.state == "running" and c.health == "unhealthy":
        return "unhealthy"
    if c.state == "exited":
        return causes.exited(c.exit_code, c.oom_killed).text
    return c.state


def _in_flight(
    svc: ServiceSpec,
    spec: ContainerSpec,
    cur: ObservedContainer,
    new: ObservedContainer,
    rollout: ro.Rollout,
    p: PlanPass,
    failed_now: list[str],
) -> list[Local]:
    """A slot with its replacement beside it: start it, judge it, finish or revert.

    `failed_now`: replacements of the service judged failed earlier in this pass; they count
    against max_failure_ratio with those of earlier passes.
    """
    now = p.holds.now
    out: list[Local] = []
    if new.state == "created":
        start = StartContainer(new.id, new.name, svc.name, f"replaces {cur.name}")
        if rollout.config.order == "start-first" or cur.state != "running":
            return [(start, _NO)]
        drain, drained = _drain(cur, svc.drain_s, "replaced (stop-first)", p)
        if not drained:
            return drain
        stop = StopContainer(cur.id, cur.name, svc.name, "replaced (stop-first)", _grace(spec))
        return [(stop, _NO), (start, _keys(stop))]
    verdict = ro.judge(spec, new, rollout.config, now, svc.job)
    if verdict.outcome == "pending":
        p.wake(verdict.recheck_at)
        return []
    failed = verdict.outcome == "failed"
    tolerated = failed and ro.tolerated(rollout, len(svc.replicas), new.id, len(failed_now))
    if failed and new.id not in rollout.failed:
        failed_now.append(new.id)
    p.verdicts.append(
        SlotVerdict(
            svc.name, spec.replica, new.id, verdict.outcome == "passed", verdict.reason, tolerated
        )
    )
    # Keep the new one and retire the old, unless a tolerated failure is down while the old
    # one still serves (start-first): then it goes as a failed one (counted, not kept).
    keep = verdict.outcome == "passed" or (
        tolerated and (new.state == "running" or cur.state != "running")
    )
    if keep:
        drain, drained = _drain(cur, svc.drain_s, "replaced", p)
        if not drained:
            return drain
        remove = RemoveContainer(cur.id, cur.name, svc.name, "replaced", _grace(spec))
        rename = RenameContainer(new.id, new.name, spec.name, svc.name)
        return [(remove, _NO), (rename, _keys(remove))]
    # Failed: the replacement goes, the old replica runs again (with its aliases back, also
    # when it kept running: start-first drains it once its replacement looked good).
    remove = RemoveContainer(new.id, new.name, svc.name, f"failed: {verdict.reason}", 0.0)
    out.append((remove, _NO))
    if cur.state == "dead":  # replaced next pass
        return out
    rejoin: list[ConnectNetwork] = []
    if cur.state != "running" or cur.id in p.holds.drained:
        rejoin = _rejoin(spec, cur, "the replacement failed")
        out += [(a, _keys(remove)) for a in rejoin]
    back: HostAction | None = None
    if cur.state in ("exited", "created"):
        back = StartContainer(cur.id, cur.name, svc.name, "its replacement failed")
    elif cur.state == "paused":
        back = UnpauseContainer(cur.id, cur.name, svc.name, "its replacement failed")
    if back is not None:  # restarting or removing: left to Docker
        out.append((back, _keys(remove, *rejoin)))
    return out


def _heal(
    spec: ContainerSpec, c: ObservedContainer, holds: Holds, job: bool = False
) -> list[Local]:
    """A replica on its spec: bring it back to running, connected and healthy (a job's
    replica that exited 0 has done its work: left alone)."""
    out: list[Local] = []
    if job and c.state == "exited" and c.exit_code == 0:
        return out
    if c.state in ("running", "exited", "created", "paused") and spec.network_mode is None:
        if c.id in holds.drained:  # drained for a replacement that did not happen
            out += [(a, _NO) for a in _rejoin(spec, c, "drained, serving again")]
        else:
            for attachment in spec.networks:
                if attachment.network not in c.networks:
                    out.append((ConnectNetwork(c.id, c.name, c.service, attachment), _NO))
    match c.state:
        case "exited":
            why = causes.exited(c.exit_code, c.oom_killed)
            out.append((StartContainer(c.id, c.name, c.service, why.text, why), _NO))
        case "created":
            out.append((StartContainer(c.id, c.name, c.service, NEVER_STARTED), _NO))
        case "paused":
            out.append((UnpauseContainer(c.id, c.name, c.service), _NO))
        case "running":
            out += _running(spec, c, holds)
        case _:  # restarting (Docker is on it) or removing
            pass
    return out


def _running(spec: ContainerSpec, c: ObservedContainer, holds: Holds) -> list[Local]:
    if c.health == "unhealthy" and (holds.unhealthy_due is None or c.name in holds.unhealthy_due):
        since = holds.unhealthy_since.get(c.name)
        why = causes.unhealthy(None if since is None else holds.now - since)
        return [(RestartContainer(c.id, c.name, c.service, why.text, _grace(spec), why), _NO)]
    if spec.reload_digest and spec.reload_signal:
        delivered = holds.signalled.get(c.id, c.config_hash)
        if delivered != spec.reload_digest:
            if holds.rejected.get(c.id) == spec.reload_digest:
                return []  # its check refused this very content: wait for the next edit
            signal = SignalContainer(
                c.id, c.name, c.service, spec.reload_signal, spec.reload_digest, "config changed"
            )
            if not spec.reload_check:
                return [(signal, _NO)]
            check = CheckConfig(
                c.id, c.name, c.service, spec.reload_check, spec.reload_digest, "config changed"
            )
            return [(check, _NO), (signal, _keys(check))]
    return []


def _rejoin(spec: ContainerSpec, c: ObservedContainer, reason: str) -> list[ConnectNetwork]:
    return [
        ConnectNetwork(c.id, c.name, c.service, a, reason, reconnect=a.network in c.networks)
        for a in spec.networks
        if spec.network_mode is None
    ]


def _drain(
    c: ObservedContainer, drain_s: float, reason: str, p: PlanPass
) -> tuple[list[Local], bool]:
    """Steps that take `c` out of DNS, and whether its drain period is over (stop it now).
    Only user-defined networks have DNS to leave: network_mode host or none (Docker's
    `host`/`none` networks, which cannot be left) and container:X go to a graceful stop."""
    dns = c.networks - NO_DNS_NETWORKS
    if c.state != "running" or not dns or drain_s <= 0:
        return [], True
    until = p.holds.drained.get(c.id)
    if until is None:
        p.wake(p.holds.now + drain_s)
        drain = DrainContainer(c.id, c.name, c.service, tuple(sorted(dns)), reason)
        return [(drain, _NO)], False
    if p.holds.now < until:
        p.wake(until)
        left = math.ceil(until - p.holds.now)  # a duration: an epoch means nothing to a reader
        says = f"draining for {left} s more"
        p.notes.append(note("draining", c.name, says, f"its drain to end (in {left} s)"))
        return [], False
    return [], True


def _grace(spec: ContainerSpec) -> float | None:
    return spec.stop_grace_s


def _keys(*actions: HostAction) -> frozenset[str]:
    return frozenset(a.key for a in actions)
