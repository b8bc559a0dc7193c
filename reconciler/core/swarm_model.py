"""Swarm target, pure values: the desired Swarm objects, the observed ones and the actions.

core.swarm_plan plans with them; engine/swarm/spec.py renders the file into `SwarmDesired`,
engine/swarm/engine.py observes into `SwarmObserved` and executes the actions. No I/O here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.core import causes
from reconciler.core.actions import BaseAction, CreateMissing, RemoveOwned
from reconciler.core.actions import describe as describe_any
from reconciler.core.causes import Cause
from reconciler.core.desired import LABEL_MANAGED, LABEL_PROJECT, LABEL_SPEC_HASH, DesiredState
from reconciler.core.notes import Note

STACK_NAMESPACE = "com.docker.stack.namespace"  # what `docker stack deploy` labels with


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of a ServiceSpec as we send it, without the label that carries the hash."""
    body = json.loads(json.dumps(spec))
    body.get("Labels", {}).pop(LABEL_SPEC_HASH, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- desired


@dataclass(frozen=True, slots=True)
class SwarmNetwork:
    name: str  # <project>_<network>
    labels: tuple[tuple[str, str], ...] = ()
    internal: bool = False
    attachable: bool = True
    ipam: tuple[tuple[str, str], ...] = ()
    enable_ipv6: bool = False


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """A Swarm config named by its content: a changed file is a new config (rotation)."""

    name: str
    data: bytes = field(repr=False)
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SwarmSecret:
    """A Swarm secret: named by the file's change stamp, never by its content (a name must
    not help anyone guess a short secret); a rewritten file is a new secret."""

    name: str
    data: bytes = field(repr=False)
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SwarmService:
    name: str  # the file's service name
    full_name: str  # <project>_<service>, as `docker stack deploy` names it
    spec_json: str  # the ServiceSpec we send, hash label included
    spec_hash: str
    networks: tuple[str, ...] = ()  # full names
    configs: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    global_mode: bool = False
    replicas: int = 1
    has_healthcheck: bool = False

    @property
    def spec(self) -> dict[str, Any]:
        return dict(json.loads(self.spec_json))

    @property
    def revision(self) -> str:
        """What the file asks of the service's tasks, whatever their count (a new revision
        replaces the tasks; a new count only scales)."""
        body = self.spec
        body.get("Mode", {}).get("Replicated", {}).pop("Replicas", None)
        return spec_hash(body)


@dataclass(frozen=True, slots=True)
class SwarmDesired:
    project: str
    networks: tuple[SwarmNetwork, ...]
    configs: tuple[SwarmConfig, ...]
    services: tuple[SwarmService, ...]
    secrets: tuple[SwarmSecret, ...] = ()
    source: str = ""
    digest: str = ""
    watched: tuple[str, ...] = ()
    # The host policy's judgement (core.policy, on the single host's rendering of the same
    # file): denied services are never created nor touched.
    denied: frozenset[str] = field(default=frozenset(), compare=False)
    host: DesiredState | None = field(default=None, compare=False, repr=False)
    # Services of profiles not selected: not part of the project, never created nor removed.
    dormant: frozenset[str] = frozenset()

    def service(self, name: str) -> SwarmService:
        return next(s for s in self.services if s.name == name)

    @property
    def image_requests(self) -> dict[str, str]:
        """As DesiredState.image_requests, from the single-host rendering of the same file."""
        return self.host.image_requests if self.host is not None else {}


# --------------------------------------------------------------------------- observed


@dataclass(frozen=True, slots=True)
class ObservedService:
    id: str
    name: str  # full name
    version: int
    labels: tuple[tuple[str, str], ...]
    spec_json: str  # normalised by the adapter: network IDs as names, config IDs dropped
    update_state: str = ""
    update_message: str = ""
    configs_in_use: tuple[str, ...] = ()  # by Spec or PreviousSpec (a rollback needs them)
    secrets_in_use: tuple[str, ...] = ()
    force_update: int = 0
    update_started: str = ""  # UpdateStatus.StartedAt: which update or rollback it tells of
    previous_hash: str = ""  # our spec-hash label on PreviousSpec (what a rollback returns to)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(json.loads(self.spec_json))

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")

    def owned_by(self, project: str) -> bool:
        return self.label(LABEL_MANAGED) == "true" and self.label(LABEL_PROJECT) == project

    @property
    def service(self) -> str:
        """The file's service name (from our label)."""
        return self.label("io.reconciler.service")


@dataclass(frozen=True, slots=True)
class ObservedObject:
    """A network or config: its name, and whether it carries our labels for this project."""

    name: str
    id: str
    owned: bool


@dataclass(frozen=True, slots=True)
class SwarmObserved:
    services: tuple[ObservedService, ...] = ()
    networks: tuple[ObservedObject, ...] = ()
    configs: tuple[ObservedObject, ...] = ()
    secrets: tuple[ObservedObject, ...] = ()


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class CreateSwarmNetwork(CreateMissing):
    spec: SwarmNetwork
    kind = "network"
    key_prefix = "network"


@dataclass(frozen=True, slots=True)
class CreateSwarmConfig(CreateMissing):
    spec: SwarmConfig
    kind = "config"
    key_prefix = "config"


@dataclass(frozen=True, slots=True)
class CreateSwarmSecret(CreateMissing):
    spec: SwarmSecret
    kind = "secret"
    key_prefix = "secret"


@dataclass(frozen=True, slots=True)
class CreateService(BaseAction):
    spec: SwarmService
    taken_by: str = ""  # the ID of a service without our labels that holds the name
    removed_by_hand: bool = False  # ours existed (we created it) and is gone: drift put back
    verb = "create"
    kind = "service"
    key_prefix = "service"

    @property
    def reason(self) -> str:
        if self.taken_by:
            return (
                f"missing: the name is taken by service {self.taken_by[:12]}, which reconciler "
                "does not manage"
            )
        return "drift: removed by hand" if self.removed_by_hand else "missing"

    @property
    def why(self) -> Cause | None:
        return causes.drift("removed by hand") if self.removed_by_hand else None

    @property
    def name(self) -> str:
        return self.spec.full_name

    @property
    def service(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class UpdateService(BaseAction):
    spec: SwarmService
    id: str
    version: int
    reason: str
    force_update: int = 0  # kept as it is: a changed ForceUpdate restarts every task
    why: Cause | None = field(default=None, compare=False)  # the reason as data (`cause`)
    verb = "update"
    kind = "service"
    key_prefix = "service"

    @property
    def name(self) -> str:
        return self.spec.full_name

    @property
    def service(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class ScaleService(BaseAction):
    """Only the replica count of a held service (its spec otherwise as Swarm left it)."""

    id: str
    name: str
    service: str
    version: int
    spec_json: str  # the observed spec with the file's Mode
    replicas: int
    reason: str = "replicas changed by hand (revision held)"
    why: Cause | None = field(default=None, compare=False)
    verb = "scale"
    kind = "service"
    key_prefix = "service"


@dataclass(frozen=True, slots=True)
class RemoveService(BaseAction):
    id: str
    name: str
    service: str
    reason: str = "no longer in the file"
    verb = "remove"
    kind = "service"
    key_prefix = "remove-service"


@dataclass(frozen=True, slots=True)
class RemoveSwarmConfig(RemoveOwned):
    id: str
    name: str
    reason = "replaced (no service uses it)"
    kind = "config"
    key_prefix = "remove-config"


@dataclass(frozen=True, slots=True)
class RemoveSwarmSecret(RemoveOwned):
    id: str
    name: str
    reason = "replaced (no service uses it)"
    kind = "secret"
    key_prefix = "remove-secret"


@dataclass(frozen=True, slots=True)
class RemoveSwarmNetwork(RemoveOwned):
    """`reconciler down --target swarm`: a network this project created."""

    id: str
    name: str
    reason = "down"
    kind = "network"
    key_prefix = "remove-network"


SwarmAction = (
    CreateSwarmNetwork
    | CreateSwarmConfig
    | CreateSwarmSecret
    | CreateService
    | UpdateService
    | ScaleService
    | RemoveService
    | RemoveSwarmConfig
    | RemoveSwarmSecret
    | RemoveSwarmNetwork
)


@dataclass(frozen=True, slots=True)
class SwarmPlan:
    """Actions in the order they must run: networks and configs, services, then removals."""

    actions: tuple[SwarmAction, ...] = ()
    notes: tuple[Note, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.actions)


def describe(action: SwarmAction) -> str:
    """One line for humans (core.actions.describe, for either target)."""
    return describe_any(action)


def with_image(svc: SwarmService, image: str) -> SwarmService:
    """`svc` running `image` instead (an update policy's or a lock file's `repo:tag@digest`):
    a new spec, so a new revision that Swarm rolls out with its update_config."""
    spec = svc.spec
    spec["TaskTemplate"]["ContainerSpec"]["Image"] = image
    spec["Labels"].pop(LABEL_SPEC_HASH, None)
    digest = spec_hash(spec)
    spec["Labels"][LABEL_SPEC_HASH] = digest
    return replace(svc, spec_json=json.dumps(spec, sort_keys=True), spec_hash=digest)
