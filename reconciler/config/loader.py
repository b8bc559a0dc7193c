"""Read desired_state.yaml into a validated, rendered `DesiredState`: the entry points.

The only module that reads the file. YAML is read by `yamlread` (ruamel.yaml, YAML 1.2 core
schema, duplicate keys refused, aliases counted); `${VAR}` is substituted with compose's
rules from the environment and the `.env` beside the file; env_file contents join the
environment (`inputs`). The schema, then the rules (`rules`, `names`) judge the definition;
`render` turns it into the `DesiredState`. Every problem is reported as
`file:line:column: path: what is wrong`, all at once, as a `DesiredStateError` (`report`);
no message quotes what a secret-looking variable gave.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import structlog
from pydantic import ValidationError

from reconciler.config import (
    compose_configs,
    compose_sources,
    dependencies,
    dialect,
    profiles,
    secrets,
)
from reconciler.config.access import with_access
from reconciler.config.forms import port_text
from reconciler.config.inputs import (
    MAX_FILE_BYTES,
    DotEnv,
    EnvFiles,
    Scalars,
    TooLarge,
    decode,
    read_limited,
    replica_limit,
    without_extensions,
)
from reconciler.config.render import REPLICA_PLACEHOLDER, Renderer
from reconciler.config.report import Checks, Issue, Report, dotted, pydantic_problems
from reconciler.config.rules import check
from reconciler.config.schema import DesiredStateDef
from reconciler.config.snapshot_keys import snapshot_policies, with_snapshots
from reconciler.config.tree import tree_digest
from reconciler.config.update_policy import update_policies
from reconciler.config.yamlread import Document, YamlError, compose, read
from reconciler.core.desired import DesiredState
from reconciler.errors import DesiredStateError

__all__ = [
    "MAX_FILE_BYTES",
    "REPLICA_PLACEHOLDER",
    "Checks",
    "DesiredState",
    "Issue",
    "Parsed",
    "dotted",
    "load",
    "load_parts",
    "parse",
    "parse_parts",
    "port_text",
    "tree_digest",
]

log = structlog.get_logger("reconciler")


class Parsed(NamedTuple):
    """A parse with what made it: for a target that renders the definition its own way."""

    state: DesiredState
    definition: DesiredStateDef
    doc: Document
    renderer: Renderer
    report: Report
    base_dir: Path


def load(path: str | Path) -> DesiredState:
    """Read, validate and render a desired-state file; raise DesiredStateError if bad."""
    return load_parts(path).state


def load_parts(path: str | Path, checks: Checks | None = None) -> Parsed:
    """`load`, keeping what a target other than the single host renders from (`checks`:
    that target's own rules, reported with the others). A `compose_sources.Files` path
    (`-f`, COMPOSE_FILE) is several files merged; a compose.yaml takes its override file."""
    path = path if isinstance(path, Path) else Path(path)
    files, absent = compose_sources.file_set(path)
    raw = _read_file(files[0])
    return parse_parts(
        raw,
        source=str(files[0]),
        base_dir=files[0].resolve().parent,
        checks=checks,
        files=files,
        absent=absent,
    )


def _read_file(path: Path) -> bytes:
    source = str(path)
    try:
        return read_limited(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise DesiredStateError(source, ["file not found"]) from None
    except TooLarge:
        raise DesiredStateError(
            source, [f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB"]
        ) from None
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from exc


def _reader(
    lookup: Callable[[str], str | None], report: Report, digests: dict[str, str]
) -> compose_sources.Reader:
    """How the merge reads each file: as the first, its problems raised at once."""

    def read_one(path: Path, env_files: tuple[Path, ...]) -> Document:
        raw = _read_file(path)
        digests[str(path)] = hashlib.sha256(raw).hexdigest()
        own = Report(str(path))
        text = decode(raw, own)
        try:
            node = compose(text)
            scalars = Scalars(included_lookup(lookup, env_files, own, digests), own)
            doc = read(node, scalars) if node is not None else Document({})
        except YamlError as exc:
            own.add(exc.message, mark=exc.mark)
            raise own.error() from None
        for at, mark, message in doc.problems:
            own.add(message, at, mark)
        if own:
            raise own.error()
        report.secret_values |= own.secret_values
        return doc

    return read_one


def included_lookup(
    lookup: Callable[[str], str | None],
    env_files: tuple[Path, ...],
    report: Report,
    digests: dict[str, str],
) -> Callable[[str], str | None]:
    """`lookup`, then the env files an `include` gives its files (compose: the project's
    environment wins, an included project's .env fills the rest); each is an input."""
    if not env_files:
        return lookup
    found = [DotEnv(p, {}, report) for p in env_files]
    for env in found:
        digests[str(env.path)] = env.digest

    def chained(name: str) -> str | None:
        value = lookup(name)
        for env in found:
            if value is not None:
                break
            value = env.values.get(name)
        return value

    return chained


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
    files: Sequence[Path] = (),
    absent: Sequence[Path] = (),
    provisional: bool = False,
) -> Parsed:
    """`parse`, returning the definition, document and renderer too (see `load_parts`).

    `files`: the files `raw` is the first of, merged with compose's rules (extends and
    include too); `absent`: files whose creation is a change (watched). `provisional`
    (`reconciler import`): an env_file that is not there yet is no error."""
    env = os.environ if environ is None else environ
    report = Report(source)
    limit = replica_limit(max_replicas, env, report)
    text = decode(raw, report)
    try:
        node = compose(text)
    except YamlError as exc:
        report.add(exc.message, mark=exc.mark)
        raise report.error() from None
    if node is None:
        raise DesiredStateError(
            source, ["the file is empty; refusing it (it would remove every container)"]
        )
    dotenv = DotEnv(base_dir / ".env", env, report)
    scalars = Scalars(dotenv.lookup, report, positions)
    try:
        doc = read(node, scalars)
    except YamlError as exc:
        report.add(exc.message, mark=exc.mark)
        raise report.error() from None
    if positions is not None:
        doc.marks, doc.key_marks = positions.marks, positions.key_marks
    for path, mark, message in doc.problems:
        report.add(message, path, positions.mark(path) if positions else mark)
    merged_digests: dict[str, str] = {str(p): "absent" for p in absent}
    if files and (len(files) > 1 or compose_sources.needs_merge(doc)):
        if report:
            raise report.error()
        read_one = _reader(dotenv.lookup, report, merged_digests)
        doc = compose_sources.merge_files(files, read_one).doc
    data = doc.data
    if data is None:
        raise DesiredStateError(
            source, ["the file is empty; refusing it (it would remove every container)"]
        )
    if not isinstance(data, dict):
        kind = type(data).__name__
        report.add(f"(top level): must be a mapping, not {kind}", mark=doc.mark(()))
        raise report.error()
    snapshots = snapshot_policies(data, report, doc, host=checks is None)  # x-reconciler
    policies = update_policies(data, doc, report)  # x-reconciler.update, before the strip
    data = without_extensions(data)
    native = dialect.is_native(data)  # else a compose file: compose's names (`dialect`)
    if not native:
        data = dialect.without_compose_version(data, source, doc, warn or log.warning)
    data = compose_configs.as_mounts(data, doc, report)  # compose's configs: mounted files
    definition = None
    try:
        definition = DesiredStateDef.model_validate(data, context={"max_replicas": limit})
    except ValidationError as exc:
        pydantic_problems(exc, doc, report, skip=scalars.failed)
    if report or definition is None:
        raise report.error()
    if not definition.services:
        report.add(
            "no services; refusing it (it would remove every container)",
            ("services",),
            doc.mark(("services",)),
        )
        raise report.error()
    selection = profiles.select(definition, profiles.selected(dotenv.lookup))
    for issue in selection.issues:
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    if report:
        raise report.error()
    definition = selection.definition  # the services of the selected profiles
    definition, notes = dependencies.settled(definition)  # depends_on's required, restart
    for at, message in notes:
        (warn or log.warning)(f"{source}:{doc.mark(at, key=True) or '?'}: {dotted(at)}: {message}")
    for name in selection.unknown:
        (warn or log.warning)(f"{source}: profile {name} is selected but no service has it")
    project = dialect.project_of(
        definition, base_dir, report, doc, native=native, lookup=dotenv.lookup
    )
    for issue in check(definition, project, single_host=checks is None):
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    for issue in checks(definition, project) if checks else ():
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    env_files = EnvFiles(definition, base_dir, dotenv.lookup, report, doc, provisional)
    if report:
        raise report.error()
    renderer = Renderer(
        definition, project, base_dir, env_files.values, dotenv.lookup, native=native
    )
    state = renderer.render()
    for at, name in renderer.unset.items():
        where = f"{source}:{doc.mark(at, key=True) or '?'}: {dotted(at)}"
        left = (
            "the build's args (the Dockerfile's default applies"
            if at[2:3] == ("build",)
            else "the container's environment (as compose does"
        )
        (warn or log.warning)(
            f"{where}: {name} is set neither in the environment nor in .env: left out of {left})"
        )
    for issue in renderer.problems:
        report.add(issue.message, issue.path, doc.mark(issue.at or issue.path))
    if report:
        raise report.error()
    inputs = {
        **merged_digests,  # the other compose files of the merge: a change is a reload
        **renderer.config_digests,
        **env_files.digests,
        str(dotenv.path): dotenv.digest,
    }
    h = hashlib.sha256(text.encode())
    for file, file_digest in sorted(inputs.items()):
        h.update(f"\0{file}={file_digest}".encode())
    digest = h.hexdigest()  # the file, every config it mounts, .env and every env_file
    # What secret-looking variables gave: never printed (environment values never are).
    secrets.mark(report.secret_values | renderer.secret_values)
    state = DesiredState(
        project=state.project,
        networks=state.networks,
        volumes=state.volumes,
        services=tuple(
            replace(
                with_snapshots(with_access(svc, definition, base_dir, doc), snapshots),
                update_policy=policies.get(svc.name),
            )
            for svc in state.services
        ),
        source=source,
        digest=digest,
        volume_templates=state.volume_templates,
        watched=tuple(sorted(inputs)),
        secrets=frozenset(report.secret_values | renderer.secret_values),
        dormant=selection.dormant,
    )
    return Parsed(state, definition, doc, renderer, report, base_dir)
