"""Compose's keys (issue #10, item 4): rendering, spec hash, checks, and on the real engine
the created container read back (HostConfig / Config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler.config import loader
from reconciler.core.actions import CreateContainer, CreateNetwork, CreateVolume, StartContainer
from reconciler.core.desired import DesiredState
from reconciler.core.observed import Observed, ObservedContainer, ObservedNetwork, ObservedVolume
from reconciler.core.planner import Holds, plan
from reconciler.engine.host.engine import Engine
from reconciler.errors import DesiredStateError
from tests.conftest import OWNER_LABEL, TEST_LABEL, run_cli

BASE: dict[str, Any] = {"project": "p", "services": {"web": {"image": "busybox:1"}}}


def parse(doc: object) -> DesiredState:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    return loader.parse(text, source="state.yaml", base_dir=Path("/srv/app"))


def problems(doc: object) -> str:
    with pytest.raises(DesiredStateError) as info:
        parse(doc)
    return str(info.value)


def web(**fields: Any) -> dict[str, Any]:
    return {**BASE, "services": {"web": {"image": "busybox:1", **fields}}}


ALL_KEYS: dict[str, Any] = {
    "expose": [8080, "9000-9001/udp"],
    "deploy": {
        "resources": {
            "limits": {"cpus": "0.5", "memory": "64m", "pids": 50},
            "reservations": {"cpus": "0.25", "memory": "32m"},
        }
    },
    "logging": {"driver": "json-file", "options": {"max-size": "1m", "max-file": 3}},
    "tmpfs": ["/run:size=1m", "/scratch"],
    "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 512},
    "sysctls": {"net.core.somaxconn": 1024},
    "shm_size": "16m",
    "stdin_open": True,
    "tty": True,
    "dns": ["127.0.0.1", "10.0.0.53"],
    "dns_search": "example.internal",
    "group_add": [1234, "audio"],
    "ports": [{"target": 80, "published": "18080", "host_ip": "127.0.0.1", "protocol": "tcp"}],
    "extra_hosts": {"db.local": "10.1.2.3", "v6.local": "::1"},
    "labels": {"tier": 3, "public": True, "weight": 1.5, "empty": None},
    "healthcheck": {"test": "true", "interval": "5s", "start_interval": "1s"},
}


# --------------------------------------------------------------------------- pure


def test_every_key_renders_into_the_spec() -> None:
    """Each key lands in the replica's spec with Docker's units."""
    spec = parse(web(**ALL_KEYS)).service("web").replicas[0]
    o = spec.options
    assert o.expose == ("8080/tcp", "9000/udp", "9001/udp")
    assert (o.cpus, o.mem_limit, o.pids_limit, o.mem_reservation) == (
        0.5,
        64 * 2**20,
        50,
        32 * 2**20,
    )
    assert (o.log_driver, o.log_options) == ("json-file", (("max-file", "3"), ("max-size", "1m")))
    assert o.tmpfs == (("/run", "size=1m"), ("/scratch", ""))
    assert o.ulimits == (("nofile", 1024, 2048), ("nproc", 512, 512))
    assert o.sysctls == (("net.core.somaxconn", "1024"),)
    assert (o.shm_size, o.stdin_open, o.tty) == (16 * 2**20, True, True)
    assert (o.dns, o.dns_search, o.group_add) == (
        ("127.0.0.1", "10.0.0.53"),
        ("example.internal",),
        ("1234", "audio"),
    )
    assert o.health_start_interval_s == 1.0
    (port,) = spec.ports
    assert (port.host_ip, port.host_port, port.container_port) == ("127.0.0.1", 18080, 80)
    assert spec.extra_hosts == ("db.local:10.1.2.3", "v6.local:::1")
    assert dict(spec.labels) == {"tier": "3", "public": "true", "weight": "1.5", "empty": ""}


def test_a_file_without_the_new_keys_keeps_its_hashes() -> None:
    """Specs and revisions are what they were before these keys existed (computed on the
    previous commit): upgrading recreates nothing."""
    text = """
project: p
networks: {front: {}, back: {internal: true}}
volumes: {data: {}, "cache_{replica}": {}}
services:
  db:
    image: busybox:1
    environment: {A: "1"}
    volumes: ["data:/data", "cache_{replica}:/c"]
    healthcheck: {test: "true", interval: 5s}
    labels: {x: "y"}
    extra_hosts: ["h:1.2.3.4"]
    networks: [back]
  web:
    image: busybox:1
    replicas: 2
    ports: ["8000-8001:80", "127.0.0.1:9000-9001:81/udp"]
    depends_on: {db: {condition: service_healthy}}
    networks: {front: {aliases: [w]}, back: null}
    stop_grace_period: 10s
    deploy: {update_config: {order: stop-first}}
"""
    state = parse("version: 1\n" + text)
    db, site = state.service("db"), state.service("web")
    assert db.revision.startswith("ba4cb9c23e8c")
    assert db.replicas[0].spec_hash.startswith("c448c7f6df86")
    assert site.revision.startswith("5dc230c221c1")
    assert [c.spec_hash[:12] for c in site.replicas] == ["e447cebeb150", "73029241cc4f"]


EDITS: list[tuple[str, Any]] = [
    ("expose", [81]),
    ("cpus", 0.75),
    ("mem_limit", "65m"),
    ("mem_reservation", "16m"),
    ("pids_limit", 51),
    ("deploy", {"resources": {"limits": {"memory": "128m"}}}),
    ("logging", {"driver": "none"}),
    ("tmpfs", "/other"),
    ("ulimits", {"nofile": 4096}),
    ("sysctls", ["net.core.somaxconn=512"]),
    ("shm_size", "32m"),
    ("stdin_open", False),
    ("tty", False),
    ("dns", "1.1.1.1"),
    ("dns_search", []),
    ("group_add", ["video"]),
    ("ports", [{"target": 81, "published": 18080}]),
    ("extra_hosts", {"db.local": "10.9.9.9"}),
    ("labels", {"tier": 4}),
    ("healthcheck", {"test": "true", "interval": "5s", "start_interval": "2s"}),
]


@pytest.mark.parametrize(("key", "value"), EDITS, ids=[k for k, _ in EDITS])
def test_an_edit_of_each_key_is_a_pending_change(key: str, value: Any) -> None:
    """Changing any of these keys changes the spec hash and the revision (rolled out)."""
    base = dict(ALL_KEYS)
    if key in ("cpus", "mem_limit", "mem_reservation", "pids_limit"):
        del base["deploy"]  # one spelling at a time
    before = parse(web(**base)).service("web")
    after = parse(web(**{**base, key: value})).service("web")
    assert after.replicas[0].spec_hash != before.replicas[0].spec_hash
    assert after.revision != before.revision


def test_sizes_and_cpus_in_compose_spellings() -> None:
    """1g, 1.5gb, 512k and a plain byte count; cpus as a number or text."""
    for given, want in [("1g", 2**30), ("1.5gb", int(1.5 * 2**30)), ("512k", 2**19), (100, 100)]:
        assert parse(web(mem_limit=given)).service("web").replicas[0].options.mem_limit == want
    assert parse(web(cpus=2)).service("web").replicas[0].options.cpus == 2.0
    assert "services.web.mem_limit: must be a size" in problems(web(mem_limit="lots"))
    assert "services.web.cpus:" in problems(web(cpus=True))


def test_conflicting_spellings_are_refused() -> None:
    """mem_limit against deploy.resources.limits.memory, scale against replicas: one, not both."""
    msg = problems(web(mem_limit="1g", deploy={"resources": {"limits": {"memory": "2g"}}}))
    assert "services.web.mem_limit: conflicts with deploy.resources" in msg
    assert "services.web.scale: 3 conflicts with replicas: 2" in problems(web(scale=3, replicas=2))
    assert len(parse(web(scale=3)).service("web").replicas) == 3
    assert len(parse(web(deploy={"replicas": 2})).service("web").replicas) == 2


def test_bad_expose_tmpfs_ulimit_and_healthy_without_healthcheck() -> None:
    """Each problem at its own path."""
    doc = {
        **BASE,
        "services": {
            "db": {"image": "x"},
            "web": {
                "image": "x",
                "expose": ["99999"],
                "tmpfs": ["run"],
                "ulimits": {"nofile": {"soft": 10, "hard": 5}},
                "depends_on": {"db": {"condition": "service_healthy"}},
            },
        },
    }
    msg = problems(doc)
    assert "services.web.expose[0]: must be PORT" in msg
    assert "services.web.tmpfs[0]: must be an absolute path" in msg
    assert "services.web.ulimits.nofile: soft must be <= hard" in msg
    assert "services.web.depends_on.db.condition: service 'db' has no healthcheck" in msg
    assert "at most 1024 exposed ports" in problems(web(expose=["1-2000"]))


def test_a_job_replacement_passes_by_exiting_0() -> None:
    """A service_completed_successfully dependency is judged by its exit code, not by running."""
    from reconciler.core import rollout as ro

    spec = parse(web()).service("web").replicas[0]
    done = ObservedContainer("n", "x", "web", 1, spec.spec_hash, "exited", exit_code=0)
    config = ro.UpdateConfig()
    assert ro.judge(spec, done, config, 0.0, job=True).outcome == "passed"
    assert ro.judge(spec, done, config, 0.0).outcome == "failed"
    failed = ObservedContainer("n", "x", "web", 1, spec.spec_hash, "exited", exit_code=3)
    assert ro.judge(spec, failed, config, 0.0, job=True).outcome == "failed"


def test_named_and_external_networks_and_volumes() -> None:
    """name: is the Docker name (what containers join and mount); external ones are never
    created, and a missing one holds back the containers that need it."""
    doc = {
        **BASE,
        "networks": {"front": {"name": "shared_front", "external": True}, "back": {"name": "b"}},
        "volumes": {
            "data": {"name": "legacy_data", "external": True},
            "cache": {"name": "c1", "driver_opts": {"type": "tmpfs", "device": "tmpfs"}},
        },
        "services": {
            "web": {
                "image": "x",
                "networks": ["front", "back"],
                "volumes": ["data:/data", "cache:/cache"],
            }
        },
    }
    state = parse(doc)
    spec = state.service("web").replicas[0]
    assert [a.network for a in spec.networks] == ["shared_front", "b"]
    assert spec.binds == ("legacy_data:/data", "c1:/cache")
    assert {n.name: n.external for n in state.networks} == {"shared_front": True, "b": False}
    (cache,) = [v for v in state.volumes if v.name == "c1"]
    assert cache.driver_opts == (("device", "tmpfs"), ("type", "tmpfs"))
    first = plan(state, Observed())
    kinds = {(type(s.action).__name__, s.action.name) for s in first.steps}
    assert kinds == {("CreateNetwork", "b"), ("CreateVolume", "c1")}
    assert any("shared_front: external, not found" in n for n in first.notes)
    assert any("held back (external legacy_data, shared_front not found)" in n for n in first.notes)
    present = Observed(
        networks=(
            ObservedNetwork("shared_front", "n1", owned=False),
            ObservedNetwork("b", "n2", owned=True),
        ),
        volumes=(ObservedVolume("legacy_data", owned=False), ObservedVolume("c1", owned=True)),
    )
    then = plan(state, present)
    assert any(isinstance(a, CreateContainer) for a in then.actions)
    assert not any(isinstance(a, CreateNetwork | CreateVolume) for a in then.actions)


def _exited(name: str, service: str, spec_hash: str, code: int) -> ObservedContainer:
    return ObservedContainer(name, name, service, 1, spec_hash, "exited", exit_code=code)


def test_depends_on_conditions() -> None:
    """service_healthy waits for healthy, service_completed_successfully for exit 0; a job
    that exited 0 is done (not restarted), one that failed is started again."""
    doc = {
        **BASE,
        "services": {
            "migrate": {"image": "x"},
            "db": {"image": "x", "healthcheck": {"test": "true"}},
            "web": {
                "image": "x",
                "depends_on": {
                    "migrate": {"condition": "service_completed_successfully"},
                    "db": {"condition": "service_healthy"},
                },
            },
        },
    }
    state = parse(doc)
    site, job = state.service("web"), state.service("migrate")
    assert set(site.waits_for()) == {"migrate:completed", "db:healthy"}
    assert job.job and not state.service("db").job
    mig = job.replicas[0]
    done = Observed(containers=(_exited(mig.name, "migrate", mig.spec_hash, 0),))
    assert not plan(DesiredState("p", (), (), (job,)), done).actions
    failed = Observed(containers=(_exited(mig.name, "migrate", mig.spec_hash, 1),))
    again = plan(DesiredState("p", (), (), (job,)), failed).actions
    assert any(isinstance(a, StartContainer) for a in again)
    only_web = DesiredState("p", (), (), (site,))
    waiting = plan(only_web, Observed(), Holds(ready=frozenset({"migrate:completed", "db"})))
    assert not any(isinstance(a, StartContainer) for a in waiting.actions)
    assert any("waiting for db:healthy" in n for n in waiting.notes)
    ready = frozenset({"migrate:completed", "db", "db:healthy"})
    going = plan(only_web, Observed(), Holds(ready=ready))
    assert any(isinstance(a, StartContainer) for a in going.actions)


# --------------------------------------------------------------------------- engine


@pytest.mark.docker
def test_created_container_carries_every_key(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """The engine is asked for each key and the inspected container has it."""
    doc = {
        "project": project,
        "services": {
            "web": {
                **ALL_KEYS,
                "image": busybox_image,
                "command": ["sleep", "600"],
                "labels": {**ALL_KEYS["labels"], TEST_LABEL: "1", OWNER_LABEL: project},
                "network_mode": "none",
                "volumes": [{"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "1m"}}],
            }
        },
    }
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = loader.load(path).service("web").replicas[0]
    Engine(api).execute(CreateContainer(spec))
    info = api.inspect_container(spec.name)
    host, config = info["HostConfig"], info["Config"]
    assert host["NanoCpus"] == 500_000_000
    assert (host["Memory"], host["MemoryReservation"]) == (64 * 2**20, 32 * 2**20)
    assert host["PidsLimit"] == 50
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "1m"}}
    assert host["Tmpfs"] == {"/run": "size=1m", "/scratch": "", "/cache": f"size={2**20}"}
    assert sorted((u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]) == [
        ("nofile", 1024, 2048),
        ("nproc", 512, 512),
    ]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert host["ShmSize"] == 16 * 2**20
    assert (host["Dns"], host["DnsSearch"]) == (["127.0.0.1", "10.0.0.53"], ["example.internal"])
    assert host["GroupAdd"] == ["1234", "audio"]
    assert host["ExtraHosts"] == ["db.local:10.1.2.3", "v6.local:::1"]
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]}
    assert (config["OpenStdin"], config["Tty"]) == (True, True)
    assert set(config["ExposedPorts"]) == {"80/tcp", "8080/tcp", "9000/udp", "9001/udp"}
    labels = config["Labels"]
    assert (labels["tier"], labels["public"], labels["weight"], labels["empty"]) == (
        "3",
        "true",
        "1.5",
        "",
    )
    hc = config["Healthcheck"]
    assert hc["Interval"] == 5 * 10**9
    # Engine 20.10 (API 1.41) keeps no StartInterval: accepted, sent, dropped by the engine.
    if tuple(int(x) for x in api.version()["ApiVersion"].split(".")) >= (1, 44):
        assert hc["StartInterval"] == 10**9
    else:
        assert "StartInterval" not in hc


@pytest.mark.docker
def test_volume_driver_opts_and_external_objects(
    api: docker.APIClient, project: str, tmp_path: Path
) -> None:
    """driver_opts reach the volume; an external volume is used as it is, never labelled."""
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}
    api.create_volume(f"{project}_ext", labels=labels)
    doc = {
        "project": project,
        "volumes": {
            "ext": {"name": f"{project}_ext", "external": True},
            "tmp": {
                "name": f"{project}_tmp",
                "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"},
                "labels": labels,
            },
        },
        "services": {"web": {"image": "x", "volumes": ["ext:/a", "tmp:/b"]}},
    }
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(doc))
    state = loader.load(path)
    engine = Engine(api)
    steps = plan(state, engine.observe(project)).steps
    creates = [s.action for s in steps if isinstance(s.action, CreateVolume)]
    assert [a.spec.name for a in creates] == [f"{project}_tmp"]
    engine.execute(creates[0])
    vol = api.inspect_volume(f"{project}_tmp")
    assert vol["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    assert "io.reconciler.managed" not in (api.inspect_volume(f"{project}_ext")["Labels"] or {})


@pytest.mark.docker
def test_apply_runs_a_job_before_its_dependent_and_leaves_it_done(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Any
) -> None:
    """service_completed_successfully: `apply` starts web only after migrate exited 0, and
    the finished job is not started again (the next plan is in sync)."""
    path = write_state(
        {
            "volumes": {"data": {"name": f"{project}_data"}},
            "services": {
                "migrate": {
                    "image": busybox_image,
                    "command": ["sh", "-c", "sleep 1; echo migrated > /data/mark"],
                    "volumes": ["data:/data"],
                },
                "web": {
                    "image": busybox_image,
                    "command": ["sh", "-c", "cat /data/mark; sleep 600"],
                    "volumes": ["data:/data"],
                    "depends_on": {"migrate": {"condition": "service_completed_successfully"}},
                },
            },
        }
    )
    result = run_cli("apply", str(path), "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    job = api.inspect_container(f"{project}-migrate-1")["State"]
    site = api.inspect_container(f"{project}-web-1")["State"]
    assert (job["Status"], job["ExitCode"], site["Status"]) == ("exited", 0, "running")
    assert site["StartedAt"] > job["FinishedAt"]
    assert b"migrated" in api.logs(f"{project}-web-1")
    again = run_cli("plan", str(path))
    assert again.returncode == 0 and "in sync" in again.stdout, again.stdout


@pytest.mark.docker
def test_plan_and_apply_fail_on_a_missing_external_network(
    api: docker.APIClient, busybox_image: str, project: str, write_state: Any
) -> None:
    """An external network that does not exist is an error; nothing is created for it."""
    path = write_state(
        {
            "networks": {"ext": {"name": f"{project}_absent", "external": True}},
            "services": {"web": {"image": busybox_image, "networks": ["ext"]}},
        }
    )
    for command in ("plan", "apply"):
        result = run_cli(command, str(path))
        assert result.returncode == 1, result.stdout
        assert f"error: network {project}_absent is declared external" in result.stdout
    assert not api.networks(names=[f"{project}_absent"])
    assert not api.containers(all=True, filters={"name": f"{project}-web"})


def test_long_syntax_tmpfs_volume_is_a_tmpfs_mount() -> None:
    """volumes: [{type: tmpfs, target, tmpfs: {size, mode}}] is Tmpfs, not a bind."""
    vol = {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "1m", "mode": 1777}}
    spec = parse(web(volumes=[vol, "/srv:/srv"])).service("web").replicas[0]
    assert spec.options.tmpfs == (("/cache", f"size={2**20},mode=1777"),)
    assert spec.binds == ("/srv:/srv",)
    assert "a tmpfs mount takes no source" in problems(web(volumes=[{**vol, "source": "x"}]))
    assert "a bind mount needs a source" in problems(
        web(volumes=[{"type": "bind", "target": "/x"}])
    )
