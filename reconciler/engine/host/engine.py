"""The single-host Docker adapter: `observe()` reads one project, `execute()` runs one action.

Composes `observe` (reads), `containers` (actions) and `images` (pulls, builds, digests)
over one low-level client. Called by the CLI, the runtime and `ops.status`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import docker

from reconciler.core.actions import EnsureImage
from reconciler.core.actions import HostAction as Action
from reconciler.core.healing import LastRun
from reconciler.core.image_policy import Published
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.takeover import ForeignContainer
from reconciler.engine.host import observe as reads
from reconciler.engine.host.containers import Containers
from reconciler.engine.host.images import Images
from reconciler.engine.host.observe import HostView
from reconciler.engine.host.secret_files import forget_unused


class Engine:
    """Reads and changes the objects of one project on one Docker engine."""

    def __init__(self, api: docker.APIClient, *, on_call: Callable[[str], None] | None = None):
        self.api = api
        self._on_call = on_call or (lambda operation: None)
        self._containers = Containers(api, self._call)
        self._images = Images(api, self._call)

    def _call(self, operation: str) -> None:
        self._on_call(operation)

    # ------------------------------------------------------------------- observe

    def observe(self, project: str) -> Observed:
        """The project's containers, and every network and volume (three list calls)."""
        return reads.observe(self.api, project)

    def observe_all(self, project: str, namespaces: Iterable[str] = ()) -> HostView:
        """`observe`, `others` and `find_containers(namespaces)` in three list calls."""
        return reads.observe_all(self.api, project, namespaces, self._call)

    def exists(self, kind: str, name: str) -> bool:
        """Whether a network or volume of that exact name exists (one call)."""
        return reads.exists(self.api, kind, name)

    def containers(self, project: str) -> tuple[ObservedContainer, ...]:
        """The project's containers only (one list call)."""
        return reads.containers(self.api, project)

    def find_containers(self, names: Iterable[str]) -> dict[str, str]:
        """Name -> id of those of `names` that exist (one inspect each; looked at, never
        touched: a `network_mode: container:X` outside the project)."""
        return reads.find_containers(self.api, names, self._call)

    def others(self, project: str) -> tuple[ForeignContainer, ...]:
        """Every container that is not this project's (one list call): who holds what."""
        return reads.others(self.api, project)

    def started_at(self, container_id: str) -> float | None:
        """When a container last started (one inspect; None when gone or never started)."""
        state = ((self.inspect(container_id) or {}).get("State")) or {}
        return reads.timestamp(state.get("StartedAt"))

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """Full inspect of one container (None when it is gone)."""
        return reads.inspect(self.api, container_id)

    def last_run(self, container_id: str) -> LastRun | None:
        """Start and finish time of an exited container's last run (one inspect)."""
        return self.last_run_of(self.inspect(container_id))

    @staticmethod
    def last_run_of(info: dict[str, Any] | None) -> LastRun | None:
        return reads.last_run_of(info)

    def log_tail(self, container_id: str, lines: int = 5) -> list[str]:
        """The last lines of a container's output (for status; never logged by the daemon)."""
        return reads.log_tail(self.api, container_id, lines)

    # ------------------------------------------------------------------- execute

    def execute(self, action: Action) -> None:
        """Run one action; raise ActionFailed/EngineUnavailable with Docker's text.

        EnsureImage is not run here: pulls and builds are their own work (`ensure_image`).
        """
        self._containers.execute(action)

    # ------------------------------------------------------------------- images

    def image_present(self, image: str) -> bool:
        return self._images.present(image)

    def local_digest(self, image: str) -> str | None:
        """The registry digest the local `image` (a tag) was pulled or pushed as; None when
        the image is absent or never came from a registry."""
        return self._images.local_digest(image)

    def registry_digest(self, image: str) -> str:
        """The digest the registry gives `image` (a tag) now, with the credentials a pull would
        use, without pulling a layer (the engine's distribution inspect: one manifest HEAD)."""
        return self._images.registry_digest(image)

    def registry_tags(self, image: str) -> list[str]:
        return self._images.registry_tags(image)

    def published(self, image: str, tag: str) -> Published:
        return self._images.published(image, tag)

    def image_id(self, image: str) -> str | None:
        return self._images.image_id(image)

    def images_in_use(self) -> set[str]:
        """IDs of the images any container on the engine (anyone's) was created from."""
        return self._images.in_use()

    def remove_image(self, image_id: str) -> bool:
        """Remove an unused image (never forced: one a container uses, or tagged by several
        names, stays); False when Docker refused."""
        return self._images.remove(image_id)

    def ensure_image(
        self,
        action: EnsureImage,
        *,
        timeout_s: float,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        """Pull or build as the pull policy says, within `timeout_s` (a stalled or slow
        transfer is cut off, not waited for); `progress` gets a line every few seconds."""
        self._images.ensure(action, timeout_s=timeout_s, progress=progress)

    def forget_secrets(self) -> list[str]:
        """Remove every decrypted secret no container binds now, however recent (`down`:
        nothing of the project is about to be bound); the paths removed."""
        return [str(p) for p in forget_unused(self.api, grace_s=0.0)]

    def cancel_transfers(self) -> None:
        """Cut off every pull and build under way (shutdown)."""
        self._images.transfers.cancel_all()
