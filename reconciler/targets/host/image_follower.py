"""Images of a project's services, on their own `image:NAME` keys: pulls and builds a plan
needs (with a deadline, never holding up a heal), followed tags (the registry asked on
schedule; a moved tag is pulled and rolled out), and --prune-images. Owned by the
`Controller`, which routes `image:` keys and EnsureImage steps here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from reconciler.core import images as im
from reconciler.core import rollout as ro
from reconciler.core.actions import EnsureImage
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.healing import HealingBook
from reconciler.engine.host.engine import Engine
from reconciler.errors import ActionFailed, Deferred
from reconciler.ops.state_store import StateStore
from reconciler.targets.base import Outcome, image_key, service_key
from reconciler.targets.host.executor import StepResult
from reconciler.targets.host.image_ledger import ImageLedger
from reconciler.targets.host.service_metrics import ServiceMetrics

log = structlog.get_logger("reconciler")


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
    ) -> None:
        self.engine = engine
        self.store = store
        self.reporter = reporter
        self._desired = desired
        self._book = book
        self._enqueue = enqueue
        self._clock = clock
        self.pull_timeout_s = pull_timeout_s
        # Periodic pull_policy: ask the registry on schedule (the daemon; `apply` only pins).
        self.follow_tags = follow_tags
        self.ledger = ledger  # --prune-images: the images pulled, to remove once unused
        self._prune_wanted: set[str] = set()
        self._pins: dict[str, tuple[str, str | None]] = {}  # service -> (tag, local digest)
        self._tags: dict[str, im.TagCheck] = {}  # service -> the last look at its tag
        self._updating: dict[str, str] = {}  # service -> new digest pulled, rollout to come
        self._images_ready: dict[str, EnsureImage] = {}  # service -> image made present
        self._images_wanted: dict[str, EnsureImage] = {}

    def _service(self, service: str) -> ServiceSpec | None:
        return next((s for s in self._desired().services if s.name == service), None)

    # ------------------------------------------------------------------ the resync, a plan

    def schedule(self, svc: ServiceSpec, now: float) -> None:
        """The resync: queue the next look at a followed tag."""
        if self.follow_tags and im.follows(svc):
            check = self._tags.get(svc.name, im.TagCheck())
            due = check.next_at if check.image == im.unpinned(svc.image) else 0.0
            self._enqueue(image_key(svc.name), max(0.0, due - now))

    def pinned(self, svc: ServiceSpec) -> ServiceSpec:
        """A service that follows its tag, pinned to the digest the tag has locally (looked up
        once, again after each pull or check of it)."""
        if not im.follows(svc):
            return svc
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
            digest = self._updating.pop(service, "")
            svc = self._service(service)
            if event.kind == "completed" and svc is not None:
                self.reporter.conditions.image_updated(service, svc.image, digest, event.revision)
            self.reporter.count_update(
                service, "updated" if event.kind == "completed" else event.kind
            )

    def tags(self) -> dict[str, dict[str, object]]:
        """The followed tags, for `reconciler status` (JSON-ready)."""
        return {
            name: {
                "newest": c.newest,
                "checked_at": c.checked_at,
                "next_at": c.next_at,
                "error": c.error or None,
            }
            for name, c in list(self._tags.items())
        }

    # ------------------------------------------------------------------ image keys

    def reconcile(self, service: str) -> Outcome:
        """Pull or build a service's image (its own key: it never holds up a heal)."""
        if service in self._prune_wanted:
            self._prune_wanted.discard(service)
            self._prune(service)
        action = self._images_wanted.get(service)
        if action is None:
            return self._check_tag(service) if self.follow_tags else Outcome()
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
        if svc is None or not im.follows(svc) or svc.pull_every_s is None:
            self._tags.pop(service, None)
            return Outcome()
        every, now = svc.pull_every_s, self._clock()
        check = self._tags.get(service, im.TagCheck())
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
