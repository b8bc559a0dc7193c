"""The Swarm adapter: observe a project's services, networks, configs and tasks into plain
values (`core.swarm_model`), and execute Swarm actions. Thin; docker-py's low-level client.

Images are never resolved to digests here (docker-py does not, and API >= 1.30 engines do
not query a registry themselves): a local image works on a one-node swarm.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
from docker.types import IPAMConfig, IPAMPool

from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.core.image_policy import Published
from reconciler.core.swarm_crashloop import TaskEnd
from reconciler.core.swarm_model import (
    CreateService,
    CreateSwarmConfig,
    CreateSwarmNetwork,
    CreateSwarmSecret,
    ObservedObject,
    ObservedService,
    RemoveService,
    RemoveSwarmConfig,
    RemoveSwarmNetwork,
    RemoveSwarmSecret,
    ScaleService,
    SwarmAction,
    SwarmObserved,
    SwarmService,
    UpdateService,
)
from reconciler.engine.client import docker_errors, owned
from reconciler.engine.host.images import Images
from reconciler.errors import ActionFailed, NameConflict, NotASwarmManager

RUNNING_STATES = ("starting", "running")


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """Tasks of one service: `desired` are those Swarm wants running, `running` those started
    (running or still `starting`: waiting for a healthcheck), `healthy` those `running` (a task
    with a healthcheck becomes running once it passes); `nodes` maps node -> task states."""

    desired: int
    running: int
    healthy: int
    nodes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    ended: tuple[TaskEnd, ...] = ()  # every task Swarm still lists (its crash loops)


def task_end(t: dict[str, Any]) -> TaskEnd:
    """A task as the crash-loop judgement reads it (core.swarm_crashloop)."""
    status = t.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return TaskEnd(
        slot=str(t.get("Slot") or t.get("NodeID") or "?"),
        at=_epoch(str(status.get("Timestamp", ""))),
        state=str(status.get("State", "")),
        exit_code=int(code) if isinstance(code, int) else None,
        error=str(status.get("Err", "")),
    )


def _epoch(stamp: str) -> float:
    """Swarm's RFC 3339 time with nanoseconds (`2026-01-02T03:04:05.123456789Z`) in epoch s."""
    head, dot, rest = stamp.partition(".")
    digits = len(rest) - len(rest.lstrip("0123456789"))
    text = head + (f".{rest[:digits][:6]}" + rest[digits:] if dot else "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def check_manager(api: docker.APIClient) -> None:
    """Raise NotASwarmManager unless this engine manages a swarm."""
    with docker_errors("docker info"):
        info = api.info()
    problem = swarm_problem(info)
    if problem:
        raise NotASwarmManager(problem)


def swarm_problem(info: dict[str, Any]) -> str | None:
    """What keeps `--target swarm` from working on an engine with this `docker info`."""
    swarm = info.get("Swarm") or {}
    state = swarm.get("LocalNodeState") or "inactive"
    if state != "active":
        return (
            f"--target swarm: this Docker engine is not in a swarm (state {state}); run "
            "`docker swarm init` (or join one as a manager), or leave --target out for the "
            "single host"
        )
    if not swarm.get("ControlAvailable"):
        return (
            "--target swarm: this node is a swarm worker, not a manager; run the reconciler "
            "against a manager (`docker node promote`, or DOCKER_HOST of a manager)"
        )
    return None


class SwarmEngine:
    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self._images = Images(api, lambda operation: None)  # update policies' pulls

    # ------------------------------------------------------------------ update policies

    def registry_tags(self, image: str) -> list[str]:
        return self._images.registry_tags(image)

    def published(self, image: str, tag: str) -> Published:
        return self._images.published(image, tag)

    def pull(self, image: str, timeout_s: float = 600.0) -> None:
        """Pull `image` onto this node with the current login (a policy's chosen version, so
        the task finds it here; other nodes pull it themselves)."""
        self._images.pull(image, f"image {image}", timeout_s, lambda line: None)

    # ------------------------------------------------------------------ observe

    def observe(self, project: str) -> SwarmObserved:
        """Four list calls: services, networks, configs, secrets (named by the project's prefix)."""
        prefix = f"{project}_"
        with docker_errors("list services"):
            services = self.api.services(filters={"name": prefix})
        with docker_errors("list networks"):
            networks = self.api.networks()
        with docker_errors("list configs"):
            configs = self.api.configs(filters={"name": prefix})
        with docker_errors("list secrets"):
            secrets = self.api.secrets(filters={"name": prefix})
        net_names = {n["Id"]: n["Name"] for n in networks}
        observed = [
            self._service(s, net_names) for s in services if s["Spec"]["Name"].startswith(prefix)
        ]
        return SwarmObserved(
            services=tuple(sorted(observed, key=lambda s: s.name)),
            networks=tuple(
                ObservedObject(n["Name"], n["Id"], owned(n.get("Labels"), project))
                for n in networks
                if n["Name"].startswith(prefix)
            ),
            configs=tuple(
                ObservedObject(c["Spec"]["Name"], c["ID"], owned(c["Spec"].get("Labels"), project))
                for c in configs
                if c["Spec"]["Name"].startswith(prefix)
            ),
            secrets=tuple(
                ObservedObject(c["Spec"]["Name"], c["ID"], owned(c["Spec"].get("Labels"), project))
                for c in secrets
                if c["Spec"]["Name"].startswith(prefix)
            ),
        )

    @staticmethod
    def _service(s: dict[str, Any], net_names: dict[str, str]) -> ObservedService:
        spec = copy.deepcopy(s["Spec"])
        task = spec.get("TaskTemplate", {})
        for n in task.get("Networks") or []:
            n["Target"] = net_names.get(n.get("Target", ""), n.get("Target"))
        in_use: dict[str, set[str]] = {"Configs": set(), "Secrets": set()}
        for body in (spec, s.get("PreviousSpec") or {}):
            for kind, names in in_use.items():
                refs = body.get("TaskTemplate", {}).get("ContainerSpec", {}).get(kind) or []
                names |= {r.get(f"{kind[:-1]}Name", "") for r in refs}
        for kind in in_use:
            for ref in task.get("ContainerSpec", {}).get(kind) or []:
                ref.pop(f"{kind[:-1]}ID", None)
        status = s.get("UpdateStatus") or {}
        previous = (s.get("PreviousSpec") or {}).get("Labels") or {}
        return ObservedService(
            id=s["ID"],
            name=spec["Name"],
            version=int(s["Version"]["Index"]),
            labels=tuple(sorted((spec.get("Labels") or {}).items())),
            spec_json=json.dumps(spec, sort_keys=True),
            update_state=status.get("State", ""),
            update_message=status.get("Message", ""),
            configs_in_use=tuple(sorted(in_use["Configs"] - {""})),
            secrets_in_use=tuple(sorted(in_use["Secrets"] - {""})),
            force_update=int(task.get("ForceUpdate") or 0),
            update_started=str(status.get("StartedAt", "")),
            previous_hash=str(previous.get(LABEL_SPEC_HASH, "")),
        )

    def tasks(self, services: list[str]) -> dict[str, TaskCounts]:
        """Task counts per full service name (services, tasks and nodes: three calls)."""
        nodes: dict[str, str] = {}
        if not services:
            return {}
        with docker_errors("list services"):
            found = self.api.services(filters={"name": services})
        ids = {s["ID"]: s["Spec"]["Name"] for s in found if s["Spec"]["Name"] in services}
        tasks: list[dict[str, Any]] = []
        if ids:  # (a service that does not exist fails the whole tasks call)
            with docker_errors("list tasks"):
                tasks = self.api.tasks(filters={"service": list(ids)})
            with docker_errors("list nodes"):
                nodes = {n["ID"]: n["Description"]["Hostname"] for n in self.api.nodes()}
        out: dict[str, TaskCounts] = {}
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in services}
        for t in tasks:
            name = ids.get(t.get("ServiceID", ""))
            if name in per:
                per[name].append(t)
        for name, ts in per.items():
            live = [t for t in ts if t.get("DesiredState") == "running"]
            states = [t["Status"]["State"] for t in live]
            by_node: dict[str, Counter[str]] = {}
            for t in live:
                node = nodes.get(t.get("NodeID", ""), t.get("NodeID") or "(unassigned)")
                by_node.setdefault(node, Counter())[t["Status"]["State"]] += 1
            out[name] = TaskCounts(
                desired=len(live),
                running=sum(s in RUNNING_STATES for s in states),
                healthy=sum(s == "running" for s in states),
                nodes=tuple(
                    (node, tuple(sorted(c.items()))) for node, c in sorted(by_node.items())
                ),
                ended=tuple(map(task_end, ts)),
            )
        return out

    # ------------------------------------------------------------------ act

    def execute(self, action: SwarmAction) -> None:
        """Run one action; ActionFailed (transient or not) or EngineUnavailable if it fails."""
        what = f"{action.verb} {action.kind} {action.name}"
        with docker_errors(what):
            match action:
                case CreateSwarmNetwork(spec=n):
                    ipam = None
                    if n.ipam:
                        pools = [IPAMPool(subnet=s, gateway=g or None) for s, g in n.ipam]
                        ipam = IPAMConfig(pool_configs=pools)
                    self.api.create_network(
                        n.name,
                        driver="overlay",
                        attachable=n.attachable,
                        internal=n.internal,
                        labels=dict(n.labels),
                        ipam=ipam,
                        check_duplicate=True,
                        scope="swarm",
                        enable_ipv6=n.enable_ipv6 or None,
                    )
                case CreateSwarmConfig(spec=c):
                    self.api.create_config(c.name, c.data, labels=dict(c.labels))
                case CreateSwarmSecret(spec=sec):
                    self.api.create_secret(sec.name, sec.data, labels=dict(sec.labels))
                case RemoveSwarmSecret(id=sid):
                    with contextlib.suppress(docker.errors.NotFound):
                        self.api.remove_secret(sid)
                case CreateService(spec=s, taken_by=holder) if holder:
                    raise NameConflict(
                        f"create service {s.full_name}: the name is taken by service "
                        f"{holder[:12]}, which reconciler does not manage; it is left alone"
                    )
                case CreateService(spec=s):
                    body = self._resolved(s)
                    self._images.reload_credentials()  # docker-py sends them: X-Registry-Auth
                    self.api.create_service(
                        body["TaskTemplate"],
                        name=body["Name"],
                        labels=body["Labels"],
                        mode=body["Mode"],
                        update_config=body["UpdateConfig"],
                        rollback_config=body["RollbackConfig"],
                        endpoint_spec=body["EndpointSpec"],
                    )
                case ScaleService(id=sid, version=version, spec_json=text):
                    body = self._resolve(json.loads(text))
                    self._update(sid, version, body)
                case UpdateService(spec=s, id=sid, version=version, force_update=force):
                    body = self._resolved(s)
                    body["TaskTemplate"]["ForceUpdate"] = force
                    self._update(sid, version, body)
                case RemoveService(id=sid):
                    with contextlib.suppress(docker.errors.NotFound):
                        self.api.remove_service(sid)
                case RemoveSwarmConfig(id=cid):
                    with contextlib.suppress(docker.errors.NotFound):
                        self.api.remove_config(cid)
                case RemoveSwarmNetwork(id=nid):
                    self._remove_network(nid)

    def _remove_network(self, nid: str, wait_s: float = 30.0) -> None:
        """A network is in use until the removed services' tasks are gone: retry a while."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.api.remove_network(nid)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _update(self, sid: str, version: int, body: dict[str, Any]) -> None:
        """docker-py sends the login for the image's registry with the update (X-Registry-Auth,
        as `docker service update --with-registry-auth`): Swarm hands it to the nodes that pull.
        Read again first, so a `docker login` since the start counts."""
        self._images.reload_credentials()
        self.api.update_service(
            sid,
            version,
            task_template=body["TaskTemplate"],
            name=body["Name"],
            labels=body.get("Labels"),
            mode=body["Mode"],
            update_config=body.get("UpdateConfig"),
            rollback_config=body.get("RollbackConfig"),
            endpoint_spec=body.get("EndpointSpec"),
        )

    def _resolved(self, s: SwarmService) -> dict[str, Any]:
        return self._resolve(s.spec)

    def _resolve(self, body: dict[str, Any]) -> dict[str, Any]:
        """The spec with network names and config names resolved to IDs (Swarm wants IDs)."""
        task = body["TaskTemplate"]
        targets = [n["Target"] for n in task.get("Networks") or []]
        if targets:
            nets = {n["Name"]: n["Id"] for n in self.api.networks(names=targets)}
            for n in task.get("Networks", []):
                if n["Target"] not in nets:
                    raise ActionFailed(f"network {n['Target']} does not exist", transient=True)
                n["Target"] = nets[n["Target"]]
        for kind, listing in (("Config", self.api.configs), ("Secret", self.api.secrets)):
            refs = task["ContainerSpec"].get(f"{kind}s") or []
            if not refs:
                continue
            wanted = [r[f"{kind}Name"] for r in refs]
            found = {c["Spec"]["Name"]: c["ID"] for c in listing(filters={"name": wanted})}
            for ref in refs:
                if ref[f"{kind}Name"] not in found:
                    raise ActionFailed(
                        f"{kind.lower()} {ref[f'{kind}Name']} does not exist", transient=True
                    )
                ref[f"{kind}ID"] = found[ref[f"{kind}Name"]]
        return body
