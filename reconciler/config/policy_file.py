"""Read the host policy file (default /etc/reconciler/policy.yaml) into a `core.policy.Policy`.

The file lives outside the desired state and passes the same StrictModes check: the desired
state cannot grant itself anything. Absent default file: the built-in policy (deny all that
is root on the host). The CLI and the daemon's reloader call `load`.

    allow:
      - rule: host_path            # one of core.policy.RULES
        services: [node-exporter]
        paths: [/, /proc, /sys]    # host_path, devices (capabilities: cap_add; options:
                                   # security_opt)
        read_only: true            # host_path: the default; false also allows read-write
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.config.schema_messages import schema_message
from reconciler.config.tree import read_regular
from reconciler.config.yamlread import Scalar, YamlError, compose, core_value, read
from reconciler.core.policy import DEFAULT, RULES, Allow, Policy, normalise_cap
from reconciler.errors import DesiredStateError

DEFAULT_PATH = Path("/etc/reconciler/policy.yaml")
MAX_BYTES = 256 * 1024


class _AllowDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: Literal[RULES]  # type: ignore[valid-type]
    services: list[str]
    paths: list[str] = []
    capabilities: list[str] = []
    options: list[str] = []
    read_only: bool = True


class _PolicyDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    allow: list[_AllowDef] = []


def load(path: Path | None) -> Policy:
    """The policy at `path` (None: the default path, or the built-in policy if it is absent);
    raise DesiredStateError (file:line: what is wrong) if it is unreadable or invalid."""
    given = path is not None
    path = path or DEFAULT_PATH
    source = str(path)
    try:
        raw = read_regular(path, MAX_BYTES)  # a FIFO is refused, never waited on
    except FileNotFoundError:
        if given:
            raise DesiredStateError(source, ["policy file not found"]) from None
        return DEFAULT
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read the policy: {exc.strerror}"]) from exc
    if len(raw) > MAX_BYTES:
        raise DesiredStateError(source, [f"the policy is larger than {MAX_BYTES // 1024} KiB"])
    try:
        text = raw.decode("utf-8")
        node = compose(text)
        doc = read(node, _plain) if node is not None else None
    except UnicodeDecodeError as exc:
        raise DesiredStateError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    except YamlError as exc:
        where = f"{source}:{exc.mark}: " if exc.mark else ""
        raise DesiredStateError(source, [where + exc.message]) from None
    if doc is None or doc.data is None:
        return Policy(source=source)
    if doc.problems:
        raise DesiredStateError(source, [f"{source}:{m}: {msg}" for _, m, msg in doc.problems])
    try:
        definition = _PolicyDef.model_validate(doc.data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
            mark = doc.mark(loc)  # type: ignore[arg-type]
            where = f"{source}:{mark.line}: " if mark else f"{source}: "
            dotted = ".".join(str(p) for p in loc)
            lines.append(f"{where}{dotted}: {schema_message(err)}")
        raise DesiredStateError(source, lines) from None
    allows = []
    for a in definition.allow:
        values = [*a.paths, *(normalise_cap(c) for c in a.capabilities), *a.options]
        allows.append(Allow(a.rule, frozenset(a.services), tuple(values), a.read_only))
    return Policy(tuple(allows), source=source)


def _plain(_path: Any, scalar: Scalar) -> Any:
    return core_value(scalar.tag, scalar.text)
