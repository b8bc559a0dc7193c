"""Config edits refused by their `check` command (host target): which container's reload
digest was rejected (the planner neither checks nor signals that content again), the
`config_rejected` condition per service (fires on a rejection, resolves once a later check
passes or the file moves on), the `reconciler_config_rejected` gauge, and the loud log line.
Owned by the host `Controller`, which runs CheckConfig actions through `run`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import structlog

from reconciler.core.actions import CheckConfig
from reconciler.core.desired import ServiceSpec
from reconciler.core.events import Event, Record, discard
from reconciler.core.observed import ObservedContainer
from reconciler.errors import ConfigRejected

if TYPE_CHECKING:
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")


class ConfigChecks:
    """Per service: container id -> (the rejected reload digest, what the check said)."""

    def __init__(self, metrics: Metrics | None = None, record: Record = discard) -> None:
        self.metrics = metrics
        self.record = record
        self._lock = threading.Lock()
        self._rejected: dict[str, dict[str, tuple[str, str]]] = {}

    def run(self, action: CheckConfig, execute: Callable[[CheckConfig], None]) -> None:
        """Execute the check; a rejection is remembered, logged and fires the condition
        (then re-raised: the signal after it is skipped and the step reported an error)."""
        try:
            execute(action)
        except ConfigRejected as exc:
            self._refused(action, exc)
            raise
        self._clear(action.service, {action.id}, "the config check passed")

    def rejected(
        self, svc: ServiceSpec, containers: Iterable[ObservedContainer]
    ) -> Mapping[str, str]:
        """What the planner holds back for this service (container id -> digest), after
        forgetting rejections the file or the containers have moved past (a fixed file's
        check still has to pass; a file back to what the container runs needs none)."""
        digests = {spec.name: spec.reload_digest for spec in svc.replicas}
        live = {c.id: digests.get(c.name, "") for c in containers}
        with self._lock:
            mine = self._rejected.get(svc.name, {})
            stale = {cid for cid, (digest, _) in mine.items() if live.get(cid) != digest}
        if stale:
            self._clear(svc.name, stale, "the file changed since the rejected edit")
        with self._lock:
            return {cid: digest for cid, (digest, _) in self._rejected.get(svc.name, {}).items()}

    def gone(self, services: Iterable[str]) -> None:
        """Services still in the file: any other's rejection is over."""
        keep = set(services)
        with self._lock:
            dropped = [s for s in self._rejected if s not in keep]
        for service in dropped:
            self._clear(service, None, "the service left the file")

    def _refused(self, action: CheckConfig, exc: ConfigRejected) -> None:
        with self._lock:
            mine = self._rejected.setdefault(action.service, {})
            first = not mine
            mine[action.id] = (action.digest, exc.output)
        log.error(
            "config edit REJECTED by its check: not signalled; the container keeps running its "
            "last good config, and will FAIL if it restarts before the file is fixed",
            service=action.service,
            container=action.name,
            exit_code=exc.exit_code,
            output=exc.output,
        )
        if self.metrics is not None:
            self.metrics.config_rejected.labels(action.service).set(1)
        if first:
            self.record(
                Event(
                    "config_rejected",
                    service=action.service,
                    replica=action.name,
                    message=f"the config edit of {action.service} was rejected by its check "
                    f"and not applied; {action.name} fails if it restarts before the file is "
                    "fixed",
                    cause=exc.output,
                    result="firing",
                    data={"exit_code": str(exc.exit_code)},
                )
            )

    def _clear(self, service: str, ids: set[str] | None, why: str) -> None:
        with self._lock:
            mine = self._rejected.get(service)
            if not mine:
                return
            for cid in list(mine) if ids is None else ids:
                mine.pop(cid, None)
            if mine:
                return
            del self._rejected[service]
        if self.metrics is not None:
            self.metrics.config_rejected.labels(service).set(0)
        log.info("config edit accepted again", service=service, why=why)
        self.record(
            Event(
                "config_rejected",
                service=service,
                message=f"the config of {service} is accepted again ({why})",
                cause=why,
                result="resolved",
            )
        )
