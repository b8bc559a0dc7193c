"""Compose's variable interpolation (`${VAR:-default}` and friends) and `.env` files.

Pure text functions: the loader supplies the lookup (process environment, then `.env`)
and turns an `InterpolationError` into a problem with the file, line and path.
Messages name variables, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

Lookup = Callable[[str], "str | None"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A variable whose value must never be printed (its name says it is a secret).
SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|credential|key|private|auth|cert|salt|cookie|session",
    re.IGNORECASE,
)
MAX_NESTING = 16  # ${A:-${B:-...}} levels
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A reference that cannot be substituted; the message names the variable only.
    `name`: the variable that is not set (None for a malformed reference)."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


@dataclass(slots=True)
class Result:
    value: str
    names: set[str] = field(default_factory=set)  # every variable referenced
    secret_values: set[str] = field(default_factory=set)  # what secret-named ones gave

    @property
    def secret(self) -> bool:
        """True when a referenced variable's name looks like a secret."""
        return any(SECRET_NAME.search(n) for n in self.names)


def interpolate(text: str, lookup: Lookup, *, hide_names: bool = False) -> Result:
    """Substitute `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?m}`, `${VAR?m}`,
    `${VAR:+r}`, `${VAR+r}` and `$$`, with compose's semantics.

    A `$` followed by anything else is kept (as compose does). An unset variable without a
    default is an error. `hide_names`: the text is itself a secret, so an error must not
    quote a piece of it (a literal `$abc` in a password would name `abc`).
    """
    result = Result("")
    result.value = _Interpolator(lookup, hide_names, result).run(text, 0)
    return result


class _Interpolator:
    def __init__(self, lookup: Lookup, hide_names: bool, result: Result) -> None:
        self.lookup, self.hide, self.result = lookup, hide_names, result

    def _used(self, name: str, value: str) -> str:
        if value and SECRET_NAME.search(name):
            self.result.secret_values.add(value)
        return value

    def run(self, text: str, depth: int) -> str:
        if depth > MAX_NESTING:
            raise InterpolationError(f"interpolation nested more than {MAX_NESTING} levels deep")
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            nxt = text[j + 1] if j + 1 < n else ""
            if nxt == "$":
                out.append("$")
                i = j + 2
            elif nxt == "{":
                end = _closing_brace(text, j + 2)
                if end < 0:
                    raise InterpolationError(self._bad("unclosed ${ ... }"))
                out.append(self._braced(text[j + 2 : end], depth))
                i = end + 1
            elif (m := _NAME.match(text, j + 1)) is not None:
                out.append(self._value(m.group(), braced=False))
                i = m.end()
            else:
                out.append("$")  # `$1`, `$ `, a trailing `$`: kept, as compose does
                i = j + 1
        return "".join(out)

    def _bad(self, what: str) -> str:
        return f"invalid interpolation: {what} (write $$ for a literal $)"

    def _value(self, name: str, *, braced: bool = True) -> str:
        self.result.names.add(name)
        value = self.lookup(name)
        if value is None:
            if self.hide and not braced:  # `$abc` in a secret may be a piece of it: unquoted
                raise InterpolationError(
                    "a $ reference in this value names a variable that is not set "
                    "(write $$ for a literal $, or quote the value in an env file with '...')",
                    name,
                )
            if self.hide:  # ${NAME} in a secret: surely a reference, and a name is no secret
                raise InterpolationError(
                    f"variable {name} is not set (a $ reference in this value; write $$ for "
                    "a literal $, or quote the value in an env file with '...')",
                    name,
                )
            raise InterpolationError(
                f"variable {name} is not set and has no default "
                f"(set it in the environment or in .env, or write ${{{name}:-default}}; "
                "$$ is a literal $)",
                name,
            )
        return self._used(name, value)

    def _braced(self, body: str, depth: int) -> str:
        m = _NAME.match(body)
        if m is None:
            raise InterpolationError(
                self._bad("${} needs a variable name" if not body else "a bad variable name")
            )
        name, rest = m.group(), body[m.end() :]
        if not rest:
            return self._value(name)
        op = next((o for o in _OPERATORS if rest.startswith(o)), None)
        if op is None:
            raise InterpolationError(self._bad(f"unknown operator after {name}"))
        self.result.names.add(name)
        arg = rest[len(op) :]
        value = self.lookup(name)
        empty = not value
        if op in (":-", "-"):
            if value is None or (op == ":-" and empty):
                return self._used(name, self.run(arg, depth + 1))
            return self._used(name, value)
        if op in (":?", "?"):
            if value is None or (op == ":?" and empty):
                why = "is missing a value" if value is None else "is empty"
                raise InterpolationError(
                    f"required variable {name} {why}" + (f": {arg}" if arg else ""), name
                )
            return self._used(name, value)
        # ":+" / "+": the replacement when set (and not empty, for ":+")
        if value is None or (op == ":+" and empty):
            return ""
        return self._used(name, self.run(arg, depth + 1))


def unset_names(text: str, lookup: Lookup) -> list[str]:
    """The variables `text` needs that `lookup` does not give (a default is no need);
    [] also when the text is malformed (the loader says why)."""
    found: list[str] = []
    given: dict[str, str] = {}

    def look(name: str) -> str | None:
        value = lookup(name)
        return value if value is not None else given.get(name)

    for _ in range(64):
        try:
            interpolate(text, look)
        except InterpolationError as exc:
            if exc.name is None or exc.name in given:
                return found
            found.append(exc.name)
            given[exc.name] = "1"
            continue
        return found
    return found


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing a `${` whose body starts at `start`, nested `${...}` allowed."""
    depth, i, n = 1, start, len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n and text[i + 1] in "${":
            depth += text[i + 1] == "{"
            i += 2
            continue
        if c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


# --------------------------------------------------------------------------- env files

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$$"}


@dataclass(slots=True)
class EnvFile:
    """The variables of a `.env` or env_file, in order, and the problems by line."""

    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # variable -> line it was set on
    problems: list[tuple[int, str]] = field(default_factory=list)


def parse_env_file(text: str, lookup: Lookup, *, env_first: bool, names: bool = True) -> EnvFile:
    """Read compose's env-file format: `KEY=VALUE` lines, `export KEY=VALUE`, `#` comments,
    values in '...' (literal) or "..." (escapes; may span lines) or bare (a ` #` starts a
    comment), `${VAR}` substituted in bare and "..." values, a bare `KEY` taking the value
    from the environment. `env_first`: a reference looks in `lookup` before the variables
    set above it (`.env`: the environment wins), else after them (env_file). Problems never
    quote a value; without `names` (a host file, as /etc/shadow) not even a name.
    """
    out = EnvFile()

    def problem(number: int, key: str, what: str) -> None:
        out.problems.append((number, f"{key}: {what}" if names else what))

    def resolve(name: str) -> str | None:
        first, second = (lookup, out.values.get) if env_first else (out.values.get, lookup)
        value = first(name)
        return value if value is not None else second(name)

    lines = text.split("\n")
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].rstrip("\r").lstrip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        m = _KEY.match(line)
        if m is None:
            out.problems.append((number, "expected KEY=VALUE (a name of letters, digits, _)"))
            continue
        key, rest = m.group(), line[m.end() :].lstrip(" \t")
        if not rest or rest.startswith("#"):
            value = lookup(key)  # a bare KEY: from the environment, if set
            if value is not None:
                out.values[key], out.lines[key] = value, number
            continue
        if not rest.startswith("="):
            problem(number, key, "expected KEY=VALUE")
            continue
        raw = rest[1:].lstrip(" \t")
        quote = raw[:1] if raw[:1] in ("'", '"') else ""
        if quote:
            body, tail, used = _quoted(raw[1:], quote, lines, i)
            if body is None:
                problem(number, key, f"the {quote} quote is never closed")
                break
            i += used
            if tail.strip() and not tail.lstrip().startswith("#"):
                problem(number, key, "text after the closing quote")
                continue
        else:
            body = re.split(r"\s#", raw, maxsplit=1)[0].rstrip()
        if quote == "'":
            value = body
        else:
            if quote == '"':
                body = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e[1], "\\" + e[1]), body)
            try:
                res = interpolate(body, resolve, hide_names=bool(SECRET_NAME.search(key)))
            except InterpolationError as exc:
                why = "a $ reference cannot be substituted (write $$ for a literal $)"
                problem(number, key, str(exc) if names else why)
                continue
            value = res.value
        out.values[key], out.lines[key] = value, number
    return out


def _quoted(first: str, quote: str, lines: list[str], nxt: int) -> tuple[str | None, str, int]:
    """The text up to the closing quote (lines after `first` joined with newlines), what
    follows it on its line, and how many more lines it took; (None, "", 0) when unclosed."""
    parts, text, used = [], first, 0
    while True:
        end = _find_close(text, quote)
        if end >= 0:
            parts.append(text[:end])
            return "\n".join(parts), text[end + 1 :], used
        if nxt + used >= len(lines):
            return None, "", 0
        parts.append(text)
        text = lines[nxt + used].rstrip("\r")
        used += 1


def _find_close(text: str, quote: str) -> int:
    i = 0
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return -1
