"""The pure core: `plan(desired, observed, holds) -> Plan`.

No Docker, no clock, no I/O. Level-based: the plan depends only on what is desired and
what is observed now, plus the bookkeeping passed in as `Holds` (back-offs, drains, the
rollout of each service and the time), never on remembered events. Waiting is never done
here: a plan says when it wants to be looked at again (`Plan.wake_at`).

A replica is a slot (service, replica number). A slot whose container runs another spec is
replaced through a container under a temporary name: created beside the old one, started
(after the old one is drained and stopped, for `stop-first`), judged by `rollout.judge`,
and only then is the old one removed and the new one renamed. A replacement that fails is
removed and the old one runs again. No create or rename takes a name a container holds: it
follows the step that frees the name, or waits (a replica whose name another slot still
holds is created under its temporary name and renamed later).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from reconciler.core import rollout as ro
from reconciler.core.model import (
    JUST_CREATED,
    Action,
    ConnectNetwork,
    ContainerSpec,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DesiredState,
    DrainContainer,
    EnsureImage,
    Observed,
    ObservedContainer,
    Plan,
    RemoveContainer,
    RemoveNetwork,
    RemoveVolume,
    RenameContainer,
    RestartContainer,
    ServiceSpec,
    SignalContainer,
    SlotVerdict,
    StartContainer,
    Step,
    StopContainer,
    UnpauseContainer,
)

DEFAULT_DRAIN_S = ro.DEFAULT_DRAIN_S  # for containers of services gone from the file
# A network or volume marked external: that does not exist (we never create it).
EXTERNAL_MISSING = "external, not found: create it"


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


NO_HOLDS = Holds()
NAMESPACE_MISSING = "no such container"  # in a note: a network_mode container:X not found


def foreign_namespaces(desired: DesiredState) -> frozenset[str]:
    """The X of each `network_mode: container:X` that is no container of this project."""
    ours = {c.name for s in desired.services for c in s.replicas}
    owners = {_namespace_owner(c) for s in desired.services for c in s.replicas}
    return frozenset(o for o in owners if o is not None and o not in ours)


@dataclass(slots=True)
class _Pass:
    """What planning one pass collects beside the steps."""

    holds: Holds
    ids: Mapping[str, str]  # container name -> id, of every container observed (or outside)
    notes: list[str] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    verdicts: list[SlotVerdict] = field(default_factory=list)

    def wake(self, at: float | None) -> None:
        if at is not None:
            self.wakes.append(at)


# An action and the keys of the actions of its own service it must follow.
_Local = tuple[Action, frozenset[str]]


def plan(desired: DesiredState, observed: Observed, holds: Holds = NO_HOLDS) -> Plan:
    """The ordered steps that bring `observed` to `desired`, and notes to report."""
    p = _Pass(holds, {**holds.outside, **{c.name: c.id for c in observed.containers}})
    infra = list(_networks(desired, observed, p.notes)) + list(_volumes(desired, observed, p.notes))
    infra_keys = {s.key for s in infra}
    services = {s.name: s for s in desired.services}
    slots: dict[str, dict[int, list[ObservedContainer]]] = {}
    extra: list[ObservedContainer] = []
    for c in sorted(observed.containers, key=lambda c: (c.service, c.replica, c.name)):
        svc = services.get(c.service)
        if svc is None or not 1 <= c.replica <= len(svc.replicas):
            extra.append(c)
        else:
            slots.setdefault(c.service, {}).setdefault(c.replica, []).append(c)
    removals = _removals(extra, services, p)
    removal_keys: dict[str, set[str]] = {}
    for step in removals:
        removal_keys.setdefault(step.action.service or "", set()).add(step.key)

    images: list[Step] = []
    containers: list[Step] = []
    brought_up: dict[str, set[str]] = {}  # service -> keys of the steps that bring it up
    for svc in desired.services:
        svc_slots = slots.get(svc.name, {})
        local = _service_steps(svc, svc_slots, p)
        if holds.ready is not None:
            local = _gate_on_dependencies(svc, local, holds.ready, p.notes)
        if not local:
            continue
        creates = [a for a, _ in local if isinstance(a, CreateContainer)]
        image_key = None
        if creates:
            image = EnsureImage(svc.name, svc.image, svc.pull, svc.build)
            images.append(Step(image))
            image_key = image.key
        deps = set().union(*(brought_up.get(d, set()) for d in svc.depends_on))
        prerequisites = removal_keys.get(svc.name, set()) | ({image_key} if image_key else set())
        service_steps = _ordered(local, infra_keys, prerequisites, deps)
        containers += service_steps
        brought_up[svc.name] = {
            s.key
            for s in service_steps
            if isinstance(s.action, StartContainer | UnpauseContainer | RestartContainer)
        }

    steps, taken = _claim_names([*infra, *images, *removals, *containers], observed, holds)
    kept = _drop_held(
        steps, {**holds.held, **taken, **_external_missing(desired, observed, steps)}, p.notes
    )
    needed = set().union(*(s.after for s in kept))  # an image no create is left to wait on
    future = [t for t in p.wakes if t > holds.now]
    return Plan(
        steps=tuple(s for s in kept if not isinstance(s.action, EnsureImage) or s.key in needed),
        notes=tuple(p.notes),
        wake_at=min(future) if future else None,
        verdicts=tuple(p.verdicts),
    )


def _ordered(
    local: list[_Local], infra_keys: set[str], prerequisites: set[str], deps: set[str]
) -> list[Step]:
    """Steps of one service: what each waits on (its own earlier steps, infrastructure, its
    image, removals of the service, the services it depends on, its reconnects)."""
    steps = []
    connects: dict[str, set[str]] = {}
    for action, after_local in local:
        after: set[str] = set(after_local)
        if isinstance(action, CreateContainer):
            after |= _infra_deps(action.spec, infra_keys) | prerequisites
        if isinstance(action, ConnectNetwork):
            after |= {f"network:{action.attachment.network}"} & infra_keys
            connects.setdefault(action.name, set()).add(action.key)
        elif isinstance(action, StartContainer | UnpauseContainer | RestartContainer):
            after |= connects.get(action.name, set())
        # Creating needs no running dependency (unless it joins one's network namespace):
        # only starts wait for depends_on, so every create can run at once.
        early = isinstance(action, CreateContainer) and not _joined_owner(action.spec)
        if isinstance(action, CreateContainer | StartContainer | UnpauseContainer) and not early:
            after |= deps
        steps.append(Step(action, frozenset(after)))
    return steps


def _gate_on_dependencies(
    svc: ServiceSpec, local: list[_Local], ready: frozenset[str], notes: list[str]
) -> list[_Local]:
    """Per-service plans: starts (and namespace sharers' creates) wait for dependencies, and
    so does the stop of an old replica whose replacement's start waits (stop-first)."""
    waiting = [d for d in svc.waits_for() if d not in ready]
    if not waiting:
        return local

    def gated(action: Action) -> bool:
        return isinstance(action, StartContainer | UnpauseContainer) or (
            isinstance(action, CreateContainer) and _joined_owner(action.spec) is not None
        )

    stops = set().union(*(after for action, after in local if gated(action)))
    kept = []
    for action, after in local:
        if gated(action):
            notes.append(f"{action.key}: waiting for {', '.join(waiting)} to run")
        elif not (isinstance(action, StopContainer) and action.key in stops):
            kept.append((action, after))
    return kept


def _networks(desired: DesiredState, observed: Observed, notes: list[str]) -> Iterable[Step]:
    live = {n.name: n for n in observed.networks}
    for spec in desired.networks:
        net = live.get(spec.name)
        if net is None and spec.external:
            notes.append(f"network {spec.name}: {EXTERNAL_MISSING} (docker network create)")
        elif net is None:
            yield Step(CreateNetwork(spec, desired.project))
        elif not net.owned and not spec.external:
            notes.append(f"network {spec.name}: adopted, not owned (no reconciler labels)")
    wanted = {n.name for n in desired.networks}
    for name in sorted(observed.project_networks - wanted):
        notes.append(f"network {name}: orphaned (no longer in the file; not removed)")


def _volumes(desired: DesiredState, observed: Observed, notes: list[str]) -> Iterable[Step]:
    live = {v.name: v for v in observed.volumes}
    for spec in desired.volumes:
        vol = live.get(spec.name)
        if vol is None and spec.external:
            notes.append(f"volume {spec.name}: {EXTERNAL_MISSING} (docker volume create)")
        elif vol is None:
            yield Step(CreateVolume(spec, desired.project))
        elif not vol.owned and not spec.external:
            notes.append(f"volume {spec.name}: adopted, not owned (no reconciler labels)")
    wanted = {v.name for v in desired.volumes}
    patterns = [t.replace("{replica}", "[0-9]*") for t in desired.volume_templates]
    for name in sorted(observed.project_volumes - wanted):
        if not any(fnmatchcase(name, p) for p in patterns):
            notes.append(f"volume {name}: orphaned (no longer in the file; never removed)")


def _removals(
    extra: list[ObservedContainer], services: Mapping[str, ServiceSpec], p: _Pass
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


def _service_steps(
    svc: ServiceSpec,
    slots: Mapping[int, list[ObservedContainer]],
    p: _Pass,
) -> list[_Local]:
    holds = p.holds
    rollout = holds.rollouts.get(svc.name) or ro.Rollout(config=svc.update)
    out: list[_Local] = []
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
        budget, waiting_reason = 0, "a replica is down or not healthy; the rollout waits for it"
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
                p.notes.append(f"{spec.name}: name taken, created as {as_name} until it is free")
            create = CreateContainer(spec, "missing", as_name)
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
            owner = _namespace_owner(spec)
            # Its network namespace belongs to a container that was replaced since.
            moved = owner is not None and p.ids.get(owner) != cur.network_target
            if cur.spec_hash == spec.spec_hash and cur.state != "dead" and not moved:
                out += _heal(spec, cur, holds, svc.job)
                continue
            # Not serving (exited, dead, unhealthy): replaced at once, outside the budget.
            down = not _serving(cur) or moved
            reason = _why_replace(cur, spec, moved)
            if down and (rollout.mode != "paused" or cur.state == "dead" or moved):
                out.append((CreateContainer(spec, reason, ro.temp_name(spec)), _NO))
            elif not down and budget > 0:
                budget -= 1
                out.append((CreateContainer(spec, reason, ro.temp_name(spec)), _NO))
            else:
                if not down:
                    p.notes.append(f"{spec.name}: replacement waits ({waiting_reason})")
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


def _why_replace(cur: ObservedContainer, spec: ContainerSpec, moved: bool) -> str:
    if cur.state == "dead":
        return "dead"
    if moved:
        return f"network namespace owner {_namespace_owner(spec)} was recreated"
    return "spec changed"


def _in_flight(
    svc: ServiceSpec,
    spec: ContainerSpec,
    cur: ObservedContainer,
    new: ObservedContainer,
    rollout: ro.Rollout,
    p: _Pass,
    failed_now: list[str],
) -> list[_Local]:
    """A slot with its replacement beside it: start it, judge it, finish or revert.

    `failed_now`: replacements of the service judged failed earlier in this pass; they count
    against max_failure_ratio with those of earlier passes.
    """
    now = p.holds.now
    out: list[_Local] = []
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
    back: Action | None = None
    if cur.state in ("exited", "created"):
        back = StartContainer(cur.id, cur.name, svc.name, "its replacement failed")
    elif cur.state == "paused":
        back = UnpauseContainer(cur.id, cur.name, svc.name, "its replacement failed")
    if back is not None:  # restarting or removing: left to Docker
        out.append((back, _keys(remove, *rejoin)))
    return out


def _heal(
    spec: ContainerSpec, c: ObservedContainer, holds: Holds, job: bool = False
) -> list[_Local]:
    """A replica on its spec: bring it back to running, connected and healthy (a job's
    replica that exited 0 has done its work: left alone)."""
    out: list[_Local] = []
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
            out.append((StartContainer(c.id, c.name, c.service, f"exited ({c.exit_code})"), _NO))
        case "created":
            out.append((StartContainer(c.id, c.name, c.service, "created, never started"), _NO))
        case "paused":
            out.append((UnpauseContainer(c.id, c.name, c.service), _NO))
        case "running":
            out += [(a, _NO) for a in _running(spec, c, holds)]
        case _:  # restarting (Docker is on it) or removing
            pass
    return out


def _running(spec: ContainerSpec, c: ObservedContainer, holds: Holds) -> Iterable[Action]:
    if c.health == "unhealthy" and (holds.unhealthy_due is None or c.name in holds.unhealthy_due):
        yield RestartContainer(c.id, c.name, c.service, "unhealthy", _grace(spec))
        return
    if spec.reload_digest and spec.reload_signal:
        delivered = holds.signalled.get(c.id, c.config_hash)
        if delivered != spec.reload_digest:
            yield SignalContainer(
                c.id, c.name, c.service, spec.reload_signal, spec.reload_digest, "config changed"
            )


def _rejoin(spec: ContainerSpec, c: ObservedContainer, reason: str) -> list[ConnectNetwork]:
    return [
        ConnectNetwork(c.id, c.name, c.service, a, reason, reconnect=a.network in c.networks)
        for a in spec.networks
        if spec.network_mode is None
    ]


def _drain(
    c: ObservedContainer, drain_s: float, reason: str, p: _Pass
) -> tuple[list[_Local], bool]:
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
        p.notes.append(f"{c.name}: draining until {until:.1f}")
        return [], False
    return [], True


def _grace(spec: ContainerSpec) -> float | None:
    return spec.stop_grace_s


_NO: frozenset[str] = frozenset()
NO_DNS_NETWORKS = frozenset({"host", "none"})  # Docker's own: no aliases, never left


def _keys(*actions: Action) -> frozenset[str]:
    return frozenset(a.key for a in actions)


def _namespace_owner(spec: ContainerSpec) -> str | None:
    mode = spec.network_mode or ""
    return mode.removeprefix("container:") if mode.startswith("container:") else None


def _joined_owner(spec: ContainerSpec) -> str | None:
    """The container whose network, pid or ipc namespace `spec` joins (created first)."""
    for mode in (spec.network_mode, spec.pid, spec.ipc):
        if mode and mode.startswith("container:"):
            return mode.removeprefix("container:")
    return None


def _infra_deps(spec: ContainerSpec, infra_keys: set[str]) -> set[str]:
    keys = {f"network:{a.network}" for a in spec.networks} | {f"volume:{v}" for v in spec.volumes}
    return keys & infra_keys


def _claim_names(
    steps: list[Step], observed: Observed, holds: Holds
) -> tuple[list[Step], dict[str, str]]:
    """A create or rename waits for its name: after the step of this plan that frees it
    (removes or renames the container holding it), else it is held back this pass. A create
    joining another container's network namespace (by name) waits until that name exists."""
    holders = {name: "a container of another service" for name in holds.outside}
    holders |= {
        c.name: f"a container of {c.service} replica {c.replica}" for c in observed.containers
    }
    freed: dict[str, str] = {}  # name -> key of the earlier step that frees it
    claimed: dict[str, str] = {}  # name -> key of the earlier step that takes it
    held: dict[str, str] = {}
    out = []
    for step in steps:
        action = step.action
        if isinstance(action, RemoveContainer | RenameContainer):
            freed[action.name] = step.key
        name = (
            action.name
            if isinstance(action, CreateContainer)
            else action.new_name
            if isinstance(action, RenameContainer)
            else None
        )
        if name is None:
            out.append(step)
            continue
        holder = holders.get(name)
        spec = action.spec if isinstance(action, CreateContainer) else None
        owner = _joined_owner(spec) if spec is not None else None
        if spec is not None and owner is not None and owner in holds.absent:
            held[step.key] = (
                f"network_mode container:{owner}: {NAMESPACE_MISSING}, of this project or another"
            )
        elif (
            spec is not None
            and owner is not None
            and not (owner in claimed or (owner in holders and owner not in freed))
        ):
            kind = "network namespace" if owner == _namespace_owner(spec) else "namespace"
            held[step.key] = f"waits for {owner}, whose {kind} it joins"
        elif name in claimed:
            held[step.key] = f"name {name} is wanted by {claimed[name]} too"
        elif holder is not None and name not in freed:
            held[step.key] = f"name {name} is taken by {holder}"
        else:
            claimed[name] = step.key
            if holder is not None:
                step = Step(action, step.after | {freed[name]})
        out.append(step)
    return out, held


def _external_missing(
    desired: DesiredState, observed: Observed, steps: Iterable[Step]
) -> dict[str, str]:
    """Creates of containers that use an external network or volume that does not exist
    (Docker would make a missing volume itself, unlabelled: that is not ours to make)."""
    nets = {n.name for n in observed.networks}
    vols = {v.name for v in observed.volumes}
    missing = {n.name for n in desired.networks if n.external and n.name not in nets} | {
        v.name for v in desired.volumes if v.external and v.name not in vols
    }
    held: dict[str, str] = {}
    for step in steps:
        if isinstance(step.action, CreateContainer):
            spec = step.action.spec
            used = {a.network for a in spec.networks} | set(spec.volumes)
            if used & missing:
                what = ", ".join(sorted(used & missing))
                held[step.key] = f"external {what} not found"
    return held


def _drop_held(steps: list[Step], held: Mapping[str, str], notes: list[str]) -> tuple[Step, ...]:
    """Leave out held steps and every step that waits on one."""
    if not held:
        return tuple(steps)
    dropped: set[str] = set()
    kept = []
    for step in steps:  # steps come after their dependencies
        if step.key in held:
            dropped.add(step.key)
            notes.append(f"{step.key}: held back ({held[step.key]})")
        elif step.after & dropped:
            dropped.add(step.key)
        else:
            kept.append(step)
    return tuple(kept)


def plan_down(desired: DesiredState, observed: Observed, *, volumes: bool = False) -> Plan:
    """`reconciler down`: every container of the project (stopped with its service's grace),
    then the networks it created; its volumes only when asked. Adopted objects stay."""
    graces = {s.name: s.stop_grace_s for s in desired.services}
    removals = [
        Step(RemoveContainer(c.id, c.name, c.service, "down", graces.get(c.service)))
        for c in sorted(observed.containers, key=lambda c: c.name)
    ]
    after = frozenset(s.key for s in removals)
    steps = removals + [
        Step(RemoveNetwork(name), after) for name in sorted(observed.project_networks)
    ]
    if volumes:
        steps += [Step(RemoveVolume(name), after) for name in sorted(observed.project_volumes)]
    return Plan(steps=tuple(steps))
