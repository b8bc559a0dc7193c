"""Docker's event stream, followed until told to stop: one loop for every target.

A broken stream is reconnected with back-off, and at once when the engine answers `/_ping`
again after it did not; each reconnect is reported (whatever happened meanwhile, the caller
looks again). The caller maps each event to keys; nothing here acts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import structlog

log = structlog.get_logger("reconciler")

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0
PING_INTERVAL_S = 0.5  # while backing off: how often the engine is asked whether it is back


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
    engine_down = False  # a ping failed since the stream last broke
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
            delay, engine_down = FIRST_RETRY_S, False
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
        engine_down = back_off(api, stop, delay, engine_down)
        if stop.is_set():
            return
        delay = min(delay * 2, MAX_RETRY_S)


def back_off(api: docker.APIClient, stop: threading.Event, delay: float, down: bool) -> bool:
    """Wait up to `delay` s, pinging the engine every PING_INTERVAL_S; once it answers after
    a ping failed, return at once: the back-off grew while it was down, not because it
    refuses the stream. Returns whether it is down (no answer since)."""
    end = time.monotonic() + delay
    while (left := end - time.monotonic()) > 0:
        if stop.wait(min(PING_INTERVAL_S, left)):
            break
        try:
            api.ping()
        except Exception:
            down = True
            continue
        if down:
            log.info("docker engine answers again; reconnecting the event stream")
            return False
    return down
