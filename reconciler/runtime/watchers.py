"""What tells the daemon to look: Docker's event stream and the desired-state file.

Both only enqueue keys; neither reconciles anything itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import structlog

from reconciler.config import tree
from reconciler.core.model import LABEL_MANAGED, LABEL_PROJECT, LABEL_SERVICE, DesiredState

log = structlog.get_logger("reconciler")

CONTAINER_EVENTS = (
    "start",  # not news (a reconcile, or Docker, started it): its time is noted, no more
    "die",
    "stop",
    "kill",
    "oom",
    "destroy",
    "health_status",
    "pause",
)  # our own creates and starts are not news: a reconcile made them
NETWORK_EVENTS = ("destroy", "disconnect")
VOLUME_EVENTS = ("destroy",)
PING_INTERVAL_S = 0.5  # while backing off: how often the engine is asked whether it is back


class EventWatcher:
    """Follows Docker's event stream; reconnects with back-off when it breaks, and at once
    when the engine answers `/_ping` again after it did not."""

    def __init__(
        self,
        api: docker.APIClient,
        desired: Callable[[], DesiredState],
        *,
        on_container: Callable[[str, str, str, dict[str, Any]], None],  # service, action, id, event
        on_other: Callable[[], None],  # a network or volume of ours changed; or reconnected
        on_event: Callable[[], None] = lambda: None,
        stop: threading.Event,
    ) -> None:
        self.api = api
        self.desired = desired
        self.on_container = on_container
        self.on_other = on_other
        self.on_event = on_event
        self.stop = stop
        self._stream: Any = None

    def start(self) -> None:
        threading.Thread(target=self._loop, name="events", daemon=True).start()

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close:
            with contextlib.suppress(Exception):
                close()

    def _loop(self) -> None:
        delay = 0.5
        engine_down = False  # a ping failed since the stream last broke
        while not self.stop.is_set():
            try:
                stream = self.api.events(decode=True, filters=self._filters())
                self._stream = stream
                log.info("watching docker events", project=self.desired().project)
                if delay > 0.5:  # reconnected: whatever happened meanwhile, look now
                    self.on_other()
                delay, engine_down = 0.5, False
                for event in stream:
                    self.on_event()
                    self._dispatch(event)
            except Exception as exc:  # the stream broke: the periodic resync covers the gap
                if self.stop.is_set():
                    return
                log.warning(
                    "docker event stream broken; reconnecting", error=str(exc), retry_in_s=delay
                )
            else:
                if self.stop.is_set():
                    return
            engine_down = self._back_off(delay, engine_down)
            delay = min(delay * 2, 30.0)

    def _back_off(self, delay: float, engine_down: bool) -> bool:
        """Wait up to `delay` s, pinging the engine every PING_INTERVAL_S; once it answers
        after a ping failed, return at once: the back-off grew while it was down, not
        because it refuses the stream. Returns whether it is down (no answer since)."""
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            if self.stop.wait(min(PING_INTERVAL_S, left)):
                break
            try:
                self.api.ping()
            except Exception:
                engine_down = True
                continue
            if engine_down:
                log.info("docker engine answers again; reconnecting the event stream")
                return False
        return engine_down

    @staticmethod
    def _filters() -> dict[str, list[str]]:
        # One stream for containers (by our label) and networks/volumes (by type). Docker
        # ORs values within a key and ANDs keys, so the label filter would drop network
        # events of adopted networks: networks and volumes are matched by name instead.
        return {
            "type": ["container", "network", "volume"],
            "event": sorted({*CONTAINER_EVENTS, *NETWORK_EVENTS, *VOLUME_EVENTS}),
        }

    def _dispatch(self, event: dict[str, Any]) -> None:
        desired = self.desired()
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        kind = event.get("Type")
        action = (event.get("Action") or "").split(":")[0]
        if kind == "container":
            if (
                attrs.get(LABEL_PROJECT) == desired.project
                and attrs.get(LABEL_MANAGED) == "true"
                and action in CONTAINER_EVENTS
            ):
                service = attrs.get(LABEL_SERVICE, "")
                self.on_container(service, action, actor.get("ID", ""), event)
        elif (
            kind == "network"
            and action in NETWORK_EVENTS
            and attrs.get("name") in {n.name for n in desired.networks}
        ) or (
            kind == "volume"
            and action in VOLUME_EVENTS
            and actor.get("ID") in {v.name for v in desired.volumes}
        ):
            self.on_other()


def stamps(path: Path, watched: tuple[str, ...]) -> tuple[object, ...]:
    """Change stamps of the desired-state file and of the config files it mounts."""
    return (_stamp(path), *(_tree_stamp(Path(p)) for p in watched))


def _tree_stamp(path: Path) -> tuple[object, ...]:
    if not path.is_dir():
        return (_stamp(path),)
    try:
        return tuple(
            (str(p), _stamp(p)) for p in sorted(p for p, _ in tree.walk(path, follow=False))
        )
    except tree.TreeError as exc:  # grown past the cap: the reload it triggers says so
        return (str(exc),)


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # Mode and owner too: a chmod that makes a file unsafe is a reason to look (StrictModes).
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)
