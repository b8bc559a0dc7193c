"""Helpers shared by the benchmarks: statistics, a table, JSON output, cleanup."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_LABEL = "io.reconciler.bench"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else float("nan"),
        "p95": percentile(values, 95),
        "min": min(values, default=float("nan")),
        "max": max(values, default=float("nan")),
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    api = docker.from_env().api
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "docker": api.version().get("Version"),
        },
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


@functools.cache
def run_options() -> frozenset[str]:
    """The options `reconciler run --help` lists (they change while the runtime evolves)."""
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True, text=True
    ).stdout
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", out))


def start_daemon(path: Path, tmp: Path, interval: float = 5.0) -> subprocess.Popen[bytes]:
    """`reconciler run` in the background, its output in tmp/daemon.log; its lock (and its
    state, when `run` has `--state-dir`) in tmp."""
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
    state = ["--state-dir", str(tmp)] if "--state-dir" in run_options() else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "--log-level",
            os.environ.get("BENCH_LOG_LEVEL", "warning"),
            "run",
            str(path),
            "--interval",
            str(interval),
            "--listen",
            "off",
            "--lock-dir",
            str(tmp),
            *state,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not stopped within `timeout` (a pass can block)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
