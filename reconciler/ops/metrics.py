"""Prometheus metrics of the reconciler itself, on an injected registry.

Labels are bounded (service names, action verbs, kinds), never container IDs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client import (
    GCCollector as _GC,
)
from prometheus_client import (
    PlatformCollector as _Platform,
)
from prometheus_client import (
    ProcessCollector as _Process,
)

from reconciler import __version__

HEAL_REASONS = ("exited", "unhealthy", "removed", "dead", "paused", "network")
ROLLOUT_RESULTS = ("completed", "rolled_back", "paused")
# What starts a daemon's pass (core.events.TRIGGERS: the CLI's `manual` and `down` are not here).
DAEMON_TRIGGERS = (
    "start",
    "file",
    "signal",
    "interval",
    "event",
    "requeue",
    "backoff",
    "image",
    "git",
)


class Metrics:
    """Every metric the daemon exports; tests pass a fresh CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        if process:
            _Process(registry=r)
            _Platform(registry=r)
            _GC(registry=r)
        self.runs = Counter(
            "reconciler_reconcile_runs", "Reconcile passes, by result.", ["result"], registry=r
        )
        self.duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Wall time of a reconcile pass.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "Unix time the last successful pass finished.",
            registry=r,
        )
        self.triggers = Counter(
            "reconciler_reconcile_trigger", "What started a pass.", ["trigger"], registry=r
        )
        for trigger in DAEMON_TRIGGERS:  # each at 0 from the start: rate() and alerts see it
            self.triggers.labels(trigger)
        self.actions = Counter(
            "reconciler_actions", "Actions executed.", ["action", "kind", "result"], registry=r
        )
        self.drift = Gauge(
            "reconciler_drift",
            "Objects out of sync at the start of the last pass.",
            ["kind"],
            registry=r,
        )
        self.replicas = Gauge(
            "reconciler_service_replicas",
            "Replicas per service and state.",
            ["service", "state"],
            registry=r,
        )
        self.heals = Counter(
            "reconciler_heals",
            "Heals performed, by service and reason.",
            ["service", "reason"],
            registry=r,
        )
        self.crashloop = Gauge(
            "reconciler_crashloop_replicas",
            "Replicas in crash-loop back-off.",
            ["service"],
            registry=r,
        )
        # No rollout series at construction: the services are not known yet (a family without
        # series still exports HELP/TYPE, which `promtool check metrics` accepts). set_replicas
        # creates them at 0 for each service it sees, so that increase() in the alert rules
        # sees the first rollback of a service (a series born at 1 shows no increase).
        self.rollouts = Counter(
            "reconciler_rollouts",
            "Rollouts finished, by service and result.",
            ["service", "result"],
            registry=r,
        )
        self.rollout_in_progress = Gauge(
            "reconciler_rollout_in_progress",
            "1 while a service is rolling out or rolling back.",
            ["service"],
            registry=r,
        )
        self.image_updates = Counter(
            "reconciler_image_updates",
            "Looks at followed tags (periodic pull_policy), by service and result: unchanged, "
            "error (registry or pull failed), updated, rolled_back, paused (the new digest's "
            "rollout).",
            ["service", "result"],
            registry=r,
        )
        self.image_update_skipped = Counter(
            "reconciler_image_update_skipped",
            "Newer image versions (or digests) an update policy did not take, by service and "
            "reason: range, cooldown, window, held (counted once per version and reason).",
            ["service", "reason"],
            registry=r,
        )
        self.docker_up = Gauge("reconciler_docker_up", "1 when the engine answers.", registry=r)
        self.docker_errors = Counter(
            "reconciler_docker_errors",
            "Docker API errors, by operation.",
            ["operation"],
            registry=r,
        )
        self.events = Counter("reconciler_events_received", "Docker events received.", registry=r)
        self.state_valid = Gauge(
            "reconciler_desired_state_valid", "1 when the desired-state file is valid.", registry=r
        )
        self.reloads = Counter(
            "reconciler_desired_state_reloads",
            "Desired-state reloads, by result.",
            ["result"],
            registry=r,
        )
        self.generation = Gauge(
            "reconciler_desired_state_generation",
            "Count of valid desired states loaded; the digest label names the current file.",
            ["digest"],
            registry=r,
        )
        self.config_rejected = Gauge(
            "reconciler_config_rejected",
            "1 while a config edit of the service was refused by its check (not signalled).",
            ["service"],
            registry=r,
        )
        self.policy_denials = Counter(
            "reconciler_policy_denials",
            "Services denied by the host policy, by service and rule (once per state loaded).",
            ["service", "rule"],
            registry=r,
        )
        self.history_records = Counter(
            "reconciler_history_records",
            "Records appended to the history file, by result (written, error).",
            ["result"],
            registry=r,
        )
        self.notifications = Counter(
            "reconciler_notifications",
            "Notifications, by event kind and result (sent, failed, dropped, deduplicated).",
            ["kind", "result"],
            registry=r,
        )
        self.notifications_dropped = Counter(
            "reconciler_notifications_dropped",
            "Notifications dropped: their queue was full or the rate limit was reached.",
            registry=r,
        )
        self.build = Info("reconciler_build", "Version of the reconciler.", registry=r)
        self.build.info({"version": __version__})
        self._generation = 0
        self._services: set[str] = set()
        self._rolling: set[str] = set()  # set_rollout's services not yet in set_replicas
        for result in ("success", "error"):
            self.runs.labels(result)
        self.docker_up.set(0)
        self.state_valid.set(0)

    def loaded(self, digest: str) -> None:
        """A new valid desired state is in force."""
        self._generation += 1
        self.generation.clear()
        self.generation.labels(digest[:12]).set(self._generation)
        self.state_valid.set(1)

    def set_replicas(self, rows: Iterable[tuple[str, int, int, int]]) -> None:
        """(service, desired, running, healthy) rows; series of services gone are dropped.

        Also makes the rollout series of each service exist (at 0 unless already set).
        """
        current = set()
        for service, desired, running, healthy in rows:
            current.add(service)
            self.replicas.labels(service, "desired").set(desired)
            self.replicas.labels(service, "running").set(running)
            self.replicas.labels(service, "healthy").set(healthy)
            self.rollout_in_progress.labels(service)
            for result in ROLLOUT_RESULTS:
                self.rollouts.labels(service, result)
        for service in self._services - current:
            for state in ("desired", "running", "healthy"):
                _drop(self.replicas, service, state)
            _drop(self.crashloop, service)
        for service in (self._services | self._rolling) - current:
            _drop(self.rollout_in_progress, service)
        self._rolling = set()
        self._services = current

    def set_crashloop(self, counts: dict[str, int], services: Iterable[str]) -> None:
        for service in services:
            self.crashloop.labels(service).set(counts.get(service, 0))

    def set_rollout(self, service: str, in_progress: bool) -> None:
        """Mark `service` as rolling out or back (1) or not (0); dropped with the service."""
        self.rollout_in_progress.labels(service).set(1 if in_progress else 0)
        if service not in self._services:
            self._rolling.add(service)

    def rollout_finished(self, service: str, result: str) -> None:
        """Count a finished rollout (`result` in ROLLOUT_RESULTS); it is no longer in progress."""
        if result not in ROLLOUT_RESULTS:
            raise ValueError(f"rollout result {result!r} is not one of {ROLLOUT_RESULTS}")
        self.rollouts.labels(service, result).inc()
        self.set_rollout(service, False)


def _drop(metric: Gauge, *labels: str) -> None:
    """Remove one labelled series; older prometheus_client raise KeyError when it is absent."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
