"""Which files make one compose model, and the model they make: `-f` files, COMPOSE_FILE,
the folder's override file, `extends` and `include`, merged with compose's rules.

The loader (values interpolated) and `reconciler import` (values as written) each give
`merge_files` their own reader of one file; errors name the file, line and column.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PosixPath
from typing import Any

from reconciler.config.compose_merge import (
    SECTIONS,
    MergeError,
    Value,
    clean,
    document,
    located,
    merge,
    merge_service,
    plain,
)
from reconciler.config.yamlread import Document, Mark
from reconciler.errors import DesiredStateError

# compose's default file names, and the override file each takes by default
OVERRIDES = {
    "compose.yaml": ("compose.override.yaml", "compose.override.yml"),
    "compose.yml": ("compose.override.yml", "compose.override.yaml"),
    "docker-compose.yml": ("docker-compose.override.yml", "docker-compose.override.yaml"),
    "docker-compose.yaml": ("docker-compose.override.yaml", "docker-compose.override.yml"),
}
MAX_FILES = 64  # files one model may read (extends and include chains included)

# One file's document (raises DesiredStateError). The second argument: the env files an
# `include` gives the file (its `env_file`, else the included project's `.env`); they fill
# the variables the project's environment and .env leave unset, the first file that sets
# one winning (an outer include's before an inner one's, as compose).
Reader = Callable[[Path, tuple[Path, ...]], Document]


class Files(PosixPath):
    """Several files given with `-f` (or COMPOSE_FILE): the path of the first, carrying all
    of them, so that it travels wherever one desired-state path does (the targets' `load`).
    A path derived from it (`resolve()`, `parent / x`...) is a `Files` without them:
    `file_set` refuses it rather than read the first file alone."""

    merged: tuple[Path, ...]


def files_path(paths: Sequence[Path]) -> Path:
    """One path for `paths` (one given with -f, too: it takes no override file)."""
    if len(paths) == 1 and isinstance(paths[0], Files):
        return paths[0]
    out = Files(paths[0])
    out.merged = tuple(Path(p) for p in paths)
    return out


def from_environment(environ: Mapping[str, str]) -> list[Path]:
    """COMPOSE_FILE's files (COMPOSE_PATH_SEPARATOR between them, default `:`)."""
    text = environ.get("COMPOSE_FILE", "")
    sep = environ.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    return [Path(p) for p in text.split(sep) if p]


DEFAULT_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def chosen(
    positional: Path | None,
    given: Sequence[Path] | None,
    environ: Mapping[str, str],
    default: Path | None = None,
) -> Path:
    """The file(s) a command reads, as compose chooses them: `-f` files (after a file
    named on its own), else COMPOSE_FILE, else `default` (none: compose's default names
    in the current folder; a `default` that is not there gives way to them, so that
    `reconciler plan` in a compose project's folder reads its compose.yaml). Only a file
    not given with -f takes its override file."""
    if given:
        return files_path([*([positional] if positional else []), *given])
    if positional is not None:
        return positional
    from_env = from_environment(environ)
    if from_env:
        return files_path(from_env)
    if default is not None and default.is_file():
        return default
    for name in DEFAULT_NAMES:
        if Path(name).is_file():
            return Path(name)
    return default if default is not None else Path(DEFAULT_NAMES[0])


def file_set(path: Path) -> tuple[list[Path], list[Path]]:
    """The files to merge for `path`, and the absent ones whose creation is a change: a
    path given alone (not with -f) takes its folder's override file, as compose's default."""
    if isinstance(path, Files):
        merged = getattr(path, "merged", None)
        if not merged:
            raise ValueError(f"{path}: a path derived from -f files no longer names them")
        return list(merged), []
    names = OVERRIDES.get(path.name)
    if names is None:
        return [path], []
    for name in names:
        if (path.parent / name).is_file():
            return [path, path.parent / name], []
    return [path], [path.parent / names[0]]


def needs_merge(doc: Document) -> bool:
    """True when one file alone still needs the merge (extends, include, !reset...)."""
    data = doc.data
    if doc.tags or not isinstance(data, dict):
        return bool(doc.tags)
    services = data.get("services")
    extends = isinstance(services, dict) and any(
        isinstance(s, dict) and "extends" in s for s in services.values()
    )
    return extends or "include" in data


@dataclass(slots=True)
class Merged:
    doc: Document
    files: list[Path] = field(default_factory=list)  # every file read, in order
    # the env files includes interpolate their files with, and the include naming each
    env_files: list[tuple[Path, Mark | None]] = field(default_factory=list)


def merge_files(paths: Sequence[Path], read: Reader) -> Merged:
    """The model of `paths` (the first one's folder is the project's)."""
    loader = _Loader(read, paths[0].resolve().parent)
    try:
        acc: Value | None = None
        for path in paths:
            acc = merge(acc, loader.file(path, ()))
    except MergeError as exc:
        raise _error(paths[0], exc.message, exc.mark) from None
    assert acc is not None
    return Merged(document(acc), loader.read_files, loader.env_files)


def _error(first: Path, message: str, mark: Mark | None) -> DesiredStateError:
    where = f"{mark.file or first}:{mark}: " if mark is not None else ""
    return DesiredStateError(str(first), [where + message])


class _Loader:
    def __init__(self, read: Reader, project_dir: Path) -> None:
        self.read, self.project_dir = read, project_dir
        self.read_files: list[Path] = []
        self.cache: dict[tuple[Path, tuple[Path, ...]], Value] = {}
        self.env: tuple[Path, ...] = ()  # the env files of the includes being read
        self.env_files: list[tuple[Path, Mark | None]] = []

    def raw(self, path: Path, at: Mark | None) -> Value:
        """One file as written (cached: a file extended twice is read once)."""
        key = (path.resolve(), self.env)
        if key not in self.cache:
            if len(self.read_files) >= MAX_FILES:
                raise MergeError(f"more than {MAX_FILES} compose files in one model", at)
            if not key[0].is_file():
                raise MergeError(f"{path}: no such file", at)
            self.read_files.append(path)
            doc = self.read(path, self.env)
            self.cache[key] = located(doc if doc.data is not None else Document({}), str(path))
        return copy.deepcopy(self.cache[key])

    def file(self, path: Path, stack: tuple[Path, ...], at: Mark | None = None) -> Value:
        """One file with its includes and extends resolved (its paths as written)."""
        if path.resolve() in stack:
            chain = " -> ".join(p.name for p in (*stack, path.resolve()))
            raise MergeError(f"include: a cycle ({chain})", at)
        value = self.raw(path, at)
        if not isinstance(value.data, dict):
            return value
        here = path.resolve().parent
        self.includes(value, here, (*stack, path.resolve()), path.parent)
        services = value.data.get("services")
        if services is not None and isinstance(services.data, dict):
            for name in list(services.data):
                services.data[name] = self.extended(value, path, name, ())
        return value

    # ------------------------------------------------------------------ extends

    def extended(self, model: Value, path: Path, name: str, stack: tuple[Any, ...]) -> Value:
        svc = model.data["services"].data[name]
        if not isinstance(svc.data, dict) or "extends" not in svc.data:
            return svc
        ext = svc.data["extends"]
        ref, file = _extends_target(ext)
        if ref is None:
            raise MergeError("extends: takes a service name or {service, file}", ext.mark)
        me = (str(path.resolve()), name)
        if me in stack:
            chain = " -> ".join(n for _, n in (*stack, me))
            raise MergeError(f"extends: a cycle ({chain})", ext.mark)
        if file is None:
            other, other_path = model, path
        else:
            other_path = path.parent / file
            other = self.raw(other_path, ext.mark)
        services = other.data.get("services") if isinstance(other.data, dict) else None
        if services is None or not isinstance(services.data, dict) or ref not in services.data:
            where = f" in {file}" if file else ""
            raise MergeError(f"extends: no service {ref!r}{where}", ext.mark)
        base = copy.deepcopy(self.extended(other, other_path, ref, (*stack, me)))
        if not isinstance(base.data, dict):
            raise MergeError(f"extends: service {ref!r} is not a mapping", ext.mark)
        base.data.pop("extends", None)
        _rebase_service(base, other_path.resolve().parent, path.resolve().parent)
        local = Value({k: v for k, v in svc.data.items() if k != "extends"}, svc.mark, svc.key_mark)
        return merge_service(base, local, name)

    # ------------------------------------------------------------------ include

    def includes(self, model: Value, here: Path, stack: tuple[Path, ...], named: Path) -> None:
        """`named`: `here` as the user wrote it (the included files are named from it)."""
        inc = model.data.pop("include", None)
        if inc is None:
            return
        entries = inc.data if isinstance(inc.data, list) else [inc]
        for entry in entries:
            paths, project, env_files = _include_entry(entry)
            if not paths:
                raise MergeError("include: takes paths, or {path, project_directory}", entry.mark)
            own = (here / project) if project else (here / paths[0]).parent
            outer = self.env
            own_named = (named / project) if project else (named / paths[0]).parent
            self.env = (*outer, *self.include_env(named, own_named, env_files, entry.mark))
            try:
                acc: Value | None = None
                for p in paths:
                    acc = merge(acc, self.file(named / p, stack, entry.mark))
            finally:
                self.env = outer
            assert acc is not None
            _rebase_model(acc, own.resolve(), here)
            self.add_resources(model, acc, entry.mark)

    def include_env(
        self, here: Path, own: Path, given: list[str] | None, at: Mark | None
    ) -> list[Path]:
        """The env files of one include, as compose reads them: its `env_file` (each must
        exist), else the included project's `.env` when there is one; later files win."""
        if given is None:
            found = [own / ".env"] if (own / ".env").is_file() else []
        else:
            found = [here / f for f in given]
            for f in found:
                if not f.is_file():
                    raise MergeError(f"include: env_file {f}: no such file", at)
        for f in found:
            if f.resolve() not in {p.resolve() for p, _ in self.env_files}:
                self.env_files.append((f, at))
        return list(reversed(found))  # the last one first: it wins

    def add_resources(self, model: Value, included: Value, at: Mark | None) -> None:
        if not isinstance(included.data, dict):
            raise MergeError("include: the included file is not a mapping", at)
        for section in SECTIONS:
            theirs = included.data.get(section)
            if theirs is None or not isinstance(theirs.data, dict):
                continue
            mine = model.data.setdefault(section, Value({}, theirs.mark, theirs.key_mark))
            if not isinstance(mine.data, dict):
                continue
            for name, body in theirs.data.items():
                if name in mine.data and plain(mine.data[name]) != plain(body):
                    first = body.key_mark or body.mark
                    where = f" (also at {first.file}:{first})" if first else ""
                    raise MergeError(
                        f"{section}.{name}: defined here and by an included file{where}; "
                        "include does not merge (use -f for overrides)",
                        mine.data[name].key_mark or at,
                    )
                mine.data.setdefault(name, clean(body))


def _extends_target(ext: Value) -> tuple[str | None, str | None]:
    if isinstance(ext.data, str):
        return ext.data, None
    if isinstance(ext.data, dict) and isinstance(
        getattr(ext.data.get("service"), "data", None), str
    ):
        file = ext.data.get("file")
        return ext.data["service"].data, (str(file.data) if file is not None else None)
    return None, None


def _include_entry(entry: Value) -> tuple[list[str], str | None, list[str] | None]:
    """An include's paths, project_directory and env_file (None: not given)."""
    if isinstance(entry.data, str):
        return [entry.data], None, None
    if not isinstance(entry.data, dict) or "path" not in entry.data:
        return [], None, None
    given = entry.data["path"].data
    paths = [str(v.data) for v in given] if isinstance(given, list) else [str(given)]
    project = entry.data.get("project_directory")
    env = entry.data.get("env_file")
    env_files = None
    if env is not None:
        items = env.data if isinstance(env.data, list) else [env]
        env_files = [str(v.data) for v in items]
    return paths, (str(project.data) if project is not None else None), env_files


# --------------------------------------------------------------------------- paths


def _rebased(text: str, src: Path, dst: Path, *, bare: bool) -> str:
    """A relative path written in `src`'s folder, relative to `dst` instead."""
    if src == dst or text.startswith(("/", "~", "$")) or "://" in text:
        return text
    if not bare and not text.startswith("."):
        return text
    rel = os.path.relpath(os.path.normpath(src / text), dst)
    return rel if rel.startswith(".") else f"./{rel}"


def _set(v: Value | None, src: Path, dst: Path, *, bare: bool) -> None:
    if v is not None and isinstance(v.data, str):
        v.data = _rebased(v.data, src, dst, bare=bare)


def _rebase_service(svc: Value, src: Path, dst: Path) -> None:
    """The relative paths of a service written in `src`'s folder, made relative to `dst`."""
    if src == dst or not isinstance(svc.data, dict):
        return
    d = svc.data
    build = d.get("build")
    if build is not None and isinstance(build.data, str) and not _remote(build.data):
        build.data = _rebased(build.data, src, dst, bare=True)
    elif build is not None and isinstance(build.data, dict):
        ctx = build.data.setdefault("context", Value(".", build.mark, build.mark))
        if isinstance(ctx.data, str) and not _remote(ctx.data):
            ctx.data = _rebased(ctx.data, src, dst, bare=True)
    for key in ("env_file", "label_file"):
        entry = d.get(key)
        items = entry.data if entry is not None and isinstance(entry.data, list) else [entry]
        for item in items:
            if item is not None and isinstance(item.data, dict):
                _set(item.data.get("path"), src, dst, bare=True)
            else:
                _set(item, src, dst, bare=True)
    vols = d.get("volumes")
    for v in vols.data if vols is not None and isinstance(vols.data, list) else []:
        if isinstance(v.data, str) and v.data.startswith("."):
            source, sep, rest = v.data.partition(":")
            v.data = _rebased(source, src, dst, bare=False) + sep + rest
        elif isinstance(v.data, dict):
            _set(v.data.get("source"), src, dst, bare=False)


def _rebase_model(model: Value, src: Path, dst: Path) -> None:
    if src == dst or not isinstance(model.data, dict):
        return
    services = model.data.get("services")
    for svc in services.data.values() if services and isinstance(services.data, dict) else ():
        _rebase_service(svc, src, dst)
    for section in ("secrets", "configs"):
        top = model.data.get(section)
        for body in top.data.values() if top and isinstance(top.data, dict) else ():
            if isinstance(body.data, dict):
                _set(body.data.get("file"), src, dst, bare=True)


def _remote(text: str) -> bool:
    return "://" in text or text.startswith(("git@", "github.com/"))
