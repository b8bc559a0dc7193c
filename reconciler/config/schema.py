"""The desired-state file format (schema v1) as pydantic models: the top level, networks,
volumes and secrets here; services in schema_service.py, the field types and parsers in
schema_values.py (the definitions and parsers are re-exported: importers use this module).

Field names follow docker compose so a compose user feels at home. Only the shape is checked
here; cross-field rules live in `rules.py`.
"""

from __future__ import annotations

from typing import Literal

from reconciler.config.notify_config import NotifyDef
from reconciler.config.schema_service import (
    BUILD_SECRETS_REASON,
    DEFAULT_MAX_REPLICAS,
    BindOptionsDef,
    BuildDef,
    ConfigMountDef,
    DependsOnDef,
    DeployDef,
    DeviceReservationDef,
    EnvFileDef,
    FailureAction,
    HealDef,
    HealthcheckDef,
    LoggingDef,
    NetworkAttachDef,
    PlacementDef,
    PortDef,
    PreferenceDef,
    ReservationDef,
    ResourceDef,
    ResourcesDef,
    RestartPolicyDef,
    RollbackConfigDef,
    SecretRefDef,
    ServiceDef,
    TmpfsMountDef,
    UlimitDef,
    UpdateConfigDef,
    VolumeMountDef,
)
from reconciler.config.schema_values import (
    PULL_EVERY_MAX_S,
    PULL_EVERY_MIN_S,
    Bool,
    Scalar,
    StrictModel,
    parse_bytes,
    parse_duration,
    parse_pull_policy,
)

__all__ = [
    "BUILD_SECRETS_REASON",
    "DEFAULT_MAX_REPLICAS",
    "PULL_EVERY_MAX_S",
    "PULL_EVERY_MIN_S",
    "BindOptionsDef",
    "BuildDef",
    "ConfigMountDef",
    "DependsOnDef",
    "DeployDef",
    "DesiredStateDef",
    "DeviceReservationDef",
    "EnvFileDef",
    "FailureAction",
    "HealDef",
    "HealthcheckDef",
    "Ipam",
    "IpamConfig",
    "LoggingDef",
    "NetworkAttachDef",
    "NetworkDef",
    "PlacementDef",
    "PortDef",
    "PreferenceDef",
    "ReservationDef",
    "ResourceDef",
    "ResourcesDef",
    "RestartPolicyDef",
    "RollbackConfigDef",
    "SecretDef",
    "SecretRefDef",
    "ServiceDef",
    "TmpfsMountDef",
    "UlimitDef",
    "UpdateConfigDef",
    "VolumeDef",
    "VolumeMountDef",
    "parse_bytes",
    "parse_duration",
    "parse_pull_policy",
]


class IpamConfig(StrictModel):
    subnet: str
    gateway: str | None = None


class Ipam(StrictModel):
    driver: str = "default"
    config: list[IpamConfig] = []


class NetworkDef(StrictModel):
    driver: str = "bridge"
    internal: Bool = False
    labels: dict[str, str] = {}
    ipam: Ipam | None = None
    name: str | None = None  # the Docker name (default: the key)
    external: Bool = False  # made elsewhere: used, never created nor removed
    attachable: Bool = False  # Swarm overlay: plain containers may join it too
    enable_ipv6: Bool = False


class VolumeDef(StrictModel):
    driver: str = "local"
    labels: dict[str, str] = {}
    driver_opts: dict[str, Scalar] = {}
    name: str | None = None  # the Docker name (default: the key)
    external: Bool = False  # made elsewhere: used, never created nor removed


class SecretDef(StrictModel):
    """A file-based secret (compose): its content reaches containers only as a file."""

    file: str


class DesiredStateDef(StrictModel):
    version: Literal[1] = 1
    project: str | None = None  # its form is checked by the loader (with name and the folder)
    name: str | None = None  # compose's name for project
    networks: dict[str, NetworkDef | None] = {}
    volumes: dict[str, VolumeDef | None] = {}
    services: dict[str, ServiceDef] = {}
    secrets: dict[str, SecretDef] = {}
    notify: NotifyDef | None = None  # where conditions are told (config.notify_config)
