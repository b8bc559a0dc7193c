"""For `reconciler import`: compose files read as written (no `${VAR}` substituted), merged
(`compose_sources`), and handed back as a ruamel.yaml round-trip tree whose every key and
item remembers its file, line and column (`where`), as a tree loaded from one file does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from reconciler.config import compose_sources
from reconciler.config.inputs import MAX_FILE_BYTES, TooLarge, read_limited
from reconciler.config.yamlread import (
    STR,
    Document,
    Scalar,
    YamlError,
    compose,
    core_value,
    read,
)
from reconciler.config.yamlread import Path as DataPath
from reconciler.errors import DesiredStateError

_ORIGIN = "reconciler_origin"  # attribute of a built container: key -> the file it came from


def as_written(path: DataPath, scalar: Scalar) -> Any:
    """A scalar as the file wrote it: text stays text (`${VAR}` too), an environment value
    keeps its spelling (`012`), other plain scalars get their YAML 1.2 core type."""
    if scalar.tag == STR:
        return scalar.text
    if len(path) == 4 and path[0] == "services" and path[2] == "environment":
        return None if scalar.text in ("", "~", "null", "Null", "NULL") else scalar.text
    return core_value(scalar.tag, scalar.text)


def read_as_written(path: Path, env_files: tuple[Path, ...] = ()) -> Document:
    """One compose file, its values as written (`compose_sources.Reader`: no variable is
    substituted, so `env_files` play no part)."""
    source = str(path)
    try:
        raw = read_limited(path, MAX_FILE_BYTES)
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise DesiredStateError(source, ["file not found"]) from None
    except TooLarge:
        raise DesiredStateError(source, ["the file is larger than 1 MiB"]) from None
    except UnicodeDecodeError:
        raise DesiredStateError(source, ["the file is not UTF-8 text"]) from None
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        node = compose(text)
        return read(node, as_written) if node is not None else Document({})
    except YamlError as exc:
        where = f"{source}:{exc.mark}: " if exc.mark else ""
        raise DesiredStateError(source, [where + exc.message]) from None


def needs_merge(paths: list[Path]) -> bool:
    """True unless `paths` is one file without extends, include or compose's tags (that
    one is converted from its own text, comments kept)."""
    return len(paths) > 1 or compose_sources.needs_merge(read_as_written(paths[0]))


def merged_tree(paths: list[Path]) -> tuple[CommentedMap, compose_sources.Merged]:
    """The merged model of `paths` as a round-trip tree, and the merge (files read...)."""
    merged = compose_sources.merge_files(paths, read_as_written)
    doc = merged.doc
    tree = _build(doc.data, (), doc)
    if not isinstance(tree, CommentedMap):
        raise DesiredStateError(str(paths[0]), ["not a compose file: not a mapping"])
    return tree, merged


def _build(data: Any, path: DataPath, doc: Document) -> Any:
    if isinstance(data, dict):
        out = CommentedMap()
        origin: dict[Any, str] = {}
        for key, value in data.items():
            here = (*path, key)
            out[key] = _build(value, here, doc)
            km, vm = doc.key_marks.get(here), doc.marks.get(here)
            if km is not None:
                vm = vm or km
                out.lc.add_kv_line_col(
                    key, [km.line - 1, km.column - 1, vm.line - 1, vm.column - 1]
                )
                origin[key] = km.file or ""
        setattr(out, _ORIGIN, origin)
        return out
    if isinstance(data, list):
        seq = CommentedSeq()
        origin = {}
        for i, value in enumerate(data):
            seq.append(_build(value, (*path, i), doc))
            m = doc.marks.get((*path, i))
            if m is not None:
                seq.lc.add_kv_line_col(i, [m.line - 1, m.column - 1])
                origin[i] = m.file or ""
        setattr(seq, _ORIGIN, origin)
        return seq
    return data


def origin(parent: Any, key: Any) -> str:
    """The file a key (or item) of a built tree came from ("" when read from one file)."""
    found = getattr(parent, _ORIGIN, None)
    return str(found.get(key, "")) if isinstance(found, dict) else ""


def load_one(path: Path, yaml: YAML) -> Any:
    """One compose file as a round-trip tree (its comments, order and quoting kept)."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise DesiredStateError(source, ["the file is larger than 1 MiB"])
    try:
        return yaml.load(raw.decode("utf-8", errors="strict"))
    except (YAMLError, UnicodeDecodeError) as exc:
        raise DesiredStateError(source, [f"cannot read as YAML: {exc}"]) from None
    except RecursionError:
        raise DesiredStateError(source, ["nested too deeply"]) from None
