"""The field diff of `plan` (core.spec_diff, core.spec_fields): one table row per spec field
the file supports, on the host and on Swarm; secret values never shown; causes as data."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core import causes
from reconciler.core import swarm_plan as sp
from reconciler.core.desired import (
    ContainerSpec,
    DeviceRequest,
    Healthcheck,
    NetworkAttachment,
    PortBinding,
    RuntimeOptions,
    SecretMount,
)
from reconciler.core.plan_explain import swarm_changes
from reconciler.core.spec_diff import FieldChange, decode, diff, encode, secret_name
from reconciler.core.spec_fields import HOST_NOT_SHOWN, host_view
from reconciler.engine.swarm import spec as swarm_file
from tests.swarm_simulator import simulate

BASE = ContainerSpec(
    name="p-web-1",
    project="p",
    service="web",
    replica=1,
    image="app:1",
    environment=("A=1", "DB_PASSWORD=old"),
    networks=(NetworkAttachment("net", ("web",)),),
    healthcheck=Healthcheck(("CMD", "true"), 5.0, 3.0, 3, 0.0),
    labels=(("team", "a"),),
)

# ContainerSpec field -> (a changed value, what `plan` prints of the change)
HOST: dict[str, tuple[Any, list[str]]] = {
    "image": ("app:2", ["image app:1 -> app:2"]),
    "device_requests": (
        (DeviceRequest(capabilities=("gpu",)),),
        [
            "deploy.resources.reservations.devices (unset) -> "
            '["driver (any), count all, capabilities gpu"]'
        ],
    ),
    "build_digest": ("0123456789abcdef", ["build (unset) -> sha256:0123456789ab"]),
    "command": (("sleep", "1"), ['command (unset) -> ["sleep", "1"]']),
    "entrypoint": (("/bin/sh", "-c"), ['entrypoint (unset) -> ["/bin/sh", "-c"]']),
    "environment": (
        ("A=2", "DB_PASSWORD=new", "B=x"),
        [
            'environment.A "1" -> "2"',
            'environment.B (unset) -> "x"',
            "environment.DB_PASSWORD (changed, value hidden)",
        ],
    ),
    "ports": (
        (PortBinding(80, "tcp", "127.0.0.1", 8080),),
        ['ports (unset) -> ["127.0.0.1:8080:80/tcp"]'],
    ),
    "binds": (("data:/data:rw",), ['volumes (unset) -> ["data:/data:rw"]']),
    "networks": (
        (NetworkAttachment("net", ("web", "www")),),
        ['networks.net {"aliases": ["web"]} -> {"aliases": ["web", "www"]}'],
    ),
    "user": ("1000", ["user (unset) -> 1000"]),
    "restart": ("always", ["restart no -> always"]),
    "healthcheck": (
        Healthcheck(("CMD", "true"), 10.0, 3.0, 3, 0.0),
        ["healthcheck.interval 5 -> 10"],
    ),
    "labels": ((("team", "b"),), ['labels.team "a" -> "b"']),
    "working_dir": ("/srv", ["working_dir (unset) -> /srv"]),
    "hostname": ("h", ["hostname (unset) -> h"]),
    "extra_hosts": (("db:10.0.0.1",), ['extra_hosts (unset) -> ["db:10.0.0.1"]']),
    "cap_add": (("NET_ADMIN",), ['cap_add (unset) -> ["NET_ADMIN"]']),
    "cap_drop": (("ALL",), ['cap_drop (unset) -> ["ALL"]']),
    "read_only": (True, ["read_only (unset) -> true"]),
    "stop_signal": ("SIGINT", ["stop_signal (unset) -> SIGINT"]),
    "stop_grace_s": (30.0, ["stop_grace_period (unset) -> 30"]),
    "init": (True, ["init (unset) -> true"]),
    "network_mode": ("host", ["network_mode (unset) -> host"]),
    "pid": ("host", ["pid (unset) -> host"]),
    "privileged": (True, ["privileged (unset) -> true"]),
    "devices": (("/dev/fuse",), ['devices (unset) -> ["/dev/fuse"]']),
    "ipc": ("host", ["ipc (unset) -> host"]),
    "uts": ("host", ["uts (unset) -> host"]),
    "userns_mode": ("host", ["userns_mode (unset) -> host"]),
    "security_opt": (("no-new-privileges",), ['security_opt (unset) -> ["no-new-privileges"]']),
    "secrets": (
        (SecretMount("db", "/s/db", "/run/secrets/db", "ab" * 32),),
        ["secrets.db (added, value hidden)"],
    ),
    "config_digests": (
        (("/etc/app.conf", "cd" * 32),),
        ["configs./etc/app.conf (unset) -> sha256:cdcdcdcdcdcd"],
    ),
}
# RuntimeOptions field (compose's resource, logging, terminal keys) -> the same
OPTIONS: dict[str, tuple[Any, list[str]]] = {
    "expose": (("80/tcp",), ['expose (unset) -> ["80/tcp"]']),
    "cpus": (0.5, ["cpus (unset) -> 0.5"]),
    "memswap_limit": (1 << 21, ["memswap_limit (unset) -> 2097152"]),
    "mem_limit": (1 << 20, ["mem_limit (unset) -> 1048576"]),
    "mem_reservation": (1 << 19, ["mem_reservation (unset) -> 524288"]),
    "pids_limit": (100, ["pids_limit (unset) -> 100"]),
    "shm_size": (1 << 26, ["shm_size (unset) -> 67108864"]),
    "log_driver": ("json-file", ["logging.driver (unset) -> json-file"]),
    "log_options": ((("max-size", "10m"),), ['logging.options.max-size (unset) -> "10m"']),
    "tmpfs": ((("/tmp", "size=1m"),), ['tmpfs (unset) -> ["/tmp:size=1m"]']),
    "ulimits": ((("nofile", 1024, 2048),), ["ulimits.nofile (unset) -> [1024, 2048]"]),
    "sysctls": (
        (("net.core.somaxconn", "1024"),),
        ['sysctls.net.core.somaxconn (unset) -> "1024"'],
    ),
    "stdin_open": (True, ["stdin_open (unset) -> true"]),
    "tty": (True, ["tty (unset) -> true"]),
    "dns": (("1.1.1.1",), ['dns (unset) -> ["1.1.1.1"]']),
    "dns_search": (("lan",), ['dns_search (unset) -> ["lan"]']),
    "group_add": (("audio",), ['group_add (unset) -> ["audio"]']),
    "health_start_interval_s": (1.0, ["healthcheck.start_interval (unset) -> 1"]),
}


def test_every_field_of_a_replica_spec_has_a_row() -> None:
    """A field added to ContainerSpec or RuntimeOptions must be shown by the diff (a row
    here) or be listed, with why, in HOST_NOT_SHOWN."""
    shown = {f.name for f in fields(ContainerSpec)} - set(HOST_NOT_SHOWN) - {"options"}
    assert shown == set(HOST)
    assert {f.name for f in fields(RuntimeOptions)} == set(OPTIONS)


@pytest.mark.parametrize(("field", "row"), [*HOST.items(), *OPTIONS.items()])
def test_a_changed_host_field_is_named_with_its_values(
    field: str, row: tuple[Any, list[str]]
) -> None:
    value, expected = row
    if field in OPTIONS:
        new = replace(BASE, spec_hash="", options=RuntimeOptions(**{field: value}))
    else:
        new = replace(BASE, spec_hash="", **{field: value})
    assert new.spec_hash != BASE.spec_hash  # a real change: the container is replaced
    stored = decode(encode(host_view(BASE)))  # what the container's label gives back
    assert stored is not None
    assert [str(c) for c in diff(stored, host_view(new))] == expected
    assert diff(stored, host_view(BASE)) == ()


WEB = {"image": "w:1", "replicas": 2}


def _swarm(tmp_path: Path, web: dict[str, Any]) -> sp.SwarmDesired:
    (tmp_path / "app.conf").write_text("x")
    (tmp_path / "pw.txt").write_text("pw")
    doc = {
        "version": 1,
        "project": "demo",
        "secrets": {"pw": {"file": "./pw.txt"}},
        "volumes": {"data": {}},
        "services": {"web": {k: v for k, v in {**WEB, **web}.items() if v is not None}},
    }
    return swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})


# The file's service keys Swarm supports -> (the edit, the fields the diff names)
SWARM: dict[str, tuple[dict[str, Any], list[str]]] = {
    "image": ({"image": "w:2"}, ["image w:1 -> w:2"]),
    "replicas": ({"replicas": 3}, ["replicas 2 -> 3"]),
    "deploy.mode": ({"replicas": None, "deploy": {"mode": "global"}}, ["deploy.mode", "replicas"]),
    "command": ({"command": ["sleep", "1"]}, ['command (unset) -> ["sleep", "1"]']),
    "entrypoint": ({"entrypoint": ["/bin/sh"]}, ['entrypoint (unset) -> ["/bin/sh"]']),
    "environment": (
        {"environment": {"A": "2", "API_TOKEN": "t"}},
        ['environment.A (unset) -> "2"', "environment.API_TOKEN (added, value hidden)"],
    ),
    "labels": ({"labels": {"team": "b"}}, ['labels.team (unset) -> "b"']),
    "deploy.labels": ({"deploy": {"labels": {"tier": "x"}}}, ['deploy.labels.tier (unset) -> "x"']),
    "user": ({"user": "1000"}, ["user (unset) -> 1000"]),
    "working_dir": ({"working_dir": "/srv"}, ["working_dir (unset) -> /srv"]),
    "hostname": ({"hostname": "h"}, ["hostname (unset) -> h"]),
    "extra_hosts": ({"extra_hosts": ["db:10.0.0.1"]}, ['extra_hosts (unset) -> ["10.0.0.1 db"]']),
    "stop_signal": ({"stop_signal": "SIGINT"}, ["stop_signal (unset) -> SIGINT"]),
    "stop_grace_period": ({"stop_grace_period": "30s"}, ["stop_grace_period"]),
    "init": ({"init": True}, ["init (unset) -> true"]),
    "read_only": ({"read_only": True}, ["read_only (unset) -> true"]),
    "cap_add": ({"cap_add": ["NET_ADMIN"]}, ['cap_add (unset) -> ["NET_ADMIN"]']),
    "cap_drop": ({"cap_drop": ["ALL"]}, ['cap_drop (unset) -> ["ALL"]']),
    "healthcheck": (
        {"healthcheck": {"test": ["CMD", "true"], "interval": "5s"}},
        [
            "healthcheck.interval (unset) -> 5",
            "healthcheck.retries (unset) -> 3",
            'healthcheck.test (unset) -> ["CMD", "true"]',
            "healthcheck.timeout (unset) -> 30",
        ],
    ),
    "ports": ({"ports": ["8080:80"]}, ["ports"]),
    "volumes": ({"volumes": ["data:/data"]}, ["volumes"]),
    "configs": ({"configs": [{"source": "./app.conf", "target": "/etc/app.conf"}]}, ["configs."]),
    "secrets": ({"secrets": ["pw"]}, ["secrets.pw (added, value hidden)"]),
    "deploy.placement": (
        {"deploy": {"placement": {"constraints": ["node.role==manager"]}}},
        ["deploy.placement"],
    ),
    "deploy.resources": ({"deploy": {"resources": {"limits": {"cpus": "0.5"}}}}, ["deploy.res"]),
    "deploy.restart_policy": (
        {"deploy": {"restart_policy": {"condition": "on-failure"}}},
        ["deploy.restart_policy"],
    ),
    "deploy.update_config": ({"deploy": {"update_config": {"parallelism": 2}}}, ["deploy.upd"]),
    "deploy.rollback_config": (
        {"deploy": {"rollback_config": {"parallelism": 2}}},
        ["deploy.rollback_config"],
    ),
}


@pytest.mark.parametrize(("key", "row"), SWARM.items())
def test_a_changed_swarm_field_is_named(
    tmp_path: Path, key: str, row: tuple[dict[str, Any], list[str]]
) -> None:
    """Each row: the service as Swarm holds it after the base file (with Swarm's defaults
    filled in) against the edited file; the diff names that field, and nothing else."""
    edit, expected = row
    base = _swarm(tmp_path, {})
    new = _swarm(tmp_path, edit)
    observed = simulate(sp.SwarmObserved(), sp.plan(base, sp.SwarmObserved()), "demo")
    obs = next(s for s in observed.services if s.name == "demo_web")
    got = [str(c) for c in swarm_changes(new.service("web"), obs)]
    assert len(got) == len(expected), got
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want), got
    assert swarm_changes(base.service("web"), obs) == ()


def test_swarm_defaults_are_no_difference(tmp_path: Path) -> None:
    """Fields Swarm fills in (Runtime, ForceUpdate, an empty Resources) differ from nothing."""
    base = _swarm(tmp_path, {})
    observed = simulate(sp.SwarmObserved(), sp.plan(base, sp.SwarmObserved()), "demo")
    obs = next(s for s in observed.services if s.name == "demo_web")
    body = obs.spec
    body["TaskTemplate"].update(Runtime="container", ForceUpdate=0, Resources={"Limits": {}})
    obs = replace(obs, spec_json=json.dumps(body))
    assert swarm_changes(base.service("web"), obs) == ()


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True),
        ("GF_SECURITY_ADMIN_PASSWORD", True),
        ("apiKey", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("GITHUB_TOKEN", True),
        ("PGPASS", False),  # one word, not split: a value of this name is no secret word
        ("GF_SECURITY_ADMIN_PASSWORD__FILE", False),  # a path to the secret
        ("KEYBOARD_LAYOUT", False),
        ("A", False),
        ("MONKEY", False),
    ],
)
def test_secret_looking_names(name: str, secret: bool) -> None:
    assert secret_name(name) is secret


@given(
    name=st.sampled_from(["PASSWORD", "DB_PASSWORD", "API_TOKEN", "SECRET", "SSH_KEY"]),
    old=st.text(min_size=1, max_size=30),
    new=st.text(min_size=1, max_size=30),
)
def test_a_secret_value_is_never_shown(name: str, old: str, new: str) -> None:
    """Whatever the values, the diff of a secret-looking variable says only that it changed,
    and neither the label nor the change carries the value."""
    before = replace(BASE, environment=(f"{name}={old}",))
    after = replace(BASE, environment=(f"{name}={new}",))
    stored = encode(host_view(before))
    changes = diff(decode(stored) or {}, host_view(after))
    if old == new:
        assert changes == ()
        return
    (change,) = changes
    assert str(change) == f"environment.{name} (changed, value hidden)"
    assert change.shown(change.old) is None and change.shown(change.new) is None
    base = encode(host_view(BASE))
    for value in (old, new):
        text = json.dumps(value)[1:-1]
        if len(value) > 3 and text not in base:  # else it is in the JSON's own words
            assert text not in stored + str(change)


def test_values_of_the_file_secrets_are_hidden_whatever_their_name() -> None:
    """A value interpolated from a secret-looking variable (DesiredState.secrets) is hidden
    under any variable name."""
    hidden = frozenset({"s3cr3t-value"})
    before = host_view(replace(BASE, environment=("URL=x",)), hidden)
    after = host_view(replace(BASE, environment=("URL=s3cr3t-value",)), hidden)
    (change,) = diff(before, after)
    assert str(change) == "environment.URL (changed, value hidden)"


def test_causes() -> None:
    image = FieldChange("image", "web:stable@sha256:" + "a" * 64, "web:stable@sha256:" + "b" * 64)
    assert causes.spec_changed((image,)).text == "image tag moved to sha256:bbbbbbbbbbbb..."
    assert causes.spec_changed((image,)).kind == "image_moved"
    env = FieldChange("environment.A", "1", "2")
    assert causes.spec_changed((env,)).text == "spec changed: environment.A"
    assert causes.spec_changed(()).text == "spec changed"  # a container older than its label
    assert causes.exited(137, oom_killed=True).text == "exited 137 (OOM killed)"
    assert causes.exited(137).text == "exited 137 (SIGKILL)"
    assert causes.exited(1).text == "exited 1"
    assert causes.unhealthy(31.4).text == "unhealthy for 31 s"
    assert causes.drift("scaled to 1 by hand").text == "drift: scaled to 1 by hand"
    many = tuple(FieldChange(f"environment.V{i}", "1", "2") for i in range(6))
    assert causes.spec_changed(many).text.endswith("environment.V3 +2 more")


def test_zeros_swarm_leaves_out_are_no_difference(tmp_path: Path) -> None:
    """Swarm drops zero durations it was sent (Go's omitempty): an edit of the environment
    of a service with a healthcheck names only the environment, never
    `healthcheck.start_period (unset) -> 0` (the review's false change)."""
    check = {"healthcheck": {"test": ["CMD", "true"], "interval": "5s"}}
    base = _swarm(tmp_path, check)
    observed = simulate(sp.SwarmObserved(), sp.plan(base, sp.SwarmObserved()), "demo")
    obs = next(s for s in observed.services if s.name == "demo_web")
    body = obs.spec
    body["TaskTemplate"]["ContainerSpec"]["Healthcheck"].pop("StartPeriod", None)
    obs = replace(obs, spec_json=json.dumps(body))
    assert swarm_changes(base.service("web"), obs) == ()
    edited = _swarm(tmp_path, {**check, "environment": {"A": "2"}})
    assert [str(c) for c in swarm_changes(edited.service("web"), obs)] == [
        'environment.A (unset) -> "2"'
    ]
