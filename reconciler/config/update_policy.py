"""A service's image update policy, read from its `x-reconciler: {update: ...}` extension (compose
ignores `x-` keys, so the same file still runs under compose). Called by the loader before the
extension fields are stripped; each mistake is reported with its file position.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, ValidationError

from reconciler.config.report import Report
from reconciler.config.schema_messages import schema_message
from reconciler.config.schema_values import Bool, Duration, StrictModel, parse_duration
from reconciler.config.yamlread import Document
from reconciler.core import image_policy as ip
from reconciler.core.images import tag_of

EXTENSION = "x-reconciler"


class WindowDef(StrictModel):
    cron: str
    duration: Duration
    timezone: str = "UTC"


class UpdateDef(StrictModel):
    semver: str | None = None
    prerelease: Bool = False
    suffix: str | None = None
    cooldown: str | float = 0.0  # a duration; days allowed (`3d`), as Renovate's `3 days`
    window: WindowDef | None = None


class ExtensionDef(StrictModel):
    """`x-reconciler` of a service: other keys are left for other features (and future ones)."""

    model_config = ConfigDict(extra="allow")
    update: UpdateDef | None = None


def cooldown_seconds(value: str | float) -> float:
    """`3d`, `12h`, `1d12h` or a compose duration -> seconds."""
    if isinstance(value, str) and "d" in value:
        days, _, rest = value.strip().partition("d")
        if not days.replace(".", "", 1).isdigit():
            raise ValueError("must be a duration such as 3d, 12h or 1d12h")
        return float(days) * 86400 + (parse_duration(rest) if rest else 0.0)
    return parse_duration(value)


def update_policies(
    data: dict[str, Any], doc: Document, report: Report
) -> dict[str, ip.UpdatePolicy]:
    """service -> its UpdatePolicy, for the services that have one; problems go to `report`."""
    out: dict[str, ip.UpdatePolicy] = {}
    services = data.get("services")
    if not isinstance(services, dict):
        return out
    for name, body in services.items():
        if not isinstance(body, dict) or EXTENSION not in body:
            continue
        at = ("services", name, EXTENSION)
        try:
            ext = ExtensionDef.model_validate(body[EXTENSION] or {})
        except ValidationError as exc:
            for err in exc.errors():
                path = (*at, *err["loc"])
                report.add(schema_message(err), path, doc.mark(path) or doc.mark(at))
            continue
        if ext.update is None:
            continue
        try:
            out[name] = _policy(ext.update, body)
        except ValueError as exc:
            path = (*at, "update")
            key = (*path, *_KeyError.key_of(exc))  # its own key's line, else `update:`'s
            report.add(str(exc), path, doc.mark(key, key=True))
    return out


class _KeyError(ValueError):
    """A bad value of one key of `update` (its path under `update`, for its line)."""

    def __init__(self, key: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.key = key

    @staticmethod
    def key_of(exc: ValueError) -> tuple[str, ...]:
        return exc.key if isinstance(exc, _KeyError) else ()


# check_window's message starts with the key it is about.
_WINDOW_KEYS = ("cron", "timezone", "duration")


def _policy(u: UpdateDef, body: dict[str, Any]) -> ip.UpdatePolicy:
    image = body.get("image")
    if not isinstance(image, str) or body.get("build") is not None:
        raise ValueError("needs an image: from a registry (and no build:) to follow")
    if "@" in image:
        raise ValueError(f"image {image} is pinned to a digest: nothing to follow")
    if u.semver is not None:
        try:
            ip.check_range(u.semver)
        except ValueError as exc:
            raise _KeyError(("semver",), str(exc)) from None
        tag = tag_of(image)
        if ip.split_tag(tag) is None:
            raise ValueError(
                f"semver needs the image's tag to be a version (such as 11.6.0 or "
                f"2.8.14-alpine), the one to start from; {image} has tag {tag}"
            )
    window = None
    if u.window is not None:
        window = ip.Window(u.window.cron, u.window.duration, u.window.timezone)
        try:
            ip.check_window(window)
        except ValueError as exc:
            first = str(exc).split(" ", 1)[0]
            key = ("window", first) if first in _WINDOW_KEYS else ("window",)
            raise _KeyError(key, str(exc)) from None
    try:
        cooldown = cooldown_seconds(u.cooldown)
    except ValueError as exc:
        raise _KeyError(("cooldown",), f"cooldown {exc}") from None
    return ip.UpdatePolicy(
        semver=u.semver,
        prerelease=u.prerelease,
        suffix=u.suffix,
        cooldown_s=cooldown,
        window=window,
    )
