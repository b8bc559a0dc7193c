"""Read desired_state.yaml into a validated, rendered `DesiredState`.

The only module that reads the file. YAML is read by `yamlread` (ruamel.yaml, YAML 1.2 core
schema, duplicate keys refused, aliases counted); `${VAR}` is substituted with compose's
rules from the environment and the `.env` beside the file; env_file contents join the
environment. Every problem is reported as `file:line:column: path: what is wrong`, all at
once, as a `DesiredStateError`; no message quotes what a secret-looking variable gave.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError

from reconciler.config import secrets, tree
from reconciler.config.interpolation import (
    SECRET_NAME,
    InterpolationError,
    interpolate,
    parse_env_file,
)
from reconciler.config.schema import (
    DEFAULT_MAX_REPLICAS,
    DesiredStateDef,
    PortDef,
    ResourcesDef,
    SecretRefDef,
    ServiceDef,
    UpdateConfigDef,
    VolumeDef,
    VolumeMountDef,
    parse_pull_policy,
)
from reconciler.config.yamlread import (
    BOOL,
    INT,
    NULL,
    STR,
    Document,
    Mark,
    Scalar,
    YamlError,
    compose,
    core_value,
    read,
)
from reconciler.config.yamlread import Path as DataPath
from reconciler.core.model import (
    BuildSpec,
    ContainerSpec,
    DesiredState,
    HealPolicy,
    Healthcheck,
    HostAccess,
    NetworkAttachment,
    NetworkSpec,
    PortBinding,
    RuntimeOptions,
    SecretMount,
    ServiceSpec,
    UpdateConfig,
    VolumeSpec,
)
from reconciler.errors import DesiredStateError

REPLICA_PLACEHOLDER = "{replica}"
MAX_PORT = 65535
MAX_FILE_BYTES = 1024 * 1024  # the desired-state file (its compose stops at MAX_NODES too)
log = structlog.get_logger("reconciler")
MAX_ENV_FILE_BYTES = 1024 * 1024  # .env and each env_file
MAX_SECRET_BYTES = 1024 * 1024  # each secrets: file
SECRETS_DIR = "/run/secrets"
MAX_CONTAINER_NAME = 128
MAX_PROJECT_NAME = 63
MAX_DNS_LABEL = 63
MAX_EXPOSED = 1024  # ports `expose` may list per service (each is in every replica's spec)
ENV_MAX_REPLICAS = "RECONCILER_MAX_REPLICAS"
# Keys that do not change what a service's containers are: left out of its revision.
_NOT_IN_REVISION = {
    "replicas",
    "scale",
    "deploy",
    "heal",
    "drain_period",
    "state",
    "pull",
    "pull_policy",
    "depends_on",
}
# Keys added after revisions were first recorded: left out of a revision when not given.
_ADDED_KEYS = ("privileged", "devices", "ipc", "uts", "userns_mode", "security_opt", "secrets")
# Keys the host policy judges (core.policy): their lines are kept for its messages.
_POLICY_KEYS: tuple[str, ...] = ("privileged", "devices", "cap_add", "pid", "ipc", "uts")
_POLICY_KEYS += ("userns_mode", "network_mode", "security_opt", "volumes")
_PORT = re.compile(
    r"^(?:(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?:(?P<host>[0-9]{1,10}(?:-[0-9]{1,10})?):)?"
    r"(?P<container>[0-9]{1,10})(?:/(?P<proto>tcp|udp|sctp))?$"
)
_SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")  # Docker's rule (2+ characters)


def load(path: str | Path) -> DesiredState:
    """Read, validate and render a desired-state file; raise DesiredStateError if bad."""
    return load_parts(path).state


def load_parts(path: str | Path, checks: Checks | None = None) -> Parsed:
    """`load`, keeping what a target other than the single host renders from (`checks`:
    that target's own rules, reported with the others)."""
    path = Path(path)
    source = str(path)
    try:
        raw = _read_limited(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise DesiredStateError(source, ["file not found"]) from None
    except _TooLarge:
        raise DesiredStateError(
            source, [f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB"]
        ) from None
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from exc
    return parse_parts(raw, source=source, base_dir=path.resolve().parent, checks=checks)


def parse(
    raw: bytes | str,
    *,
    source: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    max_replicas: int | None = None,
    positions: Document | None = None,
    warn: Callable[[str], None] | None = None,
) -> DesiredState:
    """Validate and render the text of a desired-state file.

    `environ` (default: the process environment) and the `.env` in `base_dir` give `${VAR}`
    its values, the environment winning. `max_replicas` (default: $RECONCILER_MAX_REPLICAS,
    else 1000) bounds `replicas`. `positions` (`reconciler import`): where each value of
    `raw` came from in `source`, so that errors point there instead of at `raw`. `warn`
    (default: a log line) hears what is accepted but worth saying.
    """
    return parse_parts(
        raw,
        source=source,
        base_dir=base_dir,
        environ=environ,
        max_replicas=max_replicas,
        positions=positions,
        warn=warn,
    ).state


def parse_parts(
    raw: bytes | str,
    *,
    source: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    max_replicas: int | None = None,
    checks: Checks | None = None,
    positions: Document | None = None,
    warn: Callable[[str], None] | None = None,
) -> Parsed:
    """`parse`, returning the definition, document and renderer too (see `load_parts`)."""
    env = os.environ if environ is None else environ
    report = _Report(source)
    limit = _replica_limit(max_replicas, env, report)
    text = _decode(raw, report)
    try:
        node = compose(text)
    except YamlError as exc:
        report.add(exc.message, mark=exc.mark)
        raise report.error() from None
    if node is None:
        raise DesiredStateError(
            source, ["the file is empty; refusing it (it would remove every container)"]
        )
    dotenv = _DotEnv(base_dir / ".env", env, report)
    scalars = _Scalars(dotenv.lookup, report, positions)
    try:
        doc = read(node, scalars)
    except YamlError as exc:
        report.add(exc.message, mark=exc.mark)
        raise report.error() from None
    if positions is not None:
        doc.marks, doc.key_marks = positions.marks, positions.key_marks
    for path, mark, message in doc.problems:
        report.add(message, path, positions.mark(path) if positions else mark)
    data = doc.data
    if data is None:
        raise DesiredStateError(
            source, ["the file is empty; refusing it (it would remove every container)"]
        )
    if not isinstance(data, dict):
        kind = type(data).__name__
        report.add(f"(top level): must be a mapping, not {kind}", mark=doc.mark(()))
        raise report.error()
    data = _without_extensions(data)
    definition = None
    try:
        definition = DesiredStateDef.model_validate(data, context={"max_replicas": limit})
    except ValidationError as exc:
        _pydantic_problems(exc, doc, report, skip=scalars.failed)
    if report or definition is None:
        raise report.error()
    if not definition.services:
        report.add(
            "no services; refusing it (it would remove every container)",
            ("services",),
            doc.mark(("services",)),
        )
        raise report.error()
    project = _project(definition, base_dir, report, doc)
    for issue in _check(definition, project, single_host=checks is None):
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    for issue in checks(definition, project) if checks else ():
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    env_files = _EnvFiles(definition, base_dir, dotenv.lookup, report, doc)
    if report:
        raise report.error()
    renderer = _Renderer(definition, project, base_dir, env_files.values, dotenv.lookup)
    state = renderer.render()
    for at, name in renderer.unset.items():
        where = f"{source}:{doc.mark(at, key=True) or '?'}: {dotted(at)}"
        (warn or log.warning)(
            f"{where}: {name} is set neither in the environment nor in .env: left out of "
            "the container's environment (as compose does)"
        )
    for issue in renderer.problems:
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    if report:
        raise report.error()
    files = {**renderer.config_digests, **env_files.digests, str(dotenv.path): dotenv.digest}
    h = hashlib.sha256(text.encode())
    for file, file_digest in sorted(files.items()):
        h.update(f"\0{file}={file_digest}".encode())
    digest = h.hexdigest()  # the file, every config it mounts, .env and every env_file
    # What secret-looking variables gave: never printed (environment values never are).
    secrets.mark(report.secret_values | renderer.secret_values)
    state = DesiredState(
        project=state.project,
        networks=state.networks,
        volumes=state.volumes,
        services=tuple(_with_access(svc, definition, base_dir, doc) for svc in state.services),
        source=source,
        digest=digest,
        volume_templates=state.volume_templates,
        watched=tuple(sorted(files)),
        secrets=frozenset(report.secret_values | renderer.secret_values),
    )
    return Parsed(state, definition, doc, renderer, report, base_dir)


def _with_access(
    svc: ServiceSpec, d: DesiredStateDef, base_dir: Path, doc: Document
) -> ServiceSpec:
    """The service with what it asks of the host (for core.policy): its `volumes:` binds as
    real host paths (symlinks resolved, as mount(2) does) and the line of each judged key."""
    s = d.services[svc.name]
    lines = []
    for key in _POLICY_KEYS:
        mark = doc.mark(("services", svc.name, key), key=True)
        if key in s.model_fields_set and mark is not None:
            lines.append((key, mark.line))
    binds = []
    for i, vol in enumerate(s.volumes):
        m = _mount(vol)
        mark = doc.mark(("services", svc.name, "volumes", i))
        if m is not None and m.type == "bind":
            real = os.path.realpath(_resolve(base_dir, m.source))
            binds.append((real, m.read_only, "volumes", mark.line if mark else 0))
        elif m is not None and m.type == "volume" and m.source:
            # A volume whose driver_opts bind a host folder (local: o: bind, device: PATH) is
            # a bind of that folder. External volumes are not inspected (see README).
            device = _bound_device(d.volumes.get(m.source))
            if device is not None:
                real = os.path.realpath(posixpath.join("/", device))  # dockerd's cwd is /
                binds.append((real, m.read_only, "volumes", mark.line if mark else 0))
    # Configs, secrets, env_files and build contexts are read-only binds too (this process
    # reads them, as root): inside the file's own folder they are inputs (StrictModes checked
    # them); elsewhere they are judged as host paths.
    home = os.path.realpath(base_dir)
    files: list[tuple[str, int | None, str]] = [
        ("configs", i, c.source) for i, c in enumerate(s.configs)
    ]
    files += [("secrets", i, d.secrets[_secret_ref(r)[0]].file) for i, r in enumerate(s.secrets)]
    single = not isinstance(s.env_file, list)  # one file, short or long form
    env_files = s.env_file if isinstance(s.env_file, list) else [s.env_file]
    files += [
        ("env_file", None if single else i, e if isinstance(e, str) else e.path)
        for i, e in enumerate(env_files)
    ]
    if s.build is not None:
        context, dockerfile = (
            (s.build, "Dockerfile")
            if isinstance(s.build, str)
            else (s.build.context, s.build.dockerfile)
        )
        files += [("build", None, context)]
        where = _resolve(base_dir, context)
        dockerfile_path = os.path.realpath(where / dockerfile)  # docker-py reads it: a path
        if not dockerfile_path.startswith(os.path.realpath(where).rstrip("/") + "/"):
            files += [("build", None, dockerfile_path)]  # absolute, or ../ out of the context
    for key, index, source in files:
        real = os.path.realpath(_resolve(base_dir, source))
        if not real.startswith(home.rstrip("/") + "/"):
            at: DataPath = ("services", svc.name, key)
            mark = doc.mark(at, key=True) if index is None else doc.mark((*at, index))
            binds.append((real, True, key, mark.line if mark else 0))
    return replace(svc, access=HostAccess(tuple(binds), tuple(lines)))


def _bound_device(vdef: VolumeDef | None) -> str | None:
    """The host folder a volume's driver_opts bind-mount (`o` with bind), or None."""
    if vdef is None or vdef.external:
        return None
    opts = {k.lower(): str(v) for k, v in vdef.driver_opts.items()}
    if "bind" not in opts.get("o", "") or not opts.get("device"):
        return None
    return opts["device"]


# --------------------------------------------------------------------------- problems


class Issue(NamedTuple):
    """A problem found on the definition: `path` is shown, `at` (default `path`) is where
    in the file to point."""

    path: DataPath
    message: str
    at: DataPath | None = None


Checks = Callable[[DesiredStateDef, str], Iterable[Issue]]


class Parsed(NamedTuple):
    """A parse with what made it: for a target that renders the definition its own way."""

    state: DesiredState
    definition: DesiredStateDef
    doc: Document
    renderer: _Renderer
    report: _Report
    base_dir: Path


@dataclass(frozen=True, slots=True)
class _Problem:
    message: str
    path: DataPath = ()
    mark: Mark | None = None
    file: str | None = None  # None: the desired-state file; else an env file (line only)


class _Report:
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
            return (p.file is not None, p.file or "", line, column)

        out: list[str] = []
        hide = [v for v in self.secret_values if len(v) >= secrets.MIN_LENGTH]
        for p in sorted(self.items, key=order):
            file = p.file or self.source
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


def _pydantic_problems(
    exc: ValidationError, doc: Document, report: _Report, skip: set[DataPath]
) -> None:
    seen: dict[DataPath, tuple[Mark | None, list[str]]] = {}
    for err in exc.errors():
        path = _data_path(err["loc"], doc.data)
        if any(path[: len(failed)] == failed for failed in skip):
            continue  # a ${VAR} that could not be substituted: reported already
        mark = doc.mark(path, key=err["type"] == "extra_forbidden")
        message = _message(err)
        _, messages = seen.setdefault(path, (mark, []))
        if message not in messages:
            messages.append(message)
    for path, (mark, messages) in seen.items():
        report.add(" or ".join(messages), path, mark)


def _without_extensions(data: dict[str, Any]) -> dict[str, Any]:
    """Compose's extension fields (`x-...` keys: a home for anchors) at the top level and in
    each service, network and volume are ignored."""

    def strip(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: v for k, v in d.items() if not k.startswith("x-")}

    out = strip(data)
    for section in ("services", "networks", "volumes"):
        if isinstance(out.get(section), dict):
            out[section] = {k: strip(v) for k, v in out[section].items()}
    return out


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


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "finite_number":
        return "must be a finite number"
    msg = str(err["msg"])  # pydantic's messages name the expected type, never the input
    return msg[:1].lower() + msg[1:]


# --------------------------------------------------------------------------- reading


class _TooLarge(Exception):
    pass


def _read_limited(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` (a FIFO or a device is refused, not read)."""
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(21, "not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _TooLarge
    return data


def _decode(raw: bytes | str, report: _Report) -> str:
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = raw[: exc.start]
            mark = Mark(before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1)
            report.add(f"the file is not UTF-8 text (byte {exc.start})", mark=mark)
            raise report.error() from None
    if len(text) > MAX_FILE_BYTES:
        report.add(f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
        raise report.error()
    return text.removeprefix("\ufeff")


def _replica_limit(given: int | None, env: Mapping[str, str], report: _Report) -> int:
    if given is not None:
        return given
    text = env.get(ENV_MAX_REPLICAS, "").strip()
    if not text:
        return DEFAULT_MAX_REPLICAS
    if not re.fullmatch(r"[0-9]{1,9}", text):
        report.add(f"${ENV_MAX_REPLICAS}: must be a whole number (the default is 1000)")
        raise report.error()
    return int(text)


class _DotEnv:
    """The `.env` beside the file: variables for `${VAR}`; the environment wins."""

    def __init__(self, path: Path, env: Mapping[str, str], report: _Report) -> None:
        self.path, self.env = path, env
        self.values: dict[str, str] = {}
        self.digest = "absent"
        try:
            content = _read_limited(path, MAX_ENV_FILE_BYTES)
        except FileNotFoundError:
            return
        except _TooLarge:
            report.add(f"larger than {MAX_ENV_FILE_BYTES // 1024} KiB", file=str(path))
            return
        except OSError as exc:
            report.add(f"cannot read: {exc.strerror}", file=str(path))
            return
        self.digest = hashlib.sha256(content).hexdigest()
        text = _decode_env(content, str(path), report)
        if text is None:
            return
        parsed = parse_env_file(text, env.get, env_first=True)
        for line, message in parsed.problems:
            report.add(message, mark=Mark(line, 0), file=str(path))
        self.values = parsed.values

    def lookup(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value is not None else self.values.get(name)


def _decode_env(content: bytes, name: str, report: _Report) -> str | None:
    try:
        text = content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        report.add("not UTF-8 text", mark=Mark(line, 0), file=name)
        return None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        report.add("a NUL character cannot be passed to Docker", mark=Mark(line, 0), file=name)
        return None
    return text


def _env_value(path: DataPath) -> bool:
    """services.NAME.environment.KEY (the map form): always text, as written."""
    return len(path) == 4 and path[0] == "services" and path[2] == "environment"


def _octal_mode(path: DataPath) -> bool:
    """services.NAME.volumes.I.tmpfs.mode: the text as written (`1777` and `0o1777` are the
    same octal mode; a YAML integer could not tell them apart)."""
    return (
        len(path) == 6
        and path[0] == "services"
        and path[2:3] == ("volumes",)
        and (path[4:] == ("tmpfs", "mode"))
    )


def _secret_text(path: DataPath, text: str) -> bool:
    """The scalar is itself a secret (DB_PASSWORD: ..., or - DB_PASSWORD=...)."""
    key = path[-1] if path and isinstance(path[-1], str) else text.partition("=")[0]
    return bool(SECRET_NAME.search(key))


class _Scalars:
    """Interpolates and types each scalar as `yamlread.read` meets it.

    `${VAR}` is substituted in strings (plain or quoted, never in keys); the result stays a
    string (the schema takes `"3"` for a count and `"true"` for a flag, as compose does).
    Environment values are kept as written (`012` stays "012"); other plain scalars get
    their YAML 1.2 core type.
    """

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        report: _Report,
        positions: Document | None = None,
    ) -> None:
        self.lookup, self.report, self.positions = lookup, report, positions
        self.failed: set[DataPath] = set()

    def __call__(self, path: DataPath, scalar: Scalar) -> Any:
        text = scalar.text
        mark = self.positions.mark(path) if self.positions else scalar.mark
        if "\0" in text:
            self.report.add("a NUL character (\\0) cannot be passed to Docker", path, mark)
            self.failed.add(path)
            return text.replace("\0", "")
        if scalar.tag == STR and "$" in text:
            try:
                result = interpolate(text, self.lookup, hide_names=_secret_text(path, text))
            except InterpolationError as exc:
                self.report.add(str(exc), path, mark)
                self.failed.add(path)
                return text
            if result.secret and result.value:
                self.report.secret_values.add(result.value)
            self.report.secret_values |= result.secret_values
            return result.value
        if _octal_mode(path) and scalar.tag == INT:
            return text
        if _env_value(path):
            if scalar.plain and scalar.tag == NULL:
                return None
            if scalar.plain and scalar.tag == BOOL:
                return text.lower()
            return text
        return core_value(scalar.tag, text)


_ABSENT = "not found"


class _EnvFiles:
    """Each service's env_file entries, read in order (a later file wins)."""

    def __init__(
        self,
        d: DesiredStateDef,
        base_dir: Path,
        lookup: Callable[[str], str | None],
        report: _Report,
        doc: Document,
    ) -> None:
        self.values: dict[str, dict[str, str]] = {}
        self.digests: dict[str, str] = {}
        self.base_dir = base_dir
        parsed: dict[Path, dict[str, str] | str] = {}  # the values, or why they cannot be read
        for name, svc in d.services.items():
            merged: dict[str, str] = {}
            entries = svc.env_file if isinstance(svc.env_file, list) else [svc.env_file]
            for i, entry in enumerate(entries):
                given, required = (
                    (entry, True) if isinstance(entry, str) else (entry.path, entry.required)
                )
                at: DataPath = ("services", name, "env_file")
                if isinstance(svc.env_file, list):
                    at = (*at, i)
                path = _resolve(base_dir, given)
                if path not in parsed:
                    parsed[path] = self._read(path, lookup, report)
                values = parsed[path]
                if isinstance(values, dict):
                    merged.update(values)
                elif values != _ABSENT or required:
                    report.add(f"env file {given!r} {values} ({path})", at, doc.mark(at))
            self.values[name] = merged

    def _read(
        self, path: Path, lookup: Callable[[str], str | None], report: _Report
    ) -> dict[str, str] | str:
        self.digests[str(path)] = "absent"  # watched: a file created later is noticed
        try:
            content = _read_limited(path, MAX_ENV_FILE_BYTES)
        except FileNotFoundError:
            return _ABSENT
        except _TooLarge:
            return f"is larger than {MAX_ENV_FILE_BYTES // 1024} KiB"
        except OSError as exc:
            return f"cannot be read: {exc.strerror}"
        self.digests[str(path)] = hashlib.sha256(content).hexdigest()
        text = _decode_env(content, str(path), report)
        if text is None:
            return {}
        # A file outside the desired state's folder may be any host file (/etc/shadow): its
        # problems name no variable (the policy judges the path only after this read).
        home = os.path.realpath(self.base_dir).rstrip("/") + "/"
        own = os.path.realpath(path).startswith(home)
        env = parse_env_file(text, lookup, env_first=False, names=own)
        for line, message in env.problems:
            report.add(message, mark=Mark(line, 0), file=str(path))
        return env.values


def _resolve(base_dir: Path, text: str) -> Path:
    p = Path(text)
    with contextlib.suppress(RuntimeError):  # ~user of no such user: left as written
        p = p.expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


# --------------------------------------------------------------------------- rules


def _project_from_folder(folder: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]", "", folder.name.lower()).lstrip("_-")
    return name or "default"


def _project(d: DesiredStateDef, base_dir: Path, report: _Report, doc: Document) -> str:
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
    project = _project_from_folder(base_dir)
    if len(project) > MAX_PROJECT_NAME:
        report.add(
            f"the folder's name gives a project name of {len(project)} characters (at most "
            f"{MAX_PROJECT_NAME}): set name: in the file"
        )
    return project


_JOIN_KEYS = ("network_mode", "pid", "ipc")  # `service:X` joins X's namespace (as compose)


def _joins(svc: ServiceDef) -> list[tuple[str, str]]:
    """(key, service) of each `service:X` namespace mode."""
    modes = ((key, getattr(svc, key) or "") for key in _JOIN_KEYS)
    return [(k, mode.removeprefix("service:")) for k, mode in modes if mode.startswith("service:")]


def _depends(svc: ServiceDef) -> list[str]:
    return list(dict.fromkeys([*svc.depends_on, *(owner for _, owner in _joins(svc))]))


def _check(d: DesiredStateDef, project: str, *, single_host: bool = True) -> Iterable[Issue]:
    """Cross-field rules pydantic cannot express on one field (`single_host`: also those of
    host ports, which Swarm's routing mesh shares between replicas)."""
    yield from _check_names(d, project)
    if single_host:
        yield from _check_host_ports(d)
    for name, svc in d.services.items():
        at: DataPath = ("services", name)
        if not svc.image and not svc.build:
            yield Issue(at, "needs image or build")
        replicas = svc.replica_count
        if (
            "replicas" in svc.model_fields_set
            and svc.deploy.replicas is not None
            and svc.deploy.replicas != svc.replicas
        ):
            yield Issue(
                (*at, "replicas"),
                f"{svc.replicas} conflicts with deploy.replicas: {svc.deploy.replicas}; "
                "give one of them",
            )
        yield from _check_pull_policy(svc, at)
        yield from _check_compose_keys(d, name, svc)
        if svc.container_name and replicas > 1:
            yield Issue((*at, "container_name"), "only allowed with replicas: 1 (names are unique)")
        for i, dep in enumerate(svc.depends_on):
            if dep not in d.services:
                where = (*at, "depends_on", i if isinstance(svc.depends_on, list) else dep)
                yield Issue((*at, "depends_on"), f"unknown service {dep!r}", where)
        for key, owner in _joins(svc):
            target = d.services.get(owner)
            if target is None:
                yield Issue((*at, key), f"unknown service {owner!r}")
            elif target.replica_count < 1 or target.state != "running":
                yield Issue((*at, key), f"service {owner!r} must run at least one replica")
        if svc.network_mode and svc.networks:
            yield Issue((*at, "network_mode"), "cannot be combined with networks")
        for i, net in enumerate(svc.networks):
            if net not in d.networks and net != "default":  # compose's, made if not declared
                where = (*at, "networks", i if isinstance(svc.networks, list) else net)
                yield Issue(
                    (*at, "networks"), f"network {net!r} is not declared under networks", where
                )
        yield from _check_secrets(d, name, svc)
        for i, port in enumerate(svc.ports):
            for message in _check_port(port_text(port), replicas if single_host else 1):
                yield Issue((*at, "ports", i), message)
        for key in ("update_config", "rollback_config"):
            for message in _check_start_first(getattr(svc.deploy, key), svc):
                yield Issue((*at, "deploy", key, "order"), message)
        for i, vol in enumerate(svc.volumes):
            mount = _mount(vol)
            if mount is None:
                yield Issue((*at, "volumes", i), "must be SOURCE:TARGET[:ro] or TARGET")
            elif mount.type == "bind" and not mount.source:
                yield Issue((*at, "volumes", i), "a bind mount needs a source")
            elif mount.type == "tmpfs" and mount.source:
                yield Issue((*at, "volumes", i, "source"), "a tmpfs mount takes no source")
            elif mount.type == "volume" and mount.source and mount.source not in d.volumes:
                yield Issue(
                    (*at, "volumes", i),
                    f"volume {mount.source!r} is not declared under volumes",
                )
        for key in ("command", "entrypoint"):
            value = getattr(svc, key)
            if isinstance(value, str):
                try:
                    shlex.split(value)
                except ValueError as exc:  # "No closing quotation"
                    yield Issue((*at, key), f"cannot split into words ({exc}); or give a list")
        for key in ("placement", "restart_policy", "labels"):
            if single_host and key in svc.deploy.model_fields_set:
                yield Issue(
                    (*at, "deploy", key),
                    "only with --target swarm (the single host does not implement it; "
                    "see `restart` and `heal` for restarts)",
                )
        if svc.heal.backoff_max < svc.heal.backoff_initial:
            yield Issue((*at, "heal", "backoff_max"), "must be >= backoff_initial")
    graph = {name: _depends(svc) for name, svc in d.services.items()}
    try:
        TopologicalSorter({k: [v for v in vs if v in graph] for k, vs in graph.items()}).prepare()
    except CycleError as exc:
        cycle = [str(n) for n in exc.args[1]]
        yield Issue(
            ("services",),
            f"depends_on has a cycle: {' -> '.join(cycle)}",
            ("services", cycle[0], "depends_on"),
        )


def _check_pull_policy(svc: ServiceDef, at: DataPath) -> Iterable[Issue]:
    if svc.pull_policy is None:
        return
    if "pull" in svc.model_fields_set:
        yield Issue((*at, "pull_policy"), "give pull_policy (compose's name) or pull, not both")
    policy = svc.pull_policy.strip()
    if policy == "build" and svc.build is None:
        yield Issue((*at, "pull_policy"), "build needs a build: section to build from")
    if parse_pull_policy(policy)[1] is not None and svc.build is not None:
        yield Issue(
            (*at, "pull_policy"),
            f"{policy} follows a tag in a registry; a service with build: has none to follow",
        )


def _check_compose_keys(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    """scale, resources, expose and depends_on conditions (compose's rules)."""
    at: DataPath = ("services", name)
    if svc.scale is not None:
        for other, value in (("replicas", svc.replicas), ("deploy.replicas", svc.deploy.replicas)):
            given = "replicas" in svc.model_fields_set if other == "replicas" else value is not None
            if given and value != svc.scale:
                yield Issue(
                    (*at, "scale"), f"{svc.scale} conflicts with {other}: {value}; give one of them"
                )
    limits = svc.deploy.resources.limits
    pairs = (
        ("cpus", svc.cpus, limits.cpus),
        ("mem_limit", svc.mem_limit, limits.memory),
        ("pids_limit", svc.pids_limit, limits.pids),
        ("mem_reservation", svc.mem_reservation, svc.deploy.resources.reservations.memory),
    )
    for key, short, long in pairs:
        if short is not None and long is not None and short != long:
            yield Issue(
                (*at, key),
                f"conflicts with deploy.resources ({long}); give one of them (as compose)",
            )
    exposed = 0
    for i, entry in enumerate(svc.expose):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/(tcp|udp|sctp))?", str(entry))
        low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
        if not m or not 1 <= low <= high <= MAX_PORT:
            yield Issue(
                (*at, "expose", i),
                f"must be PORT[/PROTO] or LOW-HIGH[/PROTO], ports 1..{MAX_PORT}",
            )
            continue
        exposed += high - low + 1
        if exposed > MAX_EXPOSED:
            yield Issue((*at, "expose", i), f"at most {MAX_EXPOSED} exposed ports per service")
            break
    for i, entry in enumerate(_words(svc.tmpfs)):
        if not entry.startswith("/"):
            where = (*at, "tmpfs") if isinstance(svc.tmpfs, str) else (*at, "tmpfs", i)
            yield Issue(where, "must be an absolute path in the container, [:OPTIONS]")
    for key, u in svc.ulimits.items():
        if not isinstance(u, int) and u.soft > u.hard:
            yield Issue((*at, "ulimits", key), "soft must be <= hard")
    if isinstance(svc.depends_on, dict):
        for dep, cond in svc.depends_on.items():
            target = d.services.get(dep)
            if (
                cond.condition == "service_healthy"
                and target is not None
                and (target.healthcheck is None or target.healthcheck.disable)
            ):
                yield Issue(
                    (*at, "depends_on", dep, "condition"),
                    f"service {dep!r} has no healthcheck to wait for; give it one or use "
                    "service_started",
                )


def _check_secrets(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    targets: set[str] = set()
    for i, ref in enumerate(svc.secrets):
        at: DataPath = ("services", name, "secrets", i)
        source, target = _secret_ref(ref)
        if source not in d.secrets:
            yield Issue(at, f"secret {source!r} is not declared under secrets")
        if target in targets:
            yield Issue(at, f"two secrets at {target}")
        targets.add(target)


def _secret_ref(ref: str | SecretRefDef) -> tuple[str, str]:
    """(secret name, path in the container): /run/secrets/NAME unless a target is given."""
    if isinstance(ref, str):
        return ref, f"{SECRETS_DIR}/{ref}"
    target = ref.target or ref.source
    return ref.source, target if target.startswith("/") else f"{SECRETS_DIR}/{target}"


def _check_names(d: DesiredStateDef, project: str) -> Iterable[Issue]:
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


def _overlap(a: str, b: str) -> bool:
    """Two host IPs that cannot both bind one port: equal, or one is a wildcard of the other's
    family ("" is every address of both families)."""
    if a == b or not a or not b:
        return True
    if (":" in a) != (":" in b):
        return False
    return a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _check_host_ports(d: DesiredStateDef) -> Iterable[Issue]:
    """No two replicas (of any services) on one host port, IP and protocol."""
    taken: dict[tuple[str, int], list[tuple[str, str, int, int]]] = {}
    for name, svc in d.services.items():
        for i, port in enumerate(svc.ports):
            m = _PORT.match(port_text(port))
            if not m or not m["host"]:
                continue
            first, _, last = m["host"].partition("-")
            low, high = int(first), int(last or first)
            if not 1 <= low <= high <= MAX_PORT:
                continue  # reported by _check_port
            ip, proto = (m["ip"] or "").strip("[]"), m["proto"] or "tcp"
            for replica in range(1, (svc.replica_count if last else 1) + 1):
                host_port = low + replica - 1
                if host_port > high or svc.replica_count < 1:
                    break  # too few ports: reported by _check_port
                holders = taken.setdefault((proto, host_port), [])
                clash = next((h for h in holders if _overlap(ip, h[0])), None)
                if clash is not None:
                    _, other, j, other_replica = clash
                    shown = f"{ip}:{host_port}" if ip else str(host_port)
                    yield Issue(
                        ("services", name, "ports", i),
                        f"host port {shown}/{proto} (replica {replica}) is also bound by "
                        f"service {other!r} (ports[{j}], replica {other_replica}); one "
                        "host port can serve one container",
                    )
                    break
                holders.append((ip, name, i, replica))


def _check_start_first(cfg: UpdateConfigDef, svc: ServiceDef) -> Iterable[str]:
    """start-first runs the old and the new replica side by side: refuse what they cannot share."""
    if cfg.order != "start-first":
        return
    why = "the old and new replica would run side by side"
    if svc.container_name:
        yield (
            f"start-first cannot be used with container_name "
            f"{svc.container_name!r}: {why} and a container name is unique; use stop-first"
        )
    for i, port in enumerate(svc.ports):
        m = _PORT.match(port_text(port))
        if m and m["host"]:
            yield (
                f"start-first cannot be used with a host port (ports[{i}] "
                f"{port_text(port)!r}): {why} and only one can bind it; use stop-first"
            )
            break
    mode = svc.network_mode or ""
    if mode == "host" or mode.startswith(("service:", "container:")):
        yield (
            f"start-first cannot be used with network_mode {mode}: {why} in one "
            "network namespace and only one can listen on its ports; use stop-first"
        )


def _check_port(text: str, replicas: int) -> Iterable[str]:
    m = _PORT.match(text)
    if not m:
        yield f"cannot parse port {text!r} (expected [IP:]HOST:CONTAINER[/PROTO])"
        return
    container = int(m["container"])
    if not 1 <= container <= MAX_PORT:
        yield f"container port {container} is out of range 1..{MAX_PORT}"
    host = m["host"]
    if host is None:
        return
    first, _, last = host.partition("-")
    out = [p for p in (first, last) if p and not 1 <= int(p) <= MAX_PORT]
    if out:
        yield f"host port {int(out[0])} is out of range 1..{MAX_PORT}"
        return
    size = int(last) - int(first) + 1 if last else 1
    if size < 1:
        yield f"host port range {host} must be ascending (LOW-HIGH)"
    elif last and size < replicas:
        yield f"host port range {host} has {size} ports for {replicas} replicas"
    elif not last and replicas > 1:
        yield f"fixed host port {host} cannot serve {replicas} replicas; use a range"


@dataclass(frozen=True, slots=True)
class _Mount:
    type: str
    source: str
    target: str
    read_only: bool


def _mount(vol: str | VolumeMountDef) -> _Mount | None:
    if isinstance(vol, VolumeMountDef):
        return _Mount(vol.type, vol.source or "", vol.target, vol.read_only)
    parts = vol.split(":")
    if len(parts) == 1:
        return _Mount("volume", "", parts[0], False)  # anonymous volume
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        return None
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return _Mount(kind, source, target, len(parts) == 3 and parts[2] == "ro")


# --------------------------------------------------------------------------- render


def tree_digest(path: Path) -> str:
    """sha256 over a file's bytes, or over every file (name and bytes) under a folder."""
    if not path.is_dir():
        return hashlib.sha256(tree.read_file(path)).hexdigest()
    h = hashlib.sha256()
    for item, data in tree.read_tree(path):
        h.update(str(item.relative_to(path)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class _Configs:
    binds: tuple[str, ...]
    digests: tuple[tuple[str, str], ...]  # configs whose change recreates
    reload_digest: str  # configs whose change is applied by reload_signal
    reload_signal: str | None


class _Renderer:
    """Turns a checked definition into per-replica container specs."""

    def __init__(
        self,
        d: DesiredStateDef,
        project: str,
        base_dir: Path,
        env_files: Mapping[str, Mapping[str, str]],
        lookup: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.d, self.project, self.base_dir = d, project, base_dir
        self.env_files = env_files  # service -> what its env_file entries set
        self.lookup = lookup  # a bare environment name: the environment, then .env
        self.unset: dict[DataPath, str] = {}  # bare names neither sets: left out
        self.problems: list[Issue] = []
        self.config_digests: dict[str, str] = {}
        self.secret_values: set[str] = set()
        self.default_network = self.network_name("default")

    def render(self) -> DesiredState:
        order = TopologicalSorter({n: _depends(s) for n, s in self.d.services.items()})
        services = tuple(
            self._service(name, self.d.services[name]) for name in order.static_order()
        )
        networks = [self._network(name, n) for name, n in self.d.networks.items()]
        if (
            any(
                (not s.networks and not s.network_mode) or "default" in s.networks
                for s in self.d.services.values()
            )
            and "default" not in self.d.networks
            and self.default_network not in self.d.networks
        ):
            networks.append(NetworkSpec(name=self.default_network))
        volumes: list[VolumeSpec] = []
        templates: list[str] = []
        for name, vdef in self.d.volumes.items():
            driver = vdef.driver if vdef else "local"
            labels = tuple(sorted((vdef.labels if vdef else {}).items()))
            opts = tuple(
                sorted((k, _scalar(v)) for k, v in (vdef.driver_opts if vdef else {}).items())
            )
            external = bool(vdef and vdef.external)
            docker_name = self.volume_name(name)
            if REPLICA_PLACEHOLDER in name:
                templates.append(docker_name)
                used = {
                    c.replica
                    for s in services
                    for c in s.replicas
                    if name in self._templates_of(s.name)
                }
                volumes.extend(
                    VolumeSpec(
                        docker_name.replace(REPLICA_PLACEHOLDER, str(i)),
                        driver,
                        labels,
                        opts,
                        external,
                    )
                    for i in sorted(used)
                )
            else:
                volumes.append(VolumeSpec(docker_name, driver, labels, opts, external))
        return DesiredState(
            project=self.project,
            networks=tuple(networks),
            volumes=tuple(volumes),
            services=services,
            volume_templates=tuple(templates),
        )

    def _templates_of(self, service: str) -> set[str]:
        mounts = (_mount(v) for v in self.d.services[service].volumes)
        return {
            m.source for m in mounts if m and m.type == "volume" and REPLICA_PLACEHOLDER in m.source
        }

    def network_name(self, key: str) -> str:
        """The Docker name of a network of the file: its name:, else its key (`default` is
        compose's default network, `<project>_default`)."""
        n = self.d.networks.get(key)
        if n is not None and n.name:
            return n.name
        return f"{self.project}_default" if key == "default" else key

    def volume_name(self, key: str) -> str:
        """The Docker name of a volume of the file: its name:, else its key."""
        v = self.d.volumes.get(key)
        return v.name if v is not None and v.name else key

    def _network(self, name: str, n: Any) -> NetworkSpec:
        if n is None:
            return NetworkSpec(name=self.network_name(name))
        ipam = tuple((c.subnet, c.gateway or "") for c in n.ipam.config) if n.ipam else ()
        labels = tuple(sorted(n.labels.items()))
        return NetworkSpec(self.network_name(name), n.driver, n.internal, labels, ipam, n.external)

    def _service(self, name: str, s: ServiceDef) -> ServiceSpec:
        build = None
        if s.build is not None:
            ctx, dockerfile = (
                (s.build, "Dockerfile")
                if isinstance(s.build, str)
                else (
                    s.build.context,
                    s.build.dockerfile,
                )
            )
            build = BuildSpec(str(self._path(ctx)), dockerfile)
        image = s.image or f"{self.project}-{name}"
        configs = self._configs(name, s)
        mounts = self._secrets(name, s)
        options = _options(s)  # once: the same for every replica
        replicas = tuple(
            self._container(name, s, image, i, configs, options, mounts)
            for i in range(1, s.replica_count + 1)
        )
        heal = HealPolicy(
            s.heal.min_uptime, s.heal.backoff_initial, s.heal.backoff_max, s.heal.unhealthy_grace
        )
        pull, every = parse_pull_policy(s.pull_policy) if s.pull_policy else (s.pull, None)
        return ServiceSpec(
            name=name,
            image=image,
            replicas=replicas,
            pull=pull,
            pull_every_s=every,
            build=build,
            depends_on=tuple(_depends(s)),
            conditions=tuple(
                (dep, c.condition)
                for dep, c in (s.depends_on.items() if isinstance(s.depends_on, dict) else ())
                if c.condition != "service_started"
            ),
            job=any(
                isinstance(o.depends_on, dict)
                and o.depends_on.get(name) is not None
                and o.depends_on[name].condition == "service_completed_successfully"
                for o in self.d.services.values()
            ),
            state=s.state,
            heal=heal,
            update=_update_config(s.deploy.update_config),
            rollback=_update_config(s.deploy.rollback_config),
            drain_s=s.drain_period,
            stop_grace_s=s.stop_grace_period,
            revision=self._revision(name, s, configs, mounts),
        )

    def _environment(self, name: str, s: ServiceDef) -> tuple[str, ...]:
        """The service's environment (see `_environment`); bare names left out are noted."""
        entries, unset, hidden = _environment(
            s.environment, self.env_files.get(name, {}), self.lookup
        )
        self.secret_values |= hidden
        for at, key in unset:
            self.unset[("services", name, *at)] = key
        return entries

    def _secrets(self, name: str, s: ServiceDef) -> tuple[SecretMount, ...]:
        """Each secret as a read-only bind of its file; the content only as a digest."""
        out = []
        for i, ref in enumerate(s.secrets):
            source, target = _secret_ref(ref)
            path = self._path(self.d.secrets[source].file)
            try:
                content = _read_limited(path, MAX_SECRET_BYTES)
            except _TooLarge:
                message = f"secret file {path} is larger than {MAX_SECRET_BYTES // 1024} KiB"
                self.problems.append(Issue(("services", name, "secrets", i), message))
                continue
            except OSError as exc:
                message = f"cannot read secret file {path}: {exc.strerror}"
                self.problems.append(Issue(("services", name, "secrets", i), message))
                continue
            digest = hashlib.sha256(b"reconciler-secret\0" + content).hexdigest()
            self.config_digests[str(path)] = digest  # watched: a change is a reload
            with contextlib.suppress(UnicodeDecodeError):
                self.secret_values.add(content.decode().strip())  # never printed
            out.append(SecretMount(source, str(path), target, digest))
        return tuple(out)

    def _revision(
        self, name: str, s: ServiceDef, configs: _Configs, mounts: tuple[SecretMount, ...] = ()
    ) -> str:
        """sha256 of what the file asks of the service's containers, whatever their count.

        Replica count, deploy, heal, drain, state, pull and depends_on are left out (they
        change no container); equivalent spellings (environment as map or list, relative
        paths) are normalised; the content of the config files it mounts is included,
        except those applied by reload_signal (as for the spec hash).
        """
        added = {k for k in _ADDED_KEYS if k not in s.model_fields_set}
        body = s.model_dump(mode="json", exclude=_NOT_IN_REVISION | added)
        body["environment"] = list(self._environment(name, s))
        body.pop("env_file", None)  # its content is in environment
        body["labels"] = _labels(s.labels)
        body["command"], body["entrypoint"] = _argv(s.command), _argv(s.entrypoint)
        body["ports"] = [port_text(p) for p in s.ports]
        for key, default in _OPTION_DEFAULTS.items():  # unset: the revision files had before
            if body.get(key) == default:
                body.pop(key, None)
        body["extra_hosts"] = list(_extra_hosts(s.extra_hosts))
        renamed = {k: self.network_name(k) for k in s.networks if self.network_name(k) != k}
        if renamed:  # a network's name: changes what the containers join
            body["network_names"] = renamed
        if s.deploy.resources != ResourcesDef():  # deploy is left out, its resources are not
            body["resources"] = s.deploy.resources.model_dump(mode="json")
        if body.get("healthcheck") and body["healthcheck"].get("start_interval") is None:
            body["healthcheck"].pop("start_interval", None)
        body["volumes"] = [self._mount_text(_mount(v)) for v in s.volumes]
        body["configs"] = [
            {"source": str(self._path(c.source)), "target": c.target} for c in s.configs
        ]
        if s.build is not None:
            build = body["build"]
            ctx = build if isinstance(build, str) else build["context"]
            dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
            body["build"] = {"context": str(self._path(ctx)), "dockerfile": dockerfile}
        payload = {
            "project": self.project,
            "service": name,
            "definition": body,
            "config_digests": [list(d) for d in configs.digests],
        }
        if mounts:  # a content change is a new revision (the digest, never the value)
            payload["secret_digests"] = [[m.target, m.digest] for m in mounts]
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _mount_text(self, m: _Mount | None, named: bool = False) -> str:
        """SOURCE:TARGET[:ro] for Docker (`named`: the volume source is its Docker name)."""
        assert m is not None  # checked
        if m.type == "tmpfs":
            return f"tmpfs:{m.target}{':ro' if m.read_only else ''}"
        if m.type == "bind":
            source = str(self._path(m.source))
        else:
            source = m.source if named else self.volume_name(m.source)
        return f"{source}:{m.target}{':ro' if m.read_only else ''}" if source else m.target

    def _configs(self, name: str, s: ServiceDef) -> _Configs:
        binds: list[str] = []
        hashed: list[tuple[str, str]] = []
        signalled: list[str] = []
        signal = None
        for i, c in enumerate(s.configs):
            path = self._path(c.source)
            try:
                digest = tree_digest(path)
                self.config_digests[str(path)] = digest
            except tree.TreeError as exc:
                self.problems.append(Issue(("services", name, "configs", i, "source"), str(exc)))
                continue
            except OSError as exc:
                self.problems.append(
                    Issue(
                        ("services", name, "configs", i, "source"),
                        f"cannot read {path}: {exc.strerror}",
                    )
                )
                continue
            binds.append(f"{path}:{c.target}:ro")
            if c.reload_signal:
                signal = signal or c.reload_signal
                signalled.append(f"{c.target}={digest}")
            else:
                hashed.append((c.target, digest))
        reload_digest = (
            hashlib.sha256("\n".join(signalled).encode()).hexdigest() if signalled else ""
        )
        return _Configs(tuple(binds), tuple(hashed), reload_digest, signal)

    def _path(self, text: str) -> Path:
        return _resolve(self.base_dir, text)

    def _container(
        self,
        name: str,
        s: ServiceDef,
        image: str,
        replica: int,
        configs: _Configs,
        options: RuntimeOptions,
        mounts: tuple[SecretMount, ...] = (),
    ) -> ContainerSpec:
        binds, volumes = list(configs.binds), []
        for vol in s.volumes:
            m = _mount(vol)
            assert m is not None  # checked
            if m.type == "tmpfs":
                continue  # RuntimeOptions.tmpfs
            if m.type == "volume" and m.source:
                source = self.volume_name(m.source).replace(REPLICA_PLACEHOLDER, str(replica))
                volumes.append(source)
                m = _Mount(m.type, source, m.target, m.read_only)
            binds.append(self._mount_text(m, named=True))
        nets = s.networks
        attachments: list[NetworkAttachment] = []
        if not s.network_mode:
            if not nets:
                attachments.append(NetworkAttachment(self.default_network, (name,)))
            for net in nets:
                attach = nets.get(net) if isinstance(nets, dict) else None
                extra = attach.aliases if attach else []
                attachments.append(
                    NetworkAttachment(self.network_name(net), tuple(dict.fromkeys([name, *extra])))
                )
        modes = {"network_mode": s.network_mode, "pid": s.pid, "ipc": s.ipc}
        for key, target in _joins(s):  # as compose: X's first replica
            t = self.d.services[target]
            modes[key] = f"container:{t.container_name or f'{self.project}-{target}-1'}"
        hc = None
        if s.healthcheck and not s.healthcheck.disable:
            test = s.healthcheck.test
            test_t = ("CMD-SHELL", test) if isinstance(test, str) else tuple(test)
            hc = Healthcheck(
                test_t,
                s.healthcheck.interval,
                s.healthcheck.timeout,
                s.healthcheck.retries,
                s.healthcheck.start_period,
            )
        elif s.healthcheck and s.healthcheck.disable:
            hc = Healthcheck(("NONE",))
        return ContainerSpec(
            name=s.container_name or f"{self.project}-{name}-{replica}",
            project=self.project,
            service=name,
            replica=replica,
            image=image,
            command=_argv(s.command),
            entrypoint=_argv(s.entrypoint),
            environment=self._environment(name, s),
            ports=tuple(_port(port_text(p), replica) for p in s.ports),
            binds=tuple(binds),
            volumes=tuple(volumes),
            networks=tuple(attachments),
            user=str(s.user) if s.user is not None else None,
            restart=s.restart,
            healthcheck=hc,
            labels=tuple(sorted(_labels(s.labels).items())),
            working_dir=s.working_dir,
            hostname=s.hostname,
            extra_hosts=_extra_hosts(s.extra_hosts),
            cap_add=tuple(s.cap_add),
            cap_drop=tuple(s.cap_drop),
            read_only=s.read_only,
            stop_signal=s.stop_signal,
            stop_grace_s=s.stop_grace_period,  # fractional seconds kept: 400ms is 0.4
            init=s.init,
            network_mode=modes["network_mode"],
            pid=modes["pid"],
            privileged=s.privileged,
            devices=tuple(s.devices),
            ipc=modes["ipc"],
            uts=s.uts,
            userns_mode=s.userns_mode,
            security_opt=tuple(s.security_opt),
            secrets=mounts,
            config_digests=configs.digests,
            options=options,
            reload_digest=configs.reload_digest,
            reload_signal=configs.reload_signal,
        )


def _update_config(c: UpdateConfigDef) -> UpdateConfig:
    return UpdateConfig(
        parallelism=c.parallelism,
        delay_s=c.delay,
        order=c.order,
        monitor_s=c.monitor,
        failure_action=c.failure_action,
        max_failure_ratio=c.max_failure_ratio,
    )


def _argv(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _environment(
    env: Mapping[str, Any] | list[str],
    files: Mapping[str, str] | None = None,
    lookup: Callable[[str], str | None] = lambda _: None,
) -> tuple[tuple[str, ...], list[tuple[DataPath, str]], set[str]]:
    """KEY=VALUE entries, sorted: env_file's, then environment's over them (as compose).

    A bare KEY (`- KEY`, or `KEY:` with no value) takes its value from `lookup` (the
    environment, then .env) and is left out when neither sets it, as compose does. Also
    returns those left out (path under the service, name) and what secret-looking bare names
    gave.
    """
    merged = {k: f"{k}={v}" for k, v in (files or {}).items()}
    items: list[tuple[DataPath, str, str | None]] = []
    if isinstance(env, list):
        for i, item in enumerate(env):
            key, eq, text = item.partition("=")
            items.append((("environment", i), key, text if eq else None))
    else:
        items = [(("environment", k), k, None if v is None else _scalar(v)) for k, v in env.items()]
    unset: list[tuple[DataPath, str]] = []
    hidden: set[str] = set()
    for at, key, given in items:
        value = lookup(key) if given is None else given
        if value is None:
            merged.pop(key, None)
            unset.append((at, key))
            continue
        if given is None and value and SECRET_NAME.search(key):
            hidden.add(value)
        merged[key] = f"{key}={value}"
    return tuple(sorted(merged.values())), unset, hidden


def _labels(labels: Mapping[str, Any] | list[str]) -> dict[str, str]:
    """Label values as text: `3` is "3", `true` "true", empty "" (as compose)."""
    if isinstance(labels, list):
        return dict(item.partition("=")[::2] for item in labels)
    return {k: _scalar(v) for k, v in labels.items()}


def port_text(port: str | int | PortDef) -> str:
    """A port entry in the short syntax (the long one converted)."""
    return port.text() if isinstance(port, PortDef) else str(port)


def _extra_hosts(hosts: list[str] | Mapping[str, str | list[str]]) -> tuple[str, ...]:
    """HOST:IP entries; the map form (`host: ip` or a list of IPs) as compose writes it."""
    if isinstance(hosts, list):
        return tuple(hosts)
    out: list[str] = []
    for host, ips in hosts.items():
        out += [f"{host}:{ip}" for ip in ([ips] if isinstance(ips, str) else ips)]
    return tuple(out)


def _words(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _expose(entry: str | int) -> tuple[str, ...]:
    """`80`, `80/udp`, `8000-8002` -> ("80/tcp",) ... (checked by _check_expose)."""
    text, _, proto = str(entry).partition("/")
    low, _, high = text.partition("-")
    return tuple(f"{p}/{proto or 'tcp'}" for p in range(int(low), int(high or low) + 1))


def _options(s: ServiceDef) -> RuntimeOptions:
    """The compose keys that become HostConfig/Config fields (RuntimeOptions)."""
    limits, reservations = s.deploy.resources.limits, s.deploy.resources.reservations
    log = s.logging
    tmpfs = []
    for entry in _words(s.tmpfs):
        path, _, opts = entry.partition(":")
        tmpfs.append((path, opts))
    for vol in s.volumes:  # long syntax, type: tmpfs
        if isinstance(vol, VolumeMountDef) and vol.type == "tmpfs":
            t = vol.tmpfs
            opts_list = ["ro"] if vol.read_only else []
            if t is not None and t.size is not None:
                opts_list.append(f"size={t.size}")
            if t is not None and t.mode is not None:
                opts_list.append(f"mode={t.mode:o}")  # Docker reads it in octal
            tmpfs.append((vol.target, ",".join(opts_list)))
    ulimits = []
    for name, value in sorted(s.ulimits.items()):
        soft, hard = (value, value) if isinstance(value, int) else (value.soft, value.hard)
        ulimits.append((name, soft, hard))
    sysctls = (
        dict(item.partition("=")[::2] for item in s.sysctls)
        if isinstance(s.sysctls, list)
        else {k: _scalar(v) for k, v in s.sysctls.items()}
    )
    start_interval = s.healthcheck.start_interval if s.healthcheck else None
    return RuntimeOptions(
        expose=tuple(dict.fromkeys(p for e in s.expose for p in _expose(e))),
        cpus=s.cpus if s.cpus is not None else limits.cpus,
        mem_limit=s.mem_limit if s.mem_limit is not None else limits.memory,
        mem_reservation=(
            s.mem_reservation if s.mem_reservation is not None else reservations.memory
        ),
        pids_limit=s.pids_limit if s.pids_limit is not None else limits.pids,
        shm_size=s.shm_size,
        log_driver=log.driver if log else None,
        log_options=tuple(sorted((k, _scalar(v)) for k, v in (log.options if log else {}).items())),
        tmpfs=tuple(tmpfs),
        ulimits=tuple(ulimits),
        sysctls=tuple(sorted(sysctls.items())),
        stdin_open=s.stdin_open,
        tty=s.tty,
        dns=_words(s.dns),
        dns_search=_words(s.dns_search),
        group_add=tuple(str(g) for g in s.group_add),
        health_start_interval_s=start_interval,
    )


# The RuntimeOptions keys of ServiceDef at their defaults (left out of the revision).
_OPTION_DEFAULTS: dict[str, Any] = {
    "scale": None,
    "expose": [],
    "cpus": None,
    "mem_limit": None,
    "mem_reservation": None,
    "pids_limit": None,
    "shm_size": None,
    "logging": None,
    "tmpfs": [],
    "ulimits": {},
    "sysctls": {},
    "stdin_open": False,
    "tty": False,
    "dns": [],
    "dns_search": [],
    "group_add": [],
}


def _port(text: str, replica: int) -> PortBinding:
    m = _PORT.match(text)
    assert m is not None  # checked
    host_port = None
    if m["host"]:
        host_port = int(m["host"].partition("-")[0]) + (replica - 1 if "-" in m["host"] else 0)
    ip = (m["ip"] or "").strip("[]")
    return PortBinding(int(m["container"]), m["proto"] or "tcp", ip, host_port)
