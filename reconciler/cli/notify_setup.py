"""`reconciler run`'s notifications: the file's `notify:` block, `--notify URL` and
$RECONCILER_NOTIFY_URLS_FILE made into the `ops.notifications` sink of the daemon's event
stream, and read again after each accepted reload. Called by `cli.commands._run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from reconciler.config import notify_config
from reconciler.config.loader import load_parts
from reconciler.errors import DesiredStateError
from reconciler.ops.metrics import Metrics
from reconciler.ops.notifications import Notifications
from reconciler.runtime.conditions import DaemonConditions

log = structlog.get_logger("reconciler")


def read(path: Path, flag_urls: list[str] | None) -> notify_config.NotifyConfig | None:
    """The block of the file at `path` with the flag's and the URL file's URLs (None: none)."""
    parsed = load_parts(path)
    block = notify_config.from_definition(parsed.definition.notify, str(path), parsed.base_dir)
    return notify_config.resolve(block, flag_urls or ())


def sink(
    args: argparse.Namespace, project: str, metrics: Metrics
) -> tuple[Notifications | None, notify_config.NotifyConfig | None]:
    """The sink (None when no URL is configured) and the settings it was made with."""
    config = read(args.file, getattr(args, "notify", None))
    if config is None:
        return None, None
    sender = Notifications(config, lambda: project, metrics)
    log.info(
        "notifications on",
        receivers=len(config.urls),
        kinds=sorted(config.kinds),
        repeat_interval_s=config.repeat_interval,
    )
    return sender, config


def reread(args: argparse.Namespace, sender: Notifications, conditions: DaemonConditions) -> None:
    """After an accepted reload: the block may have changed (a bad one keeps the last)."""
    try:
        config = read(args.file, getattr(args, "notify", None))
    except (DesiredStateError, OSError) as exc:
        log.error("notify settings not reloaded; keeping the last", error=str(exc))
        return
    if config is not None:
        sender.configure(config)
        conditions.engine_after = config.engine_unreachable_after
