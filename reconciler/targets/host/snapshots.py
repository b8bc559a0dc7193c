"""Volume snapshots around a host rollout: taken before the first replacement starts (from the
stopped old replica), restored before the old revision starts again after a failure, listed
and restored by hand (`reconciler snapshots`, `reconciler restore`).

The controller calls `before(action)` ahead of each action it runs; the CLI calls `restore`
and `entries`. Decisions are core.snapshots'; files are ops.snapshot_store's.

Restore strategy (all or nothing): the snapshot files are checked (size, sha256, a readable
tar) and every container that mounts the volume must be this service's; only then is the
volume touched: its containers are removed, the volume is removed and created again as it
was (driver, options, labels: an empty volume, no stale file left), the replica is created
(not started), the tar is put into it, and only then is it started. A failure past the
checks holds the service stopped (`SnapshotStore.hold`, an error Event) until a restore by
hand succeeds: it never starts on half-restored data.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from reconciler.core import rollout as ro
from reconciler.core.actions import (
    CreateContainer,
    HostAction,
    RemoveContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.desired import (
    LABEL_PROJECT,
    LABEL_REVISION,
    LABEL_SERVICE,
    ContainerSpec,
    DesiredState,
    ServiceSpec,
)
from reconciler.core.events import Event, Record, discard
from reconciler.core.observed import ObservedContainer
from reconciler.core.snapshots import (
    MountedVolume,
    SnapshotEntry,
    replacement_of,
    restore_wanted,
    rw_volumes,
    size_text,
    snapshot_skip,
    to_restore,
)
from reconciler.engine.host import archive
from reconciler.engine.host.engine import Engine
from reconciler.errors import ActionFailed, ReconcilerError
from reconciler.ops.snapshot_store import FreeFloor, SnapshotStore
from reconciler.ops.state_store import StateStore

log = structlog.get_logger("reconciler")


class RestoreFailed(ReconcilerError):
    """A restore could not be done; `touched`: the volume was changed (the service is held)."""

    def __init__(self, message: str, *, touched: bool) -> None:
        super().__init__(message)
        self.touched = touched


class VolumeSnapshots:
    """Takes and restores the snapshots of one project's services."""

    def __init__(
        self,
        engine: Engine,
        store: SnapshotStore,
        rollouts: StateStore,
        desired: Callable[[], DesiredState],
        record: Record = discard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.store = store
        self.rollouts = rollouts
        self.desired = desired
        self.record = record
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, service: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(service, threading.Lock())

    def _service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.desired().services if s.name == name), None)

    # ------------------------------------------------------------------ the controller's hook

    def before(self, action: HostAction) -> bool:
        """Ahead of `action`: refuse to start a held service, take a snapshot before a
        rollout's first replacement starts, restore before an old replica starts again after
        its replacement failed. True: the action was done here (a restore starts it)."""
        starts = StartContainer | CreateContainer | RestartContainer | UnpauseContainer
        if not isinstance(action, starts):
            return False
        held = self.store.held(action.service)
        if held:
            raise ActionFailed(
                f"service {action.service} is held stopped: {held}; "
                f"see `reconciler snapshots {action.service}` and `reconciler restore`"
            )
        svc = self._service(action.service)
        if not isinstance(action, StartContainer) or svc is None or svc.snapshots is None:
            return False
        with self._lock(svc.name):
            if restore_wanted(action.reason, action.name):
                return self._rollback(svc, action)
            self._before_replacement(svc, action)
        return False

    def _before_replacement(self, svc: ServiceSpec, action: StartContainer) -> None:
        if not ro.is_temp_name(action.name):
            return  # a heal or a first start: no rollout replaces anything
        containers = self.engine.containers(self.desired().project)
        r = replacement_of(action.id, containers)
        if r is None:
            return
        record = ro.refresh(self.rollouts.get(svc.name), svc)
        if ro.target(svc, record)[1] != "normal":
            return  # a rollback returns to data that was restored: nothing to save
        why = snapshot_skip(svc, r, containers)
        if why is not None or r.old is None:
            log.debug("no snapshot", service=svc.name, reason=why)
            return
        info = self.engine.inspect(r.old.id) or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        revision = labels.get(LABEL_REVISION) or record.stable_revision
        self.take(svc, r.old, containers, revision=revision, next_revision=svc.revision)

    def _rollback(self, svc: ServiceSpec, action: StartContainer) -> bool:
        entries = to_restore(self.store.entries(svc.name), svc.revision)
        if not entries:
            return False
        containers = self.engine.containers(self.desired().project)
        old = next((c for c in containers if c.id == action.id), None)
        stable = self.rollouts.get(svc.name).stable
        spec = next((s for s in stable if old is not None and s.replica == old.replica), None)
        ids = ", ".join(e.id for e in entries)
        start = time.monotonic()
        # The slot's replica first (it receives the tar); the others sharing the volume are
        # stopped for the restore, and come back with it, on the stable spec.
        others = [s for s in stable[: len(svc.replicas)] if spec is None or s.name != spec.name]
        try:
            if spec is None:
                raise RestoreFailed("no stable replica spec is recorded to restore", touched=False)
            self._restore(svc, entries, [spec, *others], start=True)
        except (ReconcilerError, OSError) as exc:
            message = f"restore of snapshot {ids} before the rollback failed: {exc}"
            self.store.hold(svc.name, message)
            log.error(
                "rollback restore failed; service held stopped",
                service=svc.name,
                snapshots=ids,
                error=str(exc),
            )
            self.record(
                Event(
                    "rolled_back",
                    svc.name,
                    message,
                    result="error",
                    duration_s=time.monotonic() - start,
                )
            )
            raise ActionFailed(message) from exc
        message = f"restored {', '.join(e.volume for e in entries)} from snapshot {ids}"
        log.warning("rollback: volumes restored", service=svc.name, snapshots=ids)
        self.record(  # a step of the rollback: the rollout's own rolled_back Event (with the
            Event(  # cause) is the one notifications tell, not this one taking its place
                "rollout_step",
                svc.name,
                f"rollback: {message}",
                replica=spec.name,
                duration_s=time.monotonic() - start,
                revision=entries[0].revision,
            )
        )
        return True

    # ------------------------------------------------------------------ taking

    def take(
        self,
        svc: ServiceSpec,
        old: ObservedContainer,
        containers: Sequence[ObservedContainer],
        *,
        revision: str,
        next_revision: str,
    ) -> list[SnapshotEntry]:
        """Snapshot the read-write named volumes of `old` (stopped). Running replicas that
        share one are paused while it is read. A volume past `max_size`, or a disk below
        `min_free`, is skipped with a warning; so is one the engine fails to read."""
        policy = svc.snapshots
        spec = next((s for s in svc.replicas if s.replica == old.replica), None)
        if policy is None or spec is None:
            return []
        external = {v.name for v in self.desired().volumes if v.external}
        for v in rw_volumes(spec):
            if v.volume in external:  # a restore re-creates the volume: never one not ours
                self._skipped(svc, v.volume, "an external volume (not ours to re-create)")
        volumes = tuple(v for v in rw_volumes(spec) if v.volume not in external)
        if not volumes:
            return []
        free = self.store.free_bytes()
        if free < policy.min_free:
            self._skipped(
                svc,
                ", ".join(v.volume for v in volumes),
                f"{size_text(free)} free, below min_free {size_text(policy.min_free)}",
            )
            return []
        names = {v.volume for v in volumes}
        sharing = [
            c.id
            for c in containers
            if c.service == svc.name and c.id != old.id and c.state == "running"
            for s in svc.replicas
            if s.replica == c.replica and names & {v.volume for v in rw_volumes(s)}
        ]
        paused = [cid for cid in dict.fromkeys(sharing) if archive.pause(self.engine.api, cid)]
        taken: list[SnapshotEntry] = []
        try:
            for mv in volumes:
                entry = self._take_one(svc, old, mv, revision, next_revision)
                if entry is not None:
                    taken.append(entry)
        finally:
            for cid in paused:
                archive.unpause(self.engine.api, cid)
        return taken

    def _take_one(
        self,
        svc: ServiceSpec,
        old: ObservedContainer,
        mv: MountedVolume,
        revision: str,
        next_revision: str,
    ) -> SnapshotEntry | None:
        policy = svc.snapshots
        assert policy is not None
        floor = FreeFloor(self.store, policy.min_free)
        start = time.monotonic()
        created = self.clock()
        try:
            with self.store.writing() as (f, tmp):
                size, sha = archive.read_volume(
                    self.engine.api,
                    old.id,
                    mv.target,
                    f,
                    limit=policy.max_size,
                    keep_going=floor.ok,
                )
                f.flush()
                ident = hashlib.sha256(f"{mv.volume}\0{created}\0{sha}".encode()).hexdigest()
                entry = SnapshotEntry(
                    id=ident[:12],
                    service=svc.name,
                    volume=mv.volume,
                    target=mv.target,
                    revision=revision,
                    next_revision=next_revision,
                    created=created,
                    size=size,
                    sha256=sha,
                    file=f"{ident[:12]}.tar",
                )
                dropped = self.store.commit(tmp, entry, policy.keep)
        except archive.TooLarge as exc:
            limit = f"max_size {size_text(policy.max_size)}" if policy.max_size else "min_free"
            self._skipped(svc, mv.volume, f"{exc} ({limit})")
            return None
        except (ReconcilerError, OSError) as exc:
            self._skipped(svc, mv.volume, f"it could not be read: {exc}")
            return None
        took = time.monotonic() - start
        log.info(
            "volume snapshot taken",
            service=svc.name,
            volume=mv.volume,
            snapshot=entry.id,
            size=size,
            seconds=round(took, 3),
            deleted=[e.id for e in dropped],
        )
        self.record(
            Event(
                "rollout_step",
                svc.name,
                f"snapshot {entry.id} of volume {mv.volume} ({size_text(size)})",
                replica=old.name,
                cause="before rollout",
                duration_s=took,
                revision=revision,
                data={"snapshot": entry.id, "sha256": sha},
            )
        )
        return entry

    def _skipped(self, svc: ServiceSpec, volume: str, why: str) -> None:
        log.warning("volume snapshot skipped", service=svc.name, volume=volume, reason=why)
        self.record(
            Event(
                "rollout_step",
                svc.name,
                f"snapshot of volume {volume} skipped: {why}",
                cause="before rollout",
                result="skipped",
            )
        )

    # ------------------------------------------------------------------ restoring

    def restore_by_hand(self, service: str, ident: str) -> SnapshotEntry:
        """`reconciler restore SERVICE SNAPSHOT`: the service's containers are stopped and
        recreated on the restored volume, then started (unless the file keeps it stopped).
        The caller holds the project's lock (no daemon runs)."""
        svc = self._service(service)
        if svc is None:
            raise RestoreFailed(f"no service {service} in the file", touched=False)
        entry = self.store.find(service, ident)
        target, _ = ro.target(svc, ro.refresh(self.rollouts.get(service), svc))
        try:
            self._restore(svc, [entry], target.replicas, start=svc.state == "running")
        except RestoreFailed as exc:
            if exc.touched:
                self.store.hold(service, f"restore of snapshot {entry.id} by hand failed: {exc}")
            raise
        except (ReconcilerError, OSError) as exc:
            self.store.hold(service, f"restore of snapshot {entry.id} by hand failed: {exc}")
            raise RestoreFailed(str(exc), touched=True) from exc
        self.store.release(service)
        self.record(
            Event(
                "operator",
                service,
                f"restored volume {entry.volume} from snapshot {entry.id}",
                trigger="operator",
                revision=entry.revision,
            )
        )
        return entry

    def _restore(
        self,
        svc: ServiceSpec,
        entries: Sequence[SnapshotEntry],
        specs: Sequence[ContainerSpec],
        *,
        start: bool,
    ) -> None:
        """Put `entries` back into their volumes. `specs`: the replicas to create again, of
        which those are: the ones whose containers the restore removed, and each snapshot's
        carrier (the first that mounts its volume at its path: it receives the tar)."""
        carriers: dict[str, ContainerSpec] = {}
        for e in entries:
            carrier = next(
                (s for s in specs if MountedVolume(e.volume, e.target) in rw_volumes(s)), None
            )
            if carrier is None:
                raise RestoreFailed(f"no replica mounts {e.volume} at {e.target}", touched=False)
            carriers[e.id] = carrier
            problem = self.store.verify(e)
            if problem:
                raise RestoreFailed(problem, touched=False)
        api = self.engine.api
        project = self.desired().project
        users: dict[str, dict[str, Any]] = {}
        for volume in {e.volume for e in entries}:
            for c in archive.users_of(api, volume):
                users[c["Id"]] = c
        for c in users.values():
            labels = c.get("Labels") or {}
            if labels.get(LABEL_PROJECT) != project or labels.get(LABEL_SERVICE) != svc.name:
                name = (c.get("Names") or ["?"])[0].lstrip("/")
                raise RestoreFailed(
                    f"container {name} (not of service {svc.name}) mounts the "
                    "volume: stop and remove it first",
                    touched=False,
                )
        # The replicas removed are created again (a replica on another volume stays as it is).
        removed = {(c.get("Names") or [cid])[0].lstrip("/") for cid, c in users.items()}
        wanted = {s.name for s in carriers.values()} | removed
        create = [s for s in specs if s.name in wanted]
        try:
            for cid, c in users.items():
                name = (c.get("Names") or [cid])[0].lstrip("/")
                if c.get("State") in ("running", "paused", "restarting"):
                    self.engine.execute(StopContainer(cid, name, svc.name, "restore"))
                self.engine.execute(RemoveContainer(cid, name, svc.name, "restore", 0.0))
            for volume in sorted({e.volume for e in entries}):
                info = api.inspect_volume(volume)
                archive.remove_volume(api, volume)
                api.create_volume(
                    volume,
                    driver=info.get("Driver") or "local",
                    driver_opts=info.get("Options") or None,
                    labels=info.get("Labels") or None,
                )
            for spec in create:
                self.engine.execute(CreateContainer(spec, "restore"))
            for e in entries:
                with self.store.path(e).open("rb") as f:
                    archive.write_volume(api, carriers[e.id].name, e.target, f)
        except (ReconcilerError, OSError) as exc:
            raise RestoreFailed(str(exc), touched=True) from exc
        except Exception as exc:  # docker-py's own errors outside docker_errors
            raise RestoreFailed(f"{type(exc).__name__}: {exc}", touched=True) from exc
        if start:
            for spec in create:
                self.engine.execute(StartContainer(spec.name, spec.name, svc.name, "restored"))
