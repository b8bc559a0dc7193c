"""Crash-loop and error back-off bookkeeping (pure: the clock is passed in).

Docker's own rule, per replica: a container that fails within `min_uptime` of its
start is crash-looping, and each further attempt waits twice as long (capped); one
that ran longer, or was removed, is healed at once and its back-off starts over.
Failed actions (a pull that cannot reach a registry, a port already taken) back
off the same way, so an error is retried, never hot-looped. A replica restarted for being
unhealthy counts as one that exited (kubelet's CrashLoopBackOff after liveness failures):
unless it had been healthy for `min_uptime` first, each restart waits twice as long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core import causes
from reconciler.core.desired import ContainerSpec, DesiredState, HealPolicy
from reconciler.core.observed import Observed
from reconciler.core.planner import Holds

# Docker restarts a crashed container ~0.3 s after it died (then marks it "restarting"
# during its own back-off): until then an exited container may still be Docker's to restart.
DOCKER_RESTART_WINDOW_S = 1.0
TRANSIENT_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class LastRun:
    """When an exited container last started and finished (epoch seconds)."""

    started_at: float
    finished_at: float
    exit_code: int | None = None
    oom_killed: bool = False  # the kernel's OOM killer ended it (inspect's State.OOMKilled)


@dataclass(slots=True)
class _Backoff:
    failures: int
    not_before: float
    reason: str
    seen_finish: float | None = None  # the exit (or unhealthy verdict) already counted
    exit_code: int | None = None
    cause: str = ""  # the last failure: `exited 137 (OOM killed)`, `unhealthy for 31 s`


@dataclass(slots=True)
class HealingBook:
    """What the daemon remembers between passes to decide holds; lost on restart by design."""

    backoffs: dict[str, _Backoff] = field(default_factory=dict)
    unhealthy_due_at: dict[str, float] = field(default_factory=dict)
    signalled: dict[str, str] = field(default_factory=dict)
    docker_window: dict[str, float] = field(default_factory=dict)  # name -> end of Docker's turn
    healthy_at: dict[str, float] = field(default_factory=dict)  # name -> first seen healthy
    healthy_for: dict[str, float] = field(default_factory=dict)  # name -> before unhealthy
    up_since: dict[str, float] = field(default_factory=dict)  # name -> first seen serving
    served_at: dict[str, float] = field(default_factory=dict)  # looping name -> loop over at

    def holds(
        self,
        desired: DesiredState,
        observed: Observed,
        last_runs: Mapping[str, LastRun],
        now: float,
    ) -> Holds:
        """Update the book from what is observed now and say what to hold back."""
        specs = {c.name: (s.heal, c) for s in desired.services for c in s.replicas}
        present = {c.name for c in observed.containers}
        for name in [k for k in self.backoffs if k.startswith("container:")]:
            if name.removeprefix("container:") not in present:
                del self.backoffs[name]  # removed: healed at once, back-off starts over
        due: set[str] = set()
        held: dict[str, str] = {}
        for c in observed.containers:
            heal, spec = specs.get(c.name, (HealPolicy(), None))
            hc = spec.healthcheck if spec else None
            run = last_runs.get(c.name)
            if c.state in ("exited", "dead") and run is not None:
                self._exited(f"container:{c.name}", run, heal)
                if (
                    spec
                    and docker_will_restart(spec.restart, run)
                    and now < run.finished_at + (DOCKER_RESTART_WINDOW_S)
                ):
                    # Do not fight Docker: its policy restarts a crash within ~0.3 s. Only a
                    # manual stop leaves it down, and we start that one after the window.
                    held[f"container:{c.name}"] = "left to Docker's restart policy"
                    self.docker_window[c.name] = run.finished_at + DOCKER_RESTART_WINDOW_S
            key = f"container:{c.name}"
            if c.state == "running" and c.health in (None, "healthy"):
                up = self.up_since.setdefault(c.name, now)
                entry = self.backoffs.get(key)
                self.served_at.pop(c.name, None)
                if entry is not None and entry.seen_finish is not None:
                    # serving since its last counted failure (a fast heal's exit, unseen
                    # by any pass, counts too): for min_uptime, its loop is over
                    up = max(up, entry.seen_finish)
                    if now - up >= heal.min_uptime_s:
                        del self.backoffs[key]
                    else:  # look again then (the crash_loop alert resolves)
                        self.served_at[c.name] = up + heal.min_uptime_s
            else:
                self.up_since.pop(c.name, None)
                self.served_at.pop(c.name, None)
            if c.health == "healthy":
                self.healthy_at.setdefault(c.name, now)
            elif c.name in self.healthy_at:  # how long it stayed healthy
                self.healthy_for[c.name] = now - self.healthy_at.pop(c.name)
            if c.health == "unhealthy":
                grace = heal.unhealthy_grace_s
                if grace is None:
                    grace = hc.interval_s if hc else 0.0
                due_at = self.unhealthy_due_at.setdefault(c.name, now + grace)
                if now >= due_at:
                    self._unhealthy(c.name, due_at, now - (due_at - grace), heal)
                    due.add(c.name)
            else:
                self.unhealthy_due_at.pop(c.name, None)
        live_ids = {c.id for c in observed.containers}
        for cid in [k for k in self.signalled if k not in live_ids]:
            del self.signalled[cid]
        held |= {k: b.reason for k, b in self.backoffs.items() if b.not_before > now}
        for name in [n for n, t in self.docker_window.items() if t <= now or n not in present]:
            del self.docker_window[name]
        for seen in (self.healthy_at, self.healthy_for, self.up_since, self.served_at):
            for name in [n for n in seen if n not in present]:
                del seen[name]
        since = {
            name: at - grace_of(specs.get(name))
            for name, at in self.unhealthy_due_at.items()
            if name in present
        }
        return Holds(
            held=held,
            unhealthy_due=frozenset(due),
            signalled=dict(self.signalled),
            unhealthy_since=since,
        )

    def exit_hold(self, name: str, run: LastRun, heal: HealPolicy, now: float) -> str | None:
        """Count one replica's exit (the heal fast path); the back-off reason if it must wait."""
        key = f"container:{name}"
        self._exited(key, run, heal)
        entry = self.backoffs.get(key)
        return entry.reason if entry is not None and entry.not_before > now else None

    def _unhealthy(self, name: str, due_at: float, for_s: float, heal: HealPolicy) -> None:
        """Count one unhealthy verdict whose grace ran out (once: `due_at` marks it). It is a
        quick failure unless the replica had stayed healthy for `min_uptime` before."""
        key = f"container:{name}"
        entry = self.backoffs.get(key)
        if entry is not None and entry.seen_finish == due_at:
            return
        if self.healthy_for.pop(name, 0.0) >= heal.min_uptime_s:
            entry = None  # it had served well: its back-off starts over
        failures = (entry.failures if entry else 0) + 1
        delay = _delay(heal, failures)
        cause = causes.unhealthy(for_s).text
        self.backoffs[key] = _Backoff(
            failures,
            due_at + delay,
            f"crash-loop back-off {delay:g}s after {failures} quick failure(s), last {cause}",
            seen_finish=due_at,
            exit_code=entry.exit_code if entry else None,
            cause=cause,
        )

    def _exited(self, key: str, run: LastRun, heal: HealPolicy) -> None:
        entry = self.backoffs.get(key)
        if entry is not None and entry.seen_finish == run.finished_at:
            return  # this exit was already counted
        ran = run.finished_at - run.started_at
        if ran >= heal.min_uptime_s:
            self.backoffs.pop(key, None)
            return
        failures = (entry.failures if entry else 0) + 1
        delay = _delay(heal, failures)
        self.backoffs[key] = _Backoff(
            failures,
            run.finished_at + delay,
            f"crash-loop back-off {delay:g}s after {failures} quick exit(s), "
            f"last exit code {run.exit_code}",
            seen_finish=run.finished_at,
            exit_code=run.exit_code,
            cause=causes.exited(run.exit_code, run.oom_killed).text,
        )

    def record_failures(
        self,
        failed: Iterable[tuple[str, str, bool]],
        succeeded: Iterable[str],
        heal: Mapping[str, HealPolicy],
        now: float,
    ) -> None:
        """Back off the keys of failed actions (key, error, transient); clear those that
        succeeded. A transient error (the engine busy, a timeout) is retried at once, then
        after 1 s, 2 s ... up to TRANSIENT_MAX_S; a permanent one (Docker refused the request)
        waits backoff_initial from its first failure, doubling up to backoff_max."""
        for key in succeeded:
            entry = self.backoffs.get(key)
            if entry is not None and entry.seen_finish is None:
                del self.backoffs[key]
        for key, error, transient in failed:
            entry = self.backoffs.get(key)
            if entry is not None and entry.seen_finish is not None:
                continue  # a crash-loop back-off already governs this replica
            failures = (entry.failures if entry else 0) + 1
            policy = heal.get(key, HealPolicy())
            if transient:
                delay = min(_delay(policy, failures), TRANSIENT_MAX_S)
            else:
                delay = _delay(policy, failures + 1)
            self.backoffs[key] = _Backoff(failures, now + delay, f"retry in {delay:g}s: {error}")

    def crashlooping(self, now: float) -> dict[str, _Backoff]:
        """Replicas in crash-loop back-off right now, by container name."""
        return {
            k.removeprefix("container:"): b
            for k, b in self.backoffs.items()
            if b.seen_finish is not None and b.failures > 1 and b.not_before > now
        }

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """Replicas in crash-loop back-off, for `reconciler status` (JSON-ready)."""
        return {
            name: {
                "next_attempt": b.not_before,
                "failures": b.failures,
                "exit_code": b.exit_code,
                "cause": b.cause,
            }
            for name, b in self.crashlooping(now).items()
        }

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time a held action or an unhealthy grace falls due."""
        times = [b.not_before for b in self.backoffs.values() if b.not_before > now]
        times += [t for t in self.unhealthy_due_at.values() if t > now]
        times += [t for t in self.docker_window.values() if t > now]
        times += [t for t in self.served_at.values() if t > now]
        return min(times) if times else None


def grace_of(entry: tuple[HealPolicy, ContainerSpec | None] | None) -> float:
    """How long an unhealthy replica is given before it is restarted."""
    if entry is None:
        return 0.0
    heal, spec = entry
    if heal.unhealthy_grace_s is not None:
        return heal.unhealthy_grace_s
    return spec.healthcheck.interval_s if spec and spec.healthcheck else 0.0


def docker_will_restart(policy: str, run: LastRun) -> bool:
    """Whether Docker's restart policy acts on this exit (unless it was a manual stop)."""
    name = policy.partition(":")[0]
    if name in ("always", "unless-stopped"):
        return True
    return name == "on-failure" and run.exit_code not in (0, None)


def _delay(heal: HealPolicy, failures: int) -> float:
    """0 for a first failure (healed at once), then backoff_initial doubling, capped."""
    if failures <= 1:
        return 0.0
    return min(heal.backoff_initial_s * 2 ** (failures - 2), heal.backoff_max_s)
