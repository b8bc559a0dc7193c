"""Which dialect a desired-state file speaks, and what follows from it: reconciler's native
format (`version: 1`, or `project:`, a key compose has not) names volumes and networks by
their keys; a compose file read as it is (no `version`, or compose's "2.4"/"3.8", ignored
with a warning as compose v2 does) names them `<project>_<key>` and takes its project name
from COMPOSE_PROJECT_NAME. Called by the loader; the renderers name objects with `docker_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.config.names import project_name, project_problem
from reconciler.config.report import Report
from reconciler.config.schema import DesiredStateDef
from reconciler.config.yamlread import Document

NATIVE_VERSION = 1
PROJECT_ENV = "COMPOSE_PROJECT_NAME"


def is_native(data: dict[str, Any]) -> bool:
    """`version: 1` (an integer), or no version and reconciler's own `project:` key."""
    version = data.get("version")
    if "version" not in data:
        return "project" in data
    return type(version) is int and version == NATIVE_VERSION


def without_compose_version(
    data: dict[str, Any], source: str, doc: Document, warn: Callable[[str], None]
) -> dict[str, Any]:
    """A compose file's `version` left out (compose v2 ignores it and says it is obsolete)."""
    if "version" not in data:
        return data
    mark = doc.mark(("version",), key=True) or "?"
    warn(
        f"{source}:{mark}: version: {data['version']!r} is compose's, obsolete and ignored (as "
        "compose does): the file is read as a compose file (volumes and networks named "
        "<project>_<key>); write version: 1 for reconciler's format (named by their keys)"
    )
    return {k: v for k, v in data.items() if k != "version"}


def docker_name(project: str, key: str, name: str | None, external: bool, native: bool) -> str:
    """The Docker name of a volume or network: its `name:`, else (native or external) its
    key, else compose's `<project>_<key>` (`docker compose up` and `docker stack deploy`)."""
    if name:
        return name
    if native or external:
        return key
    return f"{project}_{key}"


def project_of(
    d: DesiredStateDef,
    base_dir: Path,
    report: Report,
    doc: Document,
    *,
    native: bool,
    lookup: Callable[[str], str | None],
) -> str:
    """The project's name. Native: `project:`, else `name:`, else the folder. Compose (its
    precedence): `project:`, else COMPOSE_PROJECT_NAME (the environment, then `.env`), else
    `name:`, else the folder."""
    if native or d.project is not None:
        return project_name(d, base_dir, report, doc)
    given = lookup(PROJECT_ENV)
    if given:
        problem = project_problem(given)
        if problem:
            report.add(f"{PROJECT_ENV}={given!r}: {problem}")
        return given
    return project_name(d, base_dir, report, doc)
