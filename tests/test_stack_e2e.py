"""The shipped monitoring stack, end to end, with real HAProxy, Prometheus and node-exporter.

No registry is reachable, so the images are built here from Debian's binaries; a busybox
`httpd` answering with its hostname stands in for Grafana. The test runs a copy of the
shipped desired_state.yaml and configs/ with the images swapped, and (because networks,
volumes and container names are global on a host) the test's project name prefixed to them,
ports bound to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.conftest import REQUIRE_DOCKER, DaemonProcess, wait_for, with_test_labels
from tests.enginekit import ImageBuildError, build_scratch_image

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent

GRAFANA_STANDIN = (
    'trap "exit 0" TERM; mkdir -p /tmp/www/api; hostname > /tmp/www/index.html; '
    "echo ok > /tmp/www/api/health; httpd -f -p 3000 -h /tmp/www & wait"
)


@pytest.fixture(scope="session")
def stack_images(api: docker.APIClient) -> dict[str, str]:
    """Stand-in images for the shipped stack, from Debian's packages."""
    try:
        return {
            "haproxy": build_scratch_image(
                api,
                "reconciler-test-haproxy:1",
                binaries=["/usr/sbin/haproxy"],
                extra=[
                    'ENTRYPOINT ["/usr/sbin/haproxy", "-W", "-db", "-f", '
                    '"/usr/local/etc/haproxy/haproxy.cfg"]'
                ],
            ),
            "prometheus": build_scratch_image(
                api,
                "reconciler-test-prometheus:1",
                binaries=["/usr/bin/prometheus", "/usr/bin/promtool"],  # the config's check
                files={
                    "/etc/prometheus/consoles": Path("/etc/prometheus/consoles"),
                    "/etc/prometheus/console_libraries": Path("/etc/prometheus/console_libraries"),
                },
                extra=['ENTRYPOINT ["/usr/bin/prometheus"]'],
            ),
            "node-exporter": build_scratch_image(
                api,
                "reconciler-test-node-exporter:1",
                binaries=["/usr/bin/prometheus-node-exporter"],
                extra=['ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]'],
            ),
            "grafana": build_scratch_image(
                api,
                "reconciler-test-grafana-standin:1",
                extra=[f"ENTRYPOINT {json.dumps(['sh', '-c', GRAFANA_STANDIN])}"],
            ),
        }
    except ImageBuildError as exc:
        message = f"{exc} (apt-get install haproxy prometheus prometheus-node-exporter)"
        if REQUIRE_DOCKER:
            pytest.fail(message)
        pytest.skip(message)


def shipped_copy(tmp: Path, project: str, images: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """Copy desired_state.yaml and configs/ into `tmp`, swapping images and global names."""
    shutil.copytree(ROOT / "configs", tmp / "configs")
    doc = yaml.safe_load((ROOT / "desired_state.yaml").read_text())
    rename = {
        "mynetwork": f"{project}-mynetwork",
        "prometheus_data": f"{project}-prometheus_data",
        "grafana_data_{replica}": f"{project}-grafana_data_{{replica}}",
    }
    doc["networks"] = {rename[k]: v for k, v in doc["networks"].items()}
    doc["volumes"] = {rename[k]: v for k, v in doc["volumes"].items()}
    for name, svc in doc["services"].items():
        svc["image"] = images[name]
        svc["networks"] = [rename[n] for n in svc["networks"]]
        svc["volumes"] = [
            next((v.replace(old, new, 1) for old, new in rename.items() if v.startswith(old)), v)
            for v in svc.get("volumes", [])
        ]
        svc["ports"] = [f"127.0.0.1:{p}" for p in svc.get("ports", [])]
        if "container_name" in svc:
            svc["container_name"] = f"{project}-{svc['container_name']}"
    return tmp / "desired_state.yaml", doc


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}  # HAProxy sends lower-case names


def fetch(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode().strip(), _lower(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, "", _lower(e.headers)
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}", {}


def backends(n: int = 30) -> tuple[set[str], list[str]]:
    """Hostnames answering through HAProxy on 127.0.0.1:8000, and the failed statuses."""
    seen, errors = set(), []
    for _ in range(n):
        status, body, _ = fetch("http://127.0.0.1:8000/")
        if status == 200:
            seen.add(body)
        else:
            errors.append(f"{status} {body}")
    return seen, errors


@contextlib.contextmanager
def steady_load(threads: int) -> Iterator[list[str]]:
    """Requests through HAProxy from several threads until the block ends; yields failures."""
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body, _ = fetch("http://127.0.0.1:8000/")
            if status != 200:
                errors.append(f"{status} {body}")

    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield errors
    finally:
        stop.set()
        for w in workers:
            w.join(10)


def haproxy_servers() -> dict[str, str]:
    """The status of each server slot of the `grafanas` backend, from HAProxy's stats CSV."""
    status, body, _ = fetch("http://127.0.0.1:8404/;csv")
    if status != 200:
        return {}
    rows = list(csv.DictReader(body.removeprefix("# ").splitlines()))
    return {
        r["svname"]: r["status"]
        for r in rows
        if r["pxname"] == "grafanas" and r["svname"] not in ("FRONTEND", "BACKEND")
    }


def grafana_containers(api: docker.APIClient, project: str) -> list[dict[str, Any]]:
    return api.containers(
        filters={"label": ["io.reconciler.service=grafana", f"io.reconciler.project={project}"]}
    )


def prom_query(expr: str) -> list[dict[str, Any]]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body, _ = fetch(url)
    return json.loads(body)["data"]["result"] if status == 200 else []


# Serial: on an engine loaded by three other workers, HAProxy once saw no replica of `grafana`
# in Docker's DNS after a scale-down (every slot MAINT) and once timed a request out; neither
# was reproduced alone (six loaded runs, parallel drains of aliased containers). Open.
@pytest.mark.serial
def test_shipped_stack_end_to_end(
    api: docker.APIClient,
    stack_images: dict[str, str],
    project: str,
    tmp_path: Path,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """Converge the seed's stack; scale Grafana by editing the file; reload HAProxy in place;
    Prometheus data survives its container's removal."""
    path, doc = shipped_copy(tmp_path, project, stack_images)

    def write(replicas: int) -> None:
        doc["services"]["grafana"]["replicas"] = replicas
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(with_test_labels(project, doc), sort_keys=False))
        tmp.replace(path)

    write(2)
    # The shipped policy grants node-exporter its read-only host binds (README, "Security model").
    d = daemon(path, interval=5.0, extra=("--policy", str(tmp_path / "configs" / "policy.yaml")))
    haproxy = f"{project}-haproxy-1"
    wait_for(
        lambda: len(api.containers(filters={"label": f"io.reconciler.project={project}"})) == 6,
        90,
        interval=0.5,
        what="6 containers running",
    )
    # Both Grafana stand-ins answer through HAProxy on 8000.
    wait_for(
        lambda: len(backends(20)[0]) == 2, 60, interval=0.5, what="2 Grafana replicas via 8000"
    )
    assert fetch("http://127.0.0.1:8404/")[0] == 200  # HAProxy stats

    def both_exporters_up() -> list[dict[str, Any]] | None:
        up = prom_query('up{job="node-exporter"} == 1')
        return up if len(up) == 2 else None

    # Prometheus finds both node-exporters (ours) through Docker's DNS.
    up = wait_for(both_exporters_up, 90, interval=1.0, what="both node-exporters up in Prometheus")
    exporters = api.containers(
        filters={
            "label": ["io.reconciler.service=node-exporter", f"io.reconciler.project={project}"]
        }
    )
    addresses = {
        c["NetworkSettings"]["Networks"][f"{project}-mynetwork"]["IPAddress"] + ":9100"
        for c in exporters
    }
    assert {r["metric"]["instance"] for r in up} == addresses  # ours, both
    haproxy_id = api.inspect_container(haproxy)["Id"]

    # Scale Grafana 3 -> 1 three times by editing the file: new replicas are served with no
    # HAProxy restart; removed ones are drained out of DNS first, so no request fails while
    # they go, watched until HAProxy itself has dropped them (slots in maintenance).
    for round_ in range(3):
        write(3)
        wait_for(lambda: len(backends(30)[0]) == 3, 60, interval=0.2, what="3 replicas via 8000")
        assert api.inspect_container(haproxy)["Id"] == haproxy_id
        with steady_load(threads=6) as errors:  # requests in flight while replicas go
            write(1)

            def scaled_down() -> bool:
                # A slot HAProxy took out (MAINT: its name no longer resolves; DOWN: it stopped
                # answering checks) serves nothing: one slot UP is the one replica left.
                serving = [n for n, st in haproxy_servers().items() if st.startswith("UP")]
                return len(grafana_containers(api, project)) == 1 and len(serving) == 1

            try:
                wait_for(scaled_down, 120, interval=0.2, what="HAProxy to serve one replica")
            except pytest.fail.Exception as exc:  # say which half did not happen
                names = [c["Names"][0] for c in grafana_containers(api, project)]
                drains = [e for e in d.lines() if "grafana" in json.dumps(e)][-12:]
                raise AssertionError(
                    f"round {round_}: {exc}; grafana containers {names}; "
                    f"HAProxy slots {haproxy_servers()}; daemon said {drains}"
                ) from exc
        seen, errs = backends(30)
        assert (round_, len(seen), errs + errors) == (round_, 1, [])

    # A changed haproxy.cfg is applied by a reload signal: same container, new config.
    cfg = tmp_path / "configs/haproxy/haproxy.cfg"
    cfg.write_text(
        cfg.read_text().replace(
            "  default_backend grafanas",
            "  http-response set-header X-Config-Version 2\n  default_backend grafanas",
        )
    )
    wait_for(
        lambda: fetch("http://127.0.0.1:8000/")[2].get("x-config-version") == "2",
        60,
        interval=0.5,
        what="HAProxy reloaded with the new config",
    )
    assert api.inspect_container(haproxy)["Id"] == haproxy_id

    # Data in prometheus_data survives `docker rm -f my-prometheus`.
    prom = f"{project}-my-prometheus"
    exec_id = api.exec_create(prom, ["sh", "-c", "echo kept > /prometheus/marker"])
    api.exec_start(exec_id)
    old_id = api.inspect_container(prom)["Id"]
    api.remove_container(prom, force=True)

    def new_prometheus() -> bool:
        try:
            info = api.inspect_container(prom)
        except docker.errors.NotFound:
            return False
        return info["Id"] != old_id and info["State"]["Running"]

    wait_for(new_prometheus, 60, interval=0.2, what="my-prometheus recreated")
    exec_id = api.exec_create(prom, ["cat", "/prometheus/marker"])
    assert api.exec_start(exec_id).decode().strip() == "kept"
