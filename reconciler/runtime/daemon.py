"""The long-running shell: scheduler, Docker events, file reload, signals, notify, HTTP.

Wiring only. A pass runs every `interval` seconds (APScheduler, one at a time,
missed runs coalesce), at once on a Docker event or a file change (debounced),
and when a back-off falls due. Events only say "look now"; every pass re-observes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

import docker
import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.config import loader as desired_file
from reconciler.core.model import LABEL_MANAGED, LABEL_PROJECT, DesiredState
from reconciler.engine.docker_engine import Engine
from reconciler.errors import DesiredStateError, EngineUnavailable
from reconciler.ops.http import serve
from reconciler.ops.lock import ProjectLock, status_path
from reconciler.ops.metrics import Metrics
from reconciler.ops.notify import Notifier, watchdog_interval
from reconciler.runtime.reconcile import Reconciler

log = structlog.get_logger("reconciler")

EVENT_DEBOUNCE_S = 0.02
CONTAINER_EVENTS = (
    "die",
    "stop",
    "kill",
    "oom",
    "destroy",
    "health_status",
    "pause",
)  # our own creates and starts are not news: a pass made them
NETWORK_EVENTS = ("destroy", "disconnect")
VOLUME_EVENTS = ("destroy",)


@dataclass(frozen=True, slots=True)
class Options:
    path: Path
    interval: float = 5.0
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 9816),)
    file_poll: float = 1.0
    workers: int = 8
    lock_dir: Path | None = None


class Daemon:
    """Keeps one project converged until stopped."""

    def __init__(
        self,
        options: Options,
        desired: DesiredState,
        api: docker.APIClient,
        metrics: Metrics | None = None,
    ) -> None:
        self.options = options
        self.desired = desired
        self.api = api
        self.metrics = metrics or Metrics()
        self.reconciler = Reconciler(Engine(api), self.metrics, workers=options.workers)
        self.notifier = Notifier()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._lock = threading.Lock()
        self._running = False
        self._pending: str | None = None
        self._stop = threading.Event()
        self._file_stamp = self._stamps()
        self._last_pass_end: float | None = None
        self._engine_up = False
        self._first_pass_done = False
        self._events_stream: object | None = None
        self._state_valid = True
        self.metrics.loaded(desired.digest)
        self.metrics.reloads.labels("success")
        self.metrics.reloads.labels("error")

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Block until SIGTERM/SIGINT; finish the current pass and return 0."""
        lock = ProjectLock(self.desired.project, self.options.lock_dir)
        lock.acquire()
        servers = []
        try:
            for address in self.options.listen:
                try:
                    servers.append(serve(address, self.metrics.registry, self.healthz, self.readyz))
                except OSError as exc:  # e.g. docker0 not up yet: keep reconciling anyway
                    log.error(
                        "cannot serve metrics", address=f"{address[0]}:{address[1]}", error=str(exc)
                    )
            self._install_signals()
            self.scheduler.add_job(
                self._pass_job,
                "interval",
                seconds=self.options.interval,
                id="pass",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now().astimezone(),
                misfire_grace_time=None,
            )
            self.scheduler.add_job(
                self._watch_file,
                "interval",
                seconds=self.options.file_poll,
                id="watch",
                max_instances=1,
                coalesce=True,
            )
            ping = watchdog_interval()
            if ping:
                self.scheduler.add_job(
                    self._watchdog,
                    "interval",
                    seconds=ping,
                    id="watchdog",
                    max_instances=1,
                    coalesce=True,
                )
            self.scheduler.start()
            threading.Thread(target=self._events_loop, name="events", daemon=True).start()
            log.info(
                "started",
                project=self.desired.project,
                file=str(self.options.path),
                interval=self.options.interval,
                listen=self.options.listen,
            )
            while not self._stop.wait(1.0):
                pass
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("stopping", project=self.desired.project)
            self.scheduler.shutdown(wait=True)  # lets a running pass finish
            self._close_events()
            return 0
        finally:
            for server in servers:
                server.shutdown()
            lock.release()

    def stop(self) -> None:
        self._stop.set()

    def _install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=self._on_sighup, name="sighup", daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _on_sighup(self) -> None:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self.reload("signal")
        self.notifier.send("READY=1", f"STATUS={self._status_line()}")

    # ------------------------------------------------------------------ passes

    def trigger(self, why: str, delay: float = 0.0) -> None:
        """Ask for a pass now (or after `delay`); coalesces with a pass already running."""
        if self._stop.is_set():
            return
        with self._lock:
            self._pending = self._pending or why
            if self._running:
                return  # the running pass loops once more
        when = datetime.now().astimezone() + timedelta(seconds=delay)
        with contextlib.suppress(JobLookupError, SchedulerNotRunningError):  # shutting down
            self.scheduler.modify_job("pass", next_run_time=when)

    def _pass_job(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
            trigger, self._pending = self._pending or "interval", None
        try:
            while not self._stop.is_set():
                self._one_pass(trigger)
                with self._lock:
                    if self._pending is None or self._stop.is_set():
                        self._running = False
                        break
                    trigger, self._pending = self._pending, None
        finally:
            with self._lock:
                self._running = False

    def _one_pass(self, trigger: str) -> None:
        self.metrics.triggers.labels(trigger).inc()
        try:
            self.reconciler.run_pass(self.desired, trigger)
        except EngineUnavailable as exc:
            self._engine_up = False
            self.metrics.docker_up.set(0)
            self.metrics.docker_errors.labels("observe").inc()
            self.metrics.runs.labels("error").inc()
            log.warning("engine down", error=str(exc))
            self._last_pass_end = time.monotonic()
            self.notifier.send(f"STATUS=Docker engine unreachable, retrying: {exc}")
            return
        except Exception:
            self.metrics.runs.labels("error").inc()
            log.exception("pass failed")
            self._last_pass_end = time.monotonic()
            return
        self._engine_up = True
        self._last_pass_end = time.monotonic()
        self._write_status()
        wakeup = self.reconciler.book.next_wakeup(time.time())
        if wakeup is not None:
            self._schedule_wakeup(wakeup)
        if not self._first_pass_done:
            self._first_pass_done = True
            self.notifier.send("READY=1", f"STATUS={self._status_line()}")
        else:
            self.notifier.send(f"STATUS={self._status_line()}")

    def _write_status(self) -> None:
        """Crash-loop state for `reconciler status` (another process) to read."""
        path = status_path(self.desired.project, self.options.lock_dir)
        data = {
            "project": self.desired.project,
            "updated_at": time.time(),
            "crashloop": self.reconciler.book.snapshot(time.time()),
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write status file", path=str(path), error=str(exc))

    def _schedule_wakeup(self, at: float) -> None:
        when = datetime.fromtimestamp(at).astimezone()
        self.scheduler.add_job(
            self.trigger,
            "date",
            run_date=when,
            id="wakeup",
            replace_existing=True,
            args=["backoff"],
        )

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
        # Ping only while passes keep finishing: a wedged loop lets systemd restart us.
        if self._last_pass_end is None or (
            time.monotonic() - self._last_pass_end < 3 * self.options.interval + 60
        ):
            self.notifier.send("WATCHDOG=1")

    # ------------------------------------------------------------------ desired state

    def _stamps(self) -> tuple[object, ...]:
        """Change stamps of the desired-state file and of the config files it mounts."""
        return (_stamp(self.options.path), *(_tree_stamp(Path(p)) for p in self.desired.watched))

    def _watch_file(self) -> None:
        stamp = self._stamps()
        if stamp != self._file_stamp:
            self._file_stamp = stamp
            self.reload("file")

    def reload(self, trigger: str) -> bool:
        """Re-read the file; on error keep the last good state and change nothing."""
        try:
            new = desired_file.load(self.options.path)
        except DesiredStateError as exc:
            self.metrics.reloads.labels("error").inc()
            self.metrics.state_valid.set(0)
            self._state_valid = False
            log.error("desired state rejected; keeping the last good one", error=str(exc))
            return False
        self.metrics.reloads.labels("success").inc()
        if new.digest != self.desired.digest:
            if new.project != self.desired.project:
                log.error(
                    "the project name cannot change while running; restart the daemon",
                    old=self.desired.project,
                    new=new.project,
                )
                self.metrics.state_valid.set(0)
                self._state_valid = False
                return False
            self.desired = new
            self.metrics.loaded(new.digest)
            log.info("desired state loaded", file=str(self.options.path), digest=new.digest[:12])
        self._state_valid = True
        self.metrics.state_valid.set(1)
        self.trigger(trigger)
        return True

    # ------------------------------------------------------------------ events

    def _events_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                stream = self.api.events(decode=True, filters=self._event_filters())
                self._events_stream = stream
                log.info("watching docker events", project=self.desired.project)
                if delay > 0.5:  # reconnected: whatever happened meanwhile, look now
                    self.trigger("event")
                delay = 0.5
                for event in stream:
                    self.metrics.events.inc()
                    if self._relevant(event):
                        self.trigger("event", EVENT_DEBOUNCE_S)
            except Exception as exc:  # the stream broke: the periodic pass covers the gap
                if self._stop.is_set():
                    return
                log.warning(
                    "docker event stream broken; reconnecting", error=str(exc), retry_in_s=delay
                )
            else:
                if self._stop.is_set():
                    return
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _event_filters(self) -> dict[str, list[str]]:
        # One stream for containers (by our label) and networks/volumes (by type). Docker
        # ORs values within a key and ANDs keys, so the label filter would drop network
        # events of adopted networks: networks and volumes are matched by name instead.
        return {
            "type": ["container", "network", "volume"],
            "event": sorted({*CONTAINER_EVENTS, *NETWORK_EVENTS, *VOLUME_EVENTS}),
        }

    def _relevant(self, event: dict) -> bool:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        kind = event.get("Type")
        action = (event.get("Action") or "").split(":")[0]
        if kind == "container":
            return (
                attrs.get(LABEL_PROJECT) == self.desired.project
                and attrs.get(LABEL_MANAGED) == "true"
                and action in CONTAINER_EVENTS
            )
        if kind == "network":
            names = {n.name for n in self.desired.networks}
            return action in NETWORK_EVENTS and attrs.get("name") in names
        if kind == "volume":
            names = {v.name for v in self.desired.volumes}
            return action in VOLUME_EVENTS and actor.get("ID") in names
        return False

    def _close_events(self) -> None:
        stream = self._events_stream
        close = getattr(stream, "close", None)
        if close:
            with contextlib.suppress(Exception):
                close()

    # ------------------------------------------------------------------ health

    def healthz(self) -> tuple[bool, str]:
        """Alive: a pass finished within 3 intervals (or we are retrying a down engine)."""
        if self._last_pass_end is None:
            return True, "starting"
        age = time.monotonic() - self._last_pass_end
        if age <= 3 * self.options.interval or self._running:
            return True, f"ok: last pass {age:.1f}s ago"
        return False, f"no pass finished for {age:.0f}s"

    def readyz(self) -> tuple[bool, str]:
        """Ready: engine reachable, desired state valid, first pass done."""
        problems = []
        if not self._engine_up:
            problems.append("docker engine unreachable")
        if not self._state_valid:
            problems.append("desired state invalid")
        if not self._first_pass_done:
            problems.append("first pass not done")
        return (not problems, "; ".join(problems) or "ready")


def _tree_stamp(path: Path) -> tuple[object, ...]:
    if not path.is_dir():
        return (_stamp(path),)
    return tuple((str(p), _stamp(p)) for p in sorted(path.rglob("*")))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
