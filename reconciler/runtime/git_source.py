"""The daemon following a git repository: fetch every `interval` and at once on a signed
webhook, vet the new commit (fast-forward, signature), check its file with the Reloader's own
checks (StrictModes, policy: a denial refuses the commit), swap it in and ask the Reloader to
take it. A refused commit leaves the last good one in force and /readyz at 503; an
unreachable repository is retried with back-off. Wired by the CLI's `run` into the Daemon.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Gauge

from reconciler.core.events import Record
from reconciler.ops.git_repo import CommitInfo, GitError
from reconciler.ops.metrics import Metrics
from reconciler.ops.webhook import Webhook
from reconciler.runtime.conditions import DaemonConditions
from reconciler.runtime.git_checkout import Checkout, Refused
from reconciler.runtime.reload import Reloader
from reconciler.runtime.signals import SignalRelay
from reconciler.targets.base import Desired

log = structlog.get_logger("reconciler")
BACKOFF_START_S, BACKOFF_MAX_S = 2.0, 300.0


class SourceMetrics:
    def __init__(self, registry: Any) -> None:
        self.info = Gauge(
            "reconciler_source_info",
            "1 for the git commit in force and the ref followed.",
            ["commit", "ref"],
            registry=registry,
        )
        self.fetches = Counter(
            "reconciler_source_fetch",
            "Fetches of the git source, by result (success, error, refused).",
            ["result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "reconciler_source_last_success_timestamp_seconds",
            "Unix time of the last fetch that reached the repository.",
            registry=registry,
        )
        self.webhook_refused = Counter(
            "reconciler_source_webhook_refused",
            "Webhook calls refused (bad or missing signature).",
            registry=registry,
        )
        for result in ("success", "error", "refused"):
            self.fetches.labels(result)


class Owner(Protocol):
    """What the source uses of the daemon that owns it."""

    reloader: Reloader
    signals: SignalRelay
    metrics: Metrics
    record: Record
    conditions: DaemonConditions

    @property
    def desired(self) -> Desired: ...

    def write_status(self) -> None: ...


class GitSource:
    """One repository followed by one daemon (`loop` is its thread)."""

    def __init__(self, daemon: Owner, checkout: Checkout, refused: Refused | None = None) -> None:
        self.daemon = daemon
        self.checkout = checkout
        self.opts = checkout.opts
        self.metrics = SourceMetrics(daemon.metrics.registry)
        self.wake = threading.Event()  # a webhook or the timer: one fetch however many asked
        self.failures = 0
        self.fetch_error: str | None = None
        self.refused: Refused | None = None
        self.current: CommitInfo | None = None
        self.latest: str | None = None  # the last commit fetched
        sha = checkout.in_force()
        if sha is not None:
            self._in_force(sha)
        if refused is not None:  # the first fetch (by the CLI) found a commit it refused
            self._refuse(refused)
        self.webhook = (
            Webhook(self.opts.webhook_secret, self.wake.set, self._webhook_refused)
            if self.opts.webhook_secret is not None
            else None
        )

    # ------------------------------------------------------------------ the thread

    def loop(self) -> None:
        stop = self.daemon.signals.stop
        while not stop.is_set():
            delay = self.opts.interval
            try:
                if not self.poll():
                    delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** min(self.failures, 10))
                    delay = min(delay, self.opts.interval)
            except Exception:
                log.exception("git source failed; trying again")
            self._sleep(delay)

    def _sleep(self, delay: float) -> None:
        """Until `delay` passed, a webhook woke us, or a SIGHUP (`systemctl reload`) came:
        a reload of a followed repository fetches first."""
        signals = self.daemon.signals
        hups = signals.hups
        deadline = time.monotonic() + delay
        while not signals.stop.is_set() and signals.hups == hups:
            left = deadline - time.monotonic()
            if left <= 0 or self.wake.wait(min(left, 0.5)):
                break
        self.wake.clear()

    def poll(self) -> bool:
        """One fetch and, for a new commit, the whole take; False when unreachable."""
        try:
            sha = self.checkout.fetch()
        except GitError as exc:
            self.failures += 1
            self.fetch_error = str(exc)
            self.metrics.fetches.labels("error").inc()
            log.warning(
                "git repository unreachable; keeping the commit in force and retrying",
                url=self.opts.shown_url,
                error=str(exc),
                attempt=self.failures,
            )
            return False
        if self.failures:
            log.info("git repository reachable again", url=self.opts.shown_url)
        self.failures, self.fetch_error, self.latest = 0, None, sha
        self.metrics.last_success.set(time.time())
        if self.current is not None and sha == self.current.sha:
            self.metrics.fetches.labels("success").inc()
            self._resolve_refusal(reloads=False)
            return True
        if self.refused is not None and sha == self.refused.sha:
            self.metrics.fetches.labels("refused").inc()  # still the same bad commit
            self.daemon.reloader.failed(self._refusal_text(), counted=False)
            return True
        try:
            self.checkout.vet(sha)
            self.checkout.take(sha, self.check)
        except Refused as exc:
            self.metrics.fetches.labels("refused").inc()
            self._refuse(exc)
            return True
        self.metrics.fetches.labels("success").inc()
        self._in_force(sha)
        self._resolve_refusal()
        info = self.current
        log.info(
            "git commit taken",
            commit=sha[:12],
            ref=self.opts.shown_ref,
            author=info.author if info else None,
            subject=info.subject if info else None,
        )
        reloader = self.daemon.reloader
        reloader.context = self._event_data(sha)  # the history's reload row names the commit
        reloader.trigger = "git"
        self.daemon.signals.reload.set()
        return True

    def check(self, path: Path) -> None:
        """The Reloader's own read of a candidate file; a policy denial refuses it too."""
        reloader = self.daemon.reloader
        new, policy, denials = reloader.load(path)
        project = reloader.daemon.desired.project
        if new.project != project:
            raise Refused(
                "", f"the project cannot change while running ({project} -> {new.project})"
            )
        if denials:
            raise Refused("", "; ".join(d.message(str(path), policy) for d in denials))

    # ------------------------------------------------------------------ state

    def _in_force(self, sha: str) -> None:
        self.current = self.checkout.info(sha) or CommitInfo(sha, "", 0, "")
        self.metrics.info.clear()
        self.metrics.info.labels(sha, self.opts.shown_ref).set(1)

    def _refuse(self, exc: Refused) -> None:
        self.refused = exc
        text = self._refusal_text()
        log.error(
            "git commit refused; the last good commit stays in force",
            commit=exc.sha[:12],
            in_force=self.current.sha[:12] if self.current else None,
            error=exc.reason,
        )
        self.daemon.reloader.failed(text)  # reload_rejected: the history, the notifications
        self.daemon.write_status()

    def _resolve_refusal(self, reloads: bool = True) -> None:
        """A refused commit is behind us: the next reload resolves `reload_rejected`
        (`reloads` False: none follows, the commit in force is good as it is)."""
        if self.refused is None:
            return
        self.refused = None
        if not reloads:
            self.daemon.conditions.reload_accepted(self.daemon.desired.digest)

    def _refusal_text(self) -> str:
        exc = self.refused
        return f"git commit {exc.sha[:12]} refused: {exc.reason}" if exc else ""

    def _event_data(self, sha: str) -> dict[str, str]:
        info = self.current if self.current and self.current.sha == sha else None
        data = {"commit": sha, "ref": self.opts.shown_ref, "repository": self.opts.shown_url}
        if info is not None:
            data |= {"author": info.author, "subject": info.subject}
        return data

    def _webhook_refused(self, reason: str) -> None:
        self.metrics.webhook_refused.inc()
        log.warning("git webhook refused", reason=reason)

    # ------------------------------------------------------------------ outside

    def problem(self) -> str | None:
        """What /readyz says while the newest commit is refused."""
        return self._refusal_text() or None

    def status(self) -> dict[str, Any]:
        """The status file's `source` part (no credentials: the URL is redacted)."""
        return {
            "repository": self.opts.shown_url,
            "ref": self.opts.shown_ref,
            "file": self.opts.file,
            "in_force": asdict(self.current) if self.current else None,
            "latest": self.latest,
            "refused": {"commit": self.refused.sha, "error": self.refused.reason}
            if self.refused
            else None,
            "fetch_error": self.fetch_error,
        }


def source_lines(status_file: Path) -> list[str]:
    """`reconciler status`'s lines for the status file's `source` part (none without)."""
    try:
        data = json.loads(status_file.read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(data, dict):
        return []
    lines = [f"source: {data['repository']} {data['ref']} ({data['file']})"]
    now = data.get("in_force")
    if now:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now["time"]))
        lines.append(f"  commit in force: {now['sha'][:12]} by {now['author']} at {when}")
        lines.append(f"    {now['subject']}")
    refused = data.get("refused")
    if refused:
        lines.append(f"  commit refused: {refused['commit'][:12]}: {refused['error']}")
    if data.get("fetch_error"):
        lines.append(f"  fetch failing: {data['fetch_error']}")
    return lines
