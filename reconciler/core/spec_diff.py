"""A pure field diff between what runs and what the file asks, for `plan`, causes and logs.

A spec is first flattened into a *view* (core.spec_fields): file field names (`image`,
`environment.A`, `replicas`, `healthcheck.interval`) to JSON values, secret-looking values
already replaced by a fingerprint. `diff(old, new)` lists the fields that differ; `str()` of
a change is what `plan` prints: `environment.A "1" -> "2"`, `environment.PASSWORD (changed,
value hidden)`. The host keeps the view of each container's spec in a label (`encode`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

View = dict[str, Any]  # field -> JSON value (a hidden one: {"hidden": fingerprint})

# Word parts of a variable or label name whose value is a secret (what compose UIs, Portainer
# and log scrubbers treat as one): DB_PASSWORD, apiKey, GF_SECURITY_ADMIN_PASSWORD, AWS_SECRET.
SECRET_WORDS = frozenset(
    {
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "SECRET",
        "SECRETS",
        "TOKEN",
        "KEY",
        "APIKEY",
        "PRIVATE",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "CERT",
        "SALT",
        "SIGNATURE",
        "COOKIE",
        "SESSION",
        "DSN",
    }
)
MAX_SHOWN = 200  # a longer value is kept as a fingerprint only (labels stay small)
HIDDEN = "hidden"  # a view value {"hidden": fp}: compared, never shown
LONG = "long"  # a view value {"long": fp}: compared, not kept


def secret_name(name: str) -> bool:
    """Does this variable or label name look like it holds a secret (`*_FILE`: a path)?"""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    words = [w.upper() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    if words and words[-1] == "FILE":
        return False
    return any(w in SECRET_WORDS for w in words)


def fingerprint(field: str, value: str) -> str:
    """A short digest of a value that is compared but never shown (salted by its field)."""
    return hashlib.sha256(f"{field}\0{value}".encode()).hexdigest()[:16]


def guarded(field: str, value: str, hidden_values: frozenset[str] = frozenset()) -> Any:
    """A string value as a view keeps it: hidden when its name or value is secret, a
    fingerprint when it is long, else itself."""
    name = field.rpartition(".")[2]
    if secret_name(name) or value in hidden_values:
        return {HIDDEN: fingerprint(field, value)}
    if len(value) > MAX_SHOWN:
        return {LONG: fingerprint(field, value)}
    return value


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs: `old`/`new` are what may be shown (None: unset)."""

    field: str
    old: Any = None
    new: Any = None

    @property
    def hidden(self) -> bool:
        return _is(self.old, HIDDEN) or _is(self.new, HIDDEN)

    @property
    def change(self) -> str:
        """added, removed or changed."""
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "changed"

    def shown(self, value: Any) -> Any:
        """What JSON output may carry of `value` (None for a hidden or dropped one)."""
        return None if isinstance(value, dict) and (HIDDEN in value or LONG in value) else value

    def __str__(self) -> str:
        if self.hidden:
            return f"{self.field} ({self.change}, value hidden)"
        if _is(self.old, LONG) or _is(self.new, LONG):
            return f"{self.field} ({self.change}, value too long to show)"
        return f"{self.field} {_text(self.field, self.old)} -> {_text(self.field, self.new)}"


def _is(value: Any, marker: str) -> bool:
    return isinstance(value, dict) and set(value) == {marker}


# Fields whose values are free text of a mapping: quoted, so "" and " x" show as they are.
QUOTED = ("environment.", "labels.", "deploy.labels.", "logging.options.", "sysctls.")


def _text(field: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and not field.startswith(QUOTED) and value and " " not in value:
        return value
    return json.dumps(value, sort_keys=True)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """The fields whose values differ, in field order."""
    out = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before != after:
            out.append(FieldChange(name, before, after))
    return tuple(out)


def merged(changes: Iterable[tuple[FieldChange, ...]]) -> tuple[FieldChange, ...]:
    """One list from several (replicas of one service): the first change of each field."""
    seen: dict[str, FieldChange] = {}
    for group in changes:
        for change in group:
            seen.setdefault(change.field, change)
    return tuple(seen[k] for k in sorted(seen))


def fields_text(changes: Iterable[FieldChange], limit: int = 4) -> str:
    """`environment.A, replicas` (the first `limit` field names, then `+N more`)."""
    names = [c.field for c in changes]
    text = ", ".join(names[:limit])
    return f"{text} +{len(names) - limit} more" if len(names) > limit else text


def conceal(view: Mapping[str, Any], hidden: frozenset[str]) -> View:
    """`view` with every value that is one of `hidden` (secrets of the file) hidden."""
    if not hidden:
        return dict(view)
    return {
        k: {HIDDEN: fingerprint(k, v)} if isinstance(v, str) and v in hidden else v
        for k, v in view.items()
    }


def encode(view: Mapping[str, Any]) -> str:
    """The view as a label value (compact, sorted)."""
    return json.dumps(view, sort_keys=True, separators=(",", ":"))


def decode(text: str) -> View | None:
    """A label's view back (None when absent or not ours: an older container)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
