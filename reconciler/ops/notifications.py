"""Notifications: a sink of the daemon's event stream (core.events) that tells people, through
Apprise (Slack, Discord, ntfy, Matrix, email, Gotify, a JSON webhook...), when a condition
fires, repeats or clears. The CLI adds it to the daemon's recorder when `notify` is configured.

`Gate` decides (pure, injected clock): kinds chosen, de-duplicated per (service, kind) with a
repeat interval, rate-limited. `Notifications` queues what passes (bounded) and sends it from
its own thread: a receiver that hangs or fails never delays the caller (a heal, a rollout).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from reconciler.config import secrets
from reconciler.config.notify_config import NotifyConfig
from reconciler.core.events import CONDITIONS, NEWS, Event
from reconciler.ops.firing_memory import AFTER_RESTART

if TYPE_CHECKING:
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")

TITLES = {
    "rollout_failed": "rollout failed",
    "rolled_back": "rolled back",
    "paused": "rollout paused",
    "rollout_completed": "rollout completed",
    "crash_loop": "crash loop",
    "denied": "denied by the host policy",
    "engine_unreachable": "Docker engine unreachable",
    "reload_rejected": "desired state rejected",
    "config_rejected": "config edit rejected",
    "drift_corrected": "drift corrected",
    "image_update": "image updated",
}

# An action's own fields in an event's data (the history keeps them): not for people.
ACTION_KEYS = frozenset({"verb", "object", "name", AFTER_RESTART})

Status = Literal["firing", "repeat", "resolved", "news"]


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification to send: what it says and how it looks."""

    kind: str
    status: Status
    title: str
    body: str


def redact_url(url: str) -> str:
    """What a log may say of a notification URL: its scheme only (`json://...`)."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://..." if sep else "..."


def render(event: Event, status: Status, project: str) -> Notice:
    """The title and body people read; every secret the file interpolated is redacted."""
    what = TITLES.get(event.kind, event.kind)
    subject = event.service or project
    label = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED", "news": ""}
    head = f"[{project}] {label[status]} {what}".replace("  ", " ")
    title = f"{head}: {subject}" if event.service else head
    lines = [event.message or what]
    cause = event.cause
    if event.kind == "drift_corrected":  # `shop_web: scaled to 1 by hand; put back ...`
        done = cause.removeprefix("drift: ") or "changed by hand"
        lines = [f"{event.replica or subject}: {done}; put back as the file says"]
        cause = ""
    if cause:
        lines.append(f"cause: {cause}")
    if event.replica and event.kind != "drift_corrected":
        lines.append(f"replica: {event.replica}")
    if event.revision:
        lines.append(f"revision: {event.revision[:12]}")
    lines += [
        f"{'changes' if k == 'diff' else k}: {v}"
        for k, v in sorted(event.data.items())
        if k not in ACTION_KEYS
    ]
    return Notice(event.kind, status, secrets.redact(title), secrets.redact("\n".join(lines)))


class Gate:
    """Which events become notifications (not thread-safe: `Notifications` holds a lock).

    A condition is told when it starts firing, again every `repeat_interval` while it keeps
    firing (as Alertmanager's repeat_interval), and once when it is resolved; news is told
    once per (service, kind, message) per `repeat_interval`. At most `rate_limit` a minute
    (a token bucket): the rest is dropped and counted.
    """

    def __init__(self, config: NotifyConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._told: dict[tuple[str, ...], float] = {}  # key -> when last told
        self._tokens = float(config.rate_limit)
        self._filled_at = clock()

    def decide(self, event: Event) -> Status | Literal["deduplicated", "rate_limited"] | None:
        """What to do with `event`: a status to send, why not, or None (not ours to tell)."""
        if event.kind not in self.config.kinds or event.kind not in CONDITIONS | NEWS:
            return None
        now = self.clock()
        if event.kind in NEWS:
            if event.result != "success":  # a skipped version, a start, a failure: no news
                return None
            key: tuple[str, ...] = (event.service, event.kind, event.message)
            last = self._told.get(key)
            if last is not None and now - last < self.config.repeat_interval:
                return "deduplicated"
            status: Status = "news"
        else:
            key = (event.service, event.kind)
            last = self._told.get(key)
            if event.result == "resolved":
                if last is None and AFTER_RESTART not in event.data:
                    return None  # never told firing (nor by the run before): nothing to clear
                self._told.pop(key, None)
                if not self.config.send_resolved:
                    return None
                status = "resolved"
            elif last is None:
                status = "firing"
            elif now - last < self.config.repeat_interval:
                return "deduplicated"
            else:
                status = "repeat"
        if not self._take(now):
            return "rate_limited"
        if status != "resolved":
            self._told[key] = now
        self._forget_news(now)
        return status

    def _take(self, now: float) -> bool:
        rate = self.config.rate_limit
        self._tokens = min(float(rate), self._tokens + (now - self._filled_at) * rate / 60.0)
        self._filled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _forget_news(self, now: float) -> None:
        """News older than the repeat interval would be told again anyway: drop its key."""
        if len(self._told) < 1000:
            return
        horizon = self.config.repeat_interval
        self._told = {k: t for k, t in self._told.items() if len(k) == 2 or now - t < horizon}


Sender = Callable[[tuple[str, ...], Notice], bool]


def apprise_sender(urls: tuple[str, ...], notice: Notice) -> bool:
    """Send through Apprise to every URL; True when all took it."""
    import apprise

    kinds = {
        "firing": apprise.NotifyType.FAILURE,
        "repeat": apprise.NotifyType.WARNING,
        "resolved": apprise.NotifyType.SUCCESS,
        "news": apprise.NotifyType.INFO,
    }
    box = apprise.Apprise()
    for url in urls:
        if not box.add(url):
            log.error("notification URL not understood by Apprise", url=redact_url(url))
    if not len(box):
        return False
    return bool(box.notify(body=notice.body, title=notice.title, notify_type=kinds[notice.status]))


class Notifications:
    """The sink: `__call__(event)` decides and queues at once; a thread of its own sends."""

    def __init__(
        self,
        config: NotifyConfig,
        project: Callable[[], str],
        metrics: Metrics | None = None,
        *,
        send: Sender = apprise_sender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self.metrics = metrics
        self.send = send
        self.gate = Gate(config, clock)
        self._urls = config.urls
        self._lock = threading.Lock()
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=config.queue_size)
        self.dropped = 0
        # Apprise's own log lines name hosts and paths of the URLs: ours say what failed.
        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
        self._thread.start()

    def configure(self, config: NotifyConfig) -> None:
        """A reload's new settings (what was told stays told)."""
        with self._lock:
            self.gate.config = config
            self._urls = config.urls

    def __call__(self, event: Event) -> None:
        with self._lock:
            decision = self.gate.decide(event)
        if decision is None:
            return
        if decision == "deduplicated":
            self._count(event.kind, "deduplicated")
            return
        if decision == "rate_limited":
            self._drop(event.kind, "rate limit")
            return
        try:
            self._queue.put_nowait(render(event, decision, self.project()))
        except queue.Full:
            self._drop(event.kind, "queue full")

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for at most `timeout` seconds, then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            notice = self._queue.get()
            if notice is None:
                return
            with self._lock:
                urls = self._urls
            try:
                ok = self.send(urls, notice)
            except Exception as exc:  # a receiver's failure is never the daemon's
                ok = False
                log.error(
                    "notification failed",
                    kind=notice.kind,
                    error=secrets.redact(f"{type(exc).__name__}: {exc}", urls),
                )
            else:
                if not ok:
                    log.warning(
                        "notification not delivered",
                        kind=notice.kind,
                        status=notice.status,
                        receivers=[redact_url(u) for u in urls],
                    )
            self._count(notice.kind, "sent" if ok else "failed")

    def _drop(self, kind: str, why: str) -> None:
        self.dropped += 1
        log.warning("notification dropped", kind=kind, why=why)
        self._count(kind, "dropped")
        if self.metrics is not None:
            self.metrics.notifications_dropped.inc()

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(kind, result).inc()
