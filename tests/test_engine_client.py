"""The engine's shared client without an engine: the lazy API version (no `/version` call,
the same error as `connect()` when the engine is down), and `observe_all` (what plan reads:
the project, the other containers, outside namespaces) from three list calls."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from reconciler.core.desired import LABEL_MANAGED, LABEL_PROJECT
from reconciler.engine.client import connect
from reconciler.engine.host import observe as reads
from reconciler.engine.host.engine import Engine
from reconciler.errors import EngineUnavailable

VERSION = "1.43"


class _FakeDocker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers every path with an empty list and `API-Version`; `versioned_only` answers an
    unversioned path (but /version) as a daemon without that route would: 404, no header."""

    daemon_threads = True

    def __init__(self, path: Path, versioned_only: bool) -> None:
        self.paths: list[str] = []
        self.versioned_only = versioned_only
        super().__init__(str(path), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeDocker

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        route = self.path.partition("?")[0]
        versioned = route.startswith("/v1.")
        if self.server.versioned_only and not versioned and route != "/version":
            self._answer(404, {"message": "page not found"}, header=False)
            return
        route = route.split("/", 2)[2] if versioned else route.lstrip("/")
        body: Any = {"ApiVersion": VERSION} if route == "version" else []
        if route == "volumes":
            body = {"Volumes": []}
        self._answer(200, body, header=True)

    def _answer(self, status: int, body: Any, *, header: bool) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        if header:
            self.send_header("Api-Version", VERSION)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["unversioned", "versioned-only"])
def fake(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[_FakeDocker]:
    server = _FakeDocker(tmp_path / "docker.sock", versioned_only=request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_lazy_client_takes_the_version_of_the_first_answer(fake: _FakeDocker) -> None:
    api = connect(lazy=True)
    assert fake.paths == []  # connecting asks nothing
    Engine(api).observe_all("p")
    assert api.api_version == VERSION
    later = [p.partition("?")[0] for p in fake.paths[-2:]]
    assert later == [f"/v{VERSION}/networks", f"/v{VERSION}/volumes"]
    if fake.versioned_only:  # asked once, then the request sent again with the version
        assert [p.partition("?")[0] for p in fake.paths[:3]] == [
            "/containers/json",
            "/version",
            f"/v{VERSION}/containers/json",
        ]
    else:
        assert "/version" not in fake.paths and len(fake.paths) == 3


def test_a_lazy_client_fails_as_connect_when_the_engine_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'absent.sock'}")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    with pytest.raises(EngineUnavailable) as eager:
        connect()
    engine = Engine(connect(lazy=True))
    with pytest.raises(EngineUnavailable) as lazy:
        engine.observe_all("p")
    assert str(lazy.value) == str(eager.value)
    assert str(eager.value).startswith("cannot reach the Docker engine: ")


# --------------------------------------------------------------------------- observe_all

ID_A, ID_B, ID_C = "a" * 64, "b" * 64, "c1" * 32


def _listed(cid: str, name: str, labels: dict[str, str], ports: tuple[int, ...] = ()) -> dict:
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Labels": labels,
        "State": "running",
        "Status": "Up 3 minutes",
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": p} for p in ports],
        "HostConfig": {"NetworkMode": "bridge"},
        "NetworkSettings": {"Networks": {"bridge": {}}},
    }


class _FakeApi:
    """A low-level client's list and inspect calls over fixed containers, recorded."""

    def __init__(self) -> None:
        ours = {LABEL_MANAGED: "true", LABEL_PROJECT: "p"}
        theirs = {LABEL_MANAGED: "true", LABEL_PROJECT: "q"}
        self.listed = [
            _listed(ID_A, "p-web-1", ours),
            _listed(ID_B, "q-web-1", theirs, (8080,)),
            _listed(ID_C, "sidecar", {"com.docker.compose.project": "p"}),
        ]
        self.calls: list[str] = []

    def containers(self, all: bool = False, filters: dict[str, list[str]] | None = None) -> list:
        self.calls.append("containers")
        if filters is None:
            return self.listed
        assert filters == reads.project_filter("p")
        return [c for c in self.listed if reads.is_ours(c, "p")]

    def networks(self) -> list:
        self.calls.append("networks")
        return [{"Name": "p_default", "Id": "n1", "Labels": {LABEL_MANAGED: "true", "x": "y"}}]

    def volumes(self) -> dict:
        self.calls.append("volumes")
        return {"Volumes": [{"Name": "data", "Labels": None}]}

    def inspect_container(self, name: str) -> dict:
        self.calls.append(f"inspect {name}")
        found = [c for c in self.listed if f"/{name}" in c["Names"]]
        found = found or [c for c in self.listed if c["Id"].startswith(name)]
        if len(found) != 1:
            raise docker.errors.NotFound(f"No such container: {name}")
        return {"Id": found[0]["Id"]}


def test_observe_all_says_what_the_three_reads_say_in_three_calls() -> None:
    api = _FakeApi()
    engine = Engine(api)  # type: ignore[arg-type]
    view = engine.observe_all("p", ["sidecar", ID_B, "c1c1", "gone", "dead"])
    assert api.calls == ["containers", "networks", "volumes", "inspect c1c1", "inspect dead"]
    assert view.observed == engine.observe("p")
    assert view.others == engine.others("p")
    assert [c.name for c in view.observed.containers] == ["p-web-1"]
    assert [c.name for c in view.others] == ["q-web-1", "sidecar"]
    # by name, by full id, by id prefix (inspected: Docker resolves prefixes); absent ones out
    assert view.outside == {"c1c1": ID_C, "sidecar": ID_C, ID_B: ID_B}
    api.calls.clear()
    assert engine.find_containers(["sidecar", "c1c1", "gone"]) == {"sidecar": ID_C, "c1c1": ID_C}


def test_observe_all_without_namespaces_makes_no_inspect() -> None:
    api = _FakeApi()
    Engine(api).observe_all("p")  # type: ignore[arg-type]
    assert api.calls == ["containers", "networks", "volumes"]
