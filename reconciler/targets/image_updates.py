"""One look at the registry for a service with an update policy (x-reconciler.update), for
both targets: list the tags, read the candidates' digests and creation times, let
core.image_policy decide, and say why each newer version was skipped (metric, Event, log).
Called by the host's ImageFollower and the Swarm adapter on their image keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import structlog

from reconciler.core import image_policy as ip
from reconciler.core.desired import ServiceSpec
from reconciler.core.events import Event, Record
from reconciler.core.images import repository, tag_of
from reconciler.ops.image_state import ImageRecord, ImageStates
from reconciler.ops.status import short_ref

if TYPE_CHECKING:
    from reconciler.ops.metrics import Metrics

log = structlog.get_logger("reconciler")
MAX_CANDIDATES = 5  # versions read (digest, creation time) per look, newest first


class RegistryReader(Protocol):
    def registry_tags(self, image: str) -> list[str]: ...
    def published(self, image: str, tag: str) -> ip.Published: ...


@dataclass(frozen=True)
class Look:
    """A look's result, and what `status` shows of it."""

    decision: ip.Decision
    running: str  # tag@digest
    checked_at: float


class PolicyLooker:
    """Looks for one project; remembers what it reported so each skip is said once."""

    def __init__(
        self,
        registry: RegistryReader,
        *,
        record: Record,
        metrics: Metrics | None,
        clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.record = record
        self.metrics = metrics
        self.clock = clock
        self._said: dict[str, set[tuple[str, str]]] = {}  # service -> (ref, reason) reported
        self.looks: dict[str, Look] = {}

    def look(self, svc: ServiceSpec, state: ImageRecord, local_digest: str | None) -> Look:
        """What the registry offers `svc` now, decided; raise ActionFailed when it fails."""
        policy = svc.update_policy or ip.UpdatePolicy()
        file_tag = tag_of(svc.image)
        running_tag = state.tag or file_tag
        running_digest = state.digest or local_digest or ""
        running = ip.Published(running_tag, running_digest) if running_digest else None
        now = self.clock()
        out_of_range = ""
        if policy.semver is None:
            newest = self.registry.published(svc.image, file_tag)
            candidates = [newest] if newest.digest and newest.digest != running_digest else []
        else:
            tags = self.registry.registry_tags(svc.image)
            newer = [
                t
                for t in ip.in_range(tags, policy, file_tag)
                if t == running_tag or ip.newer(t, running_tag, policy, file_tag)
            ]
            candidates = [self.registry.published(svc.image, t) for t in newer[:MAX_CANDIDATES]]
            top = ip.newest_version(tags, policy, file_tag)
            if top and top not in newer and ip.newer(top, running_tag, policy, file_tag):
                out_of_range = top
        decision = ip.decide(
            running, candidates, policy, state.held, now, out_of_range=out_of_range
        )
        self._report(svc, decision)
        result = Look(decision, running.ref if running else "", now)
        self.looks[svc.name] = result
        return result

    def _report(self, svc: ServiceSpec, decision: ip.Decision) -> None:
        said = self._said.setdefault(svc.name, set())
        now_said: set[tuple[str, str]] = {(ref, why) for ref, why, _ in decision.skipped}
        repo = repository(svc.image)
        for ref, reason, detail in decision.skipped:
            if (ref, reason) in said:
                continue
            if self.metrics is not None:
                self.metrics.image_update_skipped.labels(svc.name, reason).inc()
            log.info("image update skipped", service=svc.name, image=f"{repo}:{ref}",
                     reason=reason, detail=detail)  # fmt: skip
            self.record(
                Event(
                    "image_update",
                    service=svc.name,
                    message=f"{repo}:{ref} not taken ({reason}: {detail})",
                    trigger="image policy",
                    cause=reason,
                    result="skipped",
                    data={"image": f"{repo}:{ref}", "reason": reason},
                )
            )
        self._said[svc.name] = now_said  # a reason that ended may be said again later

    def taken(self, svc: ServiceSpec, ref: str, running: str) -> None:
        """A version was chosen and its rollout starts."""
        repo = repository(svc.image)
        log.info("image update taken", service=svc.name, image=f"{repo}:{ref}", running=running)
        self.record(
            Event(
                "image_update",
                service=svc.name,
                message=f"rolling out {repo}:{ref} (was {running or 'nothing'})",
                trigger="image policy",
                cause="newest allowed version",
                result="started",  # told once it runs (`ended`): a rollback is the news then
                data={"image": f"{repo}:{ref}", "previous": running},
            )
        )

    def ended(self, svc_name: str, image: str, ref: str, kind: str) -> None:
        """The rollout of a taken version ended: completed, rolled_back (held) or paused.
        A completed one is what runs now (`status` says so before the next look)."""
        found = self.looks.get(svc_name)
        if kind == "completed" and found is not None:
            self.looks[svc_name] = replace(found, running=ref)
        text = {
            "completed": "runs",
            "rolled_back": "rolled back and held (not retried until a newer version)",
        }.get(kind, f"rollout {kind}")
        self.record(
            Event(
                "image_update",
                service=svc_name,
                message=f"{repository(image)}:{ref} {text}",
                trigger="image policy",
                cause=f"rollout {kind}",
                result="success" if kind == "completed" else "error",
                data={"image": f"{repository(image)}:{ref}"},
            )
        )

    def status(self, name: str) -> dict[str, object] | None:
        """running / newest allowed / newest published / skipped, JSON-ready."""
        found = self.looks.get(name)
        if found is None:
            return None
        d = found.decision
        return {
            "running": found.running,
            "newest_allowed": d.newest_allowed,
            "newest_published": d.newest_published,
            "skipped": [f"{ref[:32]} ({reason}: {detail})" for ref, reason, detail in d.skipped],
            "checked_at": found.checked_at,
        }


def policy_notes(services: Iterable[ServiceSpec], states: ImageStates) -> list[str]:
    """`plan`'s notes on update policies: the versions held (their rollout failed: not taken
    again until a newer one is published in the range) and a version rolling out now."""
    out = []
    for svc in services:
        if svc.update_policy is None:
            continue
        rec = states.get(svc.name, svc.image)
        within = svc.update_policy.semver or tag_of(svc.image)
        if rec.held:
            refs = ", ".join(short_ref(ref) for ref in rec.held[-3:])
            out.append(
                f"service {svc.name}: {repository(svc.image)} {refs} held (its rollout failed; "
                f"a newer version in {within} ends the hold)"
            )
        if rec.pending:
            out.append(f"service {svc.name}: {repository(svc.image)}:{short_ref(rec.pending)} "
                       "is rolling out (taken by the update policy)")  # fmt: skip
    return out
