"""The Swarm target's pure parts: the file rendered into ServiceSpecs, Swarm's own rules
with their lines, and the planner (create, update only on drift, remove, hold)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import swarm_plan as sp
from reconciler.engine.swarm import spec as swarm_file
from reconciler.errors import DesiredStateError
from tests.swarm_simulator import simulate


def load(doc: dict[str, Any], tmp_path: Path) -> sp.SwarmDesired:
    doc = {"version": 1, "project": "demo", **doc}
    return swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})


def spec(desired: sp.SwarmDesired, name: str) -> dict[str, Any]:
    return desired.service(name).spec


# --------------------------------------------------------------------------- rendering


def test_keys_swarm_cannot_honour_are_refused_all_at_once_with_their_lines(
    tmp_path: Path,
) -> None:
    """container_name, network_mode, a bridge network, a host IP, a port range,
    reload_signal, replicas with global, host-gateway: one error each, with its line."""
    text = """\
project: demo
networks:
  front: {driver: bridge}
services:
  web:
    image: busybox:1
    container_name: foo
    network_mode: host
    ports: ["127.0.0.1:80:80", "9100-9101:9100"]
    configs:
      - {source: d.yaml, target: /x, reload_signal: SIGHUP}
  g:
    image: x
    deploy: {mode: global}
    replicas: 2
    extra_hosts: ["a:host-gateway"]
"""
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(DesiredStateError) as err:
        swarm_file.parse(text, source="d.yaml", base_dir=tmp_path, environ={})
    lines = err.value.problems
    assert [line.split(":")[1] for line in lines] == ["3", "7", "8", "9", "9", "11", "15", "16"]
    assert "container_name: not supported with --target swarm" in lines[1]
    assert "host-gateway" in lines[-1]


def test_a_fixed_port_with_replicas_is_fine_on_swarm(tmp_path: Path) -> None:
    """The routing mesh shares a published port between replicas (the single host cannot)."""
    d = load({"services": {"web": {"image": "w", "replicas": 3, "ports": ["8000:80"]}}}, tmp_path)
    assert spec(d, "web")["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8000, "PublishMode": "ingress"}
    ]


def test_a_service_renders_as_docker_stack_deploy_would(tmp_path: Path) -> None:
    """Names <project>_<x>, entrypoint/command as Command/Args, global mode, placement,
    resources, restart policy, host-mode port, a {replica} volume per task slot."""
    d = load(
        {
            "networks": {"mon": {"driver": "overlay"}},
            "volumes": {"data_{replica}": {}},
            "services": {
                "agent": {
                    "image": "exporter:1",
                    "entrypoint": ["/bin/exporter"],
                    "command": "--path.rootfs=/rootfs",
                    "networks": {"mon": {"aliases": ["exp"]}},
                    "ports": [{"target": 9100, "published": 9100, "mode": "host"}],
                    "volumes": ["data_{replica}:/data", "/:/rootfs:ro"],
                    "restart": "on-failure:3",
                    "deploy": {
                        "mode": "global",
                        "placement": {
                            "constraints": ["node.role == manager"],
                            "preferences": [{"spread": "node.labels.zone"}],
                        },
                        "resources": {"limits": {"cpus": "0.5", "memory": "64M"}},
                        "labels": {"team": "ops"},
                    },
                }
            },
        },
        tmp_path,
    )
    s = spec(d, "agent")
    c = s["TaskTemplate"]["ContainerSpec"]
    assert s["Name"] == "demo_agent" and s["Mode"] == {"Global": {}}
    assert c["Command"] == ["/bin/exporter"] and c["Args"] == ["--path.rootfs=/rootfs"]
    assert s["Labels"]["team"] == "ops" and s["Labels"][sp.STACK_NAMESPACE] == "demo"
    assert "team" not in c["Labels"]
    assert s["TaskTemplate"]["Networks"] == [{"Target": "demo_mon", "Aliases": ["agent", "exp"]}]
    assert s["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    assert c["Mounts"][0]["Source"] == "demo_data_{{.Task.Slot}}"
    assert c["Mounts"][1] == {"Type": "bind", "Target": "/rootfs", "ReadOnly": True, "Source": "/"}
    assert s["TaskTemplate"]["Placement"] == {
        "Constraints": ["node.role == manager"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
    }
    assert s["TaskTemplate"]["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024**2}
    }
    assert s["TaskTemplate"]["RestartPolicy"] == {
        "Condition": "on-failure",
        "Delay": 5_000_000_000,
        "MaxAttempts": 3,
    }
    assert [n.name for n in d.networks] == ["demo_mon"]
    assert d.service("agent").global_mode


def test_config_names_follow_the_content(tmp_path: Path) -> None:
    """A folder's files become one Swarm config each, named by their content: new content,
    new name (and a new spec hash); the same content, the same name and hash."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "haproxy.cfg").write_text("a\n")
    doc = {"services": {"lb": {"image": "h", "configs": [{"source": "cfg", "target": "/etc/h"}]}}}
    one, same = load(doc, tmp_path), load(doc, tmp_path)
    assert one == same
    (name,) = one.service("lb").configs
    assert name.startswith("demo_haproxy.cfg-")
    ref = spec(one, "lb")["TaskTemplate"]["ContainerSpec"]["Configs"][0]
    assert ref["File"]["Name"] == "/etc/h/haproxy.cfg" and ref["ConfigName"] == name
    (folder / "haproxy.cfg").write_text("b\n")
    two = load(doc, tmp_path)
    assert two.service("lb").configs != (name,)
    assert two.service("lb").spec_hash != one.service("lb").spec_hash


def test_the_seed_stack_variant_for_swarm_is_valid() -> None:
    """desired_state.swarm.yaml (shipped) loads for Swarm: node-exporter global, HAProxy and
    Prometheus with the tasks.* variants of their configs."""
    root = Path(__file__).resolve().parent.parent
    d = swarm_file.load(root / "desired_state.swarm.yaml")
    assert d.service("node-exporter").global_mode
    assert d.service("grafana").replicas == 2
    texts = {c.name: c.data.decode() for c in d.configs}
    assert any("tasks.grafana" in t for t in texts.values())
    assert any("tasks.node-exporter" in t for t in texts.values())


# --------------------------------------------------------------------------- planning


def observed_of(desired: sp.SwarmDesired, **changes: Any) -> sp.SwarmObserved:
    """What the engine shows once `desired` was applied."""
    return simulate(sp.SwarmObserved(), sp.plan(desired, sp.SwarmObserved()), desired.project)


def two(tmp_path: Path) -> sp.SwarmDesired:
    return load(
        {
            "services": {
                "web": {"image": "w:1", "replicas": 2},
                "db": {"image": "d:1"},
            }
        },
        tmp_path,
    )


def test_an_empty_swarm_gets_network_then_services(tmp_path: Path) -> None:
    """Networks and configs come before the services that use them."""
    d = two(tmp_path)
    kinds = [(a.verb, a.kind) for a in sp.plan(d, sp.SwarmObserved()).actions]
    assert kinds == [("create", "network"), ("create", "service"), ("create", "service")]


def with_spec(obs: sp.ObservedService, **edit: Any) -> sp.ObservedService:
    from dataclasses import replace

    body = obs.spec
    for path, value in edit.items():
        node = body
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return replace(obs, spec_json=json.dumps(body), labels=tuple(sorted(body["Labels"].items())))


def test_equal_specs_are_left_alone_and_swarm_defaults_do_not_count(tmp_path: Path) -> None:
    """No update when the spec is equal, including fields Swarm adds or leaves out (zeros)."""
    d = two(tmp_path)
    o = observed_of(d)
    web = next(s for s in o.services if s.name == "demo_web")
    padded = with_spec(web, TaskTemplate__Runtime="container", TaskTemplate__ForceUpdate=0)
    body = padded.spec
    del body["UpdateConfig"]["Delay"]  # omitempty: a zero is not shown
    padded = with_spec(padded, UpdateConfig=body["UpdateConfig"])
    o = sp.SwarmObserved((padded, *(s for s in o.services if s is not web)), o.networks)
    assert sp.plan(d, o) == sp.SwarmPlan()


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ({"Mode": {"Replicated": {"Replicas": 5}}}, "drift: scaled to 5 by hand"),
        (
            {"TaskTemplate__ContainerSpec__Image": "w:2@sha256:ab"},
            "drift: image changed to w:2@sha256:ab by hand",
        ),
        ({"TaskTemplate__ContainerSpec__Env": ["X=1"]}, "drift: changed by hand: environment.X"),
        (
            {
                "Labels": {
                    "io.reconciler.managed": "true",
                    "io.reconciler.project": "demo",
                    "io.reconciler.service": "web",
                    "io.reconciler.spec-hash": "old",
                }
            },
            "spec changed",
        ),
    ],
)
def test_drift_is_updated_with_its_reason(
    tmp_path: Path, edit: dict[str, Any], reason: str
) -> None:
    """A hand scale, a hand image, any other hand edit, and a file change: one update each."""
    d = two(tmp_path)
    o = observed_of(d)
    web = next(s for s in o.services if s.name == "demo_web")
    o = sp.SwarmObserved(
        (with_spec(web, **edit), *(s for s in o.services if s is not web)), o.networks
    )
    actions = sp.plan(d, o).actions
    assert [(a.verb, a.name, a.reason) for a in actions] == [("update", "demo_web", reason)]
    assert actions[0].cause.text == reason


def test_not_ours_is_never_touched_and_ours_that_left_is_removed(tmp_path: Path) -> None:
    """A same-named service without our labels is a note and a create that fails (ours does
    not run: plan is not in sync, as the host's taken container name); our service gone from
    the file is removed; another project's service is not seen as ours."""
    d = two(tmp_path)
    o = observed_of(d)
    web = next(s for s in o.services if s.name == "demo_web")
    foreign = with_spec(web, Labels={"owner": "someone"})
    extra = with_spec(web, Name="demo_old")
    from dataclasses import replace

    extra = replace(
        extra,
        name="demo_old",
        labels=tuple({**dict(web.labels), "io.reconciler.service": "old"}.items()),
    )
    other = replace(
        web,
        name="demo_x",
        labels=(("io.reconciler.managed", "true"), ("io.reconciler.project", "other")),
    )
    o = sp.SwarmObserved(
        (foreign, extra, other, *(s for s in o.services if s is not web)), o.networks
    )
    p = sp.plan(d, o)
    assert [(a.verb, a.name) for a in p.actions] == [("create", "demo_web"), ("remove", "demo_old")]
    create = p.actions[0]
    assert isinstance(create, sp.CreateService) and create.taken_by == foreign.id
    assert "the name is taken by service" in create.describe()
    assert any("without our labels" in n for n in p.notes)
    assert sp.taken_names(d, o) == {"web": foreign.id}
    assert simulate(o, p, d.project).services[0] == foreign  # never touched


def test_a_rolled_back_revision_is_held_and_released_by_a_file_change(tmp_path: Path) -> None:
    """Swarm rolled back the spec we pushed: held (no update) while the file asks for it;
    a file that changes the service lets the new spec through."""
    d = two(tmp_path)
    o = observed_of(d)
    web = next(s for s in o.services if s.name == "demo_web")
    old = with_spec(web, Labels={**dict(web.labels), "io.reconciler.spec-hash": "previous"})
    from dataclasses import replace

    old = replace(old, update_state="rollback_completed", update_message="update rolled back")
    o = sp.SwarmObserved((old, *(s for s in o.services if s is not web)), o.networks)
    pushed = {"web": d.service("web").spec_hash}
    held = sp.failed_revisions(d, o, pushed, {})
    assert held == pushed
    p = sp.plan(d, o, held)
    assert not p.actions and any("held" in n for n in p.notes)
    changed = load(
        {"services": {"web": {"image": "w:2", "replicas": 2}, "db": {"image": "d:1"}}}, tmp_path
    )
    assert sp.failed_revisions(changed, o, pushed, held) == {}
    assert [a.verb for a in sp.plan(changed, o, {}).actions] == ["update"]
    manual = replace(old, update_message=sp.MANUAL_ROLLBACK)
    o2 = sp.SwarmObserved((manual,), o.networks)
    assert sp.failed_revisions(d, o2, pushed, {}) == {}


@settings(max_examples=60, deadline=None)
@given(
    replicas=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    present=st.lists(st.booleans(), min_size=4, max_size=4),
    scaled=st.lists(st.integers(0, 6), min_size=4, max_size=4),
    nets=st.booleans(),
)
def test_plans_converge_and_only_touch_ours(
    replicas: list[int], present: list[bool], scaled: list[int], nets: bool
) -> None:
    """From any mix of missing and hand-scaled services, one plan converges
    (plan(d, simulate(o, plan(d, o))) is empty), and no action names a service without
    our labels."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = load(
            {"services": {f"s{i}": {"image": "i", "replicas": n} for i, n in enumerate(replicas)}},
            Path(tmp),
        )
    full = observed_of(d)
    services = []
    for i, s in enumerate(full.services):
        if not present[i % 4]:
            continue
        services.append(with_spec(s, Mode={"Replicated": {"Replicas": scaled[i % 4]}}))
    from dataclasses import replace

    foreign = replace(full.services[0], name="demo_zz", labels=())
    o = sp.SwarmObserved((*services, foreign), full.networks if nets else ())
    p = sp.plan(d, o)
    assert all(a.name != "demo_zz" for a in p.actions)
    after = simulate(o, p, d.project)
    assert sp.plan(d, after).actions == ()


def test_covers_ignores_added_keys_and_missing_zeros() -> None:
    """The comparison Swarm's echo needs: extra keys ignored, zeros may be absent, lists
    compared item by item."""
    assert sp.covers({"a": 1, "b": 2}, {"a": 1})
    assert sp.covers({}, {"a": 0, "b": {"c": False}})
    assert not sp.covers({"a": [1, 2]}, {"a": [1]})
    assert not sp.covers({}, {"a": 1})


def test_an_engine_outside_a_swarm_or_a_worker_is_a_clear_error() -> None:
    """`docker info` of an engine not in a swarm, of a worker, of a manager."""
    from reconciler.engine.swarm.engine import swarm_problem

    outside = swarm_problem({"Swarm": {"LocalNodeState": "inactive"}})
    assert outside and "not in a swarm" in outside and "docker swarm init" in outside
    worker = swarm_problem({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}})
    assert worker and "worker" in worker
    assert swarm_problem({"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}) is None


def test_validate_target_swarm_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    """RECONCILER_TARGET=swarm makes `validate` apply Swarm's rules (exit 2, the line)."""
    from reconciler.cli import main

    path = tmp_path / "d.yaml"
    path.write_text("project: demo\nservices:\n  web:\n    image: x\n    container_name: yy\n")
    assert main(["validate", str(path)]) == 0
    monkeypatch.setenv("RECONCILER_TARGET", "swarm")
    assert main(["validate", str(path)]) == 2
    path.write_text("project: demo\nservices:\n  web:\n    image: x\n")
    assert main(["validate", str(path)]) == 0
    assert main(["validate", "--target", "host", str(path)]) == 0


def test_secrets_are_named_by_the_files_stamp_never_their_content(tmp_path: Path) -> None:
    """A secret mounts at /run/secrets/<target>; its Swarm name changes when the file is
    rewritten and carries nothing of the content; its value appears in no repr."""
    import os

    secret = tmp_path / "db_password.txt"
    secret.write_text("hunter2-very-secret\n")
    doc = {
        "secrets": {"db_password": {"file": "db_password.txt"}},
        "services": {
            "app": {
                "image": "a",
                "secrets": [
                    "db_password",
                    {"source": "db_password", "target": "pw"},
                ],
            }
        },
    }
    one = load(doc, tmp_path)
    (sec,) = one.secrets
    assert sec.name.startswith("demo_db_password-")
    import hashlib

    assert hashlib.sha256(secret.read_bytes()).hexdigest()[:12] not in sec.name
    refs = spec(one, "app")["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert [(r["File"]["Name"], r["File"]["Mode"], r["SecretName"]) for r in refs] == [
        ("db_password", 0o444, sec.name),
        ("pw", 0o444, sec.name),
    ]
    assert "hunter2" not in repr(one) and "hunter2" not in one.service("app").spec_json
    assert load(doc, tmp_path) == one  # untouched: the same name and spec
    secret.write_text("hunter3-very-secret\n")
    st = secret.stat()
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    two = load(doc, tmp_path)
    assert two.secrets[0].name != sec.name
    assert two.service("app").spec_hash != one.service("app").spec_hash
    assert str(secret) in two.watched and two.digest != one.digest


def test_secrets_undeclared_are_errors(tmp_path: Path) -> None:
    """A service's secret must be declared under secrets."""
    text = "project: demo\nservices:\n  app:\n    image: a\n    secrets: [nope]\n"
    with pytest.raises(DesiredStateError) as err:
        swarm_file.parse(text, source="d.yaml", base_dir=tmp_path, environ={})
    assert "secret 'nope' is not declared under secrets" in str(err.value)


def test_keys_swarm_does_not_render_are_refused_not_dropped(tmp_path: Path) -> None:
    """privileged, devices, tmpfs, ulimits...: an error each for --target swarm (never
    silently left out of the service)."""
    text = (
        "project: demo\nservices:\n  app:\n    image: a\n    privileged: true\n"
        "    ulimits: {nofile: {soft: 1, hard: 2}}\n"
    )
    with pytest.raises(DesiredStateError) as err:
        swarm_file.parse(text, source="d.yaml", base_dir=tmp_path, environ={})
    problems = err.value.problems
    assert any("services.app.privileged: not supported with --target swarm" in p for p in problems)
    assert any("services.app.ulimits: not supported with --target swarm" in p for p in problems)


@pytest.mark.parametrize(
    ("kind", "action", "name", "key"),
    [
        ("service", "update", "demo_web", "service:web"),
        ("service", "remove", "other_web", None),
        ("node", "update", "", "resync"),
        ("config", "remove", "demo_a.txt-0123", "resync"),
        ("network", "destroy", "demo_default", "resync"),
        ("network", "connect", "demo_default", None),  # a container joining: not news
        ("network", "destroy", "someone_else", None),
    ],
)
def test_which_events_wake_which_key(kind: str, action: str, name: str, key: str | None) -> None:
    """Our services' events wake their key; nodes, our configs and a removed network of ours
    wake the project; other projects' objects and container attachments wake nothing."""
    from reconciler.targets.swarm.events import event_key

    event = {"Type": kind, "Action": action, "Actor": {"Attributes": {"name": name}}}
    assert event_key(event, "demo_") == key


def test_the_host_policy_judges_swarm_services_too() -> None:
    """A bind of / is the host's on every node: without a policy allowing it, the seed's
    node-exporter is denied (never created nor touched, never removed); the shipped policy
    allows it."""
    from dataclasses import replace

    from reconciler.config import policy_file
    from reconciler.core.policy import DEFAULT

    root = Path(__file__).resolve().parent.parent
    desired = swarm_file.load(root / "desired_state.swarm.yaml")
    judged, denials = swarm_file.judged(desired, DEFAULT)
    assert judged.denied == {"node-exporter"} and denials
    p = sp.plan(judged, sp.SwarmObserved())
    assert "monitoring_node-exporter" not in {a.name for a in p.actions}
    assert any("denied by the host policy" in n for n in p.notes)
    live = observed_of(desired)
    assert not [a for a in sp.plan(judged, live).actions if a.kind == "service"]
    allowed, none = swarm_file.judged(desired, policy_file.load(root / "configs" / "policy.yaml"))
    assert not allowed.denied and not none
    assert replace(allowed, denied=frozenset()) == allowed


def test_swarm_actions_satisfy_the_action_protocol() -> None:
    """One describe() for both targets; a Swarm action has a key, as a host action has."""
    from reconciler.core.actions import describe

    gone = sp.RemoveSwarmConfig("c1", "p_cfg_1")
    line = "remove config p_cfg_1 (replaced (no service uses it))"
    assert describe(gone) == sp.describe(gone) == line
    assert gone.key == "remove-config:p_cfg_1"
    net = sp.CreateSwarmNetwork(sp.SwarmNetwork("p_front"))
    assert (describe(net), net.key) == ("create network p_front (missing)", "network:p_front")
