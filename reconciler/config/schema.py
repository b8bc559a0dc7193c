"""The desired-state file format (schema v1) as pydantic models.

Field names follow docker compose so a compose user feels at home. Only the
shape is checked here; cross-field rules live in `loader.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<u>ms|us|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a compose duration such as `1m30s` or `500ms`."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 10s or 1m30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m["n"]) * _UNIT_S[m["u"]]
            pos = m.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"must be a duration such as 10s or 1m30s, not {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Scalar = str | int | float | bool


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
    internal: bool = False
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
    retries: int = Field(3, ge=0)
    start_period: Duration = 0.0
    disable: bool = False


class NetworkAttachDef(_Model):
    aliases: list[str] = []


class DependsOnDef(_Model):
    condition: Literal["service_started", "service_healthy"] = "service_started"


class VolumeMountDef(_Model):
    """Long syntax of a service volume."""

    type: Literal["volume", "bind"] = "volume"
    source: str
    target: str
    read_only: bool = False


class ConfigMountDef(_Model):
    """A config file mounted read-only; its content is part of the container's spec."""

    source: str
    target: str
    reload_signal: str | None = None


class HealDef(_Model):
    min_uptime: Duration = 10.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    unhealthy_grace: Duration | None = None


FailureAction = Literal["rollback", "pause", "continue"]


class UpdateConfigDef(_Model):
    """deploy.update_config, with Swarm's names and defaults."""

    parallelism: int = Field(default=1, ge=0)  # 0: every replica at once
    delay: Duration = 0.0
    order: Literal["stop-first", "start-first"] = "stop-first"
    monitor: Duration = 5.0
    failure_action: FailureAction = "rollback"
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


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
    replicas: int | None = Field(default=None, ge=0)
    update_config: UpdateConfigDef = UpdateConfigDef()
    rollback_config: RollbackConfigDef = RollbackConfigDef()


_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


class ServiceDef(_Model):
    image: str | None = None
    build: str | BuildDef | None = None
    pull: Literal["missing", "always", "never"] = "missing"
    replicas: int = Field(1, ge=0)
    container_name: str | None = None
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    environment: dict[str, Scalar | None] | list[str] = {}
    ports: list[str | int] = []
    volumes: list[str | VolumeMountDef] = []
    configs: list[ConfigMountDef] = []
    networks: list[str] | dict[str, NetworkAttachDef | None] = []
    user: str | int | None = None
    restart: str = "no"
    healthcheck: HealthcheckDef | None = None
    depends_on: list[str] | dict[str, DependsOnDef] = []
    labels: dict[str, str] | list[str] = {}
    working_dir: str | None = None
    hostname: str | None = None
    extra_hosts: list[str] = []
    cap_add: list[str] = []
    cap_drop: list[str] = []
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace_period: Duration | None = None
    init: bool | None = None
    network_mode: str | None = None
    pid: str | None = None
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

    @field_validator("restart")
    @classmethod
    def _restart_policy(cls, value: str) -> str:
        if not _RESTART.match(value):
            raise ValueError("must be no, always, unless-stopped or on-failure[:N]")
        return value


class DesiredStateDef(_Model):
    version: Literal[1] = 1
    project: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    networks: dict[str, NetworkDef | None] = {}
    volumes: dict[str, VolumeDef | None] = {}
    services: dict[str, ServiceDef] = {}
