"""A config's `check` against the real engine: the daemon runs it in the container (docker
exec) before the reload signal; a bad edit is reported and not signalled, a good one is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.conftest import DaemonProcess, wait_for

pytestmark = pytest.mark.docker

DEADLINE_S = 60.0
# PID 1 traps SIGHUP and appends what the config says then: the marker of each signal.
TRAP = "trap 'cat /cfg/app.conf >> /tmp/hups' HUP; touch /tmp/hups; while :; do sleep 1; done"


def hups(api: docker.APIClient, name: str) -> str:
    exec_id = api.exec_create(name, ["cat", "/tmp/hups"])
    return api.exec_start(exec_id).decode()


def test_a_bad_edit_is_rejected_not_signalled_and_a_good_one_is(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    conf = cfg / "app.conf"
    conf.write_text("v1\n")
    path = write_state(
        {
            "services": {
                "web": {
                    "image": busybox_image,
                    "command": ["sh", "-c", TRAP],
                    "configs": [
                        {
                            "source": "cfg",
                            "target": "/cfg",
                            "reload_signal": "SIGHUP",
                            "check": ["sh", "-c", "! grep -q garbage /cfg/app.conf"],
                        }
                    ],
                }
            }
        }
    )
    name = f"{project}-web-1"
    d = daemon(path, interval=3600.0)  # the config folder's watch acts, not a resync
    wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready")
    container_id = api.inspect_container(name)["Id"]

    # A good edit: checked, then signalled.
    with conf.open("a") as f:
        f.write("v2\n")
    wait_for(lambda: "v2" in hups(api, name), DEADLINE_S, what="SIGHUP after the good edit")

    # A bad edit: the check refuses it; no signal, an error, a metric, a condition.
    with conf.open("a") as f:
        f.write("garbage line here\n")
    rejected = wait_for(
        lambda: d.events(
            "config edit REJECTED by its check: not signalled; the container keeps running its "
            "last good config, and will FAIL if it restarts before the file is fixed"
        ),
        DEADLINE_S,
        what="the bad edit to be rejected",
    )
    assert rejected[0]["service"] == "web" and rejected[0]["exit_code"] == 1
    failed = wait_for(
        lambda: [
            e for e in d.events("action") if e.get("action") == "check" and e["result"] == "error"
        ],
        DEADLINE_S,
        what="the failed check's action line",
    )
    assert failed and "exited 1" in failed[0]["error"] and "not signalled" in failed[0]["error"]
    signals = wait_for(
        lambda: (lambda seen: seen if len(seen) >= 2 else None)(
            [e for e in d.events("action") if e.get("action") == "signal"]
        ),
        DEADLINE_S,
        what="the skipped signal's line",
    )
    assert [e["result"] for e in signals] == ["success", "skipped"], signals  # the bad: skipped
    assert "garbage" not in hups(api, name)
    assert d.metric("reconciler_config_rejected", service="web") == 1
    d.forced_pass()  # another pass does not check (nor signal) the same content again
    assert len([e for e in d.events("action") if e.get("action") == "check"]) == 2
    assert "garbage" not in hups(api, name)

    # Fixed: checked again, signalled, the condition resolved.
    conf.write_text("v1\nv2\nv3\n")
    wait_for(lambda: "v3" in hups(api, name), DEADLINE_S, what="SIGHUP after the fix")
    wait_for(
        lambda: d.metric("reconciler_config_rejected", service="web") == 0,
        DEADLINE_S,
        what="the rejection to resolve",
    )
    assert d.events("config edit accepted again")
    assert "garbage" not in hups(api, name)
    assert api.inspect_container(name)["Id"] == container_id  # reloaded in place throughout
