"""`x-reconciler: {snapshots: {keep, max_size, min_free}}` in a service: the opt-in to volume
snapshots (core.snapshots), read where compose ignores it (an `x-` extension).

The loader calls `snapshot_policies` on the file's data before extensions are dropped; other
keys of `x-reconciler` belong to other features and are left to them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field, ValidationError

from reconciler.config.report import Report
from reconciler.config.schema_messages import schema_message
from reconciler.config.schema_values import Bytes, Int, StrictModel
from reconciler.config.yamlread import Document
from reconciler.core.desired import ServiceSpec, SnapshotPolicy
from reconciler.core.snapshots import snapshot_order

EXTENSION = "x-reconciler"


class SnapshotsDef(StrictModel):
    keep: Int = Field(3, ge=1)
    max_size: Bytes | None = None
    min_free: Bytes = 1024**3


def snapshot_policies(
    data: Any, report: Report, doc: Document, *, host: bool = True
) -> dict[str, SnapshotPolicy]:
    """service -> its snapshot policy, for services that ask for one (problems: `report`).
    Not `host` (Swarm): refused, as Swarm's other keys it cannot honour are."""
    services = data.get("services") if isinstance(data, dict) else None
    out: dict[str, SnapshotPolicy] = {}
    for name, body in (services or {}).items() if isinstance(services, dict) else ():
        ext = body.get(EXTENSION) if isinstance(body, dict) else None
        if not isinstance(ext, dict) or "snapshots" not in ext:
            continue
        at: tuple[str | int, ...] = ("services", str(name), EXTENSION, "snapshots")
        if not host:
            report.add(
                "not supported with --target swarm: volume snapshots are host-only (a task's "
                "volumes live on whichever node runs it)",
                at,
                doc.mark(at, key=True),
            )
            continue
        raw = ext["snapshots"]
        try:
            d = SnapshotsDef.model_validate({} if raw is None or raw is True else raw)
        except ValidationError as exc:
            for err in exc.errors():
                path = at + tuple(p for p in err["loc"] if isinstance(p, str | int))
                report.add(schema_message(err), path, doc.mark(path))
            continue
        out[str(name)] = SnapshotPolicy(d.keep, d.max_size, d.min_free)
    return out


def with_snapshots(svc: ServiceSpec, policies: dict[str, SnapshotPolicy]) -> ServiceSpec:
    """`svc` with its policy (and its rollouts stop-first: core.snapshots.snapshot_order)."""
    policy = policies.get(svc.name)
    if policy is None:
        return svc
    return snapshot_order(replace(svc, snapshots=policy))
