"""structlog configuration: JSON lines for journald, readable lines on a terminal.

Our own events go through structlog; records of the standard library's loggers (APScheduler,
docker, urllib3) go through a `ProcessorFormatter` that renders them with the same renderer,
timestamp, level and redaction, so stdout carries one format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from reconciler.config import secrets

SECRET_KEY = re.compile(r"pass|secret|token|credential|api_?key|private", re.IGNORECASE)
REDACTED = "[redacted]"
FOREIGN_LEVEL = logging.WARNING


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: blank the value of any field whose key looks like a secret,
    and every value the loader marked as secret (what a `${DB_PASSWORD}` gave) wherever it
    appears in a text field (Docker's error text may quote a command line)."""
    marked = secrets.known()
    for key in list(event):
        if SECRET_KEY.search(key):
            event[key] = REDACTED
        elif marked and isinstance(event[key], str):
            event[key] = secrets.redact(event[key])
    return event


class _StdoutHandler(logging.StreamHandler):
    """The handler `configure` installs on the root logger (found again by its class)."""


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stdout; JSON when stdout is not a terminal unless `json` says otherwise.

    Safe to call again: the previous stdlib handler is replaced, not duplicated.
    """
    if json is None:
        json = not sys.stdout.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write() per line (print() writes the newline separately), so a line of ours
        # and one from the stdlib handler cannot interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # APScheduler, docker and urllib3 log through the standard library: keep their warnings,
    # rendered like ours, in the same stream.
    handler = _StdoutHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                redact_secrets,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdoutHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(FOREIGN_LEVEL)
