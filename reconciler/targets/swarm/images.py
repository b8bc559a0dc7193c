"""Update policies (x-reconciler.update) on Swarm: which `repo:tag@digest` each service's tasks
run (the policy's choice, or the lock file's with --locked), the registry looked at on each
resync when due, and a version Swarm rolled back (update_config's failure_action) held.
Owned by targets/swarm.SwarmTarget; the decisions are core.image_policy's, shared with the host.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

import structlog

from reconciler.core import image_policy as ip
from reconciler.core import images as im
from reconciler.core.desired import LABEL_SPEC_HASH, ServiceSpec
from reconciler.core.swarm_model import SwarmDesired, SwarmObserved, with_image
from reconciler.engine.swarm.engine import SwarmEngine
from reconciler.errors import ActionFailed
from reconciler.ops.image_lock import ImageLock, lock_path, write_lock
from reconciler.ops.image_state import ImageStates
from reconciler.targets.base import Settings
from reconciler.targets.image_updates import PolicyLooker

log = structlog.get_logger("reconciler")
PAUSED = ("paused",)  # Swarm's UpdateStatus.State of an update that stopped (rollbacks: held)


class SwarmImages:
    """One project's followed images on Swarm."""

    def __init__(self, engine: SwarmEngine, project: str, settings: Settings) -> None:
        self.engine = engine
        self.states = ImageStates(project, settings.state_dir)
        self.looker = PolicyLooker(
            engine, record=settings.record, metrics=settings.metrics, clock=time.time
        )
        self.pull_timeout = settings.pull_timeout
        self.locked = dict(settings.locked or {})
        self.lock_file = lock_path(project, settings.state_dir, settings.image_lock)
        self._next: dict[str, float] = {}  # service -> when to look again
        self._errors: dict[str, str] = {}

    @staticmethod
    def policies(desired: SwarmDesired) -> dict[str, ServiceSpec]:
        """The services with an update policy (their single-host rendering holds it)."""
        host = desired.host.services if desired.host is not None else ()
        return {s.name: s for s in host if s.update_policy is not None and s.build is None}

    def image_of(self, name: str, host: ServiceSpec | None) -> str:
        """What the service's tasks run: the locked ref, the policy's choice, or ""."""
        if name in self.locked:
            return self.locked[name]
        if host is None:
            return ""
        rec = self.states.get(name, host.image)
        return f"{im.repository(host.image)}:{rec.tag}@{rec.digest}" if rec.digest else ""

    def resolve(self, desired: SwarmDesired) -> SwarmDesired:
        """`desired` with each followed (or locked) service pinned to its chosen image."""
        policies = self.policies(desired)
        services = []
        for svc in desired.services:
            image = self.image_of(svc.name, policies.get(svc.name))
            services.append(with_image(svc, image) if image else svc)
        return replace(desired, services=tuple(services))

    def look(self, desired: SwarmDesired, now: float) -> bool:
        """Ask the registry for each followed service that is due (the daemon on schedule,
        `apply` once: it resolves the range as the daemon would); True when a version was
        taken (the pass then plans with it)."""
        if self.locked:
            return False
        taken = False
        for name, host in self.policies(desired).items():
            if now < self._next.get(name, 0.0):
                continue
            every = host.pull_every_s or ip.DEFAULT_CHECK_EVERY_S
            rec = self.states.get(name, host.image)
            if rec.pending:  # Swarm is still rolling the last one out
                self._next[name] = now + every
                continue
            try:
                look = self.looker.look(host, rec, None)
                take = look.decision.take
                if take is not None:
                    # By digest: the task's `repo:tag@digest` then finds it on this node.
                    self.engine.pull(f"{im.repository(host.image)}@{take.digest}",
                                     self.pull_timeout)  # fmt: skip
                    self.states.put(name, rec.taken(take.tag, take.digest))
                    self.looker.taken(host, take.ref, look.running)
                    taken = True
                self._errors.pop(name, None)
                self._next[name] = now + ip.recheck_after(
                    look.decision, host.update_policy or ip.UpdatePolicy(), now, every
                )
            except ActionFailed as exc:
                self._errors[name] = str(exc)
                self._next[name] = now + min(every, 30.0)
                log.warning("image check failed; what runs is left alone", service=name,
                            image=host.image, error=str(exc))  # fmt: skip
        return taken

    def judge(
        self, desired: SwarmDesired, observed: SwarmObserved, failed: Mapping[str, str]
    ) -> None:
        """A taken version Swarm rolled back is held (the previous one chosen again); one
        whose update completed is settled."""
        resolved = {s.name: s for s in self.resolve(desired).services}
        live = {s.name: s for s in observed.services}
        for name, host in self.policies(desired).items():
            rec = self.states.get(name, host.image)
            svc = resolved.get(name)
            if not rec.pending or svc is None:
                continue
            if failed.get(name) == svc.spec_hash:
                self.states.put(name, rec.rolled_back())
                self.looker.ended(name, host.image, rec.pending, "rolled_back")
            else:
                obs = live.get(svc.full_name)
                if obs is None or obs.label(LABEL_SPEC_HASH) != svc.spec_hash:
                    continue
                if obs.update_state in ("completed", ""):
                    self.states.put(name, replace(rec, pending=""))
                    self.looker.ended(name, host.image, rec.pending, "completed")
                elif obs.update_state in PAUSED:  # failure_action pause, or a failed rollback
                    # Settled as the host settles a paused rollout: no longer pending (the
                    # registry is asked again, a newer version may be taken), not held.
                    self.states.put(name, replace(rec, pending=""))
                    self.looker.ended(name, host.image, rec.pending, "paused")
        self.write_lock(desired)

    def write_lock(self, desired: SwarmDesired) -> None:
        """The lock file: every service's image as its tasks are asked to run it."""
        if self.locked:
            return
        images = {}
        for svc in self.resolve(desired).services:
            image = str(svc.spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image"))
            if "@" in image:
                images[svc.name] = image
        try:
            write_lock(self.lock_file, ImageLock(desired.project, desired.image_requests, images))
        except OSError as exc:
            log.warning("image lock file not written", path=str(self.lock_file), error=str(exc))

    def status(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        records = self.states.all()
        for name in self.looker.looks:
            held = list(records[name].held) if name in records else []
            out[name] = dict(
                self.looker.status(name) or {}, error=self._errors.get(name), held=held
            )
        return out
