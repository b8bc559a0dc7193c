"""The file format's service definitions (schema v1): a service and its parts (deploy,
healthcheck, mounts, ports, resources...), as pydantic models with compose's names.

Re-exported by config/schema.py, which the loader and the renderers import.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from reconciler.config.schema_values import (
    Bool,
    Bytes,
    Cpus,
    Duration,
    FileMode,
    Int,
    Number,
    Scalar,
    StrictModel,
    SwapBytes,
    parse_pull_policy,
)

DEFAULT_MAX_REPLICAS = 1000  # per service; RECONCILER_MAX_REPLICAS changes it


def _replica_limit(value: int | None, info: ValidationInfo) -> int | None:
    """At most the limit: checked here, before anything makes one spec per replica."""
    limit = int((info.context or {}).get("max_replicas", DEFAULT_MAX_REPLICAS))
    if value is not None and value > limit:
        raise ValueError(
            f"must be <= {limit} (the limit of replicas per service; "
            "RECONCILER_MAX_REPLICAS changes it)"
        )
    return value


BUILD_SECRETS_REASON = (
    "build secrets need BuildKit (RUN --mount=type=secret), which the engine's classic build "
    "API that reconciler uses does not have: build the image with `docker buildx build "
    "--secret ...` and name it under image"
)


class BuildDef(StrictModel):
    """What the engine's build API takes (docker-py's build: buildargs, target, shmsize,
    labels, cache_from); `secrets` is refused by the rules (BUILD_SECRETS_REASON)."""

    context: str = "."
    dockerfile: str = "Dockerfile"
    dockerfile_inline: str | None = None  # the Dockerfile's text (not with `dockerfile`)
    args: dict[str, Scalar | None] | list[str] = {}  # a bare name: from the environment
    target: str | None = None
    shm_size: Bytes | None = None
    labels: dict[str, Scalar | None] | list[str] = {}
    cache_from: list[str] = []
    secrets: list[str | dict[str, Scalar | None]] = Field(
        default=[], json_schema_extra={"refused": BUILD_SECRETS_REASON}
    )


class HealthcheckDef(StrictModel):
    test: str | list[str]
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: Int = Field(3, ge=0)
    start_period: Duration = 0.0
    start_interval: Duration | None = None  # Docker API >= 1.44 (engine 25); older drop it
    disable: Bool = False


class NetworkAttachDef(StrictModel):
    aliases: list[str] = []
    ipv4_address: str | None = None  # static: the network needs an ipam subnet holding it

    @field_validator("ipv4_address")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.IPv4Address(value.strip())
            except ValueError:
                raise ValueError("must be an IPv4 address such as 172.28.0.10") from None
            return value.strip()
        return value


class DependsOnDef(StrictModel):
    condition: Literal["service_started", "service_healthy", "service_completed_successfully"] = (
        "service_started"
    )
    required: Bool = True  # false: a dependency not in the project is no error (compose 2.20)
    restart: Bool = False  # compose restarts the dependant: accepted, not acted on (a warning)


class TmpfsMountDef(StrictModel):
    size: Bytes | None = None
    mode: FileMode | None = None  # octal, as written: 1777 or 0o1777 (the value: 0o1777)


Propagation = Literal["rprivate", "private", "rshared", "shared", "rslave", "slave"]


class BindOptionsDef(StrictModel):
    propagation: Propagation | None = None  # Docker's default: rprivate


class VolumeMountDef(StrictModel):
    """Long syntax of a service volume (`type: tmpfs` is a tmpfs mount, as `tmpfs:`)."""

    type: Literal["volume", "bind", "tmpfs"] = "volume"
    source: str | None = None  # required for bind; a volume without one is anonymous
    target: str
    read_only: Bool = False
    tmpfs: TmpfsMountDef | None = None
    bind: BindOptionsDef | None = None


class ConfigMountDef(StrictModel):
    """A config file mounted read-only; its content is part of the container's spec."""

    source: str
    target: str
    reload_signal: str | None = None
    # run in the running container before reload_signal; non-zero: not signalled (a list is
    # argv, a string runs with sh -c, as a healthcheck's test)
    check: str | list[str] | None = None


class SecretRefDef(StrictModel):
    """Long syntax of a service's secret: `target` under /run/secrets (or absolute). The file
    is bind-mounted as it is on the host, so compose's uid/gid/mode are not offered."""

    source: str
    target: str | None = None


class HealDef(StrictModel):
    min_uptime: Duration = 10.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    unhealthy_grace: Duration | None = None


FailureAction = Literal["rollback", "pause", "continue"]


class UpdateConfigDef(StrictModel):
    """deploy.update_config, with Swarm's names and defaults."""

    parallelism: Int = Field(default=1, ge=0)  # 0: every replica at once
    delay: Duration = 0.0
    order: Literal["stop-first", "start-first"] = "stop-first"
    monitor: Duration = 5.0
    failure_action: FailureAction = "rollback"
    max_failure_ratio: Number = Field(default=0.0, ge=0.0, le=1.0)


class RollbackConfigDef(UpdateConfigDef):
    """deploy.rollback_config: as update_config, but a failed rollback pauses by default."""

    failure_action: FailureAction = "pause"

    @field_validator("failure_action")
    @classmethod
    def _no_rollback_of_a_rollback(cls, value: str) -> str:
        if value == "rollback":
            raise ValueError(
                "rollback is not allowed in rollback_config (a failed rollback has nothing "
                "to roll back to); use pause or continue"
            )
        return value


class PreferenceDef(StrictModel):
    spread: str


class PlacementDef(StrictModel):
    """deploy.placement (Swarm only: one host has nowhere else to place a replica)."""

    constraints: list[str] = []
    preferences: list[PreferenceDef] = []
    max_replicas_per_node: Int | None = Field(default=None, ge=0)


class RestartPolicyDef(StrictModel):
    """deploy.restart_policy (Swarm only; the single host uses `restart` and `heal`)."""

    condition: Literal["none", "on-failure", "any"] = "any"
    delay: Duration = 5.0
    max_attempts: Int | None = Field(default=None, ge=0)
    window: Duration | None = None


class ResourceDef(StrictModel):
    """deploy.resources.limits / .reservations."""

    cpus: Cpus | None = None
    memory: Bytes | None = None
    pids: Int | None = Field(default=None, ge=-1)


class DeviceReservationDef(StrictModel):
    """deploy.resources.reservations.devices: GPUs and other devices, as `--gpus`
    (HostConfig.DeviceRequests); judged by the host policy (rule gpus)."""

    capabilities: list[str]
    driver: str | None = None
    count: Literal["all"] | Int | None = None  # neither count nor device_ids: all
    device_ids: list[str] = []
    options: dict[str, Scalar | None] = {}

    @field_validator("count")
    @classmethod
    def _count(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a number of devices (1 or more) or all")
        return value

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one capability, such as [gpu]")
        return value


class ReservationDef(StrictModel):
    cpus: Cpus | None = None  # a Swarm scheduling hint: no effect on one engine (as compose)
    memory: Bytes | None = None
    devices: list[DeviceReservationDef] = []


class ResourcesDef(StrictModel):
    limits: ResourceDef = ResourceDef()
    reservations: ReservationDef = ReservationDef()


class LoggingDef(StrictModel):
    driver: str | None = None
    options: dict[str, Scalar | None] = {}


class UlimitDef(StrictModel):
    soft: Int
    hard: Int


class PortDef(StrictModel):
    """Long syntax of a service port."""

    target: Int
    published: str | Int | None = None
    host_ip: str | None = None
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    mode: Literal["host", "ingress"] = "ingress"  # ingress is Swarm's: one engine binds host
    name: str | None = None
    app_protocol: str | None = None

    def text(self) -> str:
        """The short syntax it means: [IP:][HOST:]CONTAINER/PROTO."""
        ip = self.host_ip or ""
        if ":" in ip:
            ip = f"[{ip}]"
        host = "" if self.published in (None, "") else f"{self.published}:"
        return f"{ip + ':' if ip else ''}{host}{self.target}/{self.protocol}"


class DeployDef(StrictModel):
    mode: Literal["replicated", "global"] = "replicated"  # global: one replica per node
    replicas: Int | None = Field(default=None, ge=0)
    resources: ResourcesDef = ResourcesDef()
    update_config: UpdateConfigDef = UpdateConfigDef()
    rollback_config: RollbackConfigDef = RollbackConfigDef()
    placement: PlacementDef = PlacementDef()
    restart_policy: RestartPolicyDef | None = None
    labels: dict[str, str] = {}  # on the Swarm service (not its containers), as compose

    _limit = field_validator("replicas")(_replica_limit)


class EnvFileDef(StrictModel):
    """Long syntax of env_file (compose): a file that may be absent with required: false."""

    path: str
    required: Bool = True


_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
_PROFILE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class ServiceDef(StrictModel):
    image: str | None = None
    build: str | BuildDef | None = None
    pull: Literal["missing", "always", "never"] = "missing"
    pull_policy: str | None = None  # compose's name; parse_pull_policy
    replicas: Int = Field(1, ge=0)
    container_name: str | None = None
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    env_file: str | EnvFileDef | list[str | EnvFileDef] = []
    environment: dict[str, Scalar | None] | list[str] = {}
    ports: list[str | Int | PortDef] = []
    volumes: list[str | VolumeMountDef] = []
    configs: list[ConfigMountDef] = []
    networks: list[str] | dict[str, NetworkAttachDef | None] = []
    user: str | Int | None = None
    restart: str = "no"
    healthcheck: HealthcheckDef | None = None
    depends_on: list[str] | dict[str, DependsOnDef] = []
    labels: dict[str, Scalar | None] | list[str] = {}
    working_dir: str | None = None
    hostname: str | None = None
    extra_hosts: list[str] | dict[str, str | list[str]] = []
    cap_add: list[str] = []
    cap_drop: list[str] = []
    read_only: Bool = False
    stop_signal: str | None = None
    stop_grace_period: Duration | None = None
    init: Bool | None = None
    network_mode: str | None = None
    pid: str | None = None
    # Host power: judged by the host policy (core.policy) before anything is created.
    privileged: Bool = False
    devices: list[str] = []
    ipc: str | None = None
    uts: str | None = None
    userns_mode: str | None = None
    security_opt: list[str] = []
    secrets: list[str | SecretRefDef] = []
    state: Literal["running", "stopped"] = "running"
    heal: HealDef = HealDef()
    deploy: DeployDef = DeployDef()
    drain_period: Duration = 3.0
    # compose keys of issue #10 (resources, logging, terminal, DNS): RuntimeOptions
    scale: Int | None = Field(default=None, ge=0)
    expose: list[str | Int] = []
    cpus: Cpus | None = None
    mem_limit: Bytes | None = None
    mem_reservation: Bytes | None = None
    pids_limit: Int | None = Field(default=None, ge=-1)
    shm_size: Bytes | None = None
    logging: LoggingDef | None = None
    tmpfs: str | list[str] = []
    ulimits: dict[str, Int | UlimitDef] = {}
    sysctls: dict[str, Scalar] | list[str] = {}
    stdin_open: Bool = False
    tty: Bool = False
    dns: str | list[str] = []
    dns_search: str | list[str] = []
    group_add: list[str | Int] = []
    # compose keys of issue #22
    profiles: list[str] = []  # run only when one is selected (config.profiles)
    memswap_limit: SwapBytes | None = None
    links: list[str] = []  # SERVICE[:ALIAS]: the alias this service alone resolves

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _PROFILE.match(name):
                raise ValueError(
                    f"profile {name!r} must start with a letter or digit and hold only "
                    "letters, digits, _, . and - (as compose)"
                )
        return value

    @property
    def replica_count(self) -> int:
        """replicas, or deploy.replicas or scale when only that is given (a conflict is a
        _check error); one for deploy.mode global on a single host (one node)."""
        if self.deploy.mode == "global":
            return 1
        if "replicas" not in self.model_fields_set:
            for given in (self.deploy.replicas, self.scale):
                if given is not None:
                    return given
        return self.replicas

    _limit = field_validator("replicas", "scale")(_replica_limit)

    @field_validator("pull_policy")
    @classmethod
    def _pull_policy(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pull_policy(value)
        return value

    @field_validator("restart")
    @classmethod
    def _restart_policy(cls, value: str) -> str:
        if not _RESTART.match(value):
            raise ValueError("must be no, always, unless-stopped or on-failure[:N]")
        return value
