"""Swarm services carry the registry login (pure): a service created or updated by
`--target swarm` sends `X-Registry-Auth` for its image's registry, as `docker service
update --with-registry-auth` does, so a worker can pull a private image; a `docker login`
made after the daemon started is the one sent.
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
