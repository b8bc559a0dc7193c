"""Shared fixtures: a real Docker engine, a local busybox image, uniquely named projects.

Tests that need Docker skip when no engine answers, unless RECONCILER_REQUIRE_DOCKER=1
(CI), where they fail instead. Every resource a test makes carries the label
`io.reconciler.test=1` and is removed afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from reconciler.config import secrets
from tests import swarmkit
from tests.enginekit import EventRecorder, ImageBuildError, build_scratch_image, remove_labelled

TEST_LABEL = "io.reconciler.test"
OWNER_LABEL = "io.reconciler.test.owner"
BUSYBOX_IMAGE = "reconciler-test-busybox:1"
REQUIRE_DOCKER = os.environ.get("RECONCILER_REQUIRE_DOCKER") == "1"


def _engine() -> docker.APIClient | None:
    try:
        api = docker.from_env(timeout=60).api
        api.ping()
        return api
    except Exception:
        return None


@pytest.fixture(autouse=True)
def _no_secret_from_another_test() -> Iterator[None]:
    """Values a test marked secret (config.secrets, process-wide) are not another test's:
    under pytest-xdist a worker runs tests in any order."""
    yield
    secrets.forget()


# Modules whose fixtures are module- or session-wide and costly (a systemd host, a registry,
# a swarm's services, the stack's images): under pytest-xdist each runs on one worker.
ONE_WORKER = {
    "test_registry_docker",
    "test_stack_e2e",
    "test_swarm_docker",
    "test_swarm_sim_contract_docker",
    "test_systemd_real",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(scope="session")
def api() -> docker.APIClient:
    """The low-level Docker client; skip (or fail in CI) without an engine."""
    client = _engine()
    if client is None:
        message = "no Docker engine answers (start dockerd, or see .ci/run)"
        if REQUIRE_DOCKER:
            pytest.fail(message)
        pytest.skip(message)
    return client


@pytest.fixture(scope="session", autouse=True)
def _swarm_users_in_the_runs_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The swarm's use count lives in this run's temporary folder (shared by its pytest-xdist
    workers: the parent of each worker's), which pytest itself rotates away."""
    base = tmp_path_factory.getbasetemp()
    swarmkit.USERS_DIR = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def state_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rollout records of every daemon and CLI the tests start go to a temporary folder."""
    path = tmp_path_factory.mktemp("state")
    os.environ["STATE_DIRECTORY"] = str(path)
    return path


@pytest.fixture(scope="session")
def busybox_image(api: docker.APIClient) -> str:
    """A 2 MB busybox image built locally (no registry is reachable)."""
    try:
        return build_scratch_image(api, BUSYBOX_IMAGE)
    except ImageBuildError as exc:
        pytest.fail(str(exc))


def cleanup(api: docker.APIClient, project: str) -> None:
    """Force-remove every container, network and volume of a test project."""
    for label in (f"io.reconciler.project={project}", f"{OWNER_LABEL}={project}"):
        remove_labelled(api, label)


@pytest.fixture
def project(api: docker.APIClient) -> Iterator[str]:
    """A unique project name; everything labelled with it is removed afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        cleanup(api, name)


def with_test_labels(project: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Copy of a desired-state dict with the test labels on every service, network, volume."""
    doc = yaml.safe_load(yaml.safe_dump(doc))
    doc.setdefault("version", 1)
    doc["project"] = project
    labels = {TEST_LABEL: "1", OWNER_LABEL: project}
    for section in ("services", "networks", "volumes"):
        for name, body in list((doc.get(section) or {}).items()):
            body = body or {}
            body["labels"] = {**labels, **(body.get("labels") or {})}
            doc[section][name] = body
    return doc


@pytest.fixture
def write_state(project: str, tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a desired-state file for this test's project (test labels added)."""
    path = tmp_path / "desired_state.yaml"

    def write(doc: dict[str, Any]) -> Path:
        text = yaml.safe_dump(with_test_labels(project, doc), sort_keys=False)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic, as editors and config management do
        return path

    return write


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m reconciler ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll until `predicate()` is truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def running_names(api: docker.APIClient, project: str) -> list[str]:
    cs = api.containers(filters={"label": f"io.reconciler.project={project}", "status": "running"})
    return sorted(c["Names"][0].lstrip("/") for c in cs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free on 127.0.0.1 right now."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    pytest.fail("no two consecutive free ports on 127.0.0.1")


@pytest.fixture
def record_events(api: docker.APIClient, project: str) -> Iterator[Callable[..., EventRecorder]]:
    """Start recording Docker events live (all closed afterwards): call it BEFORE the fault.

    `record_events()` records the container events of this test's project (or of the
    project given); `record_events(filters={...})` takes Docker's event filters as they are.
    """
    recorders: list[EventRecorder] = []
    default = project

    def record(
        project: str | None = None, *, filters: dict[str, Any] | None = None
    ) -> EventRecorder:
        if filters is None:
            label = f"io.reconciler.project={project or default}"
            filters = {"type": ["container"], "label": [label]}
        recorder = EventRecorder(filters)
        recorders.append(recorder)
        return recorder

    yield record
    for recorder in recorders:
        recorder.close()


class DaemonProcess:
    """`python -m reconciler run` in the background, its JSON log lines collected."""

    def __init__(
        self, path: Path, tmp: Path, interval: float = 60.0, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.log_path = tmp / "daemon.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "run",
                str(path),
                "--interval",
                str(interval),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--lock-dir",
                str(tmp),
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("event") == name]

    def passes(self) -> list[dict[str, Any]]:
        """The daemon's log lines, one per finished pass (with `trigger` and `actions`)."""
        return self.events("pass")

    def forced_pass(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGHUP (re-read the file, then a pass) and wait until the pass it asked for has
        finished; return that pass's log line."""
        before = sum(p.get("trigger") == "signal" for p in self.passes())
        self.proc.send_signal(signal.SIGHUP)
        done = wait_for(
            lambda: [p for p in self.passes() if p.get("trigger") == "signal"][before:],
            timeout,
            what="the pass forced by SIGHUP to finish",
        )
        return done[0]

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of sample `name` with `labels` on /metrics now (None when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path: Path, project: str) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons for this test; each is stopped afterwards.

    It depends on `project` so that its daemons are stopped BEFORE the project's resources
    are removed (fixtures are torn down in reverse): a daemon still running would heal
    what the cleanup removes, and leave it behind.
    """
    started: list[DaemonProcess] = []

    def start(path: Path, interval: float = 60.0, extra: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(path, tmp_path, interval, extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def restart_dockerd(down_for: float = 10.0, while_down: Callable[[], Any] | None = None) -> None:
    """Stop the local dockerd, keep it down at least `down_for` seconds (running `while_down`
    meanwhile, e.g. to watch the daemon notice), then start it again the same way; it is
    started again also when `while_down` fails."""
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    pids = found.stdout.split()
    if os.geteuid() != 0 or len(pids) != 1:
        pytest.fail("restarting dockerd needs root and exactly one local dockerd process")
    pid = int(pids[0])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(
            lambda: not Path(f"/proc/{pid}").exists(), 60, interval=0.1, what="dockerd to exit"
        )
        stopped = time.monotonic()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_for - (time.monotonic() - stopped)))  # the outage itself
    finally:
        if not Path(f"/proc/{pid}").exists():
            _start_dockerd(argv)


def _start_dockerd(argv: list[bytes]) -> None:
    Path("/var/run/docker.pid").unlink(missing_ok=True)
    log = open(os.path.join(tempfile.gettempdir(), "dockerd-restarted.log"), "ab")  # noqa: SIM115
    subprocess.Popen(
        [a.decode() for a in argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(_engine, 60, interval=0.5, what="dockerd to answer again")
