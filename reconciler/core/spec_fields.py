"""Specs flattened into views of file field names, for core.spec_diff: a host replica's
`ContainerSpec` (`host_view`) and a Swarm ServiceSpec as the API holds it (`swarm_view`).

Unset fields (None, empty, the default) are left out, so "unset" and "default" compare
equal. Called by the host engine (the label it creates containers with), the planners
(causes) and the adapters (`plan`'s diff).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from reconciler.core.desired import ContainerSpec, RuntimeOptions
from reconciler.core.spec_diff import HIDDEN, View, fingerprint, guarded

LABEL_SPEC_VIEW = "io.reconciler.spec"  # a container's host_view, as created (encoded)

# ContainerSpec fields that are no field of the file's service, or shown through another.
HOST_NOT_SHOWN = {
    "name": "the replica's identity (container_name)",
    "project": "the replica's identity",
    "service": "the replica's identity",
    "replica": "the replica's identity",
    "volumes": "derived from the binds (shown as volumes)",
    "spec_hash": "a digest of the others",
    "reload_digest": "a config applied by a signal (the signal's cause says so)",
    "reload_signal": "applied by a signal, not a replacement",
    "reload_check": "run before the signal, not a replacement",
}
# RuntimeOptions fields under their compose names.
_OPTION_NAMES = {
    "log_driver": "logging.driver",
    "log_options": "logging.options",
    "health_start_interval_s": "healthcheck.start_interval",
}


def _put(view: View, name: str, value: Any, hidden: frozenset[str]) -> None:
    if value is None or value == () or value == [] or value is False:
        return
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        value = guarded(name, value, hidden)
    view[name] = value


def _pairs(view: View, prefix: str, pairs: Any, hidden: frozenset[str]) -> None:
    for key, value in pairs:
        _put(view, f"{prefix}.{key}", str(value), hidden)


def _environment(view: View, entries: Any, hidden: frozenset[str]) -> None:
    for entry in entries:
        key, sep, value = str(entry).partition("=")
        _put(view, f"environment.{key}", value if sep else None, hidden)


def host_view(spec: ContainerSpec, hidden: frozenset[str] = frozenset()) -> View:
    """A replica's spec by the file's field names (`hidden`: values never to show)."""
    view: View = {}
    for f in fields(spec):
        name, value = f.name, getattr(spec, f.name)
        if name in HOST_NOT_SHOWN:
            continue
        if name == "environment":
            _environment(view, value, hidden)
        elif name == "labels":
            _pairs(view, "labels", value, hidden)
        elif name == "ports":
            ports = [
                ":".join(str(p) for p in (b.host_ip, b.host_port) if p)
                + (":" if b.host_port else "")
                + f"{b.container_port}/{b.protocol}"
                for b in value
            ]
            _put(view, "ports", sorted(ports), hidden)
        elif name == "binds":
            _put(view, "volumes", sorted(value), hidden)
        elif name == "networks":
            for a in value:
                view[f"networks.{a.network}"] = {"aliases": list(a.aliases)}
        elif name == "healthcheck" and value is not None:
            h = value
            view["healthcheck.test"] = list(h.test)
            for key in ("interval_s", "timeout_s", "retries", "start_period_s"):
                view[f"healthcheck.{key.removesuffix('_s')}"] = getattr(h, key)
        elif name == "stop_grace_s":
            _put(view, "stop_grace_period", value, hidden)
        elif name == "restart":
            view["restart"] = value
        elif name == "secrets":
            for s in value:
                stamp = fingerprint(s.name, f"{s.target}\0{s.digest}")
                view[f"secrets.{s.name}"] = {HIDDEN: stamp}
        elif name == "config_digests":
            for target, digest in value:
                view[f"configs.{target}"] = f"sha256:{digest[:12]}"
        elif name == "device_requests":
            devices = [d.describe() for d in value]
            _put(view, "deploy.resources.reservations.devices", devices, hidden)
        elif name == "build_digest":
            if value:  # build args, target, labels...: the image is rebuilt
                view["build"] = f"sha256:{value[:12]}"
        elif name == "options":
            _options(view, value, hidden)
        else:
            _put(view, name, value, hidden)
    return view


def _options(view: View, o: RuntimeOptions, hidden: frozenset[str]) -> None:
    value: Any
    for key, value in o.hashed().items():
        name = _OPTION_NAMES.get(key, key)
        if key in ("log_options", "sysctls"):
            _pairs(view, name, value, hidden)
        elif key == "tmpfs":
            _put(view, "tmpfs", [f"{p}:{opts}" if opts else p for p, opts in value], hidden)
        elif key == "ulimits":
            for ulimit, soft, hard in value:
                view[f"ulimits.{ulimit}"] = [soft, hard]
        else:
            _put(view, name, value, hidden)


# --------------------------------------------------------------------------- Swarm

# ServiceSpec paths under the file's names; the rest keep the API's path.
_SWARM_NAMES = {
    "TaskTemplate.ContainerSpec.Image": "image",
    "TaskTemplate.ContainerSpec.Args": "command",
    "TaskTemplate.ContainerSpec.Command": "entrypoint",
    "TaskTemplate.ContainerSpec.User": "user",
    "TaskTemplate.ContainerSpec.Dir": "working_dir",
    "TaskTemplate.ContainerSpec.Hostname": "hostname",
    "TaskTemplate.ContainerSpec.Hosts": "extra_hosts",
    "TaskTemplate.ContainerSpec.StopSignal": "stop_signal",
    "TaskTemplate.ContainerSpec.StopGracePeriod": "stop_grace_period",
    "TaskTemplate.ContainerSpec.Init": "init",
    "TaskTemplate.ContainerSpec.ReadOnly": "read_only",
    "TaskTemplate.ContainerSpec.CapabilityAdd": "cap_add",
    "TaskTemplate.ContainerSpec.CapabilityDrop": "cap_drop",
    "TaskTemplate.ContainerSpec.Mounts": "volumes",
    "TaskTemplate.ContainerSpec.Healthcheck.Test": "healthcheck.test",
    "TaskTemplate.ContainerSpec.Healthcheck.Interval": "healthcheck.interval",
    "TaskTemplate.ContainerSpec.Healthcheck.Timeout": "healthcheck.timeout",
    "TaskTemplate.ContainerSpec.Healthcheck.Retries": "healthcheck.retries",
    "TaskTemplate.ContainerSpec.Healthcheck.StartPeriod": "healthcheck.start_period",
    "TaskTemplate.Placement": "deploy.placement",
    "TaskTemplate.Resources": "deploy.resources",
    "TaskTemplate.RestartPolicy": "deploy.restart_policy",
    "UpdateConfig": "deploy.update_config",
    "RollbackConfig": "deploy.rollback_config",
    "EndpointSpec.Ports": "ports",
    "Mode.Replicated.Replicas": "replicas",
    "Mode.Global": "deploy.mode",
}
# Whole values (not flattened further); the file owns these (set by us, never by Swarm).
_WHOLE = {
    "TaskTemplate.Placement",
    "TaskTemplate.Resources",
    "TaskTemplate.RestartPolicy",
    "EndpointSpec.Ports",
    "Mode.Global",
}
# update_config / rollback_config by the file's names, durations as the file says them.
_UPDATE_CONFIGS = {
    "UpdateConfig": "deploy.update_config",
    "RollbackConfig": "deploy.rollback_config",
}
_UPDATE_KEYS = {
    "Parallelism": "parallelism",
    "Delay": "delay",
    "FailureAction": "failure_action",
    "Monitor": "monitor",
    "MaxFailureRatio": "max_failure_ratio",
    "Order": "order",
}
_NANOSECONDS = {
    "TaskTemplate.ContainerSpec.StopGracePeriod",
    "TaskTemplate.ContainerSpec.Healthcheck.Interval",
    "TaskTemplate.ContainerSpec.Healthcheck.Timeout",
    "TaskTemplate.ContainerSpec.Healthcheck.StartPeriod",
}
# Fields only the file sets: one Swarm shows that the file does not is a removal. Any other
# field the file leaves out is a default Swarm filled in (not a difference).
SWARM_OWNED = ("image", "command", "entrypoint", "environment.", "labels.", "deploy.labels.",
               "user", "working_dir", "hostname", "extra_hosts", "volumes", "healthcheck.",
               "configs.", "secrets.", "networks.", "ports", "replicas")  # fmt: skip
_OURS = ("io.reconciler.", "com.docker.stack.")


def swarm_view(spec: Mapping[str, Any], hidden: frozenset[str] = frozenset()) -> View:
    """A ServiceSpec (ours or as Swarm returns it) by the file's field names."""
    view: View = {}
    _walk(view, "", spec, hidden)
    return view


def _walk(view: View, path: str, value: Any, hidden: frozenset[str]) -> None:
    container = "TaskTemplate.ContainerSpec"
    if path in (f"{container}.Env",):
        _environment(view, value or (), hidden)
    elif path in (f"{container}.Labels", "Labels"):
        prefix = "labels" if path != "Labels" else "deploy.labels"
        kept = [(k, v) for k, v in (value or {}).items() if not k.startswith(_OURS)]
        _pairs(view, prefix, kept, hidden)
    elif path == f"{container}.Configs":
        for ref in value or ():
            target = (ref.get("File") or {}).get("Name", "")
            view[f"configs.{target}"] = ref.get("ConfigName", "")
    elif path == f"{container}.Secrets":
        for ref in value or ():
            target = (ref.get("File") or {}).get("Name", "")
            view[f"secrets.{target}"] = {HIDDEN: fingerprint(target, ref.get("SecretName", ""))}
    elif path in _UPDATE_CONFIGS and isinstance(value, dict):
        for key, item in value.items():
            name = f"{_UPDATE_CONFIGS[path]}.{_UPDATE_KEYS.get(key, key)}"
            _put(view, name, _duration(item) if key in ("Delay", "Monitor") else item, hidden)
    elif path == "TaskTemplate.Networks":
        for ref in value or ():
            name = ref.get("Target", "")
            view[f"networks.{name}"] = {"aliases": list(ref.get("Aliases") or [])}
    elif isinstance(value, dict) and path not in _WHOLE:
        for key, item in value.items():
            _walk(view, f"{path}.{key}" if path else key, item, hidden)
    else:
        name = _SWARM_NAMES.get(path, path)
        if path == "Mode.Global":
            value = "global"
        elif path in _NANOSECONDS and isinstance(value, int):
            value = value / 1e9  # seconds, as the file says them
        _put(view, name, value, hidden)


def swarm_observed(observed: View, desired: View) -> View:
    """The observed view as far as it can differ from the desired one: a field the file
    leaves out that Swarm shows is a default it filled in, unless the file owns it (then it
    was removed); a whole value holding all the file's (and Swarm's defaults) is equal; a
    zero the file sends that Swarm leaves out (`healthcheck.start_period: 0`: Go's omitempty)
    is no difference either."""
    kept = {}
    for key, value in observed.items():
        if key in desired and covers(value, desired[key]):
            kept[key] = desired[key]
        elif key in desired or key.startswith(SWARM_OWNED):
            kept[key] = value
    for key, value in desired.items():
        if key not in observed and _zero(value):
            kept[key] = value
    return kept


def _duration(nanoseconds: Any) -> Any:
    """A Swarm duration (nanoseconds) as the file writes it: `2s`, `1m30s`, `500ms` (a zero
    stays 0: Swarm leaves it out)."""
    if not isinstance(nanoseconds, int) or nanoseconds == 0:
        return nanoseconds
    ms = nanoseconds // 1_000_000
    if ms % 1000:
        return f"{ms}ms"
    minutes, seconds = divmod(ms // 1000, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(hours, "h"), (minutes, "m"), (seconds, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _zero(value: Any) -> bool:
    """What the engine leaves out of a spec it returns (Go's omitempty)."""
    if isinstance(value, dict):
        return all(_zero(v) for v in value.values())
    return value in (None, 0, False, "", [])


def covers(observed: Any, desired: Any) -> bool:
    """Does the observed spec hold everything the desired one says? Keys Swarm added
    (defaults) are ignored, keys we send as zero may be missing; lists match item by item."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return _zero(desired) and observed is None
        return all(
            covers(observed[k], v) if k in observed else _zero(v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(covers(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired)
