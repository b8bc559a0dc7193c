"""Names in a desired-state file: the project's, and the service, container and volume names
Docker and DNS accept (container names unique across the file).

Called by the loader (`project_name`) and the rules (`check_names`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from reconciler.config.report import Issue, Report
from reconciler.config.schema import DesiredStateDef
from reconciler.config.yamlread import Document
from reconciler.config.yamlread import Path as DataPath

MAX_CONTAINER_NAME = 128
MAX_PROJECT_NAME = 63
MAX_DNS_LABEL = 63
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")  # Docker's rule (2+ characters)


def project_from_folder(folder: Path) -> str:
    """The project name a folder gives (compose's rule: lowercase, [a-z0-9_-])."""
    name = re.sub(r"[^a-z0-9_-]", "", folder.name.lower()).lstrip("_-")
    return name or "default"


def project_problem(value: str) -> str | None:
    """What is wrong with a project name (None: nothing)."""
    if _PROJECT_NAME.match(value) and len(value) <= MAX_PROJECT_NAME:
        return None
    return (
        "must be lowercase letters, digits, '-' and '_', starting with a letter or digit, "
        f"at most {MAX_PROJECT_NAME} characters"
    )


def project_name(d: DesiredStateDef, base_dir: Path, report: Report, doc: Document) -> str:
    """project:, or name: (compose), or the folder's name; lowercase, at most 63 characters."""
    rule = (
        "must be lowercase letters, digits, '-' and '_', starting with a letter or digit, "
        f"at most {MAX_PROJECT_NAME} characters"
    )
    if d.project is not None and d.name is not None and d.project != d.name:
        report.add(
            f"conflicts with project: {d.project!r}; give one of them (name: is compose's "
            "spelling of project:)",
            ("name",),
            doc.mark(("name",)),
        )
    for key, value in (("project", d.project), ("name", d.name)):
        if value is not None:
            if not _PROJECT_NAME.match(value) or len(value) > MAX_PROJECT_NAME:
                report.add(rule, (key,), doc.mark((key,)))
            return value
    project = project_from_folder(base_dir)
    if len(project) > MAX_PROJECT_NAME:
        report.add(
            f"the folder's name gives a project name of {len(project)} characters (at most "
            f"{MAX_PROJECT_NAME}): set name: in the file"
        )
    return project


def check_names(d: DesiredStateDef, project: str) -> Iterable[Issue]:
    """Service and container names Docker and DNS accept; container names unique."""
    project_ok = bool(_PROJECT_NAME.match(project)) and len(project) <= MAX_PROJECT_NAME
    explicit: dict[str, str] = {}  # container_name -> service
    for name, svc in d.services.items():
        at: DataPath = ("services", name)
        if not _SERVICE_NAME.match(name):
            yield Issue(
                at,
                "is not a valid service name: letters, digits, '_', '.' and '-', starting "
                "with a letter or digit (Docker and DNS accept no other)",
            )
        elif any(len(label) > MAX_DNS_LABEL for label in name.split(".")):
            yield Issue(
                at, f"a service name is a DNS name: at most {MAX_DNS_LABEL} characters per label"
            )
        cn = svc.container_name
        if cn is not None:
            where: DataPath = (*at, "container_name")
            if not _CONTAINER_NAME.match(cn):
                yield Issue(
                    where,
                    f"{cn!r} is not a valid container name: two or more letters, digits, "
                    "'_', '.' and '-', starting with a letter or digit",
                )
            elif len(cn) > MAX_CONTAINER_NAME:
                yield Issue(where, f"at most {MAX_CONTAINER_NAME} characters")
            elif cn in explicit:
                yield Issue(
                    where,
                    f"{cn!r} is also the container_name of service {explicit[cn]!r}; "
                    "container names are unique",
                )
            else:
                explicit[cn] = name
        elif project_ok and svc.replica_count > 0:
            longest = f"{project}-{name}-{svc.replica_count}"
            if len(longest) > MAX_CONTAINER_NAME:
                yield Issue(
                    at,
                    f"its containers would be named like {longest[:40]}...: "
                    f"{len(longest)} characters, Docker takes at most {MAX_CONTAINER_NAME}; "
                    "use a shorter service or project name, or container_name",
                )
    for key, vdef in d.volumes.items():
        docker_name = vdef.name if vdef is not None and vdef.name else key
        # Docker's rule for volume names too ({replica}: a per-replica volume's number)
        if not _CONTAINER_NAME.match(docker_name.replace("{replica}", "1")):
            where = ("volumes", key, "name") if vdef is not None and vdef.name else ("volumes", key)
            yield Issue(
                where,
                f"{docker_name!r} is not a valid volume name: two or more letters, digits, "
                "'_', '.' and '-', starting with a letter or digit (Docker's rule)",
            )
    if not project_ok:
        return
    for cn, name in explicit.items():
        # A generated name is <project>-<service>-<n>: the n after the last '-'.
        owner, _, n = cn.removeprefix(f"{project}-").rpartition("-")
        other = d.services.get(owner) if cn.startswith(f"{project}-") else None
        if (
            other is not None
            and owner != name
            and other.container_name is None
            and re.fullmatch(r"[1-9][0-9]{0,9}", n) is not None
            and 1 <= int(n) <= other.replica_count
        ):
            yield Issue(
                ("services", name, "container_name"),
                f"{cn!r} is the name of replica {n} of service {owner!r}; container names "
                "are unique: choose another",
            )
