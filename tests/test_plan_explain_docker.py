"""Issue #19 against the real engine: a cold start reports the shared network created once;
`status` shows the running daemon's judgement (its policy) and says when none runs; after an
edit of environment A "1" -> "2" and replicas 2 -> 3, `plan` names the diff and the causes
(no false wait, no secret value), `plan --json` matches its schema, and the daemon's
`rollout started` line carries the diff. After a rollback, `plan` shows the held revision as
pending (exit 2) and `status` shows the image that runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.ops import plan_schema
from tests.conftest import DaemonProcess, run_cli, running_names, wait_for

pytestmark = pytest.mark.docker

POLICY = """version: 1
allow:
  - rule: host_path
    services: [exporter]
    paths: [/]
    read_only: true
"""


def stack(project: str, image: str, a: str, password: str, replicas: int) -> dict[str, Any]:
    def svc(**extra: Any) -> dict[str, Any]:
        body = {"image": image, "init": True, "command": ["sleep", "100000"]}
        return {**body, "networks": [f"{project}-net"], **extra}

    return {
        "networks": {f"{project}-net": {}},
        "services": {
            "web": svc(replicas=replicas, environment={"A": a, "DB_PASSWORD": password}),
            "api": svc(),
            "worker": svc(),
            "exporter": svc(volumes=["/:/host:ro"]),  # denied without the policy
            "hog": svc(  # killed by the kernel's OOM killer each time it starts
                init=False,
                mem_limit="8m",
                command=["sh", "-c", "sleep 1; x=$(head -c 64000000 /dev/zero | tr '\\0' a)"],
            ),
        },
    }


def test_plan_explains_an_edit_and_status_shows_the_daemon(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[[dict[str, Any]], Path],
    daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    path = write_state(stack(project, busybox_image, "1", "hunter2-old", 2))
    lock = ("--lock-dir", str(tmp_path))
    web = [f"{project}-web-1", f"{project}-web-2"]
    everyone = sorted([*web, f"{project}-api-1", f"{project}-worker-1", f"{project}-exporter-1"])
    hog = f"{project}-hog-1"

    # A cold start: four services share one network; it is reported created once.
    d = daemon(path, extra=("--policy", str(policy)))
    wait_for(lambda: set(everyone) <= set(running_names(api, project)), 90, what="the stack to run")
    creates = [
        e for e in d.events("action") if e.get("kind") == "network" and e.get("action") == "create"
    ]
    assert [(e["object"], e["result"]) for e in creates] == [(f"{project}-net", "success")]

    # `status` beside the daemon: its policy's judgement, not the default one's.
    wait_for(lambda: (tmp_path / f"reconciler-{project}.status.json").exists(), 30, what="status")
    seen = run_cli("status", str(path), *lock)
    assert seen.returncode == 0, seen.stderr
    assert "denied" not in seen.stdout and "denied" not in seen.stderr, seen.stdout
    assert f"daemon pid {d.proc.pid} runs project {project} under {policy}" in seen.stdout
    assert d.stop() == 0
    wait_for(
        lambda: (
            api.inspect_container(hog)["State"]["OOMKilled"]
            and api.inspect_container(hog)["State"]["Status"] == "exited"
        ),
        30,
        what="the hog to be OOM killed",
    )

    alone = run_cli("status", str(path), *lock)
    assert f"no daemon runs for project {project}" in alone.stdout
    assert "denied (host_path)" in alone.stdout  # judged here, and it says so

    # The edit of the issue: A "1" -> "2", replicas 2 -> 3 (and a password, never shown).
    write_state(stack(project, busybox_image, "2", "hunter2-new", 3))
    out = run_cli("plan", str(path), "--policy", str(policy), *lock)
    text = out.stdout
    assert out.returncode == 2, (text, out.stderr)
    assert 'environment.A "1" -> "2"' in text
    assert "environment.DB_PASSWORD (changed, value hidden)" in text
    assert "replicas 2 -> 3" in text
    assert f"create container {project}-web-3 (missing)" in text
    assert f"start container {hog} (exited 137 (OOM killed))" in text
    assert "hunter2" not in text + out.stderr
    assert "a replica is down" not in text  # none was: it names what it waits for
    for name in web:
        assert (
            f"# {name}: replacement waits (for {project}-web-3 to run (missing, created in this "
            "pass)); needed: spec changed: environment.A, environment.DB_PASSWORD" in text
        ), text

    raw = run_cli("plan", str(path), "--policy", str(policy), "--json", *lock)
    assert raw.returncode == 2 and "hunter2" not in raw.stdout
    data = json.loads(raw.stdout)
    doc = plan_schema.load(data)  # the documented schema
    _validate_with_json_schema(data)
    (svc,) = [s for s in doc.services if s.name == "web"]
    assert [(c.field, c.old, c.new, c.hidden) for c in svc.changes] == [
        ("environment.A", "1", "2", False),
        ("environment.DB_PASSWORD", None, None, True),
        ("replicas", 2, 3, False),
    ]
    assert [(s.verb, s.name, s.cause.kind) for s in svc.steps] == [
        ("pull", busybox_image, "other"),  # ensure it is there (pull_policy missing)
        ("create", f"{project}-web-3", "missing"),
        ("start", f"{project}-web-3", "other"),  # just created
    ]
    assert len(svc.waits) == 2 and not doc.in_sync and doc.denied == []

    # The daemon follows the edit: its rollout line carries the diff (no value hidden shown).
    d2 = daemon(path, extra=("--policy", str(policy)))
    started = wait_for(lambda: d2.events("rollout started"), 90, what="the rollout to start")
    assert started[0]["service"] == "web"
    assert 'environment.A "1" -> "2"' in started[0]["changes"]
    assert "environment.DB_PASSWORD (changed, value hidden)" in started[0]["changes"]
    assert "hunter2" not in d2.log_path.read_text()
    wait_for(
        lambda: [
            e
            for e in d2.events("action")
            if e.get("container") == hog and e.get("reason") == "exited 137 (OOM killed)"
        ],
        60,
        what="the daemon to restart the hog, saying why",
    )


def _validate_with_json_schema(data: dict[str, Any]) -> None:
    """The output against the published JSON Schema too."""
    import jsonschema

    jsonschema.validate(data, plan_schema.json_schema())


def held_stack(image: str, a: str) -> dict[str, Any]:
    """web: healthy unless its environment says A=2 (a change that fails its rollout)."""
    web = {
        "image": image,
        "init": True,
        "command": ["sleep", "100000"],
        "replicas": 2,
        "environment": {"A": a},
        "healthcheck": {"test": ["CMD-SHELL", 'test "$$A" != 2'], "interval": "1s", "retries": 1},
        "deploy": {"update_config": {"monitor": "1s"}},
    }
    return {"services": {"web": web}}


def test_a_rolled_back_revision_is_pending_and_status_shows_what_runs(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    lock = ("--lock-dir", str(tmp_path))
    path = write_state(held_stack(busybox_image, "1"))
    first = run_cli("apply", str(path), *lock, timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    write_state(held_stack(busybox_image, "2"))
    failed = run_cli("apply", str(path), *lock, timeout=180)
    assert failed.returncode == 1 and "rolled back" in failed.stdout, failed.stdout

    # The file asks A=2, A=1 runs: the diff, held (when, why, what retries it), exit 2.
    out = run_cli("plan", str(path), *lock)
    assert out.returncode == 2, out.stdout + out.stderr
    assert 'environment.A "1" -> "2"' in out.stdout
    assert "is held (rolled back at " in out.stdout, out.stdout
    assert "because new replica unhealthy" in out.stdout
    assert "`reconciler apply` keeps it held" in out.stdout
    assert f"{project}: in sync" not in out.stdout
    raw = run_cli("plan", str(path), *lock, "--json")
    doc = plan_schema.load(json.loads(raw.stdout))
    assert raw.returncode == 2 and not doc.in_sync
    (web,) = doc.services
    assert not web.in_sync and [c.field for c in web.changes] == ["environment.A"]
    (held,) = web.waits
    assert held.subject == "service web"
    assert held.waits_for == "an edit of the file that changes this service"
    assert held.cause is not None and "new replica unhealthy" in held.cause

    # Another image in the file, nothing applied, a replica stopped: `status` shows what
    # runs (and the file's), and no rollout where none is under way.
    other = f"{project}-img:2"
    api.tag(busybox_image, f"{project}-img", "2")
    try:
        write_state(held_stack(other, "1"))
        api.stop(f"{project}-web-1", timeout=1)
        seen = run_cli("status", str(path), *lock)
        assert seen.returncode == 0, seen.stderr
        (row,) = [line for line in seen.stdout.splitlines() if line.startswith("web ")]
        assert f"{busybox_image} (file: {other})" in row, seen.stdout
        assert "pending (not started)" in row and "rolling out" not in row, row
        assert row.split()[1:3] == ["2", "1"], row  # DESIRED 2, RUNNING 1

        # Its reader gone (`| true`), status ends quietly: no traceback.
        piped = subprocess.run(
            ["bash", "-c", 'set -o pipefail; "$@" | true', "-", sys.executable, "-m",
             "reconciler", "status", str(path), *lock],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert piped.returncode in (0, 141) and "Traceback" not in piped.stderr, piped.stderr
    finally:
        api.remove_image(other)
