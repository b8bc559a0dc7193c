"""A compose file read directly names its volumes and networks as compose does
(`<project>_<key>`) and takes its project name as compose does (COMPOSE_PROJECT_NAME, .env,
name:); reconciler's format (`version: 1`) keeps its keys; `reconciler import` and a direct
read name every object the same. Pure (no engine); the takeover on a real engine is in
tests/test_takeover.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.config import loader
from reconciler.config.compose_import import import_compose
from reconciler.core.desired import DesiredState
from reconciler.engine.swarm import spec as swarm_file
from reconciler.errors import DesiredStateError

COMPOSE = """\
services:
  web:
    image: busybox:1
    volumes: [data:/data, "cache-{replica}:/cache", shared:/shared, kept:/kept]
    networks: [back, default, outside]
    deploy: {replicas: 2}
volumes:
  data:
  cache-{replica}:
  shared: {external: true}
  kept: {name: my_kept}
networks:
  back:
  outside: {external: true}
"""


def load(folder: Path, text: str, environ: dict[str, str] | None = None) -> DesiredState:
    return loader.parse(
        text, source=str(folder / "compose.yaml"), base_dir=folder, environ=environ or {}
    )


def names(state: DesiredState) -> tuple[set[str], set[str]]:
    return {v.name for v in state.volumes}, {n.name for n in state.networks}


def mounts(state: DesiredState) -> set[str]:
    return {m.split(":")[0] for s in state.services for c in s.replicas for m in c.volumes}


COMPOSE_VOLUMES = {"app_data", "app_cache-1", "app_cache-2", "shared", "my_kept"}
COMPOSE_NETWORKS = {"app_back", "app_default", "outside"}


@pytest.mark.parametrize("version", ["", 'version: "3.8"\n', "version: '2.4'\n"])
def test_a_compose_file_gets_compose_names(tmp_path: Path, version: str) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    heard: list[str] = []
    state = loader.parse(
        version + COMPOSE,
        source=str(folder / "compose.yaml"),
        base_dir=folder,
        environ={},
        warn=heard.append,
    )
    assert state.project == "app"
    assert names(state) == (COMPOSE_VOLUMES, COMPOSE_NETWORKS)
    assert mounts(state) == COMPOSE_VOLUMES  # the containers mount what is created
    nets = {n.network for s in state.services for c in s.replicas for n in c.networks}
    assert nets == COMPOSE_NETWORKS
    assert state.volume_templates == ("app_cache-{replica}",)
    if version:  # compose v2 ignores it with a warning; so do we
        assert any("compose.yaml:1:1: version:" in h and "obsolete" in h for h in heard)


@pytest.mark.parametrize("marker", ["version: 1\nproject: app\n", "version: 1\n", "project: app\n"])
def test_the_native_format_keeps_its_keys(tmp_path: Path, marker: str) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    state = load(folder, marker + COMPOSE)
    volumes, networks = names(state)
    assert volumes == {"data", "cache-1", "cache-2", "shared", "my_kept"}
    assert networks == {"back", "app_default", "outside"}


def test_the_project_name_follows_compose_precedence(tmp_path: Path) -> None:
    folder = tmp_path / "Folder.Name"
    folder.mkdir()
    text = "services: {web: {image: busybox:1}}\nvolumes: {data: {}}\n"
    assert load(folder, text).project == "foldername"
    assert load(folder, "name: named\n" + text).project == "named"
    (folder / ".env").write_text("COMPOSE_PROJECT_NAME=fromdotenv\n")
    state = load(folder, "name: named\n" + text)
    assert state.project == "fromdotenv"
    assert state.services[0].replicas[0].name == "fromdotenv-web-1"
    assert names(state)[0] == {"fromdotenv_data"}
    env = {"COMPOSE_PROJECT_NAME": "fromenv"}
    assert load(folder, "name: named\n" + text, env).project == "fromenv"
    # reconciler's format keeps project: (and name:, the folder): compose's variable is not its
    assert load(folder, "version: 1\nname: named\n" + text, env).project == "named"
    assert load(folder, "project: mine\n" + text, env).project == "mine"
    with pytest.raises(DesiredStateError, match="COMPOSE_PROJECT_NAME='Bad Name': must be"):
        load(folder, text, {"COMPOSE_PROJECT_NAME": "Bad Name"})


def test_a_direct_read_and_an_import_name_every_object_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "docker-compose.yml").write_text('version: "3.8"\n' + COMPOSE)
    direct = loader.load(folder / "docker-compose.yml")
    out = tmp_path / "out"
    out.mkdir()
    imported = import_compose(folder / "docker-compose.yml", output_dir=out)
    assert imported.text.startswith("version: 1\n")
    converted = loader.parse(imported.text, source="x", base_dir=out, environ={})
    assert converted.project == direct.project == "app"
    assert names(converted) == names(direct)
    assert mounts(converted) == mounts(direct)


def test_the_project_variable_names_an_import_too(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "compose.yaml").write_text("services: {web: {image: busybox:1}}\n")
    (folder / ".env").write_text("COMPOSE_PROJECT_NAME=rvdcpn\n")
    assert import_compose(folder / "compose.yaml", output_dir=tmp_path).project == "rvdcpn"
    given = import_compose(folder / "compose.yaml", output_dir=tmp_path, project="flag")
    assert given.project == "flag"  # --project wins
    assert loader.load(folder / "compose.yaml").project == "rvdcpn"


def test_swarm_names_a_compose_file_as_docker_stack_deploy(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        services:
          web: {image: busybox:1, volumes: [data:/data], networks: [back]}
        volumes: {data: {}}
        networks: {back: {}}
    """)
    desired = swarm_file.parse(text, source="compose.yaml", base_dir=tmp_path / "stk", environ={})
    assert [n.name for n in desired.networks] == ["stk_back"]
    assert desired.services[0].spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"] == (
        "stk_data"
    )
