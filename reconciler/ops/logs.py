"""structlog configuration: JSON lines for journald, readable lines on a terminal."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEY = re.compile(r"pass|secret|token|credential|api_?key|private", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: blank the value of any field whose key looks like a secret."""
    for key in list(event):
        if SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Log to stdout; JSON when stdout is not a terminal unless `json` says otherwise."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # APScheduler logs through the standard library: keep its warnings, in the same stream.
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s")
