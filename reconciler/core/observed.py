"""The observed state: a project's containers, networks and volumes as the engine read them.

The Docker adapter (engine/host/observe.py) converts SDK dictionaries into these at the
boundary; the planners compare them with core.desired. Immutable values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ContainerState = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]
Health = Literal["starting", "healthy", "unhealthy"]


@dataclass(frozen=True, slots=True)
class ObservedContainer:
    id: str
    name: str
    service: str
    replica: int
    spec_hash: str
    state: ContainerState
    health: Health | None = None
    exit_code: int | None = None
    networks: frozenset[str] = frozenset()
    image: str = ""
    config_hash: str = ""  # digest of the reload-signal configs it was created with
    network_target: str = ""  # with network_mode container:X, the ID of X it joined
    started_at: float | None = None  # filled in only for replacements being judged
    spec_view: str = ""  # its spec by field names, as created (core.spec_fields: the label)
    oom_killed: bool = False  # its last run ended by the kernel's OOM killer (when known)


@dataclass(frozen=True, slots=True)
class ObservedNetwork:
    name: str
    id: str
    owned: bool  # carries our labels for this project


@dataclass(frozen=True, slots=True)
class ObservedVolume:
    name: str
    owned: bool


@dataclass(frozen=True, slots=True)
class Observed:
    """The live state of one project, as the engine adapter read it."""

    containers: tuple[ObservedContainer, ...] = ()
    networks: tuple[ObservedNetwork, ...] = ()
    volumes: tuple[ObservedVolume, ...] = ()
    # Networks/volumes labelled with this project (whether or not still desired).
    project_networks: frozenset[str] = frozenset()
    project_volumes: frozenset[str] = frozenset()
