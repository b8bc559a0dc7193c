"""Docker's event stream, followed until told to stop: one loop for every target.

A broken stream is reconnected with back-off; each reconnect is reported (whatever happened
meanwhile, the caller looks again). The caller maps each event to keys; nothing here acts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import docker
import structlog

log = structlog.get_logger("reconciler")

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


def follow(
    api: docker.APIClient,
    filters: dict[str, list[str]],
    stop: threading.Event,
    *,
    on_event: Callable[[dict[str, Any]], None],
    on_reconnect: Callable[[], None],
    project: str,
) -> None:
    """Deliver decoded events to `on_event` until `stop` is set (blocks: run it in a thread)."""
    delay = FIRST_RETRY_S
    stream: Any = None

    def close() -> None:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close_at_stop() -> None:
        stop.wait()
        close()

    threading.Thread(
        target=close_at_stop, name="events-close", daemon=True
    ).start()  # a stop ends a stream that waits for its next event
    while not stop.is_set():
        try:
            stream = api.events(decode=True, filters=filters)
            log.info("watching docker events", project=project)
            if delay > FIRST_RETRY_S:  # reconnected: whatever happened meanwhile, look now
                on_reconnect()
            delay = FIRST_RETRY_S
            for event in stream:
                if stop.is_set():
                    break
                on_event(event)
        except Exception as exc:  # the stream broke: the periodic resync covers the gap
            if stop.is_set():
                return
            log.warning(
                "docker event stream broken; reconnecting", error=str(exc), retry_in_s=delay
            )
        finally:
            close()
        if stop.wait(delay):
            return
        delay = min(delay * 2, MAX_RETRY_S)
