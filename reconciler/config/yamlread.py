"""YAML 1.2 (core schema) into plain Python data, with the line and column of every value.

ruamel.yaml composes the node graph (an alias is the same node object, so composing
costs what the text costs); `read` then converts it once, counting every node it visits,
aliases included, and refuses past `MAX_NODES`: an alias bomb is refused after that many
steps instead of being expanded. What aliases stand for is bounded while composing, before
anything is expanded: each node's scalar bytes are counted once, an alias adds its target's
count, and past `MAX_ALIAS_BYTES` for one alias or `MAX_EXPANDED_BYTES` in all the alias
is refused at its line and column. Plain scalars are typed by the YAML 1.2 core schema whatever
`%YAML` directive the file carries (`2222:22`, `yes`, `on`, `012` as written stay text
where text is expected), timestamps stay text, duplicate keys are errors, merge keys (`<<`)
work. Every problem comes with a `Mark` (1-based line and column).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tag import Tag

Path = tuple[str | int, ...]

MAX_NODES = 100_000  # values visited, aliases counted each time they are used
MAX_DEPTH = 64  # nesting of mappings and sequences
# Scalar bytes (keys too) once every alias is expanded: what one alias may stand for, and
# the whole document. Without aliases a document holds less than its file (1 MiB).
MAX_ALIAS_BYTES = 1024 * 1024
MAX_EXPANDED_BYTES = 4 * 1024 * 1024

_Y = "tag:yaml.org,2002:"
STR, NULL, BOOL, INT, FLOAT = (f"{_Y}{t}" for t in ("str", "null", "bool", "int", "float"))
MAP, SEQ, MERGE, TIMESTAMP = (f"{_Y}{t}" for t in ("map", "seq", "merge", "timestamp"))
# Compose's merge tags: kept in `Document.tags` for the merge (`compose_merge`) to apply.
COMPOSE_TAGS = {"!reset": "reset", "!override": "override"}
_CORE_INT = re.compile(r"[-+]?[0-9]+\Z")
_CORE_OCT = re.compile(r"0o[0-7]+\Z")
_CORE_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_CORE_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z")
_CORE_NAN = re.compile(r"\.(?:nan|NaN|NAN)\Z")


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    file: str | None = None  # None: the file being read (set when several are merged)

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


def core_tag(text: str) -> str:
    """The YAML 1.2 core-schema tag of a plain scalar (`<<` is the merge key)."""
    if text == "<<":
        return MERGE
    if text in ("", "~", "null", "Null", "NULL"):
        return NULL
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return BOOL
    if _CORE_INT.match(text) or _CORE_OCT.match(text) or _CORE_HEX.match(text):
        return INT
    if _CORE_FLOAT.match(text) or _CORE_INF.match(text) or _CORE_NAN.match(text):
        return FLOAT
    return STR


def core_value(tag: str, text: str) -> Any:
    """The Python value of a scalar with a core-schema tag (text when it does not parse)."""
    try:
        if tag == NULL:
            return None
        if tag == BOOL:
            return text.lower() == "true"
        if tag == INT:
            if text.startswith(("0o", "0x")):
                return int(text[2:], 8 if text[1] == "o" else 16)
            return int(text)
        if tag == FLOAT:
            lowered = text.lower()
            if lowered.endswith(".nan"):
                return math.nan
            if lowered.endswith(".inf"):
                return -math.inf if text.startswith("-") else math.inf
            return float(text)
    except ValueError:  # e.g. an integer of more than 4300 digits
        pass
    return text


class _CoreResolver(VersionedResolver):
    """Plain scalars resolved by the YAML 1.2 core schema, whatever the document declares."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return Tag(suffix=core_tag(value))
        return super().resolve(kind, value, (False, False))


class _Composer(Composer):
    """An anchor defined again simply names the new node (YAML allows it): no warning.

    Counts what the document expands to without expanding it: a node's size is the bytes
    of its scalars, an alias adding its target's size (computed when the target was)."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False
        self.nodes = 0
        self.expanded = 0  # scalar bytes of the document so far, aliases expanded
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size
        self._open: list[int] = []  # sizes of the collections being composed, so far

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Bound the work before `read` starts: a file of many small values stops here.
        self.nodes += 1
        event = self.parser.peek_event()
        if self.nodes > MAX_NODES:
            raise YamlError(
                f"the document has more than {MAX_NODES} values; refusing it",
                _mark(getattr(event, "start_mark", None)),
            )
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            # Absent: the alias is inside the collection it names (`read` refuses that).
            self._expand(self._sizes.get(id(node), 0), event)
            return node
        self._open.append(0)
        node = super().compose_node(parent, index)
        size = self._open.pop()
        if isinstance(node, ScalarNode):
            text = str(node.value)
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            self.expanded += size
        if event.anchor is not None:
            self._sizes[id(node)] = size
        if self._open:
            self._open[-1] += size
        return node

    def _expand(self, size: int, event: Any) -> None:
        """An alias: its target's size again, refused past the bounds (at the alias)."""
        if self._open:
            self._open[-1] += size
        self.expanded += size
        if size > MAX_ALIAS_BYTES:
            raise YamlError(
                f"this alias stands for {_mib(size)} of text, more than the "
                f"{_mib(MAX_ALIAS_BYTES)} one value may expand to; refusing it",
                _mark(event.start_mark),
            )
        if self.expanded > MAX_EXPANDED_BYTES:
            raise YamlError(
                f"with this alias the document expands to more than {_mib(MAX_EXPANDED_BYTES)} "
                "of text (aliases counted with what they stand for, each time they are "
                "used); refusing it",
                _mark(event.start_mark),
            )


def _mib(size: int) -> str:
    mib = size / (1024 * 1024)
    return f"{mib:.0f} MiB" if mib == int(mib) else f"{mib:.1f} MiB"


class YamlError(Exception):
    """The text is not YAML (or is too large or deep to read): one message, maybe a mark."""

    def __init__(self, message: str, mark: Mark | None = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


@dataclass(frozen=True, slots=True)
class Scalar:
    """What `read` hands to `on_scalar`: a string scalar's text and how it was written."""

    text: str
    plain: bool  # written without quotes (so `012` is a number unless text is wanted)
    tag: str
    mark: Mark


@dataclass(slots=True)
class Document:
    data: Any
    marks: dict[Path, Mark] = field(default_factory=dict)  # where to point for a value
    key_marks: dict[Path, Mark] = field(default_factory=dict)  # the key of a mapping entry
    problems: list[tuple[Path, Mark, str]] = field(default_factory=list)
    tags: dict[Path, str] = field(default_factory=dict)  # compose's !reset / !override

    def mark(self, path: Path, *, key: bool = False) -> Mark | None:
        """The mark of `path` (of its key with `key`), else of its nearest ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        for end in range(len(path), -1, -1):
            found = self.marks.get(path[:end])
            if found is not None:
                return found
        return None


# on_scalar(path, scalar) -> the value to keep (the loader interpolates and types there)
OnScalar = Callable[[Path, Scalar], Any]


def compose(text: str) -> Node | None:
    """The node graph of a single YAML document, or None for an empty stream."""
    yaml = YAML(typ="safe", pure=True)  # no comment gathering: 1.6x as fast as "rt"
    yaml.Resolver = _CoreResolver
    yaml.Composer = _Composer
    yaml.allow_duplicate_keys = True  # reported by `read`, with both lines
    yaml.max_depth = MAX_DEPTH + 1  # type: ignore[attr-defined]
    try:
        return yaml.compose(text)
    except YamlError:
        raise
    except MarkedYAMLError as exc:
        raise YamlError(_describe(exc), _mark(exc.problem_mark or exc.context_mark)) from None
    except ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        raise YamlError(
            f"malformed YAML: a character YAML does not allow ({exc.reason})",
            _offset_mark(text, position),
        ) from None
    except YAMLError as exc:
        raise YamlError(f"malformed YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise YamlError(f"malformed YAML: nested more than {MAX_DEPTH} levels deep") from None
    except Exception as exc:  # ruamel.yaml is third-party: its surprises are ours to report
        raise YamlError(f"malformed YAML: {type(exc).__name__}") from None


def read(node: Node, on_scalar: OnScalar) -> Document:
    """Convert a composed node graph into dicts, lists and scalars (see the module doc)."""
    doc = Document(None)
    doc.data = _Converter(doc, on_scalar).value(node, (), 0)
    return doc


class _Converter:
    def __init__(self, doc: Document, on_scalar: OnScalar) -> None:
        self.doc, self.on_scalar = doc, on_scalar
        self.visited = 0
        self.active: set[int] = set()  # collections being converted: a cycle is an error

    def _count(self, node: Node) -> None:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise YamlError(
                f"the document expands to more than {MAX_NODES} values (aliases counted "
                "each time they are used); refusing it",
                _mark(node.start_mark),
            )

    def value(self, node: Node, path: Path, depth: int) -> Any:
        self._count(node)
        mark = _mark(node.start_mark) or Mark(1, 1)
        self.doc.marks.setdefault(path, mark)
        compose_tag = COMPOSE_TAGS.get(str(node.tag))
        if compose_tag is not None:
            self.doc.tags[path] = compose_tag
        if isinstance(node, ScalarNode):
            return self._scalar(node, path, mark)
        if depth >= MAX_DEPTH:
            raise YamlError(f"nested more than {MAX_DEPTH} levels deep", mark)
        if id(node) in self.active:
            raise YamlError("an alias refers to a collection that contains it", mark)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                if str(node.tag) not in (MAP, "!reset", "!override"):
                    raise YamlError(
                        f"unsupported tag {_tag_name(str(node.tag))} on a mapping", mark
                    )
                return self._mapping(node, path, depth)
            if isinstance(node, SequenceNode):
                if str(node.tag) not in (SEQ, "!reset", "!override"):
                    raise YamlError(
                        f"unsupported tag {_tag_name(str(node.tag))} on a sequence", mark
                    )
                return [
                    self.value(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
        finally:
            self.active.discard(id(node))
        raise YamlError("unsupported YAML node", mark)

    def _scalar(self, node: ScalarNode, path: Path, mark: Mark) -> Any:
        tag = str(node.tag)
        if tag in COMPOSE_TAGS:  # `!reset null`, `!override 8080`: typed as if untagged
            text = str(node.value)
            tag = core_tag(text) if node.style is None else STR
        if tag in (TIMESTAMP, MERGE):  # a date stays text; `<<` merges only as a key
            tag = STR
        if tag not in (STR, NULL, BOOL, INT, FLOAT):
            raise YamlError(
                f"unsupported tag {_tag_name(tag)} (only YAML's core types are read)", mark
            )
        return self.on_scalar(path, Scalar(str(node.value), node.style is None, tag, mark))

    def _entries(self, node: MappingNode, path: Path, depth: int) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) of a mapping, merge keys resolved: the mapping's own
        keys win over merged ones, an earlier merged mapping over a later one."""
        own: list[tuple[str, Node, Node]] = []
        merged: list[tuple[str, Node, Node]] = []
        first: dict[str, Node] = {}
        for key_node, value_node in node.value:
            self._count(key_node)
            if not isinstance(key_node, ScalarNode):
                raise YamlError("a mapping key must be a plain string", _mark(key_node.start_mark))
            if str(key_node.tag) == MERGE:
                merged.extend(self._merge_sources(value_node, path, depth))
                continue
            key = str(key_node.value)
            if key in first:
                self.doc.problems.append(
                    (
                        (*path, key),
                        _mark(key_node.start_mark) or Mark(1, 1),
                        f"duplicate key {key!r} (first at line "
                        f"{first[key].start_mark.line + 1}); a key may appear once per mapping",
                    )
                )
                continue
            first[key] = key_node
            own.append((key, key_node, value_node))
        seen = set(first)
        for key, key_node, value_node in merged:
            if key not in seen:
                seen.add(key)
                own.append((key, key_node, value_node))
        return own

    def _merge_sources(self, node: Node, path: Path, depth: int) -> list[tuple[str, Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        out: list[tuple[str, Node, Node]] = []
        for source in sources:
            self._count(source)
            if not isinstance(source, MappingNode):
                raise YamlError(
                    "a merge key (<<) takes a mapping or a list of mappings",
                    _mark(source.start_mark),
                )
            if id(source) in self.active or depth >= MAX_DEPTH:
                raise YamlError(
                    "a merge key (<<) refers to a mapping that contains it",
                    _mark(source.start_mark),
                )
            self.active.add(id(source))
            try:
                out.extend(self._entries(source, path, depth + 1))
            finally:
                self.active.discard(id(source))
        return out

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, key_node, value_node in self._entries(node, path, depth):
            sub = (*path, key)
            key_mark = _mark(key_node.start_mark) or Mark(1, 1)
            self.doc.key_marks.setdefault(sub, key_mark)
            value_mark = _mark(value_node.start_mark) or key_mark
            # A block collection starts on the next line: point at its key instead.
            if not isinstance(value_node, ScalarNode) and value_mark.line != key_mark.line:
                self.doc.marks.setdefault(sub, key_mark)
            out[key] = self.value(value_node, sub, depth + 1)
        return out


def _mark(mark: Any) -> Mark | None:
    if mark is None or getattr(mark, "line", None) is None:
        return None
    return Mark(int(mark.line) + 1, int(mark.column) + 1)


def _offset_mark(text: str, position: int) -> Mark:
    before = text[:position]
    return Mark(before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1)


def _tag_name(tag: str) -> str:
    return tag.replace(_Y, "!!", 1)


def _describe(exc: MarkedYAMLError) -> str:
    problem, context = exc.problem or "", exc.context or ""
    if problem.startswith("maximum depth"):  # ruamel's MaxDepthExceededError
        return f"malformed YAML: nested more than {MAX_DEPTH} levels deep"
    if problem.startswith("but ") and context:
        return f"malformed YAML: {context}, {problem}"
    where = ""
    ctx, at = _mark(exc.context_mark), _mark(exc.problem_mark)
    if context and ctx is not None and ctx != at:
        where = f" ({context} started at line {ctx.line}, column {ctx.column})"
    return f"malformed YAML: {problem or context or 'cannot parse'}{where}"
