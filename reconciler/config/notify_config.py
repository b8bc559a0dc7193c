"""The `notify:` block of the desired-state file, `--notify URL` and $RECONCILER_NOTIFY_URLS_FILE:
where notifications go and which. Read by the CLI (`run`) and on each reload; the URLs' secrets
come from the environment (`${SLACK_URL}`) or a file (`url_file:`), and are marked secret here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from reconciler.config import secrets
from reconciler.config.schema_values import Bool, Duration, Int, StrictModel
from reconciler.errors import DesiredStateError

NotifyKind = Literal[
    "rollout_failed",
    "rolled_back",
    "paused",
    "rollout_completed",
    "crash_loop",
    "denied",
    "engine_unreachable",
    "reload_rejected",
    "config_rejected",
    "drift_corrected",
    "image_update",
]
ALL_KINDS: tuple[str, ...] = NotifyKind.__args__  # type: ignore[attr-defined]
DEFAULT_KINDS = frozenset(ALL_KINDS) - {"rollout_completed"}  # completed rollouts: opt-in
URLS_FILE_ENV = "RECONCILER_NOTIFY_URLS_FILE"


class UrlFileDef(StrictModel):
    """A URL kept in a file of its own (a secret file: `/run/secrets/slack_url`)."""

    url_file: str


class NotifyDef(StrictModel):
    """`notify:` in the file."""

    urls: list[str | UrlFileDef] = []
    kinds: list[NotifyKind] | None = None  # default: every kind but rollout_completed
    repeat_interval: Duration = 3600.0  # a condition still firing is told again after this
    rate_limit: Int = Field(default=20, ge=1)  # notifications per minute, at most
    queue_size: Int = Field(default=100, ge=1)  # waiting to be sent; beyond: dropped, counted
    engine_unreachable_after: Duration = 60.0  # the engine gone this long is a condition
    send_resolved: Bool = True

    @model_validator(mode="after")
    def _some_url(self) -> NotifyDef:
        if not self.urls:
            raise ValueError("urls: give at least one notification URL (Apprise's form)")
        return self


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """What the notification sink needs; `urls` are secrets (never print them)."""

    urls: tuple[str, ...] = ()
    kinds: frozenset[str] = DEFAULT_KINDS
    repeat_interval: float = 3600.0
    rate_limit: int = 20
    queue_size: int = 100
    engine_unreachable_after: float = 60.0
    send_resolved: bool = True


def from_definition(block: NotifyDef | None, source: str, base_dir: Path) -> NotifyConfig | None:
    """The block, with each `url_file` read (relative to the file's folder)."""
    if block is None:
        return None
    urls = []
    for item in block.urls:
        if isinstance(item, UrlFileDef):
            path = Path(item.url_file).expanduser()
            urls += _urls_in(path if path.is_absolute() else base_dir / path, source)
        else:
            urls.append(item.strip())
    return NotifyConfig(
        urls=tuple(u for u in urls if u),
        kinds=frozenset(block.kinds) if block.kinds is not None else DEFAULT_KINDS,
        repeat_interval=block.repeat_interval,
        rate_limit=block.rate_limit,
        queue_size=block.queue_size,
        engine_unreachable_after=block.engine_unreachable_after,
        send_resolved=block.send_resolved,
    )


def _urls_in(path: Path, source: str) -> list[str]:
    """One URL a line; blank lines and `#` comments skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DesiredStateError(
            source, [f"notify: cannot read the URL file {path}: {exc.strerror}"]
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolve(
    in_file: NotifyConfig | None,
    flag_urls: Sequence[str] = (),
    environ: dict[str, str] | None = None,
) -> NotifyConfig | None:
    """The file's block, plus `--notify URL`s and the URLs of $RECONCILER_NOTIFY_URLS_FILE
    (the block's settings, else the defaults); None when no URL is given anywhere. Every URL
    is marked secret: logs and the CLI's output never show it."""
    env = os.environ if environ is None else environ
    extra = [u.strip() for u in flag_urls if u.strip()]
    urls_file = env.get(URLS_FILE_ENV, "")
    if urls_file:
        extra += _urls_in(Path(urls_file), URLS_FILE_ENV)
    base = in_file or NotifyConfig()
    urls = tuple(dict.fromkeys((*base.urls, *extra)))  # once each, in order
    if not urls:
        return None
    secrets.mark(urls)
    return replace(base, urls=urls)
