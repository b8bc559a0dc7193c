"""The renderer: a validated, checked definition into core's `DesiredState` (networks,
volumes, and each service's per-replica container specs, with its revision).

Called by the loader; Swarm's renderer (`engine.swarm.spec`) reuses its container specs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from reconciler.config import encrypted, tree
from reconciler.config.build import build_spec
from reconciler.config.dialect import docker_name
from reconciler.config.forms import (
    Mount,
    depends,
    extra_hosts,
    joins,
    links,
    mount,
    port_text,
    scalar,
    secret_ref,
)
from reconciler.config.inputs import TooLarge, read_limited, resolve
from reconciler.config.interpolation import SECRET_NAME
from reconciler.config.options import (
    argv,
    device_requests,
    environment,
    port_binding,
    runtime_options,
    text_labels,
    update_config,
)
from reconciler.config.report import Issue
from reconciler.config.revision import service_revision
from reconciler.config.schema import DesiredStateDef, ServiceDef, parse_pull_policy
from reconciler.config.yamlread import Path as DataPath
from reconciler.core.desired import (
    BuildSpec,
    ContainerSpec,
    DesiredState,
    HealPolicy,
    Healthcheck,
    NetworkAttachment,
    NetworkSpec,
    RuntimeOptions,
    SecretMount,
    ServiceSpec,
    VolumeSpec,
)

REPLICA_PLACEHOLDER = "{replica}"
MAX_SECRET_BYTES = 1024 * 1024  # each secrets: file


@dataclass(frozen=True, slots=True)
class Configs:
    """A service's `configs:` as read-only binds, and the digests of their content."""

    binds: tuple[str, ...]
    digests: tuple[tuple[str, str], ...]  # configs whose change recreates
    reload_digest: str  # configs whose change is applied by reload_signal
    reload_signal: str | None
    reload_check: tuple[tuple[str, ...], ...] = ()  # `check` commands, argv each


class Renderer:
    """Turns a checked definition into per-replica container specs."""

    def __init__(
        self,
        d: DesiredStateDef,
        project: str,
        base_dir: Path,
        env_files: Mapping[str, Mapping[str, str]],
        lookup: Callable[[str], str | None] = lambda _: None,
        *,
        native: bool = True,
    ) -> None:
        self.d, self.project, self.base_dir = d, project, base_dir
        self.native = native  # reconciler's format: named by their keys (`dialect`)
        self.env_files = env_files  # service -> what its env_file entries set
        self.lookup = lookup  # a bare environment name: the environment, then .env
        self.unset: dict[DataPath, str] = {}  # bare names neither sets: left out
        self.problems: list[Issue] = []
        self.config_digests: dict[str, str] = {}
        self.secret_values: set[str] = set()
        self.default_network = self.network_name("default")

    def render(self) -> DesiredState:
        order = TopologicalSorter({n: depends(s) for n, s in self.d.services.items()})
        services = tuple(
            self._service(name, self.d.services[name]) for name in order.static_order()
        )
        networks = [self._network(name, n) for name, n in self.d.networks.items()]
        if (
            any(
                (not s.networks and not s.network_mode) or "default" in s.networks
                for s in self.d.services.values()
            )
            and "default" not in self.d.networks
            and self.default_network not in self.d.networks
        ):
            networks.append(NetworkSpec(name=self.default_network))
        volumes: list[VolumeSpec] = []
        templates: list[str] = []
        for name, vdef in self.d.volumes.items():
            driver = vdef.driver if vdef else "local"
            labels = tuple(sorted((vdef.labels if vdef else {}).items()))
            opts = tuple(
                sorted((k, scalar(v)) for k, v in (vdef.driver_opts if vdef else {}).items())
            )
            external = bool(vdef and vdef.external)
            docker_name = self.volume_name(name)
            if REPLICA_PLACEHOLDER in name:
                templates.append(docker_name)
                used = {
                    c.replica
                    for s in services
                    for c in s.replicas
                    if name in self._templates_of(s.name)
                }
                volumes.extend(
                    VolumeSpec(
                        docker_name.replace(REPLICA_PLACEHOLDER, str(i)),
                        driver,
                        labels,
                        opts,
                        external,
                    )
                    for i in sorted(used)
                )
            else:
                volumes.append(VolumeSpec(docker_name, driver, labels, opts, external))
        return DesiredState(
            project=self.project,
            networks=tuple(networks),
            volumes=tuple(volumes),
            services=services,
            volume_templates=tuple(templates),
        )

    def _templates_of(self, service: str) -> set[str]:
        mounts = (mount(v) for v in self.d.services[service].volumes)
        return {
            m.source for m in mounts if m and m.type == "volume" and REPLICA_PLACEHOLDER in m.source
        }

    def network_name(self, key: str) -> str:
        """The Docker name of a network of the file: its name:, else its key (a compose
        file: `<project>_<key>`; `default` is compose's default network, `<project>_default`)."""
        n = self.d.networks.get(key)
        native = self.native and key != "default"
        external = n is not None and n.external
        return docker_name(self.project, key, n.name if n else None, external, native)

    def volume_name(self, key: str) -> str:
        """The Docker name of a volume of the file: its name:, else its key (a compose
        file: `<project>_<key>`, as compose names it)."""
        v = self.d.volumes.get(key)
        external = v is not None and v.external
        return docker_name(self.project, key, v.name if v else None, external, self.native)

    def _network(self, name: str, n: Any) -> NetworkSpec:
        if n is None:
            return NetworkSpec(name=self.network_name(name))
        ipam = tuple((c.subnet, c.gateway or "") for c in n.ipam.config) if n.ipam else ()
        labels = tuple(sorted(n.labels.items()))
        flags = (n.external, n.attachable, n.enable_ipv6)
        return NetworkSpec(self.network_name(name), n.driver, n.internal, labels, ipam, *flags)

    def _service(self, name: str, s: ServiceDef) -> ServiceSpec:
        build = self._build(name, s)
        image = s.image or f"{self.project}-{name}"
        configs = self._configs(name, s)
        mounts = self._secrets(name, s)
        options = runtime_options(s)  # once: the same for every replica
        digest = build.digest if build else ""
        replicas = tuple(
            self.container(name, s, image, i, configs, options, mounts, digest)
            for i in range(1, s.replica_count + 1)
        )
        heal = HealPolicy(
            s.heal.min_uptime, s.heal.backoff_initial, s.heal.backoff_max, s.heal.unhealthy_grace
        )
        pull, every = parse_pull_policy(s.pull_policy) if s.pull_policy else (s.pull, None)
        return ServiceSpec(
            name=name,
            image=image,
            replicas=replicas,
            pull=pull,
            pull_every_s=every,
            build=build,
            depends_on=tuple(depends(s)),
            conditions=tuple(
                (dep, c.condition)
                for dep, c in (s.depends_on.items() if isinstance(s.depends_on, dict) else ())
                if c.condition != "service_started"
            ),
            job=any(
                isinstance(o.depends_on, dict)
                and o.depends_on.get(name) is not None
                and o.depends_on[name].condition == "service_completed_successfully"
                for o in self.d.services.values()
            ),
            state=s.state,
            heal=heal,
            update=update_config(s.deploy.update_config),
            rollback=update_config(s.deploy.rollback_config),
            drain_s=s.drain_period,
            stop_grace_s=s.stop_grace_period,
            revision=service_revision(
                self.project,
                name,
                s,
                environment=self._environment(name, s),
                network_name=self.network_name,
                path=self.path,
                mount_text=self._mount_text,
                build=build,
                config_digests=configs.digests,
                mounts=mounts,
            ),
        )

    def _build(self, name: str, s: ServiceDef) -> BuildSpec | None:
        """The service's BuildSpec; bare args nothing sets are noted (left out)."""
        if s.build is None:
            return None
        spec, unset = build_spec(s.build, self.path, self.lookup)
        for at, key in unset:
            self.unset[("services", name, "build", *at)] = key
        # A secret-looking arg's value is never printed (as a passthrough environment one).
        self.secret_values |= {v for k, v in spec.args if v and SECRET_NAME.search(k)}
        return spec

    def _environment(self, name: str, s: ServiceDef) -> tuple[str, ...]:
        """The service's environment (see `options.environment`); bare names left out are noted."""
        entries, unset, hidden = environment(
            s.environment, self.env_files.get(name, {}), self.lookup
        )
        self.secret_values |= hidden
        for at, key in unset:
            self.unset[("services", name, *at)] = key
        return entries

    def _secrets(self, name: str, s: ServiceDef) -> tuple[SecretMount, ...]:
        """Each secret as a read-only bind of its file; the content only as a digest."""
        out = []
        for i, ref in enumerate(s.secrets):
            source, target = secret_ref(ref)
            path = self.path(self.d.secrets[source].file)
            try:
                content = read_limited(path, MAX_SECRET_BYTES)
            except TooLarge:
                message = f"secret file {path} is larger than {MAX_SECRET_BYTES // 1024} KiB"
                self.problems.append(Issue(("services", name, "secrets", i), message))
                continue
            except OSError as exc:
                message = f"cannot read secret file {path}: {exc.strerror}"
                self.problems.append(Issue(("services", name, "secrets", i), message))
                continue
            try:  # an encrypted secret (*.age, SOPS): its plaintext, in memory only
                content = encrypted.plaintext(path, content)
            except encrypted.DecryptError as exc:
                self.problems.append(Issue(("services", name, "secrets", i), str(exc)))
                continue
            digest = encrypted.secret_digest(content)
            self.config_digests[str(path)] = digest  # watched: a change is a reload
            with contextlib.suppress(UnicodeDecodeError):
                self.secret_values.add(content.decode().strip())  # never printed
            out.append(SecretMount(source, str(path), target, digest))
        return tuple(out)

    def _links(self, s: ServiceDef) -> tuple[str, ...]:
        """CONTAINER:ALIAS of each link: the linked service's first replica (a legacy link
        names one container; the service's own name reaches every replica)."""
        out = []
        for other, alias in links(s):
            t = self.d.services[other]
            out.append(f"{t.container_name or f'{self.project}-{other}-1'}:{alias}")
        return tuple(dict.fromkeys(out))

    def _mount_text(self, m: Mount | None, named: bool = False) -> str:
        """SOURCE:TARGET[:ro] for Docker (`named`: the volume source is its Docker name)."""
        assert m is not None  # checked
        if m.type == "tmpfs":
            return f"tmpfs:{m.target}{':ro' if m.read_only else ''}"
        if m.type == "bind":
            source = str(self.path(m.source))
        else:
            source = m.source if named else self.volume_name(m.source)
        mode = ",".join(x for x in ("ro" if m.read_only else "", m.propagation) if x)
        return f"{source}:{m.target}{':' + mode if mode else ''}" if source else m.target

    def _configs(self, name: str, s: ServiceDef) -> Configs:
        binds: list[str] = []
        hashed: list[tuple[str, str]] = []
        signalled: list[str] = []
        signal = None
        checks: list[tuple[str, ...]] = []
        for i, c in enumerate(s.configs):
            path = self.path(c.source)
            try:
                digest = tree.tree_digest(path)
                self.config_digests[str(path)] = digest
            except tree.TreeError as exc:
                self.problems.append(Issue(("services", name, "configs", i, "source"), str(exc)))
                continue
            except OSError as exc:
                self.problems.append(
                    Issue(
                        ("services", name, "configs", i, "source"),
                        f"cannot read {path}: {exc.strerror}",
                    )
                )
                continue
            binds.append(f"{path}:{c.target}:ro")
            if c.reload_signal:
                signal = signal or c.reload_signal
                signalled.append(f"{c.target}={digest}")
                if c.check:
                    checks.append(
                        ("sh", "-c", c.check) if isinstance(c.check, str) else tuple(c.check)
                    )
            else:
                hashed.append((c.target, digest))
        reload_digest = (
            hashlib.sha256("\n".join(signalled).encode()).hexdigest() if signalled else ""
        )
        return Configs(tuple(binds), tuple(hashed), reload_digest, signal, tuple(checks))

    def path(self, text: str) -> Path:
        """A path of the file, absolute (relative ones from the file's folder)."""
        return resolve(self.base_dir, text)

    def container(
        self,
        name: str,
        s: ServiceDef,
        image: str,
        replica: int,
        configs: Configs,
        options: RuntimeOptions,
        mounts: tuple[SecretMount, ...] = (),
        build_digest: str = "",
    ) -> ContainerSpec:
        """The container spec of one replica of service `name`."""
        binds, volumes = list(configs.binds), []
        for vol in s.volumes:
            m = mount(vol)
            assert m is not None  # checked
            if m.type == "tmpfs":
                continue  # RuntimeOptions.tmpfs
            if m.type == "volume" and m.source:
                source = self.volume_name(m.source).replace(REPLICA_PLACEHOLDER, str(replica))
                volumes.append(source)
                m = replace(m, source=source)
            binds.append(self._mount_text(m, named=True))
        nets = s.networks
        attachments: list[NetworkAttachment] = []
        if not s.network_mode:
            if not nets:
                attachments.append(NetworkAttachment(self.default_network, (name,)))
            for net in nets:
                attach = nets.get(net) if isinstance(nets, dict) else None
                extra = attach.aliases if attach else []
                attachments.append(
                    NetworkAttachment(
                        self.network_name(net),
                        tuple(dict.fromkeys([name, *extra])),
                        ipv4_address=attach.ipv4_address if attach else None,
                    )
                )
        if attachments and s.links:  # on the first network, as compose: CONTAINER:ALIAS
            first = attachments[0]
            attachments[0] = replace(first, links=self._links(s))
        modes = {"network_mode": s.network_mode, "pid": s.pid, "ipc": s.ipc}
        for key, target in joins(s):  # as compose: X's first replica
            t = self.d.services[target]
            modes[key] = f"container:{t.container_name or f'{self.project}-{target}-1'}"
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
            command=argv(s.command),
            entrypoint=argv(s.entrypoint),
            environment=self._environment(name, s),
            ports=tuple(port_binding(port_text(p), replica) for p in s.ports),
            binds=tuple(binds),
            volumes=tuple(volumes),
            networks=tuple(attachments),
            user=str(s.user) if s.user is not None else None,
            restart=s.restart,
            healthcheck=hc,
            labels=tuple(sorted(text_labels(s.labels).items())),
            working_dir=s.working_dir,
            hostname=s.hostname,
            extra_hosts=extra_hosts(s.extra_hosts),
            cap_add=tuple(s.cap_add),
            cap_drop=tuple(s.cap_drop),
            read_only=s.read_only,
            stop_signal=s.stop_signal,
            stop_grace_s=s.stop_grace_period,  # fractional seconds kept: 400ms is 0.4
            init=s.init,
            network_mode=modes["network_mode"],
            pid=modes["pid"],
            privileged=s.privileged,
            devices=tuple(s.devices),
            ipc=modes["ipc"],
            uts=s.uts,
            userns_mode=s.userns_mode,
            security_opt=tuple(s.security_opt),
            secrets=mounts,
            device_requests=device_requests(s),
            build_digest=build_digest,
            config_digests=configs.digests,
            options=options,
            reload_digest=configs.reload_digest,
            reload_signal=configs.reload_signal,
            reload_check=configs.reload_check,
        )
