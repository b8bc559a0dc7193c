"""What an imported file needs before the daemon can run it: each `${VAR}` no environment
gives (and without a default), each env_file not there yet, with the compose line naming it.

Called by `reconciler import`, which keeps them as written and lists them (exit 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config.inputs import resolve
from reconciler.config.interpolation import unset_names
from reconciler.config.yamlread import Document, Mark
from reconciler.config.yamlread import Path as DataPath

PLACEHOLDER = "1"  # what a missing variable stands for while the import is validated
PATH_PLACEHOLDER = "/stand-in"  # ... where it begins a bind mount's source (${DATA}/db:/x)


@dataclass(frozen=True, slots=True)
class Need:
    what: str  # "variable NAME" / "env file PATH"
    mark: Mark | None
    stand_in: str = PLACEHOLDER
    note: str = ""  # where it is set that the output will not read (the compose .env)

    def show(self, source: str) -> str:
        where = source if self.mark is None else f"{self.mark.file or source}:{self.mark}"
        return f"{self.what} ({where}){': ' + self.note if self.note else ''}"


@dataclass(slots=True)
class Needs:
    variables: dict[str, Need] = field(default_factory=dict)  # name -> where first used
    env_files: list[Need] = field(default_factory=list)

    def all(self) -> list[Need]:
        return [*self.variables.values(), *self.env_files]

    def stand_ins(self) -> dict[str, str]:
        """A value for each missing variable, to validate the import with."""
        return {name: need.stand_in for name, need in self.variables.items()}


def needs(
    data: Any, positions: Document, lookup: Callable[[str], str | None], out_dir: Path
) -> Needs:
    """Walk the converted file (`data`; `positions`: where each value came from)."""
    found = Needs()

    def walk(node: Any, path: DataPath) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not str(key).startswith("x-"):
                    walk(value, (*path, str(key)))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*path, i))
        elif isinstance(node, str) and "$" in node:
            for name in unset_names(node, lookup):
                if name not in found.variables:
                    stand_in = PATH_PLACEHOLDER if _begins_a_source(path, node) else PLACEHOLDER
                    found.variables[name] = Need(f"variable {name}", positions.mark(path), stand_in)

    walk(data, ())
    services = data.get("services") if isinstance(data, Mapping) else None
    for name, svc in services.items() if isinstance(services, Mapping) else ():
        entries = svc.get("env_file") if isinstance(svc, Mapping) else None
        items = entries if isinstance(entries, list) else [entries] if entries else []
        for i, entry in enumerate(items):
            given = entry.get("path") if isinstance(entry, Mapping) else entry
            required = entry.get("required", True) if isinstance(entry, Mapping) else True
            if not isinstance(given, str) or "$" in given or required is False:
                continue
            if not resolve(out_dir, given).exists():
                at: DataPath = ("services", str(name), "env_file")
                at = (*at, i) if isinstance(entries, list) else at
                found.env_files.append(Need(f"env file {given}", positions.mark(at)))
    return found


def _begins_a_source(path: DataPath, text: str) -> bool:
    """services.S.volumes[i] (or its source) starting with a variable: a host path."""
    volume = len(path) >= 4 and path[0] == "services" and path[2] == "volumes"
    return volume and path[4:] in ((), ("source",)) and text.startswith("$")
