"""Compose keys a compose file read directly takes as `reconciler import` does: top-level
file-based `configs:` (mounted read-only files), `secrets:` with `file:`, and depends_on's
`required: false` and `restart: true` (compose 2.20). Pure (no engine)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.config import loader
from reconciler.config.compose_import import import_compose
from reconciler.core.desired import DesiredState
from reconciler.errors import DesiredStateError


def write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "compose.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def binds(state: DesiredState, service: str) -> set[str]:
    return set(state.service(service).replicas[0].binds)


def test_file_configs_and_secrets_are_mounted_as_an_import_mounts_them(tmp_path: Path) -> None:
    app = tmp_path / "app"
    path = write(
        app,
        """\
        services:
          web:
            image: busybox:1
            configs: [{source: app_cfg, target: /etc/app.conf}, short_cfg]
            secrets: [pw]
        configs:
          app_cfg: {file: ./app.conf}
          short_cfg: {file: short.conf}
        secrets:
          pw: {file: ./pw.txt}
        """,
    )
    for name in ("app.conf", "short.conf", "pw.txt"):
        (app / name).write_text(name)
    direct = loader.load(path)
    assert {
        f"{app}/app.conf:/etc/app.conf:ro",
        f"{app}/short.conf:/short_cfg:ro",
    } <= binds(direct, "web")
    (app / "app.conf").write_text("changed")  # a config's content is part of the spec
    assert loader.load(path).digest != direct.digest
    out = tmp_path / "out"
    out.mkdir()
    imported = import_compose(path, output_dir=out)
    converted = loader.parse(imported.text, source="x", base_dir=out, environ={})
    assert binds(converted, "web") == binds(loader.load(path), "web")


def test_a_config_not_from_a_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app",
        """\
        services:
          web: {image: busybox:1, configs: [inline]}
        configs:
          inline:
            content: "x"
        """,
    )
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    assert "compose.yaml:5:5: configs.inline.content: not supported (configs come from files" in (
        str(info.value)
    )


DEPENDS = """\
services:
  web:
    image: busybox:1
    depends_on:
      db: {condition: service_started, restart: true}
      opt: {condition: service_started, required: false}
      debug: {condition: service_started, required: false}
  db: {image: busybox:1}
  debug: {image: busybox:1, profiles: [debug]}
"""


def test_depends_on_required_false_and_restart_true(tmp_path: Path) -> None:
    path = write(tmp_path / "app", DEPENDS)
    heard: list[str] = []
    state = loader.parse(
        path.read_text(), source=str(path), base_dir=path.parent, environ={}, warn=heard.append
    )
    assert state.service("web").depends_on == ("db",)  # opt: not defined; debug: dormant
    said = "\n".join(heard)
    assert "compose.yaml:5:40: services.web.depends_on.db.restart: accepted, not acted on" in said
    assert "services.web.depends_on.opt.required: service 'opt' is not part of the project" in said
    assert "services.web.depends_on.debug.required" in said
    chosen = loader.parse(
        path.read_text(),
        source=str(path),
        base_dir=path.parent,
        environ={"COMPOSE_PROFILES": "debug"},
        warn=heard.append,
    )
    assert chosen.service("web").depends_on == ("db", "debug")  # selected: waited for
    out = tmp_path / "out"
    out.mkdir()
    imported = import_compose(path, output_dir=out)
    assert not imported.unsupported
    assert "required: false" in imported.text and "restart: true" in imported.text


def test_a_required_dependency_that_is_missing_is_still_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app",
        DEPENDS.replace("opt: {condition: service_started, required: false}", "opt: {}"),
    )
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    assert "unknown service 'opt'" in str(info.value)
    assert "valid list" not in str(info.value)


def test_a_wrong_key_in_depends_on_is_named_alone(tmp_path: Path) -> None:
    """Not also `depends_on: input should be a valid list` (the union's other shape)."""
    path = write(tmp_path / "app", DEPENDS.replace("required: false", "requird: false", 1))
    with pytest.raises(DesiredStateError) as info:
        loader.load(path)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].endswith(
        "compose.yaml:6:41: services.web.depends_on.opt.requird: unknown key"
    )
