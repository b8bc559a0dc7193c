"""The semantic rules of a desired-state file that pydantic cannot express on one field:
references between services, ports, mounts, secrets, compose's key conflicts.

Called by the loader on the validated definition; each problem is an `Issue`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter

from reconciler.config import rules_compose
from reconciler.config.forms import (
    MAX_PORT,
    PORT,
    depends,
    joins,
    mount,
    port_text,
    secret_ref,
    words,
)
from reconciler.config.names import check_names
from reconciler.config.report import Issue
from reconciler.config.schema import DesiredStateDef, ServiceDef, UpdateConfigDef, parse_pull_policy
from reconciler.config.yamlread import Path as DataPath

MAX_EXPOSED = 1024  # ports `expose` may list per service (each is in every replica's spec)


def check(d: DesiredStateDef, project: str, *, single_host: bool = True) -> Iterable[Issue]:
    """Cross-field rules pydantic cannot express on one field (`single_host`: also those of
    host ports, which Swarm's routing mesh shares between replicas)."""
    yield from check_names(d, project)
    if single_host:
        yield from _check_host_ports(d)
    for name, svc in d.services.items():
        at: DataPath = ("services", name)
        if not svc.image and not svc.build:
            yield Issue(at, "needs image or build")
        replicas = svc.replica_count
        if (
            "replicas" in svc.model_fields_set
            and svc.deploy.replicas is not None
            and svc.deploy.replicas != svc.replicas
        ):
            yield Issue(
                (*at, "replicas"),
                f"{svc.replicas} conflicts with deploy.replicas: {svc.deploy.replicas}; "
                "give one of them",
            )
        yield from _check_pull_policy(svc, at)
        yield from _check_compose_keys(d, name, svc)
        yield from rules_compose.check(d, name, svc)
        if svc.container_name and replicas > 1:
            yield Issue((*at, "container_name"), "only allowed with replicas: 1 (names are unique)")
        for i, dep in enumerate(svc.depends_on):
            if dep not in d.services:
                where = (*at, "depends_on", i if isinstance(svc.depends_on, list) else dep)
                yield Issue((*at, "depends_on"), f"unknown service {dep!r}", where)
        for key, owner in joins(svc):
            target = d.services.get(owner)
            if target is None:
                yield Issue((*at, key), f"unknown service {owner!r}")
            elif target.replica_count < 1 or target.state != "running":
                yield Issue((*at, key), f"service {owner!r} must run at least one replica")
        if svc.network_mode and svc.networks:
            yield Issue((*at, "network_mode"), "cannot be combined with networks")
        for i, net in enumerate(svc.networks):
            if net not in d.networks and net != "default":  # compose's, made if not declared
                where = (*at, "networks", i if isinstance(svc.networks, list) else net)
                yield Issue(
                    (*at, "networks"), f"network {net!r} is not declared under networks", where
                )
        yield from _check_secrets(d, name, svc)
        for i, port in enumerate(svc.ports):
            for message in _check_port(port_text(port), replicas if single_host else 1):
                yield Issue((*at, "ports", i), message)
        for key in ("update_config", "rollback_config"):
            for message in _check_start_first(getattr(svc.deploy, key), svc):
                yield Issue((*at, "deploy", key, "order"), message)
        for i, vol in enumerate(svc.volumes):
            m = mount(vol)
            if m is None:
                yield Issue(
                    (*at, "volumes", i),
                    "must be SOURCE:TARGET[:MODE] or TARGET (MODE: ro or rw, and for a bind a "
                    "propagation such as rslave: ro,rslave)",
                )
            elif m.type == "bind" and not m.source:
                yield Issue((*at, "volumes", i), "a bind mount needs a source")
            elif m.type == "tmpfs" and m.source:
                yield Issue((*at, "volumes", i, "source"), "a tmpfs mount takes no source")
            elif m.type == "volume" and m.source and m.source not in d.volumes:
                yield Issue(
                    (*at, "volumes", i),
                    f"volume {m.source!r} is not declared under volumes",
                )
        for key in ("command", "entrypoint"):
            value = getattr(svc, key)
            if isinstance(value, str):
                try:
                    shlex.split(value)
                except ValueError as exc:  # "No closing quotation"
                    yield Issue((*at, key), f"cannot split into words ({exc}); or give a list")
        for key in ("placement", "restart_policy", "labels"):
            if single_host and key in svc.deploy.model_fields_set:
                yield Issue(
                    (*at, "deploy", key),
                    "only with --target swarm (the single host does not implement it; "
                    "see `restart` and `heal` for restarts)",
                )
        for i, c in enumerate(svc.configs):
            if c.check is not None and not c.reload_signal:
                yield Issue(
                    (*at, "configs", i, "check"),
                    "needs reload_signal: it vets an edit before the signal (a config "
                    "without one recreates the container instead)",
                )
            elif c.check is not None and not (
                c.check.strip() if isinstance(c.check, str) else c.check
            ):
                yield Issue((*at, "configs", i, "check"), "is empty: give a command")
        if svc.heal.backoff_max < svc.heal.backoff_initial:
            yield Issue((*at, "heal", "backoff_max"), "must be >= backoff_initial")
    graph = {name: depends(svc) for name, svc in d.services.items()}
    try:
        TopologicalSorter({k: [v for v in vs if v in graph] for k, vs in graph.items()}).prepare()
    except CycleError as exc:
        cycle = [str(n) for n in exc.args[1]]
        yield Issue(
            ("services",),
            f"depends_on has a cycle: {' -> '.join(cycle)}",
            ("services", cycle[0], "depends_on"),
        )


def _check_pull_policy(svc: ServiceDef, at: DataPath) -> Iterable[Issue]:
    if svc.pull_policy is None:
        return
    if "pull" in svc.model_fields_set:
        yield Issue((*at, "pull_policy"), "give pull_policy (compose's name) or pull, not both")
    policy = svc.pull_policy.strip()
    if policy == "build" and svc.build is None:
        yield Issue((*at, "pull_policy"), "build needs a build: section to build from")
    if parse_pull_policy(policy)[1] is not None and svc.build is not None:
        yield Issue(
            (*at, "pull_policy"),
            f"{policy} follows a tag in a registry; a service with build: has none to follow",
        )


def _check_compose_keys(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    """scale, resources, expose and depends_on conditions (compose's rules)."""
    at: DataPath = ("services", name)
    if svc.scale is not None:
        for other, value in (("replicas", svc.replicas), ("deploy.replicas", svc.deploy.replicas)):
            given = "replicas" in svc.model_fields_set if other == "replicas" else value is not None
            if given and value != svc.scale:
                yield Issue(
                    (*at, "scale"), f"{svc.scale} conflicts with {other}: {value}; give one of them"
                )
    limits = svc.deploy.resources.limits
    pairs = (
        ("cpus", svc.cpus, limits.cpus),
        ("mem_limit", svc.mem_limit, limits.memory),
        ("pids_limit", svc.pids_limit, limits.pids),
        ("mem_reservation", svc.mem_reservation, svc.deploy.resources.reservations.memory),
    )
    for key, short, long in pairs:
        if short is not None and long is not None and short != long:
            yield Issue(
                (*at, key),
                f"conflicts with deploy.resources ({long}); give one of them (as compose)",
            )
    exposed = 0
    for i, entry in enumerate(svc.expose):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/(tcp|udp|sctp))?", str(entry))
        low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
        if not m or not 1 <= low <= high <= MAX_PORT:
            yield Issue(
                (*at, "expose", i),
                f"must be PORT[/PROTO] or LOW-HIGH[/PROTO], ports 1..{MAX_PORT}",
            )
            continue
        exposed += high - low + 1
        if exposed > MAX_EXPOSED:
            yield Issue((*at, "expose", i), f"at most {MAX_EXPOSED} exposed ports per service")
            break
    for i, entry in enumerate(words(svc.tmpfs)):
        if not entry.startswith("/"):
            where = (*at, "tmpfs") if isinstance(svc.tmpfs, str) else (*at, "tmpfs", i)
            yield Issue(where, "must be an absolute path in the container, [:OPTIONS]")
    for key, u in svc.ulimits.items():
        if not isinstance(u, int) and u.soft > u.hard:
            yield Issue((*at, "ulimits", key), "soft must be <= hard")
    if isinstance(svc.depends_on, dict):
        for dep, cond in svc.depends_on.items():
            target = d.services.get(dep)
            if (
                cond.condition == "service_healthy"
                and target is not None
                and (target.healthcheck is None or target.healthcheck.disable)
            ):
                yield Issue(
                    (*at, "depends_on", dep, "condition"),
                    f"service {dep!r} has no healthcheck to wait for; give it one or use "
                    "service_started",
                )


def _check_secrets(d: DesiredStateDef, name: str, svc: ServiceDef) -> Iterable[Issue]:
    targets: set[str] = set()
    for i, ref in enumerate(svc.secrets):
        at: DataPath = ("services", name, "secrets", i)
        source, target = secret_ref(ref)
        if source not in d.secrets:
            yield Issue(at, f"secret {source!r} is not declared under secrets")
        if target in targets:
            yield Issue(at, f"two secrets at {target}")
        targets.add(target)


def _overlap(a: str, b: str) -> bool:
    """Two host IPs that cannot both bind one port: equal, or one is a wildcard of the other's
    family ("" is every address of both families)."""
    if a == b or not a or not b:
        return True
    if (":" in a) != (":" in b):
        return False
    return a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _check_host_ports(d: DesiredStateDef) -> Iterable[Issue]:
    """No two replicas (of any services) on one host port, IP and protocol."""
    taken: dict[tuple[str, int], list[tuple[str, str, int, int]]] = {}
    for name, svc in d.services.items():
        for i, port in enumerate(svc.ports):
            m = PORT.match(port_text(port))
            if not m or not m["host"]:
                continue
            first, _, last = m["host"].partition("-")
            low, high = int(first), int(last or first)
            if not 1 <= low <= high <= MAX_PORT:
                continue  # reported by _check_port
            ip, proto = (m["ip"] or "").strip("[]"), m["proto"] or "tcp"
            for replica in range(1, (svc.replica_count if last else 1) + 1):
                host_port = low + replica - 1
                if host_port > high or svc.replica_count < 1:
                    break  # too few ports: reported by _check_port
                holders = taken.setdefault((proto, host_port), [])
                clash = next((h for h in holders if _overlap(ip, h[0])), None)
                if clash is not None:
                    _, other, j, other_replica = clash
                    shown = f"{ip}:{host_port}" if ip else str(host_port)
                    yield Issue(
                        ("services", name, "ports", i),
                        f"host port {shown}/{proto} (replica {replica}) is also bound by "
                        f"service {other!r} (ports[{j}], replica {other_replica}); one "
                        "host port can serve one container",
                    )
                    break
                holders.append((ip, name, i, replica))


def _check_start_first(cfg: UpdateConfigDef, svc: ServiceDef) -> Iterable[str]:
    """start-first runs the old and the new replica side by side: refuse what they cannot share."""
    if cfg.order != "start-first":
        return
    why = "the old and new replica would run side by side"
    if svc.container_name:
        yield (
            f"start-first cannot be used with container_name "
            f"{svc.container_name!r}: {why} and a container name is unique; use stop-first"
        )
    for i, port in enumerate(svc.ports):
        m = PORT.match(port_text(port))
        if m and m["host"]:
            yield (
                f"start-first cannot be used with a host port (ports[{i}] "
                f"{port_text(port)!r}): {why} and only one can bind it; use stop-first"
            )
            break
    mode = svc.network_mode or ""
    if mode == "host" or mode.startswith(("service:", "container:")):
        yield (
            f"start-first cannot be used with network_mode {mode}: {why} in one "
            "network namespace and only one can listen on its ports; use stop-first"
        )


def _check_port(text: str, replicas: int) -> Iterable[str]:
    m = PORT.match(text)
    if not m:
        yield f"cannot parse port {text!r} (expected [IP:]HOST:CONTAINER[/PROTO])"
        return
    container = int(m["container"])
    if not 1 <= container <= MAX_PORT:
        yield f"container port {container} is out of range 1..{MAX_PORT}"
    host = m["host"]
    if host is None:
        return
    first, _, last = host.partition("-")
    out = [p for p in (first, last) if p and not 1 <= int(p) <= MAX_PORT]
    if out:
        yield f"host port {int(out[0])} is out of range 1..{MAX_PORT}"
        return
    size = int(last) - int(first) + 1 if last else 1
    if size < 1:
        yield f"host port range {host} must be ascending (LOW-HIGH)"
    elif last and size < replicas:
        yield f"host port range {host} has {size} ports for {replicas} replicas"
    elif not last and replicas > 1:
        yield f"fixed host port {host} cannot serve {replicas} replicas; use a range"
