"""How many Docker API requests a no-op `reconciler plan` makes, by project size.

    python -m bench.api_calls [--sizes 10,100,300] [--trials 3] [--swarm-sizes 10]

For each size N: a seed-shaped project of N replicas (bench/converge.py's file: one network,
two volumes, four services) is applied with `reconciler apply`, then `reconciler plan` runs
`--trials` times as its own process with DOCKER_HOST pointing at a counting proxy: a unix
socket in front of the engine's that records every HTTP request (method and path), so the
version negotiation at connect counts too. The plan must say "in sync" (exit 0).
--swarm-sizes (empty: skipped) does the same with `--target swarm` on the engine's swarm
(one service of N replicas on one overlay network; the swarm must be active already).
Everything carries the label io.reconciler.bench=<run> and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import yaml

from bench.common import BENCH_LABEL, table, write_json
from bench.converge import IMAGE, reconciler_doc
from tests.enginekit import build_scratch_image, remove_labelled
from tests.swarmkit import remove_project, swarm_state


def engine_socket() -> str:
    """The engine's unix socket (DOCKER_HOST=unix://..., else the default)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        raise SystemExit(f"bench.api_calls needs a unix socket engine, not DOCKER_HOST={host}")
    return host.removeprefix("unix://") or "/var/run/docker.sock"


class CountingProxy:
    """A unix-socket proxy in front of the engine's socket recording each HTTP request.

    Requests are parsed in the client's direction only (head, then a Content-Length or
    chunked body); responses are relayed as bytes. Keep-alive connections count each
    request they carry.
    """

    def __init__(self, path: Path, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def take(self) -> list[tuple[str, str]]:
        """The requests recorded since the last take."""
        with self._lock:
            out, self.calls = self.calls, []
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                head = [line]
                headers: dict[str, str] = {}
                while True:
                    h = reader.readline()
                    head.append(h)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                method, target, *_ = line.decode("latin-1").split()
                with self._lock:
                    self.calls.append((method, target))
                upstream.sendall(b"".join(head))
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self._chunked(reader, upstream)
                elif int(headers.get("content-length") or 0):
                    upstream.sendall(reader.read(int(headers["content-length"])))
                if headers.get("upgrade") or headers.get("connection", "").lower() == "upgrade":
                    self._relay_file(reader, upstream)  # a hijacked stream: bytes from now on
                    return
        except (OSError, ValueError):
            return
        finally:
            _shut(upstream)

    @staticmethod
    def _chunked(reader: Any, upstream: socket.socket) -> None:
        while True:
            size_line = reader.readline()
            upstream.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = reader.readline()
                    upstream.sendall(trailer)
                    if trailer in (b"\r\n", b"\n", b""):
                        return
            upstream.sendall(reader.read(size + 2))

    @staticmethod
    def _relay_file(reader: Any, dest: socket.socket) -> None:
        while chunk := reader.read1(65536):
            dest.sendall(chunk)

    @staticmethod
    def _relay(source: socket.socket, dest: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                dest.sendall(chunk)
        except OSError:
            pass
        finally:
            _shut(dest)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def cli(*args: str, docker_host: str | None = None, timeout: float = 900) -> str:
    """`python -m reconciler ARGS`; its output (stdout), or SystemExit with both streams."""
    env = dict(os.environ)
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"reconciler {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def swarm_doc(project: str, n: int, run: str) -> dict[str, Any]:
    labels = {BENCH_LABEL: run}
    return {
        "version": 1,
        "project": project,
        "networks": {"net": {"labels": labels}},
        "services": {
            "web": {
                "image": IMAGE,
                "replicas": n,
                "init": True,
                "command": ["sleep", "100000"],
                "networks": ["net"],
                "labels": labels,
                "stop_grace_period": "1s",
            }
        },
    }


@contextlib.contextmanager
def project_file(doc: dict[str, Any]) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "desired_state.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        yield path, Path(tmp)


def noop_plans(
    proxy: CountingProxy, doc: dict[str, Any], trials: int, target: str
) -> list[list[tuple[str, str]]]:
    """Apply `doc`, then plan it `trials` times through the proxy: the requests of each."""
    with project_file(doc) as (path, tmp):
        dirs = ["--target", target, "--lock-dir", str(tmp), "--state-dir", str(tmp)]
        cli("apply", str(path), *dirs, "--timeout", "600")
        out = []
        for _ in range(trials):
            proxy.take()
            said = cli("plan", str(path), *dirs, docker_host=proxy.docker_host)
            if not said.rstrip().endswith(": in sync"):
                raise SystemExit(f"the plan is not a no-op:\n{said}")
            out.append(proxy.take())
    return out


def measure(
    proxy: CountingProxy, sizes: list[int], trials: int, target: str, run: str
) -> dict[int, list[list[tuple[str, str]]]]:
    api = docker.from_env(timeout=300).api
    out = {}
    for n in sizes:
        project = f"ac{run}{target[0]}{n}"
        doc = (swarm_doc if target == "swarm" else reconciler_doc)(project, n, run)
        try:
            out[n] = noop_plans(proxy, doc, trials, target)
        finally:
            if target == "swarm":
                remove_project(api, project)
            remove_labelled(api, f"{BENCH_LABEL}={run}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300")
    parser.add_argument("--swarm-sizes", default="10")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", default="api_calls", help="bench/results/OUT.json")
    args = parser.parse_args(argv)
    api = docker.from_env(timeout=300).api
    build_scratch_image(api, IMAGE)
    run = uuid.uuid4().hex[:8]
    sizes = {
        "host": [int(n) for n in args.sizes.split(",") if n],
        "swarm": [int(n) for n in args.swarm_sizes.split(",") if n],
    }
    if sizes["swarm"] and swarm_state(api) != "active":
        print("the engine is in no swarm: --swarm-sizes skipped", file=sys.stderr)
        sizes["swarm"] = []
    with tempfile.TemporaryDirectory() as sockdir:
        proxy = CountingProxy(Path(sockdir) / "docker.sock", engine_socket())
        try:
            found = {t: measure(proxy, ns, args.trials, t, run) for t, ns in sizes.items() if ns}
        finally:
            proxy.close()
    rows, report = [], {}
    for target, by_size in found.items():
        for n, plans in by_size.items():
            counts = [len(p) for p in plans]
            calls = [f"{m} {p.partition('?')[0]}" for m, p in plans[-1]]
            rows.append([target, n, min(counts), max(counts), ", ".join(calls)])
            report.setdefault(target, {})[n] = {"requests": counts, "calls": plans[-1]}
    print("Docker API requests of a no-op `reconciler plan`")
    print(table(["target", "N", "min", "max", "requests (last trial)"], rows))
    print(f"\nwrote {write_json(args.out, {'trials': args.trials, 'plans': report})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
