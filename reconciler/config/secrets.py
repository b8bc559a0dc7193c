"""Values that must never be printed: what a secret-looking variable interpolated into the file.

The loader marks them here (and on `DesiredState.secrets`); the log processor and the
CLI's output (`redacted_output`: every line the CLI prints) scrub them with `redact`. The
set only grows while the process lives, so a value stays hidden after a reload replaced it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, cast

REDACTED = "[redacted]"
MIN_LENGTH = 3  # shorter values would blank unrelated text; the loader never echoes them anyway
_lock = threading.Lock()
_known: frozenset[str] = frozenset()


def mark(values: Iterable[str]) -> None:
    """Remember values (and their repr forms) that nothing may print."""
    global _known
    new = {v for v in values if len(v) >= MIN_LENGTH}
    new |= {repr(v)[1:-1] for v in new}
    if new - _known:
        with _lock:
            _known = _known | new


def forget() -> None:
    """Forget every marked value (a process that loads another project; each test)."""
    global _known
    with _lock:
        _known = frozenset()


def known() -> frozenset[str]:
    return _known


def redact(text: str, values: Iterable[str] | None = None) -> str:
    """`text` with every marked value (or every one of `values`) replaced by [redacted]."""
    pool = _known if values is None else values
    for value in sorted((v for v in pool if v and v in text), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


class _Redacting:
    """A text stream writing through `redact` (everything else is the wrapped stream's)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """sys.stdout and sys.stderr scrubbed of every marked value while the block runs: one
    redaction for every printer (plan, apply, down, notes, errors), whatever it prints."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cast(TextIO, _Redacting(out)), cast(TextIO, _Redacting(err))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
