"""The host policy: what services may ask of the host, decided outside the desired state.

Pure. Without a policy file nothing that is root on the host is granted: privileged,
devices, GPUs and other device requests, capabilities beyond Docker's defaults, the host's
pid/ipc/uts/user/network namespaces, bind mounts of the Docker socket and of system
folders, security options that turn seccomp/AppArmor/SELinux off. A policy file
(config.policy_file) allows a rule for named services (and paths, capabilities or
options). `enforce` marks denied services; the controller never creates nor touches them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace

from reconciler.core.desired import DesiredState, ServiceSpec

RULES = (
    "privileged",
    "devices",
    "cap_add",
    "host_pid",
    "host_ipc",
    "host_uts",
    "host_userns",
    "host_network",
    "host_path",
    "security_opt",
    "gpus",  # deploy.resources.reservations.devices: DeviceRequests, as `docker run --gpus`
)
# Docker's default capability set: adding one of these grants nothing new.
SAFE_CAPS = frozenset(
    {
        *("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP"),
        *("NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP"),
    }
)
# Host paths a bind mount may not reach (itself, below it, or a folder above it).
PROTECTED_PATHS = (
    "/",
    "/etc",
    "/root",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/var/lib/docker",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
)
_UNCONFINED = {
    "seccomp=unconfined",
    "apparmor=unconfined",
    "label=disable",
    "systempaths=unconfined",
}
_HOST_MODES = (
    ("pid", "host_pid"),
    ("ipc", "host_ipc"),
    ("uts", "host_uts"),
    ("userns_mode", "host_userns"),
    ("network_mode", "host_network"),
)
# Namespaces a service may join from another container (`service:X`): judged through X.
_JOINABLE = (("network_mode", "host_network"), ("pid", "host_pid"), ("ipc", "host_ipc"))


@dataclass(frozen=True, slots=True)
class Allow:
    """One grant: `rule` for `services`; `values` narrow it (paths for host_path/devices,
    capabilities for cap_add, options for security_opt; empty: any); host paths only
    read-only unless `read_only` is False."""

    rule: str
    services: frozenset[str]
    values: tuple[str, ...] = ()
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class Policy:
    allows: tuple[Allow, ...] = ()
    source: str = "the built-in default policy"


DEFAULT = Policy()


@dataclass(frozen=True, slots=True)
class Denial:
    service: str
    rule: str
    key: str  # the service's key in the file
    line: int  # 0: unknown
    detail: str

    def message(self, source: str, policy: Policy) -> str:
        where = f"{source}:{self.line}: " if self.line else f"{source}: "
        return (
            f"{where}services.{self.service}.{self.key}: {self.detail}: denied by "
            f"{policy.source} (rule {self.rule}); the service is not created"
        )


def normalise_cap(text: str) -> str:
    cap = text.strip().upper()
    return cap.removeprefix("CAP_")


def denials(svc: ServiceSpec, policy: Policy = DEFAULT) -> tuple[Denial, ...]:
    """What `svc` asks of the host that `policy` does not allow."""
    if not svc.replicas:
        return ()  # nothing is created
    c = svc.replicas[0]
    line = svc.access.line
    out: list[Denial] = []

    def deny(rule: str, key: str, detail: str, value: str = "", read_only: bool = True) -> None:
        if not _allowed(policy, rule, svc.name, value, read_only):
            out.append(Denial(svc.name, rule, key, line(key), detail))

    if c.privileged:
        deny("privileged", "privileged", "privileged: true")
    for dev in c.devices:
        host = dev.split(":")[0]
        deny("devices", "devices", f"device {host}", posixpath.normpath(host))
    for request in c.device_requests:
        key = "deploy.resources.reservations.devices"
        deny("gpus", key, f"device request ({request.describe()})")
    for cap in c.cap_add:
        name = normalise_cap(cap)
        if name not in SAFE_CAPS:
            deny("cap_add", "cap_add", f"capability {name}", name)
    for key, rule in _HOST_MODES:
        if getattr(c, key) == "host":
            deny(rule, key, f"{key}: host (the host's namespace)")
    for opt in c.security_opt:
        norm = opt.strip().replace(":", "=", 1)
        if norm in _UNCONFINED:
            deny("security_opt", "security_opt", f"security_opt {norm}", norm)
    for path, read_only, key, at in svc.access.binds:
        hit = protected(path)
        if hit is not None:
            mode = "read-only" if read_only else "read-write"
            if not _allowed(policy, "host_path", svc.name, path, read_only):
                detail = f"bind mount of {path} ({mode}; reaches {hit})"
                out.append(Denial(svc.name, "host_path", key, at, detail))
    return tuple(out)


def protected(path: str) -> str | None:
    """The protected path a bind of host `path` reaches, or None."""
    path = posixpath.normpath(path)
    for p in PROTECTED_PATHS:
        if path == p or (p != "/" and (_under(path, p) or _under(p, path))):
            return p
    return None


def joined(desired: DesiredState, policy: Policy = DEFAULT) -> tuple[Denial, ...]:
    """Services that join another project container's namespace (`service:X`, translated to
    `container:NAME`) which is, through any chain of such joins, the host's: they need the
    same allowance as a service asking for `host` itself."""
    owner = {c.name: (svc.name, c) for svc in desired.services for c in svc.replicas}
    out: list[Denial] = []
    for svc in desired.services:
        if not svc.replicas:
            continue
        for key, rule in _JOINABLE:
            mode: str = getattr(svc.replicas[0], key) or ""
            via: list[str] = []
            while mode.startswith("container:") and mode.removeprefix("container:") in owner:
                name, spec = owner[mode.removeprefix("container:")]
                if name in via or name == svc.name:
                    break  # a cycle: Docker refuses it at create
                via.append(name)
                mode = getattr(spec, key) or ""
            if via and mode == "host" and not _allowed(policy, rule, svc.name, "", True):
                chain = " -> ".join(via)
                detail = f"{key}: service:{via[0]} (through {chain}: the host's namespace)"
                out.append(Denial(svc.name, rule, key, svc.access.line(key), detail))
    return tuple(out)


def enforce(
    desired: DesiredState, policy: Policy = DEFAULT
) -> tuple[DesiredState, tuple[Denial, ...]]:
    """`desired` with its denied services marked, and every denial (in file order)."""
    found = tuple(d for svc in desired.services for d in denials(svc, policy))
    found += joined(desired, policy)
    found = tuple(sorted(found, key=lambda d: (d.line == 0, d.line)))
    return replace(desired, denied=frozenset(d.service for d in found)), found


def _allowed(policy: Policy, rule: str, service: str, value: str, read_only: bool) -> bool:
    for a in policy.allows:
        if a.rule != rule or service not in a.services:
            continue
        if a.values and not any(_matches(rule, v, value) for v in a.values):
            continue
        if rule == "host_path" and a.read_only and not read_only:
            continue
        return True
    return False


def _matches(rule: str, allowed: str, value: str) -> bool:
    if rule in ("host_path", "devices"):
        allowed = posixpath.normpath(allowed)  # "/" allows "/" itself, not all below it
        return value == allowed or (allowed != "/" and _under(value, allowed))
    if rule == "cap_add":
        return normalise_cap(allowed) == value
    return allowed.strip().replace(":", "=", 1) == value


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
