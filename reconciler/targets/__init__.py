"""Targets: where a project runs. Each module or package here (but `base`) is one adapter
exposing `KIND` (a `base.TargetKind`); `--target NAME` picks it. A new target (Podman,
Nomad, ...) is one new module here and nothing else."""

from __future__ import annotations

import importlib
import pkgutil

from reconciler.targets.base import TargetKind


def names() -> tuple[str, ...]:
    """The adapters there are, `host` first."""
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"}
    return tuple(sorted(found, key=lambda n: (n != "host", n)))


def kind(name: str) -> TargetKind:
    """The adapter called `name`; KeyError when there is none."""
    if name not in names():
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    return module.KIND  # type: ignore[no-any-return]
