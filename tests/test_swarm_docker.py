"""`--target swarm` on a real one-node swarm: create, converge and hold, drift by hand,
config rotation, Swarm's rollbacks held, metrics and status. Local images only (no digest
is resolved, no registry asked)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import structlog
import yaml
from prometheus_client import CollectorRegistry

from reconciler.core import swarm_plan as sp
from reconciler.engine.swarm import spec as swarm_file
from reconciler.ops.metrics import Metrics
from reconciler.runtime.daemon import Daemon, Options
from reconciler.runtime.settle import apply as apply_once
from reconciler.targets.base import Settings
from reconciler.targets.swarm import adapter as swarm_target
from reconciler.targets.swarm.adapter import SwarmTarget
from tests.swarmkit import one_node_swarm, remove_project
from tests.test_stack_e2e import stack_images  # noqa: F401 (a fixture)

TEST = {"io.reconciler.test": "1"}


pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def swarm(api: docker.APIClient) -> Iterator[docker.APIClient]:
    with one_node_swarm(api):
        yield api


@pytest.fixture
def sproject(swarm: docker.APIClient) -> Iterator[str]:
    name = f"s{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_project(swarm, name)


@pytest.fixture
def swrite(sproject: str, tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    path = tmp_path / "desired_state.yaml"

    def write(doc: dict[str, Any]) -> Path:
        doc = {"version": 1, "project": sproject, **doc}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)
        return path

    return write


def wait(check: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what or check}")


def web(busybox_image: str, **extra: Any) -> dict[str, Any]:
    return {
        "image": busybox_image,
        "command": ["httpd", "-f", "-p", "8080", "-h", "/tmp"],
        "labels": TEST,
        "stop_grace_period": "1s",
        **extra,
    }


def reconciler(path: Path, api: docker.APIClient, tmp_path: Path) -> SwarmTarget:
    desired = swarm_file.load(path)
    return SwarmTarget(api, desired, Settings(state_dir=tmp_path))


def running(api: docker.APIClient, service: str) -> int:
    try:
        tasks = api.tasks(filters={"service": service, "desired-state": "running"})
    except docker.errors.NotFound:
        return 0
    return sum(t["Status"]["State"] == "running" for t in tasks)


def test_apply_creates_stack_named_services_then_holds_them_equal(
    swarm: docker.APIClient, swrite: Callable[..., Path], sproject: str, busybox_image: str
) -> None:
    """apply creates <project>_<service> with our labels on an attachable overlay network and
    serves through the routing mesh; a second apply and plan change nothing (no update, so
    Swarm's PreviousSpec stays the real previous one)."""
    from tests.conftest import free_port, run_cli

    port = free_port()
    ingress = free_port()
    ports = [f"{ingress}:8080", {"target": 8080, "published": port, "mode": "host"}]
    path = swrite({"services": {"web": web(busybox_image, replicas=1, ports=ports)}})
    done = run_cli("apply", "--target", "swarm", str(path), "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"create service {sproject}_web" in done.stdout
    svc = swarm.inspect_service(f"{sproject}_web")
    labels = svc["Spec"]["Labels"]
    assert labels["io.reconciler.managed"] == "true"
    assert labels["com.docker.stack.namespace"] == sproject
    assert svc["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    published = {
        (p["PublishedPort"], p["PublishMode"]) for p in svc["Spec"]["EndpointSpec"]["Ports"]
    }
    assert published == {(ingress, "ingress"), (port, "host")}
    net = swarm.inspect_network(f"{sproject}_default")
    assert net["Driver"] == "overlay" and net["Attachable"] is True
    assert running(swarm, f"{sproject}_web") == 1
    import urllib.error
    import urllib.request

    def served() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return r.status in (200, 404)
        except urllib.error.HTTPError as exc:
            return exc.code == 404  # httpd answers (its folder has no index)
        except OSError:
            return False

    # mode: host (the routing mesh's ingress port does not answer on this machine: no IPVS)
    wait(served, 60, "the task's host port to answer")
    version = svc["Version"]["Index"]
    again = run_cli("apply", "--target", "swarm", str(path))
    assert again.returncode == 0 and "in sync" in again.stdout, again.stdout + again.stderr
    planned = run_cli("plan", "--target", "swarm", str(path))
    assert planned.returncode == 0 and "in sync" in planned.stdout
    after = swarm.inspect_service(f"{sproject}_web")
    assert after["Version"]["Index"] == version
    assert "PreviousSpec" not in after
    status = run_cli("status", "--target", "swarm", str(path))
    assert status.returncode == 0
    node = swarm.info()["Name"]
    assert "TASKS PER NODE" in status.stdout and node in status.stdout, status.stdout
    assert "1 running" in status.stdout


def test_daemon_corrects_drift_by_hand_through_events(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """With a resync far away (600 s), Swarm's events alone bring back a hand `service
    scale`, `service update --image`, and a `service rm` followed by a network rm; the
    metrics report replicas from the tasks."""
    swarm.tag(busybox_image, f"{busybox_image.split(':')[0]}", "other")
    other = f"{busybox_image.split(':')[0]}:other"
    path = swrite({"services": {"web": web(busybox_image, replicas=2)}})
    metrics = Metrics(CollectorRegistry(), process=False)
    daemon = Daemon(
        Options(path=path, interval=600, listen=(), lock_dir=tmp_path, state_dir=tmp_path),
        swarm_target.KIND,
        swarm_file.load(path),
        metrics=metrics,
    )
    thread = __import__("threading").Thread(target=daemon.run, daemon=True)
    thread.start()
    name = f"{sproject}_web"
    figures: dict[str, float] = {}
    try:
        wait(lambda: running(swarm, name) == 2, 90, "2 tasks")

        def replicas() -> int:
            return int(swarm.inspect_service(name)["Spec"]["Mode"]["Replicated"]["Replicas"])

        def value(state: str) -> float | None:
            return metrics.registry.get_sample_value(
                "reconciler_service_replicas", {"service": "web", "state": state}
            )

        wait(lambda: value("running") == 2 and value("desired") == 2, 60, "metrics")
        t = time.monotonic()
        subprocess.run(
            ["docker", "service", "scale", "-d", f"{name}=4"], check=True, capture_output=True
        )
        wait(lambda: replicas() == 2, 30, "scale drift corrected")
        figures["scale"] = time.monotonic() - t

        t = time.monotonic()
        subprocess.run(
            ["docker", "service", "update", "-d", "--no-resolve-image", "--image", other, name],
            check=True,
            capture_output=True,
        )
        image = lambda: swarm.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"][  # noqa: E731
            "Image"
        ]
        wait(lambda: image() == busybox_image, 30, "image drift corrected")
        figures["image"] = time.monotonic() - t

        t = time.monotonic()
        swarm.remove_service(name)
        wait(lambda: swarm.services(filters={"name": name}), 30, "service recreated")
        figures["rm"] = time.monotonic() - t
        wait(lambda: running(swarm, name) == 2, 90, "2 tasks again")
        # Ready once a first-round pass saw every task run (READY=1 waits for Swarm).
        wait(lambda: daemon.readyz()[0], 60, "ready")
        assert daemon.healthz()[0]
        done = metrics.registry.get_sample_value(
            "reconciler_actions_total", {"action": "update", "kind": "service", "result": "success"}
        )
        assert done is not None and done >= 2
    finally:
        daemon.stop()
        thread.join(40)
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}), file=sys.stderr)


def test_changed_config_file_rotates_the_swarm_config(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """A config file's new content is a new Swarm config (content-hash name); the service is
    updated to it and the old config removed once nothing (not even PreviousSpec) needs it
    ... which keeps the old one while the service could still roll back to it."""
    cfg = tmp_path / "site"
    cfg.mkdir()
    (cfg / "index.html").write_text("one\n")
    path = swrite(
        {
            "services": {
                "web": web(
                    busybox_image,
                    command=["httpd", "-f", "-p", "8080", "-h", "/srv"],
                    configs=[{"source": str(cfg), "target": "/srv"}],
                )
            }
        }
    )
    rec = reconciler(path, swarm, tmp_path)
    assert apply_once(rec, timeout_s=120).ok
    first = {
        c["Spec"]["Name"]
        for c in swarm.configs(filters={"label": f"io.reconciler.project={sproject}"})
    }
    assert len(first) == 1 and next(iter(first)).startswith(f"{sproject}_index.html-")
    (cfg / "index.html").write_text("two\n")
    rec.desired = swarm_file.load(path)
    applied = apply_once(rec, timeout_s=120)
    assert applied.ok
    verbs = [r.text for r in applied.results]
    assert any(v.startswith("create config") for v in verbs)
    assert any(
        v.startswith(f"update service {sproject}_web (spec changed: configs.") for v in verbs
    )
    spec = swarm.inspect_service(f"{sproject}_web")
    names = [c["ConfigName"] for c in spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]]
    assert names and names[0] not in first
    live = {
        c["Spec"]["Name"]
        for c in swarm.configs(filters={"label": f"io.reconciler.project={sproject}"})
    }
    assert first <= live  # PreviousSpec still uses it: kept for a rollback
    # A third content: the first is now neither current nor previous, and goes.
    (cfg / "index.html").write_text("three\n")
    rec.desired = swarm_file.load(path)
    assert apply_once(rec, timeout_s=120).ok
    live = {
        c["Spec"]["Name"]
        for c in swarm.configs(filters={"label": f"io.reconciler.project={sproject}"})
    }
    assert not first & live and len(live) == 2


def test_a_revision_swarm_rolled_back_is_held_until_the_file_changes(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """An update whose tasks fail is rolled back by Swarm (update_config: rollback); the next
    passes leave it (held, persisted in the state dir: a new reconciler reads it), and a
    file that changes the service again is pushed."""
    deploy = {"update_config": {"monitor": "3s", "failure_action": "rollback"}}
    check = {"test": ["CMD", "true"], "interval": "1s"}  # start_period 0: Swarm leaves it out
    good = web(busybox_image, deploy=deploy, healthcheck=check)
    path = swrite({"services": {"web": good}})
    rec = reconciler(path, swarm, tmp_path)
    rec.metrics = Metrics(CollectorRegistry(), process=False)
    assert apply_once(rec, timeout_s=120).ok
    bad = {**good, "command": ["sh", "-c", "sleep 1; exit 3"]}
    path = swrite({"services": {"web": bad}})
    rec.desired = swarm_file.load(path)
    name = f"{sproject}_web"

    def state() -> str:
        return str((swarm.inspect_service(name).get("UpdateStatus") or {}).get("State", ""))

    applied = apply_once(rec, timeout_s=120)
    wait(lambda: state() == "rollback_completed", 120, "Swarm's rollback")
    rolled = rec.metrics.registry.get_sample_value(  # type: ignore[union-attr]
        "reconciler_rollouts_total", {"service": "web", "result": "rolled_back"}
    )
    assert rolled == 1
    fresh = reconciler(path, swarm, tmp_path)  # a restarted daemon: the record persists
    fresh.metrics = Metrics(CollectorRegistry(), process=False)
    the_plan, _ = fresh.run()
    assert not the_plan.actions, the_plan
    assert any("held" in n for n in the_plan.notes), the_plan.notes
    assert fresh.records.get("web").failed == fresh.desired.service("web").spec_hash
    (held,) = fresh.plan().services  # `plan`: the diff, held (why, when), never in sync
    assert not held.in_sync and [str(c) for c in held.changes] == [
        'command ["httpd", "-f", "-p", "8080", "-h", "/tmp"] -> ["sh", "-c", "sleep 1; exit 3"]'
    ]
    assert "is held (Swarm rolled it back at " in held.waits[0].text, held.waits
    # A hand scale resets Swarm's UpdateStatus; the hold stays (it is ours), and only the
    # replica count is put back (the rolled-back spec otherwise stays as Swarm left it).
    subprocess.run(
        ["docker", "service", "scale", "-d", f"{name}=3"], check=True, capture_output=True
    )
    assert state() == ""
    the_plan, _ = fresh.run()
    assert [sp.describe(a) for a in the_plan.actions] == [
        f"scale service {name} (drift: scaled to 3 by hand (revision held))"
    ]
    spec = swarm.inspect_service(name)["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert spec["TaskTemplate"]["ContainerSpec"]["Args"] == good["command"]
    assert not fresh.run()[0].actions
    # The file changes the service again: pushed.
    fixed = {**good, "environment": {"FIXED": "1"}}
    path = swrite({"services": {"web": fixed}})
    fresh.desired = swarm_file.load(path)
    with structlog.testing.capture_logs() as logs:
        applied = apply_once(fresh, timeout_s=120)
    assert applied.ok
    started = [e for e in logs if e["event"] == "rollout started"]  # as the host's line
    assert started and started[0]["service"] == "web", logs
    # Swarm runs the good command again: only the new variable differs (no start_period).
    assert started[0]["changes"] == ['environment.FIXED (unset) -> "1"']
    env = swarm.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["FIXED=1"]
    assert not fresh.records.get("web").failed
    completed = fresh.metrics.registry.get_sample_value(
        "reconciler_rollouts_total", {"service": "web", "result": "completed"}
    )
    assert completed == 1


def test_services_without_our_labels_are_never_touched(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """A service named like ours but not labelled ours is reported, neither updated nor
    removed (ours cannot be created: a failed step, not in sync, none of its tasks counted as
    ours); a service of ours that left the file is removed."""
    foreign = swarm.create_service(
        {"ContainerSpec": {"Image": busybox_image, "Args": ["sleep", "600"]}},
        name=f"{sproject}_web",
        labels={"io.reconciler.project": sproject},  # the cleanup label, not managed=true
    )
    path = swrite({"services": {"web": web(busybox_image), "gone": web(busybox_image)}})
    rec = reconciler(path, swarm, tmp_path)
    taken = (
        f"create service {sproject}_web (missing: the name is taken by service "
        f"{foreign['ID'][:12]}, which reconciler does not manage)"
    )
    version = swarm.inspect_service(foreign["ID"])["Version"]["Index"]
    the_plan, done = rec.run()
    assert [sp.describe(a) for a in the_plan.actions if a.kind == "service"] == [
        taken,
        f"create service {sproject}_gone (missing)",
    ]
    assert [r.outcome for r in done.results if r.action.kind == "service"] == [
        "error",
        "success",
    ]
    assert "which reconciler does not manage; it is left alone" in str(done.results[1].error)
    assert any("without our labels" in n for n in the_plan.notes)
    assert not rec.plan().services[0].in_sync
    assert rec.tasks().get(f"{sproject}_web") is None  # its tasks are not ours
    status = rec.status(tmp_path / "none.json", {})
    assert "the name is taken by service" in status.splitlines()[1], status
    path = swrite({"services": {"web": web(busybox_image)}})
    rec.desired = swarm_file.load(path)
    the_plan, _ = rec.run()
    assert [sp.describe(a) for a in the_plan.actions] == [
        taken,
        f"remove service {sproject}_gone (no longer in the file)",
    ]
    assert swarm.inspect_service(foreign["ID"])["Version"]["Index"] == version


def test_a_removed_service_and_its_network_come_back(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """`docker service rm` then `docker network rm` by hand (as a half `stack rm`): apply
    creates the network, then the service on it."""
    path = swrite({"services": {"web": web(busybox_image)}, "networks": {"back": {}}})
    doc = yaml.safe_load(path.read_text())
    doc["services"]["web"]["networks"] = ["back"]
    path.write_text(yaml.safe_dump(doc))
    rec = reconciler(path, swarm, tmp_path)
    assert apply_once(rec, timeout_s=120).ok
    swarm.remove_service(f"{sproject}_web")
    net = f"{sproject}_back"

    def network_gone() -> bool:
        try:
            swarm.remove_network(net)
            return True
        except docker.errors.APIError:  # tasks still attached for a moment
            return False

    wait(network_gone, 60, "the network removed by hand")
    applied = apply_once(rec, timeout_s=120)
    assert applied.ok
    # The engine lists a removed overlay network for a few seconds more: until it stops,
    # the service's create fails (transient, retried); then the network comes first.
    assert [r.text for r in applied.results if r.outcome == "success"] == [
        f"create network {net} (missing)",
        f"create service {sproject}_web (drift: removed by hand)",  # README: drift put back
    ]
    attached = swarm.inspect_service(f"{sproject}_web")["Spec"]["TaskTemplate"]["Networks"]
    assert attached[0]["Target"] == swarm.inspect_network(net)["Id"]
    assert attached[0]["Aliases"] == ["web"]


def test_the_seed_stack_on_a_swarm(
    swarm: docker.APIClient,
    sproject: str,
    tmp_path: Path,
    stack_images: dict[str, str],  # noqa: F811 (the fixture imported above)
) -> None:
    """desired_state.swarm.yaml with stand-in images: HAProxy finds every Grafana task
    through tasks.grafana (2, then 3 after a file edit, no HAProxy restart), Prometheus
    finds the node-exporter of each node through tasks.node-exporter (up == 1)."""
    import shutil
    import urllib.parse
    import urllib.request

    from tests.conftest import free_port

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "configs", tmp_path / "configs")
    doc = yaml.safe_load((root / "desired_state.swarm.yaml").read_text())
    doc["project"] = sproject
    lb, prom, exporter = free_port(), free_port(), free_port()
    services = doc["services"]
    for name, body in services.items():
        body["image"] = stack_images[name]
        body["labels"] = TEST
        body["stop_grace_period"] = "2s"
    services["haproxy"]["ports"] = [{"target": 80, "published": lb, "mode": "host"}]
    services["prometheus"]["ports"] = [{"target": 9090, "published": prom, "mode": "host"}]
    services["node-exporter"]["ports"] = [{"target": 9100, "published": exporter, "mode": "host"}]
    services["grafana"].pop("user")  # the stand-in's files are root's
    services["grafana"]["healthcheck"]["start_period"] = "1s"
    services["grafana"]["healthcheck"]["interval"] = "1s"
    services["grafana"]["deploy"]["update_config"]["monitor"] = "1s"
    path = tmp_path / "desired_state.swarm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    rec = reconciler(path, swarm, tmp_path)
    applied = apply_once(rec, timeout_s=240)
    assert applied.ok, [(r.text, r.error) for r in applied.results]

    def backends() -> set[str]:
        seen = set()
        for _ in range(12):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{lb}/", timeout=3) as r:
                    seen.add(r.read().decode().strip())
            except OSError:
                pass
        return seen

    wait(lambda: len(backends()) == 2, 90, "HAProxy to reach both Grafana tasks")
    haproxy_task = swarm.tasks(filters={"service": f"{sproject}_haproxy"})[0]["ID"]
    services["grafana"]["replicas"] = 3
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    rec.desired = swarm_file.load(path)
    assert apply_once(rec, timeout_s=240).ok
    wait(lambda: len(backends()) == 3, 90, "HAProxy to reach the third Grafana task")
    assert [t["ID"] for t in swarm.tasks(filters={"service": f"{sproject}_haproxy"})] == [
        haproxy_task
    ]

    def exporters_up() -> list[Any]:
        query = urllib.parse.quote('up{job="node-exporter"}')
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{prom}/api/v1/query?query={query}", timeout=3
            ) as r:
                result = json.loads(r.read())["data"]["result"]
        except OSError:
            return []
        return [x for x in result if x["value"][1] == "1"]

    nodes = len(swarm.nodes())
    up = wait(lambda: len(exporters_up()) == nodes and exporters_up(), 120, "node-exporters up")
    assert len(up) == nodes


def test_cli_run_reload_and_down_on_swarm(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`reconciler run` with RECONCILER_TARGET=swarm: /metrics reports the tasks; `reconciler
    reload` applies an edit; a bad file is refused by both (the service stays); SIGTERM
    ends it with 0; `down` removes our services, configs and networks."""
    from tests.conftest import DaemonProcess, run_cli, wait_for

    monkeypatch.setenv("RECONCILER_TARGET", "swarm")
    path = swrite({"services": {"web": web(busybox_image, replicas=2)}})
    daemon = DaemonProcess(path, tmp_path, interval=600)
    name = f"{sproject}_web"
    try:
        wait_for(
            lambda: (
                daemon.metric("reconciler_service_replicas", service="web", state="running") == 2
            ),
            90,
            what="2 running tasks on /metrics",
        )
        assert daemon.metric("reconciler_service_replicas", service="web", state="desired") == 2
        path = swrite({"services": {"web": web(busybox_image, replicas=3)}})
        done = run_cli("reload", str(path), "--lock-dir", str(tmp_path), "--timeout", "60")
        assert done.returncode == 0, done.stderr
        wait(lambda: running(swarm, name) == 3, 90, "3 tasks")
        doc = yaml.safe_load(path.read_text())
        doc["services"]["web"]["container_name"] = "nope"
        path.write_text(yaml.safe_dump(doc))
        bad = run_cli("reload", str(path), "--lock-dir", str(tmp_path), "--timeout", "60")
        assert bad.returncode == 2 and "container_name" in bad.stderr  # refused up front
        daemon.proc.send_signal(__import__("signal").SIGHUP)  # the daemon refuses it too
        wait_for(lambda: daemon.events("desired state rejected; keeping the last good one"), 30)
        assert swarm.inspect_service(name)["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
    finally:
        daemon.proc.send_signal(__import__("signal").SIGTERM)
        assert daemon.proc.wait(40) == 0
        daemon.log.close()
    swrite({"services": {"web": web(busybox_image, replicas=3)}})
    down = run_cli("down", str(path), "--lock-dir", str(tmp_path), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"remove service {name}" in down.stdout
    assert f"remove network {sproject}_default" in down.stdout
    label = f"io.reconciler.project={sproject}"
    assert not swarm.services(filters={"label": label})
    # (the engine lists a removed overlay network a few seconds longer)
    wait(lambda: not swarm.networks(filters={"label": label}), 60, "the network gone")


def test_a_secret_reaches_the_task_and_rotates_when_its_file_is_rewritten(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """The secret's file is in the task at /run/secrets/<target>; a rewritten file is a new
    Swarm secret and a rolling update; the first one goes once nothing can roll back to it."""
    import os

    secret = tmp_path / "token.txt"
    secret.write_text("first-token\n")
    doc = {
        "secrets": {"token": {"file": str(secret)}},
        "services": {"web": web(busybox_image, secrets=["token"])},
    }
    path = swrite(doc)
    rec = reconciler(path, swarm, tmp_path)
    assert apply_once(rec, timeout_s=120).ok
    label = f"com.docker.swarm.service.name={sproject}_web"

    def content() -> str:
        for c in swarm.containers(filters={"label": label, "status": "running"}):
            run = swarm.exec_create(c["Id"], ["cat", "/run/secrets/token"])
            return swarm.exec_start(run["Id"]).decode().strip()
        return ""

    assert wait(content, 60, "the secret in the task") == "first-token"
    names = []
    for value in ("second-token", "third-token"):
        secret.write_text(value + "\n")
        st = secret.stat()
        os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        rec.desired = swarm_file.load(path)
        names.append(rec.desired.secrets[0].name)
        assert apply_once(rec, timeout_s=120).ok
        wait(lambda v=value: content() == v, 60, f"{value} in the task")  # type: ignore[misc]
    live = {
        s["Spec"]["Name"]
        for s in swarm.secrets(filters={"label": f"io.reconciler.project={sproject}"})
    }
    assert live == set(names)  # the current one and the one a rollback would need


@pytest.mark.serial  # Swarm's own monitor judges the failing tasks: a loaded CI misleads it
def test_a_paused_rollback_is_settled_and_a_hand_rollback_is_drift(
    swarm: docker.APIClient,
    swrite: Callable[..., Path],
    sproject: str,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """Swarm's rollback fails too (rollback_paused): it fires `rollout failed` (never a
    resolved `rolled back` beside it) and is settled: an edit of the file is pushed. Its
    failing tasks are a crash loop (condition, status). Then a hand `docker service rollback`
    is drift put back (drift_corrected), not a failed update."""
    seen: list[Any] = []
    # Monitors long enough that a task which fails at once is seen failing under a loaded CI
    # (a 2 s window can close before the task even starts, and Swarm then calls it a success).
    rollback = {"monitor": "10s", "failure_action": "pause"}
    first = {"update_config": {"monitor": "2s", "failure_action": "continue"}}
    worker = {
        "image": busybox_image,
        "command": ["sh", "-c", "sleep 2; exit 1"],  # fails once running
        "labels": TEST,
        "deploy": {**first, "rollback_config": rollback},
    }
    path = swrite({"services": {"worker": worker}})
    rec = SwarmTarget(
        swarm, swarm_file.load(path), Settings(state_dir=tmp_path, record=seen.append)
    )
    rec.run()
    name = f"{sproject}_worker"

    def state() -> str:
        return str((swarm.inspect_service(name).get("UpdateStatus") or {}).get("State", ""))

    failing = {"monitor": "10s", "failure_action": "rollback"}
    bad = {
        **worker,
        "command": ["sh", "-c", "sleep 2; exit 2"],
        "deploy": {"update_config": failing, "rollback_config": rollback},
    }
    rec.desired = swarm_file.load(swrite({"services": {"worker": bad}}))
    rec.run()

    def paused() -> bool:
        rec.reconcile("resync", "interval")  # a daemon's pass: plan, act, tasks, crash loops
        return state() == "rollback_paused"

    try:
        wait(paused, 120, "Swarm's rollback to pause")
    except AssertionError as exc:  # say what Swarm did instead
        status = swarm.inspect_service(name).get("UpdateStatus")
        raise AssertionError(f"{exc}; UpdateStatus {status}") from exc

    def looping() -> bool:
        rec.reconcile("resync", "interval")
        return any(e.kind == "crash_loop" and e.result == "firing" for e in seen)

    try:
        wait(looping, 90, "the crash loop")
    except AssertionError as exc:
        tasks = [t["Status"] for t in swarm.tasks(filters={"service": name})]
        raise AssertionError(f"{exc}; tasks {tasks}") from exc
    assert "worker: CrashLoopBackOff (slot 1: " in rec.status(tmp_path / "none.json", {})
    kinds = [(e.kind, e.result) for e in seen if e.kind in ("rolled_back", "rollout_failed")]
    assert ("rollout_failed", "firing") in kinds and ("rolled_back", "resolved") not in kinds
    started = [e for e in seen if e.kind == "rollout_started"]
    assert (
        started
        and 'command ["sh", "-c", "sleep 2; exit 1"] -> ["sh", "-c", "sleep 2; exit 2"]'
        in started[0].data["diff"]
    )
    assert "deploy.update_config.failure_action continue -> rollback" in started[0].data["diff"]
    # An edit while the rollback is paused is pushed.
    good = {**bad, "command": ["sleep", "600"], "environment": {"B": "1"}}
    rec.desired = swarm_file.load(swrite({"services": {"worker": good}}))
    the_plan, _ = rec.run()
    assert [a.verb for a in the_plan.actions] == ["update"], the_plan
    env = swarm.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["B=1"]
    wait(lambda: rec.run() and state() == "completed", 120, "the good update")
    # A hand rollback (to the paused spec): drift, put back.
    subprocess.run(["docker", "service", "rollback", "-d", name], check=True, capture_output=True)
    wait(lambda: state().startswith("rollback"), 60, "the hand rollback")
    before = len(seen)
    the_plan, _ = rec.run()
    assert [a.reason for a in the_plan.actions] == ["drift: rolled back by hand"], the_plan
    assert not [e for e in seen[before:] if e.kind == "rolled_back"]
    assert [e.kind for e in seen[before:] if e.kind == "drift_corrected"] == ["drift_corrected"]
    assert swarm.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["B=1"]
