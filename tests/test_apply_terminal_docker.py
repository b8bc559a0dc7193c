"""`apply` on a real terminal (a pty) against the real engine: one line per object with its
state and cause, an N/M counter, no log lines; errors kept under the view; `-v` and a pipe
print the plain result lines as before."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.docker

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def apply_on_a_terminal(path: Path, *extra: str, timeout: float = 180) -> tuple[int, str]:
    """Run `reconciler apply` with a pty as stdout/stderr; return its code and the screen
    text with the escape codes removed."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "60", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", str(path), *extra],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout}s: {out.decode(errors='replace')}")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out.extend(chunk)
        code = proc.wait(timeout)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return code, ANSI.sub("", out.decode(errors="replace")).replace("\r", "\n")


def test_apply_on_a_terminal_shows_objects_and_a_counter(
    write_state: Callable[[dict[str, Any]], Path], busybox_image: str, project: str
) -> None:
    doc = {
        "networks": {"net": {}},
        "services": {
            "web": {
                "image": busybox_image,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
                "replicas": 12,
                "networks": ["net"],
            },
            "bad": {  # an image that does not exist: an error kept on screen
                "image": f"127.0.0.1:9/{project}-missing:1",
                "pull_policy": "never",
            },
        },
    }
    path = write_state(doc)
    code, screen = apply_on_a_terminal(path, "--timeout", "120")
    assert code == 1, screen  # the missing image
    final = screen[screen.rfind("[+]") :]
    # 2 networks and 12 replicas done; the image failed and its container was skipped
    assert re.search(r"\[\+\] Failed 14/16", final), final  # as compose: the run failed
    for i in range(1, 13):
        assert re.search(rf"Container {project}-web-{i}\s+Started", final), final
    assert re.search(r"Network \S+\s+Created\s+missing", final), final
    assert "error: " in final and "bad" in final  # the error, in full, under the view
    assert '"event"' not in screen and "[info" not in screen  # no log lines without -v
    assert "success  create" not in screen  # no plain result lines either

    # A pipe, or -v: the plain lines as before (already in sync: nothing to do).
    piped = run_cli("apply", str(path), "--timeout", "60")
    assert "success" not in piped.stdout and "[+]" not in piped.stdout, piped.stdout
    code, verbose = apply_on_a_terminal(path, "-v", "--timeout", "60")
    assert "[+]" not in verbose, verbose
