"""Plan notes as data: what a planner reports beside its actions (adopted, orphaned, held...).

The planners (core.planner, core.swarm_plan, core.takeover) emit them; the CLI and the
runtime test `kind` and read `subject` instead of parsing text, and print `str(note)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NoteKind = Literal[
    "adopted",  # a network, volume or config of the file exists without our labels
    "orphaned",  # a network or volume of ours no longer in the file
    "external_missing",  # declared external, does not exist (an error)
    "waiting",  # a start waits for the services it depends on
    "held",  # a step (or a Swarm revision) held back this pass
    "namespace_missing",  # held: it joins the namespace of a container that does not exist
    "replacement_waits",  # a rollout's next replacement waits (parallelism, delay, pause)
    "name_taken",  # a replica created under its temporary name
    "draining",  # a container left its DNS aliases; stopped when its drain ends
    "denied",  # the host policy denies a service: left as it is
    "foreign",  # a service of the file's name that is not ours
    "rolling_back",  # Swarm is rolling a service back
    "paused",  # Swarm paused a service's update
    "taken_over",  # --take-over-compose replaces compose's containers of a service
    "left_alone",  # compose containers of services not in the file
]


@dataclass(frozen=True, slots=True)
class Note:
    """One note: its kind, what it is about (a `network x`, a step key, a container name),
    its text as printed, `detail` (a held step's reason alone: what it waits for) where a
    consumer quotes it, and `cause` (why the held step is needed, when known)."""

    kind: NoteKind
    subject: str
    text: str
    detail: str = ""
    cause: str = ""

    def __str__(self) -> str:
        return self.text

    def __contains__(self, part: str) -> bool:
        """Search the text (what tests and a reader of the printed note see)."""
        return part in self.text


def note(kind: NoteKind, subject: str, message: str, detail: str = "", cause: str = "") -> Note:
    """A note printed as `<subject>: <message>`."""
    return Note(kind, subject, f"{subject}: {message}", detail, cause)
