"""How fast a failed container runs again: Docker's restart policy vs reconciler vs polling.

    python -m bench.heal [--cases all] [--trials N] [--mass-trials 5]
    python -m bench.heal --cases busy,mass --trials 10

--cases: a comma list of a, b, c, d, busy-a, busy-b, busy-c, mass, or the groups
`single` (a-d), `busy` (busy-a, busy-b, busy-c) and `all` (the default).
--trials: trials of (a)-(d) (default 20) and of each busy case (default 10).

(a) Docker `restart: always`, SIGKILL of State.Pid from the host -> Running again
    (fresh container per trial, so Docker's restart back-off never builds up);
(b) reconciler daemon, restart policy `no`, SIGKILL from the host -> running again
    (a different replica per trial: each is a first failure, which is healed at once);
(c) reconciler daemon, `docker rm -f` -> a new replica running;
(d) a 5 s polling healer (autoheal's default loop), measured the same way as (b).

Busy cases: one project, one daemon (`--interval 60`): service A (3 replicas, healthcheck
every 1 s, stop_grace_period 2 s, init) and service B (1 replica, restart `no`,
`heal.min_uptime: 1s`; B has run 1.5 s before each kill, so every kill is a first failure).
B's process is SIGKILLed `--trials` times with A quiet (idle), then `--trials` times while A:
(busy-a) rolls out a change that never becomes healthy (healthcheck `false`; a new change,
         an environment variable, per trial);
(busy-b) pulls a slow image: a ~30 MB random layer pushed to a local `docker-registry` on
         127.0.0.1, removed from the engine, pulled through a ~1 MB/s proxy (~30 s); one
         image per trial; B is killed once 1 MB of it has come through, and the next trial
         waits until A runs the new image;
(busy-c) is removed (scaled 3 -> 0) with stop_grace_period 60 s and `sleep` as PID 1 (no
         init: it ignores SIGTERM); B is killed 0.5 s after Docker sent A the SIGTERM; then
         A's stop is timed (SIGTERM -> last `die`: a stop under 55 s means the grace was not
         honoured, and is reported) and A is scaled back to 3 before the next trial.
Each busy trial notes A's container states just before B's kill (`a_at_kill`).
Ratio: p50 busy / p50 idle of the same B in the same daemon (target <= 1.2).

mass: 50 replicas (restart `no`) under the daemon, all 50 processes SIGKILLed at once ->
      all 50 running again; vs 50 `restart: always` containers under Docker alone, the same.
      Both sets sit on a user-defined bridge network under one DNS alias (as compose's do).
      Every replica has run 12 s before a kill (Docker's back-off and reconciler's
      `min_uptime` both start over after 10 s). Ratio reconciler / Docker (target <= 1).

BENCH_LOG_LEVEL=info keeps the daemon's log lines (default: warnings only); BENCH_KEEP_LOGS=1
copies the mass case's daemon log to bench/results even when it passed.

Latency = Docker's `start` event time minus the time just before the fault, on one clock
(the event stream is subscribed before any fault). The engine may be shared: a busy or mass
trial during which dockerd restarted (the event stream broke) is discarded, noted in the
JSON, and repeated (3 attempts). Everything carries `bench<run>` /
`bench-<run>` names and the label io.reconciler.bench=<run>, and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import yaml

from bench.common import BENCH_LABEL, RESULTS, start_daemon, stop_daemon, summary, table, write_json
from bench.slowpull import SlowRegistry
from tests.enginekit import build_scratch_image, remove_labelled

IMAGE = "reconciler-bench-busybox:1"
SINGLE = ("a", "b", "c", "d")
BUSY = ("busy-a", "busy-b", "busy-c")
ALL_CASES = (*SINGLE, *BUSY, "mass")
GROUPS = {"single": SINGLE, "busy": BUSY, "all": ALL_CASES}

PROJECT_LABEL = "io.reconciler.project"
SERVICE_LABEL = "io.reconciler.service"
B_MIN_UPTIME = "1s"  # B's heal.min_uptime
B_SETTLE_S = 1.5  # B has run this long before each kill: every kill is a first failure
MASS_SETTLE_S = 12.0  # > 10 s: Docker's restart back-off and reconciler's min_uptime reset
HEAL_TIMEOUT_S = 300.0  # a busy heal today can wait for a whole blocked pass (120 s)
MAX_ATTEMPTS = 3  # a trial the engine restarted during is repeated (the engine is shared)


class StartWatcher:
    """Collects Docker container events of the bench's containers in the background:
    `start` times per container id, and every start/create/kill/die/destroy with its labels.

    Subscribed when made (before any fault). If the stream breaks (dockerd restarted), it
    reconnects and replays from the last event seen; `breaks` keeps when that happened,
    since a figure measured across an engine restart means little."""

    def __init__(self, api: docker.APIClient, label: str) -> None:
        self.api = api
        self.starts: dict[str, list[float]] = {}
        self.events: list[tuple[float, str, str, dict[str, str]]] = []  # time, action, id, attrs
        self.breaks: list[float] = []
        self._seen: set[tuple[int, str, str]] = set()
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self._filters = {
            "type": ["container"],
            "event": ["start", "create", "kill", "die", "destroy"],
            "label": [label],
        }
        self._stream = api.events(decode=True, filters=self._filters)
        threading.Thread(target=self._run, name="bench-events", daemon=True).start()

    def _run(self) -> None:
        last = time.time()
        while True:
            try:
                for event in self._stream:
                    last = max(last, self._record(event))
            except Exception:  # closed, or the engine went away
                pass
            if self._closed.is_set():
                return
            self.breaks.append(time.time())
            print("  the Docker event stream broke (dockerd restarted?); reconnecting", flush=True)
            while not self._closed.wait(1.0):
                try:
                    self._stream = self.api.events(
                        decode=True, filters=self._filters, since=f"{last:.9f}"
                    )
                    break
                except Exception:
                    continue

    def _record(self, event: dict[str, Any]) -> float:
        t = event["timeNano"] / 1e9
        action = (event.get("Action") or event.get("status") or "").split(":")[0]
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        key = (event["timeNano"], event["id"], action)
        with self._cond:
            if key in self._seen:  # replayed after a reconnect
                return t
            self._seen.add(key)
            self.events.append((t, action, event["id"], attrs))
            if action == "start":
                self.starts.setdefault(event["id"], []).append(t)
            self._cond.notify_all()
        return t

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

    def all_started_after(self, ids: list[str], t0: float, timeout: float) -> float:
        """Seconds from t0 until every container of `ids` has started again after t0."""
        firsts = self.each_after(ids, "start", t0, timeout)
        return max(firsts.values()) - t0

    def each_after(
        self, ids: list[str] | set[str], action: str, t0: float, timeout: float
    ) -> dict[str, float]:
        """The first `action` event after t0 of every container of `ids` (id -> time)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                firsts: dict[str, float] = {}
                for t, act, cid, _ in self.events:
                    if act == action and t >= t0 and cid in ids:
                        firsts[cid] = min(t, firsts.get(cid, t))
                if len(firsts) == len(set(ids)):
                    return firsts
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = len(set(ids)) - len(firsts)
                    raise TimeoutError(f"{missing} of {len(ids)} containers: no {action} event")
                self._cond.wait(left)

    def first_event_after(
        self, pick: Callable[[str, dict[str, str]], bool], t0: float, timeout: float
    ) -> float | None:
        """Seconds from t0 to the first event (action, attributes) `pick` accepts; None if
        there is none within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                times = [
                    t for t, action, _, attrs in self.events if t >= t0 and pick(action, attrs)
                ]
                if times:
                    return min(times) - t0
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def last_start(self, cid: str) -> float | None:
        with self._cond:
            return max(self.starts.get(cid, []), default=None)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._stream.close()


def running_pid(api: docker.APIClient, cid: str) -> int:
    """State.Pid of a running container (Docker shows Pid 0 while it restarts one)."""
    deadline = time.monotonic() + 10
    while (pid := api.inspect_container(cid)["State"]["Pid"]) <= 0:
        if time.monotonic() > deadline:
            raise TimeoutError("container has no pid")
        time.sleep(0.01)
    return pid


def kill_pid(api: docker.APIClient, cid: str) -> float:
    """SIGKILL the container's main process from the host; return the time just before."""
    pid = running_pid(api, cid)
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    return t0


def kill_all(api: docker.APIClient, ids: list[str]) -> float:
    """SIGKILL the main processes of all `ids` at once; return the time just before."""
    pids = [running_pid(api, cid) for cid in ids]
    t0 = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return t0


def wait_until(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> float:
    """Poll `cond` until true; return the seconds it took. Fails early if `proc` exits."""
    start = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(
                f"the daemon exited ({proc.returncode}) while waiting: {what}\n{tail}"
            )
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - start


def retrying(fn: Callable[[], None], what: str, timeout: float = 180) -> None:
    """Run a cleanup step; while the engine is unreachable (restarted), retry it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fn()
            return
        except (requests.exceptions.ConnectionError, docker.errors.APIError) as exc:
            if time.monotonic() > deadline:
                print(f"CLEANUP FAILED: {what}: {exc}", flush=True)
                return
            time.sleep(2)


def cleanup(api: docker.APIClient, label: str) -> None:
    """Remove every container, network and volume carrying `label` (KEY=VALUE)."""
    retrying(lambda: remove_labelled(api, label), f"remove everything labelled {label}")


# ---------------------------------------------------------------------- cases (a)-(d)


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
    cs = api.containers(filters={"label": f"{PROJECT_LABEL}={project}"})
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
    project = f"bench{run}{fault.replace('_', '')}"
    with tempfile.TemporaryDirectory(prefix=f"bench-{run}-") as tmp:
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
            stop_daemon(proc)
            cleanup(api, f"{PROJECT_LABEL}={project}")


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


# ---------------------------------------------------------------------- busy cases


def a_service(kind: str, run: str) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": IMAGE,
        "replicas": 3,
        "init": True,
        "command": ["sleep", "100000"],
        "stop_grace_period": "2s",
        "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "timeout": "1s", "retries": 2},
        "labels": {BENCH_LABEL: run},
    }
    if kind == "busy-c":  # busybox sleep as PID 1 without init ignores SIGTERM
        svc |= {"init": False, "command": ["sleep", "3600"], "stop_grace_period": "60s"}
    return svc


def busy_doc(project: str, run: str, a: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "project": project,
        "networks": {f"{project}_default": {"labels": {BENCH_LABEL: run}}},
        "services": {
            "a": a,
            "b": {
                "image": IMAGE,
                "replicas": 1,
                "init": True,
                "restart": "no",
                "command": ["sleep", "100000"],
                "heal": {"min_uptime": B_MIN_UPTIME},
                "labels": {BENCH_LABEL: run},
            },
        },
    }


def service_containers(
    api: docker.APIClient, project: str, service: str, all: bool = False
) -> list[dict[str, Any]]:
    return api.containers(
        all=all, filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}
    )


def a_converged(
    api: docker.APIClient,
    project: str,
    count: int,
    image: str | None = None,
    old: frozenset[str] | set[str] = frozenset(),
) -> bool:
    """A has exactly `count` containers, all running and healthy (on `image`), none of `old`."""
    cs = service_containers(api, project, "a", all=True)
    return len(cs) == count and all(
        c["State"] == "running"
        and "(healthy)" in c["Status"]
        and (image is None or c["Image"] == image)
        and c["Id"] not in old
        for c in cs
    )


class HealTimeout(Exception):
    """The healed container did not run again within HEAL_TIMEOUT_S."""


def engine_up(api: docker.APIClient) -> bool:
    try:
        return bool(api.ping())
    except Exception:
        return False


def wait_engine(api: docker.APIClient, timeout: float = 300) -> None:
    wait_until(lambda: engine_up(api), timeout, "the Docker engine is back")


def guarded_trial(
    api: docker.APIClient,
    watcher: StartWatcher,
    body: Callable[[dict[str, Any]], float],
    recover: Callable[[], None],
    what: str,
    discarded: list[dict[str, Any]],
) -> tuple[float, dict[str, Any]]:
    """One trial: `body(note)` returns its figure. A trial during which the engine
    restarted (the event stream broke; this engine is shared) measures nothing: it is
    kept in `discarded`, and repeated after `recover()`. A heal timeout is a figure
    (HEAL_TIMEOUT_S, a lower bound) with note["timeout"]."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        breaks = len(watcher.breaks)
        note: dict[str, Any] = {}
        value: float | None = None
        try:
            value = body(note)
        except HealTimeout:
            value, note["timeout"] = HEAL_TIMEOUT_S, True
            print(f"  {what}: not running again within {HEAL_TIMEOUT_S:.0f} s", flush=True)
        except (requests.exceptions.ConnectionError, docker.errors.APIError, TimeoutError):
            if len(watcher.breaks) == breaks and engine_up(api):
                raise
        if value is not None and len(watcher.breaks) == breaks:
            return value, note
        discarded.append({"trial": what, "attempt": attempt, "value": value, **note})
        print(f"  {what}: the engine restarted during the trial: discarded, repeated", flush=True)
        wait_engine(api)
        recover()
    raise RuntimeError(f"{what}: the engine restarted during each of {MAX_ATTEMPTS} attempts")


class BusyRun:
    """One busy case: its project, file and daemon; B's heal measured idle, then busy."""

    def __init__(
        self, api: docker.APIClient, watcher: StartWatcher, kind: str, run: str, tmp: Path
    ) -> None:
        self.api = api
        self.watcher = watcher
        self.kind = kind
        self.project = f"bench{run}{kind.replace('-', '')}"
        self.tmp = tmp
        self.path = tmp / "desired_state.yaml"
        self.a = a_service(kind, run)
        self.doc = busy_doc(self.project, run, self.a)
        self.proc: subprocess.Popen[bytes] | None = None
        self.discarded: list[dict[str, Any]] = []

    def write(self, **a_changes: Any) -> float:
        """Write the file with A changed; return the time just before the write."""
        doc = copy.deepcopy(self.doc)
        doc["services"]["a"] |= a_changes
        t = time.time()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(self.path)
        return t

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        return wait_until(
            cond, timeout, f"{self.project}: {what}", self.proc, self.tmp / "daemon.log"
        )

    def start(self) -> None:
        self.write()
        self.proc = start_daemon(self.path, self.tmp, interval=60)
        self.wait(lambda: a_converged(self.api, self.project, 3), 120, "A at 3, healthy")
        self.wait(lambda: len(service_containers(self.api, self.project, "b")) == 1, 60, "B up")
        time.sleep(1.0)  # the daemon's event stream is connected

    def recover(self) -> None:
        """After an engine restart: the first file again, A at 3 and healthy, B up."""
        self.write()
        self.wait(
            lambda: a_converged(self.api, self.project, 3, image=self.a["image"]),
            HEAL_TIMEOUT_S,
            "A back to its first spec",
        )
        self.wait(lambda: len(service_containers(self.api, self.project, "b")) == 1, 60, "B up")

    def stop(self) -> None:
        if self.proc is not None:
            stop_daemon(self.proc)
        cleanup(self.api, f"{PROJECT_LABEL}={self.project}")

    def trial(self, body: Callable[[dict[str, Any]], float], what: str) -> tuple[float, dict]:
        return guarded_trial(
            self.api, self.watcher, body, self.recover, f"{self.kind} {what}", self.discarded
        )

    def settled_b(self) -> str:
        """B's container id, once B has run B_SETTLE_S (a kill is then a first failure)."""
        self.wait(lambda: len(service_containers(self.api, self.project, "b")) == 1, 60, "B up")
        bid = service_containers(self.api, self.project, "b")[0]["Id"]
        started = self.watcher.last_start(bid)
        if started is None:
            time.sleep(B_SETTLE_S)
        else:
            time.sleep(max(0.0, started + B_SETTLE_S - time.time()))
        return bid

    def heal_b(self, bid: str, note: dict[str, Any] | None = None) -> float:
        """SIGKILL B's process; seconds until B runs again. `note` gets A's states just
        before the kill (evidence that A was busy)."""
        if note is not None:
            note["a_at_kill"] = self.a_states()
        t0 = kill_pid(self.api, bid)
        try:
            return self.watcher.first_start_after(lambda c: c == bid, t0, HEAL_TIMEOUT_S)
        except TimeoutError as exc:
            raise HealTimeout from exc

    def a_states(self) -> dict[str, int]:
        """A's containers by state and health, e.g. {"running/unhealthy": 1, ...}."""
        out: dict[str, int] = {}
        for c in service_containers(self.api, self.project, "a", all=True):
            status = c["Status"]
            health = next(
                (h for h in ("unhealthy", "healthy", "starting") if f"{h})" in status), None
            )
            key = f"{c['State']}/{health}" if health else c["State"]
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    def is_a(self, attrs: dict[str, str]) -> bool:
        return attrs.get(PROJECT_LABEL) == self.project and attrs.get(SERVICE_LABEL) == "a"

    # ------------------------------------------------------------------ the busy trials

    def never_healthy_rollout(self, note: dict[str, Any], change: int) -> float:
        """busy-a: a new change of A whose healthcheck never passes; B killed during it."""
        bid = self.settled_b()
        hc = {**self.a["healthcheck"], "test": ["CMD", "false"]}
        te = self.write(healthcheck=hc, environment={"BENCH_ROLLOUT": str(change)})
        # the rollout started: A's old replica is stopped or a new one is created
        note["rollout_seen_s"] = _round(
            self.watcher.first_event_after(
                lambda act, at: self.is_a(at) and act in ("kill", "create", "destroy"), te, 8
            )
        )
        time.sleep(0.5)
        return self.heal_b(bid, note)

    def slow_pull(self, note: dict[str, Any], registry: SlowRegistry, ref: str) -> float:
        """busy-b: A changed to an image that pulls slowly; B killed once 1 MB came in."""
        assert registry.proxy is not None
        proxy = registry.proxy
        bid = self.settled_b()
        before = proxy.bytes_down
        te = self.write(image=ref)
        try:
            self.wait(lambda: proxy.bytes_down - before >= 1_000_000, 20, "pull started")
            note["pull_seen_s"] = round(time.time() - te, 3)
        except TimeoutError:
            note["pull_seen_s"] = None
        value = self.heal_b(bid, note)
        self.wait(
            lambda: a_converged(self.api, self.project, 3, image=ref),
            HEAL_TIMEOUT_S,
            "A on the new image",
        )
        note["a_on_new_image_s"] = round(time.time() - te, 3)
        note["bytes_pulled"] = proxy.bytes_down - before
        return value

    def long_stop(self, note: dict[str, Any]) -> float:
        """busy-c: A (ignores SIGTERM, 60 s grace) scaled to 0; B killed during its stop."""
        bid = self.settled_b()
        old = {c["Id"] for c in service_containers(self.api, self.project, "a", all=True)}
        te = self.write(replicas=0)
        note["stop_seen_s"] = _round(
            self.watcher.first_event_after(
                lambda act, at: self.is_a(at) and act == "kill" and at.get("signal") == "15",
                te,
                8,
            )
        )
        time.sleep(0.5)
        value = self.heal_b(bid, note)
        # how long A's stop really took (SIGTERM -> the last one died)
        try:
            died = self.watcher.each_after(old, "die", te, 150)
            note["a_stop_s"] = round(max(died.values()) - te - (note["stop_seen_s"] or 0.0), 3)
        except TimeoutError:
            note["a_stop_s"] = None
        tr = self.write(replicas=3)
        self.wait(
            lambda: a_converged(self.api, self.project, 3, old=old),
            HEAL_TIMEOUT_S,
            "A back at 3",
        )
        note["a_back_s"] = round(time.time() - tr, 3)
        return value


def busy_case(
    api: docker.APIClient,
    watcher: StartWatcher,
    kind: str,
    trials: int,
    run: str,
    out: dict[str, Any],
    registry: SlowRegistry | None = None,
    refs: list[str] | None = None,
) -> dict[str, Any]:
    """B's heal time idle, then while A is busy (`kind`), into `out` as they come (so a
    failed case keeps its trials); per-trial notes. On failure the daemon's log is kept
    in bench/results."""
    idle: list[float] = out.setdefault("idle", [])
    busy: list[float] = out.setdefault("busy", [])
    notes: list[dict[str, Any]] = out.setdefault("notes", [])
    out["complete"] = False
    with tempfile.TemporaryDirectory(prefix=f"bench-{run}-{kind}-") as tmp:
        br = BusyRun(api, watcher, kind, run, Path(tmp))
        out["discarded"] = br.discarded
        failed = True
        try:
            br.start()
            for i in range(trials):
                value, _ = br.trial(lambda note: br.heal_b(br.settled_b()), f"idle {i + 1}")
                idle.append(value)
            print(f"  {kind}: idle p50 {summary(idle)['p50']:.3f} s", flush=True)
            unused = iter(refs or [])
            changes = 0
            for i in range(trials):

                def body(note: dict[str, Any]) -> float:
                    nonlocal changes
                    changes += 1
                    if kind == "busy-a":
                        return br.never_healthy_rollout(note, changes)
                    if kind == "busy-b":
                        assert registry is not None
                        ref = next(unused, None)  # never pulled yet: slow
                        if ref is None:
                            raise RuntimeError("busy-b: no unpulled image left")
                        return br.slow_pull(note, registry, ref)
                    return br.long_stop(note)

                value, note = br.trial(body, f"trial {i + 1}/{trials}")
                busy.append(value)
                note["b_heal_s"] = round(value, 3)
                notes.append(note)
                print(f"  {kind} trial {i + 1}/{trials}: {note}", flush=True)
            out["timeouts"] = sum(1 for n in notes if n.get("timeout"))
            if kind == "busy-c":
                short = sum(
                    1 for n in notes if n.get("a_stop_s") is not None and n["a_stop_s"] < 55
                )
                out["stops_shorter_than_grace"] = short
                if short:
                    print(
                        f"  busy-c: in {short} of {trials} trials A's stop took < 55 s: "
                        "the 60 s stop_grace_period was not honoured",
                        flush=True,
                    )
            out["complete"] = True
            failed = False
            return out
        finally:
            br.stop()
            if failed:
                keep_log(Path(tmp) / "daemon.log", f"heal-{run}-{kind}-daemon.log")


def keep_log(path: Path, name: str) -> None:
    """Copy a failed case's daemon log to bench/results (temp dirs are removed)."""
    with contextlib.suppress(OSError):
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, RESULTS / name)
        print(f"  kept the daemon log: {RESULTS / name}", flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def busy_b_case(
    api: docker.APIClient,
    watcher: StartWatcher,
    trials: int,
    run: str,
    out: dict[str, Any],
    size: int,
    rate: float,
) -> dict[str, Any]:
    """busy-b with its registry, proxy and images: made here, removed here. One image per
    trial (a pulled layer is never slow again), plus spares for repeated trials."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{run}-registry-") as tmp:
        registry = SlowRegistry(Path(tmp), rate=rate)
        with registry:
            try:
                t = time.monotonic()
                count = trials + MAX_ATTEMPTS - 1
                refs = [
                    registry.push_random_image(api, IMAGE, f"bench-{run}-slow", f"t{i}", size)
                    for i in range(count)
                ]
                print(
                    f"  busy-b: {count} images pushed in {time.monotonic() - t:.1f} s", flush=True
                )
                out["pull_bytes"] = size
                out["proxy_rate_bytes_per_s"] = rate
                return busy_case(api, watcher, "busy-b", trials, run, out, registry, refs)
            finally:
                retrying(lambda: registry.remove_images(api), "remove the pulled images")


# ---------------------------------------------------------------------- mass failure


def all_running(api: docker.APIClient, ids: list[str]) -> bool:
    running = {c["Id"] for c in api.containers(filters={"id": ids})}
    return running >= set(ids)


def mass_trials(
    api: docker.APIClient,
    watcher: StartWatcher,
    ids: list[str],
    trials: int,
    what: str,
    discarded: list[dict[str, Any]],
    out: list[float],
) -> list[float]:
    """SIGKILL all `ids` at once, `trials` times; seconds until all run again, appended
    to `out` as they come."""

    def body(note: dict[str, Any]) -> float:
        last = max((watcher.last_start(c) or time.time() for c in ids), default=time.time())
        time.sleep(max(0.0, last + MASS_SETTLE_S - time.time()))
        t0 = kill_all(api, ids)
        try:
            took = watcher.all_started_after(ids, t0, HEAL_TIMEOUT_S)
        except TimeoutError as exc:
            raise HealTimeout from exc
        time.sleep(0.5)
        return took

    def recover() -> None:
        wait_until(lambda: all_running(api, ids), HEAL_TIMEOUT_S, f"{what}: all running")

    for i in range(trials):
        out.append(
            guarded_trial(api, watcher, body, recover, f"{what} {i + 1}/{trials}", discarded)[0]
        )
    return out


def mass_reconciler(
    api: docker.APIClient,
    watcher: StartWatcher,
    trials: int,
    run: str,
    n: int,
    discarded: list[dict[str, Any]],
    out: list[float],
) -> list[float]:
    project = f"bench{run}mass"
    with tempfile.TemporaryDirectory(prefix=f"bench-{run}-mass-") as tmp:
        path = daemon_stack(Path(tmp), project, n, run)
        proc = start_daemon(path, Path(tmp), interval=60)
        failed = True
        try:
            wait_until(
                lambda: len(replica_ids(api, project)) == n,
                300,
                f"{project}: {n} running",
                proc,
                Path(tmp) / "daemon.log",
            )
            time.sleep(1.0)
            ids = sorted(replica_ids(api, project).values())
            mass_trials(api, watcher, ids, trials, "mass reconciler", discarded, out)
            failed = False
            return out
        finally:
            stop_daemon(proc)
            cleanup(api, f"{PROJECT_LABEL}={project}")
            if failed or os.environ.get("BENCH_KEEP_LOGS"):
                keep_log(Path(tmp) / "daemon.log", f"heal-{run}-mass-daemon.log")


def mass_docker(
    api: docker.APIClient,
    watcher: StartWatcher,
    trials: int,
    run: str,
    n: int,
    discarded: list[dict[str, Any]],
    out: list[float],
) -> list[float]:
    label = f"{run}-mass"
    try:
        # On a user-defined network with an alias, as the reconciler's replicas (and compose's
        # containers) are: a start there also sets up the embedded DNS entry.
        net = f"bench-{run}-mass-net"
        api.create_network(net, driver="bridge", labels={BENCH_LABEL: label})
        ids = []
        for i in range(n):
            c = api.create_container(
                IMAGE,
                ["sleep", "100000"],
                name=f"bench-{run}-mass-always-{i}",
                labels={BENCH_LABEL: label},
                host_config=api.create_host_config(
                    restart_policy={"Name": "always"}, init=True, network_mode=net
                ),
                networking_config=api.create_networking_config(
                    {net: api.create_endpoint_config(aliases=["app"])}
                ),
            )
            ids.append(c["Id"])
        for cid in ids:
            api.start(cid)
        return mass_trials(api, watcher, ids, trials, "mass docker", discarded, out)
    finally:
        cleanup(api, f"{BENCH_LABEL}={label}")


# ---------------------------------------------------------------------- main


def parse_cases(text: str) -> list[str]:
    wanted: list[str] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if item in GROUPS:
            wanted += GROUPS[item]
        elif item in ALL_CASES:
            wanted.append(item)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown case {item!r}: use {', '.join(ALL_CASES)} or {', '.join(GROUPS)}"
            )
    return [c for c in ALL_CASES if c in wanted]


METHOD = {
    "a": "fresh container per trial (no Docker back-off build-up)",
    "b": "one daemon, a different replica per trial, restart policy no",
    "c": "one daemon, a different replica per trial",
    "d": "measured: a 5 s polling loop starting exited containers",
    "busy": "one daemon per case (--interval 60); A 3 replicas (healthcheck 1 s, grace 2 s, "
    "init), B 1 replica (restart no, heal.min_uptime 1s, run 1.5 s before each kill); "
    "B SIGKILLed N times idle, then N times busy; seconds from the kill to B's start event",
    "busy-a": "per trial a new change of A whose healthcheck is `false` (never healthy); "
    "B killed 0.5 s after A's rollout is seen (a kill/create/destroy of A, <= 8 s)",
    "busy-b": "per trial a new image (random layer) via docker-registry + a rate-limited "
    "proxy on 127.0.0.1; B killed once 1 MB came through; next trial after A runs it",
    "busy-c": "A: sleep as PID 1 (no init, ignores SIGTERM), stop_grace_period 60s; A scaled "
    "3 -> 0, B killed 0.5 s after Docker sent A SIGTERM; a_stop_s = SIGTERM -> A's last die; "
    "A scaled back to 3 after it",
    "mass": "all replicas' processes SIGKILLed at once; time until the last runs again; "
    "every replica has run 12 s before each kill; reconciler: restart no, one daemon; "
    "Docker: restart always, no daemon",
}

TARGETS = {"busy": 1.2, "mass": 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        type=parse_cases,
        default=list(ALL_CASES),
        help="comma list: a, b, c, d, busy-a, busy-b, busy-c, mass, single, busy, all",
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per case (default: 20 for a-d, 10 busy)"
    )
    parser.add_argument("--mass-trials", type=int, default=5)
    parser.add_argument("--mass-size", type=int, default=50)
    parser.add_argument("--pull-mb", type=float, default=30.0, help="busy-b: layer size, MB")
    parser.add_argument("--pull-rate-mb", type=float, default=1.0, help="busy-b: proxy MB/s")
    args = parser.parse_args(argv)
    # Ctrl-C / SIGTERM unwind through the cleanups (a background shell ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cases: list[str] = args.cases
    single_trials = args.trials or 20
    busy_trials = args.trials or 10
    api = docker.from_env(timeout=300).api
    build_scratch_image(api, IMAGE)
    run = uuid.uuid4().hex[:8]
    print(f"run {run}: cases {', '.join(cases)}", flush=True)
    watcher = StartWatcher(api, BENCH_LABEL)
    results: dict[str, list[float]] = {}
    busy: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    mass_discarded: list[dict[str, Any]] = []

    def attempt(case: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        print(f"{case} ...", flush=True)
        try:
            fn()
        except Exception as exc:  # a case failing must not lose the others' figures
            errors[case] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"{case} done in {time.monotonic() - t:.0f} s", flush=True)

    def single(key: str, fn: Callable[[], list[float]]) -> Callable[[], None]:
        return lambda: results.__setitem__(key, fn())

    def busy_run(kind: str) -> Callable[[], None]:
        def go() -> None:
            # filled as trials come: a case that fails keeps what it measured
            r: dict[str, Any] = {"idle": [], "busy": []}
            key = kind.replace("-", "_")
            busy[kind] = r
            results[f"{key}_idle_b"] = r["idle"]
            results[f"{key}_busy_b"] = r["busy"]
            if kind == "busy-b":
                size = int(args.pull_mb * 1_000_000)
                rate = args.pull_rate_mb * 1_000_000
                busy_b_case(api, watcher, busy_trials, run, r, size, rate)
            else:
                busy_case(api, watcher, kind, busy_trials, run, r)

        return go

    def mass() -> None:
        n, k = args.mass_size, args.mass_trials
        gone = mass_discarded
        rec = results.setdefault(f"mass_reconciler_{n}", [])
        mass_reconciler(api, watcher, k, run, n, gone, rec)
        dock = results.setdefault(f"mass_docker_always_{n}", [])
        mass_docker(api, watcher, k, run, n, gone, dock)

    t = single_trials
    plan: dict[str, Callable[[], None]] = {
        "a": single("a_docker_restart_always_sigkill", lambda: docker_always(api, watcher, t, run)),
        "b": single(
            "b_reconciler_sigkill", lambda: reconciler_trials(api, watcher, t, run, "sigkill")
        ),
        "c": single("c_reconciler_rm_f", lambda: reconciler_trials(api, watcher, t, run, "rm")),
        "d": single("d_polling_5s_sigkill", lambda: polling_trials(api, watcher, t, run)),
        **{kind: busy_run(kind) for kind in BUSY},
        "mass": mass,
    }
    try:
        for case in cases:
            attempt(case, plan[case])
    finally:
        watcher.close()
        for label in (run, f"{run}-poll", f"{run}-mass"):
            cleanup(api, f"{BENCH_LABEL}={label}")

    stats = {k: summary(v) for k, v in results.items() if v}
    p50 = {k: s["p50"] for k, s in stats.items()}
    ratios: dict[str, float] = {}
    lines = []
    a, b, c, d = (
        p50.get(k)
        for k in (
            "a_docker_restart_always_sigkill",
            "b_reconciler_sigkill",
            "c_reconciler_rm_f",
            "d_polling_5s_sigkill",
        )
    )
    if a and b:
        ratios["b_over_a_p50"] = b / a
        lines.append(f"(b)/(a) p50 = {b / a:.2f}   target <= 1.2")
    if c:
        ratios["c_p50_s"] = c
        lines.append(f"(c) p50     = {c:.3f} s   target < 1 s")
    if b and d:
        ratios["d_over_b_p50"] = d / b
        lines.append(f"(d)/(b) p50 = {d / b:.1f}x  target >= 5x")
    for kind in BUSY:
        key = kind.replace("-", "_")
        idle, hot = p50.get(f"{key}_idle_b"), p50.get(f"{key}_busy_b")
        if idle and hot:
            ratios[f"{key}_busy_over_idle_p50"] = hot / idle
            lines.append(
                f"{kind}: B p50 busy/idle = {hot / idle:.2f}  ({hot:.3f} s / {idle:.3f} s)"
                f"   target <= {TARGETS['busy']}"
            )
    short = busy.get("busy-c", {}).get("stops_shorter_than_grace")
    if short:
        lines.append(
            f"busy-c: WARNING in {short} trial(s) A's stop took < 55 s: its 60 s"
            " stop_grace_period was not honoured (see notes a_stop_s)"
        )
    n = args.mass_size
    rec, dock = p50.get(f"mass_reconciler_{n}"), p50.get(f"mass_docker_always_{n}")
    if rec and dock:
        ratios["mass_reconciler_over_docker_p50"] = rec / dock
        lines.append(
            f"mass ({n}): reconciler/Docker p50 = {rec / dock:.2f}  ({rec:.3f} s / {dock:.3f} s)"
            f"   target <= {TARGETS['mass']}"
        )
    rows = [[k, s["n"], s["p50"], s["p95"], s["min"], s["max"]] for k, s in stats.items()]
    print()
    print(table(["case (seconds to running again)", "n", "p50", "p95", "min", "max"], rows))
    print()
    print("\n".join(lines))
    for kind, r in busy.items():
        if not r.get("complete"):
            lines.append(
                f"{kind}: INCOMPLETE ({len(r['idle'])} idle, {len(r['busy'])} busy trials of"
                f" {busy_trials}): see FAILED below"
            )
        if r.get("discarded"):
            lines.append(
                f"{kind}: {len(r['discarded'])} trial(s) discarded and repeated (the engine"
                " restarted during them)"
            )
    if mass_discarded:
        lines.append(
            f"mass: {len(mass_discarded)} trial(s) discarded and repeated (the engine restarted)"
        )
    if watcher.breaks:
        print(
            f"WARNING the Docker event stream broke {len(watcher.breaks)} time(s) (dockerd "
            "restarted?): busy and mass trials across it were repeated; figures of (a)-(d) "
            "measured across it are suspect"
        )
    for case, error in errors.items():
        print(f"FAILED {case}: {error}")
    path = write_json(
        "heal",
        {
            "run": run,
            "cases": cases,
            "trials": {"single": single_trials, "busy": busy_trials, "mass": args.mass_trials},
            "method": {k: v for k, v in METHOD.items() if k in cases or k == "busy"},
            "samples": results,
            "stats": stats,
            "ratios": ratios,
            "targets": TARGETS,
            "busy": {
                kind: {k: v for k, v in r.items() if k not in ("idle", "busy")}
                for kind, r in busy.items()
            },
            "mass_discarded": mass_discarded,
            "errors": errors,
            "event_stream_breaks": watcher.breaks,
        },
    )
    print(f"\nwrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
