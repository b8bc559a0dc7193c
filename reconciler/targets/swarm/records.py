"""What the Swarm adapter remembers per service across restarts (`<project>.swarm.json` in
the state directory): the spec it last pushed, and one Swarm rolled back (held until the file
changes the service). Read by the adapter, its status table and `plan`'s explanations."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from reconciler.ops.state_store import JsonStore


class SwarmRecord(BaseModel):
    """Per service: the spec hash we last pushed, and one Swarm rolled back (held)."""

    pushed: str = ""
    failed: str = ""
    failed_reason: str = ""
    failed_at: float = 0.0  # when we saw Swarm roll it back


def records(project: str, directory: Path | None) -> JsonStore[SwarmRecord]:
    """`<project>.swarm.json` in the state directory."""
    return JsonStore(project, "swarm", SwarmRecord, directory)
