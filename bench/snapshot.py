"""Volume snapshots: snapshot and restore throughput vs a plain `docker cp` of the same volume
in the same run, and the rollout time a snapshot adds for a 100 MB volume.

    python -m bench.snapshot [--mb 100] [--runs 5]

One service (busybox, one replica) on a named volume filled with --mb MB of random data (10
files), deployed by `reconciler apply`. With its replica stopped, each run times:
- snapshot: reconciler's archive read into the state directory (sha256 on the way), and
  `docker cp CONTAINER:/data - > file` (the same tar stream, to a file);
- restore: reconciler's raw archive write into the stopped replica, `docker cp - CONTAINER:/`
  of the same tar, and `reconciler restore` as a user runs it (checks the sha256 and the tar,
  stops and removes the replica, empties the volume by recreating it, puts the tar, starts);
- rollout: `reconciler apply` of a new revision (an environment variable) with snapshots on,
  then off, alternating; the median difference is what a snapshot adds.
MB/s are of the tar's size; medians of --runs. Everything is named bench-<run> and removed.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.common import table, write_json
from reconciler.engine.host import archive
from tests.enginekit import build_scratch_image, remove_labelled

IMAGE = "reconciler-bench-busybox:1"
LABEL = "io.reconciler.bench"
SLEEPER = "trap 'exit 0' TERM; sleep 100000 & wait"


def doc(project: str, run: str, rev: int, snapshots: bool) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": IMAGE,
        "command": ["sh", "-c", SLEEPER],
        "volumes": [f"{project}-vol:/data"],
        "environment": {"REV": str(rev)},
        "stop_grace_period": "2s",
        "drain_period": "0s",
        "labels": {LABEL: run},
        "deploy": {"update_config": {"monitor": "1s"}},
    }
    if snapshots:
        svc["x-reconciler"] = {"snapshots": {"keep": 2, "min_free": "100m"}}
    return {
        "version": 1,
        "project": project,
        "volumes": {f"{project}-vol": {"labels": {LABEL: run}}},
        "services": {"app": svc},
    }


def cli(*args: str, seen: list[float] | None = None) -> float:
    """Run the CLI; return its wall time (raise on failure). `seen`: the seconds of each
    snapshot it took (its log line), appended."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-format", "json", "--log-level", "info", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"reconciler {' '.join(args)}: {out.stdout}{out.stderr}")
    for line in (out.stdout + out.stderr).splitlines():
        if seen is not None and "volume snapshot taken" in line:
            seen.append(float(json.loads(line)["seconds"]))
    return took


def replica(api: docker.APIClient, project: str) -> str:
    found = api.containers(all=True, filters={"label": f"io.reconciler.project={project}"})
    assert len(found) == 1, found
    return str(found[0]["Id"])


def median(values: list[float]) -> float:
    return statistics.median(values)


def mbps(size: int, seconds: list[float]) -> float:
    return size / 1e6 / statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    api = docker.from_env(timeout=600).api
    build_scratch_image(api, IMAGE)
    run = uuid.uuid4().hex[:8]
    project = f"bench-{run}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    state = tmp / "state"
    os.environ["STATE_DIRECTORY"] = str(state)
    path = tmp / "desired_state.yaml"
    common = ["--lock-dir", str(tmp), "--state-dir", str(state)]
    results: dict[str, Any] = {"mb": args.mb, "runs": args.runs}
    try:
        path.write_text(yaml.safe_dump(doc(project, run, 0, True)))
        cli("apply", str(path), *common)
        cid = replica(api, project)
        fill = (
            "for i in $(seq 10); do dd if=/dev/urandom of=/data/f$i bs=1M "
            f"count={args.mb // 10} 2>/dev/null; done"
        )
        api.exec_start(api.exec_create(cid, ["sh", "-c", fill])["Id"])
        api.stop(cid, timeout=5)

        snap, cp_out = [], []
        tar = tmp / "ours.tar"
        size = 0
        for _ in range(args.runs):
            with tar.open("wb") as f:
                start = time.monotonic()
                size, _ = archive.read_volume(api, cid, "/data", f)
                f.flush()
                os.fsync(f.fileno())
                snap.append(time.monotonic() - start)
            with (tmp / "cp.tar").open("wb") as f:
                start = time.monotonic()
                subprocess.run(["docker", "cp", f"{cid}:/data", "-"], stdout=f, check=True)
                os.fsync(f.fileno())
                cp_out.append(time.monotonic() - start)
        put, cp_in = [], []
        for _ in range(args.runs):
            with tar.open("rb") as f:
                start = time.monotonic()
                archive.write_volume(api, cid, "/data", f)
                put.append(time.monotonic() - start)
            with tar.open("rb") as f:
                start = time.monotonic()
                subprocess.run(["docker", "cp", "-", f"{cid}:/"], stdin=f, check=True)
                cp_in.append(time.monotonic() - start)

        # Rollouts, snapshots on and off (alternating); each leaves one snapshot more.
        on: list[float] = []
        off: list[float] = []
        step: list[float] = []  # the snapshot step inside each rollout (its log line)
        for i in range(args.runs):
            for flag, bucket in ((True, on), (False, off)):
                rev = 1 + 2 * i + (0 if flag else 1)
                path.write_text(yaml.safe_dump(doc(project, run, rev, flag)))
                bucket.append(cli("apply", str(path), *common, seen=step))
        listed = subprocess.run(
            [sys.executable, "-m", "reconciler", "snapshots", "app", "-f", str(path), *common],
            capture_output=True,
            text=True,
        ).stdout
        ident = listed.strip().splitlines()[-1].split()[-1]
        restore = [cli("restore", "app", ident, "-f", str(path), *common) for _ in range(args.runs)]
        cid = replica(api, project)

        rows = [
            ["snapshot (archive read + sha256)", mbps(size, snap), statistics.median(snap)],
            ["docker cp CONTAINER:/data - > file", mbps(size, cp_out), statistics.median(cp_out)],
            ["restore: archive write", mbps(size, put), statistics.median(put)],
            ["docker cp - CONTAINER:/", mbps(size, cp_in), statistics.median(cp_in)],
            [
                "reconciler restore (CLI, all steps)",
                mbps(size, restore),
                statistics.median(restore),
            ],
        ]
        added = statistics.median(on) - statistics.median(off)
        print(f"volume: {size / 1e6:.1f} MB tar, {args.runs} runs (medians)\n")
        print(table(["what", "MB/s", "seconds"], rows))
        print(
            f"\nrollout (reconciler apply, 1 replica): {statistics.median(on):.2f} s with a "
            f"snapshot, {statistics.median(off):.2f} s without: +{added:.2f} s (the snapshot "
            f"step itself: {statistics.median(step):.2f} s)"
        )
        results.update(
            tar_bytes=size,
            snapshot_s=snap,
            docker_cp_out_s=cp_out,
            restore_write_s=put,
            docker_cp_in_s=cp_in,
            restore_cli_s=restore,
            rollout_with_snapshot_s=on,
            rollout_without_s=off,
            medians={row[0]: {"mb_s": row[1], "s": row[2]} for row in rows},
            rollout_added_s=added,
            rollout_snapshot_step_s=step,
        )
        print(f"\nwritten: {write_json('snapshot', results)}")
    finally:
        remove_labelled(api, f"io.reconciler.project={project}")
        remove_labelled(api, f"{LABEL}={run}")
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
