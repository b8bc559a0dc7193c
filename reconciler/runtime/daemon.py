"""The one daemon, for every target: work queues and their workers, events, reload, notify.

Wiring only. Everything that wants a look enqueues a key: the periodic resync (every
`interval`), the engine's events (the target says which keys they touch), a file change or
SIGHUP (a reload: runtime.reload), and each reconcile's own requeue. Keys are reconciled
by a few workers, never two at once for one key; pulls and builds have workers of their
own. Nothing blocks one service's healing on another's work.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.config.web_config import WebConfig
from reconciler.core.events import Record, discard, trigger_text
from reconciler.core.policy import DEFAULT as DEFAULT_POLICY
from reconciler.core.policy import Denial, Policy
from reconciler.errors import EngineUnavailable
from reconciler.ops import listen_address
from reconciler.ops.http import serve
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.ops.metrics import Metrics
from reconciler.ops.notify import Notifier, watchdog_interval
from reconciler.ops.state_store import sweep
from reconciler.ops.webhook import PATH as WEBHOOK_PATH
from reconciler.runtime.backoff import BACKOFF, FOLLOW_UPS, REQUEUE, START, Backoff, requeue
from reconciler.runtime.conditions import ENGINE_UNREACHABLE_AFTER_S, DaemonConditions
from reconciler.runtime.git_source import GitSource
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.reload import Reloader
from reconciler.runtime.signals import SignalRelay
from reconciler.runtime.workqueue import ShutDown, WorkQueue
from reconciler.targets.base import RESYNC, Desired, Outcome, Settings, Target, TargetKind

log = structlog.get_logger("reconciler")

ENGINE_RETRY_S = 2.0  # a worker whose queue failed, or a watch that failed, breathes this long
STOP_WAIT_S = 35.0  # the longest Docker call we wait for at shutdown (client timeout + margin)


@dataclass(frozen=True, slots=True)
class Options:
    path: Path
    interval: float = 5.0
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 9816),)
    file_poll: float = 1.0
    workers: int = 4  # keys reconciled at once
    image_workers: int = 2  # pulls and builds at once
    lock_dir: Path | None = None
    state_dir: Path | None = None
    pull_timeout: float = 600.0
    prune_images: bool = False  # remove images this daemon pulled once nothing uses them
    # Two-step edits (`echo > file`, an editor's truncate-then-write): a file is read once it
    # has stayed unchanged for `settle`; services it no longer lists are removed only once it
    # has not changed for `removal_settle` (it is read again then).
    settle: float = 0.3
    removal_settle: float = 5.0
    policy: Path | None = None  # the host policy file (None: the default path)
    web: WebConfig | None = None  # TLS and basic auth for the endpoints
    strict_modes: bool = True  # refuse inputs others can write (config.strict_modes)
    engine_unreachable_after: float = ENGINE_UNREACHABLE_AFTER_S  # then it is a condition

    def settings(
        self, metrics: Metrics, cancelled: Callable[[], bool], record: Record = discard
    ) -> Settings:
        """What the daemon opens its target with."""
        return Settings(
            state_dir=self.state_dir,
            pull_timeout=self.pull_timeout,
            prune_images=self.prune_images,
            daemon=True,
            metrics=metrics,
            cancelled=cancelled,
            record=record,
        )


class Daemon:
    """Keeps one project converged on one target until stopped."""

    def __init__(
        self,
        options: Options,
        kind: TargetKind,
        desired: Desired,
        *,
        metrics: Metrics | None = None,
        signals: SignalRelay | None = None,
        policy: Policy | None = None,
        target: Target | None = None,
        record: Record | None = None,
    ) -> None:
        self.options = options
        self.kind = kind
        self.policy = policy or DEFAULT_POLICY
        self.metrics = metrics or Metrics()
        self.signals = signals or SignalRelay()
        self.notifier = Notifier()
        self.queue = WorkQueue()
        self.images = WorkQueue()
        self.backoff = Backoff()
        self.record: Record = record or Recorder()  # what happened: history, notifications
        self.conditions = DaemonConditions(
            self.record, engine_after=options.engine_unreachable_after
        )
        desired, denials = kind.judge(desired, self.policy)
        self.target = target or kind.open(
            desired, options.settings(self.metrics, self.signals.stop.is_set, self.record)
        )
        self.target.desired = desired
        self.target.bind(self._asked_by_target)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.state_valid = True
        self.unfinished = False  # run() returned with a worker still inside a Docker call
        self._last_end: float | None = None
        self._engine_up = False
        self._first_round: set[str] | None = None  # keys not reconciled yet since start
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._triggers: dict[str, str] = {}  # key -> what asked for it first
        self._passing = threading.local()  # .trigger: the label of the pass this thread runs
        self.denied: dict[str, str] = {}  # service -> the policy's rules denying it (status)
        self.reloader = Reloader(self)
        self.source: GitSource | None = None  # a followed git repository (set by the CLI)
        self.metrics.loaded(desired.digest)
        self.count_denials(denials)
        self.metrics.reloads.labels("success")
        self.metrics.reloads.labels("error")

    @property
    def desired(self) -> Desired:
        return self.target.desired

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Block until SIGTERM/SIGINT; return 0 within the current Docker call's timeout."""
        lock = ProjectLock(self.desired.project, self.options.lock_dir)
        lock.acquire()
        sweep(self.desired.project, self.options.state_dir)  # saves a crash left half-done
        servers = []
        workers: list[threading.Thread] = []
        try:
            for address in self.options.listen:
                try:
                    servers.append(
                        serve(
                            listen_address.resolve(address),  # docker0:9816 -> its IPv4
                            self.metrics.registry,
                            self.healthz,
                            self.readyz,
                            web=self.options.web,
                            hooks=self._hooks(),
                        )
                    )
                except OSError as exc:  # e.g. docker0 not up yet: keep reconciling anyway
                    log.error(
                        "cannot serve metrics", address=f"{address[0]}:{address[1]}", error=str(exc)
                    )
            for i in range(self.options.workers):
                workers.append(self._spawn(self.queue, f"worker-{i}"))
            for i in range(self.options.image_workers):
                workers.append(self._spawn(self.images, f"images-{i}"))
            self._first_round = set(self.target.first_keys())
            self.reloader.hold_start_removals()
            self.enqueue(RESYNC, 0.0, START)
            self._schedule()
            threading.Thread(target=self._events, name="events", daemon=True).start()
            threading.Thread(target=self.reloader.loop, name="reload", daemon=True).start()
            if self.source is not None:
                threading.Thread(target=self.source.loop, name="git", daemon=True).start()
            log.info(
                "started",
                project=self.desired.project,
                target=self.kind.name,
                file=str(self.options.path),
                interval=self.options.interval,
                listen=self.options.listen,
            )
            self.signals.pump()  # until SIGTERM/SIGINT (or stop())
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("stopping", project=self.desired.project)
            self.queue.shut_down()
            self.images.shut_down()
            self.target.close()
            self.scheduler.shutdown(wait=False)
            deadline = time.monotonic() + STOP_WAIT_S
            for t in workers:  # let a call under way finish (it has its own timeout)
                t.join(max(0.0, deadline - time.monotonic()))
            self.unfinished = any(t.is_alive() for t in workers)
            if self.unfinished:  # e.g. a stop with a long grace: Docker finishes it without us
                log.warning("exiting with a Docker call still under way", waited_s=STOP_WAIT_S)
            return 0
        finally:
            for server in servers:
                server.shutdown()
            lock.release()

    def stop(self) -> None:
        self.signals.stop.set()
        if self.source is not None:
            self.source.wake.set()

    def _hooks(self) -> dict[str, Any]:
        """POST routes: the git webhook, when a source has a secret for it."""
        webhook = self.source.webhook if self.source is not None else None
        return {WEBHOOK_PATH: webhook.handle} if webhook is not None else {}

    def _schedule(self) -> None:
        """Periodic ticks; each only enqueues or pings (none of them reconciles)."""
        jobs = [
            (lambda: self.enqueue(RESYNC, 0.0, "interval"), self.options.interval, "resync"),
            (self._watch_file, self.options.file_poll, "watch"),
        ]
        ping = watchdog_interval()
        if ping:
            jobs.append((self._watchdog, ping, "watchdog"))
        for func, seconds, name in jobs:
            self.scheduler.add_job(
                func, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
            )
        self.scheduler.start()

    def _watch_file(self) -> None:
        self.reloader.changed()
        self.conditions.tick()
        if self._first_round is None:
            self.write_status()
            if self._engine_up:  # else STATUS says the engine is unreachable (_engine_down)
                self.notifier.send(f"STATUS={self.status_line()}")

    def _watchdog(self) -> None:
        # Ping only while reconciles keep finishing: a wedged runtime gets restarted.
        if self._last_end is None or (
            time.monotonic() - self._last_end < 3 * self.options.interval + 60
        ):
            self.notifier.send("WATCHDOG=1")

    def _events(self) -> None:
        """The target's event watch, supervised: it outlives any one failure."""
        stop = self.signals.stop
        while not stop.is_set():
            try:
                self.target.watch(
                    stop,
                    lambda key, delay: self.enqueue(key, delay, "event"),
                    self.metrics.events.inc,
                )
            except Exception:
                log.exception("event watch failed; watching again")
            stop.wait(ENGINE_RETRY_S)

    # ------------------------------------------------------------------ work

    def enqueue(self, key: str, delay: float = 0.0, trigger: str = REQUEUE) -> None:
        if self.signals.stop.is_set():
            return
        queue = self.images if key.startswith("image:") else self.queue
        # What asked first names the pass; an explicit ask outranks a requeue or a back-off.
        if self._triggers.get(key, REQUEUE) in FOLLOW_UPS:
            self._triggers[key] = trigger
        queue.add_after(key, delay)

    def _asked_by_target(self, key: str, delay: float) -> None:
        """A key the target queues: at once, from inside a pass (a resync's services, a
        dependency, a finished pull), it is that pass's work and says what asked for it
        (`start`, `file`, `event`...); later, it is the target's `requeue`."""
        asking = getattr(self._passing, "trigger", None) if delay <= 0 else None
        self.enqueue(key, delay, asking or REQUEUE)

    def _spawn(self, queue: WorkQueue, name: str) -> threading.Thread:
        thread = threading.Thread(target=self._work, args=(queue,), name=name, daemon=True)
        thread.start()
        return thread

    def _work(self, queue: WorkQueue) -> None:
        """A worker: never dies of a reconcile's exception (logged, the key comes back)."""
        while True:
            try:
                key = queue.get()
            except ShutDown:
                return
            except Exception:  # the queue itself: log, breathe, go on
                log.exception("work queue failed; the worker goes on")
                if self.signals.stop.wait(ENGINE_RETRY_S):
                    return
                continue
            outcome: Outcome | None = None
            with self._busy_lock:
                self._busy += 1
            try:
                trigger = self._triggers.pop(key, REQUEUE)
                self.metrics.triggers.labels(trigger).inc()
                self._passing.trigger = trigger
                outcome = self.target.reconcile(key, trigger)
                self._engine_ok()
            except EngineUnavailable as exc:
                self._engine_down(exc)
                self.enqueue(key, self.backoff.next(key), BACKOFF)
            except Exception:
                log.exception("reconcile failed", key=key)
                self.enqueue(key, max(self.backoff.next(key), self.options.interval), BACKOFF)
            finally:
                self._passing.trigger = None
                queue.done(key)
                with self._busy_lock:
                    self._busy -= 1
                self._last_end = time.monotonic()
            if outcome is not None:
                delay, why = requeue(outcome, key, self.backoff)
                if delay is not None:
                    self.enqueue(key, delay, why)
                if outcome.ready or delay is None:
                    self._first_round_done(key)

    def _first_round_done(self, key: str) -> None:
        pending = self._first_round
        if pending is None:
            return
        pending.discard(key)
        if not pending and self._engine_up:
            self._first_round = None
            self.write_status()
            self.notifier.send("READY=1", f"STATUS={self.status_line()}")

    def _engine_ok(self) -> None:
        if not self._engine_up:
            self._engine_up = True
            self.metrics.docker_up.set(1)
            self.conditions.engine_ok()

    def _engine_down(self, exc: EngineUnavailable) -> None:
        was_up, self._engine_up = self._engine_up, False
        self.metrics.docker_up.set(0)
        self.metrics.docker_errors.labels("observe").inc()
        self.conditions.engine_down(str(exc))
        if was_up or self._first_round is not None:
            log.warning("engine down", error=str(exc))
        self.notifier.send(f"STATUS=Docker engine unreachable, retrying: {exc}")

    # ------------------------------------------------------------------ status

    def write_status(self) -> None:
        """What `reconciler status` and `reconciler reload` (other processes) read."""
        path = status_path(self.desired.project, self.options.lock_dir)
        data: dict[str, Any] = {
            "project": self.desired.project,
            "pid": os.getpid(),
            "target": self.kind.name,
            "updated_at": time.time(),
            "reload": self.reloader.last,
            "policy": self.policy.source,  # what `status` shows instead of judging again
            "denied": self.denied,
            "source": self.source.status() if self.source is not None else None,
            **self.target.status_data(),
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write status file", path=str(path), error=str(exc))

    def status_line(self) -> str:
        """`project: web 2/2, db 1/1, root denied` (running/desired, from the replica metrics;
        a service the host policy denies is never created)."""
        samples = {
            (s.labels["service"], s.labels["state"]): s.value
            for metric in self.metrics.replicas.collect()
            for s in metric.samples
        }
        denied = self.desired.denied
        parts = [
            f"{svc.name} denied"
            if svc.name in denied
            else f"{svc.name} {int(samples.get((svc.name, 'running'), 0))}"
            f"/{int(samples.get((svc.name, 'desired'), 0))}"
            for svc in self.desired.services
        ]
        return f"{self.desired.project}: " + ", ".join(parts)

    def count_denials(self, denials: tuple[Denial, ...], trigger: str = "interval") -> None:
        services = (s.name for s in self.desired.services)
        self.conditions.denials(denials, services, trigger_text(trigger))
        rules: dict[str, list[str]] = {}
        for d in denials:
            rules.setdefault(d.service, []).append(d.rule)
        self.denied = {svc: ", ".join(sorted(set(r))) for svc, r in sorted(rules.items())}
        for d in denials:
            self.metrics.policy_denials.labels(d.service, d.rule).inc()
            log.error(
                "denied by the host policy",
                service=d.service,
                rule=d.rule,
                error=d.message(str(self.options.path), self.policy),
            )

    # ------------------------------------------------------------------ health

    def healthz(self) -> tuple[bool, str]:
        """Alive: a reconcile finished within 3 intervals (or one is under way)."""
        if self._last_end is None:
            return True, "starting"
        age = time.monotonic() - self._last_end
        if age <= 3 * self.options.interval or self._busy:
            return True, f"ok: last reconcile {age:.1f}s ago"
        return False, f"no reconcile finished for {age:.0f}s"

    def readyz(self) -> tuple[bool, str]:
        """Ready: engine reachable, desired state valid, every key reconciled once."""
        problems = []
        if not self._engine_up:
            problems.append("docker engine unreachable")
        refused = self.source.problem() if self.source is not None else None
        if not self.state_valid and not refused:  # a refused commit says why by itself
            problems.append("desired state invalid")
        if refused:
            problems.append(refused)
        if self._first_round is not None:
            problems.append("first pass not done")
        return (not problems, "; ".join(problems) or "ready")
