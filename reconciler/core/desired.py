"""The desired state: rendered specs of networks, volumes and services, and our labels.

The config loader renders a file into these; the planners (core.planner, core.policy,
core.takeover) read them. Immutable values, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from reconciler.core.image_policy import UpdatePolicy, resolution

LABEL_MANAGED = "io.reconciler.managed"
LABEL_PROJECT = "io.reconciler.project"
LABEL_SERVICE = "io.reconciler.service"
LABEL_REPLICA = "io.reconciler.replica"
LABEL_SPEC_HASH = "io.reconciler.spec-hash"
LABEL_CONFIG_HASH = "io.reconciler.config-hash"
LABEL_REVISION = "io.reconciler.revision"  # the service revision a container was created from
LABEL_BUILD_HASH = "io.reconciler.build-hash"  # on a built image: BuildSpec.digest it was made by

PullPolicy = Literal["missing", "always", "never"]


def ownership_labels(
    project: str, service: str | None = None, replica: int | None = None
) -> dict[str, str]:
    """The labels that mark an object as ours (and which project/service/replica it is)."""
    labels = {LABEL_MANAGED: "true", LABEL_PROJECT: project}
    if service is not None:
        labels[LABEL_SERVICE] = service
    if replica is not None:
        labels[LABEL_REPLICA] = str(replica)
    return labels


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    driver: str = "bridge"
    internal: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    ipam: tuple[tuple[str, str], ...] = ()  # (subnet, gateway) pairs; gateway may be ""
    external: bool = False  # made by someone else: never created nor removed, must exist
    attachable: bool = False  # containers outside Swarm services may join (overlay)
    enable_ipv6: bool = False


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    name: str
    driver: str = "local"
    labels: tuple[tuple[str, str], ...] = ()
    driver_opts: tuple[tuple[str, str], ...] = ()
    external: bool = False  # made by someone else: never created nor removed, must exist


@dataclass(frozen=True, slots=True)
class PortBinding:
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int | None = None


@dataclass(frozen=True, slots=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Compose's resource, logging and terminal keys (issue #10): HostConfig/Config fields.

    Only the fields that differ from their default enter the spec hash, so a file that sets
    none of them keeps the hash it had before they existed (no mass recreate on upgrade).
    """

    expose: tuple[str, ...] = ()  # "80/tcp"
    cpus: float | None = None  # NanoCpus / 1e9
    mem_limit: int | None = None  # bytes
    mem_reservation: int | None = None  # bytes
    pids_limit: int | None = None
    shm_size: int | None = None  # bytes
    log_driver: str | None = None
    log_options: tuple[tuple[str, str], ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()  # (path, mount options)
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)
    sysctls: tuple[tuple[str, str], ...] = ()
    stdin_open: bool = False
    tty: bool = False
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    health_start_interval_s: float | None = None  # API >= 1.44; older engines drop it
    memswap_limit: int | None = None  # bytes of memory and swap together; -1: unlimited swap

    def hashed(self) -> dict[str, object]:
        """The fields set to something other than their default."""
        default = _DEFAULT_OPTIONS
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}


_DEFAULT_OPTIONS = RuntimeOptions()


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    network: str
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None  # a static address in the network's ipam subnet
    links: tuple[str, ...] = ()  # compose's links, CONTAINER:ALIAS: names only this one sees


# NetworkAttachment fields added later: left out of the spec hash at their defaults.
_ATTACHMENT_DEFAULTS: dict[str, object] = {"ipv4_address": None, "links": ()}


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One deploy.resources.reservations.devices entry (HostConfig.DeviceRequests, what
    `docker run --gpus` asks for); host power, judged by core.policy (rule gpus)."""

    driver: str = ""  # "": the engine picks (nvidia for capabilities [gpu])
    count: int = -1  # -1: all the devices that match
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """`driver nvidia, count all, capabilities gpu`, for policy denials and notes."""
        which = f"ids {','.join(self.device_ids)}" if self.device_ids else None
        count = "all" if self.count < 0 else str(self.count)
        parts = [
            f"driver {self.driver or '(any)'}",
            which or f"count {count}",
            f"capabilities {','.join(self.capabilities) or '(none)'}",
        ]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class SecretMount:
    """A compose file-based secret: `source` (a root-only copy on the host) is bind-mounted
    read-only at `target`; `digest` (sha256 of the content) puts a change in the spec hash."""

    name: str
    source: str
    target: str
    digest: str = field(repr=False)


_ADDED_DEFAULTS: dict[str, object] = {
    "privileged": False,
    "devices": (),
    "ipc": None,
    "uts": None,
    "userns_mode": None,
    "security_opt": (),
    "secrets": (),
    "device_requests": (),
    "build_digest": "",
}


@dataclass(frozen=True, slots=True)
class HostAccess:
    """What a service's file entry asks of the host beyond its ContainerSpec, for core.policy:
    its bind mounts as real host paths (configs and secrets inside the file's own folder are
    inputs, not judged) and where each key is in the file."""

    binds: tuple[tuple[str, bool, str, int], ...] = ()  # (host path, read-only, key, line)
    lines: tuple[tuple[str, int], ...] = ()  # (key, line)

    def line(self, key: str) -> int:
        return dict(self.lines).get(key, 0)


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything Docker needs to create one replica; its hash decides drift."""

    name: str
    project: str
    service: str
    replica: int
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[str, ...] = field(default=(), repr=False)  # values are never shown
    ports: tuple[PortBinding, ...] = ()
    binds: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # named volumes the binds use
    networks: tuple[NetworkAttachment, ...] = ()
    user: str | None = None
    restart: str = "no"
    healthcheck: Healthcheck | None = None
    labels: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    hostname: str | None = None
    extra_hosts: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace_s: float | None = None  # None: Docker's default (10 s)
    init: bool | None = None
    network_mode: str | None = None
    pid: str | None = None
    # Host power (what core.policy judges); left out of the hash at their defaults.
    privileged: bool = False
    devices: tuple[str, ...] = ()  # HOST[:CONTAINER[:PERMS]]
    ipc: str | None = None
    uts: str | None = None
    userns_mode: str | None = None
    security_opt: tuple[str, ...] = ()
    secrets: tuple[SecretMount, ...] = ()  # files under /run/secrets (digests, never values)
    device_requests: tuple[DeviceRequest, ...] = ()  # GPUs (host power: core.policy)
    # BuildSpec.digest of the image it runs (a built image of other args is rebuilt).
    build_digest: str = ""
    config_digests: tuple[tuple[str, str], ...] = ()  # (target, sha256) of declared configs
    options: RuntimeOptions = _DEFAULT_OPTIONS  # compose keys of issue #10
    # Configs applied by a signal: not part of the hash, so a change reloads, not recreates.
    reload_digest: str = field(default="", compare=False)
    reload_signal: str | None = field(default=None, compare=False)
    # `check` commands of those configs (argv each), run in the container before the signal
    reload_check: tuple[tuple[str, ...], ...] = field(default=(), compare=False)
    spec_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.spec_hash:
            unhashed = ("spec_hash", "reload_digest", "reload_signal", "reload_check")
            payload = {k: v for k, v in asdict(self).items() if k not in unhashed}
            options = self.options.hashed()
            if options:
                payload["options"] = options
            else:
                del payload["options"]  # unset: the hash files had before these keys
            for key, default in _ADDED_DEFAULTS.items():  # keys added later: hashes unchanged
                if payload.get(key) == default:
                    del payload[key]
            for net in payload["networks"]:
                for key, default in _ATTACHMENT_DEFAULTS.items():
                    if net.get(key) == default:
                        del net[key]
            grace = self.stop_grace_s
            if grace is not None and grace == int(grace):
                payload["stop_grace_s"] = int(grace)  # 10.0 hashes as 10 did: no mass recreate
            digest = hashlib.sha256(
                json.dumps(payload, sort_keys=True, default=list).encode()
            ).hexdigest()
            object.__setattr__(self, "spec_hash", digest)

    def all_labels(self) -> dict[str, str]:
        """User labels plus ownership labels and the spec hash."""
        labels = dict(self.labels)
        labels.update(ownership_labels(self.project, self.service, self.replica))
        labels[LABEL_SPEC_HASH] = self.spec_hash
        if self.reload_digest:
            labels[LABEL_CONFIG_HASH] = self.reload_digest
        return labels


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What the engine's build API takes (compose's build section, BuildKit's secrets aside)."""

    context: str
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may carry secrets
    target: str | None = None
    shm_size: int | None = None  # bytes, for the build's RUN steps
    labels: tuple[tuple[str, str], ...] = ()
    cache_from: tuple[str, ...] = ()
    dockerfile_inline: str | None = None  # the Dockerfile's text, instead of `dockerfile`

    @property
    def digest(self) -> str:
        """sha256 of the definition when it sets more than context and dockerfile (the
        image's LABEL_BUILD_HASH; a changed one is rebuilt); "" otherwise, as before."""
        extra = (self.args, self.target, self.shm_size, self.labels, self.cache_from)
        if extra == ((), None, None, (), ()) and self.dockerfile_inline is None:
            return ""
        body = asdict(self)
        if self.dockerfile_inline is None:  # absent: the digest of a build as before
            del body["dockerfile_inline"]
        text = json.dumps(body, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class HealPolicy:
    min_uptime_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    unhealthy_grace_s: float | None = None  # None: one healthcheck interval


UpdateOrder = Literal["stop-first", "start-first"]
FailureAction = Literal["rollback", "pause", "continue"]


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Swarm's update_config / rollback_config: how replicas are replaced."""

    parallelism: int = 1  # replicas replaced at once; 0 means all at once
    delay_s: float = 0.0  # between one batch finishing and the next starting
    order: UpdateOrder = "stop-first"
    monitor_s: float = 5.0  # a new replica must stay up (and healthy) this long
    failure_action: FailureAction = "rollback"
    max_failure_ratio: float = 0.0


DEFAULT_UPDATE = UpdateConfig()
DEFAULT_ROLLBACK = UpdateConfig(failure_action="pause")


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """`x-reconciler: {snapshots: ...}`: before a rollout replaces a replica, its read-write
    named volumes are saved (core.snapshots); a rollback puts the data back."""

    keep: int = 3  # snapshots kept per volume (older ones are deleted)
    max_size: int | None = None  # bytes; a larger volume is skipped with a warning
    min_free: int = 1024**3  # bytes the state directory's disk keeps free (else skipped)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    image: str
    replicas: tuple[ContainerSpec, ...]
    pull: PullPolicy = "missing"
    pull_every_s: float | None = None  # follow the tag: ask the registry this often
    update_policy: UpdatePolicy | None = None  # x-reconciler.update: a range, cooldown, window
    build: BuildSpec | None = None
    depends_on: tuple[str, ...] = ()
    # depends_on conditions other than service_started, as (service, condition).
    conditions: tuple[tuple[str, DependsCondition], ...] = ()
    job: bool = False  # another waits for it to complete: a replica that exited 0 is done
    state: Literal["running", "stopped"] = "running"
    heal: HealPolicy = HealPolicy()
    update: UpdateConfig = DEFAULT_UPDATE
    rollback: UpdateConfig = DEFAULT_ROLLBACK
    drain_s: float = 3.0  # a replica leaves DNS this long before it is stopped
    stop_grace_s: float | None = None  # also for replicas scaled away (none may be left)
    # Identifies what the file asks of the service's containers, whatever the replica count.
    revision: str = ""
    access: HostAccess = field(default=HostAccess(), compare=False)  # for core.policy
    snapshots: SnapshotPolicy | None = None  # opt-in volume snapshots (x-reconciler)

    @property
    def has_healthcheck(self) -> bool:
        return any(c.healthcheck is not None for c in self.replicas)

    def waits_for(self) -> tuple[str, ...]:
        """What each dependency must be before this service starts (`ready_token`s)."""
        conditions = dict(self.conditions)
        return tuple(ready_token(d, conditions.get(d, "service_started")) for d in self.depends_on)


DependsCondition = Literal["service_started", "service_healthy", "service_completed_successfully"]


def ready_token(service: str, condition: DependsCondition) -> str:
    """`web` (its replicas run), `web:healthy` or `web:completed` (all exited 0)."""
    match condition:
        case "service_healthy":
            return f"{service}:healthy"
        case "service_completed_successfully":
            return f"{service}:completed"
        case _:
            return service


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A validated, rendered desired state: services are in dependency order."""

    project: str
    networks: tuple[NetworkSpec, ...]
    volumes: tuple[VolumeSpec, ...]
    services: tuple[ServiceSpec, ...]
    source: str = ""
    digest: str = ""  # sha256 of the file's bytes (and of the config files it mounts)
    volume_templates: tuple[str, ...] = ()  # names with {replica}, for orphan reporting
    watched: tuple[str, ...] = ()  # config files/folders services mount (re-read on change)
    # Values nothing may print: what secret-looking variables interpolated into the file.
    secrets: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    # Services the host policy denies (core.policy.enforce): never created nor touched.
    denied: frozenset[str] = field(default=frozenset(), compare=False)
    # Services of profiles not selected (config.profiles): not part of the project, so
    # their containers are neither created, changed nor removed (as compose).
    dormant: frozenset[str] = frozenset()

    def service(self, name: str) -> ServiceSpec:
        return next(s for s in self.services if s.name == name)

    @property
    def image_requests(self) -> dict[str, str]:
        """service -> what its image resolves from (image_policy.resolution); built images
        come from no registry and are left out. An image lock is stale when these differ."""
        return {
            s.name: resolution(s.image, s.update_policy) for s in self.services if s.build is None
        }
