"""The desired-state file: validation messages and rendering into replica specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.config import loader as desired
from reconciler.core.desired import DEFAULT_ROLLBACK, DEFAULT_UPDATE, UpdateConfig
from reconciler.errors import DesiredStateError

BASE = {"version": 1, "project": "p", "services": {"web": {"image": "busybox:1"}}}


def parse(doc: object, base_dir: Path = Path("/srv/app")):
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    return desired.parse(text, source="state.yaml", base_dir=base_dir)


def problems(doc: object) -> str:
    with pytest.raises(DesiredStateError) as info:
        parse(doc)
    assert str(info.value).startswith("state.yaml: ")
    return str(info.value)


def with_service(**fields: object) -> dict:
    return {**BASE, "services": {"web": {"image": "busybox:1", **fields}}}


def test_negative_replicas_names_the_path() -> None:
    """A wrong value is reported with its dotted path and a plain message."""
    assert "services.web.replicas: must be >= 0" in problems(with_service(replicas=-1))


def test_unknown_key_is_rejected_with_its_path() -> None:
    """Unknown keys are errors, not silently ignored (a typo must not pass)."""
    assert "services.web.replicaz: unknown key" in problems(with_service(replicaz=2))


def test_wrong_type_names_the_path() -> None:
    """A string where a number belongs is reported at that path."""
    assert "services.web.replicas:" in problems(with_service(replicas="many"))


def test_malformed_yaml_gives_line_and_column() -> None:
    """Malformed YAML is reported with its line and column."""
    text = "version: 1\nservices:\n  web: {image: [unclosed\n"
    msg = problems(text)
    assert "line 4, column 1" in msg or "line 3" in msg
    assert "malformed YAML" in msg


@pytest.mark.parametrize("text", ["", "# only a comment\n", "version: 1\nservices: {}\n"])
def test_empty_file_or_no_services_is_refused(text: str) -> None:
    """An empty file would remove everything: it is refused."""
    assert "refusing" in problems(text)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A missing file is a clear error naming it."""
    with pytest.raises(
        DesiredStateError, match=r"nope\.yaml: invalid desired state:\n  file not found"
    ):
        desired.load(tmp_path / "nope.yaml")


def test_dangling_depends_on() -> None:
    """depends_on must name a service of the file."""
    assert "services.web.depends_on: unknown service 'db'" in problems(
        with_service(depends_on=["db"])
    )


def test_depends_on_cycle() -> None:
    """A depends_on cycle is a validation error naming the cycle."""
    doc = {
        **BASE,
        "services": {
            "a": {"image": "x:1", "depends_on": ["b"]},
            "b": {"image": "x:1", "depends_on": ["a"]},
        },
    }
    assert "depends_on has a cycle" in problems(doc)


def test_container_name_only_with_one_replica() -> None:
    """container_name is unique, so it needs replicas: 1."""
    msg = problems(with_service(container_name="w", replicas=2))
    assert "services.web.container_name: only allowed with replicas: 1" in msg


def test_port_range_smaller_than_replicas() -> None:
    """A host-port range must have a port per replica."""
    msg = problems(with_service(replicas=3, ports=["9100-9101:9100"]))
    assert "services.web.ports[0]: host port range 9100-9101 has 2 ports for 3 replicas" in msg


def test_fixed_host_port_with_replicas() -> None:
    """A fixed host port cannot serve several replicas."""
    assert "fixed host port 80" in problems(with_service(replicas=2, ports=["80:80"]))


def test_undeclared_volume_and_network() -> None:
    """Named volumes and networks must be declared at the top level, as compose requires."""
    msg = problems(with_service(volumes=["data:/data"], networks=["front"]))
    assert "services.web.volumes[0]: volume 'data' is not declared" in msg
    assert "services.web.networks: network 'front' is not declared" in msg


def test_all_problems_reported_at_once() -> None:
    """Several problems come back together, not one per attempt."""
    msg = problems(with_service(depends_on=["x"], volumes=["v:/v"]))
    assert "depends_on" in msg and "volumes[0]" in msg


def test_bad_restart_policy() -> None:
    """restart takes Docker's policies only."""
    assert "services.web.restart: must be no, always" in problems(with_service(restart="sometimes"))


def test_replicas_are_named_like_compose() -> None:
    """Replicas are <project>-<service>-<n>, n from 1."""
    state = parse(with_service(replicas=3))
    assert [c.name for c in state.service("web").replicas] == ["p-web-1", "p-web-2", "p-web-3"]


def test_container_name_is_used() -> None:
    """container_name replaces the generated name."""
    state = parse(with_service(container_name="my-web"))
    assert state.service("web").replicas[0].name == "my-web"


def test_port_range_gives_one_host_port_per_replica() -> None:
    """9100-9101:9100 gives replica 1 port 9100 and replica 2 port 9101."""
    state = parse(with_service(replicas=2, ports=["127.0.0.1:9100-9101:9100"]))
    ports = [c.ports[0] for c in state.service("web").replicas]
    assert [(p.host_ip, p.host_port, p.container_port) for p in ports] == [
        ("127.0.0.1", 9100, 9100),
        ("127.0.0.1", 9101, 9100),
    ]


def test_replica_volume_template() -> None:
    """{replica} in a volume name gives each replica its own volume."""
    doc = {
        **with_service(replicas=2, volumes=["data_{replica}:/data"]),
        "volumes": {"data_{replica}": {}},
    }
    state = parse(doc)
    assert [v.name for v in state.volumes] == ["data_1", "data_2"]
    assert state.service("web").replicas[1].binds == ("data_2:/data",)


def test_relative_bind_resolves_against_the_file_folder(tmp_path: Path) -> None:
    """./conf is relative to the desired-state file, not to the working directory."""
    state = parse(with_service(volumes=["./conf:/etc/conf:ro"]), base_dir=tmp_path)
    assert state.service("web").replicas[0].binds == (f"{tmp_path / 'conf'}:/etc/conf:ro",)


def test_service_name_is_a_network_alias() -> None:
    """Each replica joins its networks with the service name as an alias."""
    doc = {**with_service(networks={"net": {"aliases": ["www"]}}), "networks": {"net": {}}}
    att = parse(doc).service("web").replicas[0].networks
    assert [(a.network, a.aliases) for a in att] == [("net", ("web", "www"))]


def test_default_network_when_none_given() -> None:
    """A service without networks joins <project>_default, as with compose."""
    state = parse(BASE)
    assert [n.name for n in state.networks] == ["p_default"]


def test_environment_map_and_list_render_the_same() -> None:
    """environment as a map or as a list gives the same spec (and the same hash)."""
    a = parse(with_service(environment={"A": 1, "B": True})).service("web").replicas[0]
    b = parse(with_service(environment=["B=true", "A=1"])).service("web").replicas[0]
    assert a.environment == b.environment == ("A=1", "B=true")
    assert a.spec_hash == b.spec_hash


def test_spec_hash_is_stable_and_tracks_changes() -> None:
    """The same file gives the same hash; a changed variable gives another."""
    one = parse(with_service(environment={"A": "1"})).service("web").replicas[0]
    again = parse(with_service(environment={"A": "1"})).service("web").replicas[0]
    other = parse(with_service(environment={"A": "2"})).service("web").replicas[0]
    assert one.spec_hash == again.spec_hash != other.spec_hash
    assert len(one.spec_hash) == 64


def test_healthcheck_durations() -> None:
    """Compose durations such as 1m30s and 500ms are understood."""
    hc = parse(with_service(healthcheck={"test": "true", "interval": "1m30s", "timeout": "500ms"}))
    check = hc.service("web").replicas[0].healthcheck
    assert check is not None
    assert (check.test, check.interval_s, check.timeout_s) == (("CMD-SHELL", "true"), 90.0, 0.5)


def test_bad_duration() -> None:
    """A duration that is not one is reported at its path."""
    assert "services.web.stop_grace_period: must be a duration" in problems(
        with_service(stop_grace_period="soon")
    )


def test_services_in_dependency_order() -> None:
    """Services are rendered in depends_on order."""
    doc = {
        **BASE,
        "services": {
            "c": {"image": "x:1", "depends_on": ["b"]},
            "b": {"image": "x:1", "depends_on": ["a"]},
            "a": {"image": "x:1"},
        },
    }
    assert [s.name for s in parse(doc).services] == ["a", "b", "c"]


def test_project_defaults_to_folder_name(tmp_path: Path) -> None:
    """Without project:, the file's folder name (normalised) is the project."""
    folder = tmp_path / "My_Stack"
    folder.mkdir()
    (folder / "desired_state.yaml").write_text(
        yaml.safe_dump({"services": {"w": {"image": "x:1"}}})
    )
    assert desired.load(folder / "desired_state.yaml").project == "my_stack"


def test_config_content_is_part_of_the_spec(tmp_path: Path) -> None:
    """A declared config file's content changes the spec hash; a reload_signal one does not."""
    cfg = tmp_path / "app.cfg"
    cfg.write_text("a")
    doc = with_service(configs=[{"source": "app.cfg", "target": "/etc/app.cfg"}])
    sig = with_service(
        configs=[{"source": "app.cfg", "target": "/etc/app.cfg", "reload_signal": "SIGHUP"}]
    )
    h1 = parse(doc, tmp_path).service("web").replicas[0]
    s1 = parse(sig, tmp_path).service("web").replicas[0]
    cfg.write_text("b")
    h2 = parse(doc, tmp_path).service("web").replicas[0]
    s2 = parse(sig, tmp_path).service("web").replicas[0]
    assert h1.spec_hash != h2.spec_hash
    assert s1.spec_hash == s2.spec_hash and s1.reload_digest != s2.reload_digest


def test_shipped_desired_state_is_valid() -> None:
    """The default desired_state.yaml of the repository validates."""
    root = Path(__file__).resolve().parent.parent
    state = desired.load(root / "desired_state.yaml")
    assert state.services


# ------------------------------------------------------------------- deploy, drain, revision


def web(doc: object, base_dir: Path = Path("/srv/app")):
    return parse(doc, base_dir).service("web")


def test_deploy_defaults() -> None:
    """Without deploy/drain_period a service gets Swarm's defaults and a 3 s drain."""
    svc = web(BASE)
    assert svc.update == UpdateConfig() == DEFAULT_UPDATE
    assert svc.rollback == DEFAULT_ROLLBACK
    assert svc.rollback.failure_action == "pause"
    assert (svc.update.order, svc.update.monitor_s, svc.update.parallelism) == ("stop-first", 5, 1)
    assert svc.drain_s == 3.0


def test_update_config_keys_are_parsed() -> None:
    """Every update_config key renders into ServiceSpec.update, durations in seconds."""
    cfg = {
        "parallelism": 0,
        "delay": "1m30s",
        "order": "start-first",
        "monitor": "500ms",
        "failure_action": "continue",
        "max_failure_ratio": 0.25,
    }
    svc = web(with_service(deploy={"update_config": cfg}))
    assert svc.update == UpdateConfig(0, 90.0, "start-first", 0.5, "continue", 0.25)
    assert svc.rollback == DEFAULT_ROLLBACK


def test_rollback_config_keys_are_parsed() -> None:
    """rollback_config takes the same keys and renders into ServiceSpec.rollback."""
    cfg = {"parallelism": 2, "delay": "2s", "monitor": "10s", "failure_action": "continue"}
    svc = web(with_service(deploy={"rollback_config": cfg}))
    assert svc.rollback == UpdateConfig(2, 2.0, "stop-first", 10.0, "continue", 0.0)
    assert svc.update == DEFAULT_UPDATE


def test_deploy_replicas_gives_the_count() -> None:
    """deploy.replicas is the compose way to give replicas; the same value twice is fine."""
    assert len(web(with_service(deploy={"replicas": 3})).replicas) == 3
    assert len(web(with_service(replicas=2, deploy={"replicas": 2})).replicas) == 2


def test_replicas_conflicting_with_deploy_replicas() -> None:
    """replicas and deploy.replicas with different values is an error naming both."""
    msg = problems(with_service(replicas=2, deploy={"replicas": 3}))
    assert "services.web.replicas: 2 conflicts with deploy.replicas: 3" in msg


def test_deploy_replicas_feeds_the_cross_checks() -> None:
    """deploy.replicas counts like replicas for the checks (a fixed host port, one replica)."""
    assert "fixed host port 80 cannot serve 2 replicas" in problems(
        with_service(deploy={"replicas": 2}, ports=["80:80"])
    )


def test_drain_period_is_parsed() -> None:
    """drain_period is a duration rendered into ServiceSpec.drain_s."""
    assert web(with_service(drain_period="1m")).drain_s == 60.0
    assert web(with_service(drain_period=0)).drain_s == 0.0


def test_stop_grace_period_keeps_fractions() -> None:
    """A 400ms stop grace stays 0.4 s instead of being rounded to 0."""
    assert web(with_service(stop_grace_period="400ms")).replicas[0].stop_grace_s == 0.4
    assert web(with_service(stop_grace_period="1m")).replicas[0].stop_grace_s == 60.0


def test_start_first_refused_with_host_port() -> None:
    """start-first would run two replicas side by side on one host port: refused."""
    msg = problems(
        with_service(ports=["8080:80"], deploy={"update_config": {"order": "start-first"}})
    )
    assert "services.web.deploy.update_config.order: start-first cannot be used with a host" in msg
    assert "side by side" in msg


def test_start_first_refused_with_container_name() -> None:
    """start-first would need two containers with one container_name: refused."""
    doc = with_service(container_name="w", deploy={"rollback_config": {"order": "start-first"}})
    msg = problems(doc)
    assert "services.web.deploy.rollback_config.order: start-first cannot be used with" in msg
    assert "container_name 'w'" in msg


def test_start_first_allowed_without_host_port() -> None:
    """A container-only port leaves start-first possible."""
    doc = with_service(replicas=2, ports=["80"], deploy={"update_config": {"order": "start-first"}})
    assert web(doc).update.order == "start-first"


def test_rollback_config_refuses_rollback() -> None:
    """A failed rollback cannot roll back: failure_action rollback is refused there."""
    msg = problems(with_service(deploy={"rollback_config": {"failure_action": "rollback"}}))
    assert (
        "services.web.deploy.rollback_config.failure_action: rollback is not allowed in "
        "rollback_config" in msg
    )


def test_bad_update_config_values() -> None:
    """Out-of-range and unknown update_config values are reported at their paths."""
    cfg = {"parallelism": -1, "order": "sideways", "failure_action": "retry"}
    msg = problems(with_service(deploy={"update_config": {**cfg, "max_failure_ratio": 1.5}}))
    assert "services.web.deploy.update_config.parallelism: must be >= 0" in msg
    assert "services.web.deploy.update_config.order: must be one of" in msg
    assert "services.web.deploy.update_config.failure_action: must be one of" in msg
    assert "services.web.deploy.update_config.max_failure_ratio: must be <= 1" in msg


def test_unknown_deploy_key() -> None:
    """deploy keys this daemon does not implement are errors, not ignored."""
    found = problems(with_service(deploy={"endpoint_mode": "dnsrr"}))
    assert "services.web.deploy.endpoint_mode: unknown key" in found


def test_swarm_only_deploy_keys_are_errors_on_the_single_host() -> None:
    """placement, restart_policy, deploy.labels: Swarm's (not implemented on one
    host); deploy.mode global is one replica on one host."""
    found = problems(with_service(deploy={"placement": {"constraints": ["node.role == manager"]}}))
    assert "services.web.deploy.placement: only with --target swarm" in found
    state = parse(with_service(deploy={"mode": "global"}))
    assert len(state.service("web").replicas) == 1


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("127.0.0.1:99998-99999:80", "host port 99998 is out of range 1..65535"),
        ("0:80", "host port 0 is out of range 1..65535"),
        ("8080:70000", "container port 70000 is out of range 1..65535"),
        ("9101-9100:80", "host port range 9101-9100 must be ascending"),
    ],
)
def test_ports_out_of_range(port: str, message: str) -> None:
    """Host and container ports must be in 1..65535 and a host range ascending."""
    assert f"services.web.ports[0]: {message}" in problems(with_service(ports=[port]))


def test_revision_is_a_stable_sha256() -> None:
    """The same file gives the same 64-hex revision."""
    one, again = web(BASE).revision, web(BASE).revision
    assert one == again and len(one) == 64 and int(one, 16) >= 0


def test_revision_changes_with_environment() -> None:
    """A changed environment variable changes the revision; map or list spelling does not."""
    a = web(with_service(environment={"A": "1"})).revision
    same = web(with_service(environment=["A=1"])).revision
    b = web(with_service(environment={"A": "2"})).revision
    assert a == same != b


def test_revision_ignores_replicas_and_rollout_settings() -> None:
    """Replica count, deploy, heal, drain and state leave the revision alone."""
    base = web(BASE).revision
    variants = [
        with_service(replicas=3),
        with_service(deploy={"replicas": 4, "update_config": {"parallelism": 2}}),
        with_service(deploy={"rollback_config": {"failure_action": "continue"}}),
        with_service(heal={"min_uptime": "1m"}),
        with_service(drain_period="10s"),
        with_service(state="stopped"),
    ]
    assert {web(doc).revision for doc in variants} == {base}


def test_revision_tracks_mounted_config_content(tmp_path: Path) -> None:
    """A mounted config's content changes the revision, unless applied by reload_signal."""
    cfg = tmp_path / "app.cfg"
    cfg.write_text("a")
    plain = with_service(configs=[{"source": "app.cfg", "target": "/etc/app.cfg"}])
    sig = with_service(
        configs=[{"source": "app.cfg", "target": "/etc/app.cfg", "reload_signal": "SIGHUP"}]
    )
    p1, s1 = web(plain, tmp_path).revision, web(sig, tmp_path).revision
    cfg.write_text("b")
    p2, s2 = web(plain, tmp_path).revision, web(sig, tmp_path).revision
    assert p1 != p2
    assert s1 == s2


def test_revision_includes_the_project() -> None:
    """The same service in another project has another revision."""
    assert web(BASE).revision != web({**BASE, "project": "q"}).revision
