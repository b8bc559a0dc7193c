"""The conditions a target fires (a rollback held, a crash loop), kept in the state directory
(`<project>.firing.json`) so that a restarted daemon still resolves what it told before.
Made by the host and Swarm adapters for the daemon; read by their conditions' `keep_in`.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.ops.state_store import JsonStore

AFTER_RESTART = "after_restart"  # an event's data key: it resolves what an earlier run told


class FiringMemory:
    """key (`rollout:web`, `crash_loop:web`) -> what fires (strings); {} once it cleared."""

    def __init__(self, project: str, directory: Path | None = None) -> None:
        self._store: JsonStore[dict[str, str]] = JsonStore(
            project, "firing", dict[str, str], directory
        )

    def all(self) -> dict[str, dict[str, str]]:
        """What fired when the last run stopped (cleared keys left out)."""
        return {k: v for k, v in self._store.all().items() if v}

    def put(self, key: str, value: dict[str, str]) -> None:
        """Remember what fires now under `key` ({}: it cleared)."""
        if not value and not self._store.get(key):
            return
        self._store.put(key, dict(value))
