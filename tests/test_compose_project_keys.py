"""Compose's keys of issue #22 (build args..., profiles, memswap_limit, links, GPU devices,
static addresses, bind propagation, attachable/enable_ipv6): rendering, spec hash and
revision, rules, profiles, the host policy, Swarm and the importer; pure (no engine).
The real engine reads them back in tests/test_compose_project_keys_docker.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config import loader, policy_file, profiles
from reconciler.config.forms import mount
from reconciler.core import policy
from reconciler.core import swarm_plan as sp
from reconciler.core.actions import RemoveContainer
from reconciler.core.desired import LABEL_BUILD_HASH, DesiredState
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.planner import plan
from reconciler.engine.host.containers import host_config, networking_config
from reconciler.engine.host.images import build_kwargs
from reconciler.engine.swarm import spec as swarm_file
from reconciler.errors import DesiredStateError
from tests.conftest import run_cli

BASE_DIR = Path("/srv/app")
NETWORKS: dict[str, Any] = {"front": {"ipam": {"config": [{"subnet": "172.29.7.0/24"}]}}}


def parse(doc: dict[str, Any], environ: dict[str, str] | None = None) -> DesiredState:
    doc = {"version": 1, "project": "p", **doc}
    return loader.parse(
        yaml.safe_dump(doc), source="state.yaml", base_dir=BASE_DIR, environ=environ or {}
    )


def problems(doc: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(DesiredStateError) as info:
        parse(doc, environ)
    return str(info.value)


def two(**web: Any) -> dict[str, Any]:
    """`db` and `web` on network front; `web` with the given keys."""
    return {
        "networks": copy.deepcopy(NETWORKS),
        "services": {
            "db": {"image": "busybox:1", "networks": ["front"]},
            "web": {"image": "busybox:1", "networks": ["front"], **web},
        },
    }


# --------------------------------------------------------------------------- rendering


def test_every_key_renders_into_the_spec() -> None:
    doc = two(
        build={
            "context": "./src",
            "args": {"A": "1", "FROM_ENV": None, "UNSET": None},
            "target": "prod",
            "shm_size": "64m",
            "labels": ["tier=web"],
            "cache_from": ["busybox:1"],
        },
        mem_limit="128m",
        memswap_limit="256m",
        links=["db:database", "db"],
        networks={"front": {"ipv4_address": "172.29.7.10", "aliases": ["w"]}},
        volumes=[
            {"type": "bind", "source": "/srv/x", "target": "/x", "bind": {"propagation": "rslave"}},
            "./y:/y:ro,rshared",
        ],
        deploy={
            "resources": {
                "reservations": {
                    "devices": [
                        {"capabilities": ["gpu"], "driver": "nvidia", "count": "all"},
                        {"capabilities": ["gpu", "utility"], "device_ids": ["0", "2"]},
                    ]
                }
            }
        },
    )
    doc["networks"]["front"] |= {"attachable": True, "enable_ipv6": True}
    state = parse(doc, {"FROM_ENV": "env"})
    svc = state.service("web")
    assert svc.build is not None
    assert svc.build.args == (("A", "1"), ("FROM_ENV", "env"))  # UNSET left out, as compose
    assert (svc.build.target, svc.build.shm_size) == ("prod", 64 * 2**20)
    assert (svc.build.labels, svc.build.cache_from) == ((("tier", "web"),), ("busybox:1",))
    c = svc.replicas[0]
    assert c.build_digest == svc.build.digest != ""
    assert c.options.memswap_limit == 256 * 2**20
    (front,) = c.networks
    assert front.ipv4_address == "172.29.7.10" and front.aliases == ("web", "w")
    assert front.links == ("p-db-1:database", "p-db-1:db")
    assert c.binds == ("/srv/x:/x:rslave", "/srv/app/y:/y:ro,rshared")
    gpus, ids = c.device_requests
    assert (gpus.driver, gpus.count, gpus.capabilities) == ("nvidia", -1, ("gpu",))
    assert (ids.count, ids.device_ids, ids.capabilities) == (0, ("0", "2"), ("gpu", "utility"))
    net = next(n for n in state.networks if n.name == "front")
    assert (net.attachable, net.enable_ipv6) == (True, True)
    assert svc.depends_on == ("db",)  # links start after the linked service, as compose


def test_the_engine_is_asked_for_each_key() -> None:
    """The create payload (docker-py's forms, checked against API 1.41) and the build's."""
    doc = two(
        mem_limit="64m",
        memswap_limit=-1,
        links=["db:database"],
        networks={"front": {"ipv4_address": "172.29.7.10"}},
        deploy={"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}},
    )
    c = parse(doc).service("web").replicas[0]
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    host = host_config(api, c)
    assert (host["Memory"], host["MemorySwap"]) == (64 * 2**20, -1)
    assert host["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    endpoint = networking_config(api, c)["EndpointsConfig"]["front"]  # type: ignore[index]
    assert endpoint["IPAMConfig"] == {"IPv4Address": "172.29.7.10"}
    assert endpoint["Links"] == ["p-db-1:database"]
    build = parse(
        two(build={"context": ".", "args": ["A=1"], "target": "t", "cache_from": ["x:1"]})
    ).service("web")
    assert build.build is not None
    kwargs = build_kwargs(build.build, "img:1")
    assert kwargs["buildargs"] == {"A": "1"} and kwargs["target"] == "t"
    assert kwargs["cache_from"] == ["x:1"]
    assert kwargs["labels"] == {LABEL_BUILD_HASH: build.build.digest}
    plain = parse(two(build=".")).service("web").build
    assert plain is not None and "labels" not in build_kwargs(plain, "img:1")  # as before


# Each edit of web (from `two(**BASE_WEB)`), and whether it changes web's containers.
BASE_WEB: dict[str, Any] = {"build": {"context": "."}, "mem_limit": "64m"}
EDITS: list[tuple[str, dict[str, Any], bool]] = [
    ("build.args", {"build": {"context": ".", "args": {"A": "1"}}}, True),
    ("build.target", {"build": {"context": ".", "target": "prod"}}, True),
    ("build.shm_size", {"build": {"context": ".", "shm_size": "1g"}}, True),
    ("build.labels", {"build": {"context": ".", "labels": {"a": "b"}}}, True),
    ("build.cache_from", {"build": {"context": ".", "cache_from": ["x:1"]}}, True),
    ("build.dockerfile_inline", {"build": {"context": ".", "dockerfile_inline": "FROM x"}}, True),
    ("memswap_limit", {"memswap_limit": "128m"}, True),
    ("links", {"links": ["db:database"]}, True),
    ("ipv4_address", {"networks": {"front": {"ipv4_address": "172.29.7.9"}}}, True),
    (
        "devices",
        {"deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}},
        True,
    ),
    ("propagation", {"volumes": ["/srv/x:/x:rslave"]}, True),
    ("profiles", {"profiles": ["web"]}, False),
]


@pytest.mark.parametrize(("key", "edit", "changes"), EDITS, ids=[e[0] for e in EDITS])
def test_each_key_changes_the_spec_hash_and_revision(
    key: str, edit: dict[str, Any], changes: bool
) -> None:
    """A key that changes the container changes its spec hash and the revision (rolled out);
    profiles only choose whether the service runs."""
    base = {"volumes": ["/srv/x:/x"]} if key == "propagation" else {}
    before = parse(two(**BASE_WEB, **base)).service("web")
    after = parse(two(**{**BASE_WEB, **edit}), {profiles.ENV: "*"}).service("web")
    assert (after.replicas[0].spec_hash != before.replicas[0].spec_hash) is changes
    assert (after.revision != before.revision) is changes


def test_dockerfile_inline_is_the_builds_dockerfile_and_not_with_dockerfile() -> None:
    inline = {"context": ".", "dockerfile_inline": "FROM busybox\nLABEL a=b\n"}
    one = parse(two(build=inline)).service("web").build
    other = parse(two(build={**inline, "dockerfile_inline": "FROM busybox\n"})).service("web")
    assert one is not None and one.dockerfile_inline == inline["dockerfile_inline"]
    assert other.build is not None and one.digest != other.build.digest != ""
    text = problems(two(build={**inline, "dockerfile": "Dockerfile.dev"}))
    assert "services.web.build.dockerfile_inline: give either dockerfile or" in text


def test_a_secret_looking_build_arg_is_never_printed() -> None:
    doc = two(build={"context": ".", "args": ["NPM_TOKEN", "A=plain"]})
    state = parse(doc, {"NPM_TOKEN": "s3"})
    assert "s3" in state.secrets and "plain" not in state.secrets


def test_a_new_build_arg_value_is_a_new_build() -> None:
    one = parse(two(build={"context": ".", "args": {"V": "1"}})).service("web")
    other = parse(two(build={"context": ".", "args": {"V": "2"}})).service("web")
    assert one.build and other.build and one.build.digest != other.build.digest
    assert one.replicas[0].spec_hash != other.replicas[0].spec_hash


def test_files_without_these_keys_keep_their_hashes() -> None:
    """Computed on the commit before these keys (59e4f67): upgrading recreates nothing."""
    text = """
version: 1
project: p
networks:
  front: {ipam: {config: [{subnet: 172.31.9.0/24}]}}
services:
  api:
    build: {context: ./src, dockerfile: Dockerfile.prod}
    volumes:
      - {type: bind, source: /srv/data, target: /data, read_only: true}
      - "/srv/logs:/logs:rw"
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 64m}
        reservations: {cpus: "0.25", memory: 32m}
    networks:
      front: {aliases: [a1]}
    mem_limit: 64m
  web:
    build: ./web
    depends_on: [api]
    networks: [front]
"""
    state = loader.parse(text, source="state.yaml", base_dir=BASE_DIR, environ={})
    api, web = state.service("api"), state.service("web")
    assert (api.revision[:12], api.replicas[0].spec_hash[:12]) == ("6f2083b80d5b", "4a6bd528ce5d")
    assert (web.revision[:12], web.replicas[0].spec_hash[:12]) == ("109e31a868d1", "a416969a5c96")


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ({"memswap_limit": "1g"}, "memswap_limit: needs a memory limit"),
        ({"mem_limit": "1g", "memswap_limit": "512m"}, "must be at least the memory limit"),
        ({"links": ["nope"]}, "links[0]: unknown service 'nope'"),
        ({"links": ["web"]}, "links[0]: a service cannot link to itself"),
        ({"links": ["db"], "network_mode": "none", "networks": []}, "cannot be combined"),
        ({"links": ["db:x", "lone:x"]}, "alias 'x' already links to 'db'"),
        ({"links": ["lone"]}, "service 'lone' is not on network 'front'"),
        (
            {"networks": {"back": {"ipv4_address": "10.0.0.5"}}},
            "network 'back' needs an IPv4 subnet of its own",
        ),
        (
            {"networks": {"front": {"ipv4_address": "10.0.0.5"}}},
            "10.0.0.5 is not in the subnet of network 'front' (172.29.7.0/24)",
        ),
        ({"networks": {"front": {"ipv4_address": "172.29.7.1"}}}, "subnet's own"),
        ({"networks": {"front": {"ipv4_address": "172.29.7.300"}}}, "must be an IPv4 address"),
        (
            {"networks": {"front": {"ipv4_address": "172.29.7.9"}}, "replicas": 2},
            "one static address cannot serve 2 replicas",
        ),
        (
            {
                "networks": {"front": {"ipv4_address": "172.29.7.9"}},
                "deploy": {"update_config": {"order": "start-first"}},
            },
            "only one can hold the address",
        ),
        ({"build": {"context": ".", "secrets": ["npm"]}}, "not supported: build secrets need"),
        ({"build": {"context": ".", "args": ["=1"]}}, "build.args[0]: must be NAME=VALUE"),
        (
            {
                "deploy": {
                    "resources": {
                        "reservations": {
                            "devices": [{"capabilities": ["gpu"], "count": 1, "device_ids": ["0"]}]
                        }
                    }
                }
            },
            "give count or device_ids, not both",
        ),
        (
            {"deploy": {"resources": {"reservations": {"devices": [{"capabilities": []}]}}}},
            "must name at least one capability",
        ),
        ({"volumes": ["data:/d:rslave"]}, "volumes[0]: must be SOURCE:TARGET[:MODE]"),
        ({"volumes": ["/x:/d:ro,rw"]}, "volumes[0]: must be SOURCE:TARGET[:MODE]"),
        (
            {"volumes": [{"type": "tmpfs", "target": "/t", "bind": {"propagation": "shared"}}]},
            "bind options need type: bind, not tmpfs",
        ),
        ({"profiles": ["-x"]}, "profile '-x' must start with a letter or digit"),
    ],
)
def test_what_the_engine_would_refuse_is_refused_at_its_key(
    web: dict[str, Any], message: str
) -> None:
    doc = two(**web)
    doc["networks"]["back"] = {}
    doc["volumes"] = {"data": {}}
    doc["services"]["lone"] = {"image": "busybox:1", "networks": ["back"]}
    assert message in problems(doc)


def test_two_services_cannot_hold_one_address() -> None:
    doc = two(networks={"front": {"ipv4_address": "172.29.7.9"}})
    doc["services"]["db"]["networks"] = {"front": {"ipv4_address": "172.29.7.9"}}
    assert "172.29.7.9 is also held by service 'db' on network 'front'" in problems(doc)


@given(
    access=st.sampled_from(["", "ro", "rw"]),
    propagation=st.sampled_from(["", "rprivate", "private", "rshared", "shared", "rslave"]),
)
def test_short_syntax_mode_and_propagation_in_any_order(access: str, propagation: str) -> None:
    for modes in ([access, propagation], [propagation, access]):
        mode = ",".join(m for m in modes if m)
        m = mount(f"/a:/b:{mode}" if mode else "/a:/b")
        assert m is not None
        assert (m.read_only, m.propagation) == (access == "ro", propagation)


# --------------------------------------------------------------------------- profiles


def profiled() -> dict[str, Any]:
    return {
        "services": {
            "web": {"image": "busybox:1"},
            "debug": {"image": "busybox:1", "profiles": ["debug", "all"]},
            "seed": {"image": "busybox:1", "profiles": ["tools"], "depends_on": ["debug"]},
        }
    }


@pytest.mark.parametrize(
    ("selection", "running"),
    [
        ("", ["web"]),
        ("debug", ["debug", "web"]),
        (" all , debug ", ["debug", "web"]),
        ("debug,tools", ["debug", "seed", "web"]),
        ("*", ["debug", "seed", "web"]),
    ],
)
def test_profiles_select_services(selection: str, running: list[str]) -> None:
    """Services without profiles always run; the others when one of theirs is selected."""
    state = parse(profiled(), {profiles.ENV: selection})
    assert sorted(s.name for s in state.services) == running
    assert state.dormant == {"debug", "seed"} - set(running)


def test_a_dependency_on_a_dormant_service_names_the_profile_to_select() -> None:
    text = problems(profiled(), {profiles.ENV: "tools"})
    assert "services.seed.depends_on: service 'debug' is not part of the project" in text
    assert "none of its profiles debug, all is selected (selected: tools)" in text
    assert "--profile debug" in text


def test_no_service_selected_is_refused_and_an_unknown_profile_warned(tmp_path: Path) -> None:
    doc = {"services": {"x": {"image": "busybox:1", "profiles": ["a"]}}}
    assert "no service runs with the selected profiles (none)" in problems(doc)
    said: list[str] = []
    loader.parse(
        yaml.safe_dump({"version": 1, "project": "p", **profiled()}),
        source="s.yaml",
        base_dir=tmp_path,
        environ={profiles.ENV: "debgu"},
        warn=said.append,
    )
    assert said == ["s.yaml: profile debgu is selected but no service has it"]


def test_compose_profiles_may_come_from_dot_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=debug\n")
    raw = yaml.safe_dump({"version": 1, "project": "p", **profiled()})
    state = loader.parse(raw, source="s.yaml", base_dir=tmp_path, environ={})
    assert {s.name for s in state.services} == {"web", "debug"}


def test_containers_of_dormant_services_are_left_alone() -> None:
    """Not part of the project: neither created nor removed as orphans (as compose)."""
    state = parse(profiled())
    seen = [
        ObservedContainer("a", "p-debug-1", "debug", 1, "h", "running"),
        ObservedContainer("b", "p-gone-1", "gone", 1, "h", "running"),
    ]
    actions = plan(state, Observed(containers=tuple(seen))).actions
    removed = [a.name for a in actions if isinstance(a, RemoveContainer)]
    assert "p-gone-1" in removed and "p-debug-1" not in removed


def test_swarm_leaves_dormant_services_alone(tmp_path: Path) -> None:
    doc = {"version": 1, "project": "demo", **profiled()}
    desired = swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})
    own = (("io.reconciler.managed", "true"), ("io.reconciler.project", "demo"))
    live = [
        sp.ObservedService(f"id-{n}", f"demo_{n}", 1, (*own, ("io.reconciler.service", n)), "{}")
        for n in ("debug", "gone")
    ]
    actions = sp.plan(desired, sp.SwarmObserved(services=tuple(live))).actions
    removed = [a.name for a in actions if isinstance(a, sp.RemoveService)]
    assert removed == ["demo_gone"]


# --------------------------------------------------------------------------- host policy


GPU: dict[str, Any] = {
    "deploy": {
        "resources": {
            "reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
        }
    }
}


def test_gpus_are_denied_unless_the_policy_allows_them(tmp_path: Path) -> None:
    state = parse(two(**GPU))
    judged, denials = policy.enforce(state)
    assert judged.denied == {"web"}
    (d,) = denials
    assert d.rule == "gpus" and d.line > 0
    assert d.message("state.yaml", policy.DEFAULT).startswith(
        f"state.yaml:{d.line}: services.web.deploy.resources.reservations.devices: device "
        "request (driver nvidia, count 1, capabilities gpu): denied by"
    )
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nallow:\n  - rule: gpus\n    services: [web]\n")
    assert policy.enforce(state, policy_file.load(path))[1] == ()


# --------------------------------------------------------------------------- Swarm


def test_a_swarm_file_with_an_attachable_overlay_validates(tmp_path: Path) -> None:
    doc = {
        "version": 1,
        "project": "demo",
        "networks": {
            "mesh": {"driver": "overlay", "attachable": True},
            "six": {"enable_ipv6": True, "attachable": False},
        },
        "services": {
            "web": {
                "image": "busybox:1",
                "networks": ["mesh", "six"],
                "volumes": ["/srv:/s:rslave"],
            }
        },
    }
    desired = swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})
    nets = {n.name: n for n in desired.networks}
    assert nets["demo_mesh"].attachable and not nets["demo_mesh"].enable_ipv6
    assert not nets["demo_six"].attachable and nets["demo_six"].enable_ipv6
    (m,) = desired.service("web").spec["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert m["BindOptions"] == {"Propagation": "rslave"}


def test_swarm_refuses_what_it_cannot_do_with_a_reason(tmp_path: Path) -> None:
    doc = two(links=["db"], mem_limit="1g", memswap_limit="2g", **GPU)
    doc["services"]["web"]["networks"] = {"front": {"ipv4_address": "172.29.7.9"}}
    doc = {"version": 1, "project": "demo", **doc}
    with pytest.raises(DesiredStateError) as info:
        swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})
    text = str(info.value)
    for part in (
        "links: not supported with --target swarm: Swarm services reach each other",
        "memswap_limit: not supported with --target swarm: a Swarm service has no swap",
        "mem_limit: not supported with --target swarm (yet)",
        "ipv4_address: not supported with --target swarm: Swarm gives each task",
        "devices: not supported with --target swarm: Swarm services reserve generic",
    ):
        assert part in text


# --------------------------------------------------------------------------- import


def test_compose_files_with_these_keys_import_strictly(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        """\
services:
  web:
    build:
      context: .
      args: [VERSION=1]
      target: prod
      shm_size: 256m
      labels: {a: b}
      cache_from: [web:cache]
    profiles: [app]
    links: ["db:database"]
    mem_limit: 1g
    memswap_limit: 2g
    networks:
      front: {ipv4_address: 172.29.7.10}
    volumes:
      - {type: bind, source: ./data, target: /data, bind: {propagation: rslave}}
    deploy:
      resources:
        reservations:
          devices: [{driver: nvidia, count: all, capabilities: [gpu]}]
  db:
    image: postgres
    networks: [front]
networks:
  front:
    attachable: true
    enable_ipv6: true
    ipam: {config: [{subnet: 172.29.7.0/24}, {subnet: "fd00:7::/64"}]}
"""
    )
    out = tmp_path / "state.yaml"
    done = run_cli("import", str(compose), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "dropped" not in done.stderr and "error" not in done.stderr
    written = yaml.safe_load(out.read_text())["services"]["web"]
    assert written["links"] == ["db:database"] and written["profiles"] == ["app"]
    assert written["build"]["args"] == ["VERSION=1"]
    typo = run_cli("import", str(compose), "-o", str(out), "--profile", "ap")
    assert typo.returncode == 0 and "profile ap is selected but no service has it" in typo.stderr


def test_validate_takes_profiles_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "project": "p", **profiled()}))
    plain = run_cli("validate", str(path))
    assert plain.returncode == 0, plain.stderr
    assert "(project p: web x1; not selected: debug, seed)" in plain.stdout
    both = run_cli("validate", str(path), "--profile", "debug", "--profile", "tools")
    assert both.returncode == 0 and "debug x1" in both.stdout and "seed x1" in both.stdout
    broken = run_cli("validate", str(path), "--profile", "tools")
    assert broken.returncode == 2 and "--profile debug" in broken.stderr
