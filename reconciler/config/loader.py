"""Read desired_state.yaml into a validated, rendered `DesiredState`.

The only module that parses YAML. Every problem is reported with the file, the
path inside it and what is wrong, all at once, as a `DesiredStateError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler.config.schema import (
    DesiredStateDef,
    ServiceDef,
    UpdateConfigDef,
    VolumeMountDef,
)
from reconciler.core.model import (
    BuildSpec,
    ContainerSpec,
    DesiredState,
    HealPolicy,
    Healthcheck,
    NetworkAttachment,
    NetworkSpec,
    PortBinding,
    ServiceSpec,
    UpdateConfig,
    VolumeSpec,
)
from reconciler.errors import DesiredStateError

REPLICA_PLACEHOLDER = "{replica}"
MAX_PORT = 65535
# Keys that do not change what a service's containers are: left out of its revision.
_NOT_IN_REVISION = {"replicas", "deploy", "heal", "drain_period", "state", "pull", "depends_on"}
_PORT = re.compile(
    r"^(?:(?P<ip>\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d+(?:-\d+)?):)?"
    r"(?P<container>\d+)(?:/(?P<proto>tcp|udp|sctp))?$"
)


def load(path: str | Path) -> DesiredState:
    """Read, validate and render a desired-state file; raise DesiredStateError if bad."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DesiredStateError(source, ["file not found"]) from None
    except OSError as exc:
        raise DesiredStateError(source, [f"cannot read: {exc.strerror}"]) from exc
    return parse(raw, source=source, base_dir=path.resolve().parent)


def parse(raw: bytes | str, *, source: str, base_dir: Path) -> DesiredState:
    """Validate and render the text of a desired-state file."""
    try:
        data = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DesiredStateError(source, [f"{where}malformed YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise DesiredStateError(source, [f"malformed YAML: {exc}"]) from None
    if data is None:
        raise DesiredStateError(
            source, ["the file is empty; refusing it (it would remove every container)"]
        )
    if not isinstance(data, dict):
        raise DesiredStateError(
            source, [f"(top level): must be a mapping, not {type(data).__name__}"]
        )
    try:
        definition = DesiredStateDef.model_validate(data)
    except ValidationError as exc:
        raise DesiredStateError(source, _pydantic_problems(exc, data)) from None
    if not definition.services:
        raise DesiredStateError(
            source, ["services: no services; refusing it (it would remove every container)"]
        )
    project = definition.project or _project_from_folder(base_dir)
    problems = list(_check(definition))
    if problems:
        raise DesiredStateError(source, problems)
    renderer = _Renderer(definition, project, base_dir)
    state = renderer.render()
    if renderer.problems:
        raise DesiredStateError(source, renderer.problems)
    h = hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode())
    for path, config_digest in sorted(renderer.config_digests.items()):
        h.update(f"\0{path}={config_digest}".encode())
    digest = h.hexdigest()  # the file and every config file it mounts
    return DesiredState(
        project=state.project,
        networks=state.networks,
        volumes=state.volumes,
        services=state.services,
        source=source,
        digest=digest,
        volume_templates=state.volume_templates,
        watched=tuple(sorted(renderer.config_digests)),
    )


# --------------------------------------------------------------------------- errors


def _pydantic_problems(exc: ValidationError, data: Any) -> list[str]:
    seen: dict[str, list[str]] = {}
    for err in exc.errors():
        path = _data_path(err["loc"], data)
        message = _message(err)
        seen.setdefault(path, [])
        if message not in seen[path]:
            seen[path].append(message)
    return [f"{path}: {' or '.join(msgs)}" for path, msgs in seen.items()]


def _data_path(loc: tuple[Any, ...], data: Any) -> str:
    """Join the parts of a pydantic location that exist in the data (drops union tags)."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            parts.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            parts[-1 if parts else 0 :] = [f"{parts[-1]}[{part}]" if parts else f"[{part}]"]
        elif (
            isinstance(node, Mapping)
            and isinstance(part, str)
            and part not in node
            and (part.isidentifier() and "[" not in part)
        ):
            # A missing required key or an unknown key: name it, stop walking.
            parts.append(part)
            node = None
    return ".".join(parts) or "(top level)"


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


# --------------------------------------------------------------------------- rules


def _project_from_folder(folder: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]", "", folder.name.lower()).lstrip("_-")
    return name or "default"


def _depends(svc: ServiceDef) -> list[str]:
    deps = list(svc.depends_on)
    if svc.network_mode and svc.network_mode.startswith("service:"):
        deps.append(svc.network_mode.removeprefix("service:"))
    return deps


def _check(d: DesiredStateDef) -> Iterable[str]:
    """Cross-field rules pydantic cannot express on one field."""
    for name, svc in d.services.items():
        at = f"services.{name}"
        if not svc.image and not svc.build:
            yield f"{at}: needs image or build"
        replicas = svc.replica_count
        if (
            "replicas" in svc.model_fields_set
            and svc.deploy.replicas is not None
            and svc.deploy.replicas != svc.replicas
        ):
            yield (
                f"{at}.replicas: {svc.replicas} conflicts with deploy.replicas: "
                f"{svc.deploy.replicas}; give one of them"
            )
        if svc.container_name and replicas > 1:
            yield f"{at}.container_name: only allowed with replicas: 1 (names are unique)"
        for dep in _depends(svc):
            if dep not in d.services:
                yield f"{at}.depends_on: unknown service {dep!r}"
        if svc.network_mode and svc.networks:
            yield f"{at}.network_mode: cannot be combined with networks"
        owner = (svc.network_mode or "").removeprefix("service:")
        target = d.services.get(owner) if svc.network_mode != owner else None
        if target is not None and (target.replica_count < 1 or target.state != "running"):
            yield f"{at}.network_mode: service {owner!r} must run at least one replica"
        for net in svc.networks:
            if net not in d.networks:
                yield f"{at}.networks: network {net!r} is not declared under networks"
        for i, port in enumerate(svc.ports):
            yield from _check_port(f"{at}.ports[{i}]", str(port), replicas)
        for key in ("update_config", "rollback_config"):
            yield from _check_start_first(f"{at}.deploy.{key}", getattr(svc.deploy, key), svc)
        for i, vol in enumerate(svc.volumes):
            mount = _mount(vol)
            if mount is None:
                yield f"{at}.volumes[{i}]: must be SOURCE:TARGET[:ro] or TARGET"
            elif mount.type == "volume" and mount.source and mount.source not in d.volumes:
                yield f"{at}.volumes[{i}]: volume {mount.source!r} is not declared under volumes"
        if svc.heal.backoff_max < svc.heal.backoff_initial:
            yield f"{at}.heal.backoff_max: must be >= backoff_initial"
    graph = {name: _depends(svc) for name, svc in d.services.items()}
    try:
        TopologicalSorter({k: [v for v in vs if v in graph] for k, vs in graph.items()}).prepare()
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        yield f"services: depends_on has a cycle: {cycle}"


def _check_start_first(at: str, cfg: UpdateConfigDef, svc: ServiceDef) -> Iterable[str]:
    """start-first runs the old and the new replica side by side: refuse what they cannot share."""
    if cfg.order != "start-first":
        return
    why = "the old and new replica would run side by side"
    if svc.container_name:
        yield (
            f"{at}.order: start-first cannot be used with container_name "
            f"{svc.container_name!r}: {why} and a container name is unique; use stop-first"
        )
    for i, port in enumerate(svc.ports):
        m = _PORT.match(str(port))
        if m and m["host"]:
            yield (
                f"{at}.order: start-first cannot be used with a host port (ports[{i}] "
                f"{str(port)!r}): {why} and only one can bind it; use stop-first"
            )
            break
    mode = svc.network_mode or ""
    if mode == "host" or mode.startswith(("service:", "container:")):
        yield (
            f"{at}.order: start-first cannot be used with network_mode {mode}: {why} in one "
            "network namespace and only one can listen on its ports; use stop-first"
        )


def _check_port(at: str, text: str, replicas: int) -> Iterable[str]:
    m = _PORT.match(text)
    if not m:
        yield f"{at}: cannot parse port {text!r} (expected [IP:]HOST:CONTAINER[/PROTO])"
        return
    container = int(m["container"])
    if not 1 <= container <= MAX_PORT:
        yield f"{at}: container port {container} is out of range 1..{MAX_PORT}"
    host = m["host"]
    if host is None:
        return
    first, _, last = host.partition("-")
    out = [p for p in (first, last) if p and not 1 <= int(p) <= MAX_PORT]
    if out:
        yield f"{at}: host port {int(out[0])} is out of range 1..{MAX_PORT}"
        return
    size = int(last) - int(first) + 1 if last else 1
    if size < 1:
        yield f"{at}: host port range {host} must be ascending (LOW-HIGH)"
    elif last and size < replicas:
        yield f"{at}: host port range {host} has {size} ports for {replicas} replicas"
    elif not last and replicas > 1:
        yield f"{at}: fixed host port {host} cannot serve {replicas} replicas; use a range"


@dataclass(frozen=True, slots=True)
class _Mount:
    type: str
    source: str
    target: str
    read_only: bool


def _mount(vol: str | VolumeMountDef) -> _Mount | None:
    if isinstance(vol, VolumeMountDef):
        return _Mount(vol.type, vol.source, vol.target, vol.read_only)
    parts = vol.split(":")
    if len(parts) == 1:
        return _Mount("volume", "", parts[0], False)  # anonymous volume
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        return None
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return _Mount(kind, source, target, len(parts) == 3 and parts[2] == "ro")


# --------------------------------------------------------------------------- render


def tree_digest(path: Path) -> str:
    """sha256 over a file's bytes, or over every file (name and bytes) under a folder."""
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(item.relative_to(path)).encode() + b"\0" + item.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class _Configs:
    binds: tuple[str, ...]
    digests: tuple[tuple[str, str], ...]  # configs whose change recreates
    reload_digest: str  # configs whose change is applied by reload_signal
    reload_signal: str | None


class _Renderer:
    """Turns a checked definition into per-replica container specs."""

    def __init__(self, d: DesiredStateDef, project: str, base_dir: Path) -> None:
        self.d, self.project, self.base_dir = d, project, base_dir
        self.problems: list[str] = []
        self.config_digests: dict[str, str] = {}
        self.default_network = f"{project}_default"

    def render(self) -> DesiredState:
        order = TopologicalSorter({n: _depends(s) for n, s in self.d.services.items()})
        services = tuple(
            self._service(name, self.d.services[name]) for name in order.static_order()
        )
        networks = [self._network(name, n) for name, n in self.d.networks.items()]
        if (
            any(not s.networks and not s.network_mode for s in self.d.services.values())
            and self.default_network not in self.d.networks
        ):
            networks.append(NetworkSpec(name=self.default_network))
        volumes: list[VolumeSpec] = []
        templates: list[str] = []
        for name, vdef in self.d.volumes.items():
            driver = vdef.driver if vdef else "local"
            labels = tuple(sorted((vdef.labels if vdef else {}).items()))
            if REPLICA_PLACEHOLDER in name:
                templates.append(name)
                used = {
                    c.replica
                    for s in services
                    for c in s.replicas
                    if name in self._templates_of(s.name)
                }
                volumes.extend(
                    VolumeSpec(name.replace(REPLICA_PLACEHOLDER, str(i)), driver, labels)
                    for i in sorted(used)
                )
            else:
                volumes.append(VolumeSpec(name, driver, labels))
        return DesiredState(
            project=self.project,
            networks=tuple(networks),
            volumes=tuple(volumes),
            services=services,
            volume_templates=tuple(templates),
        )

    def _templates_of(self, service: str) -> set[str]:
        mounts = (_mount(v) for v in self.d.services[service].volumes)
        return {
            m.source for m in mounts if m and m.type == "volume" and REPLICA_PLACEHOLDER in m.source
        }

    @staticmethod
    def _network(name: str, n: Any) -> NetworkSpec:
        if n is None:
            return NetworkSpec(name=name)
        ipam = tuple((c.subnet, c.gateway or "") for c in n.ipam.config) if n.ipam else ()
        return NetworkSpec(name, n.driver, n.internal, tuple(sorted(n.labels.items())), ipam)

    def _service(self, name: str, s: ServiceDef) -> ServiceSpec:
        build = None
        if s.build is not None:
            ctx, dockerfile = (
                (s.build, "Dockerfile")
                if isinstance(s.build, str)
                else (
                    s.build.context,
                    s.build.dockerfile,
                )
            )
            build = BuildSpec(str(self._path(ctx)), dockerfile)
        image = s.image or f"{self.project}-{name}"
        configs = self._configs(name, s)
        replicas = tuple(
            self._container(name, s, image, i, configs) for i in range(1, s.replica_count + 1)
        )
        heal = HealPolicy(
            s.heal.min_uptime, s.heal.backoff_initial, s.heal.backoff_max, s.heal.unhealthy_grace
        )
        return ServiceSpec(
            name=name,
            image=image,
            replicas=replicas,
            pull=s.pull,
            build=build,
            depends_on=tuple(_depends(s)),
            state=s.state,
            heal=heal,
            update=_update_config(s.deploy.update_config),
            rollback=_update_config(s.deploy.rollback_config),
            drain_s=s.drain_period,
            revision=self._revision(name, s, configs),
        )

    def _revision(self, name: str, s: ServiceDef, configs: _Configs) -> str:
        """sha256 of what the file asks of the service's containers, whatever their count.

        Replica count, deploy, heal, drain, state, pull and depends_on are left out (they
        change no container); equivalent spellings (environment as map or list, relative
        paths) are normalised; the content of the config files it mounts is included,
        except those applied by reload_signal (as for the spec hash).
        """
        body = s.model_dump(mode="json", exclude=_NOT_IN_REVISION)
        body["environment"] = list(_environment(s.environment))
        body["labels"] = _labels(s.labels)
        body["command"], body["entrypoint"] = _argv(s.command), _argv(s.entrypoint)
        body["ports"] = [str(p) for p in s.ports]
        body["volumes"] = [self._mount_text(_mount(v)) for v in s.volumes]
        body["configs"] = [
            {"source": str(self._path(c.source)), "target": c.target} for c in s.configs
        ]
        if s.build is not None:
            build = body["build"]
            ctx = build if isinstance(build, str) else build["context"]
            dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
            body["build"] = {"context": str(self._path(ctx)), "dockerfile": dockerfile}
        payload = {
            "project": self.project,
            "service": name,
            "definition": body,
            "config_digests": [list(d) for d in configs.digests],
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _mount_text(self, m: _Mount | None) -> str:
        assert m is not None  # checked
        source = str(self._path(m.source)) if m.type == "bind" else m.source
        return f"{source}:{m.target}{':ro' if m.read_only else ''}" if source else m.target

    def _configs(self, name: str, s: ServiceDef) -> _Configs:
        binds: list[str] = []
        hashed: list[tuple[str, str]] = []
        signalled: list[str] = []
        signal = None
        for i, c in enumerate(s.configs):
            path = self._path(c.source)
            try:
                digest = tree_digest(path)
                self.config_digests[str(path)] = digest
            except OSError as exc:
                self.problems.append(
                    f"services.{name}.configs[{i}].source: cannot read {path}: {exc.strerror}"
                )
                continue
            binds.append(f"{path}:{c.target}:ro")
            if c.reload_signal:
                signal = signal or c.reload_signal
                signalled.append(f"{c.target}={digest}")
            else:
                hashed.append((c.target, digest))
        reload_digest = (
            hashlib.sha256("\n".join(signalled).encode()).hexdigest() if signalled else ""
        )
        return _Configs(tuple(binds), tuple(hashed), reload_digest, signal)

    def _path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def _container(
        self,
        name: str,
        s: ServiceDef,
        image: str,
        replica: int,
        configs: _Configs,
    ) -> ContainerSpec:
        binds, volumes = list(configs.binds), []
        for vol in s.volumes:
            m = _mount(vol)
            assert m is not None  # checked
            if m.type == "volume" and m.source:
                source = m.source.replace(REPLICA_PLACEHOLDER, str(replica))
                volumes.append(source)
                m = _Mount(m.type, source, m.target, m.read_only)
            binds.append(self._mount_text(m))
        nets = s.networks
        attachments: list[NetworkAttachment] = []
        if not s.network_mode:
            if not nets:
                attachments.append(NetworkAttachment(self.default_network, (name,)))
            for net in nets:
                attach = nets.get(net) if isinstance(nets, dict) else None
                extra = attach.aliases if attach else []
                attachments.append(NetworkAttachment(net, tuple(dict.fromkeys([name, *extra]))))
        network_mode = s.network_mode
        if network_mode and network_mode.startswith("service:"):
            target = network_mode.removeprefix("service:")
            t = self.d.services[target]
            network_mode = f"container:{t.container_name or f'{self.project}-{target}-1'}"
        hc = None
        if s.healthcheck and not s.healthcheck.disable:
            test = s.healthcheck.test
            test_t = ("CMD-SHELL", test) if isinstance(test, str) else tuple(test)
            hc = Healthcheck(
                test_t,
                s.healthcheck.interval,
                s.healthcheck.timeout,
                s.healthcheck.retries,
                s.healthcheck.start_period,
            )
        elif s.healthcheck and s.healthcheck.disable:
            hc = Healthcheck(("NONE",))
        return ContainerSpec(
            name=s.container_name or f"{self.project}-{name}-{replica}",
            project=self.project,
            service=name,
            replica=replica,
            image=image,
            command=_argv(s.command),
            entrypoint=_argv(s.entrypoint),
            environment=_environment(s.environment),
            ports=tuple(_port(str(p), replica) for p in s.ports),
            binds=tuple(binds),
            volumes=tuple(volumes),
            networks=tuple(attachments),
            user=str(s.user) if s.user is not None else None,
            restart=s.restart,
            healthcheck=hc,
            labels=tuple(sorted(_labels(s.labels).items())),
            working_dir=s.working_dir,
            hostname=s.hostname,
            extra_hosts=tuple(s.extra_hosts),
            cap_add=tuple(s.cap_add),
            cap_drop=tuple(s.cap_drop),
            read_only=s.read_only,
            stop_signal=s.stop_signal,
            stop_grace_s=s.stop_grace_period,  # fractional seconds kept: 400ms is 0.4
            init=s.init,
            network_mode=network_mode,
            pid=s.pid,
            config_digests=configs.digests,
            reload_digest=configs.reload_digest,
            reload_signal=configs.reload_signal,
        )


def _update_config(c: UpdateConfigDef) -> UpdateConfig:
    return UpdateConfig(
        parallelism=c.parallelism,
        delay_s=c.delay,
        order=c.order,
        monitor_s=c.monitor,
        failure_action=c.failure_action,
        max_failure_ratio=c.max_failure_ratio,
    )


def _argv(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _environment(env: Mapping[str, Any] | list[str]) -> tuple[str, ...]:
    if isinstance(env, list):
        return tuple(sorted(env))
    return tuple(sorted(f"{k}={_scalar(v)}" for k, v in env.items()))


def _labels(labels: Mapping[str, str] | list[str]) -> dict[str, str]:
    if isinstance(labels, list):
        return dict(item.partition("=")[::2] for item in labels)
    return dict(labels)


def _port(text: str, replica: int) -> PortBinding:
    m = _PORT.match(text)
    assert m is not None  # checked
    host_port = None
    if m["host"]:
        host_port = int(m["host"].partition("-")[0]) + (replica - 1 if "-" in m["host"] else 0)
    ip = (m["ip"] or "").strip("[]")
    return PortBinding(int(m["container"]), m["proto"] or "tcp", ip, host_port)
