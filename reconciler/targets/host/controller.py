"""Reconciles one key of one project on the host: `resync`, `service:NAME` or `image:NAME`.

Called through the host adapter by the workers of a `WorkQueue` (the daemon, and
`reconciler apply`): a key is
never handled by two workers at once, so each service's bookkeeping is its own. Nothing
here waits: a rollout monitor, a drain, a back-off or a pull in progress is a requeue
(`Outcome.requeue_after`). Pulls and builds run under their own keys, with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from reconciler.core import images as im
from reconciler.core import rollout as ro
from reconciler.core.healing import HealingBook, LastRun, docker_will_restart
from reconciler.core.model import (
    JUST_CREATED,
    LABEL_SPEC_HASH,
    Action,
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DesiredState,
    EnsureImage,
    HealPolicy,
    Observed,
    ObservedContainer,
    Plan,
    RestartContainer,
    ServiceSpec,
    SignalContainer,
    StartContainer,
    Step,
    UnpauseContainer,
)
from reconciler.core.notes import Note
from reconciler.core.planner import Holds, foreign_namespaces, plan
from reconciler.engine.docker_engine import Engine
from reconciler.errors import ActionFailed, Deferred, EngineUnavailable
from reconciler.ops.state_store import StateStore
from reconciler.targets.base import Outcome, image_key, service_key
from reconciler.targets.host.executor import StepResult, apply
from reconciler.targets.host.image_ledger import ImageLedger

if TYPE_CHECKING:  # prometheus_client is imported only where metrics are served
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")

DEPENDENCY_RECHECK_S = 1.0
VERIFY_AFTER_FAST_HEAL_S = 0.5
# Replicas started at once after a mass failure. Measured with 50: 12 and 64 side by side
# bring them back equally fast; the engine's own start throughput is the limit.
HEAL_POOL = 16
HEALTH_RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class Exit:
    """What Docker's `die` event says of a replica: name, spec-hash label, exit code, when."""

    name: str
    spec_hash: str
    exit_code: int | None
    at: float

    @classmethod
    def of(cls, attrs: Mapping[str, str], at: float) -> Exit:
        code = attrs.get("exitCode", "")
        exit_code = int(code) if code.lstrip("-").isdigit() else None
        return cls(attrs.get("name", ""), attrs.get(LABEL_SPEC_HASH, ""), exit_code, at)


class Controller:
    """Keeps one project converged, one key at a time."""

    def __init__(
        self,
        engine: Engine,
        desired: DesiredState,
        store: StateStore,
        *,
        metrics: Metrics | None = None,
        enqueue: Callable[[str, float], None] = lambda key, delay: None,
        clock: Callable[[], float] = time.time,
        workers: int = 16,
        pull_timeout_s: float = 600.0,
        cancelled: Callable[[], bool] = lambda: False,
        on_result: Callable[[StepResult], None] | None = None,
        on_note: Callable[[Note], None] = lambda note: None,
        follow_tags: bool = False,
        ledger: ImageLedger | None = None,
    ) -> None:
        self.engine = engine
        self.desired = desired
        self.store = store
        self.metrics = metrics
        self.enqueue = enqueue
        self.clock = clock
        self.workers = workers
        self.pull_timeout_s = pull_timeout_s
        self.cancelled = cancelled
        self.on_result = on_result
        self.on_note = on_note
        # Periodic pull_policy: ask the registry on schedule (the daemon; `apply` only pins).
        self.follow_tags = follow_tags
        self.ledger = ledger  # --prune-images: the images pulled, to remove once unused
        self._prune_wanted: set[str] = set()
        self._pins: dict[str, tuple[str, str | None]] = {}  # service -> (tag, local digest)
        self._tags: dict[str, im.TagCheck] = {}  # service -> the last look at its tag
        self._updating: dict[str, str] = {}  # service -> new digest pulled, rollout to come
        self.books: dict[str, HealingBook] = {}
        self._drained: dict[str, dict[str, float]] = {}  # service -> container id -> until
        # Per service (each is touched by its own worker only): exited container id -> its
        # last run; replacement id -> when it started.
        self._last_runs: dict[str, dict[str, LastRun]] = {}
        self._started: dict[str, dict[str, float]] = {}
        self._images_ready: dict[str, EnsureImage] = {}  # service -> image made present
        self._images_wanted: dict[str, EnsureImage] = {}
        # service -> replicas that just died (id -> what the event said)
        self._hints: dict[str, dict[str, Exit | None]] = {}
        self._run_starts: dict[str, float] = {}  # container id -> its last `start` event
        # Fast heals run beside their service's key (each its own container, each a start
        # of a replica on its current spec); the service's full reconcile waits for them.
        self._healing: dict[str, set[str]] = {}  # service -> ids being started
        self._deferred: set[str] = set()  # services whose reconcile waited for fast heals
        self._book_locks: dict[str, threading.Lock] = {}
        self._heal_pool = ThreadPoolExecutor(max_workers=HEAL_POOL, thread_name_prefix="heal")
        self._quiet: set[str] = set()  # services whose last reconcile found nothing to do
        # Services gone from the file are left alone while set (the daemon, when it starts on
        # a file that has just changed: two-step edits).
        self.hold_removals = False
        self._known: set[str] = set()  # container names seen: a create is then a heal
        self._known_volumes: set[str] = set()
        self._rows: dict[str, tuple[str, int, int, int]] = {}
        self._drift: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()  # for what several keys' workers share (metrics rows)
        self._infra_lock = threading.Lock()

    # ------------------------------------------------------------------ entry points

    def hint_died(self, service: str, container_id: str, exit: Exit | None = None) -> None:
        """A replica died (Docker event): the next reconcile of its service may start it
        straight away, without a full observe, if nothing else is pending for the service."""
        with self._lock:
            self._hints.setdefault(service, {})[container_id] = exit

    def note_started(self, container_id: str, at: float) -> None:
        """A container of the project started (Docker event): with the time of its `die`,
        its last run is known without an inspect."""
        with self._lock:
            self._run_starts[container_id] = at

    def forget(self, container_id: str) -> None:
        """A container of the project was removed."""
        with self._lock:
            self._run_starts.pop(container_id, None)

    def close(self) -> None:
        """Fast heals not started yet are dropped (the daemon is stopping)."""
        self._heal_pool.shutdown(wait=False, cancel_futures=True)

    def reconcile(self, key: str, trigger: str = "manual") -> Outcome:
        """One reconcile of one key; raise EngineUnavailable if the engine cannot be read."""
        kind, _, name = key.partition(":")
        start = time.monotonic()
        try:
            if kind == "service":
                outcome = self._service(name)
            elif kind == "image":
                outcome = self._image(name)
            else:
                outcome = self._resync()
        except EngineUnavailable:
            if self.metrics:
                self.metrics.runs.labels("error").inc()
            raise
        level = log.info if outcome.actions or trigger not in ("interval", "backoff") else log.debug
        level(
            "pass",
            project=self.desired.project,
            key=key,
            trigger=trigger,
            actions=outcome.actions,
            errors=outcome.errors,
            requeue_s=None if outcome.requeue_after is None else round(outcome.requeue_after, 3),
            duration_ms=round((time.monotonic() - start) * 1000, 1),
        )
        if self.metrics and kind != "image":
            m = self.metrics
            m.docker_up.set(1)
            m.runs.labels("error" if outcome.errors else "success").inc()
            m.duration.observe(time.monotonic() - start)
            if not outcome.errors:
                m.last_success.set(self.clock())
        return outcome

    def _namespaces(self, desired: DesiredState) -> tuple[dict[str, str], frozenset[str]]:
        """Containers outside the project that a `network_mode: container:X` joins: those
        that exist (name -> id), and the names of which none exists."""
        wanted = foreign_namespaces(desired)
        if not wanted:
            return {}, frozenset()
        found = self.engine.find_containers(wanted)
        return found, wanted - set(found)

    # ------------------------------------------------------------------ resync

    def _resync(self) -> Outcome:
        """Observe the project once; queue every service that has something to do."""
        desired = self.desired
        observed = self.engine.observe(desired.project)
        now = self.clock()
        drift: dict[str, int] = {}
        for note in plan(desired, observed, Holds(now=now)).notes:
            if note.kind in ("orphaned", "adopted"):
                log.debug("note", project=desired.project, note=str(note))
                self.on_note(note)
        observed = _without_project_objects(observed)  # reported above, once
        foreign, absent = self._namespaces(desired)
        for svc in map(self._pinned, desired.services):
            if svc.name in desired.denied:
                continue  # the host policy denies it: never created nor touched
            if self.follow_tags and im.follows(svc):
                check = self._tags.get(svc.name, im.TagCheck())
                due = check.next_at if check.image == im.unpinned(svc.image) else 0.0
                self.enqueue(image_key(svc.name), max(0.0, due - now))
            target, _, rollout = self._target(svc)
            mine = _containers_of(observed, svc.name)
            holds = Holds(
                now=now,
                drained=dict(self._drained.get(svc.name, {})),
                rollouts={svc.name: rollout},
                outside=foreign,
                absent=absent,
            )
            p = plan(_restrict(desired, target), replace(observed, containers=mine), holds)
            for note in p.notes:
                log.debug("note", project=desired.project, service=svc.name, note=str(note))
                self.on_note(note)
            for a in p.actions:
                drift[a.kind] = drift.get(a.kind, 0) + 1
            if p.steps or p.wake_at or svc.name not in self._quiet:
                self.enqueue(service_key(svc.name), 0.0)
        wanted = {s.name for s in desired.services}
        for gone in sorted({c.service for c in observed.containers} - wanted):
            self.enqueue(service_key(gone), 0.0)
            drift["container"] = drift.get("container", 0) + 1
        if self.metrics:
            for kind in ("network", "volume", "image", "container"):
                self.metrics.drift.labels(kind).set(drift.get(kind, 0))
        return Outcome()

    # ------------------------------------------------------------------ services

    def _target(self, svc: ServiceSpec) -> tuple[ServiceSpec, ro.Mode, ro.Rollout]:
        record = ro.refresh(self.store.get(svc.name), svc)
        target, mode = ro.target(svc, record)
        return target, mode, ro.rollout_for(svc, record, mode)

    def _service(self, name: str) -> Outcome:
        desired = self.desired
        svc = next((self._pinned(s) for s in desired.services if s.name == name), None)
        if svc is None and self.hold_removals:  # the daemon's start: the file may be half
            return Outcome()  # written; it is read again before anything is removed
        with self._lock:
            hints = self._hints.pop(name, {})
            healing = self._healing.setdefault(name, set())
            if name in desired.denied:  # the host policy denies it (reported at load)
                return Outcome()
            if svc is not None and hints and name in self._quiet:
                # Replicas died and nothing else is pending: each is started on one inspect,
                # in parallel and without waiting for the others (a mass failure comes back
                # as fast as Docker brings back its own).
                for cid in sorted(hints.keys() - healing):
                    healing.add(cid)
                    self._heal_pool.submit(self._fast_heal_job, desired, svc, cid, hints[cid])
                return Outcome(busy=True)
            if healing:  # the full reconcile waits for the fast heals under way
                self._deferred.add(name)
                return Outcome(busy=True)
        now = self.clock()
        observed = _without_project_objects(self.engine.observe(desired.project))
        mine = self._with_start_times(name, _containers_of(observed, name))
        book = self.books.setdefault(name, HealingBook())
        if name not in self._drained:
            self._drained[name] = self.store.drains(name)  # a crash must not strand a drain
        drained = self._drained[name]

        if svc is None:  # gone from the file: drain and remove what is left of it
            sub = DesiredState(desired.project, (), (), ())
            holds = Holds(now=now, drained=dict(drained), outside=_outside(observed, name))
            p = plan(sub, replace(observed, containers=mine), holds)
            results = self._apply(p)
            self._after(name, results, book, drained, now, {}, mine)
            self._quiet.discard(name)
            return self._outcome(p, results, book, now)

        record = ro.refresh(self.store.get(name), svc)
        foreign, absent = self._namespaces(desired)
        target, mode = ro.target(svc, record)
        rollout = ro.rollout_for(svc, record, mode)
        sub = _restrict(desired, target)
        sub_observed = replace(observed, containers=mine)
        last_runs = self._runs(name, mine)
        base = book.holds(sub, sub_observed, last_runs, now)
        holds = replace(
            base,
            now=now,
            ready=_ready(desired, observed),
            drained=dict(drained),
            rollouts={name: rollout},
            outside={**foreign, **_outside(observed, name)},
            absent=absent,
        )
        p = plan(sub, sub_observed, holds)
        for note in p.notes:
            log.debug("note", project=desired.project, service=name, note=str(note))
            self.on_note(note)
        results = self._apply(p)
        policies = {f"image:{name}": svc.heal} | {
            k: svc.heal for c in target.replicas for k in _keys_of(c.name)
        }
        self._after(name, results, book, drained, now, policies, mine)

        # Docker refusing a replacement fails the rollout; a timeout or an engine that went
        # away for a moment is retried (back-off), never held against the revision.
        refused = [
            (r.action, r.error or "")
            for r in results
            if r.outcome == "error" and not r.engine_fault and not _image_gone(r)
        ]
        after = self.engine.containers(desired.project) if results else observed.containers
        after_mine = tuple(c for c in after if c.service == name)
        new_record, events = ro.record_pass(
            record, svc, target, mode, p.verdicts, refused, after_mine, now
        )
        self.store.put(name, new_record)
        for event in events:
            self._rollout_event(name, event)
            self._image_update_event(name, event)
        self._service_metrics(svc, target, after_mine, new_record)
        if any(r.outcome == "success" and isinstance(r.action, StartContainer) for r in results):
            for other in desired.services:  # dependents may start now
                if name in other.depends_on:
                    self.enqueue(service_key(other.name), 0.0)
        outcome = self._outcome(p, results, book, now)
        if events and events[-1].kind in ("rolled_back", "paused"):
            return replace(outcome, requeue_after=0.0, busy=True)  # act on the new target now
        # A rollout under way keeps `apply` waiting (a crash loop on the right spec does not).
        wanted = {s.replica: s.spec_hash for s in target.replicas}
        rolling = mode != "paused" and any(
            ro.is_temp_name(c.name) or wanted.get(c.replica, c.spec_hash) != c.spec_hash
            for c in after_mine
        )
        if rolling:
            outcome = replace(outcome, busy=True)
        if any(c.health == "starting" for c in after_mine):  # look again once it has a verdict
            again = HEALTH_RECHECK_S if outcome.requeue_after is None else outcome.requeue_after
            outcome = replace(outcome, busy=True, requeue_after=min(again, HEALTH_RECHECK_S))
        if not p.steps and p.wake_at is None and not book.next_wakeup(now):
            self._quiet.add(name)
        else:
            self._quiet.discard(name)
        return outcome

    def _outcome(
        self, p: Plan, results: tuple[StepResult, ...], book: HealingBook, now: float
    ) -> Outcome:
        times = [t for t in (p.wake_at, book.next_wakeup(now)) if t is not None]
        delay = max(0.0, min(times) - now) if times else None
        if any(r.outcome == "success" for r in results):
            delay = 0.0  # level-based: look again at once, the next step may be due now
        waiting = any(r.outcome == "waiting" for r in results)
        gated = any(n.kind == "waiting" for n in p.notes)
        if gated:
            delay = DEPENDENCY_RECHECK_S if delay is None else min(delay, DEPENDENCY_RECHECK_S)
        busy = waiting or gated or p.wake_at is not None
        errors = sum(1 for r in results if r.outcome == "error")
        actions = sum(1 for r in results if r.outcome != "waiting")
        return Outcome(delay, busy, errors, actions)

    def _fast_heal_job(
        self, desired: DesiredState, svc: ServiceSpec, cid: str, exit: Exit | None
    ) -> None:
        """A fast heal on the heal pool; then its service is looked at again (at once when
        it was not plainly ours to start, or its reconcile waited for it)."""
        started = False
        try:
            started = not self.cancelled() and self._fast_heal(svc, cid, exit)
        except Exception as exc:  # an engine fault: the full reconcile takes over
            log.warning("fast heal failed", service=svc.name, container=cid[:12], error=str(exc))
        with self._lock:
            healing = self._healing.get(svc.name, set())
            healing.discard(cid)
            waited = not healing and svc.name in self._deferred
            if waited:
                self._deferred.discard(svc.name)
            if not started:
                self._quiet.discard(svc.name)
        now = not started or waited
        self.enqueue(service_key(svc.name), 0.0 if now else VERIFY_AFTER_FAST_HEAL_S)

    def _fast_heal(self, svc: ServiceSpec, cid: str, exit: Exit | None) -> bool:
        """Start a replica that just died when it is plainly ours to start: its spec is
        current, no back-off holds it, Docker's restart policy will not. Its last run comes
        from the events (its `start`, then this `die`), else from one inspect."""
        with self._lock:
            began = self._run_starts.get(cid)
        if exit is not None and began is not None and began <= exit.at:
            name, spec_hash, status = exit.name, exit.spec_hash, "exited"
            run: LastRun | None = LastRun(began, exit.at, exit.exit_code)
        else:
            info = self.engine.inspect(cid)
            if info is None:
                return False
            name = str(info.get("Name", "")).lstrip("/")
            status = (info.get("State") or {}).get("Status", "")
            spec_hash = ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_SPEC_HASH, "")
            run = self.engine.last_run_of(info)
        spec = next((c for c in svc.replicas if c.name == name), None)
        if (
            spec is None
            or svc.state != "running"
            or status != "exited"
            or spec_hash != spec.spec_hash
            or run is None
            or docker_will_restart(spec.restart, run)
            or (svc.job and run.exit_code == 0)  # a job that completed: done
        ):
            return False
        with self._book_lock(svc.name):
            book = self.books.setdefault(svc.name, HealingBook())
            if book.exit_hold(name, run, svc.heal, self.clock()) is not None:
                return False
        action = StartContainer(cid, name, svc.name, f"exited ({run.exit_code})")
        results = self._apply(Plan(steps=(Step(action),)))
        with self._book_lock(svc.name):
            drained = self._drained.setdefault(svc.name, {})
            self._after(svc.name, results, book, drained, self.clock(), {}, None)
        return bool(results) and results[0].outcome == "success"

    def _book_lock(self, service: str) -> threading.Lock:
        """Fast heals of one service run side by side: their bookkeeping takes turns."""
        with self._lock:
            return self._book_locks.setdefault(service, threading.Lock())

    def _with_start_times(
        self, service: str, containers: tuple[ObservedContainer, ...]
    ) -> tuple[ObservedContainer, ...]:
        """Replacements being judged need their start time (one inspect each, remembered)."""
        known = self._started.setdefault(service, {})  # only this service's worker uses it
        out = []
        for c in containers:
            if ro.is_temp_name(c.name) and c.state != "created":
                if c.id not in known:
                    at = self.engine.started_at(c.id)
                    if at is not None:
                        known[c.id] = at
                c = replace(c, started_at=known.get(c.id))
            out.append(c)
        live = {c.id for c in containers}
        for cid in [k for k in known if k not in live]:
            del known[cid]
        return tuple(out)

    def _runs(self, service: str, containers: tuple[ObservedContainer, ...]) -> dict[str, LastRun]:
        """Last runs of exited replicas: one inspect per exit (in parallel when a mass failure
        left many), remembered while the container stays exited."""
        known = self._last_runs.setdefault(service, {})  # only this service's worker uses it
        down = [c for c in containers if c.state in ("exited", "dead")]
        down_ids = {c.id for c in down}
        for cid in [k for k in known if k not in down_ids]:
            del known[cid]  # started again, or gone
        missing = [c.id for c in down if c.id not in known]
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                found = dict(zip(missing, pool.map(self.engine.last_run, missing), strict=True))
        else:
            found = {cid: self.engine.last_run(cid) for cid in missing}
        known.update({cid: run for cid, run in found.items() if run is not None})
        return {c.name: known[c.id] for c in down if c.id in known}

    # ------------------------------------------------------------------ images

    def _image(self, service: str) -> Outcome:
        """Pull or build a service's image (its own key: it never holds up a heal)."""
        if service in self._prune_wanted:
            self._prune_wanted.discard(service)
            self._prune(service)
        action = self._images_wanted.get(service)
        if action is None:
            return self._check_tag(service) if self.follow_tags else Outcome()
        started = time.monotonic()
        log.info(
            "action",
            service=service,
            object=action.image,
            action=action.verb,
            kind="image",
            reason=action.reason,
            result="started",
        )

        def progress(line: str) -> None:
            log.info("image progress", service=service, image=action.image, progress=line)

        try:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s, progress=progress)
        except ActionFailed as exc:
            result = StepResult(
                action, "error", str(exc), time.monotonic() - started, exc.transient
            )
        else:
            result = StepResult(action, "success", None, time.monotonic() - started)
            self._images_ready[service] = action
            self._pulled(service, action.image)
        self._images_wanted.pop(service, None)
        self._report(result, job=True)
        book = self.books.setdefault(service, HealingBook())
        svc = next((s for s in self.desired.services if s.name == service), None)
        heal = {action.key: svc.heal} if svc else {}
        if result.outcome == "error":
            book.record_failures(
                [(action.key, result.error or "", result.transient)], [], heal, self.clock()
            )
        else:
            book.record_failures([], [action.key], heal, self.clock())
        self.enqueue(service_key(service), 0.0)
        return Outcome(errors=int(result.outcome == "error"), actions=1)

    def _pinned(self, svc: ServiceSpec) -> ServiceSpec:
        """A service that follows its tag, pinned to the digest the tag has locally (looked up
        once, again after each pull or check of it)."""
        if not im.follows(svc):
            return svc
        tag, digest = self._pins.get(svc.name, ("", None))
        if tag != svc.image:  # not looked up yet, or the file names another tag now
            digest = self.engine.local_digest(svc.image)
            self._pins[svc.name] = (svc.image, digest)
        return im.pin(svc, digest or "")

    def _pulled(self, service: str, image: str) -> None:
        self._pins.pop(service, None)
        if self.ledger is not None:
            image_id = self.engine.image_id(image)
            if image_id:
                self.ledger.add(service, image_id)
            self._prune(service)

    def _check_tag(self, service: str) -> Outcome:
        """Ask the registry for the tag's digest (no layers); pull when it moved, then let the
        service roll out to it. A registry that fails changes nothing and is asked again
        with back-off."""
        svc = next((s for s in self.desired.services if s.name == service), None)
        if svc is None or not im.follows(svc) or svc.pull_every_s is None:
            self._tags.pop(service, None)
            return Outcome()
        every, now = svc.pull_every_s, self.clock()
        check = self._tags.get(service, im.TagCheck())
        if check.image != svc.image:  # another tag since: ask at once
            check = im.TagCheck(image=svc.image)
        if now < check.next_at:
            return Outcome(requeue_after=check.next_at - now)
        try:
            newest = self.engine.registry_digest(svc.image)
            local = self.engine.local_digest(svc.image)
            self._pins.pop(service, None)  # re-read: someone may have pulled it meanwhile
            if newest and newest != local:
                log.info(
                    "image tag moved; pulling",
                    service=service,
                    image=svc.image,
                    local=local,
                    newest=newest,
                )
                pull = EnsureImage(service, svc.image, "always", reason="the tag moved")
                self._image_job(pull)
                if local is not None:  # a new digest of what ran (not the first pull)
                    self._updating[service] = newest
                self.enqueue(service_key(service), 0.0)
                result = None
            else:
                result = "unchanged"
                log.debug("image tag unchanged", service=service, image=svc.image, digest=newest)
        except ActionFailed as exc:
            check = im.failed(check, now, every, str(exc))
            self._tags[service] = check
            log.warning(
                "image check failed; what runs is left alone",
                service=service,
                image=svc.image,
                error=str(exc),
                retry_s=round(check.next_at - now, 3),
            )
            self._count_update(service, "error")
            return Outcome(requeue_after=check.next_at - now, errors=1)
        self._tags[service] = im.checked(check, now, every, newest)
        self._prune(service)
        if result:
            self._count_update(service, result)
        return Outcome(requeue_after=every)

    def _image_job(self, action: EnsureImage) -> None:
        """Pull for a followed tag on this (image) worker; raise ActionFailed."""
        started = time.monotonic()

        def progress(line: str) -> None:
            log.info("image progress", service=action.service, image=action.image, progress=line)

        try:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s, progress=progress)
        except ActionFailed as exc:
            self._report(
                StepResult(action, "error", str(exc), time.monotonic() - started, exc.transient),
                job=True,
            )
            raise
        self._report(StepResult(action, "success", None, time.monotonic() - started), job=True)
        self._pulled(action.service, action.image)

    def _prune(self, service: str) -> None:
        """--prune-images: remove the images pulled for `service` that no container (anyone's)
        uses, except what its tag names now, what a rollback returns to, and the last two
        pulled (the previous one stays for a rollback by hand). Never forced."""
        ids = self.ledger.of(service) if self.ledger is not None else []
        if len(ids) <= 2 or self.ledger is None:
            return
        svc = next((s for s in self.desired.services if s.name == service), None)
        stable = self.store.get(service).stable
        refs = [im.unpinned(svc.image)] if svc else []
        keep = self.engine.images_in_use() | set(ids[-2:])
        keep |= {self.engine.image_id(ref) or "" for ref in refs + [c.image for c in stable[:1]]}
        for image_id in ids:
            if image_id in keep:
                continue
            if self.engine.remove_image(image_id):
                self.ledger.forget(service, image_id)
                log.info("image pruned", service=service, image=image_id[:19])
            else:
                log.debug("image not pruned (Docker refused)", service=service, image=image_id)

    def _image_update_event(self, service: str, event: ro.RolloutEvent) -> None:
        """The end of the rollout a moved tag started: updated, rolled_back or paused."""
        if self.ledger is not None and event.kind in ("completed", "rollback_completed"):
            self._prune_wanted.add(service)  # the old image may be unused now
            self.enqueue(image_key(service), 0.0)
        if service in self._updating and event.kind in ("completed", "rolled_back", "paused"):
            self._updating.pop(service, None)
            self._count_update(service, "updated" if event.kind == "completed" else event.kind)

    def _count_update(self, service: str, result: str) -> None:
        if self.metrics:
            self.metrics.image_updates.labels(service, result).inc()

    def tags(self) -> dict[str, dict[str, object]]:
        """The followed tags, for `reconciler status` (JSON-ready)."""
        return {
            name: {
                "newest": c.newest,
                "checked_at": c.checked_at,
                "next_at": c.next_at,
                "error": c.error or None,
            }
            for name, c in list(self._tags.items())
        }

    def _ensure(self, action: EnsureImage) -> None:
        """The EnsureImage step of a service plan: done when the image is there for this
        spec; otherwise queue the pull or build and come back when it is over."""
        if self._images_ready.get(action.service) == action:
            return
        if (
            action.build is None
            and action.pull == "missing"
            and self.engine.image_present(action.image)
        ):
            self._images_ready[action.service] = action
            return
        if action.pull == "never" and action.build is None:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s)
            return
        self._images_wanted[action.service] = action
        self.enqueue(image_key(action.service), 0.0)
        raise Deferred(f"waiting for the {action.verb} of {action.image}")

    # ------------------------------------------------------------------ apply

    def _execute(self, action: Action) -> None:
        if isinstance(action, EnsureImage):
            self._ensure(action)
        elif isinstance(action, CreateNetwork | CreateVolume):
            # Services share networks and volumes: one creator at a time, and only once
            # (Docker lets two networks have one name).
            with self._infra_lock:
                if not self.engine.exists(action.kind, action.name):
                    self.engine.execute(action)
        else:
            self.engine.execute(action)

    def _apply(self, p: Plan) -> tuple[StepResult, ...]:
        if not p.steps:
            return ()
        return apply(
            p,
            self._execute,
            workers=self.workers,
            on_result=self._report,
            cancelled=self.cancelled,
        )

    def _after(
        self,
        service: str,
        results: tuple[StepResult, ...],
        book: HealingBook,
        drained: dict[str, float],
        now: float,
        policies: Mapping[str, HealPolicy],
        observed: tuple[ObservedContainer, ...] | None,
    ) -> None:
        """Bookkeeping after a service's steps: back-offs, drains, signals, known names.
        `observed`: the service's containers the steps were planned from (None: unknown)."""
        failed = [
            (r.action.key, r.error or "", r.transient)
            for r in results
            if r.outcome == "error" and (r.engine_fault or not ro.is_replacement(r.action))
        ]
        succeeded = [r.action.key for r in results if r.outcome == "success"]
        book.record_failures(failed, succeeded, policies, now)
        svc = next((s for s in self.desired.services if s.name == service), None)
        drains = {service: svc.drain_s} if svc else {}
        ran = [(r.action, r.outcome == "success") for r in results if r.outcome != "skipped"]
        alive = None if observed is None else {c.id for c in observed}
        kept = ro.drained_after(drained, ran, drains, now, alive)
        drained.clear()
        drained.update(kept)
        self.store.put_drains(service, kept)
        for r in results:
            a = r.action
            if _image_gone(r):  # removed behind our back: make it present again next pass
                self._images_ready.pop(service, None)
            if r.outcome != "success":
                continue
            if isinstance(a, SignalContainer):
                book.signalled[a.id] = a.digest
            elif isinstance(a, CreateVolume):
                if a.spec.name in self._known_volumes:
                    log.warning(
                        "volume was removed and is recreated EMPTY: its data is gone",
                        volume=a.spec.name,
                        project=self.desired.project,
                    )
                self._known_volumes.add(a.spec.name)
            elif isinstance(a, CreateContainer) and a.as_name is None:
                self._known.add(a.spec.name)
            elif isinstance(a, StartContainer):
                self._last_runs.get(service, {}).pop(a.id, None)

    def _report(self, r: StepResult, *, job: bool = False) -> None:
        a = r.action
        if isinstance(a, EnsureImage) and not job and r.outcome in ("success", "waiting"):
            return  # the image was there, or its pull is queued: the pull itself reports
        service = a.service
        fields = {
            "service": service,
            "container": a.name if a.kind == "container" else None,
            "object": a.name if a.kind != "container" else None,
            "action": a.verb,
            "kind": a.kind,
            "reason": a.reason,
            "duration_ms": round(r.duration_s * 1000, 1),
            "result": r.outcome,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if r.outcome == "success":
            log.info("action", **fields)
        elif r.outcome == "waiting":
            log.info("action", note=r.error, **fields)
        else:
            log.warning("action", error=r.error, **fields)
        if self.on_result:
            self.on_result(r)
        if self.metrics and r.outcome in ("success", "error"):
            self.metrics.actions.labels(a.verb, a.kind, r.outcome).inc()
            if r.outcome == "error":
                self.metrics.docker_errors.labels(f"{a.verb}_{a.kind}").inc()
            reason = self._heal_reason(a)
            if reason and r.outcome == "success" and service:
                self.metrics.heals.labels(service, reason).inc()

    def _heal_reason(self, a: Action) -> str | None:
        match a:
            case StartContainer(reason=reason) if reason != JUST_CREATED and not (
                ro.is_temp_name(a.name) or reason.startswith("replaces")
            ):
                return "exited"
            case RestartContainer():
                return "unhealthy"
            case UnpauseContainer():
                return "paused"
            case CreateContainer(reason="dead"):
                return "dead"
            case CreateContainer(spec=spec, as_name=None) if spec.name in self._known:
                return "removed"
            case ConnectNetwork(reconnect=False):
                return "network"
        return None

    # ------------------------------------------------------------------ rollouts

    def _rollout_event(self, service: str, event: ro.RolloutEvent) -> None:
        fields = {"service": service, "revision": event.revision[:12]}
        match event.kind:
            case "started":
                log.info("rollout started", **fields)
            case "completed":
                log.info("rollout completed", note=event.reason or None, **fields)
            case "failure":
                log.warning("rollout: a new replica failed", reason=event.reason, **fields)
            case "rolled_back":
                log.warning("rollout failed; rolling back", reason=event.reason, **fields)
            case "rollback_completed":
                log.info("rollback completed", **fields)
            case "paused":
                log.warning("rollout paused", reason=event.reason, **fields)
        if self.metrics and event.kind in ("completed", "rolled_back", "paused"):
            self.metrics.rollout_finished(service, event.kind)

    def _service_metrics(
        self,
        svc: ServiceSpec,
        target: ServiceSpec,
        containers: tuple[ObservedContainer, ...],
        record: ro.RolloutRecord,
    ) -> None:
        if self.metrics is None:
            return
        live = {c.name: c for c in containers}
        cs = [live[c.name] for c in target.replicas if c.name in live]
        running = sum(1 for c in cs if c.state == "running")
        healthy = sum(1 for c in cs if c.state == "running" and c.health in (None, "healthy"))
        rolling = bool(record.rolling_revision) or (
            record.failed_revision == svc.revision and not ro.converged(target, containers)
        )
        with self._lock:
            self._rows[svc.name] = (svc.name, len(svc.replicas), running, healthy)
            wanted = {s.name for s in self.desired.services}
            rows = [row for name, row in self._rows.items() if name in wanted]
            self.metrics.set_replicas(rows)
            self.metrics.set_rollout(svc.name, rolling)
            loops = sum(
                1 for _ in self.books.get(svc.name, HealingBook()).crashlooping(self.clock())
            )
            self.metrics.crashloop.labels(svc.name).set(loops)

    def crashloops(self) -> dict[str, dict[str, object]]:
        """Replicas in crash-loop back-off, for `reconciler status` (JSON-ready)."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for book in list(self.books.values()):
            out |= book.snapshot(now)
        return out


def _containers_of(observed: Observed, service: str) -> tuple[ObservedContainer, ...]:
    return tuple(c for c in observed.containers if c.service == service)


def _outside(observed: Observed, service: str) -> dict[str, str]:
    """Names and ids of the other services' containers (names are shared by the engine)."""
    return {c.name: c.id for c in observed.containers if c.service != service}


def _without_project_objects(observed: Observed) -> Observed:
    """For one service's plan: orphaned networks and volumes are the resync's to report."""
    return replace(observed, project_networks=frozenset(), project_volumes=frozenset())


def _restrict(desired: DesiredState, svc: ServiceSpec) -> DesiredState:
    """The desired state of one service: it and the networks and volumes it uses."""
    nets = {a.network for c in svc.replicas for a in c.networks}
    vols = {v for c in svc.replicas for v in c.volumes}
    return replace(
        desired,
        networks=tuple(n for n in desired.networks if n.name in nets),
        volumes=tuple(v for v in desired.volumes if v.name in vols),
        services=(svc,),
    )


def _ready(desired: DesiredState, observed: Observed) -> frozenset[str]:
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


def _image_gone(r: StepResult) -> bool:
    """A create Docker refused because its image is not there (removed since it was made
    present): the image is made present again; the spec is not at fault."""
    return (
        r.outcome == "error"
        and isinstance(r.action, CreateContainer)
        and "No such image" in (r.error or "")
    )


def _keys_of(name: str) -> tuple[str, ...]:
    return (f"container:{name}", f"create:{name}")
