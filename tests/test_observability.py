"""Metrics, health endpoints, logs, and the shipped dashboard and alert rules,
checked by Prometheus's own tools and a real Prometheus server."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import structlog
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.config import loader as desired
from reconciler.ops.http import serve
from reconciler.ops.logs import REDACTED, redact_secrets
from reconciler.ops.metrics import ROLLOUT_RESULTS, Metrics
from tests.conftest import REQUIRE_DOCKER, DaemonProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def tool(name: str) -> str:
    """Path of a CLI tool from Debian's packages; fail in CI, skip elsewhere when missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus)"
        if REQUIRE_DOCKER:
            pytest.fail(message)
        pytest.skip(message)
    return path


def small(project: str, image: str, **extra: Any) -> dict[str, Any]:
    return {
        "networks": {f"{project}-net": {}},
        "services": {
            "web": {
                "image": image,
                "replicas": 2,
                "init": True,
                "command": ["sleep", "100000"],
                "networks": [f"{project}-net"],
                **extra,
            }
        },
    }


# ----------------------------------------------------------------- pure


def test_dashboard_is_grafana_json_and_queries_exported_metrics() -> None:
    """Every panel of the reconciler dashboard queries a metric the daemon exports."""
    dash = json.loads((CONFIGS / "grafana/dashboards/reconciler.json").read_text())
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        assert key in dash
    exported = set()
    for line in generate_latest(Metrics(CollectorRegistry()).registry).decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""],
                "info": ["_info"],
            }.get(kind, [""])
            exported |= {name + s for s in suffixes} | {name}
    ids = set()
    for panel in dash["panels"]:
        assert {"id", "type", "title", "gridPos", "targets", "datasource"} <= set(panel)
        ids.add(panel["id"])
        for target in panel["targets"]:
            names = set(re.findall(r"\breconciler_[a-z_]+", target["expr"]))
            assert names, f"panel {panel['title']!r} queries no reconciler metric"
            assert names <= exported, f"panel {panel['title']!r}: {names - exported} not exported"
    assert len(ids) == len(dash["panels"])


def test_every_dashboard_is_valid_json() -> None:
    """The provisioned dashboards load as JSON with panels."""
    for path in (CONFIGS / "grafana/dashboards").glob("*.json"):
        assert json.loads(path.read_text())["panels"], path


def test_secret_looking_keys_are_redacted() -> None:
    """Anything logged under a key that looks like a secret is blanked."""
    with structlog.testing.capture_logs(processors=[redact_secrets]) as logs:
        structlog.get_logger().info("x", db_password="hunter2", api_key="k", service="web")
    assert logs[0]["db_password"] == logs[0]["api_key"] == REDACTED
    assert logs[0]["service"] == "web"


def test_promtool_accepts_rules_and_config(tmp_path: Path) -> None:
    """promtool check rules / check config accept the shipped Prometheus files."""
    promtool = tool("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(CONFIGS / "prometheus/alert.yml")],
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout
    config = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=CONFIGS / "prometheus",
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rules_cover_the_reconciler() -> None:
    """Alerts: down, passes failing, persistent drift, crash loop, invalid desired state,
    a rollout rolled back or paused."""
    groups = yaml.safe_load((CONFIGS / "prometheus/alert.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {
        "ReconcilerDown",
        "ReconcilerPassesFailing",
        "ReconcilerDriftPersists",
        "ReconcilerCrashLoop",
        "ReconcilerDesiredStateInvalid",
        "ReconcilerRolloutRolledBack",
        "ReconcilerRolloutPaused",
    } <= set(alerts)
    assert alerts["ReconcilerDriftPersists"]["for"] == "5m"


def test_rollout_alerts_fire_on_a_rollback_or_pause(tmp_path: Path) -> None:
    """promtool test rules: a rollback (a paused rollout) of a service whose counter series
    exists at 0 fires its alert with the service named, and it resolves 15 minutes later."""
    rules = yaml.safe_load((CONFIGS / "prometheus/alert.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}

    def expected(alert: str, service: str, result: str) -> dict[str, Any]:
        notes = {
            k: v.replace("{{ $labels.service }}", service)
            for k, v in by_name[alert]["annotations"].items()
        }
        assert "{{" not in "".join(notes.values())
        labels = {"severity": "warning", "service": service, "result": result}
        return {"exp_labels": labels, "exp_annotations": notes}

    series = 'reconciler_rollouts_total{{service="{}",result="{}"}}'
    test = {
        "rule_files": [str(CONFIGS / "prometheus/alert.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # web rolls back at 2m; api pauses at 3m; completed rollouts alert nobody.
                    {"series": series.format("web", "rolled_back"), "values": "0 0 1x30"},
                    {"series": series.format("web", "paused"), "values": "0x32"},
                    {"series": series.format("api", "paused"), "values": "0 0 0 1x30"},
                    {"series": series.format("api", "completed"), "values": "0 1 2 3x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "ReconcilerRolloutRolledBack"},
                    {
                        "eval_time": "5m",
                        "alertname": "ReconcilerRolloutRolledBack",
                        "exp_alerts": [
                            expected("ReconcilerRolloutRolledBack", "web", "rolled_back")
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "ReconcilerRolloutPaused",
                        "exp_alerts": [expected("ReconcilerRolloutPaused", "api", "paused")],
                    },
                    {"eval_time": "25m", "alertname": "ReconcilerRolloutRolledBack"},
                    {"eval_time": "25m", "alertname": "ReconcilerRolloutPaused"},
                ],
            }
        ],
    }
    path = tmp_path / "rollout_test.yml"
    path.write_text(yaml.safe_dump(test))
    proc = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rollout_metrics() -> None:
    """Rollout series exist at 0 once set_replicas sees a service (so increase() in the alerts
    counts the first rollback); set_rollout / rollout_finished move them; a service gone
    loses its in-progress gauge but keeps its counts."""
    m = Metrics(CollectorRegistry(), process=False)
    get = m.registry.get_sample_value
    assert get("reconciler_rollout_in_progress", {"service": "web"}) is None
    m.set_replicas([("web", 2, 2, 2), ("api", 1, 1, 1)])
    for result in ROLLOUT_RESULTS:
        assert get("reconciler_rollouts_total", {"service": "web", "result": result}) == 0
    assert get("reconciler_rollout_in_progress", {"service": "web"}) == 0

    m.set_rollout("web", True)
    m.set_replicas([("web", 2, 2, 2), ("api", 1, 1, 1)])  # a pass does not reset it
    assert get("reconciler_rollout_in_progress", {"service": "web"}) == 1
    m.rollout_finished("web", "rolled_back")
    assert get("reconciler_rollouts_total", {"service": "web", "result": "rolled_back"}) == 1
    assert get("reconciler_rollout_in_progress", {"service": "web"}) == 0
    with pytest.raises(ValueError):
        m.rollout_finished("web", "exploded")

    m.set_rollout("web", True)
    m.set_rollout("batch", True)  # never seen by set_replicas
    m.set_crashloop({"web": 1}, ["web", "api"])
    m.set_replicas([("api", 1, 1, 1)])
    assert get("reconciler_rollout_in_progress", {"service": "web"}) is None
    assert get("reconciler_rollout_in_progress", {"service": "batch"}) is None
    assert get("reconciler_service_replicas", {"service": "web", "state": "running"}) is None
    assert get("reconciler_crashloop_replicas", {"service": "web"}) is None
    assert get("reconciler_rollout_in_progress", {"service": "api"}) == 0
    assert get("reconciler_rollouts_total", {"service": "web", "result": "rolled_back"}) == 1


def test_promtool_check_metrics_with_and_without_rollouts() -> None:
    """The exposition passes `promtool check metrics` before any service is known (families
    without series) and with rollout series."""
    promtool = tool("promtool")
    m = Metrics(CollectorRegistry())
    bodies = [generate_latest(m.registry)]
    m.set_replicas([("web", 1, 1, 1)])
    m.set_rollout("web", True)
    m.rollout_finished("web", "completed")
    bodies.append(generate_latest(m.registry))
    assert b'reconciler_rollouts_total{result="completed",service="web"} 1.0' in bodies[1]
    for body in bodies:
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, (check.stdout + check.stderr).decode()


def test_http_endpoints_outlive_half_sent_requests() -> None:
    """Clients that send half a request line are disconnected after the socket timeout, and
    /metrics answers while they hang."""
    metrics = Metrics(CollectorRegistry(), process=False)
    server = serve(
        ("127.0.0.1", 0), metrics.registry, lambda: (True, "ok"), lambda: (True, "ok"), timeout=0.5
    )
    port = server.server_address[1]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /metr")  # no end of line, ever
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert b"reconciler_docker_up" in r.read()
        for sock in slow:
            try:
                data = sock.recv(1024)  # blocks until the server closes (or 60s: fail)
            except ConnectionResetError:
                data = b""
            assert data == b"", data
    finally:
        for sock in slow:
            sock.close()
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------- real engine


@pytest.mark.docker
def test_reconcile_updates_metrics(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Reconciling counts runs and actions, sets drift, replicas and the rollout series, and
    counts a heal, on its registry."""
    from reconciler.runtime.settle import settle
    from reconciler.targets.base import RESYNC, Settings
    from reconciler.targets.host.adapter import HostTarget

    metrics = Metrics(CollectorRegistry(), process=False)
    state = desired.load(write_state(small(project, busybox_image)))
    target = HostTarget(api, state, Settings(metrics=metrics, state_dir=tmp_path / "state"))
    controller = target.controller
    get = metrics.registry.get_sample_value
    assert settle(target, timeout_s=60)
    assert (get("reconciler_reconcile_runs_total", {"result": "success"}) or 0) >= 1
    assert (
        get(
            "reconciler_actions_total",
            {"action": "create", "kind": "container", "result": "success"},
        )
        == 2
    )
    assert get("reconciler_service_replicas", {"service": "web", "state": "running"}) == 2
    assert get("reconciler_rollouts_total", {"service": "web", "result": "rolled_back"}) == 0
    assert get("reconciler_rollout_in_progress", {"service": "web"}) == 0

    controller.enqueue = lambda key, delay: None  # settle's queue is shut down
    controller.reconcile(RESYNC)
    assert get("reconciler_drift", {"kind": "container"}) == 0
    api.remove_container(f"{project}-web-1", force=True)
    controller.reconcile(RESYNC)
    assert (get("reconciler_drift", {"kind": "container"}) or 0) >= 1  # create (and start)
    assert settle(target, timeout_s=60)
    assert get("reconciler_heals_total", {"service": "web", "reason": "removed"}) == 1
    assert get("reconciler_service_replicas", {"service": "web", "state": "running"}) == 2
    controller.enqueue = lambda key, delay: None
    controller.reconcile(RESYNC)
    assert get("reconciler_drift", {"kind": "container"}) == 0


@pytest.mark.docker
def test_endpoints_and_promtool_check_metrics(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
) -> None:
    """/healthz and /readyz answer; promtool check metrics accepts /metrics; no secret leaks."""
    doc = small(project, busybox_image, environment={"DB_PASSWORD": "hunter2-secret-value"})
    d = daemon(write_state(doc))
    wait_for(lambda: d.get("/readyz")[0] == 200, 30, what="ready")
    assert d.get("/healthz")[0] == 200
    assert d.get("/nope")[0] == 404
    status, body = d.get("/metrics")
    assert status == 200
    for name in (
        "reconciler_reconcile_runs_total",
        "reconciler_reconcile_duration_seconds_bucket",
        "reconciler_last_success_timestamp_seconds",
        "reconciler_build_info",
        "reconciler_docker_up 1.0",
        "reconciler_desired_state_valid 1.0",
        "process_resident_memory_bytes",
        'reconciler_reconcile_trigger_total{trigger="interval"}',
        'reconciler_rollouts_total{result="rolled_back",service="web"} 0.0',
        'reconciler_rollout_in_progress{service="web"} 0.0',
    ):
        assert name in body, name
    check = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "hunter2" not in body and "hunter2" not in d.log_path.read_text()
    action = next(e for e in d.events("action") if e["kind"] == "container")
    assert {"service", "container", "action", "reason", "duration_ms", "result"} <= set(action)


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start Debian's Prometheus on 127.0.0.1 scraping a daemon port; yields its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        binary = tool("prometheus")
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "reconciler",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                        }
                    ],
                }
            )
        )
        log = (tmp_path / "prometheus.log").open("w")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(30)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]
    except OSError:
        return []


@pytest.mark.docker
def test_prometheus_scrapes_the_daemon_after_a_heal(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    write_state: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    prometheus_server: Callable[[int], str],
) -> None:
    """A real Prometheus reads runs, replicas and heals back from the daemon after a heal."""
    d = daemon(write_state(small(project, busybox_image)))
    wait_for(lambda: d.get("/readyz")[0] == 200, 30, what="daemon ready")
    base = prometheus_server(d.port)
    wait_for(
        lambda: query(base, 'up{job="reconciler"} == 1'),
        60,
        interval=0.5,
        what="Prometheus scraping the daemon",
    )
    api.remove_container(f"{project}-web-2", force=True)
    wait_for(
        lambda: query(base, 'reconciler_heals_total{service="web",reason="removed"} >= 1'),
        30,
        interval=0.5,
        what="the heal seen through Prometheus",
    )
    runs = query(base, 'reconciler_reconcile_runs_total{result="success"}')
    assert float(runs[0]["value"][1]) >= 2
    running = wait_for(
        lambda: query(base, 'reconciler_service_replicas{service="web",state="running"} == 2'),
        15,
        interval=0.5,
        what="2 running replicas in Prometheus",
    )
    assert running[0]["metric"]["service"] == "web"
