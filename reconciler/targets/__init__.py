"""Targets: where a project runs. Each module or package here whose name is in `ADAPTERS`
is one adapter exposing `KIND` (a `base.TargetKind`); `--target NAME` picks it. The other
modules are what adapters share (the seam `base`, conditions, image updates...). A new target
(Podman, Nomad, ...) is one new module here and its name in `ADAPTERS`."""

from __future__ import annotations

import importlib

from reconciler.targets.base import TargetKind

ADAPTERS = ("host", "swarm")  # `host` first: the default


def names() -> tuple[str, ...]:
    """The adapters there are, `host` first."""
    return ADAPTERS


def kind(name: str) -> TargetKind:
    """The adapter called `name`; KeyError when there is none."""
    if name not in names():
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    return module.KIND  # type: ignore[no-any-return]
