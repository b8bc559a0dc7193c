"""Image update policies (`x-reconciler.update`), as pure decisions: which registry tag a
service follows inside a semver range, and whether a newer version (or a new digest of a
followed tag) is taken now or skipped (range, cooldown, window, held). No I/O; the clock is an
argument. Called by the targets' image followers (host and Swarm) and by `status`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import nodesemver
from croniter import croniter

SkipReason = Literal["cooldown", "window", "range", "held"]
DEFAULT_CHECK_EVERY_S = 3600.0  # a range without a periodic pull_policy: the registry hourly

# `1.2.3`, `v1.2.3`, `1.2.3-rc1`, `1.2.3-alpine`, `1.2.3-rc1-alpine`: the version's three
# numbers, then the tail that holds a pre-release and/or the variant suffix. Only the split is
# done here; nodesemver parses, orders and matches the version itself.
_TAG = re.compile(r"^(?P<v>[vV]?)(?P<core>\d+\.\d+\.\d+)(?P<tail>.*)$")
# What a pre-release looks like in a tag (`-rc1`, `-beta.2`, `-alpha`): a variant such as
# `-alpine` or `-slim` never is one, even when pre-releases are asked for.
_PRE = re.compile(
    r"^-(alpha|beta|rc|pre|preview|dev|next|canary|a|b)([.-]?\d[0-9A-Za-z]*)?(\.[0-9A-Za-z]+)*$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window: opens at each time `cron` names (in `timezone`), for `duration_s`."""

    cron: str
    duration_s: float
    timezone: str = "UTC"

    def text(self) -> str:
        return f"{self.cron} ({self.timezone}) for {self.duration_s:g}s"


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a followed service moves: inside `semver` (None: the file's own tag, new digests
    only), pre-releases only when asked, a version `cooldown_s` old at least, started only
    inside `window`. `suffix` None: the file's tag's own (`-alpine` of `2.8.14-alpine`)."""

    semver: str | None = None
    prerelease: bool = False
    suffix: str | None = None
    cooldown_s: float = 0.0
    window: Window | None = None


def resolution(image: str, policy: UpdatePolicy | None) -> str:
    """What decides which image a service resolves to: the file's image and, under a policy,
    its range, pre-release and suffix (`app:1.2.0 semver ^1`). Cooldown and window only say
    when a move happens, not where it may go: they are left out."""
    if policy is None:
        return image
    parts = [image, f"semver {policy.semver}" if policy.semver else "digest"]
    if policy.prerelease:
        parts.append("prerelease")
    if policy.suffix is not None:
        parts.append(f"suffix {policy.suffix!r}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Published:
    """One tag as the registry has it now: its digest, and when the image was built."""

    tag: str
    digest: str
    created: float | None = None  # epoch seconds (the image config's `created`); None unknown

    @property
    def ref(self) -> str:
        return f"{self.tag}@{self.digest}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What one look at the registry concluded for one service."""

    take: Published | None = None  # roll out to this now
    newest_allowed: str = ""  # tag@digest the policy allows (the window aside); "" none
    newest_published: str = ""  # the newest version (any range) or the tag's newest digest
    skipped: tuple[tuple[str, SkipReason, str], ...] = ()  # (tag or ref, reason, detail)


# --------------------------------------------------------------------------- windows


def check_window(window: Window) -> None:
    """ValueError when the cron expression or the time zone is not valid."""
    if not croniter.is_valid(window.cron):
        raise ValueError(f"cron {window.cron!r} is not a valid cron expression (5 fields)")
    try:
        ZoneInfo(window.timezone)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"timezone {window.timezone!r} is not a known IANA time zone") from exc
    if window.duration_s <= 0:
        raise ValueError("duration must be longer than 0s")


def window_open(window: Window, now: float) -> bool:
    """Whether `now` (epoch seconds) falls inside an opening of the window."""
    local = datetime.fromtimestamp(now, ZoneInfo(window.timezone))
    # The opening before `now` (or at it): open while now < that + duration.
    start = croniter(window.cron, local + timedelta(seconds=1)).get_prev(datetime)
    return start.timestamp() <= now < start.timestamp() + window.duration_s


def next_opening(window: Window, now: float) -> float:
    """When the window next opens after `now` (epoch seconds); `now` when it is open."""
    if window_open(window, now):
        return now
    local = datetime.fromtimestamp(now, ZoneInfo(window.timezone))
    return float(croniter(window.cron, local).get_next(datetime).timestamp())


# --------------------------------------------------------------------------- tags


def split_tag(tag: str) -> tuple[str, str, str] | None:
    """(`v` or "", "1.2.3", tail) of a version tag; None for a tag that is not one."""
    m = _TAG.match(tag)
    return (m["v"], m["core"], m["tail"]) if m else None


def suffix_of(tag: str) -> str:
    """The variant suffix of a file's tag: `-alpine` of `2.8.14-alpine`, "" of `11.6.0`."""
    parts = split_tag(tag)
    return parts[2] if parts else ""


def version_of(tag: str, suffix: str, prerelease: bool) -> nodesemver.SemVer | None:
    """The semantic version a tag names under `suffix`, or None: not a version tag, another
    suffix, or a pre-release when they are not asked for."""
    parts = split_tag(tag)
    if parts is None:
        return None
    _, core, tail = parts
    if not tail.endswith(suffix):
        return None
    pre = tail[: len(tail) - len(suffix)] if suffix else tail
    if pre and (not prerelease or not _PRE.match(pre)):
        return None
    try:
        return nodesemver.make_semver(core + pre, loose=False)
    except ValueError:
        return None


def versions(
    tags: Iterable[str], suffix: str, prerelease: bool
) -> list[tuple[nodesemver.SemVer, str]]:
    """(version, tag) of every version tag with `suffix`, newest first (`v1.2.3` after `1.2.3`
    when both exist: the plain tag wins a tie)."""
    found = [(v, t) for t in set(tags) if (v := version_of(t, suffix, prerelease)) is not None]
    found.sort(key=lambda vt: (vt[1][:1] in "vV", vt[1]))  # a tie: the plain tag first
    found.sort(key=lambda vt: _Key(vt[0]), reverse=True)  # stable: the tie order is kept
    return found


class _Key:
    """Orders SemVer objects with nodesemver's own comparison."""

    __slots__ = ("v",)

    def __init__(self, v: nodesemver.SemVer) -> None:
        self.v = v

    def __lt__(self, other: _Key) -> bool:
        return bool(self.v.compare(other.v) < 0)


def check_range(expression: str) -> None:
    """ValueError when `expression` is not a semver range (`^11.6`, `~2.8`, `>=2.53 <3`)."""
    try:
        nodesemver.make_range(expression, loose=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"semver {expression!r} is not a valid range: {exc}") from exc


def in_range(tags: Iterable[str], policy: UpdatePolicy, file_tag: str) -> list[str]:
    """The tags inside the policy's range (with the file's suffix), newest first."""
    suffix = suffix_of(file_tag) if policy.suffix is None else policy.suffix
    expression = policy.semver or "*"
    wanted = nodesemver.make_range(expression, loose=False)
    return [
        t
        for v, t in versions(tags, suffix, policy.prerelease)
        if wanted.test(v, include_prerelease=policy.prerelease)
    ]


def newest_version(tags: Iterable[str], policy: UpdatePolicy, file_tag: str) -> str:
    """The newest version tag with the file's suffix, whatever the range ("" none)."""
    suffix = suffix_of(file_tag) if policy.suffix is None else policy.suffix
    found = versions(tags, suffix, policy.prerelease)
    return found[0][1] if found else ""


def newer(tag: str, than: str, policy: UpdatePolicy, file_tag: str) -> bool:
    """Whether version tag `tag` is newer than `than` (a tag that is not a version: True)."""
    suffix = suffix_of(file_tag) if policy.suffix is None else policy.suffix
    a = version_of(tag, suffix, True)
    b = version_of(than, suffix, True)
    if a is None or b is None:
        return b is None and a is not None
    return bool(a.compare(b) > 0)


# --------------------------------------------------------------------------- the decision


def decide(
    running: Published | None,
    candidates: Sequence[Published],
    policy: UpdatePolicy,
    held: Iterable[str],
    now: float,
    *,
    out_of_range: str = "",
    window_is_open: bool | None = None,
) -> Decision:
    """Which candidate (newest first, each newer than what runs) to roll out now.

    A held ref (a version that failed) is passed over; one younger than the cooldown is
    skipped; the first that passes is the newest allowed, taken only while the window is
    open (`window_is_open` None: computed from the policy's window at `now`). `out_of_range`:
    a newer version the range leaves out, reported as skipped for `range`.
    """
    held_refs = set(held)
    skipped: list[tuple[str, SkipReason, str]] = []
    if out_of_range:
        skipped.append((out_of_range, "range", f"outside {policy.semver}"))
    newest = candidates[0].ref if candidates else (running.ref if running else "")
    if out_of_range:
        newest = out_of_range
    allowed: Published | None = None
    for c in candidates:
        if running is not None and c.ref == running.ref:
            break
        if c.ref in held_refs:
            skipped.append((c.ref, "held", "failed its rollout before"))
            continue
        if policy.cooldown_s > 0:
            if c.created is None:
                skipped.append((c.ref, "cooldown", "the registry gives no creation time"))
                continue
            age = now - c.created
            if age < policy.cooldown_s:
                wait = policy.cooldown_s - age
                skipped.append((c.ref, "cooldown", f"published {age:.0f}s ago, {wait:.0f}s to go"))
                continue
        allowed = c
        break
    allowed_ref = allowed.ref if allowed else (running.ref if running else "")
    if allowed is None:
        return Decision(None, allowed_ref, newest, tuple(skipped))
    if policy.window is not None:
        is_open = window_open(policy.window, now) if window_is_open is None else window_is_open
        if not is_open:
            at = next_opening(policy.window, now)
            when = datetime.fromtimestamp(at, ZoneInfo(policy.window.timezone)).isoformat()
            skipped.append((allowed.ref, "window", f"the window opens at {when}"))
            return Decision(None, allowed_ref, newest, tuple(skipped))
    return Decision(allowed, allowed_ref, newest, tuple(skipped))


def recheck_after(decision: Decision, policy: UpdatePolicy, now: float, every_s: float) -> float:
    """Seconds until the next look: the period, or sooner when a cooldown ends or the window
    opens before it (never less than a second)."""
    delay = every_s
    for _, reason, _detail in decision.skipped:
        if reason == "window" and policy.window is not None:
            delay = min(delay, next_opening(policy.window, now) - now)
    return max(1.0, delay)
