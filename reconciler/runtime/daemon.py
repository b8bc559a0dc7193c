"""The long-running shell: work queues and their workers, watchers, reload, notify, HTTP.

Wiring only. Everything that wants a look enqueues a key: the periodic resync (every
`interval`), Docker events (the service of the container), a file change or SIGHUP
(a reload, one at a time, the latest wins), and each reconcile's own requeue. Services
are reconciled by a few workers, never two at once for one service; pulls and builds
have workers of their own. Nothing blocks one service's healing on another's work.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.config import loader as desired_file
from reconciler.config import policy_file, strict_modes
from reconciler.config.web_config import WebConfig
from reconciler.core.model import DesiredState
from reconciler.core.policy import DEFAULT as DEFAULT_POLICY
from reconciler.core.policy import Denial, Policy, enforce
from reconciler.engine.docker_engine import Engine
from reconciler.errors import DesiredStateError, EngineUnavailable
from reconciler.ops.http import serve
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.ops.metrics import Metrics
from reconciler.ops.notify import Notifier, watchdog_interval
from reconciler.runtime.controller import RESYNC, Controller, Exit, Outcome, service_key
from reconciler.runtime.image_ledger import ImageLedger
from reconciler.runtime.signals import SignalRelay
from reconciler.runtime.state_store import StateStore
from reconciler.runtime.watchers import EventWatcher, stamps
from reconciler.runtime.workqueue import ShutDown, WorkQueue

log = structlog.get_logger("reconciler")

ENGINE_RETRY_S = 2.0
EVENT_RECHECK_S = 0.5
# A network or volume event asks for a resync a moment later, so a burst (every replica
# that dies leaves its networks: 50 `disconnect`s in a mass failure) is one resync.
RESYNC_COALESCE_S = 0.25
STOP_WAIT_S = 35.0  # the longest Docker call we wait for at shutdown (client timeout + margin)


@dataclass(frozen=True, slots=True)
class Options:
    path: Path
    interval: float = 5.0
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 9816),)
    file_poll: float = 1.0
    workers: int = 4  # services reconciled at once
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


class Daemon:
    """Keeps one project converged until stopped."""

    def __init__(
        self,
        options: Options,
        desired: DesiredState,
        api: docker.APIClient,
        metrics: Metrics | None = None,
        signals: SignalRelay | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.options = options
        self.policy = policy or DEFAULT_POLICY
        self.api = api
        self.metrics = metrics or Metrics()
        self.signals = signals or SignalRelay()
        self.notifier = Notifier()
        self.engine = Engine(api)
        self.queue = WorkQueue()
        self.images = WorkQueue()
        self.controller = Controller(
            self.engine,
            desired,
            StateStore(desired.project, options.state_dir),
            metrics=self.metrics,
            enqueue=self.enqueue,
            pull_timeout_s=options.pull_timeout,
            cancelled=self.signals.stop.is_set,
            follow_tags=True,
            ledger=ImageLedger(desired.project, options.state_dir)
            if options.prune_images
            else None,
        )
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._file_stamp = self._stamps(desired)
        self._last_end: float | None = None
        self._engine_up = False
        self._state_valid = True
        self._first_round: set[str] | None = None  # services not reconciled yet since start
        self._busy = 0
        self.unfinished = False  # run() returned with a worker still inside a Docker call
        self._reload_trigger = "signal"
        self._hups_served = 0
        self._reload_error: str | None = None
        # The last reload, for `reconciler reload` (systemd's ExecReload) to wait on.
        self._last_reload: dict[str, object] | None = None
        self._triggers: dict[str, str] = {}  # key -> what asked for it first
        self._busy_lock = threading.Lock()
        self.events = EventWatcher(
            api,
            lambda: self.controller.desired,
            on_container=self._on_container_event,
            on_other=lambda: self.enqueue(RESYNC, RESYNC_COALESCE_S, "event"),
            on_event=self.metrics.events.inc,
            stop=self.signals.stop,
        )
        self.metrics.loaded(desired.digest)
        desired, denials = enforce(desired, self.policy)
        self.controller.desired = desired
        self._count_denials(denials)
        self.metrics.reloads.labels("success")
        self.metrics.reloads.labels("error")

    @property
    def desired(self) -> DesiredState:
        return self.controller.desired

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Block until SIGTERM/SIGINT; return 0 within the current Docker call's timeout."""
        lock = ProjectLock(self.desired.project, self.options.lock_dir)
        lock.acquire()
        self.controller.store.sweep()  # saves a crash (or a full disk) left half-done
        servers = []
        workers: list[threading.Thread] = []
        try:
            for address in self.options.listen:
                try:
                    servers.append(
                        serve(
                            address,
                            self.metrics.registry,
                            self.healthz,
                            self.readyz,
                            web=self.options.web,
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
            self._first_round = {s.name for s in self.desired.services}
            self._hold_start_removals()
            self.enqueue(RESYNC, 0.0, "interval")
            self._schedule()
            self.events.start()
            threading.Thread(target=self._reloader, name="reload", daemon=True).start()
            log.info(
                "started",
                project=self.desired.project,
                file=str(self.options.path),
                interval=self.options.interval,
                listen=self.options.listen,
                state=str(self.controller.store.path),
            )
            self.signals.pump()  # until SIGTERM/SIGINT (or stop())
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("stopping", project=self.desired.project)
            self.queue.shut_down()
            self.images.shut_down()
            self.engine.cancel_transfers()
            self.controller.close()
            self.events.close()
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

    # ------------------------------------------------------------------ work

    def enqueue(self, key: str, delay: float = 0.0, trigger: str = "backoff") -> None:
        if self.signals.stop.is_set():
            return
        if trigger != "backoff" or delay > 0:
            self.metrics.triggers.labels(trigger).inc()
        queue = self.images if key.startswith("image:") else self.queue
        self._triggers.setdefault(key, trigger)
        queue.add_after(key, delay)

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
                trigger = self._triggers.pop(key, "backoff")
                outcome = self.controller.reconcile(key, trigger)
                self._engine_ok()
            except EngineUnavailable as exc:
                self._engine_down(exc)
                queue.add_after(key, ENGINE_RETRY_S)
            except Exception:
                log.exception("reconcile failed", key=key)
                queue.add_after(key, self.options.interval)
            finally:
                queue.done(key)
                with self._busy_lock:
                    self._busy -= 1
                self._last_end = time.monotonic()
            if outcome is not None:
                if outcome.requeue_after is not None:
                    self.enqueue(key, outcome.requeue_after, "backoff")
                self._first_round_done(key)

    def _first_round_done(self, key: str) -> None:
        pending = self._first_round
        if pending is None:
            return
        pending.discard(key.removeprefix("service:"))
        if not pending and self._engine_up:
            self._first_round = None
            self._write_status()
            self.notifier.send("READY=1", f"STATUS={self._status_line()}")

    def _on_container_event(
        self, service: str, action: str, container_id: str, event: dict[str, Any]
    ) -> None:
        at = event.get("timeNano", 0) / 1e9 or time.time()
        if action == "start":
            self.controller.note_started(container_id, at)
            return
        if action == "destroy":
            self.controller.forget(container_id)
        if action == "die":
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            self.controller.hint_died(service, container_id, Exit.of(attrs, at))
        self.enqueue(service_key(service), 0.0, "event")
        # Docker's container list can lag its own events (a `die` or `pause` still shows
        # "running" for up to ~0.2 s): look once more a moment later.
        self.queue.add_after(service_key(service), EVENT_RECHECK_S)

    def _engine_ok(self) -> None:
        if not self._engine_up:
            self._engine_up = True
            self.metrics.docker_up.set(1)

    def _engine_down(self, exc: EngineUnavailable) -> None:
        was_up, self._engine_up = self._engine_up, False
        self.metrics.docker_up.set(0)
        self.metrics.docker_errors.labels("observe").inc()
        if was_up or self._first_round is not None:
            log.warning("engine down", error=str(exc))
        self.notifier.send(f"STATUS=Docker engine unreachable, retrying: {exc}")

    # ------------------------------------------------------------------ status

    def _write_status(self) -> None:
        """Crash-loop state for `reconciler status` (another process) to read."""
        path = status_path(self.desired.project, self.options.lock_dir)
        data = {
            "project": self.desired.project,
            "pid": os.getpid(),
            "updated_at": time.time(),
            "crashloop": self.controller.crashloops(),
            "images": self.controller.tags(),
            "reload": self._last_reload,
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write status file", path=str(path), error=str(exc))

    def _status_line(self) -> str:
        samples = {
            (s.labels["service"], s.labels["state"]): s.value
            for metric in self.metrics.replicas.collect()
            for s in metric.samples
        }
        parts = [
            f"{svc.name} {int(samples.get((svc.name, 'running'), 0))}/{len(svc.replicas)}"
            for svc in self.desired.services
        ]
        return f"{self.desired.project}: " + ", ".join(parts)

    def _watchdog(self) -> None:
        # Ping only while reconciles keep finishing: a wedged runtime gets restarted.
        if self._last_end is None or (
            time.monotonic() - self._last_end < 3 * self.options.interval + 60
        ):
            self.notifier.send("WATCHDOG=1")

    # ------------------------------------------------------------------ desired state

    def _stamps(self, desired: DesiredState) -> tuple[object, ...]:
        policy = self.options.policy or policy_file.DEFAULT_PATH
        return stamps(self.options.path, (*desired.watched, str(policy)))

    def _watch_file(self) -> None:
        stamp = self._stamps(self.desired)
        if stamp != self._file_stamp:
            self._file_stamp = stamp
            self._reload_trigger = "file"
            self.signals.reload.set()
        if self._first_round is None:
            self._write_status()
            self.notifier.send(f"STATUS={self._status_line()}")

    def _reloader(self) -> None:
        """One reload at a time; requests that arrive meanwhile fold into the next one."""
        while not self.signals.stop.is_set():
            if not self.signals.reload.wait(0.5):
                continue
            self.signals.reload.clear()
            try:
                self._reload_once()
            except Exception:  # supervised: the thread outlives any one reload
                log.exception("reload thread error; reloading goes on")

    def _reload_once(self) -> None:
        """One reload, then what `reconciler reload` and systemd wait for."""
        trigger, self._reload_trigger = self._reload_trigger, "signal"
        if self.signals.hups != self._hups_served:
            # A SIGHUP folded into a file change's reload still gets RELOADING=1/READY=1:
            # with Type=notify-reload, systemd waits for them after each SIGHUP it sends.
            self._hups_served = self.signals.hups
            trigger = "signal"
        started_usec = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as systemd's
        if trigger == "signal":
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={started_usec}")
        try:
            ok = self.reload(trigger)
        except Exception as exc:  # never the end of reloading: the next edit is read
            ok = self._reload_failed(f"reload failed: {type(exc).__name__}: {exc}")
            log.exception("reload failed; keeping the last good desired state")
        if trigger == "signal":
            self.notifier.send("READY=1", f"STATUS={self._status_line()}")
        # `reconciler reload` (ExecReload) waits for a reload that started after its
        # SIGHUP: systemd 252 cannot wait for RELOADING=1/READY=1 itself (253's
        # Type=notify-reload can). Written after READY=1, so the new STATUS is in
        # systemd's queue before ExecReload exits (it reads notifications before SIGCHLD).
        self._last_reload = {
            "monotonic_usec": started_usec,
            "trigger": trigger,
            "result": "success" if ok else "error",
            "error": None if ok else self._reload_error,
            "digest": self.desired.digest,
        }
        self._write_status()

    def _count_denials(self, denials: tuple[Denial, ...]) -> None:
        for d in denials:
            self.metrics.policy_denials.labels(d.service, d.rule).inc()
            log.error(
                "denied by the host policy",
                service=d.service,
                rule=d.rule,
                error=d.message(str(self.options.path), self.policy),
            )

    def _load(self) -> tuple[DesiredState, Policy, tuple[Denial, ...]]:
        """The file, checked (StrictModes) and judged by the policy (read again too)."""
        new = desired_file.load(self.options.path)
        policy = policy_file.load(self.options.policy)
        if self.options.strict_modes:
            inputs: list[str | Path] = [self.options.path, *new.watched]
            strict_modes.check(
                [*inputs, self.options.policy or policy_file.DEFAULT_PATH],
                source=str(self.options.path),
            )
        new, denials = enforce(new, policy)
        return new, policy, denials

    def _wait_stable(self) -> None:
        """Until the inputs look the same on two looks `settle` apart (at most 10 looks)."""
        before = self._stamps(self.desired)
        for _ in range(10):
            if self.signals.stop.wait(self.options.settle):
                return
            now = self._stamps(self.desired)
            if now == before:
                return
            before = now

    def _file_age(self) -> float:
        try:
            return max(0.0, time.time() - self.options.path.stat().st_mtime)
        except OSError:
            return 0.0

    def _hold_removals(self, new: DesiredState) -> bool:
        """True when `new` drops services and the file changed too recently to trust that:
        it is read again once it has been still for `removal_settle`."""
        gone = {s.name for s in self.desired.services} - {s.name for s in new.services}
        wait = self.options.removal_settle - self._file_age()
        if not gone or wait <= 0:
            return False
        log.info(
            "services missing from a file that just changed; reading it again before removing them",
            services=sorted(gone),
            retry_in_s=round(wait, 2),
        )
        self._reload_after(wait)
        return True

    def _hold_start_removals(self) -> None:
        """At start, as on a reload: a file changed less than `removal_settle` ago may be
        half written, so services it does not list keep their containers until it has been
        still that long and is read again."""
        wait = self.options.removal_settle - self._file_age()
        if wait <= 0:
            return
        self.controller.hold_removals = True
        log.info(
            "the file changed just now; services it does not list are removed only once it "
            "has been still and is read again",
            retry_in_s=round(wait, 2),
        )
        self._reload_after(wait)

    def _release_start_hold(self) -> None:
        """After a good read: still holding (the file changed again), or let removals go."""
        if not self.controller.hold_removals:
            return
        wait = self.options.removal_settle - self._file_age()
        if wait > 0:
            self._reload_after(wait)
        else:
            self.controller.hold_removals = False
            log.info("the file has been still; services it does not list are removed")

    def _reload_after(self, wait: float) -> None:
        timer = threading.Timer(wait + 0.05, self._reload_later)
        timer.daemon = True
        timer.start()

    def _reload_later(self) -> None:
        self._reload_trigger = "file"
        self.signals.reload.set()

    def reload(self, trigger: str) -> bool:
        """Re-read the file; on error keep the last good state and change nothing."""
        self._wait_stable()
        try:
            new, policy, denials = self._load()
        except DesiredStateError as exc:
            log.error(
                "desired state rejected; keeping the last good one",
                file=exc.source,
                error=str(exc),
            )
            return self._reload_failed(str(exc))
        if self._hold_removals(new):
            return True  # the last good state stays until the file is read again
        self.metrics.reloads.labels("success").inc()
        if new.digest != self.desired.digest or policy != self.policy:
            if new.project != self.desired.project:
                log.error(
                    "the project name cannot change while running; restart the daemon",
                    old=self.desired.project,
                    new=new.project,
                )
                self.metrics.state_valid.set(0)
                self._state_valid = False
                self._reload_error = (
                    f"the project name cannot change while running ({self.desired.project} -> "
                    f"{new.project}); restart the daemon"
                )
                return False
            self.controller.desired, self.policy = new, policy
            self._file_stamp = self._stamps(new)
            self.metrics.loaded(new.digest)
            self._count_denials(denials)
            log.info("desired state loaded", file=str(self.options.path), digest=new.digest[:12])
        self._state_valid = True
        self.metrics.state_valid.set(1)
        self._release_start_hold()
        self.enqueue(RESYNC, 0.0, trigger)
        return True

    def _reload_failed(self, error: str) -> bool:
        """Counted as a failed reload: the last good state stays, /readyz says invalid."""
        self.metrics.reloads.labels("error").inc()
        self.metrics.state_valid.set(0)
        self._state_valid = False
        self._reload_error = error
        return False

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
        """Ready: engine reachable, desired state valid, every service reconciled once."""
        problems = []
        if not self._engine_up:
            problems.append("docker engine unreachable")
        if not self._state_valid:
            problems.append("desired state invalid")
        if self._first_round is not None:
            problems.append("first pass not done")
        return (not problems, "; ".join(problems) or "ready")
