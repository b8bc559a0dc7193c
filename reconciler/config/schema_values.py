"""The value types and parsers of the file format's fields: durations, sizes, pull policies,
YAML 1.2 booleans and integers (or their text from `${VAR}`), and the strict model base.

Used by config/schema.py and config/schema_service.py; the loader's rules call the parsers.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<u>ms|us|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a compose duration such as `1m30s` or `500ms`."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 10s or 1m30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError("must be a finite duration such as 10s or 1m30s")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m["n"]) * _UNIT_S[m["u"]]
            pos = m.end()
        if text and pos == len(text) and math.isfinite(total):
            return total
    # The value is not echoed: it may have been interpolated from a secret.
    raise ValueError("must be a duration such as 10s, 1m30s or 500ms")


PULL_EVERY_MIN_S = 1.0
PULL_EVERY_MAX_S = 365 * 86400.0  # longer is "never" in practice; beyond it timers overflow
_PERIODS = {"daily": 86400.0, "weekly": 7 * 86400.0}


def parse_pull_policy(value: str) -> tuple[Literal["missing", "always", "never"], float | None]:
    """compose's pull_policy -> (what a create does, how often the tag is checked or None).

    always, missing (if_not_present), never; build (rebuild on every create); daily, weekly
    and every_<duration> (`every_5m`, `every_12h`) follow the tag: missing at create, then
    the registry is asked on that schedule.
    """
    text = value.strip()
    if text in ("always", "never", "missing"):
        return text, None  # type: ignore[return-value]
    if text == "if_not_present":
        return "missing", None
    if text == "build":
        return "always", None
    if text in _PERIODS:
        return "missing", _PERIODS[text]
    if text.startswith("every_"):
        spelled = text.removeprefix("every_")
        try:
            seconds = parse_duration(spelled)
        except ValueError:
            if re.fullmatch(r"[\d.]+[dw]", spelled):  # Go's durations (compose's) stop at h
                raise ValueError(
                    "every_<duration> takes h, m, s, ms (as compose): write days in hours "
                    "(every_24h, every_168h) or use daily / weekly"
                ) from None
            raise ValueError(
                "every_<duration> needs a duration such as every_5m, every_12h or every_1h30m"
            ) from None
        if not PULL_EVERY_MIN_S <= seconds <= PULL_EVERY_MAX_S:
            raise ValueError(
                f"every_<duration> must be between {PULL_EVERY_MIN_S:g}s and "
                f"{PULL_EVERY_MAX_S / 3600:g}h (365 days), such as every_5m or every_12h"
            )
        return "missing", seconds
    raise ValueError(
        "must be always, missing, never, build, daily, weekly or every_<duration> (every_5m)"
    )


def _integer(value: Any) -> Any:
    """An integer, or its decimal text (what `${VAR}` gives); never true/false or 1.5."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,30}", value.strip()):
        return int(value)
    raise ValueError("must be an integer")


_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")


def _boolean(value: Any) -> Any:
    """true or false (YAML 1.2: `yes`, `on`, 1 are not booleans); their text from `${VAR}`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip() in _TRUE + _FALSE:
        return value.strip() in _TRUE
    raise ValueError("must be true or false")


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


_BYTES = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<u>[kmgtp]?)(?:i?b)?", re.IGNORECASE)


def parse_bytes(value: Any) -> int:
    """Bytes from an integer or compose's `512m`, `1g`, `1.5gb`, `100k` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512m or 1g, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _BYTES.fullmatch(value.strip())
        if m:
            power = " kmgtp".index(m["u"].lower() or " ")
            size = float(m["n"]) * 1024**power
            if size < 2**63:
                return int(size)
    raise ValueError("must be a size such as 512m, 1g or a number of bytes")


def _cpus(value: Any) -> Any:
    """A number of CPUs: 0.5, 2, or their text ("0.5", as compose writes it)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of CPUs such as 0.5, not true/false")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError("must be a number of CPUs such as 0.5") from None
    return value


def _swap_bytes(value: Any) -> Any:
    """memswap_limit: a size, or -1 (unlimited swap), as compose and Docker take it."""
    if not isinstance(value, bool) and str(value).strip() == "-1":
        return -1
    return parse_bytes(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
SwapBytes = Annotated[int, BeforeValidator(_swap_bytes)]
Int = Annotated[int, BeforeValidator(_integer)]


def _file_mode(value: Any) -> Any:
    """A mode in octal, as Docker and chmod read it: `1777`, `0o1777` or `01777` (the loader
    hands the text as written; a number's decimal digits are read as octal digits)."""
    if isinstance(value, bool):
        raise ValueError("must be an octal mode such as 1777 or 0o1777")
    text = str(value).strip().lower().removeprefix("0o")
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError("must be an octal mode such as 1777 or 0o1777") from None
    if not 0 <= mode <= 0o7777:
        raise ValueError("must be an octal mode between 0 and 7777")
    return mode


FileMode = Annotated[int, BeforeValidator(_file_mode)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Scalar = str | int | float | bool
Cpus = Annotated[float, BeforeValidator(_cpus), Field(gt=0, allow_inf_nan=False)]


class StrictModel(BaseModel):
    """Every definition: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
