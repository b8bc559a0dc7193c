"""StrictModes and the host policy against the real engine and the real daemon (issue: security)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import DaemonProcess, run_cli, running_names, wait_for

pytestmark = pytest.mark.docker

DEADLINE_S = 30.0


def two(project: str, image: str, **bad: Any) -> dict[str, Any]:
    """`good` (harmless) and `bad` (asking for `bad`) on a network of the test's own."""
    net = f"{project}-net"
    base = {"image": image, "init": True, "command": ["sleep", "100000"], "networks": [net]}
    return {
        "networks": {net: {}},
        "services": {"good": dict(base), "bad": {**base, **bad}},
    }


def test_privileged_denied_by_default_and_created_when_the_policy_allows_it(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    """Without a policy `bad` (privileged) is not created, the error names it, its key, line and
    rule, and `good` converges; with a policy allowing it, it is created privileged."""
    path = write_state(two(project, busybox_image, privileged=True))
    absent = tmp_path / "no-policy-here.yaml"  # the default path may exist on a host: be explicit
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nallow: []\n")
    denied = run_cli("apply", str(path), "--policy", str(policy), "--lock-dir", str(tmp_path))
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert f"{path}:" in denied.stderr and "services.bad.privileged" in denied.stderr
    assert "rule privileged" in denied.stderr and "not created" in denied.stderr
    assert running_names(api, project) == [f"{project}-good-1"]
    assert not api.containers(all=True, filters={"name": f"{project}-bad-1"})
    assert not absent.exists()

    plan = run_cli("plan", str(path), "--policy", str(policy))
    assert "services.bad.privileged" in plan.stderr and f"{project}-bad-1" not in plan.stdout

    policy.write_text("version: 1\nallow:\n  - {rule: privileged, services: [bad]}\n")
    # This engine may refuse to *start* a privileged container (in a container itself:
    # "unable to apply caps"); what the policy decides is whether it is created.
    run_cli(
        "apply", str(path), "--policy", str(policy), "--lock-dir", str(tmp_path), "--timeout", "10"
    )
    wait_for(
        lambda: api.containers(all=True, filters={"name": f"{project}-bad-1"}),
        DEADLINE_S,
        what="the privileged container to be created",
    )
    info = api.inspect_container(f"{project}-bad-1")
    assert info["HostConfig"]["Privileged"] is True


def test_daemon_refuses_an_unsafe_reload_and_keeps_the_last_good_state(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """A chmod 0666 of the file: not ready, desired_state_valid 0, a log line naming the file
    and its mode, containers unchanged; chmod back: ready again. A denied service on reload
    counts in reconciler_policy_denials_total and is not created."""
    doc = two(project, busybox_image)
    path = write_state(doc)
    d = daemon(path, interval=3600.0, extra=("--policy", str(tmp_path / "none.yaml")))
    assert d.proc.wait(30) == 2  # --policy names a file that is absent: refused at start
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    d = daemon(path, interval=3600.0, extra=("--policy", str(tmp_path / "policy.yaml")))
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="ready")
    before = sorted(running_names(api, project))
    assert len(before) == 2

    path.chmod(0o666)
    wait_for(
        lambda: d.events("desired state rejected; keeping the last good one"),
        DEADLINE_S,
        what="the unsafe file to be rejected",
    )
    line = d.events("desired state rejected; keeping the last good one")[0]
    assert str(path) in line["error"] and "mode 0666" in line["error"], line
    assert d.get("/readyz")[0] == 503
    assert d.metric("reconciler_desired_state_valid") == 0
    assert sorted(running_names(api, project)) == before

    path.chmod(0o644)
    wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready again")

    doc["services"]["bad"]["cap_add"] = ["SYS_ADMIN"]
    write_state(doc)
    wait_for(
        lambda: d.metric("reconciler_policy_denials_total", service="bad", rule="cap_add") == 1,
        DEADLINE_S,
        what="the denial to be counted",
    )
    denial = d.events("denied by the host policy")[0]
    assert "services.bad.cap_add" in denial["error"] and "SYS_ADMIN" in denial["error"]
    # Denied: neither recreated with SYS_ADMIN nor removed; `good` still runs.
    assert sorted(running_names(api, project)) == before
    assert d.stop() == 0


def test_secret_reaches_the_container_only_as_a_read_only_file(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
) -> None:
    """The container reads the secret at /run/secrets/NAME (read-only); `docker inspect`, our
    output and `plan` never contain it; a new content is a pending change."""
    value = f"pw-{project}-correct-horse"
    (tmp_path / "pw.txt").write_text(value)
    (tmp_path / "pw.txt").chmod(0o600)
    doc = two(project, busybox_image, secrets=["pw"])
    doc["secrets"] = {"pw": {"file": str(tmp_path / "pw.txt")}}
    path = write_state(doc)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    applied = run_cli("apply", str(path), "--policy", str(policy), "--lock-dir", str(tmp_path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    name = f"{project}-bad-1"

    def run(*cmd: str) -> str:
        exec_id = api.exec_create(name, list(cmd))["Id"]
        return api.exec_start(exec_id).decode()

    assert run("cat", "/run/secrets/pw") == value
    assert "Read-only file system" in run("sh", "-c", "echo x > /run/secrets/pw 2>&1")
    info = api.inspect_container(name)
    assert value not in str(info) and value not in str(api.containers(all=True))
    assert value not in applied.stdout + applied.stderr

    (tmp_path / "pw.txt").write_text(value + "-rotated")
    plan = run_cli("plan", str(path), "--policy", str(policy))
    assert plan.returncode == 2 and f"{project}-bad-1" in plan.stdout
    assert value not in plan.stdout + plan.stderr


@pytest.mark.parametrize("pause", [0.3, 4.0])
def test_two_step_edit_removes_nothing(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    daemon: Callable[..., DaemonProcess],
    pause: float,
) -> None:
    """A 3-service file truncated and rewritten in two steps (first service, a pause, the
    rest), as `echo > file` and some editors do: no container is removed or recreated."""
    import time

    import yaml

    from tests.conftest import with_test_labels

    net = f"{project}-net"
    base = {"image": busybox_image, "init": True, "command": ["sleep", "100000"]}
    doc = {
        "version": 1,
        "project": project,
        "networks": {net: {}},
        "services": {n: {**base, "networks": [net]} for n in ("s1", "s2", "s3")},
    }
    text = yaml.safe_dump(with_test_labels(project, doc), sort_keys=False)
    cut = text.index("  s2:\n")
    path = tmp_path / "desired_state.yaml"
    path.write_text(text)
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    d = daemon(path, interval=3600.0, extra=("--policy", str(tmp_path / "policy.yaml")))
    wait_for(lambda: d.get("/readyz")[0] == 200, 60, what="ready")
    ids = sorted(
        c["Id"] for c in api.containers(filters={"label": f"io.reconciler.project={project}"})
    )
    assert len(ids) == 3

    with path.open("w") as f:  # truncate, first part
        f.write(text[:cut])
    time.sleep(pause)
    with path.open("a") as f:  # the rest
        f.write(text[cut:])
    wait_for(
        lambda: (d.metric("reconciler_desired_state_reloads_total", result="success") or 0) >= 1,
        DEADLINE_S,
        what="a reload",
    )
    time.sleep(7.0)  # past removal_settle (5 s): whatever would happen has happened
    label = {"label": f"io.reconciler.project={project}"}
    assert sorted(c["Id"] for c in api.containers(filters=label)) == ids
    assert not [e for e in d.lines() if e.get("event") == "action" and e.get("action") == "remove"]
    if pause >= 2.0:  # the file watch (every 1 s) saw the first part: held, not applied
        assert d.events(
            "a file that just changed removes or replaces services; reading it again once it "
            "has been still before acting on it"
        )
