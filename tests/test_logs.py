"""Log output: standard-library records (APScheduler, docker, urllib3) come out of stdout in
the same format as our structlog events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog

from reconciler.ops import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo `logs.configure`: its root handler, the root level, structlog's configuration."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_foreign_record_is_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A stdlib warning is one JSON line with event, level, timestamp and logger."""
    logs.configure("info", json=True)
    logging.getLogger("apscheduler.scheduler").warning("job %s missed", "tick")
    (line,) = json_lines(capsys.readouterr().out)
    assert {"event", "level", "timestamp", "logger"} <= set(line)
    assert line["event"] == "job tick missed"
    assert line["level"] == "warning"
    assert line["logger"] == "apscheduler.scheduler"
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None  # UTC, as ours


def test_foreign_and_own_lines_share_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    """Our event and a foreign one carry the same level and timestamp fields, in one stream."""
    logs.configure("info", json=True)
    structlog.get_logger("reconciler").info("pass", result="success")
    logging.getLogger("docker.api").error("engine said no")
    ours, theirs = json_lines(capsys.readouterr().out)
    assert (ours["event"], ours["level"]) == ("pass", "info")
    assert (theirs["event"], theirs["level"]) == ("engine said no", "error")
    assert len(ours["timestamp"]) == len(theirs["timestamp"])  # same TimeStamper


def test_foreign_info_is_dropped_and_own_info_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """Foreign loggers stay at WARNING (urllib3 chatter), whatever our level is."""
    logs.configure("debug", json=True)
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTP connection")
    logging.getLogger("apscheduler.executors.default").debug("Running job")
    structlog.get_logger("reconciler").debug("ours")
    assert [e["event"] for e in json_lines(capsys.readouterr().out)] == ["ours"]


def test_foreign_exception_and_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign traceback is rendered into the line; bound secret-looking fields are redacted."""
    logs.configure("info", json=True)
    structlog.contextvars.bind_contextvars(registry_password="hunter2")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("apscheduler.executors.default").exception("Job raised")
    out = capsys.readouterr().out
    (line,) = json_lines(out)
    assert "RuntimeError: boom" in line["exception"]
    assert line["registry_password"] == logs.REDACTED
    assert "hunter2" not in out


def test_reconfigure_does_not_duplicate_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", json=True)
    logs.configure("info", json=True)
    logging.getLogger("apscheduler.scheduler").warning("once")
    assert len(json_lines(capsys.readouterr().out)) == 1


def test_console_format_for_foreign_records(capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal format, a foreign record is a readable line naming its logger."""
    logs.configure("info", json=False)
    logging.getLogger("apscheduler.scheduler").warning("console line")
    (line,) = capsys.readouterr().out.splitlines()
    assert "console line" in line and "apscheduler.scheduler" in line and "warn" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
