"""The one seam between the daemon and a target: what an adapter (host, Swarm, ...) provides.

The daemon (runtime/) owns everything that is written once: lock, signals, systemd notify
and watchdog, reload with its safety, the work queue and its back-off, the status file,
HTTP and metrics. An adapter only loads the file with its rules, observes, plans, executes
one key and says which keys an engine event touches; what it cannot do is a capability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reconciler.core.actions import Action
from reconciler.core.events import Record, discard
from reconciler.core.plan_explain import ServicePlan
from reconciler.core.policy import Denial, Policy

if TYPE_CHECKING:  # prometheus_client is imported only where metrics are served
    import threading

    from reconciler.ops.metrics import Metrics

RESYNC = "resync"  # the whole project, observed once


def service_key(name: str) -> str:
    return f"service:{name}"


def image_key(name: str) -> str:
    """A pull or build: its own workers, so it never holds up a heal."""
    return f"image:{name}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconcile of one key says: look again after `requeue_after` seconds (None:
    only when something asks); `busy` while a rollout, drain, pull or update is under way."""

    requeue_after: float | None = None
    busy: bool = False
    errors: int = 0
    actions: int = 0
    # False: what this pass did is not done yet (Swarm has not started the tasks): a key of
    # the first round makes the daemon ready (READY=1) only on a pass that is.
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a target does beyond the common ground (the CLI and daemon ask, never guess)."""

    prunes_images: bool = False  # --prune-images
    takes_over_compose: bool = False  # --take-over-compose
    removes_volumes: bool = False  # down --volumes
    snapshots: bool = False  # volume snapshots (x-reconciler.snapshots), snapshots, restore


@dataclass(frozen=True, slots=True)
class Settings:
    """What the CLI hands an adapter when it opens one (a daemon, `apply`, `plan`...)."""

    state_dir: Path | None = None
    pull_timeout: float = 600.0
    prune_images: bool = False
    daemon: bool = False  # the long-running daemon (follows tags; waits for the engine)
    metrics: Metrics | None = None
    cancelled: Callable[[], bool] = lambda: False
    record: Record = discard  # what happened (core.events): history, notifications
    image_lock: Path | None = None  # the image lock file (None: <state-dir>/<project>...)
    locked: Mapping[str, str] | None = None  # apply --locked: service -> repo:tag@digest


class Named(Protocol):
    """A service of either target's desired state."""

    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str: ...  # what its containers/tasks are made from (not their count)


class Desired(Protocol):
    """What the daemon reads of any target's desired state."""

    @property
    def project(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def watched(self) -> tuple[str, ...]: ...
    @property
    def denied(self) -> frozenset[str]: ...
    @property
    def services(self) -> Sequence[Named]: ...
    @property
    def image_requests(self) -> dict[str, str]: ...  # service -> what its image resolves from


@dataclass(frozen=True, slots=True)
class Done:
    """One executed action of either target, as the CLI prints it:
    `success  create container web-1 (missing)`."""

    action: Action
    outcome: str  # success | error | skipped
    error: str | None = None

    @property
    def text(self) -> str:
        return self.action.describe()

    @property
    def key(self) -> str:
        """The action's identity: its last result is the one that counts."""
        return self.action.key


@dataclass(frozen=True, slots=True)
class PlanReport:
    """What `plan` prints: notes, blocking errors, denials, then the steps (or in sync)."""

    project: str
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # each stops the plan (exit 1) before its steps are listed
    denials: tuple[str, ...] = ()  # services the host policy denies (exit 1, never in sync)
    steps: tuple[str, ...] = ()
    services: tuple[ServicePlan, ...] = ()  # per service: its field diff, steps, causes, waits
    actions: tuple[Action, ...] = ()  # the steps as data, in order (their causes)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What `apply` prints after its results: notes, then the problems that make it fail."""

    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


Emit = Callable[[str, float], None]  # (key, delay): "look at this key after delay seconds"


class Target(Protocol):
    """One project on one engine, opened by a `TargetKind`."""

    desired: Desired
    on_done: Callable[[Done], None] | None  # each action executed, as it finishes
    # Services gone from the file are left alone while set (a file that changed just now
    # may be half written: the daemon reads it again before anything is removed).
    hold_removals: bool

    def first_keys(self) -> Iterable[str]:
        """The keys whose first reconcile makes the project ready (READY=1, /readyz)."""
        ...

    def reconcile(self, key: str, trigger: str) -> Outcome:
        """One key, once; raise EngineUnavailable when the engine cannot be read."""
        ...

    def bind(self, emit: Emit) -> None:
        """Where the adapter asks for keys of its own (a dependency, a pull that finished)."""
        ...

    def watch(self, stop: threading.Event, emit: Emit, count: Callable[[], None]) -> None:
        """Follow the engine's events until `stop`; each only emits keys (blocking)."""
        ...

    def status_data(self) -> Mapping[str, object]:
        """What the daemon's status file carries for `status` (JSON-ready)."""
        ...

    def plan(self) -> PlanReport: ...

    def apply_report(self) -> ApplyReport:
        """After `apply`: the notes seen, and the problems that make it fail."""
        ...

    def take_over(self, show: Callable[[Done], None], *, log_only: bool) -> bool:
        """--take-over-compose (when `capabilities.takes_over_compose`)."""
        ...

    def status(self, status_file: Path, denials: Mapping[str, str]) -> str: ...

    def down(self, *, volumes: bool) -> tuple[Done, ...]: ...

    def close(self) -> None:
        """Stop what runs beside the keys (transfers, heal pools): the daemon is stopping."""
        ...


class TargetKind(Protocol):
    """A target before it connects: its file rules and the policy's judgement."""

    name: str
    capabilities: Capabilities

    def load(self, path: Path) -> Desired:
        """Read and validate the file for this target; DesiredStateError when bad."""
        ...

    def judge(self, desired: Desired, policy: Policy) -> tuple[Desired, tuple[Denial, ...]]:
        """The host policy: denied services are marked, never created nor touched."""
        ...

    def summary(self, desired: Desired) -> str:
        """`validate`'s line: `valid (project p: web x2, db x1)`."""
        ...

    def open(self, desired: Desired, settings: Settings) -> Target:
        """Connect; raise EngineUnavailable (or a target's own ReconcilerError)."""
        ...
