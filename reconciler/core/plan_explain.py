"""Plans that explain: per service, the fields that differ between what runs and what the file
asks, the steps with their causes, and what a held step waits for.

Pure; the adapters (`plan`, the daemon's rollout log line) call `host_changes` or
`swarm_changes` and `explain`; `plan` prints `ServicePlan`s, `plan --json` serialises them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core import rollout as ro
from reconciler.core.actions import Action, CreateContainer
from reconciler.core.causes import Cause
from reconciler.core.desired import ServiceSpec
from reconciler.core.notes import Note
from reconciler.core.observed import ObservedContainer
from reconciler.core.plan_slots import changes as replica_changes
from reconciler.core.spec_diff import FieldChange, diff, merged
from reconciler.core.spec_fields import swarm_observed, swarm_view
from reconciler.core.swarm_model import ObservedService, SwarmService

# Note kinds that hold a step of a service back (what it waits for is their text).
WAIT_KINDS = frozenset(
    {
        "held",
        "waiting",
        "replacement_waits",
        "namespace_missing",
        "draining",
        "name_taken",
        "rolling_back",
        "paused",
    }
)


@dataclass(frozen=True, slots=True)
class StepView:
    """One step as `plan` shows it: its line and its cause."""

    line: str
    verb: str
    kind: str
    name: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class Wait:
    """A held step (or a held revision) as data: what it is about (`subject`: a container,
    a step key, `service web`), what it waits for, why it is needed (`cause`, "" when not
    known), and the line `plan` prints."""

    subject: str
    waits_for: str
    cause: str = ""
    text: str = ""

    def __str__(self) -> str:
        return self.text


def wait_of(n: Note) -> Wait:
    """A held step's note as a Wait (`detail` says what it waits for, else its message)."""
    message = n.text.removeprefix(f"{n.subject}: ")
    return Wait(n.subject, n.detail or message, n.cause, n.text)


def held_revision(
    service: str, revision: str, runs: str, cause: str, at: str, by: str = "rolled back"
) -> Wait:
    """A revision the file asks for that does not run (`by`: rolled back, Swarm rolled
    back): why, since when, and what makes it be tried again. Neither the daemon nor
    `reconciler apply` tries it again: only an edit of the file that changes the service."""
    when = f" at {at}" if at else ""
    why = f" because {cause}" if cause else ""
    text = (
        f"service {service}: revision {revision[:12]} is held ({by}{when}{why}); "
        f"{runs[:12] or 'the previous revision'} runs instead. It is tried again only after an "
        "edit of the file that changes this service (`reconciler apply` keeps it held too)"
    )
    waits_for = "an edit of the file that changes this service"
    return Wait(f"service {service}", waits_for, f"{by}{when}{why}", text)


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """One service of the plan: what differs, what will be done and why, what waits."""

    name: str
    changes: tuple[FieldChange, ...] = ()
    steps: tuple[StepView, ...] = ()
    waits: tuple[Wait, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not (self.changes or self.steps or self.waits)


def replaces(action: Action) -> str | None:
    """The replica a step replaces: a create under a temporary name for another cause than
    a name still taken (None for every other step)."""
    if isinstance(action, CreateContainer) and action.as_name and action.cause.kind != "missing":
        return action.spec.name
    return None


def plan_line(action: Action) -> str:
    """A step as `plan` shows it. A replacement is shown as what it is, with the steps that
    follow on later passes: `replace container p-web-1 (spec changed: environment.A): create
    0123456789ab_p-web-1, start and watch it, then remove p-web-1 and rename the new one`."""
    old = replaces(action)
    if old is None:
        return action.describe()
    return (
        f"replace container {old} ({action.reason}): create {action.name}, start and watch "
        f"it, then remove {old} and rename the new one"
    )


def step_view(action: Action) -> StepView:
    return StepView(plan_line(action), action.verb, action.kind, action.name, action.cause)


def host_changes(
    svc: ServiceSpec,
    containers: Iterable[ObservedContainer],
    hidden: frozenset[str] = frozenset(),
) -> tuple[FieldChange, ...]:
    """A host service's diff: each replica against the container that runs it (the first
    change of each field), and the replica count."""
    mine = [c for c in containers if c.service == svc.name and not ro.is_temp_name(c.name)]
    by_replica: dict[int, ObservedContainer] = {}
    for c in sorted(mine, key=lambda c: (c.replica, c.name)):
        by_replica.setdefault(c.replica, c)
    groups = [
        replica_changes(by_replica[spec.replica], spec, hidden)
        for spec in svc.replicas
        if spec.replica in by_replica
    ]
    out = list(merged(groups))
    if by_replica and len(by_replica) != len(svc.replicas):
        out.append(FieldChange("replicas", len(by_replica), len(svc.replicas)))
    return tuple(sorted(out, key=lambda c: c.field))


def swarm_changes(
    svc: SwarmService, obs: ObservedService, hidden: frozenset[str] = frozenset()
) -> tuple[FieldChange, ...]:
    """A Swarm service's diff: its spec as Swarm holds it against the file's (fields Swarm
    filled in with defaults are no difference)."""
    wanted = swarm_view(svc.spec, hidden)
    return diff(swarm_observed(swarm_view(obs.spec, hidden), wanted), wanted)


def explain(
    names: Sequence[str],
    actions: Iterable[Action],
    notes: Iterable[Note],
    changes: Mapping[str, tuple[FieldChange, ...]],
    containers: Mapping[str, str] | None = None,
    held: Mapping[str, Wait] | None = None,
) -> tuple[ServicePlan, ...]:
    """Per service (in file order): its diff, its steps, and the held steps' waits.
    `containers`: container name -> its service (what a note's subject names); `held`:
    service -> its held revision (it replaces the planner's own `held` note of it)."""
    containers = containers or {}
    held = held or {}
    steps: dict[str, list[StepView]] = {n: [] for n in names}
    for a in actions:
        if a.service in steps:
            steps[a.service].append(step_view(a))
    waits: dict[str, list[Wait]] = {n: [held[n]] if n in held else [] for n in names}
    for note in notes:
        service = _owner(note.subject, containers)
        if note.kind == "held" and service in held and note.subject == f"service {service}":
            continue
        if note.kind in WAIT_KINDS and service in waits:
            waits[service].append(wait_of(note))
    return tuple(
        ServicePlan(n, changes.get(n, ()), tuple(steps[n]), tuple(waits[n])) for n in names
    )


def _owner(subject: str, containers: Mapping[str, str]) -> str | None:
    """The service a note is about: `service web`, `p-web-1`, a step key `create:p-web-1`,
    `connect:p-web-1:net`, a replacement's temporary name."""
    if subject.startswith("service "):
        return subject.removeprefix("service ")
    name = subject.split(":")[1] if ":" in subject else subject
    if ro.is_temp_name(name):
        name = name.partition(ro.TEMP_SEPARATOR)[2]
    return containers.get(name)


def rollout_fields(changes: Iterable[FieldChange]) -> list[str]:
    """The diff as log-line values: `environment.A "1" -> "2"` each."""
    return [str(c) for c in changes]
