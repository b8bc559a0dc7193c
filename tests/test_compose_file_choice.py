"""Which file(s) a command reads (`compose_sources.chosen`), as compose chooses them: -f,
else COMPOSE_FILE (the environment, then ./.env), else the default (desired_state.yaml,
else compose's default names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.config.compose_sources import chosen, file_set
from reconciler.ops import logs

DEFAULT = Path("desired_state.yaml")
CASES = [  # (files in the folder, positional, -f, environment) -> the files merged
    (["desired_state.yaml", "compose.yaml"], None, None, {}, ["desired_state.yaml"]),
    (["compose.yaml"], None, None, {}, ["compose.yaml"]),
    (
        ["compose.yaml", "compose.override.yaml"],
        None,
        None,
        {},
        ["compose.yaml", "compose.override.yaml"],
    ),
    (["docker-compose.yml"], None, None, {}, ["docker-compose.yml"]),
    ([], None, None, {}, ["desired_state.yaml"]),  # nothing: the error names the default
    (["a.yml", "b.yml"], None, None, {"COMPOSE_FILE": "a.yml:b.yml"}, ["a.yml", "b.yml"]),
    (
        ["a.yml", "b.yml", "compose.yaml"],
        None,
        ["a.yml", "b.yml"],
        {"COMPOSE_FILE": "compose.yaml"},
        ["a.yml", "b.yml"],
    ),
    (  # -f files take no override file
        ["compose.yaml", "compose.override.yaml"],
        None,
        ["compose.yaml"],
        {},
        ["compose.yaml"],
    ),
    (["x.yaml", "compose.yaml"], "x.yaml", None, {}, ["x.yaml"]),
    (
        ["a;b.yml", "c.yml"],
        None,
        None,
        {"COMPOSE_FILE": "a;b.yml,c.yml", "COMPOSE_PATH_SEPARATOR": ","},
        ["a;b.yml", "c.yml"],
    ),
]


@pytest.mark.parametrize(("present", "positional", "given", "environ", "expected"), CASES)
def test_the_files_read_are_composes_choice(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    present: list[str],
    positional: str | None,
    given: list[str] | None,
    environ: dict[str, str],
    expected: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in present:
        (tmp_path / name).write_text("services: {}\n")
    path = chosen(
        Path(positional) if positional else None,
        [Path(g) for g in given] if given else None,
        environ,
        DEFAULT,
    )
    files, _ = file_set(path)
    assert [str(f) for f in files] == expected


def test_compose_file_may_come_from_the_folders_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Compose reads COMPOSE_FILE from the .env of the folder it runs in; the environment
    wins over it."""
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yml").write_text("services:\n  web: {image: nginx}\n")
    (tmp_path / "b.yml").write_text("services:\n  web: {command: [echo, b]}\n")
    (tmp_path / ".env").write_text("COMPOSE_FILE=a.yml:b.yml\n")
    assert main(["import", "-o", "state.yaml"]) == 0
    assert "[from a.yml + b.yml]" in capsys.readouterr().err
    monkeypatch.setenv("COMPOSE_FILE", "a.yml")
    assert main(["import", "-o", "state.yaml"]) == 0
    assert "[from a.yml]" in capsys.readouterr().err
