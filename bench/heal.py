"""How fast a failed container runs again: Docker's restart policy vs reconciler vs polling.

    python -m bench.heal [--trials 20]

(a) Docker `restart: always`, SIGKILL of State.Pid from the host -> Running again
    (fresh container per trial, so Docker's restart back-off never builds up);
(b) reconciler daemon, restart policy `no`, SIGKILL from the host -> running again
    (a different replica per trial: each is a first failure, which is healed at once);
(c) reconciler daemon, `docker rm -f` -> a new replica running;
(d) a 5 s polling healer (autoheal's default loop), measured the same way as (b).
Latency = Docker's `start` event time minus the time just before the fault, on one clock.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import yaml

from bench.common import BENCH_LABEL, start_daemon, summary, table, write_json
from tests.enginekit import build_scratch_image, remove_labelled

IMAGE = "reconciler-bench-busybox:1"


class StartWatcher:
    """Collects Docker `start` events (container id -> event times) in the background."""

    def __init__(self, api: docker.APIClient, label: str) -> None:
        self.api = api
        self.starts: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._stream = api.events(
            decode=True, filters={"type": ["container"], "event": ["start"], "label": [label]}
        )
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                with self._cond:
                    self.starts.setdefault(event["id"], []).append(event["timeNano"] / 1e9)
                    self._cond.notify_all()
        except Exception:  # closed at the end of the run
            return

    def first_start_after(
        self, pick: Callable[[str], bool], t0: float, timeout: float = 30
    ) -> float:
        """Seconds from t0 to the first start after t0 of a container `pick` accepts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                times = [t for cid, ts in self.starts.items() if pick(cid) for t in ts if t >= t0]
                if times:
                    return min(times) - t0
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no start event")
                self._cond.wait(left)

    def close(self) -> None:
        self._stream.close()


def kill_pid(api: docker.APIClient, cid: str) -> float:
    """SIGKILL the container's main process from the host; return the time just before."""
    deadline = time.monotonic() + 10
    while (pid := api.inspect_container(cid)["State"]["Pid"]) <= 0:
        if time.monotonic() > deadline:
            raise TimeoutError("container has no pid")
        time.sleep(0.01)
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    return t0


def docker_always(
    api: docker.APIClient, watcher: StartWatcher, trials: int, run: str
) -> list[float]:
    out = []
    for i in range(trials):
        c = api.create_container(
            IMAGE,
            ["sleep", "100000"],
            name=f"bench-{run}-always-{i}",
            labels={BENCH_LABEL: run},
            host_config=api.create_host_config(restart_policy={"Name": "always"}, init=True),
        )
        api.start(c["Id"])
        time.sleep(0.3)
        t0 = kill_pid(api, c["Id"])
        out.append(watcher.first_start_after(lambda cid, c=c: cid == c["Id"], t0))
        api.remove_container(c["Id"], force=True)
    return out


def daemon_stack(tmp: Path, project: str, replicas: int, run: str) -> Path:
    doc = {
        "version": 1,
        "project": project,
        "services": {
            "app": {
                "image": IMAGE,
                "replicas": replicas,
                "init": True,
                "restart": "no",
                "command": ["sleep", "100000"],
                "labels": {BENCH_LABEL: run},
            }
        },
        "networks": {f"{project}_default": {"labels": {BENCH_LABEL: run}}},
    }
    path = tmp / "desired_state.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def replica_ids(api: docker.APIClient, project: str) -> dict[str, str]:
    cs = api.containers(filters={"label": f"io.reconciler.project={project}"})
    return {c["Names"][0].lstrip("/"): c["Id"] for c in cs}


def wait_running(api: docker.APIClient, project: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(replica_ids(api, project)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{project}: {count} replicas not running")
        time.sleep(0.1)


def reconciler_trials(
    api: docker.APIClient, watcher: StartWatcher, trials: int, run: str, fault: str
) -> list[float]:
    project = f"bench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = daemon_stack(Path(tmp), project, trials, run)
        proc = start_daemon(path, Path(tmp), interval=60)
        try:
            wait_running(api, project, trials)
            time.sleep(1.0)  # the event stream is connected
            out = []
            for name, cid in sorted(replica_ids(api, project).items()):
                if fault == "sigkill":
                    t0 = kill_pid(api, cid)
                    out.append(watcher.first_start_after(lambda c, cid=cid: c == cid, t0))
                else:
                    t0 = time.time()
                    api.remove_container(cid, force=True)
                    out.append(
                        watcher.first_start_after(
                            lambda c, name=name, cid=cid: (
                                c != cid and replica_ids(api, project).get(name) == c
                            ),
                            t0,
                        )
                    )
                time.sleep(0.2)
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            remove_labelled(api, f"io.reconciler.project={project}")


def polling_trials(
    api: docker.APIClient, watcher: StartWatcher, trials: int, run: str, period: float = 5.0
) -> list[float]:
    """What a 5 s polling loop (autoheal's default) gives: list exited, start them."""
    stop = threading.Event()
    label = f"{BENCH_LABEL}={run}-poll"

    def poll() -> None:
        while not stop.wait(period):
            for c in api.containers(all=True, filters={"label": label, "status": "exited"}):
                api.start(c["Id"])

    rng = random.Random(1)
    ids = []
    for i in range(trials):
        c = api.create_container(
            IMAGE,
            ["sleep", "100000"],
            name=f"bench-{run}-poll-{i}",
            labels={BENCH_LABEL: f"{run}-poll"},
            host_config=api.create_host_config(init=True),
        )
        api.start(c["Id"])
        ids.append(c["Id"])
    threading.Thread(target=poll, daemon=True).start()
    out = []
    try:
        for cid in ids:
            time.sleep(rng.uniform(0, period))  # a fault lands anywhere in the polling phase
            t0 = kill_pid(api, cid)
            out.append(watcher.first_start_after(lambda c, cid=cid: c == cid, t0))
    finally:
        stop.set()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args(argv)
    api = docker.from_env(timeout=120).api
    build_scratch_image(api, IMAGE)
    run = uuid.uuid4().hex[:8]
    watcher = StartWatcher(api, BENCH_LABEL)
    results: dict[str, list[float]] = {}
    try:
        results["a_docker_restart_always_sigkill"] = docker_always(api, watcher, args.trials, run)
        results["b_reconciler_sigkill"] = reconciler_trials(
            api, watcher, args.trials, run, "sigkill"
        )
        results["c_reconciler_rm_f"] = reconciler_trials(api, watcher, args.trials, run, "rm")
        results["d_polling_5s_sigkill"] = polling_trials(api, watcher, args.trials, run)
    finally:
        watcher.close()
        remove_labelled(api, BENCH_LABEL)
    stats = {k: summary(v) for k, v in results.items()}
    a, b, c, d = (stats[k]["p50"] for k in results)
    ratios = {"b_over_a_p50": b / a, "c_p50_s": c, "d_over_b_p50": d / b}
    rows = [[k, s["n"], s["p50"], s["p95"], s["min"], s["max"]] for k, s in stats.items()]
    print(table(["case (seconds to running again)", "n", "p50", "p95", "min", "max"], rows))
    print()
    print(f"(b)/(a) p50 = {ratios['b_over_a_p50']:.2f}   target <= 1.2")
    print(f"(c) p50     = {c:.3f} s   target < 1 s")
    print(f"(d)/(b) p50 = {ratios['d_over_b_p50']:.1f}x  target >= 5x")
    path = write_json(
        "heal",
        {
            "trials": args.trials,
            "method": {
                "a": "fresh container per trial (no Docker back-off build-up)",
                "b": "one daemon, a different replica per trial, restart policy no",
                "c": "one daemon, a different replica per trial",
                "d": "measured: a 5 s polling loop starting exited containers",
            },
            "samples": results,
            "stats": stats,
            "ratios": ratios,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
