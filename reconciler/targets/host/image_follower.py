"""Images of a project's services, on their own `image:NAME` keys: pulls and builds a plan
needs (with a deadline, never holding up a heal), followed tags (the registry asked on
schedule; a moved tag is pulled and rolled out), and --prune-images. Owned by the
`Controller`, which routes `image:` keys and EnsureImage steps here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import structlog

from reconciler.core import image_policy as ip
from reconciler.core import images as im
from reconciler.core import rollout as ro
from reconciler.core.actions import EnsureImage
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.events import Record, discard
from reconciler.core.healing import HealingBook
from reconciler.engine.host.engine import Engine
from reconciler.errors import ActionFailed, Deferred
from reconciler.ops.image_lock import ImageLock, write_lock
from reconciler.ops.image_state import ImageStates
from reconciler.ops.state_store import StateStore
from reconciler.targets.base import Outcome, image_key, service_key
from reconciler.targets.host.executor import StepResult
from reconciler.targets.host.image_ledger import ImageLedger
from reconciler.targets.host.service_metrics import ServiceMetrics
from reconciler.targets.image_updates import PolicyLooker

log = structlog.get_logger("reconciler")
SETTLE_RECHECK_S = 2.0  # an update waiting for the service to settle looks again this soon
SETTLE_MAX_WAIT_S = 600.0  # a service never healthy on its first version: update it anyway


class ImageFollower:
    """Per service: the image made present, the pull or build wanted, the tag's pin and the
    last look at it. Image keys are handled one at a time per service (the work queue)."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        reporter: ServiceMetrics,
        *,
        desired: Callable[[], DesiredState],
        book: Callable[[str], HealingBook],
        enqueue: Callable[[str, float], None],
        clock: Callable[[], float],
        pull_timeout_s: float,
        follow_tags: bool,
        ledger: ImageLedger | None,
        states: ImageStates | None = None,
        record: Record = discard,
        lock_file: Path | None = None,
        locked: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.reporter = reporter
        self._desired = desired
        self._book = book
        self._enqueue = enqueue
        self._clock = clock
        self.pull_timeout_s = pull_timeout_s
        # Periodic pull_policy: ask the registry on schedule (the daemon; `apply` only pins
        # moving tags, and resolves update policies once, as the daemon would).
        self.follow_tags = follow_tags
        self.ledger = ledger  # --prune-images: the images pulled, to remove once unused
        self._prune_wanted: set[str] = set()
        self._pins: dict[str, tuple[str, str | None]] = {}  # service -> (tag, local digest)
        self._tags: dict[str, im.TagCheck] = {}  # service -> the last look at its tag
        self._updating: dict[str, str] = {}  # service -> new digest pulled, rollout to come
        self._images_ready: dict[str, EnsureImage] = {}  # service -> image made present
        self._images_wanted: dict[str, EnsureImage] = {}
        self._waiting: dict[str, str] = {}  # service -> why its update waits (logged once)
        self._unsettled_since: dict[str, float] = {}  # service -> first seen with no stable
        # x-reconciler.update: the chosen versions (state dir), the looks, the lock file.
        self.states = states
        self.looker = PolicyLooker(
            engine, record=record, metrics=reporter.metrics, clock=lambda: self._clock()
        )
        self.lock_file = lock_file
        self.locked = dict(locked or {})  # apply --locked: service -> repo:tag@digest

    def _service(self, service: str) -> ServiceSpec | None:
        return next((s for s in self._desired().services if s.name == service), None)

    # ------------------------------------------------------------------ the resync, a plan

    def looks_at(self, svc: ServiceSpec) -> bool:
        """Whether the registry is asked for this service: a followed tag in the daemon, an
        update policy always (`apply` resolves the range), a locked image never."""
        if svc.name in self.locked or not im.follows(svc):
            return False
        return self.follow_tags or svc.update_policy is not None

    def schedule(self, svc: ServiceSpec, now: float) -> None:
        """The resync: queue the next look at a followed tag."""
        if self.looks_at(svc):
            check = self._tags.get(svc.name, im.TagCheck())
            due = check.next_at if check.image == im.unpinned(svc.image) else 0.0
            self._enqueue(image_key(svc.name), max(0.0, due - now))

    def pinned(self, svc: ServiceSpec) -> ServiceSpec:
        """A service that follows its tag, pinned to the digest the tag has locally (looked up
        once, again after each pull or check of it)."""
        if svc.name in self.locked:
            ref = self.locked[svc.name]
            return im.pin_tag(svc, im.tag_of(ref), im.digest_of(ref))
        if not im.follows(svc):
            return svc
        if svc.update_policy is not None and self.states is not None:
            rec = self.states.get(svc.name, svc.image)
            if rec.digest:
                return im.pin_tag(svc, rec.tag, rec.digest)
        tag, digest = self._pins.get(svc.name, ("", None))
        if tag != svc.image:  # not looked up yet, or the file names another tag now
            digest = self.engine.local_digest(svc.image)
            self._pins[svc.name] = (svc.image, digest)
        return im.pin(svc, digest or "")

    def ensure(self, action: EnsureImage) -> None:
        """The EnsureImage step of a service plan: done when the image is there for this
        spec; otherwise queue the pull or build and come back when it is over."""
        if self._images_ready.get(action.service) == action:
            return
        if (
            action.build is None
            and action.pull == "missing"
            and self.engine.image_present(action.image)
        ):
            self._images_ready[action.service] = action
            return
        if action.pull == "never" and action.build is None:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s)
            return
        self._images_wanted[action.service] = action
        self._enqueue(image_key(action.service), 0.0)
        raise Deferred(f"waiting for the {action.verb} of {action.image}")

    def image_gone(self, service: str) -> None:
        """Docker refused a create for want of the image: make it present again."""
        self._images_ready.pop(service, None)

    def rollout_event(self, service: str, event: ro.RolloutEvent) -> None:
        """The end of the rollout a moved tag started: updated, rolled_back or paused."""
        if self.ledger is not None and event.kind in ("completed", "rollback_completed"):
            self._prune_wanted.add(service)  # the old image may be unused now
            self._enqueue(image_key(service), 0.0)
        if service in self._updating and event.kind in ("completed", "rolled_back", "paused"):
            digest = self._updating.get(service, "")
            self._policy_ended(service, event.kind)
            self._updating.pop(service, None)
            svc = self._service(service)
            if event.kind == "completed" and svc is not None and svc.update_policy is None:
                self.reporter.conditions.image_updated(service, svc.image, digest, event.revision)
            self.reporter.count_update(
                service, "updated" if event.kind == "completed" else event.kind
            )

    def tags(self) -> dict[str, dict[str, object]]:
        """The followed tags, for `reconciler status` (JSON-ready)."""
        out: dict[str, dict[str, object]] = {}
        for name, c in list(self._tags.items()):
            out[name] = {
                "newest": c.newest,
                "checked_at": c.checked_at,
                "next_at": c.next_at,
                "error": c.error or None,
            }
            policy = self.looker.status(name)
            if policy is not None and self.states is not None:
                svc = self._service(name)
                held = self.states.get(name, svc.image).held if svc else []
                out[name].update(policy, held=list(held))
        return out

    # ------------------------------------------------------------------ image keys

    def reconcile(self, service: str) -> Outcome:
        """Pull or build a service's image (its own key: it never holds up a heal)."""
        if service in self._prune_wanted:
            self._prune_wanted.discard(service)
            self._prune(service)
        action = self._images_wanted.get(service)
        if action is None:
            return self._check_tag(service)
        started = time.monotonic()
        log.info(
            "action",
            service=service,
            object=action.image,
            action=action.verb,
            kind="image",
            reason=action.reason,
            result="started",
        )

        def progress(line: str) -> None:
            log.info("image progress", service=service, image=action.image, progress=line)

        try:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s, progress=progress)
        except ActionFailed as exc:
            result = StepResult(
                action, "error", str(exc), time.monotonic() - started, exc.transient
            )
        else:
            result = StepResult(action, "success", None, time.monotonic() - started)
            self._images_ready[service] = action
            self._pulled(service, action.image)
        self._images_wanted.pop(service, None)
        self.reporter.report(result, job=True)
        book = self._book(service)
        svc = self._service(service)
        heal = {action.key: svc.heal} if svc else {}
        if result.outcome == "error":
            book.record_failures(
                [(action.key, result.error or "", result.transient)], [], heal, self._clock()
            )
        else:
            book.record_failures([], [action.key], heal, self._clock())
        self._enqueue(service_key(service), 0.0)
        return Outcome(errors=int(result.outcome == "error"), actions=1)

    def _pulled(self, service: str, image: str) -> None:
        self._pins.pop(service, None)
        if self.ledger is not None:
            image_id = self.engine.image_id(image)
            if image_id:
                self.ledger.add(service, image_id)
            self._prune(service)

    def _check_tag(self, service: str) -> Outcome:
        """Ask the registry for the tag's digest (no layers); pull when it moved, then let the
        service roll out to it. A registry that fails changes nothing and is asked again
        with back-off."""
        svc = self._service(service)
        if svc is None or not self.looks_at(svc):
            self._tags.pop(service, None)
            return Outcome()
        every = svc.pull_every_s or ip.DEFAULT_CHECK_EVERY_S
        now = self._clock()
        check = self._tags.get(service, im.TagCheck())
        if svc.update_policy is not None and self.states is not None:
            return self._check_policy(svc, check, now)
        if check.image != svc.image:  # another tag since: ask at once
            check = im.TagCheck(image=svc.image)
        if now < check.next_at:
            return Outcome(requeue_after=check.next_at - now)
        try:
            newest = self.engine.registry_digest(svc.image)
            local = self.engine.local_digest(svc.image)
            self._pins.pop(service, None)  # re-read: someone may have pulled it meanwhile
            if newest and newest != local:
                log.info(
                    "image tag moved; pulling",
                    service=service,
                    image=svc.image,
                    local=local,
                    newest=newest,
                )
                self.reporter.recording.tag_moved(service, newest)  # the history's trigger
                pull = EnsureImage(service, svc.image, "always", reason="the tag moved")
                self._image_job(pull)
                if local is not None:  # a new digest of what ran (not the first pull)
                    self._updating[service] = newest
                self._enqueue(service_key(service), 0.0)
                result = None
            else:
                result = "unchanged"
                log.debug("image tag unchanged", service=service, image=svc.image, digest=newest)
        except ActionFailed as exc:
            check = im.failed(check, now, every, str(exc))
            self._tags[service] = check
            log.warning(
                "image check failed; what runs is left alone",
                service=service,
                image=svc.image,
                error=str(exc),
                retry_s=round(check.next_at - now, 3),
            )
            self.reporter.count_update(service, "error")
            return Outcome(requeue_after=check.next_at - now, errors=1)
        self._tags[service] = im.checked(check, now, every, newest)
        self._prune(service)
        if result:
            self.reporter.count_update(service, result)
        return Outcome(requeue_after=every)

    def _check_policy(self, svc: ServiceSpec, check: im.TagCheck, now: float) -> Outcome:
        """x-reconciler.update: let the policy choose among the registry's versions (or the
        tag's new digest); pull the one taken and let the service roll out to it."""
        assert self.states is not None
        service, policy = svc.name, svc.update_policy or ip.UpdatePolicy()
        every = svc.pull_every_s or ip.DEFAULT_CHECK_EVERY_S
        if check.image != svc.image:
            check = im.TagCheck(image=svc.image)
        if now < check.next_at:
            return Outcome(requeue_after=check.next_at - now)
        if service in self._updating:  # a taken version is rolling out: look after it ends
            return Outcome(requeue_after=every)
        rec = self.states.get(service, svc.image)
        try:
            local = None if rec.digest else self.engine.local_digest(svc.image)
            wait = self.update_waits(service) if (rec.digest or local) else ""
            if wait:  # an update now would have nothing to roll back (or restore) to
                if self._waiting.get(service) != wait:
                    log.info("image update waits", service=service, reason=wait)
                self._waiting[service] = wait
                # `apply` waits for it too: it resolves the range before it is done.
                busy = not self.follow_tags
                return Outcome(requeue_after=min(every, SETTLE_RECHECK_S), busy=busy)
            self._waiting.pop(service, None)
            look = self.looker.look(svc, rec, local)
            take = look.decision.take
            if take is not None:
                ref = f"{im.repository(svc.image)}:{take.tag}"
                self._image_job(EnsureImage(service, ref, "always", reason="update policy"))
                digest = self.engine.local_digest(ref) or take.digest
                if rec.digest or local:  # an update of what runs (not the first pull)
                    base = rec if rec.digest else replace(rec, tag=im.tag_of(svc.image),
                                                          digest=local or "")  # fmt: skip
                    self.states.put(service, base.taken(take.tag, digest))
                    self._updating[service] = f"{take.tag}@{digest}"
                    self.looker.taken(svc, f"{take.tag}@{digest}", look.running)
                else:
                    self.states.put(service, replace(rec, tag=take.tag, digest=digest))
                self._pins.pop(service, None)
                self._enqueue(service_key(service), 0.0)
        except ActionFailed as exc:
            check = im.failed(check, now, every, str(exc))
            self._tags[service] = check
            log.warning("image check failed; what runs is left alone", service=service,
                        image=svc.image, error=str(exc),
                        retry_s=round(check.next_at - now, 3))  # fmt: skip
            self.reporter.count_update(service, "error")
            return Outcome(requeue_after=check.next_at - now, errors=1)
        delay = ip.recheck_after(look.decision, policy, now, every)
        checked = im.checked(check, now, every, look.decision.newest_published)
        self._tags[service] = replace(checked, next_at=now + delay)
        if take is None:
            self.reporter.count_update(service, "unchanged")
        self.write_image_lock()
        return Outcome(requeue_after=delay)

    def update_waits(self, service: str) -> str:
        """Why an update of what runs must wait ("" when it may go): the service has not run
        healthy yet (no revision a failed update could be rolled back to, nor data to restore
        for it), or a rollout is under way (a file edit, a rollback)."""
        record = self.store.get(service)
        if record.rolling_revision:
            return f"a rollout of revision {record.rolling_revision[:12]} is under way"
        if not record.stable:  # bounded: a version that never runs healthy may need the update
            since = self._unsettled_since.setdefault(service, self._clock())
            if self._clock() - since < SETTLE_MAX_WAIT_S:
                return "the service has not run healthy yet (nothing to roll back to)"
        self._unsettled_since.pop(service, None)
        return ""

    def _policy_ended(self, service: str, kind: str) -> None:
        """The rollout of a version the policy took ended: a failure holds it (and the
        previous version is chosen again, the one the rollback runs)."""
        svc = self._service(service)
        if svc is None or svc.update_policy is None or self.states is None:
            return
        rec = self.states.get(service, svc.image)
        ref = rec.pending or self._updating.get(service, "")
        if kind == "rolled_back" and rec.pending:
            self.states.put(service, rec.rolled_back())
            log.warning("image update rolled back and held", service=service, image=ref)
        elif rec.pending:
            self.states.put(service, replace(rec, pending=""))
        self.looker.ended(service, svc.image, ref, kind)
        self._pins.pop(service, None)
        self._enqueue(service_key(service), 0.0)
        self.write_image_lock()

    def resolved_images(self) -> dict[str, str]:
        """service -> the `repo:tag@digest` it runs (or is asked to), for the lock file; a
        service whose image came from no registry (built, or never pulled) is left out."""
        out = {}
        for svc in self._desired().services:
            ref = self.pinned(svc).image
            if "@" not in ref and svc.build is None:
                digest = self.engine.local_digest(ref)
                ref = f"{ref}@{digest}" if digest else ref
            if "@" in ref:
                out[svc.name] = ref
        return out

    def write_image_lock(self) -> None:
        """Rewrite the lock file (when one is kept) with what every service resolves to."""
        if self.lock_file is None or self.locked:
            return
        desired = self._desired()
        try:
            images = self.resolved_images()
            write_lock(self.lock_file, ImageLock(desired.project, desired.image_requests, images))
        except (ActionFailed, OSError) as exc:
            log.warning("image lock file not written", path=str(self.lock_file), error=str(exc))

    def _image_job(self, action: EnsureImage) -> None:
        """Pull for a followed tag on this (image) worker; raise ActionFailed."""
        started = time.monotonic()

        def progress(line: str) -> None:
            log.info("image progress", service=action.service, image=action.image, progress=line)

        try:
            self.engine.ensure_image(action, timeout_s=self.pull_timeout_s, progress=progress)
        except ActionFailed as exc:
            self.reporter.report(
                StepResult(action, "error", str(exc), time.monotonic() - started, exc.transient),
                job=True,
            )
            raise
        self.reporter.report(
            StepResult(action, "success", None, time.monotonic() - started), job=True
        )
        self._pulled(action.service, action.image)

    def _prune(self, service: str) -> None:
        """--prune-images: remove the images pulled for `service` that no container (anyone's)
        uses, except what its tag names now, what a rollback returns to, and the last two
        pulled (the previous one stays for a rollback by hand). Never forced."""
        ids = self.ledger.of(service) if self.ledger is not None else []
        if len(ids) <= 2 or self.ledger is None:
            return
        svc = self._service(service)
        stable = self.store.get(service).stable
        refs = [im.unpinned(svc.image)] if svc else []
        keep = self.engine.images_in_use() | set(ids[-2:])
        keep |= {self.engine.image_id(ref) or "" for ref in refs + [c.image for c in stable[:1]]}
        for image_id in ids:
            if image_id in keep:
                continue
            if self.engine.remove_image(image_id):
                self.ledger.forget(service, image_id)
                log.info("image pruned", service=service, image=image_id[:19])
            else:
                log.debug("image not pruned (Docker refused)", service=service, image=image_id)
