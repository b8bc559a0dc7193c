"""Volume snapshots as pure decisions: which volumes a replica writes, when a rollout takes a
snapshot and when a rollback restores one, and which snapshots are kept.

targets/host/snapshots.py acts on these around the steps core.plan_slots plans; the
config loader calls `snapshot_order` once a service opts in (x-reconciler.snapshots).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from reconciler.core import rollout as ro
from reconciler.core.desired import ContainerSpec, ServiceSpec
from reconciler.core.observed import ObservedContainer

# The reason core.plan_slots gives the start of an old replica whose replacement failed: the
# step a restore comes before.
REPLACEMENT_FAILED = "its replacement failed"


@dataclass(frozen=True, slots=True)
class MountedVolume:
    volume: str  # Docker's name
    target: str  # where the replica mounts it


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One snapshot of one volume: a tar file in the state directory, and what it belongs to."""

    id: str
    service: str
    volume: str
    target: str  # the path it was read from (and is restored to) in the replica
    revision: str  # the revision whose data it holds (what a rollback returns to)
    next_revision: str  # the revision whose rollout it was taken before
    created: float  # epoch seconds
    size: int  # bytes of the tar file
    sha256: str
    file: str  # the tar file's name in the snapshot folder


def rw_volumes(spec: ContainerSpec) -> tuple[MountedVolume, ...]:
    """The named volumes `spec` mounts read-write (binds `NAME:TARGET[:MODE]`), by target."""
    named = set(spec.volumes)
    out: list[MountedVolume] = []
    for bind in spec.binds:
        source, _, rest = bind.partition(":")
        target, _, mode = rest.partition(":")
        if source in named and target and "ro" not in mode.split(","):
            out.append(MountedVolume(source, target))
    return tuple(sorted(set(out), key=lambda m: m.target))


def snapshot_order(svc: ServiceSpec) -> ServiceSpec:
    """A service that takes snapshots replaces its replicas stop-first (update and rollback):
    a volume is read from a stopped replica, before the replacement (which may migrate the
    data) starts. Others are returned unchanged."""
    if svc.snapshots is None or not any(rw_volumes(s) for s in svc.replicas):
        return svc
    return replace(
        svc,
        update=replace(svc.update, order="stop-first"),
        rollback=replace(svc.rollback, order="stop-first"),
    )


@dataclass(frozen=True, slots=True)
class Replacement:
    """A replacement about to start, and the replica it replaces."""

    new: ObservedContainer
    old: ObservedContainer | None


def replacement_of(
    container_id: str, containers: Iterable[ObservedContainer]
) -> Replacement | None:
    """The replacement `container_id` (under a temporary name) and the replica of its slot;
    None when `container_id` is no replacement."""
    mine = list(containers)
    new = next((c for c in mine if c.id == container_id), None)
    if new is None or not ro.is_temp_name(new.name):
        return None
    slot = [c for c in mine if c.service == new.service and c.replica == new.replica]
    old = next((c for c in slot if c is not new and not ro.is_temp_name(c.name)), None)
    return Replacement(new, old)


def snapshot_skip(
    svc: ServiceSpec, r: Replacement, containers: Sequence[ObservedContainer]
) -> str | None:
    """Why no snapshot is taken before `r.new` starts (None: take one).

    Once per rollout: before the first replacement of the revision starts. A later batch
    finds a replica that has run the new revision (its data may be migrated already).
    """
    if svc.snapshots is None:
        return "snapshots are off"
    spec = next((s for s in svc.replicas if s.replica == r.new.replica), None)
    if spec is None or not rw_volumes(spec):
        return "no read-write named volume"
    if r.old is None:
        return "no old replica to read from"
    if r.old.state in ("running", "paused", "restarting"):
        return f"the old replica is {r.old.state} (a snapshot is read from a stopped one)"
    wanted = {s.spec_hash for s in svc.replicas}
    ran = [
        c
        for c in containers
        if c.id != r.new.id and c.service == svc.name and c.spec_hash in wanted
        if c.state != "created"
    ]
    if ran:
        return f"{ran[0].name} already ran the new revision (snapshot taken before it)"
    return None


def restore_wanted(reason: str, name: str) -> bool:
    """A start of an old replica (never a replacement) after its replacement failed."""
    return reason == REPLACEMENT_FAILED and not ro.is_temp_name(name)


def to_restore(entries: Iterable[SnapshotEntry], failed_revision: str) -> list[SnapshotEntry]:
    """The newest snapshot of each volume taken before the rollout of `failed_revision`."""
    newest: dict[str, SnapshotEntry] = {}
    for e in entries:
        if e.next_revision != failed_revision:
            continue
        if e.volume not in newest or (e.created, e.id) > (
            newest[e.volume].created,
            newest[e.volume].id,
        ):
            newest[e.volume] = e
    return [newest[v] for v in sorted(newest)]


def retain(
    entries: Iterable[SnapshotEntry], keep: int
) -> tuple[tuple[SnapshotEntry, ...], tuple[SnapshotEntry, ...]]:
    """(kept, dropped): the newest `keep` (at least one) of each volume are kept."""
    by_volume: dict[str, list[SnapshotEntry]] = {}
    for e in entries:
        by_volume.setdefault(e.volume, []).append(e)
    kept: list[SnapshotEntry] = []
    dropped: list[SnapshotEntry] = []
    for volume in sorted(by_volume):
        ordered = sorted(by_volume[volume], key=lambda e: (e.created, e.id), reverse=True)
        kept += ordered[: max(keep, 1)]
        dropped += ordered[max(keep, 1) :]
    kept.sort(key=lambda e: (e.created, e.id))
    return tuple(kept), tuple(dropped)


def size_text(size: int) -> str:
    """`12.3 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
