"""Following a moving tag (compose's periodic `pull_policy`), as pure decisions.

A service that follows its tag runs a pinned image, `repo:tag@sha256:...` (as Swarm pins
services), the digest the tag had when the daemon last pulled it. The pin is part of the
containers' spec hash and of the service's revision, so a new digest is rolled out (and,
failing, rolled back and held) as any other new revision. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from reconciler.core.desired import DesiredState, ServiceSpec

CHECK_BACKOFF_INITIAL_S = 1.0
CHECK_BACKOFF_MAX_S = 300.0


def follows(svc: ServiceSpec) -> bool:
    """Whether the daemon checks the service's tag on a schedule (a periodic pull_policy, or
    an update policy: x-reconciler.update)."""
    followed = svc.pull_every_s is not None or svc.update_policy is not None
    return followed and svc.build is None


def unpinned(image: str) -> str:
    """The reference without its digest: `repo:tag@sha256:x` -> `repo:tag`."""
    return image.partition("@")[0]


def digest_of(image: str) -> str:
    """The digest a reference pins (`sha256:...`), or ""."""
    return image.partition("@")[2]


def pin(svc: ServiceSpec, digest: str) -> ServiceSpec:
    """`svc` running its tag at `digest`: image, replica specs (their hashes) and revision."""
    if not digest or not follows(svc):
        return svc
    ref = f"{unpinned(svc.image)}@{digest}"
    replicas = tuple(replace(c, image=ref, spec_hash="") for c in svc.replicas)
    revision = hashlib.sha256(f"{svc.revision}@{digest}".encode()).hexdigest()
    return replace(svc, image=ref, replicas=replicas, revision=revision)


def pin_tag(svc: ServiceSpec, tag: str, digest: str) -> ServiceSpec:
    """`svc` running another tag of its repository at `digest` (an update policy's choice,
    or a lock file's): `repo:11.7.1@sha256:...`."""
    if not digest:
        return svc
    repo = repository(svc.image)
    ref = f"{repo}:{tag}@{digest}"
    replicas = tuple(replace(c, image=ref, spec_hash="") for c in svc.replicas)
    key = digest if tag == tag_of(svc.image) else f"{tag}@{digest}"  # the file's tag: as pin()
    revision = hashlib.sha256(f"{svc.revision}@{key}".encode()).hexdigest()
    return replace(svc, image=ref, replicas=replicas, revision=revision)


def repository(image: str) -> str:
    """`registry:5000/app` of `registry:5000/app:1.2@sha256:x` (a port is not a tag)."""
    name = unpinned(image)
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail else name


def tag_of(image: str) -> str:
    """The tag of a reference (`latest` when none is written)."""
    name = unpinned(image)
    repo = repository(name)
    return name[len(repo) + 1 :] if name != repo else "latest"


def pin_all(desired: DesiredState, digest: Callable[[str], str | None]) -> DesiredState:
    """Every following service pinned to what `digest(tag)` says the tag is locally."""
    services = tuple(pin(s, digest(s.image) or "") if follows(s) else s for s in desired.services)
    return replace(desired, services=services)


@dataclass(frozen=True, slots=True)
class TagCheck:
    """What the daemon knows of one followed tag (kept in memory; a restart checks at once)."""

    image: str = ""  # the tag asked about
    next_at: float = 0.0  # when to ask the registry again
    checked_at: float | None = None  # the last answer
    newest: str = ""  # the tag's digest in the registry then
    failures: int = 0  # checks or pulls failed in a row
    error: str = ""


def checked(check: TagCheck, now: float, every_s: float, newest: str) -> TagCheck:
    """The registry answered: next look one period on."""
    return TagCheck(check.image, now + every_s, now, newest, 0, "")


def failed(check: TagCheck, now: float, every_s: float, error: str) -> TagCheck:
    """The registry (or the pull) failed: retry after 1 s, 2 s, 4 s ... never later than the
    period itself, nor than CHECK_BACKOFF_MAX_S. What runs is left alone."""
    n = check.failures + 1
    delay = min(CHECK_BACKOFF_INITIAL_S * 2 ** (n - 1), every_s, CHECK_BACKOFF_MAX_S)
    return replace(check, next_at=now + delay, failures=n, error=error)
