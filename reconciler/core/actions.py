"""Actions, steps and plans: what a planner asks the engine to do, in which order.

core.planner and core.takeover build host plans of these; core.swarm_model has Swarm's action
classes. Both satisfy the `Action` protocol, which the runtime, the CLI and `describe` read;
most of both derive their key and line from `BaseAction`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from reconciler.core import causes
from reconciler.core.causes import Cause
from reconciler.core.desired import (
    BuildSpec,
    ContainerSpec,
    NetworkAttachment,
    NetworkSpec,
    PullPolicy,
    VolumeSpec,
)
from reconciler.core.notes import Note

JUST_CREATED = "just created"  # the reason of the start that follows a create
# The start of a replica our create left unstarted (its start waited for a dependency, or the
# daemon stopped in between): Docker's "created" is never started. It finishes the creation;
# it is no heal.
NEVER_STARTED = "created, never started"
STARTS_OF_CREATION = (JUST_CREATED, NEVER_STARTED)


class Action(Protocol):
    """What an action of either target (host or Swarm) offers its consumers."""

    @property
    def verb(self) -> str: ...  # create, start, update, remove...

    @property
    def kind(self) -> str: ...  # container, network, volume, image, service, config...

    @property
    def name(self) -> str: ...  # the object's name (a container's, a service's full name)

    @property
    def key(self) -> str: ...  # identifies the action within a plan (what steps wait on)

    @property
    def service(self) -> str | None: ...  # the file's service it serves, if any

    @property
    def reason(self) -> str: ...

    @property
    def cause(self) -> Cause: ...  # the reason as data: its kind and the field diff behind it

    def describe(self) -> str:
        """One line for humans: verb, kind, name and reason."""
        ...


def summary(action: Action) -> str:
    """The usual line: `<verb> <kind> <name> (<reason>)`."""
    return f"{action.verb} {action.kind} {action.name} ({action.reason})"


def describe(action: Action) -> str:
    """One line for humans: verb, kind, name and reason (either target)."""
    return action.describe()


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Keyed(_Named, Protocol):
    key_prefix: ClassVar[str]


class _FromSpec(Protocol):
    @property
    def spec(self) -> _Named: ...


class BaseAction:
    """What most action classes of either target share: the key `<key_prefix>:<name>` and
    the `summary` line. A class whose key or line reads otherwise overrides it."""

    __slots__ = ()
    key_prefix: ClassVar[str]

    @property
    def key(self: _Keyed) -> str:
        return f"{self.key_prefix}:{self.name}"

    @property
    def cause(self: Action) -> Cause:
        """`why` where the planner knew more than the reason's words, else the reason."""
        why = getattr(self, "why", None)
        return why if isinstance(why, Cause) else causes.of(self.reason)

    def describe(self: Action) -> str:
        return summary(self)


class CreateMissing(BaseAction):
    """Create a network, volume, config or secret of the file that does not exist: the
    subclass holds its `spec`, which names it."""

    __slots__ = ()
    verb = "create"
    service = None
    reason = "missing"

    @property
    def name(self: _FromSpec) -> str:
        return self.spec.name


class RemoveOwned(BaseAction):
    """Remove a network, volume, config or secret this project created (`down`, or one no
    service uses any more): the subclass holds its name (and id)."""

    __slots__ = ()
    verb = "remove"
    service = None


@dataclass(frozen=True, slots=True)
class CreateNetwork(CreateMissing):
    spec: NetworkSpec
    project: str
    kind = "network"
    key_prefix = "network"

    def describe(self) -> str:
        return f"{self.verb} {self.kind} {self.spec.name}"


@dataclass(frozen=True, slots=True)
class CreateVolume(CreateMissing):
    spec: VolumeSpec
    project: str
    kind = "volume"
    key_prefix = "volume"

    def describe(self) -> str:
        return f"{self.verb} {self.kind} {self.spec.name}"


@dataclass(frozen=True, slots=True)
class EnsureImage:
    """Make the image present as the pull policy says (pull or build)."""

    service: str
    image: str
    pull: PullPolicy
    build: BuildSpec | None = None
    reason: str = "needed by a container to create"
    kind = "image"

    @property
    def name(self) -> str:
        return self.image

    @property
    def verb(self) -> str:
        return "build" if self.build else "pull"

    @property
    def key(self) -> str:
        return f"image:{self.service}"

    @property
    def cause(self) -> Cause:
        return causes.of(self.reason)

    def describe(self) -> str:
        how = f"build from {self.build.context}" if self.build else f"pull policy {self.pull}"
        return f"ensure image {self.image} for {self.service} ({how})"


@dataclass(frozen=True, slots=True)
class CreateContainer(BaseAction):
    """Create (not start) a container: creates run early, starts follow depends_on order.

    A replacement is created under `as_name` (a temporary name) beside the replica it
    replaces, so a create Docker refuses leaves the old one untouched.
    """

    spec: ContainerSpec
    reason: str = "missing"
    as_name: str | None = None
    why: Cause | None = field(default=None, compare=False)  # the reason as data (`cause`)
    verb = "create"
    kind = "container"
    key_prefix = "create"

    @property
    def name(self) -> str:
        return self.as_name or self.spec.name

    @property
    def service(self) -> str:
        return self.spec.service


@dataclass(frozen=True, slots=True)
class RenameContainer(BaseAction):
    """Give a replacement its replica's name once the old replica is gone."""

    id: str
    name: str
    new_name: str
    service: str
    reason: str = "replacement passed"
    verb = "rename"
    kind = "container"
    key_prefix = "rename"

    def describe(self) -> str:
        return f"rename container {self.name} to {self.new_name}"


@dataclass(frozen=True, slots=True)
class DrainContainer(BaseAction):
    """Take a replica out of its networks' DNS aliases before it is stopped."""

    id: str
    name: str
    service: str
    networks: tuple[str, ...]
    reason: str
    verb = "drain"
    kind = "container"
    key_prefix = "drain"


@dataclass(frozen=True, slots=True)
class StartContainer(BaseAction):
    id: str
    name: str
    service: str
    reason: str
    why: Cause | None = field(default=None, compare=False)
    verb = "start"
    kind = "container"
    key_prefix = "container"


@dataclass(frozen=True, slots=True)
class RestartContainer(BaseAction):
    id: str
    name: str
    service: str
    reason: str
    grace_s: float | None = None
    why: Cause | None = field(default=None, compare=False)
    verb = "restart"
    kind = "container"
    key_prefix = "container"


@dataclass(frozen=True, slots=True)
class UnpauseContainer(BaseAction):
    id: str
    name: str
    service: str
    reason: str = "paused"
    verb = "unpause"
    kind = "container"
    key_prefix = "container"


@dataclass(frozen=True, slots=True)
class StopContainer(BaseAction):
    id: str
    name: str
    service: str
    reason: str = "state: stopped"
    grace_s: float | None = None
    verb = "stop"
    kind = "container"
    key_prefix = "container"


@dataclass(frozen=True, slots=True)
class ConnectNetwork:
    id: str
    name: str
    service: str
    attachment: NetworkAttachment
    reason: str = "not attached to a network it belongs on"
    reconnect: bool = False  # attached, but without its aliases (drained): attach again
    verb = "connect"
    kind = "container"

    @property
    def key(self) -> str:
        return f"connect:{self.name}:{self.attachment.network}"

    @property
    def cause(self) -> Cause:
        return causes.of(self.reason)

    def describe(self) -> str:
        return f"connect container {self.name} to network {self.attachment.network}"


@dataclass(frozen=True, slots=True)
class SignalContainer(BaseAction):
    """Deliver a reload signal after a declared config file changed."""

    id: str
    name: str
    service: str
    signal: str
    digest: str  # the reload-config digest this signal delivers
    reason: str
    verb = "signal"
    kind = "container"
    key_prefix = "signal"

    def describe(self) -> str:
        return f"signal {self.signal} to container {self.name} ({self.reason})"


@dataclass(frozen=True, slots=True)
class CheckConfig(BaseAction):
    """Run a config's `check` command inside the running container before its reload signal:
    a non-zero exit rejects the edit (no signal; the container keeps its last good config)."""

    id: str
    name: str
    service: str
    command: tuple[tuple[str, ...], ...]  # each run in turn (argv; a string form is sh -c)
    digest: str  # the reload-config digest it vets
    reason: str
    verb = "check"
    kind = "container"
    key_prefix = "check"

    def describe(self) -> str:
        return f"check the config of container {self.name} before its reload ({self.reason})"


@dataclass(frozen=True, slots=True)
class RemoveContainer(BaseAction):
    id: str
    name: str
    service: str
    reason: str
    grace_s: float | None = None
    verb = "remove"
    kind = "container"
    key_prefix = "remove"


@dataclass(frozen=True, slots=True)
class RemoveNetwork(RemoveOwned):
    """`reconciler down`: a network this project created (never an adopted one)."""

    name: str
    reason = "down"
    kind = "network"
    key_prefix = "remove-network"


@dataclass(frozen=True, slots=True)
class RemoveVolume(RemoveOwned):
    """`reconciler down --volumes`: a volume this project created (its data goes with it)."""

    name: str
    reason = "down --volumes"
    kind = "volume"
    key_prefix = "remove-volume"


# The host target's actions (matched by class where an action's kind matters).
HostAction = (
    CreateNetwork
    | CreateVolume
    | EnsureImage
    | CreateContainer
    | RenameContainer
    | DrainContainer
    | StartContainer
    | RestartContainer
    | UnpauseContainer
    | StopContainer
    | ConnectNetwork
    | CheckConfig
    | SignalContainer
    | RemoveContainer
    | RemoveNetwork
    | RemoveVolume
)


@dataclass(frozen=True, slots=True)
class Step:
    """An action and the keys of the steps that must succeed before it runs."""

    action: HostAction
    after: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return self.action.key


@dataclass(frozen=True, slots=True)
class SlotVerdict:
    """A replacement that passed or failed its monitor this pass (for the rollout record)."""

    service: str
    replica: int
    container: str  # the new container's id
    passed: bool
    reason: str = ""
    tolerated: bool = False  # failed, but within max_failure_ratio (or failure_action continue)


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...] = ()
    notes: tuple[Note, ...] = ()  # adopted, orphaned, held back: reported, not acted on
    wake_at: float | None = None  # a monitor, drain or delay falls due then: look again
    verdicts: tuple[SlotVerdict, ...] = ()

    @property
    def actions(self) -> tuple[HostAction, ...]:
        return tuple(s.action for s in self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)
