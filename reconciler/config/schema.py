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


Duration = Annotated[float, BeforeValidator(parse_duration)]
Int = Annotated[int, BeforeValidator(_integer)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Scalar = str | int | float | bool


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


class VolumeDef(_Model):
    driver: str = "local"
    labels: dict[str, str] = {}


class BuildDef(_Model):
    context: str = "."
    dockerfile: str = "Dockerfile"


class HealthcheckDef(_Model):
    test: str | list[str]
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: Int = Field(3, ge=0)
    start_period: Duration = 0.0
    disable: Bool = False


class NetworkAttachDef(_Model):
    aliases: list[str] = []


class DependsOnDef(_Model):
    condition: Literal["service_started", "service_healthy"] = "service_started"


class VolumeMountDef(_Model):
    """Long syntax of a service volume."""

    type: Literal["volume", "bind"] = "volume"
    source: str
    target: str
    read_only: Bool = False


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


class DeployDef(_Model):
    replicas: Int | None = Field(default=None, ge=0)
    update_config: UpdateConfigDef = UpdateConfigDef()
    rollback_config: RollbackConfigDef = RollbackConfigDef()

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
    replicas: Int = Field(1, ge=0)
    container_name: str | None = None
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    env_file: str | list[str | EnvFileDef] = []
    environment: dict[str, Scalar | None] | list[str] = {}
    ports: list[str | Int] = []
    volumes: list[str | VolumeMountDef] = []
    configs: list[ConfigMountDef] = []
    networks: list[str] | dict[str, NetworkAttachDef | None] = []
    user: str | Int | None = None
    restart: str = "no"
    healthcheck: HealthcheckDef | None = None
    depends_on: list[str] | dict[str, DependsOnDef] = []
    labels: dict[str, str] | list[str] = {}
    working_dir: str | None = None
    hostname: str | None = None
    extra_hosts: list[str] = []
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

    @property
    def replica_count(self) -> int:
        """replicas, or deploy.replicas when only that is given (a conflict is a _check error)."""
        if "replicas" not in self.model_fields_set and self.deploy.replicas is not None:
            return self.deploy.replicas
        return self.replicas

    _limit = field_validator("replicas")(_replica_limit)

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
