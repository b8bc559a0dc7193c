"""The daemon's one stream of what happened: fans each `core.events.Event` out to its sinks.

The history file and the notifications are sinks (added by the CLI when it builds the daemon);
a sink that fails is logged and skipped, never a reason for a heal or a rollout to stop.
"""

from __future__ import annotations

import threading

import structlog

from reconciler.core.events import Event, Record

log = structlog.get_logger("reconciler")


class Recorder:
    """A `Record` that hands each event to every sink, in the order they were added."""

    def __init__(self, *sinks: Record) -> None:
        self._sinks: list[Record] = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: Record) -> None:
        with self._lock:
            self._sinks.append(sink)

    def __call__(self, event: Event) -> None:
        with self._lock:
            sinks = tuple(self._sinks)
        for sink in sinks:
            try:
                sink(event)
            except Exception:  # a sink's failure is its own: the event still reaches the rest
                log.exception("recording an event failed", kind=event.kind, service=event.service)
