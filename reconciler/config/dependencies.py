"""depends_on's compose 2.20 keys: `required: false` (a dependency that is not part of the
project, left out by a profile or not defined, is dropped with a warning instead of an
error) and `restart: true` (accepted, not acted on: a warning names its line). Called by the
loader after the profiles are selected.
"""

from __future__ import annotations

from reconciler.config.schema import DesiredStateDef
from reconciler.config.yamlread import Path as DataPath

Note = tuple[DataPath, str]  # where, what to say


def settled(d: DesiredStateDef) -> tuple[DesiredStateDef, list[Note]]:
    """The definition without the optional dependencies that are not in it, and the notes
    (those left out, and every `restart: true`)."""
    notes: list[Note] = []
    services = dict(d.services)
    changed = False
    for name, svc in d.services.items():
        deps = svc.depends_on
        if not isinstance(deps, dict):
            continue
        kept = {}
        for dep, cond in deps.items():
            at: DataPath = ("services", name, "depends_on", dep)
            if dep not in d.services and not cond.required:
                notes.append(
                    (
                        (*at, "required"),
                        f"service {dep!r} is not part of the project (not defined, or its "
                        f"profile is not selected): {name!r} starts without it",
                    )
                )
                continue
            if cond.restart:
                notes.append(
                    (
                        (*at, "restart"),
                        f"accepted, not acted on: reconciler does not restart {name!r} when "
                        f"{dep!r} is recreated or restarted (compose does)",
                    )
                )
            kept[dep] = cond
        if len(kept) != len(deps):
            services[name] = svc.model_copy(update={"depends_on": kept})
            changed = True
    if not changed:
        return d, notes
    return d.model_copy(update={"services": services}), notes
