"""Each service of a desired-state file rendered into the Swarm API's ServiceSpec (as
`docker stack deploy` would make it), with its networks, configs and secrets.

Called by the CLI and the Swarm runtime instead of `loader.load` for `--target swarm`; Swarm's
rules are checked first (`config.swarm_rules`), with the file's other problems.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.config import encrypted, forms, loader
from reconciler.config import secrets as redact
from reconciler.config.loader import Parsed
from reconciler.config.options import runtime_options
from reconciler.config.render import REPLICA_PLACEHOLDER, Configs
from reconciler.config.schema import (
    PortDef,
    ReservationDef,
    ResourceDef,
    SecretRefDef,
    ServiceDef,
)
from reconciler.config.swarm_rules import NS, issues, memory_bytes, nano_cpus
from reconciler.core.desired import LABEL_SPEC_HASH, ownership_labels
from reconciler.core.policy import Denial, Policy, enforce
from reconciler.core.swarm_model import (
    STACK_NAMESPACE,
    SwarmConfig,
    SwarmDesired,
    SwarmNetwork,
    SwarmSecret,
    SwarmService,
    spec_hash,
)

MAX_CONFIG_BYTES = 500 * 1024  # Swarm refuses a larger config
MAX_CONFIG_NAME = 64
_RESTART = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}


def load(path: str | Path) -> SwarmDesired:
    """Read, validate and render a desired-state file for Swarm; DesiredStateError if bad."""
    return render(loader.load_parts(path, checks=issues))


def judged(desired: SwarmDesired, policy: Policy) -> tuple[SwarmDesired, tuple[Denial, ...]]:
    """The host policy on the services (a bind of `/` is the host's on every node): the
    denied ones are marked, never created nor touched."""
    if desired.host is None:
        return desired, ()
    host, denials = enforce(desired.host, policy)
    return replace(desired, denied=host.denied), denials


def parse(
    raw: bytes | str, *, source: str, base_dir: Path, environ: Mapping[str, str] | None = None
) -> SwarmDesired:
    """`load` for a text (tests)."""
    return render(
        loader.parse_parts(raw, source=source, base_dir=base_dir, environ=environ, checks=issues)
    )


def _ns(seconds: float) -> int:
    return round(seconds * NS)


def _config_name(project: str, rel: str, data: bytes) -> str:
    """<project>_<file>-<sha256[:12]>: a new name for new content (Swarm configs are
    immutable), short enough for Swarm's 64 characters."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    stem = re.sub(r"[^a-zA-Z0-9_.-]", "-", rel).strip("-.") or "config"
    room = MAX_CONFIG_NAME - len(project) - len(digest) - 2
    return f"{project}_{stem[-room:].lstrip('-.')}-{digest}"


def render(parsed: Parsed) -> SwarmDesired:
    """Networks, configs and ServiceSpecs of a parsed file."""
    d, project = parsed.definition, parsed.state.project
    report = parsed.report
    own = {**ownership_labels(project), STACK_NAMESPACE: project}
    networks: dict[str, SwarmNetwork] = {}
    for name, n in d.networks.items():
        labels = {**(n.labels if n else {}), **own}
        ipam = tuple((c.subnet, c.gateway or "") for c in n.ipam.config) if n and n.ipam else ()
        networks[name] = SwarmNetwork(
            f"{project}_{name}",
            tuple(sorted(labels.items())),
            internal=bool(n and n.internal),
            # attachable unless the file says otherwise (`docker run --network` joins it)
            attachable=not (n and "attachable" in n.model_fields_set and not n.attachable),
            ipam=ipam,
            enable_ipv6=bool(n and n.enable_ipv6),
        )
    if any(not s.networks for s in d.services.values()) and "default" not in networks:
        networks["default"] = SwarmNetwork(f"{project}_default", tuple(sorted(own.items())))
    configs: dict[str, SwarmConfig] = {}
    secret_names: dict[str, SwarmSecret] = {}  # file's name -> secret
    secret_files: list[str] = []
    for key, sdef in d.secrets.items():
        path = parsed.renderer.path(sdef.file)
        at = ("secrets", key, "file")
        try:
            data, st = path.read_bytes(), path.stat()
            data = encrypted.plaintext(path, data)  # *.age, SOPS: decrypted in memory
        except OSError as exc:
            report.add(f"cannot read {path}: {exc.strerror}", at, parsed.doc.mark(at))
            continue
        except encrypted.DecryptError as exc:
            report.add(str(exc), at, parsed.doc.mark(at))
            continue
        if len(data) > MAX_CONFIG_BYTES:
            report.add(
                f"{path} is larger than Swarm's {MAX_CONFIG_BYTES // 1024} KiB per secret",
                at,
                parsed.doc.mark(at),
            )
            continue
        text = data.decode("utf-8", "replace").strip()
        redact.mark([text, data.decode("utf-8", "replace")])  # never printed, should it leak
        secret_files.append(str(path))
        stamp = f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
        name = _config_name(project, key, stamp)
        secret_names[key] = SwarmSecret(name, data, tuple(sorted(own.items())))
    services = []
    for name in (s.name for s in parsed.state.services):  # dependency order, as the host
        s = d.services[name]
        refs = []
        for i, c in enumerate(s.configs):
            path = parsed.renderer.path(c.source)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                rel = str(f.relative_to(path)) if path.is_dir() else f.name
                try:
                    data = f.read_bytes()
                except OSError as exc:
                    report.add(
                        f"cannot read {f}: {exc.strerror}",
                        ("services", name, "configs", i, "source"),
                        parsed.doc.mark(("services", name, "configs", i, "source")),
                    )
                    continue
                if len(data) > MAX_CONFIG_BYTES:
                    report.add(
                        f"{f} is larger than Swarm's {MAX_CONFIG_BYTES // 1024} KiB per config",
                        ("services", name, "configs", i, "source"),
                        parsed.doc.mark(("services", name, "configs", i, "source")),
                    )
                    continue
                cfg_name = _config_name(project, rel, data)
                configs[cfg_name] = SwarmConfig(cfg_name, data, tuple(sorted(own.items())))
                target = f"{c.target.rstrip('/')}/{rel}" if path.is_dir() else c.target
                refs.append((target, cfg_name))
        secret_refs = []
        for ref in s.secrets:
            key = ref if isinstance(ref, str) else ref.source
            if key in secret_names:
                secret_refs.append((ref, secret_names[key].name))
        services.append(_service(parsed, name, s, networks, sorted(refs), secret_refs))
    if report:
        raise report.error()
    return SwarmDesired(
        project=project,
        networks=tuple(networks[n] for n in sorted(networks)),
        configs=tuple(configs[c] for c in sorted(configs)),
        services=tuple(services),
        secrets=tuple(secret_names[k] for k in sorted(secret_names)),
        source=parsed.state.source,
        # The file's digest, and each secret's name (its change stamp): a rewritten secret
        # file is a new desired state.
        digest=hashlib.sha256(
            "\0".join([parsed.state.digest, *(s.name for s in secret_names.values())]).encode()
        ).hexdigest(),
        watched=tuple(sorted({*parsed.state.watched, *secret_files})),
        host=parsed.state,
        dormant=parsed.state.dormant,
    )


def _service(
    parsed: Parsed,
    name: str,
    s: ServiceDef,
    networks: Mapping[str, SwarmNetwork],
    configs: list[tuple[str, str]],
    secrets: list[tuple[str | SecretRefDef, str]],
) -> SwarmService:
    project = parsed.state.project
    image = s.image or f"{project}-{name}"
    c = parsed.renderer.container(name, s, image, 1, Configs((), (), "", None), runtime_options(s))
    own = {**ownership_labels(project, name), STACK_NAMESPACE: project}
    container: dict[str, Any] = {
        "Image": image,
        "Labels": {**dict(c.labels), **own},
        "Env": list(c.environment),
    }
    if c.entrypoint is not None:
        container["Command"] = list(c.entrypoint)
    if c.command is not None:
        container["Args"] = list(c.command)
    optional = {
        "User": c.user,
        "Dir": c.working_dir,
        "Hostname": c.hostname,
        "StopSignal": c.stop_signal,
        "Init": c.init,
        "ReadOnly": c.read_only or None,
        "CapabilityAdd": list(c.cap_add) or None,
        "CapabilityDrop": list(c.cap_drop) or None,
        "Hosts": [f"{ip} {host}" for host, _, ip in (h.partition(":") for h in c.extra_hosts)]
        or None,
    }
    container.update({k: v for k, v in optional.items() if v is not None})
    if c.stop_grace_s is not None:
        container["StopGracePeriod"] = _ns(c.stop_grace_s)
    if c.healthcheck is not None:
        h = c.healthcheck
        container["Healthcheck"] = (
            {"Test": ["NONE"]}
            if h.test == ("NONE",)
            else {
                "Test": list(h.test),
                "Interval": _ns(h.interval_s),
                "Timeout": _ns(h.timeout_s),
                "Retries": h.retries,
                "StartPeriod": _ns(h.start_period_s),
            }
        )
    mounts = []
    for vol in s.volumes:
        m = forms.mount(vol)
        assert m is not None  # checked by the loader
        mount: dict[str, Any] = {"Type": m.type, "Target": m.target}
        if m.read_only:
            mount["ReadOnly"] = True
        if m.type == "bind":
            mount["Source"] = str(parsed.renderer.path(m.source))
            if m.propagation:
                mount["BindOptions"] = {"Propagation": m.propagation}
        elif m.source:
            vdef = parsed.definition.volumes.get(m.source)
            # {replica} is the task's slot: each replica keeps its volume on its node.
            source = m.source.replace(REPLICA_PLACEHOLDER, "{{.Task.Slot}}")
            mount["Source"] = f"{project}_{source}"
            mount["VolumeOptions"] = {
                "Labels": {
                    **(vdef.labels if vdef else {}),
                    **ownership_labels(project),
                    STACK_NAMESPACE: project,
                },
                "DriverConfig": {"Name": vdef.driver if vdef else "local"},
            }
        mounts.append(mount)
    if mounts:
        container["Mounts"] = mounts
    if configs:
        container["Configs"] = [
            {"File": {"Name": target, "UID": "0", "GID": "0", "Mode": 0o444}, "ConfigName": cfg}
            for target, cfg in configs
        ]
    if secrets:
        refs = []
        for ref, swarm_name in secrets:
            sm = SecretRefDef(source=ref) if isinstance(ref, str) else ref
            target = sm.target or sm.source
            refs.append(
                {
                    "File": {"Name": target, "UID": "0", "GID": "0", "Mode": 0o444},
                    "SecretName": swarm_name,
                }
            )
        container["Secrets"] = refs
    deploy = s.deploy
    task: dict[str, Any] = {"ContainerSpec": container}
    resources: dict[str, Any] = {}
    for kind, key in (("limits", "Limits"), ("reservations", "Reservations")):
        r: ResourceDef | ReservationDef = getattr(deploy.resources, kind)
        values = {}
        if r.cpus is not None:
            values["NanoCPUs"] = nano_cpus(r.cpus)
        if r.memory is not None:
            values["MemoryBytes"] = memory_bytes(r.memory)
        if isinstance(r, ResourceDef) and r.pids is not None:
            values["Pids"] = r.pids
        if values:
            resources[key] = values
    if resources:
        task["Resources"] = resources
    task["RestartPolicy"] = _restart_policy(s)
    placement: dict[str, Any] = {}
    if deploy.placement.constraints:
        placement["Constraints"] = list(deploy.placement.constraints)
    if deploy.placement.preferences:
        placement["Preferences"] = [
            {"Spread": {"SpreadDescriptor": p.spread}} for p in deploy.placement.preferences
        ]
    if deploy.placement.max_replicas_per_node is not None:
        placement["MaxReplicas"] = deploy.placement.max_replicas_per_node
    if placement:
        task["Placement"] = placement
    attached = sorted(networks[n].name for n in s.networks) if s.networks else []
    if not s.networks:
        attached = [networks["default"].name]
    aliases: dict[str, list[str]] = {}
    if isinstance(s.networks, dict):
        for n, attach in s.networks.items():
            aliases[networks[n].name] = list(attach.aliases) if attach else []
    task["Networks"] = [
        {"Target": n, "Aliases": list(dict.fromkeys([name, *aliases.get(n, [])]))} for n in attached
    ]
    replicas = s.replica_count if s.state == "running" else 0
    global_mode = deploy.mode == "global"
    ports = [_port(p) for p in s.ports]
    spec: dict[str, Any] = {
        "Name": f"{project}_{name}",
        "Labels": {**deploy.labels, **own},
        "TaskTemplate": task,
        "Mode": {"Global": {}} if global_mode else {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": _update(deploy.update_config),
        "RollbackConfig": _update(deploy.rollback_config),
        "EndpointSpec": {"Mode": "vip", "Ports": ports} if ports else {"Mode": "vip"},
    }
    digest = spec_hash(spec)
    spec["Labels"][LABEL_SPEC_HASH] = digest
    return SwarmService(
        name=name,
        full_name=spec["Name"],
        spec_json=json.dumps(spec, sort_keys=True),
        spec_hash=digest,
        networks=tuple(attached),
        configs=tuple(sorted({cfg for _, cfg in configs})),
        secrets=tuple(sorted({sec for _, sec in secrets})),
        global_mode=global_mode,
        replicas=replicas,
        has_healthcheck=c.healthcheck is not None and c.healthcheck.test != ("NONE",),
    )


def _restart_policy(s: ServiceDef) -> dict[str, Any]:
    """deploy.restart_policy; else `restart` when the file gives it; else Swarm's default."""
    rp = s.deploy.restart_policy
    if rp is not None:
        out: dict[str, Any] = {"Condition": rp.condition, "Delay": _ns(rp.delay)}
        if rp.max_attempts is not None:
            out["MaxAttempts"] = rp.max_attempts
        if rp.window is not None:
            out["Window"] = _ns(rp.window)
        return out
    if "restart" in s.model_fields_set:
        policy, _, attempts = s.restart.partition(":")
        out = {"Condition": _RESTART[policy], "Delay": _ns(5.0)}
        if attempts:
            out["MaxAttempts"] = int(attempts)
        return out
    return {"Condition": "any", "Delay": _ns(5.0)}


def _update(c: Any) -> dict[str, Any]:
    return {
        "Parallelism": c.parallelism,
        "Delay": _ns(c.delay),
        "FailureAction": c.failure_action,
        "Monitor": _ns(c.monitor),
        "MaxFailureRatio": c.max_failure_ratio,
        "Order": c.order,
    }


def _port(port: str | int | PortDef) -> dict[str, Any]:
    if isinstance(port, PortDef):
        out: dict[str, Any] = {"Protocol": port.protocol, "TargetPort": port.target}
        if port.published not in (None, ""):
            out["PublishedPort"] = int(str(port.published))
        out["PublishMode"] = port.mode
        return out
    m = forms.PORT.match(forms.port_text(port))
    assert m is not None  # checked by the loader
    out = {"Protocol": m["proto"] or "tcp", "TargetPort": int(m["container"])}
    if m["host"]:
        out["PublishedPort"] = int(m["host"])
    out["PublishMode"] = "ingress"
    return out
