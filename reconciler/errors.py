"""The exceptions reconciler raises; SDK errors are chained as their cause."""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error reconciler raises on purpose."""


class DesiredStateError(ReconcilerError):
    """The desired-state file is missing, malformed or invalid.

    The message names the file, the path inside it and what is wrong.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid desired state:\n{lines}")


class EngineUnavailable(ReconcilerError):
    """The Docker engine cannot be reached (retry later)."""


class ActionFailed(ReconcilerError):
    """One action failed; `transient` says whether retrying soon may help."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class EngineSlow(ActionFailed):
    """Docker did not answer a call in time: retried soon, never held against a revision."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class ConfigRejected(ActionFailed):
    """A config's `check` command exited non-zero in the container: the edit is refused (not
    signalled) until the file changes; `output` is what the command said (trimmed)."""

    def __init__(self, message: str, *, exit_code: int, output: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class NameConflict(ActionFailed):
    """A container (Swarm service) name we need is taken by one we do not manage."""


class LockHeld(ReconcilerError):
    """Another reconciler already acts on this project."""


class Deferred(ReconcilerError):
    """Not now, not an error: the step waits for other work (an image pull) and comes back."""


class NotASwarmManager(ReconcilerError):
    """`--target swarm` on an engine that is not in a swarm, or not one of its managers."""
