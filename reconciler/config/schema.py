"""The desired-state file format (schema v1) as pydantic models.

Field names follow docker compose so a compose user feels at home. Only the
shape is checked here; cross-field rules live in `loader.py`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

DEFAULT_MAX_REPLICAS = 1000  # per service; RECONCILER_MAX_REPLICAS changes it

_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<u>ms|us|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a compose duration such as `1m30s` or `500ms`."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 10s or 1m30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError("must be a finite duration such as 10s or 1m30s")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m["n"]) * _UNIT_S[m["u"]]
            pos = m.end()
        if text and pos == len(text) and math.isfinite(total):
            return total
    # The value is not echoed: it may have been interpolated from a secret.
    raise ValueError("must be a duration such as 10s, 1m30s or 500ms")


PULL_EVERY_MIN_S = 1.0
PULL_EVERY_MAX_S = 365 * 86400.0  # longer is "never" in practice; beyond it timers overflow
_PERIODS = {"daily": 86400.0, "weekly": 7 * 86400.0}


def parse_pull_policy(value: str) -> tuple[Literal["missing", "always", "never"], float | None]:
    """compose's pull_policy -> (what a create does, how often the tag is checked or None).

    always, missing (if_not_present), never; build (rebuild on every create); daily, weekly
    and every_<duration> (`every_5m`, `every_12h`) follow the tag: missing at create, then
    the registry is asked on that schedule.
    """
    text = value.strip()
    if text in ("always", "never", "missing"):
        return text, None  # type: ignore[return-value]
    if text == "if_not_present":
        return "missing", None
    if text == "build":
        return "always", None
    if text in _PERIODS:
        return "missing", _PERIODS[text]
    if text.startswith("every_"):
        spelled = text.removeprefix("every_")
        try:
            seconds = parse_duration(spelled)
        except ValueError:
            if re.fullmatch(r"[\d.]+[dw]", spelled):  # Go's durations (compose's) stop at h
                raise ValueError(
                    "every_<duration> takes h, m, s, ms (as compose): write days in hours "
                    "(every_24h, every_168h) or use daily / weekly"
                ) from None
            raise ValueError(
                "every_<duration> needs a duration such as every_5m, every_12h or every_1h30m"
            ) from None
        if not PULL_EVERY_MIN_S <= seconds <= PULL_EVERY_MAX_S:
            raise ValueError(
                f"every_<duration> must be between {PULL_EVERY_MIN_S:g}s and "
                f"{PULL_EVERY_MAX_S / 3600:g}h (365 days), such as every_5m or every_12h"
            )
        return "missing", seconds
    raise ValueError(
        "must be always, missing, never, build, daily, weekly or every_<duration> (every_5m)"
    )


def _integer(value: Any) -> Any:
    """An integer, or its decimal text (what `${VAR}` gives); never true/false or 1.5."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,30}", value.strip()):
        return int(value)
    raise ValueError("must be an integer")


_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")


def _boolean(value: Any) -> Any:
    """true or false (YAML 1.2: `yes`, `on`, 1 are not booleans); their text from `${VAR}`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip() in _TRUE + _FALSE:
        return value.strip() in _TRUE
    raise ValueError("must be true or false")


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


_BYTES = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<u>[kmgtp]?)(?:i?b)?", re.IGNORECASE)


def parse_bytes(value: Any) -> int:
    """Bytes from an integer or compose's `512m`, `1g`, `1.5gb`, `100k` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512m or 1g, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _BYTES.fullmatch(value.strip())
        if m:
            power = " kmgtp".index(m["u"].lower() or " ")
            size = float(m["n"]) * 1024**power
            if size < 2**63:
                return int(size)
    raise ValueError("must be a size such as 512m, 1g or a number of bytes")


def _cpus(value: Any) -> Any:
    """A number of CPUs: 0.5, 2, or their text ("0.5", as compose writes it)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of CPUs such as 0.5, not true/false")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError("must be a number of CPUs such as 0.5") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Int = Annotated[int, BeforeValidator(_integer)]


def _file_mode(value: Any) -> Any:
    """A mode in octal, as Docker and chmod read it: `1777`, `0o1777` or `01777` (the loader
    hands the text as written; a number's decimal digits are read as octal digits)."""
    if isinstance(value, bool):
        raise ValueError("must be an octal mode such as 1777 or 0o1777")
    text = str(value).strip().lower().removeprefix("0o")
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError("must be an octal mode such as 1777 or 0o1777") from None
    if not 0 <= mode <= 0o7777:
        raise ValueError("must be an octal mode between 0 and 7777")
    return mode


FileMode = Annotated[int, BeforeValidator(_file_mode)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Scalar = str | int | float | bool
Cpus = Annotated[float, BeforeValidator(_cpus), Field(gt=0, allow_inf_nan=False)]


def _replica_limit(value: int | None, info: ValidationInfo) -> int | None:
    """At most the limit: checked here, before anything makes one spec per replica."""
    limit = int((info.context or {}).get("max_replicas", DEFAULT_MAX_REPLICAS))
    if value is not None and value > limit:
        raise ValueError(
            f"must be <= {limit} (the limit of replicas per service; "
            "RECONCILER_MAX_REPLICAS changes it)"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IpamConfig(_Model):
    subnet: str
    gateway: str | None = None


class Ipam(_Model):
    driver: str = "default"
    config: list[IpamConfig] = []


class NetworkDef(_Model):
    driver: str = "bridge"
    internal: Bool = False
    labels: dict[str, str] = {}
    ipam: Ipam | None = None
    name: str | None = None  # the Docker name (default: the key)
    external: Bool = False  # made elsewhere: used, never created nor removed


class VolumeDef(_Model):
    driver: str = "local"
    labels: dict[str, str] = {}
    driver_opts: dict[str, Scalar] = {}
    name: str | None = None  # the Docker name (default: the key)
    external: Bool = False  # made elsewhere: used, never created nor removed


class BuildDef(_Model):
    context: str = "."
    dockerfile: str = "Dockerfile"


class HealthcheckDef(_Model):
    test: str | list[str]
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: Int = Field(3, ge=0)
    start_period: Duration = 0.0
    start_interval: Duration | None = None  # Docker API >= 1.44 (engine 25); older drop it
    disable: Bool = False


class NetworkAttachDef(_Model):
    aliases: list[str] = []


class DependsOnDef(_Model):
    condition: Literal["service_started", "service_healthy", "service_completed_successfully"] = (
        "service_started"
    )


class TmpfsMountDef(_Model):
    size: Bytes | None = None
    mode: FileMode | None = None  # octal, as written: 1777 or 0o1777 (the value: 0o1777)


class VolumeMountDef(_Model):
    """Long syntax of a service volume (`type: tmpfs` is a tmpfs mount, as `tmpfs:`)."""

    type: Literal["volume", "bind", "tmpfs"] = "volume"
    source: str | None = None  # required for bind; a volume without one is anonymous
    target: str
    read_only: Bool = False
    tmpfs: TmpfsMountDef | None = None


class ConfigMountDef(_Model):
    """A config file mounted read-only; its content is part of the container's spec."""

    source: str
    target: str
    reload_signal: str | None = None


class SecretDef(_Model):
    """A file-based secret (compose): its content reaches containers only as a file."""

    file: str


class SecretRefDef(_Model):
    """Long syntax of a service's secret: `target` under /run/secrets (or absolute). The file
    is bind-mounted as it is on the host, so compose's uid/gid/mode are not offered."""

    source: str
    target: str | None = None


class HealDef(_Model):
    min_uptime: Duration = 10.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    unhealthy_grace: Duration | None = None


FailureAction = Literal["rollback", "pause", "continue"]


class UpdateConfigDef(_Model):
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


class PreferenceDef(_Model):
    spread: str


class PlacementDef(_Model):
    """deploy.placement (Swarm only: one host has nowhere else to place a replica)."""

    constraints: list[str] = []
    preferences: list[PreferenceDef] = []
    max_replicas_per_node: Int | None = Field(default=None, ge=0)


class RestartPolicyDef(_Model):
    """deploy.restart_policy (Swarm only; the single host uses `restart` and `heal`)."""

    condition: Literal["none", "on-failure", "any"] = "any"
    delay: Duration = 5.0
    max_attempts: Int | None = Field(default=None, ge=0)
    window: Duration | None = None


class ResourceDef(_Model):
    """deploy.resources.limits / .reservations."""

    cpus: Cpus | None = None
    memory: Bytes | None = None
    pids: Int | None = Field(default=None, ge=-1)


class ReservationDef(_Model):
    cpus: Cpus | None = None  # a Swarm scheduling hint: no effect on one engine (as compose)
    memory: Bytes | None = None


class ResourcesDef(_Model):
    limits: ResourceDef = ResourceDef()
    reservations: ReservationDef = ReservationDef()


class LoggingDef(_Model):
    driver: str | None = None
    options: dict[str, Scalar | None] = {}


class UlimitDef(_Model):
    soft: Int
    hard: Int


class PortDef(_Model):
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


class DeployDef(_Model):
    mode: Literal["replicated", "global"] = "replicated"  # global: one replica per node
    replicas: Int | None = Field(default=None, ge=0)
    resources: ResourcesDef = ResourcesDef()
    update_config: UpdateConfigDef = UpdateConfigDef()
    rollback_config: RollbackConfigDef = RollbackConfigDef()
    placement: PlacementDef = PlacementDef()
    restart_policy: RestartPolicyDef | None = None
    labels: dict[str, str] = {}  # on the Swarm service (not its containers), as compose

    _limit = field_validator("replicas")(_replica_limit)


class EnvFileDef(_Model):
    """Long syntax of env_file (compose): a file that may be absent with required: false."""

    path: str
    required: Bool = True


_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


class ServiceDef(_Model):
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


class DesiredStateDef(_Model):
    version: Literal[1] = 1
    project: str | None = None  # its form is checked by the loader (with name and the folder)
    name: str | None = None  # compose's name for project
    networks: dict[str, NetworkDef | None] = {}
    volumes: dict[str, VolumeDef | None] = {}
    services: dict[str, ServiceDef] = {}
    secrets: dict[str, SecretDef] = {}
