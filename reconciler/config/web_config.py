"""Read `--web-config-file`: TLS and basic auth for the HTTP endpoints, in the format of the
Prometheus exporter-toolkit (so Prometheus' own docs apply):

    tls_server_config: {cert_file: server.crt, key_file: server.key}
    basic_auth_users: {prometheus: $2y$10$...}   # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')

Relative paths are taken from the file's folder. ops.http serves with it; the CLI loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.config.schema_messages import schema_message
from reconciler.config.tree import read_regular
from reconciler.config.yamlread import Scalar, YamlError, compose, core_value, read
from reconciler.errors import DesiredStateError

MAX_BYTES = 64 * 1024


class _Tls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cert_file: str
    key_file: str


class _WebDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tls_server_config: _Tls | None = None
    basic_auth_users: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class WebConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)  # name -> bcrypt hash

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file) if p is not None)


def load(path: Path) -> WebConfig:
    """The web config at `path`; DesiredStateError (with the file and line) if it is bad."""
    source = str(path)
    try:
        raw = read_regular(path, MAX_BYTES)  # a FIFO is refused, never waited on
        if len(raw) > MAX_BYTES:
            raise DesiredStateError(source, [f"larger than {MAX_BYTES // 1024} KiB"])
        node = compose(raw.decode("utf-8"))
        doc = read(node, _plain) if node is not None else None
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise DesiredStateError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    except YamlError as exc:
        raise DesiredStateError(source, [f"{source}:{exc.mark}: {exc.message}"]) from None
    if doc is None or doc.data is None:
        return WebConfig()
    try:
        d = _WebDef.model_validate(doc.data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
            mark = doc.mark(loc)
            where = f"{source}:{mark.line}: " if mark else f"{source}: "
            lines.append(f"{where}{'.'.join(map(str, loc))}: {schema_message(err)}")
        raise DesiredStateError(source, lines) from None
    bad = [u for u, h in d.basic_auth_users.items() if not h.startswith(("$2a$", "$2b$", "$2y$"))]
    if bad:
        raise DesiredStateError(
            source, [f"basic_auth_users.{u}: must be a bcrypt hash ($2y$...)" for u in bad]
        )
    if d.basic_auth_users:
        try:
            import bcrypt  # noqa: F401  (checked here so a missing library fails at start)
        except ImportError:
            raise DesiredStateError(
                source, ["basic_auth_users needs the bcrypt library (pip install bcrypt)"]
            ) from None
    base = path.resolve().parent
    tls = d.tls_server_config
    return WebConfig(
        cert_file=base / tls.cert_file if tls else None,
        key_file=base / tls.key_file if tls else None,
        users={u: h.encode() for u, h in d.basic_auth_users.items()},
    )


def _plain(_path: Any, scalar: Scalar) -> Any:
    return core_value(scalar.tag, scalar.text)
