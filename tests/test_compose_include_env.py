"""An `include` interpolates the included files with its own env files, as compose does: its
`env_file`, else the included project's `.env`; the project's environment and .env win, and
`reconciler import` (which keeps `${VAR}`) says the output does not read them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.config import loader
from reconciler.errors import DesiredStateError
from reconciler.ops import logs

DB = """\
services:
  db:
    image: postgres:16-alpine
    environment:
      PASS: ${PGPASS:-default}
      USER: ${PGUSER:-nobody}
"""


def project(tmp: Path, include: str, files: dict[str, str]) -> Path:
    for name, text in {"db/compose.yaml": DB, **files}.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(textwrap.dedent(text))
    main_file = tmp / "compose.yaml"
    main_file.write_text(f"include:\n  - {include}\nservices:\n  web: {{image: nginx}}\n")
    return main_file


CASES = [  # (include entry, files beside, environment) -> db's PASS, USER
    ("db/compose.yaml", {}, {}, ("default", "nobody")),
    ("db/compose.yaml", {"db/.env": "PGPASS=own\n"}, {}, ("own", "nobody")),
    ("db/compose.yaml", {"db/.env": "PGPASS=own\n"}, {"PGPASS": "shell"}, ("shell", "nobody")),
    (  # the project's .env wins over the included project's
        "db/compose.yaml",
        {"db/.env": "PGPASS=own\nPGUSER=dbuser\n", ".env": "PGPASS=project\n"},
        {},
        ("project", "dbuser"),
    ),
    (  # env_file given: it replaces the included .env; a later file wins over an earlier
        "{path: db/compose.yaml, env_file: [a.env, b.env]}",
        {"db/.env": "PGPASS=own\n", "a.env": "PGPASS=a\nPGUSER=a\n", "b.env": "PGPASS=b\n"},
        {},
        ("b", "a"),
    ),
    (  # project_directory names the folder whose .env applies
        "{path: db/compose.yaml, project_directory: other}",
        {"db/.env": "PGPASS=own\n", "other/.env": "PGPASS=other\n"},
        {},
        ("other", "nobody"),
    ),
]


@pytest.mark.parametrize(("include", "files", "environ", "expected"), CASES)
def test_an_include_interpolates_with_its_own_env_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    include: str,
    files: dict[str, str],
    environ: dict[str, str],
    expected: tuple[str, str],
) -> None:
    for name in ("PGPASS", "PGUSER", "COMPOSE_PROFILES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    parsed = loader.load_parts(project(tmp_path, include, files))
    env = parsed.definition.services["db"].environment
    assert (env["PASS"], env["USER"]) == expected
    # each env file that gave a value is an input (watched: its edit is a reload)
    used = {Path(p).resolve() for p in parsed.state.watched}
    gave = [n for n in files if (tmp_path / n).read_text().split("=")[1].split()[0] in expected]
    assert all((tmp_path / n).resolve() in used for n in gave)


def test_a_missing_include_env_file_is_an_error_at_the_include(tmp_path: Path) -> None:
    main_file = project(tmp_path, "{path: db/compose.yaml, env_file: nope.env}", {})
    with pytest.raises(DesiredStateError) as exc:
        loader.load_parts(main_file)
    assert f"{main_file}:2:5: include: env_file " in str(exc.value)
    assert "nope.env: no such file" in str(exc.value)


def test_import_says_the_output_does_not_read_an_included_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    monkeypatch.delenv("PGPASS", raising=False)
    monkeypatch.chdir(tmp_path)
    project(tmp_path, "db/compose.yaml", {"db/.env": "PGPASS=own\n"})
    assert main(["import", "compose.yaml", "-o", "state.yaml"]) == 0
    err = capsys.readouterr().err
    assert "services (2): web, db [from compose.yaml + db/compose.yaml]" in err
    assert "warning: db/.env (the include at compose.yaml:2:5) gives the included files'" in err
    assert "${PGPASS:-default}" in (tmp_path / "state.yaml").read_text()  # kept as written
