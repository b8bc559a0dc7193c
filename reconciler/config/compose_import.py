"""`reconciler import`: a compose file (version 2, 3.x or none) into a desired-state file.

ruamel.yaml round-trip keeps comments, order, anchors and quoting. Names come out as compose
gives them (volumes and networks `<project>_<name>` unless `name:`/`external:` say
otherwise), so the imported file adopts a compose deployment's volumes with their data.
Relative paths are rewritten for the output's folder. What the desired-state schema cannot
carry is listed with its line; the caller refuses the import unless told to drop it.
"""

from __future__ import annotations

import io
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from reconciler.config import compose_sources, compose_tree, loader
from reconciler.config.dialect import PROJECT_ENV
from reconciler.config.interpolation import parse_env_file
from reconciler.config.names import project_from_folder
from reconciler.config.schema import BUILD_SECRETS_REASON, DesiredStateDef
from reconciler.config.yamlread import Document, Mark
from reconciler.errors import DesiredStateError

# Why a compose key has no place in a desired-state file (the README's table says the same).
REASONS: dict[str, str] = {
    "external_links": "legacy: join the other container's network instead",
    "volumes_from": "name the volumes themselves",
    "placement": "Swarm scheduling: one engine has nothing to place",
    "mode": "Swarm (global/replicated): use replicas",
    "restart_policy": "Swarm's: use the service's restart",
    "endpoint_mode": "Swarm's",
    "ipv6_address": "a fixed IPv6 address is not supported (ipv4_address is)",
    "content": "configs come from files only",
    "build.secrets": BUILD_SECRETS_REASON,  # in the schema, refused by the rules
}
# service keys holding a list or mapping: written empty (null), compose reads them as empty
_LISTS = frozenset(
    {"environment", "labels", "ports", "volumes", "networks", "depends_on", "env_file",
     "extra_hosts", "dns", "cap_add", "cap_drop", "expose", "secrets", "configs", "sysctls"}
)  # fmt: skip
_PATH_KEYS = ("env_file", "build")  # service keys whose relative paths are rewritten
# deploy keys the schema has for `--target swarm` only: an import is for the single host.
_SWARM_DEPLOY = frozenset({"placement", "mode", "restart_policy", "labels"})


@dataclass(frozen=True, slots=True)
class Finding:
    """A key of the compose file and what became of it."""

    line: int  # 1-based; 0 when unknown
    column: int
    path: str
    message: str
    file: str = ""  # the compose file it is in ("": the one given)

    def show(self, source: str) -> str:
        file = self.file or source
        where = f"{file}:{self.line}:{self.column}" if self.line else file
        return f"{where}: {self.path}: {self.message}"


@dataclass(slots=True)
class Imported:
    text: str  # the desired-state file
    project: str
    unsupported: list[Finding] = field(default_factory=list)
    converted: list[Finding] = field(default_factory=list)
    # Where each value of `text` was in the compose file: the loader's errors point there.
    positions: Document = field(default_factory=lambda: Document(None))
    files: list[Path] = field(default_factory=list)  # every compose file read
    # env files an `include` interpolates its files with (the output does not read them)
    include_env: list[tuple[Path, Mark | None]] = field(default_factory=list)
    tree: Any = None  # the converted round-trip tree (what `text` is the dump of)


def import_compose(
    path: Path,
    *,
    output_dir: Path,
    project: str | None = None,
    drop_unsupported: bool = False,
) -> Imported:
    """Convert the compose file at `path`; raise DesiredStateError when it cannot be read.

    Unsupported keys are removed from the text only with `drop_unsupported` (the caller
    decides whether to write it at all).
    """
    paths, _ = compose_sources.file_set(path)
    path = paths[0]
    source = str(path)
    yaml = _yaml()
    files = paths
    include_env: list[tuple[Path, Mark | None]] = []
    if compose_tree.needs_merge(paths):  # several files, extends, include, !reset...
        doc, merged = compose_tree.merged_tree(paths)
        files, include_env = merged.files, merged.env_files
    else:
        doc = compose_tree.load_one(path, yaml)
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("services"), CommentedMap):
        raise DesiredStateError(source, ["not a compose file: no services mapping"])
    given = project or compose_environment(path.resolve().parent).get(PROJECT_ENV) or None
    conv = _Converter(doc, path.resolve().parent, output_dir.resolve(), given)
    conv.convert()
    whole = list(_sourceless_secrets(doc))  # dropped whole, with their references
    dropped = [p for _, _, p, _ in whole]
    unsupported = [
        (parent, key, p, _reason(p))
        for parent, key, p in _unsupported(doc, DesiredStateDef, ())
        if not any(p[: len(d)] == d for d in dropped)
    ]
    unsupported += whole
    unsupported.sort(key=lambda u: _where(u[0], u[1]))
    found = [
        Finding(*_where(parent, key), _dotted(p), why, compose_tree.origin(parent, key))
        for parent, key, p, why in unsupported
    ]
    if drop_unsupported:  # list items last first, so the other indices stay right
        for parent, key, _, _ in sorted(
            unsupported, key=lambda u: u[1] if isinstance(u[1], int) else -1, reverse=True
        ):
            del parent[key]
        note_dropped(doc, found, source)
    positions = _positions(doc)  # the compose file's line:column of every value still there
    out = io.StringIO()
    try:
        yaml.dump(doc, out)
    except (YAMLError, RecursionError) as exc:
        raise DesiredStateError(source, [f"cannot write the result: {exc}"]) from None
    converted = sorted(conv.converted, key=lambda f: (f.file, f.line, f.column))
    return Imported(
        out.getvalue(), conv.project, found, converted, positions, files, include_env, doc
    )


def note_dropped(doc: CommentedMap, found: list[Finding], source: str) -> None:
    """A comment in the output where each dropped key was: before its service (or other
    named definition), else at the top of the file."""
    by_anchor: dict[tuple[str, str], list[str]] = {}
    top: list[str] = []
    for f in found:
        parts = f.path.split(".")
        line = f"dropped {f.show(source)}"
        section = doc.get(parts[0]) if parts else None
        name = parts[1].split("[")[0] if len(parts) > 2 else ""
        if isinstance(section, CommentedMap) and name in section:
            by_anchor.setdefault((parts[0], name), []).append(line)
        else:
            top.append(line)
    for (section, name), lines in by_anchor.items():
        doc[section].yaml_set_comment_before_after_key(name, before="\n".join(lines), indent=2)
    if top:
        doc.yaml_set_start_comment("reconciler import:\n" + "\n".join(top))


def compose_environment(compose_dir: Path) -> dict[str, str]:
    """The process environment over the `.env` beside the compose file (compose's rule)."""
    values: dict[str, str] = {}
    env_path = compose_dir / ".env"
    if env_path.is_file():
        parsed = parse_env_file(
            env_path.read_text(errors="replace"), os.environ.get, env_first=True
        )
        values.update(parsed.values)
    values.update(os.environ)
    return values


def _yaml() -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.width = 4096  # do not fold long commands
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


class _Converter:
    def __init__(self, doc: CommentedMap, src: Path, dst: Path, project: str | None) -> None:
        self.doc, self.src, self.dst = doc, src, dst
        given = project or doc.get("name")
        self.project = str(given) if given else project_from_folder(src)
        self.converted: list[Finding] = []

    def note(self, parent: Any, key: Any, path: tuple[Any, ...], message: str) -> None:
        file = compose_tree.origin(parent, key)
        self.converted.append(Finding(*_where(parent, key), _dotted(path), message, file))

    def convert(self) -> None:
        doc = self.doc
        if "version" in doc:
            self.note(doc, "version", ("version",), f"compose {doc['version']!s} -> version: 1")
            del doc["version"]
        if "name" in doc:
            del doc["name"]
        doc.insert(0, "version", 1)
        doc.insert(1, "project", self.project)
        for section in ("volumes", "networks"):
            defs = doc.get(section)
            if isinstance(defs, CommentedMap):
                for key in list(defs):
                    self._name(section, defs, key)
        self._configs()
        secrets = doc.get("secrets")
        if isinstance(secrets, CommentedMap):
            for body in secrets.values():
                if isinstance(body, CommentedMap) and isinstance(body.get("file"), str):
                    body["file"] = self._path(body["file"], bare=True)
        for name, svc in doc["services"].items():
            if isinstance(svc, CommentedMap):
                self._empty_lists(name, svc)
                self._service_paths(name, svc)

    def _empty_lists(self, name: str, svc: CommentedMap) -> None:
        """`environment:` with nothing (compose reads it as empty): left out; so is
        `develop` (what `docker compose watch` syncs: `up` ignores it too)."""
        if "develop" in svc:
            self.note(svc, "develop", ("services", name, "develop"), "left out (compose watch)")
            del svc["develop"]
        for key in [k for k in svc if k in _LISTS and svc[k] is None]:
            self.note(svc, key, ("services", name, key), "empty: left out")
            del svc[key]

    def _name(self, section: str, defs: CommentedMap, key: str) -> None:
        """`<project>_<key>` unless name: or external: say otherwise (compose's names)."""
        body = defs[key]
        if body is None:
            body = defs[key] = CommentedMap()
        if not isinstance(body, CommentedMap) or str(key).startswith("x-"):
            return
        labels = body.get("labels")
        if isinstance(labels, CommentedSeq) and all(isinstance(x, str) for x in labels):
            pairs = (str(x).partition("=") for x in labels)  # compose's `[k=v]`: a mapping
            body["labels"] = CommentedMap((k, v) for k, _, v in pairs)
            self.note(body, "labels", (section, key, "labels"), "[k=v] -> {k: v}")
        ext = body.get("external")
        if isinstance(ext, Mapping):  # version 2/3.x: external: {name: x}
            body["external"] = True
            if "name" in ext:
                body["name"] = ext["name"]
            self.note(defs, key, (section, key, "external"), "external: {name} -> name:, external")
            ext = True
        if ext is True and "name" not in body:
            body["name"] = str(key)  # compose: an external object keeps its own name
        elif "name" not in body:
            body["name"] = f"{self.project}_{key}"
            self.note(defs, key, (section, key), f"named {self.project}_{key} (as compose)")

    def _configs(self) -> None:
        """Compose configs (top-level name -> file) become mounted files (source, target)."""
        top = self.doc.get("configs")
        if not isinstance(top, CommentedMap):
            return
        files: dict[str, str] = {}
        for name, body in top.items():
            if isinstance(body, Mapping) and set(body) == {"file"}:
                files[str(name)] = self._path(str(body["file"]), bare=True)
        for sname, svc in self.doc["services"].items():
            mounts = svc.get("configs") if isinstance(svc, CommentedMap) else None
            if not isinstance(mounts, CommentedSeq):
                continue
            for i, entry in enumerate(mounts):
                name = entry if isinstance(entry, str) else entry.get("source")
                if str(name) not in files:
                    continue  # left as is: the schema reports what does not fit
                target = f"/{name}" if isinstance(entry, str) else entry.get("target", f"/{name}")
                converted = CommentedMap([("source", files[str(name)]), ("target", target)])
                mounts[i] = converted
                self.note(mounts, i, ("services", sname, "configs", i), f"config {name} -> file")
        if all(str(n) in files for n in top):
            self.note(self.doc, "configs", ("configs",), "mounted as files by the services")
            del self.doc["configs"]

    def _path(self, text: str, *, bare: bool = False) -> str:
        """A path relative to the compose file, rewritten relative to the output's folder;
        `bare`: `x.env` is relative too (a bind's source must start with `.`)."""
        if "$" in text or text.startswith(("/", "~")) or not (bare or text.startswith(".")):
            return text
        absolute = os.path.normpath(self.src / text)
        rel = os.path.relpath(absolute, self.dst)
        return rel if rel.startswith(".") else f"./{rel}"

    def _service_paths(self, name: str, svc: CommentedMap) -> None:
        vols = svc.get("volumes")
        if isinstance(vols, CommentedSeq):
            for i, v in enumerate(vols):
                if isinstance(v, str) and v.startswith("."):
                    src, sep, rest = v.partition(":")
                    vols[i] = self._path(src) + sep + rest
                elif isinstance(v, CommentedMap) and str(v.get("source", "")).startswith("."):
                    v["source"] = self._path(str(v["source"]))
        env_file = svc.get("env_file")
        if isinstance(env_file, str):
            svc["env_file"] = self._path(env_file, bare=True)
        elif isinstance(env_file, CommentedMap) and isinstance(env_file.get("path"), str):
            env_file["path"] = self._path(env_file["path"], bare=True)
        elif isinstance(env_file, CommentedSeq):
            for i, e in enumerate(env_file):
                if isinstance(e, str):
                    env_file[i] = self._path(e, bare=True)
                elif isinstance(e, CommentedMap) and "path" in e:
                    e["path"] = self._path(str(e["path"]), bare=True)
        build = svc.get("build")
        if isinstance(build, str):
            svc["build"] = self._path(build if build.startswith(".") else f"./{build}")
        elif isinstance(build, CommentedMap):
            ctx = str(build.get("context", "."))
            build["context"] = self._path(ctx if ctx.startswith((".", "/")) else f"./{ctx}")


# --------------------------------------------------------------------------- what fits


def _unsupported(
    node: Any, model: type[BaseModel], path: tuple[Any, ...]
) -> Iterator[tuple[Any, Any, tuple[Any, ...]]]:
    """(parent, key, path) of every key the schema has no field for, walking the models."""
    if not isinstance(node, Mapping):
        return
    for key in list(node):
        if isinstance(key, str) and key.startswith("x-"):
            continue  # extension fields: the loader ignores them
        info = model.model_fields.get(str(key))
        here = (*path, key)
        extra = info.json_schema_extra if info is not None else None
        refused = isinstance(extra, dict) and "refused" in extra
        if info is None or refused or (path[-1:] == ("deploy",) and key in _SWARM_DEPLOY):
            yield node, key, here
            continue
        yield from _walk(node[key], info.annotation, here)


def _walk(value: Any, annotation: Any, path: tuple[Any, ...]) -> Iterator[Any]:
    models, dict_values, list_items = _shapes(annotation)
    if isinstance(value, Mapping):
        if models:
            yield from _unsupported(value, models[0], path)
        elif dict_values:
            for k, v in value.items():
                yield from _walk(v, dict_values[0], (*path, k))
    elif isinstance(value, list) and list_items:
        for i, item in enumerate(value):
            yield from _walk(item, list_items[0], (*path, i))


def _shapes(annotation: Any) -> tuple[list[type[BaseModel]], list[Any], list[Any]]:
    """The models, dict value types and list item types a field's type allows."""
    models: list[type[BaseModel]] = []
    dict_values: list[Any] = []
    list_items: list[Any] = []
    stack = [annotation]
    while stack:
        t = stack.pop()
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            stack.append(typing.get_args(t)[0])
        elif origin in (typing.Union, types.UnionType):
            stack.extend(typing.get_args(t))
        elif origin is dict:
            dict_values.append(typing.get_args(t)[1])
        elif origin is list:
            list_items.append(typing.get_args(t)[0])
        elif isinstance(t, type) and issubclass(t, BaseModel):
            models.append(t)
    return models, dict_values, list_items


def _sourceless_secrets(doc: CommentedMap) -> Iterator[tuple[Any, Any, tuple[Any, ...], str]]:
    """Compose secrets without a file (environment:, external:), and every reference to them."""
    top = doc.get("secrets")
    if not isinstance(top, CommentedMap):
        return
    gone = {str(k) for k, b in top.items() if not (isinstance(b, Mapping) and "file" in b)}
    for name in sorted(gone):
        why = "not supported (a secret comes from a file only; its references go with it)"
        yield top, name, ("secrets", name), why
    for sname, svc in doc["services"].items():
        refs = svc.get("secrets") if isinstance(svc, CommentedMap) else None
        if not isinstance(refs, CommentedSeq):
            continue
        for i, ref in enumerate(refs):
            source = ref.get("source") if isinstance(ref, Mapping) else ref
            if str(source) in gone:
                why = f"secret {source} is not supported (not from a file)"
                yield refs, i, ("services", sname, "secrets", i), why


def _positions(doc: Any) -> Document:
    """The compose file's mark of each value (and key) of the converted document, by path;
    a key the import added has none (the loader then points at its nearest ancestor)."""
    found = Document(None)

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, CommentedMap):
            for key in node:
                here = (*path, str(key))
                line, col = _where(node, key)
                file = compose_tree.origin(node, key) or None
                if line:
                    found.key_marks[here] = Mark(line, col, file)
                    value = _value_mark(node, key) or Mark(line, col)
                    found.marks[here] = Mark(value.line, value.column, file)
                walk(node[key], here)
        elif isinstance(node, CommentedSeq):
            for i, item in enumerate(node):
                line, col = _where(node, i)
                if line:
                    found.marks[(*path, i)] = Mark(line, col, compose_tree.origin(node, i) or None)
                walk(item, (*path, i))

    with_root = getattr(doc, "lc", None)
    if with_root is not None and with_root.line is not None:
        found.marks[()] = Mark(with_root.line + 1, with_root.col + 1)
    walk(doc, ())
    return found


def _value_mark(parent: CommentedMap, key: Any) -> Mark | None:
    try:
        line, col = parent.lc.value(key)
        return Mark(int(line) + 1, int(col) + 1)
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def _where(parent: Any, key: Any) -> tuple[int, int]:
    try:
        if isinstance(parent, CommentedSeq):
            line, col = parent.lc.item(key)
        else:
            line, col = parent.lc.key(key)
        return int(line) + 1, int(col) + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return 0, 0


def _dotted(path: tuple[Any, ...]) -> str:
    return loader.dotted(tuple(p if isinstance(p, int) else str(p) for p in path))


def _reason(path: tuple[Any, ...]) -> str:
    """Why the key at `path` is left out."""
    key = str(path[-1])
    why = REASONS.get(".".join(map(str, path[-2:])), REASONS.get(key, "reconciler has no such key"))
    return f"not supported ({why})"
