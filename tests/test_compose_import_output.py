"""`reconciler import -o`: written through a symlink (never replacing it), `-` and
/dev/stdout are standard output; an import into another folder lists the variables the
compose file's .env sets (the output will not read it). Pure (no engine)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from reconciler.cli import import_output
from reconciler.config import loader
from tests.conftest import run_cli

COMPOSE = """\
services:
  web:
    image: busybox:${APP_VERSION}
    environment: {DB_PASS: "${DB_PASS}", MODE: "${MODE:-prod}"}
    volumes: [./site:/site:ro]
"""


def _compose(folder: Path, dotenv: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "site").mkdir()
    path = folder / "compose.yaml"
    path.write_text(textwrap.dedent(COMPOSE))
    if dotenv:
        (folder / ".env").write_text(dotenv)
    return path


def test_output_through_a_symlink_and_to_stdout(tmp_path: Path) -> None:
    compose = _compose(tmp_path / "app", "APP_VERSION=1\nDB_PASS=x\n")
    real = tmp_path / "real"
    real.mkdir()
    (real / "state.yaml").write_text("old\n")
    (real / "state.yaml").chmod(0o640)
    link = tmp_path / "etc" / "state.yaml"
    link.parent.mkdir()
    link.symlink_to(real / "state.yaml")
    done = run_cli("import", str(compose), "-o", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()  # written through, not replaced
    assert f"wrote {real / 'state.yaml'} (through {link})" in done.stderr
    text = (real / "state.yaml").read_text()
    assert text.startswith("version: 1\n") and "../app/site:/site:ro" in text  # from real/
    assert (real / "state.yaml").stat().st_mode & 0o777 == 0o640
    assert not list(link.parent.glob(".*.tmp")) and not list(real.glob(".*.tmp"))
    dangling = tmp_path / "etc" / "new.yaml"
    dangling.symlink_to(real / "new.yaml")  # its target not there yet: created
    assert run_cli("import", str(compose), "-o", str(dangling)).returncode == 0
    assert dangling.is_symlink() and (real / "new.yaml").read_text() == text
    piped = run_cli("import", str(compose), "-o", "-")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("version: 1\n") and not (Path.cwd() / "-").exists()
    assert all(import_output.is_stdout(Path(p)) for p in ("-", "/dev/stdout"))


def test_an_import_elsewhere_lists_what_the_compose_env_sets(tmp_path: Path) -> None:
    compose = _compose(tmp_path / "app", "APP_VERSION=1.36\nDB_PASS=s3cret\n")
    out = tmp_path / "etc" / "state.yaml"
    out.parent.mkdir()
    done = run_cli("import", str(compose), "-o", str(out))
    assert done.returncode == 0, done.stderr
    env = tmp_path / "app" / ".env"
    for name, line in (("APP_VERSION", 3), ("DB_PASS", 4)):
        assert f"variable {name} ({compose}:{line}:" in done.stderr
        assert f"set in {env}, which is not beside the output" in done.stderr
    assert "MODE" not in done.stderr  # it has a default
    assert f"copy {env} to {out.parent / '.env'}" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert run_cli("validate", str(out)).returncode != 0  # as said: not yet
    shutil.copy(env, out.parent / ".env")
    assert loader.load(out).service("web").image == "busybox:1.36"
    beside = run_cli("import", str(compose), "-o", str(tmp_path / "app" / "state.yaml"))
    assert beside.returncode == 0 and "to provide" not in beside.stderr  # the .env is there
