"""Bring a stack up, and idle on it: reconciler vs the seed's bash script vs docker-compose.

    python -m bench.converge [--trials 5] [--sizes 7,50,200]

All in one run, same engine, local busybox image, everything removed between trials:
- cold converge of N containers shaped like the seed stack (node-exporter <- prometheus <-
  grafana <- haproxy, one network, a few volumes) by (a) `reconciler apply`, (b) a sequential
  bash script of `docker network create` / `docker volume create` / `docker run -d`,
  (c) `docker-compose up -d` with the equivalent file;
- a no-op pass on a converged project (N = 10, 100, 200): Docker API requests counted at the
  HTTP layer, wall time, CPU time;
- the daemon idling 60 s on a converged N = 100 project: CPU seconds and peak RSS;
- scale-up 2 -> 20 replicas by editing the file: from the write to all 20 running.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import yaml

from bench.common import BENCH_LABEL, start_daemon, summary, table, write_json
from reconciler.config import loader as desired
from reconciler.runtime.settle import settle
from reconciler.targets.base import RESYNC, Settings
from reconciler.targets.host.adapter import HostTarget
from tests.enginekit import CountingClient, build_scratch_image, remove_labelled

IMAGE = "reconciler-bench-busybox:1"


def shape(n: int) -> dict[str, int]:
    """Replicas per service for N containers, seed-shaped (2 node-exporters, 2 Grafanas at 7)."""
    if n == 7:
        return {"node-exporter": 2, "prometheus": 1, "grafana": 2, "haproxy": 2}
    rest = n - 2
    return {"node-exporter": rest // 2, "prometheus": 1, "grafana": rest - rest // 2, "haproxy": 1}


ORDER = ["node-exporter", "prometheus", "grafana", "haproxy"]
DEPENDS = {"prometheus": ["node-exporter"], "grafana": ["prometheus"], "haproxy": ["grafana"]}
VOLUMES = {"prometheus": "prometheus_data", "grafana": "grafana_data"}


def reconciler_doc(project: str, n: int, run: str) -> dict[str, Any]:
    labels = {BENCH_LABEL: run}
    services = {}
    for name, count in shape(n).items():
        svc: dict[str, Any] = {
            "image": IMAGE,
            "replicas": count,
            "init": True,
            "command": ["sleep", "100000"],
            "networks": [f"{project}-net"],
            "labels": labels,
            "depends_on": DEPENDS.get(name, []),
        }
        if name in VOLUMES:
            svc["volumes"] = [f"{project}-{VOLUMES[name]}:/data"]
        services[name] = svc
    return {
        "version": 1,
        "project": project,
        "networks": {f"{project}-net": {"labels": labels}},
        "volumes": {f"{project}-{v}": {"labels": labels} for v in VOLUMES.values()},
        "services": services,
    }


def bash_script(project: str, n: int, run: str) -> str:
    """The seed's way: one docker command after the other."""
    label = f"--label {BENCH_LABEL}={run}"
    lines = ["set -e", f"docker network create --driver bridge {label} {project}-net >/dev/null"]
    lines += [f"docker volume create {label} {project}-{v} >/dev/null" for v in VOLUMES.values()]
    for name in ORDER:
        for i in range(1, shape(n)[name] + 1):
            vol = f"-v {project}-{VOLUMES[name]}:/data" if name in VOLUMES else ""
            lines.append(
                f"docker run -d --init --name {project}-{name}-{i} --network {project}-net "
                f"--network-alias {name} {vol} {label} {IMAGE} sleep 100000 >/dev/null"
            )
    return "\n".join(lines) + "\n"


def compose_file(project: str, n: int, run: str) -> dict[str, Any]:
    labels = {BENCH_LABEL: run}
    services = {}
    for name, count in shape(n).items():
        svc: dict[str, Any] = {
            "image": IMAGE,
            "scale": count,
            "init": True,
            "command": ["sleep", "100000"],
            "networks": ["net"],
            "labels": labels,
        }
        if DEPENDS.get(name):
            svc["depends_on"] = DEPENDS[name]
        if name in VOLUMES:
            svc["volumes"] = [f"{VOLUMES[name]}:/data"]
        services[name] = svc
    return {
        "version": "2.4",
        "services": services,
        "networks": {"net": {"labels": labels}},
        "volumes": {v: {"labels": labels} for v in VOLUMES.values()},
    }


def running(api: docker.APIClient, run: str) -> int:
    return len(api.containers(filters={"label": f"{BENCH_LABEL}={run}", "status": "running"}))


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return took


def cold_converge(api: docker.APIClient, n: int, trials: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"reconciler": [], "bash": [], "compose": []}
    compose = shutil.which("docker-compose")
    for _ in range(trials):
        for method in out:
            if method == "compose" and compose is None:
                continue
            run = uuid.uuid4().hex[:8]
            project = f"cv{run}"
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                if method == "reconciler":
                    path = folder / "desired_state.yaml"
                    path.write_text(yaml.safe_dump(reconciler_doc(project, n, run)))
                    took = timed(
                        [
                            sys.executable,
                            "-m",
                            "reconciler",
                            "--log-level",
                            "error",
                            "apply",
                            str(path),
                        ],
                        folder,
                    )
                elif method == "bash":
                    (folder / "up.sh").write_text(bash_script(project, n, run))
                    took = timed(["bash", "up.sh"], folder)
                else:
                    (folder / "docker-compose.yml").write_text(
                        yaml.safe_dump(compose_file(project, n, run))
                    )
                    took = timed(
                        [compose, "-p", project, "up", "-d"],
                        folder,
                        env={**os.environ, "COMPOSE_PARALLEL_LIMIT": "64"},
                    )
            assert running(api, run) == n, f"{method}: {running(api, run)} of {n} running"
            out[method].append(took)
            remove_labelled(api, f"{BENCH_LABEL}={run}")
    return out


def noop_passes(n: int, trials: int, run: str) -> dict[str, Any]:
    project = f"np{run}"
    doc = reconciler_doc(project, n, run)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "desired_state.yaml"
        path.write_text(yaml.safe_dump(doc))
        state = desired.load(path)
    client = CountingClient()
    state_dir = tempfile.mkdtemp()
    target = HostTarget(client.api, state, Settings(state_dir=Path(state_dir)))
    rec = target.controller
    try:
        assert settle(target, timeout_s=600), "did not converge"
        requests, walls, cpus = [], [], []
        for _ in range(trials):  # the periodic resync of a converged project
            client.calls.clear()
            w0, c0 = time.perf_counter(), time.process_time()
            result = rec.reconcile(RESYNC, "interval")
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            requests.append(len(client.calls))
            assert not result.actions
    finally:
        remove_labelled(client.api, f"{BENCH_LABEL}={run}")
        shutil.rmtree(state_dir, ignore_errors=True)
    return {"requests": requests, "wall_s": walls, "cpu_s": cpus}


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(
        line
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, int(hwm.split()[1]) * 1024


def wait_running(api: docker.APIClient, run: str, count: int, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while running(api, run) < count:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{count} not running")
        time.sleep(0.02)
    return time.perf_counter() - t0


def idle(api: docker.APIClient, n: int, seconds: float, run: str) -> dict[str, float]:
    project = f"id{run}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "desired_state.yaml"
        path.write_text(yaml.safe_dump(reconciler_doc(project, n, run)))
        proc = start_daemon(path, Path(tmp))
        try:
            wait_running(api, run, n)
            time.sleep(5)  # settle: the first passes and imports are not idling
            cpu0, _ = proc_stats(proc.pid)
            time.sleep(seconds)
            cpu1, peak = proc_stats(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            remove_labelled(api, f"{BENCH_LABEL}={run}")
    return {
        "cpu_s": cpu1 - cpu0,
        "cpu_percent_of_core": 100 * (cpu1 - cpu0) / seconds,
        "peak_rss_mb": peak / 2**20,
        "seconds": seconds,
    }


def scale_up(api: docker.APIClient, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        run = uuid.uuid4().hex[:8]
        project = f"su{run}"
        doc = {
            "version": 1,
            "project": project,
            "services": {
                "web": {
                    "image": IMAGE,
                    "replicas": 2,
                    "init": True,
                    "command": ["sleep", "100000"],
                    "labels": {BENCH_LABEL: run},
                }
            },
            "networks": {f"{project}_default": {"labels": {BENCH_LABEL: run}}},
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "desired_state.yaml"
            path.write_text(yaml.safe_dump(doc))
            proc = start_daemon(path, Path(tmp), interval=60)
            try:
                wait_running(api, run, 2)
                time.sleep(1.5)
                doc["services"]["web"]["replicas"] = 20
                staged = Path(tmp) / "next.yaml"
                staged.write_text(yaml.safe_dump(doc))
                staged.replace(path)
                out.append(wait_running(api, run, 20))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                remove_labelled(api, f"{BENCH_LABEL}={run}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--sizes", default="7,50,200")
    parser.add_argument("--noop-sizes", default="10,100,200")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--out", default="converge", help="bench/results/OUT.json")
    args = parser.parse_args(argv)
    api = docker.from_env(timeout=300).api
    build_scratch_image(api, IMAGE)
    run = uuid.uuid4().hex[:8]
    report: dict[str, Any] = {"trials": args.trials}
    try:
        cold = {n: cold_converge(api, n, args.trials) for n in map(int, args.sizes.split(","))}
        noop = {
            n: noop_passes(n, args.trials, f"{run}{n}")
            for n in map(int, args.noop_sizes.split(","))
        }
        idle_stats = idle(api, 100, args.idle_seconds, run)
        scale = scale_up(api, args.trials)
    finally:
        remove_labelled(api, BENCH_LABEL)

    rows, cold_json = [], {}
    for n, res in cold.items():
        med = {m: statistics.median(v) for m, v in res.items() if v}
        ratios = {
            "a_over_b": med["reconciler"] / med["bash"],
            "a_over_c": med["reconciler"] / med["compose"] if "compose" in med else None,
        }
        cold_json[n] = {"samples": res, "median_s": med, "ratios": ratios}
        rows.append(
            [
                n,
                med["reconciler"],
                med["bash"],
                med.get("compose", float("nan")),
                ratios["a_over_b"],
                ratios["a_over_c"] or float("nan"),
            ]
        )
    print("Cold converge, median seconds")
    print(
        table(
            [
                "N",
                "(a) reconciler",
                "(b) bash docker run",
                "(c) docker-compose",
                "(a)/(b)",
                "(a)/(c)",
            ],
            rows,
        )
    )
    noop_rows, noop_json = [], {}
    for n, res in noop.items():
        noop_json[n] = {k: summary([float(x) for x in v]) for k, v in res.items()}
        noop_rows.append(
            [
                n,
                statistics.median(res["requests"]),
                1000 * statistics.median(res["wall_s"]),
                1000 * statistics.median(res["cpu_s"]),
            ]
        )
    print("\nNo-op pass on a converged project, median")
    print(table(["N", "API requests", "wall ms", "CPU ms"], noop_rows))
    print(
        f"\nIdle daemon, N=100, {args.idle_seconds:.0f} s: "
        f"{idle_stats['cpu_percent_of_core']:.2f}% of one core, "
        f"peak RSS {idle_stats['peak_rss_mb']:.1f} MB"
    )
    print(
        f"Scale-up 2 -> 20 by editing the file: median {statistics.median(scale):.2f} s "
        f"(samples {', '.join(f'{s:.2f}' for s in scale)})"
    )
    report |= {
        "cold_converge": cold_json,
        "noop_pass": noop_json,
        "idle": idle_stats,
        "scale_up_2_to_20_s": summary(scale) | {"samples": scale},
    }
    print(f"\nwrote {write_json(args.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
