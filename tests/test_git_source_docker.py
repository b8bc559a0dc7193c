"""The daemon following a git repository, against real parts on 127.0.0.1: a bare repository
served by `git http-backend` (stopped and started again) and over a plain path, pushes taken
by webhook and by polling, a bad commit and a force-push refused, signed commits, and an
age-encrypted secret read by a container and written nowhere by the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pyrage
import pytest
import yaml

from reconciler.engine.host.secret_files import memory_dir
from tests.conftest import DaemonProcess, run_cli, running_names, wait_for, with_test_labels
from tests.gitkit import GitHTTPServer, Repo, git
from tests.swarmkit import one_node_swarm, remove_project

pytestmark = pytest.mark.docker

DEADLINE_S = 60.0
SECRET_TEXT = "s3cr3t-token-" + os.urandom(6).hex()
ENV_TEXT = "greeting-" + os.urandom(6).hex()


def stack(project: str, image: str, replicas: int, *, secret: bool = False) -> str:
    service: dict[str, Any] = {
        "image": image,
        "replicas": replicas,
        "init": True,
        "command": ["sleep", "100000"],
    }
    doc: dict[str, Any] = {"services": {"web": service}}
    if secret:
        doc["secrets"] = {"token": {"file": "secrets/token.age"}}
        service["secrets"] = ["token"]
        service["env_file"] = "app.env.age"
    return yaml.safe_dump(with_test_labels(project, doc), sort_keys=False)


def web(api: docker.APIClient, project: str) -> list[str]:
    return [n for n in running_names(api, project) if "-web-" in n]


def post_hook(port: int, body: bytes, secret: bytes | None) -> int:
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    if secret is not None:
        mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature-256"] = f"sha256={mac}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/git", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def status_text(url: str, tmp: Path, *extra: str) -> str:
    done = run_cli("status", "--git", url, "--git-ref", "main", "--lock-dir", str(tmp), *extra)
    return done.stdout + done.stderr


def fetches(d: DaemonProcess, result: str) -> float:
    return d.metric("reconciler_source_fetch_total", result=result) or 0.0


def test_follows_a_repository_over_http_with_webhook_and_refusals(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    state_directory: Path,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """Webhook pushes are taken fast; a bad commit and a force-push are refused (the last
    good commit stays); an unreachable server changes nothing; the age secret reaches the
    container and no file the daemon writes."""
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(f"# test key\n{identity}\n")
    key_file.chmod(0o600)
    recipient = [identity.to_public()]
    hook_secret = b"hook-secret-" + os.urandom(4).hex().encode()
    hook_file = tmp_path / "hook.secret"
    hook_file.write_bytes(hook_secret + b"\n")
    hook_file.chmod(0o600)

    server = GitHTTPServer(tmp_path)
    repo = Repo(tmp_path)
    url = server.url("stack.git")
    repo.remote = url  # pushed over HTTP too
    try:
        repo.commit(
            {
                "desired_state.yaml": stack(project, busybox_image, 1, secret=True),
                "secrets/token.age": pyrage.encrypt(SECRET_TEXT.encode(), recipient),
                "app.env.age": pyrage.encrypt(f"GREETING={ENV_TEXT}\n".encode(), recipient),
            },
            "one replica",
        )
        age = ("--age-identity", str(key_file))
        extra = (
            *("--git", url, "--git-ref", "main", "--git-interval", "600"),
            *("--webhook-secret-file", str(hook_file), "--age-identity", str(key_file)),
        )
        d = daemon(Path("unused.yaml"), interval=600.0, extra=extra)
        wait_for(lambda: len(web(api, project)) == 1, DEADLINE_S, what="the first replica")
        wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready")

        # The age secret and env file, decrypted, reach the container.
        name = web(api, project)[0]
        exec_id = api.exec_create(name, ["cat", "/run/secrets/token"])["Id"]
        assert api.exec_start(exec_id).decode().strip() == SECRET_TEXT
        assert f"GREETING={ENV_TEXT}" in api.inspect_container(name)["Config"]["Env"]

        # A push and its webhook: taken without waiting for the 600 s poll.
        c2 = repo.commit({"desired_state.yaml": stack(project, busybox_image, 2, secret=True)}, "2")
        assert post_hook(d.port, b'{"ref":"refs/heads/main"}', None) == 401
        assert post_hook(d.port, b'{"ref":"refs/heads/main"}', b"wrong") == 401
        started = time.monotonic()
        assert post_hook(d.port, b'{"ref":"refs/heads/main"}', hook_secret) == 202
        wait_for(lambda: len(web(api, project)) == 2, DEADLINE_S, what="2 replicas")
        taken_s = time.monotonic() - started
        assert d.metric("reconciler_source_info", commit=c2, ref="main") == 1
        assert (d.metric("reconciler_source_webhook_refused_total") or 0) >= 2

        # A flood of webhooks is a fetch or two, not one each.
        before = sum(fetches(d, r) for r in ("success", "error", "refused"))
        for _ in range(20):
            assert post_hook(d.port, b"{}", hook_secret) == 202
        time.sleep(2)
        flood = sum(fetches(d, r) for r in ("success", "error", "refused")) - before
        assert 1 <= flood <= 5, flood

        # A bad commit: refused whole, the last good one in force, /readyz 503, status says.
        bad = stack(project, busybox_image, 2, secret=True).replace("replicas: 2", "replicas: x")
        c3 = repo.commit({"desired_state.yaml": bad}, "bad")
        assert post_hook(d.port, b"{}", hook_secret) == 202
        wait_for(lambda: d.get("/readyz")[0] == 503, DEADLINE_S, what="readyz 503")
        text = status_text(url, tmp_path, *age)
        assert f"commit in force: {c2[:12]}" in text, text
        assert f"commit refused: {c3[:12]}" in text and "desired_state.yaml:" in text, text
        assert len(web(api, project)) == 2

        # A later good commit is taken.
        c4 = repo.commit({"desired_state.yaml": stack(project, busybox_image, 1, secret=True)}, "1")
        assert post_hook(d.port, b"{}", hook_secret) == 202
        wait_for(lambda: len(web(api, project)) == 1, DEADLINE_S, what="back to 1 replica")
        wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready again")

        # A force-push (history rewritten) is refused; nothing running changes.
        git(repo.work, "reset", "--quiet", "--hard", c2)
        c5 = repo.commit(
            {"desired_state.yaml": stack(project, busybox_image, 3, secret=True)}, "3", force=True
        )
        assert post_hook(d.port, b"{}", hook_secret) == 202
        wait_for(lambda: d.get("/readyz")[0] == 503, DEADLINE_S, what="force-push refused")
        text = status_text(url, tmp_path, *age)
        assert f"commit refused: {c5[:12]}" in text and "force-push" in text, text
        assert len(web(api, project)) == 1

        # The server goes away: fetches fail, nothing running is touched; back, it is followed.
        server.stop()
        errors = fetches(d, "error")
        assert post_hook(d.port, b"{}", hook_secret) == 202
        wait_for(lambda: fetches(d, "error") > errors, DEADLINE_S, what="a failed fetch")
        assert len(web(api, project)) == 1
        server.start()
        git(repo.work, "reset", "--quiet", "--hard", c4)
        c6 = repo.commit(  # back on the line of c4: a fast-forward for the daemon
            {"desired_state.yaml": stack(project, busybox_image, 2, secret=True)}, "2", force=True
        )
        wait_for(  # the back-off's retry (no webhook needed)
            lambda: d.metric("reconciler_source_info", commit=c6, ref="main") == 1,
            DEADLINE_S,
            what="the commit after the outage",
        )
        wait_for(lambda: len(web(api, project)) == 2, DEADLINE_S, what="2 replicas again")
        wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready after outage")
        assert "commit in force: " + c6[:12] in status_text(url, tmp_path, *age)

        # `systemctl reload` (SIGHUP) fetches too: no webhook, no wait for the interval.
        repo.commit({"desired_state.yaml": stack(project, busybox_image, 1, secret=True)}, "1")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(web(api, project)) == 1, DEADLINE_S, what="taken on SIGHUP")

        # `down` removes the containers and the plaintext they bound, however recent.
        digest = hashlib.sha256(b"reconciler-secret\0" + SECRET_TEXT.encode()).hexdigest()
        assert (memory_dir() / digest[:32]).exists()
        assert d.stop() == 0
        down = run_cli("down", "--git", url, "--git-ref", "main", "--lock-dir", str(tmp_path), *age)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not web(api, project)
        assert not (memory_dir() / digest[:32]).exists()
    finally:
        server.stop()
        digest = hashlib.sha256(b"reconciler-secret\0" + SECRET_TEXT.encode()).hexdigest()
        (memory_dir() / digest[:32]).unlink(missing_ok=True)  # the bind's plaintext, in tmpfs

    # Neither the secret's plaintext nor the env file's values are in a file the daemon
    # wrote: checkout, state dir (the rollout records keep environments sealed with the age
    # identity), status, log. (Docker keeps env values in the container's config.)
    assert any(state_directory.rglob("*.rollouts.json"))
    for root in (tmp_path, state_directory):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert SECRET_TEXT.encode() not in data, path
                assert ENV_TEXT.encode() not in data, path
    print(f"webhook to 2 replicas running: {taken_s:.2f}s")  # the issue asks within 2 s


def test_follows_a_path_by_polling_and_verifies_signatures(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """With --verify-signatures only commits signed by an allowed SSH key are taken; pushes
    are followed within the polling interval."""
    key = tmp_path / "signing"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)],
        check=True,
        timeout=30,
    )
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"author@example.test {key.with_suffix('.pub').read_text()}")
    sign = (f"--gpg-sign={key}",)
    repo = Repo(tmp_path)
    git(repo.work, "config", "gpg.format", "ssh")
    c1 = repo.commit({"desired_state.yaml": stack(project, busybox_image, 1)}, "1", *sign)
    extra = (
        *("--git", str(repo.bare), "--git-ref", "main", "--git-interval", "1"),
        *("--verify-signatures", "--allowed-signers", str(signers)),
    )
    d = daemon(Path("unused.yaml"), interval=600.0, extra=extra)
    wait_for(lambda: len(web(api, project)) == 1, DEADLINE_S, what="the signed commit")
    assert d.metric("reconciler_source_info", commit=c1, ref="main") == 1

    c2 = repo.commit({"desired_state.yaml": stack(project, busybox_image, 2)}, "unsigned")
    wait_for(lambda: d.get("/readyz")[0] == 503, DEADLINE_S, what="the unsigned one refused")
    text = status_text(str(repo.bare), tmp_path)
    assert f"commit refused: {c2[:12]}" in text and "signature" in text, text
    assert len(web(api, project)) == 1

    c3 = repo.commit({"desired_state.yaml": stack(project, busybox_image, 2)}, "signed", *sign)
    wait_for(lambda: len(web(api, project)) == 2, DEADLINE_S, what="the signed 2 replicas")
    wait_for(lambda: d.get("/readyz")[0] == 200, DEADLINE_S, what="ready")
    status = json.loads(next((tmp_path).glob("*.status*")).read_text())
    assert status["source"]["in_force"]["sha"] == c3
    assert status["source"]["in_force"]["author"].startswith("Test Author")


def test_swarm_target_follows_a_repository_with_an_age_secret(
    api: docker.APIClient,
    busybox_image: str,
    project: str,
    tmp_path: Path,
    daemon: Callable[..., DaemonProcess],
) -> None:
    """The same source on the Swarm target: a push scales the service, the age secret is
    decrypted into a Swarm secret that the task reads."""
    with one_node_swarm(api):
        identity = pyrage.x25519.Identity.generate()
        key_file = tmp_path / "age.key"
        key_file.write_text(f"{identity}\n")
        key_file.chmod(0o600)
        repo = Repo(tmp_path)
        files: dict[str, str | bytes] = {
            "desired_state.yaml": stack(project, busybox_image, 1, secret=True),
            "secrets/token.age": pyrage.encrypt(SECRET_TEXT.encode(), [identity.to_public()]),
            "app.env.age": pyrage.encrypt(
                f"GREETING={ENV_TEXT}\n".encode(), [identity.to_public()]
            ),
        }
        repo.commit(files, "1")
        extra = (
            *("--target", "swarm", "--git", str(repo.bare), "--git-ref", "main"),
            *("--git-interval", "1", "--age-identity", str(key_file)),
        )
        d = daemon(Path("unused.yaml"), interval=600.0, extra=extra)
        try:
            service = f"{project}_web"

            def replicas() -> int:
                found = api.services(filters={"name": service})
                return int(found[0]["Spec"]["Mode"]["Replicated"]["Replicas"]) if found else 0

            def secret_name() -> str:
                spec = api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]
                return str(spec["Secrets"][0]["SecretName"])

            wait_for(lambda: replicas() == 1, DEADLINE_S, what="the Swarm service")
            task = wait_for(
                lambda: api.containers(
                    filters={"label": f"com.docker.swarm.service.name={service}"}
                ),
                DEADLINE_S,
                what="its task running",
            )[0]
            exec_id = api.exec_create(task["Id"], ["cat", "/run/secrets/token"])["Id"]
            assert api.exec_start(exec_id).decode().strip() == SECRET_TEXT
            before = secret_name()
            repo.commit({"desired_state.yaml": stack(project, busybox_image, 2, secret=True)}, "2")
            wait_for(lambda: replicas() == 2, DEADLINE_S, what="scaled by a push")
            after = secret_name()
            assert after == before  # an unchanged secret file: no new secret, no task replaced
        finally:
            d.stop()  # before the removal: a running daemon would create the service again
            remove_project(api, project)
