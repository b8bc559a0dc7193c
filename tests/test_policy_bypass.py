"""The host policy's bypasses closed (issue #11 item 2), without an engine: bind volumes,
build contexts, env_files, `service:X` namespaces, compose take-over and `status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.config import loader
from reconciler.core import policy
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.takeover import ForeignContainer, plan_takeover
from reconciler.errors import DesiredStateError
from reconciler.ops.status import render_status
from tests.conftest import run_cli


def _state(tmp_path: Path, body: str, *, tail: str = "") -> loader.DesiredState:
    home = tmp_path / "proj"
    home.mkdir(exist_ok=True)
    f = home / "d.yaml"
    f.write_text("version: 1\nproject: sec\nservices:\n" + body + tail)
    return loader.load(f)


def _found(d: loader.DesiredState, pol: policy.Policy = policy.DEFAULT) -> set[tuple[str, ...]]:
    return {(x.service, x.key, x.rule) for x in policy.enforce(d, pol)[1]}


# --------------------------------------------------------------------------- 1: bind volumes

ROOT_VOLUME = "volumes:\n  rootfs:\n    driver_opts: {type: none, o: bind, device: /}\n"


@pytest.mark.parametrize("mount", ["rootfs:/host", "rootfs:/host:ro"])
def test_volume_binding_a_host_folder_is_judged_as_a_bind(tmp_path: Path, mount: str) -> None:
    """driver_opts o: bind, device: / is a bind of / for every service mounting it."""
    d = _state(
        tmp_path,
        f"  a:\n    image: x\n    volumes: ['{mount}']\n"
        "  b:\n    image: x\n    volumes: [{type: volume, source: rootfs, target: /h}]\n"
        "  c:\n    image: x\n",
        tail=ROOT_VOLUME,
    )
    marked, found = policy.enforce(d)
    assert marked.denied == {"a", "b"}
    mode = "read-only" if mount.endswith(":ro") else "read-write"
    details = {(x.service, x.line, x.detail) for x in found}
    assert ("a", 6, f"bind mount of / ({mode}; reaches /)") in details
    assert ("b", 9, "bind mount of / (read-write; reaches /)") in details


def test_bind_volume_read_only_follows_the_mount(tmp_path: Path) -> None:
    """An allow of /etc read-only covers `etc:/e:ro`, not `etc:/e`; `o: rbind,ro` counts."""
    d = _state(
        tmp_path,
        "  ro:\n    image: x\n    volumes: ['etc:/e:ro']\n"
        "  rw:\n    image: x\n    volumes: ['etc:/e']\n",
        tail="volumes:\n  etc:\n    driver_opts: {o: 'rbind,ro', device: /etc}\n",
    )
    allow = policy.Allow("host_path", frozenset({"ro", "rw"}), ("/etc",))
    assert _found(d, policy.Policy((allow,))) == {("rw", "volumes", "host_path")}


def test_plain_volumes_are_not_judged(tmp_path: Path) -> None:
    """tmpfs/nfs options, an external volume and a bind of a harmless folder pass."""
    d = _state(
        tmp_path,
        "  a:\n    image: x\n    volumes: ['tm:/t', 'ext:/e', 'srv:/s']\n",
        tail="volumes:\n  tm: {driver_opts: {type: tmpfs, device: tmpfs, o: size=1m}}\n"
        "  ext: {external: true}\n"
        "  srv: {driver_opts: {type: none, o: bind, device: /srv/data}}\n",
    )
    assert _found(d) == set()


# --------------------------------------------------------------------------- 2: build


@pytest.mark.parametrize(
    "build",
    [
        "/etc",
        "{context: /etc}",
        "{context: ., dockerfile: /etc/x/Dockerfile}",
        "{context: ., dockerfile: ../../../../../../../../etc/Dockerfile}",
    ],
)
def test_build_from_a_protected_folder_is_denied(tmp_path: Path, build: str) -> None:
    d = _state(tmp_path, f"  a:\n    build: {build}\n  b:\n    build: .\n")
    assert _found(d) == {("a", "build", "host_path")}
    text = policy.enforce(d)[1][0].message(d.source, policy.DEFAULT)
    assert f"{d.source}:5: services.a.build: bind mount of /etc" in text


def test_build_inside_or_from_a_harmless_folder_passes(tmp_path: Path) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    d = _state(
        tmp_path,
        "  a:\n    build: {context: sub, dockerfile: Dockerfile.dev}\n"
        f"  b:\n    build: {{context: {tmp_path}, dockerfile: proj/sub/Dockerfile}}\n",
    )
    assert _found(d) == set()


# --------------------------------------------------------------------------- 4 and 5: service:X


@pytest.mark.parametrize(("key", "rule"), [("network_mode", "host_network"), ("pid", "host_pid")])
def test_joining_a_host_namespace_through_a_service_is_judged(
    tmp_path: Path, key: str, rule: str
) -> None:
    """X allowed `host`; Y joins X (and Z joins Y): both need the allowance too."""
    d = _state(
        tmp_path,
        f"  x:\n    image: i\n    {key}: host\n"
        f"  y:\n    image: i\n    {key}: 'service:x'\n"
        f"  z:\n    image: i\n    {key}: 'service:y'\n"
        "  w:\n    image: i\n    ipc: 'service:x'\n",
    )
    only_x = policy.Policy((policy.Allow(rule, frozenset({"x"})),))
    marked, found = policy.enforce(d, only_x)
    assert marked.denied == {"y", "z"}
    z = next(f for f in found if f.service == "z")
    assert z.rule == rule and z.line == 12 and "through y -> x" in z.detail
    assert policy.enforce(d, policy.Policy((policy.Allow(rule, frozenset("xyz")),)))[1] == ()


def test_joining_a_project_container_by_name_is_judged_too(tmp_path: Path) -> None:
    """`container:NAME` of a project container (its container_name) is judged like
    `service:X`."""
    d = _state(
        tmp_path,
        "  x:\n    image: i\n    container_name: vpn\n    network_mode: host\n"
        "  y:\n    image: i\n    network_mode: 'container:vpn'\n",
    )
    allow_x = policy.Policy((policy.Allow("host_network", frozenset({"x"})),))
    assert _found(d, allow_x) == {("y", "network_mode", "host_network")}


@pytest.mark.parametrize("key", ["pid", "ipc", "network_mode"])
def test_service_namespace_is_translated_to_the_first_replica(tmp_path: Path, key: str) -> None:
    """As compose: `service:X` becomes `container:<X's first replica>`; X is created first."""
    d = _state(
        tmp_path,
        f"  y:\n    image: i\n    {key}: 'service:x'\n  x:\n    image: i\n    replicas: 2\n",
    )
    assert getattr(d.service("y").replicas[0], key) == "container:sec-x-1"
    assert [s.name for s in d.services] == ["x", "y"]


@pytest.mark.parametrize("key", ["pid", "ipc"])
def test_service_namespace_of_an_unknown_service_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(DesiredStateError) as err:
        _state(tmp_path, f"  y:\n    image: i\n    {key}: 'service:ne'\n")
    assert ":6:" in str(err.value) and f"services.y.{key}: unknown service 'ne'" in str(err.value)


# --------------------------------------------------------------------------- 7: env_file


def test_env_file_outside_the_folder_is_judged(tmp_path: Path) -> None:
    """An env_file under /etc (here through a symlink beside the file; absent, optional, so
    that any host will do): denied (rule host_path); one beside the file is not."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "app.env").write_text("A=1\n")
    (tmp_path / "proj" / "link.env").symlink_to("/etc/reconciler-test-none.env")
    d = _state(
        tmp_path,
        "  a:\n    image: x\n    env_file: [{path: link.env, required: false}]\n"
        "  b:\n    image: x\n    env_file: [app.env, {path: /etc/none.env, required: false}]\n",
    )
    assert _found(d) == {("a", "env_file", "host_path"), ("b", "env_file", "host_path")}
    assert {x.line for x in policy.enforce(d)[1]} == {6, 9}


def test_env_file_errors_never_quote_a_host_file(tmp_path: Path) -> None:
    """A host file that is not an env file: file:line and what is wrong, none of its text."""
    shadow = tmp_path / "shadow"
    shadow.write_text("root:$6$salt$hash:19000::::::\nsecretname=${UNSET_VAR_X}\nPW='open\n")
    with pytest.raises(DesiredStateError) as err:
        _state(tmp_path, f"  a:\n    image: x\n    env_file: {shadow}\n")
    text = str(err.value)
    assert f"{shadow}:1: expected KEY=VALUE" in text and f"{shadow}:2: a $ reference" in text
    assert f"{shadow}:3: the ' quote is never closed" in text
    for leak in ("root", "salt", "secretname", "UNSET_VAR_X", "PW", "open"):
        assert leak not in text.replace(str(tmp_path), ""), leak


# --------------------------------------------------------------------------- 3: take over


def test_take_over_leaves_a_denied_service_to_compose(tmp_path: Path) -> None:
    d = _state(tmp_path, "  web:\n    image: x\n  bad:\n    image: x\n    privileged: true\n")
    marked, _ = policy.enforce(d)
    others = (
        ForeignContainer("i1", "sec-web-1", "running", "sec", "web"),
        ForeignContainer("i2", "sec-bad-1", "running", "sec", "bad"),
    )
    p = plan_takeover(marked, Observed(), others)
    touched = {(s.action.verb, s.action.name) for s in p.steps}
    assert not any("bad" in name for _, name in touched)
    assert ("stop", "sec-web-1") in touched and ("remove", "sec-web-1") in touched
    assert any("host policy denies, left alone: sec-bad-1" in n for n in p.notes)


# --------------------------------------------------------------------------- 6: status


class _Engine:
    """Just enough of Engine for render_status: web's replica runs, bad has none."""

    def observe(self, project: str) -> Observed:
        c = ObservedContainer("id1", "sec-web-1", "web", 1, "h", "running", None, None)
        return Observed(containers=(c,))

    def inspect(self, cid: str) -> dict[str, Any]:
        return {"RestartCount": 0}

    def log_tail(self, cid: str, n: int) -> list[str]:
        return []


def test_status_shows_a_denied_service_as_denied(tmp_path: Path) -> None:
    d = _state(tmp_path, "  web:\n    image: x\n  bad:\n    image: x\n    replicas: 3\n")
    out = render_status(d, _Engine(), denied={"bad": "privileged"})  # type: ignore[arg-type]
    row = next(line for line in out.splitlines() if line.startswith("bad"))
    assert row.endswith("denied (privileged)") and "missing" not in out


def test_import_carries_a_bind_volume_that_the_policy_then_denies(tmp_path: Path) -> None:
    """`reconciler import` keeps driver_opts as they are; the imported file is judged."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n  a:\n    image: busybox\n    volumes: [rootfs:/host:ro]\n"
        "volumes:\n  rootfs:\n    driver_opts: {type: none, o: bind, device: /}\n"
    )
    out = tmp_path / "state.yaml"
    imported = run_cli("import", str(compose), "--project", "imp", "-o", str(out))
    assert imported.returncode == 0, imported.stderr
    _, found = policy.enforce(loader.load(out))
    assert [(x.service, x.rule, x.detail) for x in found] == [
        ("a", "host_path", "bind mount of / (read-only; reaches /)")
    ]
