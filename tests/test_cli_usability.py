"""The command line as a new user meets it: global options after the command, a command's own
usage on a mistake, help texts that say what happens, the host policy `plan` and `status`
judge under (the running daemon's), and the exit codes README promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from reconciler.cli import policy_choice
from reconciler.cli.main import main
from reconciler.cli.parser import build_parser
from reconciler.cli.status_view import DAEMON_ROLE
from reconciler.config import policy_file
from reconciler.core.policy import DEFAULT
from reconciler.ops import logs
from reconciler.ops.lock import ProjectLock, status_path

ROOT = Path(__file__).resolve().parent.parent
ALLOW = "allow:\n  - rule: host_path\n    services: [node-exporter]\n    paths: [/proc]\n"


def test_global_options_go_before_or_after_the_command() -> None:
    after = build_parser().parse_args(["run", "--log-format", "console", "f.yaml"])
    assert (after.log_format, after.log_level, after.file) == ("console", "info", Path("f.yaml"))
    before = build_parser().parse_args(["--log-level", "debug", "plan", "--log-format", "json"])
    assert (before.log_level, before.log_format) == ("debug", "json")
    plain = build_parser().parse_args(["status"])
    assert (plain.log_level, plain.log_format) == ("info", "auto")


def test_a_mistake_shows_the_usage_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["plan", "--bogus"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("usage: reconciler plan ") and "unrecognized arguments: --bogus" in err


def test_help_says_what_apply_waits_for_and_the_run_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("apply", "run"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "run one pass, then exit" not in text and "up to --timeout" in text
    assert "seconds between resyncs (default: 5.0)" in text
    assert "seconds a pull or build may take (default: 600.0)" in text


def _daemon(tmp_path: Path, project: str, policy: str) -> ProjectLock:
    """This process as the project's daemon: its lock held, its status file naming `policy`."""
    lock = ProjectLock(project, tmp_path / "run")
    lock.acquire(role=DAEMON_ROLE)
    status_path(project, tmp_path / "run").write_text(
        f'{{"pid": {os.getpid()}, "updated_at": 1.0, "policy": "{policy}"}}'
    )
    return lock


def _args(command: str, tmp_path: Path, policy: Path | None = None) -> object:
    return build_parser().parse_args(
        [command, "--lock-dir", str(tmp_path / "run")]
        + (["--policy", str(policy)] if policy else [])
    )


def test_plan_and_status_judge_under_the_running_daemons_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's first two commands: `run --policy configs/policy.yaml`, then `plan` (no
    --policy, same folder) judges as the daemon does, and says under which policy."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "policy.yaml").write_text(ALLOW)
    (tmp_path / "policy.yaml").write_text("allow: []\n")  # beside the file: never loaded
    monkeypatch.chdir(tmp_path)
    assert policy_choice.choose(_args("plan", tmp_path), "p").said is None  # no daemon
    lock = _daemon(tmp_path, "p", "configs/policy.yaml")  # relative, as it was started
    try:
        for command in ("plan", "status"):
            chosen = policy_choice.choose(_args(command, tmp_path), "p")
            assert chosen.policy.source.endswith("configs/policy.yaml")
            assert [a.rule for a in chosen.policy.allows] == ["host_path"]
            assert chosen.said is not None and "the running daemon's, pid" in chosen.said
        applied = policy_choice.choose(_args("apply", tmp_path), "p")  # refused beside it anyway
        assert applied.policy.source in (DEFAULT.source, str(policy_file.DEFAULT_PATH))
        given = policy_choice.choose(_args("plan", tmp_path, tmp_path / "policy.yaml"), "p")
        assert given.policy.allows == () and given.said and "(--policy)" in given.said
    finally:
        lock.release()
    builtin = _daemon(tmp_path, "q", DEFAULT.source)
    try:
        chosen = policy_choice.choose(_args("plan", tmp_path), "q")
        assert chosen.policy is DEFAULT and chosen.said is None
    finally:
        builtin.release()


def test_status_of_a_missing_file_exits_2_as_readme_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)  # keep later tests' logs
    assert main(["status", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `reconciler status"))
    codes = row.rsplit("|", 2)[-2]
    assert re.search(r"\b2 bad, missing or unreadable file\b", codes), codes
