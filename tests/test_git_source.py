"""The git source without Docker: webhook signatures and the POST route, the checkout's
refusals (force-push, bad file, signature) and swap, the daemon-side source's state, events
and metrics, options from the environment, URL redaction and age decryption."""

from __future__ import annotations

import hashlib
import hmac
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyrage
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from reconciler.config import encrypted
from reconciler.core.events import Event
from reconciler.ops.git_repo import Credentials, GitError, redact_url
from reconciler.ops.http import serve
from reconciler.ops.webhook import Webhook, signed
from reconciler.runtime.git_checkout import (
    Checkout,
    GitOptions,
    Refused,
    SourceError,
    options_from,
)
from reconciler.runtime.git_source import GitSource, source_lines
from tests.gitkit import GitHTTPServer, Repo, git

OK = lambda: (True, "ok")  # noqa: E731


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40))
def test_signatures_of_each_forge(body: bytes, secret: bytes) -> None:
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert signed({"x-hub-signature-256": f"sha256={mac}"}, body, secret)
    assert signed({"x-gitea-signature": mac}, body, secret)
    assert signed({"x-gitlab-token": secret.decode("latin-1")}, body, secret) == (
        secret.decode("latin-1").strip().encode() == secret
    )
    assert not signed({"x-hub-signature-256": f"sha256={mac}"}, body + b"x", secret)
    assert not signed({"x-gitea-signature": mac[:-1] + "0" if mac[-1] != "0" else mac[:-1] + "1"},
                      body, secret)  # fmt: skip
    assert not signed({}, body, secret)
    assert not signed({"x-hub-signature-256": f"sha256={mac}"}, body, b"")


def test_webhook_route_bounded_signed_and_coalescing(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("topsecret\n")
    pushes: list[int] = []
    refused: list[str] = []
    hook = Webhook(secret_file, lambda: pushes.append(1), refused.append)
    server = serve(("127.0.0.1", 0), CollectorRegistry(), OK, OK, hooks={"/hooks/git": hook.handle})
    port = server.server_address[1]

    def post(body: bytes, headers: Mapping[str, str], method: str = "POST") -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/hooks/git", data=body, headers=dict(headers), method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    try:
        body = b'{"ref": "refs/heads/main"}' * 100  # past the first read of the head
        mac = hmac.new(b"topsecret", body, hashlib.sha256).hexdigest()
        assert post(body, {"X-Hub-Signature-256": f"sha256={mac}"}) == 202
        assert post(body, {"X-Gitea-Signature": mac}) == 202
        assert post(body, {"X-Gitlab-Token": "topsecret"}) == 202
        assert post(body, {"X-Hub-Signature-256": "sha256=00"}) == 401
        assert post(body, {}) == 401
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /hooks/git HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.0 413")  # the body is never read
        assert post(b"", {}, method="GET") == 405
        assert len(pushes) == 3 and len(refused) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            assert r.status == 200  # the GET endpoints are as before
    finally:
        server.shutdown()


def test_redact_url() -> None:
    assert redact_url("https://user:tok@host/r.git failed") == "https://***@host/r.git failed"
    assert redact_url("ssh://git@host/r.git") == "ssh://***@host/r.git"
    assert redact_url("/srv/r.git") == "/srv/r.git"


def test_options_from_the_environment() -> None:
    env = {
        "RECONCILER_GIT_URL": "https://x:y@example.test/stack.git",
        "RECONCILER_GIT_REF": "prod",
        "RECONCILER_GIT_PATH": "hosts/a.yaml",
        "RECONCILER_GIT_INTERVAL": "30",
        "RECONCILER_VERIFY_SIGNATURES": "yes",
        "RECONCILER_GIT_TOKEN_FILE": "/etc/reconciler/token",
    }
    opts = options_from({}, env)
    assert opts is not None
    assert (opts.ref, opts.file, opts.interval, opts.verify_signatures) == (
        "prod",
        "hosts/a.yaml",
        30.0,
        True,
    )
    assert opts.shown_url == "https://***@example.test/stack.git"
    assert "RECONCILER_GIT_TOKEN_FILE" in opts.credentials.environment()
    flags = options_from({"git_url": "/srv/s.git", "git_ref": "main"}, env)
    assert flags is not None and (flags.url, flags.ref) == ("/srv/s.git", "main")
    assert options_from({}, {}) is None
    with pytest.raises(SourceError, match="inside the repository"):
        options_from({"git_url": "/srv/s.git", "git_path": "../etc/x.yaml"}, {})


def _doc(replicas: object) -> str:
    head = "version: 1\nproject: gitpure\nservices:\n  web:\n    image: x:1\n"
    return f"{head}    replicas: {replicas}\n"


def test_checkout_takes_fast_forwards_refuses_rewrites_and_bad_files(tmp_path: Path) -> None:
    from reconciler.targets.host import KIND

    repo = Repo(tmp_path)
    c1 = repo.commit({"desired_state.yaml": _doc(1), "conf/a.txt": "one"}, "1")
    co = Checkout(GitOptions(url=str(repo.bare), ref="main"), tmp_path / "state")

    def check(path: Path) -> None:
        KIND.load(path)

    assert co.fetch() == c1
    co.vet(c1)
    co.take(c1, check)
    assert co.in_force() == c1 and (co.tree / "conf/a.txt").read_text() == "one"
    assert (co.tree / "desired_state.yaml").stat().st_mode & 0o077 == 0  # owner only

    c2 = repo.commit({"desired_state.yaml": _doc("many")}, "bad")
    assert co.fetch() == c2
    co.vet(c2)
    with pytest.raises(Refused) as bad:
        co.take(c2, check)
    assert bad.value.sha == c2 and "desired_state.yaml:6" in bad.value.reason
    # Named where it is (`URL@COMMIT:path`): `next/` is gone, a bare path reads as one's own.
    assert f"{repo.bare}@{c2[:12]}:desired_state.yaml:6" in bad.value.reason
    assert str(co.next) not in bad.value.reason
    assert co.in_force() == c1 and "replicas: 1" in co.file.read_text()

    c3 = repo.commit({"desired_state.yaml": _doc(2), "conf/b.txt": "two"}, "2")
    co.vet(co.fetch())
    inode, kept = co.tree.stat().st_ino, (co.tree / "conf/a.txt").stat()
    co.take(c3, check)
    assert co.in_force() == c3 and (co.tree / "conf/b.txt").read_text() == "two"
    assert co.tree.stat().st_ino != inode and not co.next.exists()  # swapped whole
    now = (co.tree / "conf/a.txt").stat()  # unchanged: the same file (a Swarm secret's stamp)
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)

    git(repo.work, "reset", "--quiet", "--hard", c1)
    c4 = repo.commit({"desired_state.yaml": _doc(3)}, "rewrite", force=True)
    assert co.fetch() == c4
    with pytest.raises(Refused, match="force-push"):
        co.vet(c4)
    allowed = Checkout(GitOptions(url=str(repo.bare), ref="main", allow_force_push=True), co.root)
    allowed.vet(c4)

    unsigned = Checkout(
        GitOptions(url=str(repo.bare), ref="main", verify_signatures=True, allow_force_push=True),
        co.root,
    )
    with pytest.raises(Refused, match="signature"):
        unsigned.vet(c4)


def test_checkout_refuses_links_out_of_the_tree(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    (repo.work / "leak").symlink_to("/etc/passwd")
    sha = repo.commit({"desired_state.yaml": _doc(1)}, "link")
    co = Checkout(GitOptions(url=str(repo.bare)), tmp_path / "state")
    assert co.fetch() == sha
    with pytest.raises(Refused, match="leak"):
        co.take(sha, lambda p: None)
    assert co.in_force() is None


class _Reloader:
    def __init__(self) -> None:
        self.daemon = type("D", (), {"desired": type("S", (), {"project": "gitpure"})()})()
        self.trigger = ""
        self.context: dict[str, str] = {}
        self.errors: list[str] = []

    def load(self, path: Path) -> Any:
        from reconciler.targets.host import KIND

        return KIND.load(path), None, ()

    def failed(self, error: str, *, counted: bool = True) -> bool:
        self.errors.append(error)
        return False


class _Owner:
    def __init__(self) -> None:
        from reconciler.ops.metrics import Metrics
        from reconciler.runtime.signals import SignalRelay

        self.reloader = _Reloader()
        self.signals = SignalRelay()
        self.metrics = Metrics(CollectorRegistry())
        self.events: list[Event] = []
        self.statuses = 0
        self.accepted = 0
        self.desired = type("S", (), {"digest": "d"})()
        self.conditions = type("C", (), {"reload_accepted": lambda _, d: self._accept()})()

    def _accept(self) -> None:
        self.accepted += 1

    def record(self, event: Event) -> None:
        self.events.append(event)

    def write_status(self) -> None:
        self.statuses += 1


def test_source_takes_refuses_and_reports(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    repo.commit({"desired_state.yaml": _doc(1)}, "1")
    co = Checkout(GitOptions(url=str(repo.bare), ref="main"), tmp_path / "state")
    owner = _Owner()
    source = GitSource(owner, co)  # type: ignore[arg-type]
    registry = owner.metrics.registry

    assert source.poll()
    c1 = co.in_force()
    assert c1 is not None and owner.signals.reload.is_set()
    assert registry.get_sample_value("reconciler_source_info", {"commit": c1, "ref": "main"}) == 1
    # The Reloader's reload row names the commit (core.events: the history's).
    assert owner.reloader.context["commit"] == c1 and owner.reloader.trigger == "git"
    assert owner.reloader.context["author"].startswith("Test Author")

    bad = repo.commit({"desired_state.yaml": _doc("x")}, "bad")
    assert source.poll() and co.in_force() == c1
    problem = source.problem()
    assert problem is not None and bad[:12] in problem and owner.reloader.errors
    assert bad[:12] in owner.reloader.errors[-1]  # the Reloader's reload_rejected says it
    status = source.status()
    assert status["in_force"]["sha"] == c1 and status["refused"]["commit"] == bad
    assert registry.get_sample_value("reconciler_source_fetch_total", {"result": "refused"}) == 1

    good = repo.commit({"desired_state.yaml": _doc(2)}, "good")
    assert source.poll() and co.in_force() == good and source.problem() is None
    assert source.refused is None  # the reload of the good commit resolves the refusal

    source.checkout.repo.url = str(tmp_path / "gone.git")  # unreachable: nothing changes
    assert not source.poll() and co.in_force() == good
    assert registry.get_sample_value("reconciler_source_fetch_total", {"result": "error"}) == 1
    status_file = tmp_path / "status.json"
    status_file.write_text('{"source": ' + __import__("json").dumps(source.status()) + "}")
    text = "\n".join(source_lines(status_file))
    assert f"commit in force: {good[:12]}" in text and "fetch failing" in text


def test_age_files_decrypt_in_memory_and_sops_needs_its_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = pyrage.x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"# created: now\n{ident}\n")
    data = pyrage.encrypt(b"plain", [ident.to_public()])
    monkeypatch.delenv(encrypted.IDENTITY_ENV, raising=False)
    encrypted.configure(None)
    with pytest.raises(encrypted.DecryptError, match="no identity"):
        encrypted.plaintext("a.age", data)
    monkeypatch.setenv(encrypted.IDENTITY_ENV, str(key))
    assert encrypted.plaintext("a.age", data) == b"plain"
    other = tmp_path / "other.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    encrypted.configure(other)
    try:
        with pytest.raises(encrypted.DecryptError, match=r"a\.age: cannot decrypt"):
            encrypted.plaintext("a.age", data)
    finally:
        encrypted.configure(None)
    assert encrypted.plaintext("plain.txt", b"A=1\n") == b"A=1\n"
    monkeypatch.setenv("PATH", str(tmp_path))  # no sops here
    with pytest.raises(encrypted.DecryptError, match="sops binary is not installed"):
        encrypted.plaintext("db.sops.env", b"A=ENC[...]\nsops_version=3.8.1\n")


def test_a_token_from_a_file_and_never_in_a_message(tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    sha = repo.commit({"desired_state.yaml": _doc(1)}, "1")
    server = GitHTTPServer(tmp_path, token="tok-" + "9" * 12)
    try:
        token_file = tmp_path / "token"
        token_file.write_text("tok-" + "9" * 12 + "\n")
        creds = Credentials(token_file=token_file)
        good = Checkout(GitOptions(url=server.url("stack.git"), credentials=creds), tmp_path / "a")
        assert good.fetch() == sha
        anonymous = Checkout(GitOptions(url=server.url("stack.git")), tmp_path / "b")
        with pytest.raises(GitError):
            anonymous.fetch()
        userinfo = server.url("stack.git").replace("http://", "http://me:wrong-pass@")
        leaky = Checkout(GitOptions(url=userinfo), tmp_path / "c")
        with pytest.raises(GitError) as err:
            leaky.fetch()
        assert "wrong-pass" not in str(err.value)
        assert "wrong-pass" not in leaky.opts.shown_url
    finally:
        server.stop()
