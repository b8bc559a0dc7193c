"""The problems of one parse of a desired-state file, and how they are shown.

`Report` collects them (`file:line:column: path: what is wrong`, secrets redacted);
`pydantic_problems` turns the schema's errors into them. Used by every step of the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError

from reconciler.config import secrets
from reconciler.config.schema import DesiredStateDef
from reconciler.config.schema_messages import either, schema_message
from reconciler.config.yamlread import Document, Mark
from reconciler.config.yamlread import Path as DataPath
from reconciler.errors import DesiredStateError


class Issue(NamedTuple):
    """A problem found on the definition: `path` is shown, `at` (default `path`) is where
    in the file to point."""

    path: DataPath
    message: str
    at: DataPath | None = None


Checks = Callable[[DesiredStateDef, str], Iterable[Issue]]


@dataclass(frozen=True, slots=True)
class _Problem:
    message: str
    path: DataPath = ()
    mark: Mark | None = None
    file: str | None = None  # None: the desired-state file; else an env file (line only)


class Report:
    """The problems of one parse, shown as `file:line:column: path: message`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[_Problem] = []
        self.secret_values: set[str] = set()  # never shown, whatever the message

    def add(
        self,
        message: str,
        path: DataPath = (),
        mark: Mark | None = None,
        file: str | None = None,
    ) -> None:
        self.items.append(_Problem(message, path, mark, file))

    def __bool__(self) -> bool:
        return bool(self.items)

    def lines(self) -> list[str]:
        def order(p: _Problem) -> tuple[int, str, int, int]:
            line, column = (p.mark.line, p.mark.column) if p.mark else (0, 0)
            at = p.file or (p.mark.file if p.mark else None) or ""  # a merged file's own
            return (p.file is not None, at, line, column)

        out: list[str] = []
        hide = [v for v in self.secret_values if len(v) >= secrets.MIN_LENGTH]
        for p in sorted(self.items, key=order):
            file = p.file or (p.mark.file if p.mark else None) or self.source
            if p.mark is None:
                where = f"{p.file}: " if p.file else ""
            elif p.file is not None or not p.mark.column:
                where = f"{file}:{p.mark.line}: "
            else:
                where = f"{file}:{p.mark.line}:{p.mark.column}: "
            text = f"{dotted(p.path)}: {p.message}" if p.path else p.message
            line = secrets.redact(where + text, hide)
            if line not in out:
                out.append(line)
        return out

    def error(self) -> DesiredStateError:
        return DesiredStateError(self.source, self.lines())


def dotted(path: DataPath) -> str:
    """services.web.ports[0]"""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def pydantic_problems(
    exc: ValidationError, doc: Document, report: Report, skip: set[DataPath]
) -> None:
    """Each schema error as a problem at its key (`skip`: paths reported already); the
    messages of one path joined by "or"."""
    seen: dict[DataPath, tuple[Mark | None, list[str]]] = {}
    deep: set[DataPath] = set()  # paths with an error other than a wrong type
    for err in exc.errors():
        path = _data_path(err["loc"], doc.data)
        if any(path[: len(failed)] == failed for failed in skip):
            continue  # a ${VAR} that could not be substituted: reported already
        nothing = err.get("input", "") is None  # `grafana:` and nothing under it: the key
        mark = doc.mark(path, key=err["type"] == "extra_forbidden" or nothing)
        message = schema_message(err)
        _, messages = seen.setdefault(path, (mark, []))
        if message not in messages:
            messages.append(message)
        if not str(err["type"]).endswith("_type"):
            deep.add(path)
    for path, (mark, messages) in seen.items():
        if path not in deep and any(p[: len(path)] == path != p for p in deep):
            continue  # a union's other shape (`[a, b]` for a mapping wrong inside): noise
        report.add(either(messages), path, mark)


def _data_path(loc: tuple[Any, ...], data: Any) -> DataPath:
    """The parts of a pydantic location that exist in the data (drops union tags)."""
    parts: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            parts.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            parts.append(part)
        elif (
            isinstance(node, Mapping)
            and isinstance(part, str)
            and part not in node
            and (part.isidentifier() and "[" not in part)
        ):
            # A missing required key or an unknown key: name it, stop walking.
            parts.append(part)
            node = None
    return tuple(parts)
