"""Reloading the desired state safely, for every target: the file watch, SIGHUP, StrictModes
and the host policy on every read, a settle for two-step edits, a hold on removals while
the file is fresh, and the last good state kept on any error. Owned by the daemon.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from reconciler.config import policy_file, strict_modes
from reconciler.core.events import Event, Record, trigger_text
from reconciler.core.policy import Denial, Policy
from reconciler.errors import DesiredStateError
from reconciler.ops.metrics import Metrics
from reconciler.ops.notify import Notifier
from reconciler.runtime.conditions import DaemonConditions
from reconciler.runtime.signals import SignalRelay
from reconciler.runtime.watchers import stamps
from reconciler.targets.base import RESYNC, Desired, Target, TargetKind

log = structlog.get_logger("reconciler")


class ReloadOptions(Protocol):
    @property
    def path(self) -> Path: ...
    @property
    def policy(self) -> Path | None: ...
    @property
    def strict_modes(self) -> bool: ...
    @property
    def settle(self) -> float: ...
    @property
    def removal_settle(self) -> float: ...


class Owner(Protocol):
    """What the reloader uses of the daemon that owns it."""

    kind: TargetKind
    target: Target
    policy: Policy
    metrics: Metrics
    notifier: Notifier
    signals: SignalRelay
    state_valid: bool
    record: Record

    @property
    def options(self) -> ReloadOptions: ...
    @property
    def desired(self) -> Desired: ...
    def enqueue(self, key: str, delay: float = 0.0, trigger: str = "requeue") -> None: ...
    def status_line(self) -> str: ...
    def write_status(self) -> None: ...
    def count_denials(self, denials: tuple[Denial, ...], trigger: str = ...) -> None: ...
    @property
    def conditions(self) -> DaemonConditions: ...


class Reloader:
    """One reload at a time; requests that arrive meanwhile fold into the next one."""

    def __init__(self, daemon: Owner) -> None:
        self.daemon = daemon
        self.options = daemon.options
        self.trigger = "signal"  # what asked for the next reload
        self.trigger_now = "signal"  # what asked for the reload under way
        self.context: dict[str, str] = {}  # what the next reload row adds (a git commit)
        self.hups_served = 0
        self.error: str | None = None
        # The last reload, for `reconciler reload` (systemd's ExecReload) to wait on.
        self.last: dict[str, object] | None = None
        self.file_stamp = self.stamps(daemon.desired)
        self.on_done: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ what asks

    def stamps(self, desired: Desired) -> tuple[object, ...]:
        policy = self.options.policy or policy_file.DEFAULT_PATH
        return stamps(self.options.path, (*desired.watched, str(policy)))

    def content_digest(self) -> str:
        """What the desired-state file holds now, as a digest ("" for a directory: the error
        alone tells one rejection from the next)."""
        path = Path(self.options.path)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        except OSError:
            return ""

    def changed(self) -> bool:
        """The file watch's tick: ask for a reload when an input changed."""
        stamp = self.stamps(self.daemon.desired)
        if stamp == self.file_stamp:
            return False
        self.file_stamp = stamp
        self.trigger = "file"
        self.daemon.signals.reload.set()
        return True

    def loop(self) -> None:
        """The reload thread: supervised, it outlives any one reload."""
        signals = self.daemon.signals
        while not signals.stop.is_set():
            if not signals.reload.wait(0.5):
                continue
            signals.reload.clear()
            try:
                self.once()
            except Exception:
                log.exception("reload thread error; reloading goes on")

    def once(self) -> None:
        """One reload, then what `reconciler reload` and systemd wait for."""
        d = self.daemon
        trigger, self.trigger = self.trigger, "signal"
        if d.signals.hups != self.hups_served:
            # A SIGHUP folded into a file change's reload still gets RELOADING=1/READY=1:
            # with Type=notify-reload, systemd waits for them after each SIGHUP it sends.
            self.hups_served = d.signals.hups
            trigger = "signal"
        started_usec = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as systemd's
        if trigger == "signal":
            d.notifier.send("RELOADING=1", f"MONOTONIC_USEC={started_usec}")
        ok: bool | None
        self.trigger_now = trigger
        try:
            ok = self.reload(trigger)
        except Exception as exc:  # never the end of reloading: the next edit is read
            ok = self.failed(f"reload failed: {type(exc).__name__}: {exc}")
            log.exception("reload failed; keeping the last good desired state")
        if trigger == "signal":
            d.notifier.send("READY=1", f"STATUS={d.status_line()}")
        if ok is None:  # held: the read once the file is still says how it went
            return
        # `reconciler reload` (ExecReload) waits for a reload that started after its
        # SIGHUP: systemd 252 cannot wait for RELOADING=1/READY=1 itself (253's
        # Type=notify-reload can). Written after READY=1, so the new STATUS is in
        # systemd's queue before ExecReload exits (it reads notifications before SIGCHLD).
        self.last = {
            "monotonic_usec": started_usec,
            "trigger": trigger,
            "result": "success" if ok else "error",
            "error": None if ok else self.error,
            "digest": d.desired.digest,
        }
        d.write_status()

    # ------------------------------------------------------------------ reading

    def load(self, path: Path | None = None) -> tuple[Desired, Policy, tuple[Denial, ...]]:
        """The file (or `path`: a git commit's copy, checked before it is taken), checked
        (StrictModes) and judged by the policy (read again too)."""
        kind = self.daemon.kind
        path = path or self.options.path
        new = kind.load(path)
        policy = policy_file.load(self.options.policy)
        if self.options.strict_modes:
            inputs: list[str | Path] = [path, *new.watched]
            strict_modes.check(
                [*inputs, self.options.policy or policy_file.DEFAULT_PATH],
                source=str(path),
            )
        new, denials = kind.judge(new, policy)
        return new, policy, denials

    def wait_stable(self) -> None:
        """Until the inputs look the same on two looks `settle` apart (at most 10 looks)."""
        d = self.daemon
        before = self.stamps(d.desired)
        for _ in range(10):
            if d.signals.stop.wait(self.options.settle):
                return
            now = self.stamps(d.desired)
            if now == before:
                return
            before = now

    def file_age(self) -> float:
        try:
            return max(0.0, time.time() - self.options.path.stat().st_mtime)
        except OSError:
            return 0.0

    def reload(self, trigger: str) -> bool | None:
        """Re-read the file; on error keep the last good state and change nothing (False);
        None when the file is held until it has been still (read again then)."""
        d = self.daemon
        self.wait_stable()
        try:
            new, policy, denials = self.load()
        except DesiredStateError as exc:
            log.error(
                "desired state rejected; keeping the last good one",
                file=exc.source,
                error=str(exc),
            )
            return self.failed(str(exc))
        if self.hold_unsettled(new):
            return None  # the last good state stays until the file is read again
        d.metrics.reloads.labels("success").inc()
        if new.digest != d.desired.digest or policy != d.policy:
            if new.project != d.desired.project:
                log.error(
                    "the project name cannot change while running; restart the daemon",
                    old=d.desired.project,
                    new=new.project,
                )
                return self.failed(
                    f"the project name cannot change while running ({d.desired.project} -> "
                    f"{new.project}); restart the daemon",
                    counted=False,
                )
            self.record_reload(trigger, d.desired, new)
            d.target.desired, d.policy = new, policy
            self.file_stamp = self.stamps(new)
            d.metrics.loaded(new.digest)
            d.count_denials(denials, trigger)
            log.info("desired state loaded", file=str(self.options.path), digest=new.digest[:12])
        elif trigger == "signal":  # an operator's reload that found nothing new
            self.record_reload(trigger, d.desired, new)
        d.state_valid = True
        d.metrics.state_valid.set(1)
        d.conditions.reload_accepted(d.desired.digest)
        self.release_start_hold()
        d.enqueue(RESYNC, 0.0, trigger)
        return True

    def failed(self, error: str, *, counted: bool = True) -> bool:
        """A failed reload: the last good state stays, /readyz says invalid."""
        d = self.daemon
        if counted:
            d.metrics.reloads.labels("error").inc()
        d.metrics.state_valid.set(0)
        d.state_valid = False
        self.error = error
        d.conditions.reload_rejected(  # the history and the notifications
            error,
            trigger=trigger_text(self.trigger_now),
            revision=d.desired.digest[:12],
            content=self.content_digest(),
        )
        return False

    def record_reload(self, trigger: str, old: Desired, new: Desired) -> None:
        """The history's `reload` row: old -> new revision, and the services it changes."""
        before = {s.name: s.revision for s in old.services}
        after = {s.name: s.revision for s in new.services}
        data = {
            "old": old.digest,
            "new": new.digest,
            "added": ", ".join(sorted(after.keys() - before.keys())),
            "removed": ", ".join(sorted(before.keys() - after.keys())),
            "changed": ", ".join(sorted(n for n in before.keys() & after.keys()
                                        if before[n] != after[n])),
        }  # fmt: skip
        data |= self.context
        self.context = {}
        same = old.digest == new.digest
        self.daemon.record(
            Event(
                kind="reload",
                message=f"desired state {'unchanged' if same else 'loaded'} ({new.source})",
                trigger=trigger_text(trigger),
                cause="unchanged" if same else f"{old.digest[:12]} -> {new.digest[:12]}",
                result="skipped" if same else "success",
                revision=new.digest[:12],
                data={k: v for k, v in data.items() if v},
            )
        )

    # ------------------------------------------------------------------ two-step edits

    def hold_unsettled(self, new: Desired) -> bool:
        """True when `new` would remove a service or replace a service's containers (a new
        revision) while the file changed too recently to trust it (a two-step edit: half a
        file, the rest a moment later): it is read again once it has been still for
        `removal_settle`. Scaling and new services are not held."""
        old = {s.name: s.revision for s in self.daemon.desired.services}
        now = {s.name: s.revision for s in new.services}
        gone = sorted(old.keys() - now.keys())
        changed = sorted(n for n in old.keys() & now.keys() if old[n] != now[n])
        wait = self.options.removal_settle - self.file_age()
        if not (gone or changed) or wait <= 0:
            return False
        log.info(
            "a file that just changed removes or replaces services; reading it again once it "
            "has been still before acting on it",
            removed=gone or None,
            replaced=changed or None,
            retry_in_s=round(wait, 2),
        )
        self.reload_after(wait)
        return True

    def hold_start_removals(self) -> None:
        """At start, as on a reload: a file changed less than `removal_settle` ago may be
        half written, so services it does not list keep what runs for them until it has
        been still that long and is read again."""
        wait = self.options.removal_settle - self.file_age()
        if wait <= 0:
            return
        self.daemon.target.hold_removals = True
        log.info(
            "the file changed just now; services it does not list are removed only once it "
            "has been still and is read again",
            retry_in_s=round(wait, 2),
        )
        self.reload_after(wait)

    def release_start_hold(self) -> None:
        """After a good read: still holding (the file changed again), or let removals go."""
        target = self.daemon.target
        if not target.hold_removals:
            return
        wait = self.options.removal_settle - self.file_age()
        if wait > 0:
            self.reload_after(wait)
        else:
            target.hold_removals = False
            log.info("the file has been still; services it does not list are removed")

    def reload_after(self, wait: float) -> None:
        timer = threading.Timer(wait + 0.05, self._reload_later)
        timer.daemon = True
        timer.start()

    def _reload_later(self) -> None:
        self.trigger = "file"
        self.daemon.signals.reload.set()
