"""A pydantic error as a line in the file's terms: what the file should hold there and what
it holds (`expected a mapping of the service's keys, got nothing (null)`), never a schema
class's name nor the value itself (it may be a secret). The loader's report
(`config.report`) and the other files' readers (policy, web config, x-reconciler) call it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def schema_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message (its location is the caller's)."""
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
    expected = _expected(kind, ctx)
    if expected is not None:  # in the file's terms: never a schema class's name
        return f"expected {expected}, got {_what(err.get('input'))}"
    msg = str(err["msg"])  # pydantic's messages name the expected type, never the input
    return msg[:1].lower() + msg[1:]


# A wrong type, said as what the file should hold there; the value itself is never shown.
_EXPECTED = {
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
}
_NAMES_A_CLASS = ("model_type", "dataclass_type", "dataclass_exact_type")


def _expected(kind: str, ctx: Mapping[str, Any]) -> str | None:
    """What a type error expected, in the file's terms (None: not a type error)."""
    if kind in _NAMES_A_CLASS:
        noun = _noun(str(ctx.get("class_name", "")))
        return f"a mapping of the {noun}'s keys" if noun else "a mapping"
    if kind in ("is_instance_of", "is_subclass_of"):
        noun = _noun(str(ctx.get("class", "")))
        return f"a {noun}" if noun else "another kind of value"
    return _EXPECTED.get(kind)


def _noun(class_name: str) -> str:
    """`ServiceDef` -> `service`, `UpdateConfigDef` -> `update config` (a schema class's
    name as the thing the file describes)."""
    name = re.sub(r"(Def|Model)$", "", class_name.rsplit(".", 1)[-1])
    return " ".join(w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", name))


def _what(value: Any) -> str:
    """The kind of a value as YAML names it (never the value: it may be a secret)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def either(messages: list[str]) -> str:
    """The messages of one path joined by "or"; `expected a list, got a number` twice over
    as `expected a mapping or a list, got a number`."""
    parts = [m.partition(", got ") for m in messages]
    typed = all(m.startswith("expected ") and got for m, _, got in parts)
    if len(parts) > 1 and typed and len({got for _, _, got in parts}) == 1:
        wanted = " or ".join(m.removeprefix("expected ") for m, _, _ in parts)
        return f"expected {wanted}, got {parts[0][2]}"
    return " or ".join(messages)
