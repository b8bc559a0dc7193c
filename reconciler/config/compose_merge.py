"""Compose's merge rules on read documents, keeping each value's file, line and column.

Pure: `located` turns a `yamlread.Document` into a tree of `Value`s that remember where they
were written; `merge` applies one file over another as compose-spec's "Merge and override"
says (mappings merged, sequences appended, `command`/`entrypoint`/`healthcheck.test`
replaced, ports/volumes/secrets/configs unique by their key, `!reset`, `!override`);
`document` turns the result back into a `Document`. Used by `compose_sources`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.config.yamlread import Document, Mark
from reconciler.config.yamlread import Path as DataPath

SECTIONS = ("services", "networks", "volumes", "secrets", "configs")


class MergeError(ValueError):
    """Two values compose cannot merge; `mark` is where the overriding one was written."""

    def __init__(self, message: str, mark: Mark | None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


@dataclass(slots=True)
class Value:
    """A value as written: a dict of Values, a list of Values, or a scalar."""

    data: Any
    mark: Mark | None = None
    key_mark: Mark | None = None
    tag: str | None = None  # "reset" / "override" (compose's YAML tags), else None
    extra: dict[str, Any] = field(default_factory=dict)


def located(doc: Document, file: str) -> Value:
    """The document as a tree of Values whose marks name `file`."""

    def at(m: Mark | None) -> Mark | None:
        return dataclasses.replace(m, file=file) if m is not None else None

    def walk(data: Any, path: DataPath) -> Value:
        if isinstance(data, dict):
            inner: Any = {k: walk(v, (*path, k)) for k, v in data.items()}
        elif isinstance(data, list):
            inner = [walk(v, (*path, i)) for i, v in enumerate(data)]
        else:
            inner = data
        key_mark = doc.key_marks.get(path)
        return Value(inner, at(doc.marks.get(path)), at(key_mark), doc.tags.get(path))

    return walk(doc.data, ())


def document(value: Value) -> Document:
    """The merged tree as a Document (marks by path, each naming its file)."""
    doc = Document(None)

    def walk(v: Value, path: DataPath) -> Any:
        if v.mark is not None:
            doc.marks[path] = v.mark
        if v.key_mark is not None:
            doc.key_marks[path] = v.key_mark
        if isinstance(v.data, dict):
            return {k: walk(c, (*path, k)) for k, c in v.data.items()}
        if isinstance(v.data, list):
            return [walk(c, (*path, i)) for i, c in enumerate(v.data)]
        return v.data

    doc.data = walk(value, ())
    return doc


def plain(value: Value) -> Any:
    """The data of a Value tree, without marks."""
    return document(value).data


def clean(value: Value) -> Value:
    """A value taken whole: its `!reset` entries removed, `!override` tags spent."""
    value.tag = None
    if isinstance(value.data, dict):
        value.data = {k: clean(v) for k, v in value.data.items() if v.tag != "reset"}
    elif isinstance(value.data, list):
        value.data = [clean(v) for v in value.data if v.tag != "reset"]
    return value


def merge(base: Value | None, over: Value) -> Value:
    """`over` applied on `base` (a whole compose file each), compose's rules."""
    if base is None:
        return clean(over)
    return _merge(base, over, ())


# --------------------------------------------------------------------------- the rules

_REPLACED = ("command", "entrypoint")
# Lists of `KEY=VALUE` (or a mapping): merged by key, the later file winning.
_KEYED = frozenset(
    {"environment", "labels", "annotations", "sysctls", "extra_hosts", "args", "driver_opts"}
)
# Lists whose entries are unique (by value, or by the key `_unique_key` computes).
_UNIQUE = frozenset(
    {
        "ports", "volumes", "secrets", "configs", "expose", "dns", "dns_search", "dns_opt",
        "cap_add", "cap_drop", "profiles", "tmpfs", "env_file", "links", "devices",
        "security_opt", "external_links", "group_add", "aliases", "volumes_from", "cache_from",
        "label_file",
    }
)  # fmt: skip


def _rule(path: DataPath) -> str:
    """How the value at `path` (a service's key, or deeper) merges."""
    if len(path) < 3 or path[0] != "services":
        return "labels" if path[-1:] == ("labels",) and len(path) == 3 else "default"
    key = path[2] if len(path) == 3 else path[-1]
    if len(path) == 3:
        if key in _REPLACED:
            return "replace"
        if key in ("build", "depends_on", "networks", "logging"):
            return str(key)
    if path[2:] == ("healthcheck", "test"):
        return "replace"
    if len(path) == 5 and path[2] == "ulimits":
        return "replace"
    if key in _KEYED and (len(path) == 3 or path[2] in ("build", "deploy")):
        return "keyed"
    if key in _UNIQUE:
        return "unique"
    return "default"


def _merge(base: Value, over: Value, path: DataPath, keep: bool = False) -> Value:
    """`keep` (extends): `over`'s tags stay on the result, for the merge of its file with
    the files before it to apply them again."""
    take = (lambda v: v) if keep else clean
    if over.tag == "override":
        return take(over)
    if over.data is None and path:  # `key:` with nothing: compose keeps what was there
        return base
    rule = _rule(path) if path else "default"
    if rule == "replace":
        return take(over)
    if rule in ("keyed", "labels"):
        return _keyed(base, over, keep)
    if rule == "build":
        return _mappings(_as_mapping(base, "context"), _as_mapping(over, "context"), path, keep)
    if rule == "depends_on":
        return _mappings(
            _named(base, {"condition": "service_started"}), _named(over, {}), path, keep
        )
    if rule == "networks":
        return _mappings(_named(base, None), _named(over, None), path, keep)
    if rule == "logging" and isinstance(base.data, dict) and isinstance(over.data, dict):
        drivers = (_scalar(base.data.get("driver")), _scalar(over.data.get("driver")))
        if None not in drivers and drivers[0] != drivers[1]:
            return take(over)
    if isinstance(base.data, dict):
        if not isinstance(over.data, dict):
            raise MergeError(
                f"{_dotted(path)}: cannot merge a mapping with a {_kind(over)}", over.mark
            )
        return _mappings(base, over, path, keep)
    if isinstance(base.data, list):
        if not isinstance(over.data, list):
            raise MergeError(
                f"{_dotted(path)}: cannot merge a list with a {_kind(over)}", over.mark
            )
        items = base.data + [take(v) for v in over.data if v.tag != "reset"]
        kind = str(path[-1]) if rule == "unique" else ""  # else: equal entries once
        return Value(_unique(items, kind), base.mark, base.key_mark)
    return _with_key_mark(take(over), base)


def _mappings(base: Value, over: Value, path: DataPath, keep: bool = False) -> Value:
    out = dict(base.data)
    for key, value in over.data.items():
        if value.tag == "reset":
            out.pop(key, None)
            if keep:
                out[key] = value  # still removes what an earlier file gave
        elif key not in out:
            out[key] = value if keep else clean(value)
        else:
            out[key] = _merge(out[key], value, (*path, key), keep)
    return Value(out, base.mark, base.key_mark)


def _with_key_mark(value: Value, base: Value) -> Value:
    return (
        value if value.key_mark is not None else dataclasses.replace(value, key_mark=base.key_mark)
    )


def _kind(v: Value) -> str:
    return (
        "mapping" if isinstance(v.data, dict) else "list" if isinstance(v.data, list) else "value"
    )


def _scalar(v: Value | None) -> Any:
    return None if v is None else v.data


def _as_mapping(v: Value, key: str) -> Value:
    """`build: ./dir` as `build: {context: ./dir}` (so that the two forms merge)."""
    if isinstance(v.data, dict):
        return v
    return Value({key: Value(v.data, v.mark, v.mark)}, v.mark, v.key_mark)


def _named(v: Value, body: Any) -> Value:
    """`[a, b]` as `{a: body, b: body}` (depends_on, a service's networks)."""
    if not isinstance(v.data, list):
        return v
    out: dict[str, Value] = {}
    for item in v.data:
        inner = (
            {k: Value(x, item.mark) for k, x in body.items()} if isinstance(body, dict) else body
        )
        out[str(item.data)] = Value(inner, item.mark, item.mark)
    return Value(out, v.mark, v.key_mark)


def _keyed(base: Value, over: Value, keep: bool = False) -> Value:
    """environment, labels, args...: by key, the later file winning; a list and a mapping
    merge as a mapping."""
    if isinstance(base.data, list) and isinstance(over.data, list):
        items = base.data + [v if keep else clean(v) for v in over.data if v.tag != "reset"]
        return Value(_unique(items, "keyed"), base.mark, base.key_mark)
    if not (isinstance(base.data, (dict, list)) and isinstance(over.data, (dict, list))):
        return over if keep else clean(over)
    out = dict(_pairs(base).data)
    for key, value in _pairs(over).data.items():
        if value.tag == "reset":
            out.pop(key, None)
            if keep:
                out[key] = value
        else:
            out[key] = value if keep else clean(value)
    return Value(out, base.mark, base.key_mark)


def _pairs(v: Value) -> Value:
    """`[A=1, B]` as `{A: "1", B: null}` (extra_hosts' `host:ip` too)."""
    if isinstance(v.data, dict):
        return v
    out: dict[str, Value] = {}
    for item in v.data:
        text = str(item.data)
        sep = "=" if "=" in text else ":" if ":" in text else ""
        key, _, rest = text.partition(sep) if sep else (text, "", None)
        out[key.strip()] = Value(rest if sep else None, item.mark, item.mark, item.tag)
    return Value(out, v.mark, v.key_mark)


def _unique(items: list[Value], kind: str) -> list[Value]:
    """Later entries replace earlier ones with the same key, where the earlier one was."""
    out: list[Value] = []
    index: dict[Any, int] = {}
    key_of = _KEYS.get(kind, _whole)
    for item in items:
        key = key_of(item.data)
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def _whole(data: Any) -> Any:
    return repr(plain_data(data))


def plain_data(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: plain_data(v.data) for k, v in data.items()}
    if isinstance(data, list):
        return [plain_data(v.data) for v in data]
    return data


def _volume_key(data: Any) -> Any:
    if isinstance(data, dict):
        return _scalar(data.get("target"))
    parts = str(data).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _mount_key(default: str) -> Callable[[Any], Any]:
    def key(data: Any) -> Any:
        if isinstance(data, dict):
            target = _scalar(data.get("target"))
            return target if target is not None else f"{default}/{_scalar(data.get('source'))}"
        return f"{default}/{data}"

    return key


def _port_key(data: Any) -> Any:
    """{ip, target, published, protocol} of a port (compose's unique key)."""
    if isinstance(data, dict):
        d = plain_data(data)
        return (
            d.get("host_ip"),
            str(d.get("target")),
            str(d.get("published")),
            d.get("protocol") or "tcp",
        )
    text, _, protocol = str(data).partition("/")
    if text.count(":") == 0:
        return (None, text, None, protocol or "tcp")
    head, _, target = text.rpartition(":")
    ip, _, published = head.rpartition(":") if head.count(":") else ("", "", head)
    return (ip.strip("[]") or None, target, published or None, protocol or "tcp")


def _keyed_key(data: Any) -> Any:
    text = str(data)
    return text.partition("=")[0] if "=" in text else text


def _env_file_key(data: Any) -> Any:
    return _scalar(data.get("path")) if isinstance(data, dict) else data


_KEYS: dict[str, Callable[[Any], Any]] = {
    "volumes": _volume_key,
    "devices": _volume_key,
    "secrets": _mount_key("/run/secrets"),
    "configs": _mount_key(""),
    "ports": _port_key,
    "keyed": _keyed_key,
    "env_file": _env_file_key,
}


def _dotted(path: DataPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def merge_service(base: Value, over: Value, name: str) -> Value:
    """A service over the one it extends (compose's `extends`: the same rules as files)."""
    return _merge(base, over, ("services", name), keep=True)
