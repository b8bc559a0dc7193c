"""Compose's keys of issue #22 on the real engine: one project that uses them all, applied
and read back from `docker inspect` (containers, network, built image); profiles leaving a
dormant service alone; a changed build arg rebuilding; a GPU request's clear error."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from reconciler.config import loader, profiles
from reconciler.core.actions import CreateContainer, StartContainer
from reconciler.core.desired import LABEL_BUILD_HASH, LABEL_SPEC_HASH
from reconciler.engine.host.engine import Engine
from reconciler.errors import ActionFailed
from reconciler.runtime.settle import apply
from reconciler.targets.base import Settings
from reconciler.targets.host.adapter import HostTarget
from tests.conftest import OWNER_LABEL, TEST_LABEL

pytestmark = pytest.mark.docker

DOCKERFILE = """\
FROM {base} AS base
ARG GREETING=unset
ENV GREETING=$GREETING
RUN df -k /dev/shm | tail -1 | awk '{{print $2}}' > /shm-kb
FROM base AS prod
LABEL stage=prod
FROM base AS other
LABEL stage=other
"""


def free_subnet(api: docker.APIClient) -> ipaddress.IPv4Network:
    """A /24 no network on this engine uses (tests of others run beside this one)."""
    taken = [  # the list carries each network's IPAM: no inspect of one removed meanwhile
        ipaddress.ip_network(c["Subnet"], strict=False)
        for n in api.networks()
        for c in ((n.get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet")
    ]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return net
    pytest.fail("no free /24 under 10.100.0.0/16..10.250.0.0/16")


def applied(path: Path, api: docker.APIClient) -> list[tuple[str, str]]:
    """`reconciler apply` in process; (verb, name) of what it did: (build, IMAGE)..."""
    target = HostTarget(api, loader.load(path), Settings())
    result = apply(target, timeout_s=240)
    assert result.ok, [(r.key, r.error) for r in result.results if r.error]
    return [(r.action.verb, r.action.name) for r in result.results]


def exec_out(api: docker.APIClient, container: str, *argv: str) -> tuple[int, str]:
    exec_id = api.exec_create(container, list(argv))
    out = api.exec_start(exec_id).decode()
    return int(api.exec_inspect(exec_id)["ExitCode"]), out.strip()


def test_every_key_is_read_back_from_the_engine(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[[dict[str, Any]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subnet = free_subnet(api)
    address = str(subnet.network_address + 10)
    v6 = f"fd{random.randint(0, 255):02x}:{random.randint(0, 0xFFFF):x}::/64"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Dockerfile").write_text(DOCKERFILE.format(base=busybox_image))
    (tmp_path / "shared").mkdir()
    sleep = {"image": busybox_image, "init": True, "command": ["sleep", "600"]}
    doc: dict[str, Any] = {
        "networks": {
            "front": {
                "name": f"{project}-front",  # the engine is shared: a name of this test's
                "attachable": True,
                "enable_ipv6": True,
                "ipam": {"config": [{"subnet": str(subnet)}, {"subnet": v6}]},
            }
        },
        "services": {
            "db": {**sleep, "networks": ["front"]},
            "extra": {**sleep, "profiles": ["debug"], "networks": ["front"]},
            "web": {
                "build": {
                    "context": "./src",
                    "args": {"GREETING": "hello"},
                    "target": "prod",
                    "shm_size": "32m",
                    "labels": {TEST_LABEL: "1", "tier": "web"},
                    "cache_from": [busybox_image],
                },
                "init": True,
                "command": ["sleep", "600"],
                "mem_limit": "64m",
                "memswap_limit": "128m",
                "links": ["db:database"],
                "networks": {"front": {"ipv4_address": address}},
                "volumes": [
                    {
                        "type": "bind",
                        "source": "./shared",
                        "target": "/shared",
                        "bind": {"propagation": "private"},
                    }
                ],
            },
        },
    }
    image = f"{project}-web"
    images: list[str] = []
    try:
        monkeypatch.setenv(profiles.ENV, "debug")  # `--profile debug`: extra runs too
        path = write_state(doc)
        assert ("build", image) in applied(path, api)

        info = api.inspect_container(f"{project}-web-1")
        host, config = info["HostConfig"], info["Config"]
        assert (host["Memory"], host["MemorySwap"]) == (64 * 2**20, 128 * 2**20)
        endpoint = info["NetworkSettings"]["Networks"][f"{project}-front"]
        assert endpoint["IPAMConfig"]["IPv4Address"] == address
        assert endpoint["IPAddress"] == address
        assert endpoint["Links"] == [f"{project}-db-1:database"]
        (bind,) = info["Mounts"]
        assert (bind["Destination"], bind["Propagation"]) == ("/shared", "private")
        assert "GREETING=hello" in config["Env"]  # build.args
        assert exec_out(api, f"{project}-web-1", "cat", "/shm-kb") == (0, str(32 * 1024))
        assert exec_out(api, f"{project}-web-1", "ping", "-c1", "-W5", "database")[0] == 0
        built = api.inspect_image(image)
        images.append(built["Id"])
        labels = built["Config"]["Labels"]
        assert (labels["stage"], labels["tier"]) == ("prod", "web")  # build.target, labels
        assert labels[LABEL_BUILD_HASH] == loader.load(path).service("web").build.digest  # type: ignore[union-attr]
        net = api.inspect_network(f"{project}-front")
        assert (net["Attachable"], net["EnableIPv6"]) == (True, True)
        assert f"{project}-extra-1" in names(api, project)

        # Without the profile, extra is not part of the project: left as it is. A new
        # build arg rebuilds the image and recreates web from it.
        monkeypatch.delenv(profiles.ENV)
        doc["services"]["web"]["build"]["args"] = {"GREETING": "again"}
        path = write_state(doc)
        old = info["Id"], built["Id"]
        done = applied(path, api)
        assert ("build", image) in done
        assert not [name for _, name in done if "extra" in name]
        after = api.inspect_container(f"{project}-web-1")
        images.append(api.inspect_image(image)["Id"])
        assert "GREETING=again" in after["Config"]["Env"]
        assert after["Id"] != old[0] and images[-1] != old[1]
        hashes = (c["Config"]["Labels"][LABEL_SPEC_HASH] for c in (info, after))
        assert len(set(hashes)) == 2
        extra = api.inspect_container(f"{project}-extra-1")
        assert extra["State"]["Running"]
        assert applied(path, api) == []  # in sync: extra is no orphan
    finally:
        for c in api.containers(all=True, filters={"label": f"{OWNER_LABEL}={project}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(c["Id"], force=True)
        for ref in [image, *images]:  # the tag, and the image a rebuild left untagged
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(ref, force=True)


def names(api: docker.APIClient, project: str) -> list[str]:
    found = api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    return sorted(c["Names"][0].lstrip("/") for c in found)


def test_an_allowed_gpu_request_fails_with_a_clear_error_on_a_host_without_gpus(
    api: docker.APIClient, busybox_image: str, project: str, tmp_path: Path
) -> None:
    """The request reaches the engine (DeviceRequests); with no GPU driver the start fails
    naming the key and what to install."""
    path = tmp_path / "state.yaml"
    path.write_text(
        f"""\
version: 1
project: {project}
services:
  gpu:
    image: {busybox_image}
    command: ["true"]
    network_mode: none
    labels: {{{TEST_LABEL}: "1", {OWNER_LABEL}: {project}}}
    deploy:
      resources:
        reservations:
          devices: [{{capabilities: [gpu], count: all}}]
"""
    )
    spec = loader.load(path).service("gpu").replicas[0]
    engine = Engine(api)
    engine.execute(CreateContainer(spec))
    info = api.inspect_container(spec.name)
    (request,) = info["HostConfig"]["DeviceRequests"]
    assert (request["Count"], request["Capabilities"]) == (-1, [["gpu"]])
    with pytest.raises(ActionFailed) as failed:
        engine.execute(StartContainer(info["Id"], spec.name, "gpu", "test"))
    text = str(failed.value)
    assert "could not select device driver" in text
    assert "deploy.resources.reservations.devices asks for devices this host has no" in text
