"""Image updates on Swarm (pure): a service created or updated by `--target swarm` sends
`X-Registry-Auth` for its image's registry (as `docker service update --with-registry-auth`),
with a `docker login` made after the daemon started; an update Swarm paused (failure_action
pause) no longer leaves the version the policy took pending forever.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from reconciler.core.swarm_model import CreateService, SwarmService, UpdateService
from reconciler.engine.swarm.engine import SwarmEngine

REGISTRY = "127.0.0.1:5917"
IMAGE = f"{REGISTRY}/team/app:1.2.0@sha256:{'a' * 64}"


def login(folder: Path, password: str) -> None:
    auth = base64.b64encode(f"deploy:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": auth}}}))


def test_create_and_update_send_the_current_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    login(tmp_path, "first")
    api = docker.APIClient(version="1.41")
    sent: list[dict[str, Any]] = []

    def post_json(url: str, data: Any = None, **kw: Any) -> requests.Response:
        header = (kw.get("headers") or {}).get("X-Registry-Auth")
        sent.append(json.loads(base64.urlsafe_b64decode(header)) if header else {})
        response = requests.Response()
        response.status_code, response._content = 200, b'{"ID": "s1"}'
        return response

    monkeypatch.setattr(api, "_post_json", post_json)
    body = {
        "Name": "p_app",
        "Labels": {},
        "Mode": {"Replicated": {"Replicas": 1}},
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
        "UpdateConfig": {},
        "RollbackConfig": {},
        "EndpointSpec": {},
    }
    svc = SwarmService("app", "p_app", json.dumps(body), "h1")
    engine = SwarmEngine(api)

    engine.execute(CreateService(spec=svc))
    assert sent[-1]["username"] == "deploy" and sent[-1]["password"] == "first"
    assert sent[-1]["serveraddress"] == REGISTRY

    login(tmp_path, "second-password")  # `docker login` again while the daemon runs
    engine.execute(UpdateService(spec=svc, id="s1", version=3, reason="spec changed"))
    assert sent[-1]["password"] == "second-password"


def test_a_paused_swarm_update_of_a_taken_version_is_no_longer_pending(tmp_path: Path) -> None:
    """failure_action pause: Swarm stops the update of the version the policy took; the
    record settles (as the host's paused rollout), so the registry is asked again."""
    from dataclasses import replace

    import yaml

    from reconciler.core import swarm_plan as sp
    from reconciler.core.events import Event
    from reconciler.engine.swarm import spec as swarm_file
    from reconciler.targets.base import Settings
    from reconciler.targets.swarm.images import SwarmImages
    from tests.swarm_simulator import simulate

    doc = {
        "version": 1,
        "project": "demo",
        "services": {
            "app": {
                "image": f"{REGISTRY}/team/app:1.1.0",
                "x-reconciler": {"update": {"semver": "^1.1"}},
                "deploy": {"update_config": {"failure_action": "pause"}},
            }
        },
    }
    desired = swarm_file.parse(yaml.safe_dump(doc), source="d.yaml", base_dir=tmp_path, environ={})
    events: list[Event] = []
    images = SwarmImages(SwarmEngine(docker.APIClient(version="1.41")), "demo",
                         Settings(state_dir=tmp_path, record=events.append))  # fmt: skip
    base = f"{REGISTRY}/team/app:1.1.0"
    rec = replace(images.states.get("app", base), tag="1.1.0", digest="sha256:" + "1" * 64)
    images.states.put("app", rec.taken("1.2.0", "sha256:" + "2" * 64))
    resolved = images.resolve(desired)
    observed = simulate(sp.SwarmObserved(), sp.plan(resolved, sp.SwarmObserved()), "demo")
    updating = replace(observed.services[0], update_state="updating")
    images.judge(desired, replace(observed, services=(updating,)), {})
    assert images.states.get("app", base).pending  # still rolling out
    paused = replace(observed.services[0], update_state="paused")
    images.judge(desired, replace(observed, services=(paused,)), {})
    after = images.states.get("app", base)
    assert after.pending == "" and after.tag == "1.2.0" and after.held == []
    assert [e.cause for e in events if e.kind == "image_update"] == ["rollout paused"]
