"""What a followed repository leaves on this host: environment values sealed at rest in the
rollout records (an age identity given), decrypted secrets removed from the tmpfs once no
container binds them, and one process at a time on a checkout.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyrage
import pytest

from reconciler.config import encrypted
from reconciler.core.desired import ContainerSpec
from reconciler.core.rollout import RolloutRecord
from reconciler.engine.host import secret_files
from reconciler.errors import ActionFailed
from reconciler.ops.state_store import StateStore
from reconciler.runtime.git_checkout import Checkout, GitOptions, Refused, SourceError
from tests.gitkit import Repo

PLAIN = "DB_PASSWORD=from-an-age-file-" + "x" * 8


def _record() -> RolloutRecord:
    spec = ContainerSpec(
        name="p-web-1", project="p", service="web", replica=1, image="busybox",
        environment=(PLAIN, "GREETING=hi"),
    )  # fmt: skip
    return RolloutRecord(stable_revision="r1", stable=(spec, spec), rolling_revision="r2")


def _identity(path: Path) -> None:
    path.write_text(f"# key\n{pyrage.x25519.Identity.generate()}\n")
    path.chmod(0o600)


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Path]:
    key = tmp_path / "age.key"
    _identity(key)
    encrypted.configure(key)
    yield key
    encrypted.configure(None)


def test_rollout_records_keep_environments_sealed(tmp_path: Path, identity: Path) -> None:
    store = StateStore("p", tmp_path)
    store.put("web", _record())
    data = store.path.read_bytes()
    assert PLAIN.encode() not in data and b"GREETING" not in data
    assert StateStore("p", tmp_path).get("web") == _record()  # what a rollback returns to
    assert StateStore("p", tmp_path).all() == {"web": _record()}
    before = store.path.stat().st_mtime_ns
    store.put("web", _record())  # the same record: not written again (sealing is random)
    assert store.path.stat().st_mtime_ns == before

    _identity(identity)  # another key: the record cannot be rolled back to, nothing wrong
    encrypted.configure(Path(str(identity)))
    other = StateStore("p", tmp_path).get("web")
    assert other.stable == () and other.rolling_revision == "r2"


def test_without_an_identity_records_are_as_before(tmp_path: Path) -> None:
    encrypted.configure(None)
    store = StateStore("p", tmp_path)
    store.put("web", _record())
    assert PLAIN.encode() in store.path.read_bytes()
    assert StateStore("p", tmp_path).get("web") == _record()


def test_one_process_at_a_time_on_a_checkout(tmp_path: Path) -> None:
    """`apply` beside a daemon that follows the same repository is refused before it fetches
    into (or swaps) the daemon's tree."""
    opts = GitOptions(url=str(tmp_path / "none.git"))
    daemon = Checkout(opts, tmp_path / "co")
    daemon.hold("reconciler daemon")
    with pytest.raises(SourceError, match=r"a reconciler daemon \(pid \d+\) follows"):
        Checkout(opts, tmp_path / "co").hold("reconciler apply")
    assert not (tmp_path / "co" / "repo.git").exists()
    Checkout(opts, tmp_path / "other").hold("reconciler apply")  # another checkout: free


class _Engine:
    def __init__(self, sources: list[str]) -> None:
        self.sources = sources

    def containers(self, all: bool = False) -> list[dict[str, object]]:
        return [{"Mounts": [{"Type": "bind", "Source": s}]} for s in self.sources]


def test_decrypted_secrets_no_container_binds_are_removed(
    tmp_path: Path, identity: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "")
    secret = tmp_path / "token.age"
    recipient = pyrage.x25519.Identity.from_str(identity.read_text().split()[-1]).to_public()
    paths = []
    for n in range(3):
        plain = f"version-{n}-{os.urandom(4).hex()}".encode()
        secret.write_bytes(pyrage.encrypt(plain, [recipient]))
        digest = encrypted.secret_digest(plain)
        paths.append(Path(secret_files.bind_source(str(secret), digest)))
    try:
        assert [p.read_text()[:9] for p in paths] == ["version-0", "version-1", "version-2"]
        old = time.time() - 3600
        for p in paths[:2]:
            os.utime(p, (old, old))
        engine = _Engine([str(paths[1])])  # version 1 is still bound; 0 by nothing
        assert secret_files.forget_unused(engine) == [paths[0]]  # type: ignore[arg-type]
        assert not paths[0].exists() and paths[1].exists()
        assert paths[2].exists()  # just written: perhaps about to be bound
        os.utime(paths[2], (old, old))
        rebound = paths[1].read_bytes()  # bound again (by a new replica): fresh again
        secret_files.bind_source(str(secret), encrypted.secret_digest(rebound))
        assert secret_files.forget_unused(_Engine([])) == [paths[2]]  # type: ignore[arg-type]
        # A rollback to version 0, whose plaintext is gone and whose file now holds 2:
        # refused rather than binding the wrong secret.
        with pytest.raises(ActionFailed, match="no longer holds the version"):
            secret_files.bind_source(str(secret), paths[0].name + "0" * 32)
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def test_plan_reads_the_daemons_tree_when_it_holds_the_same_commit(tmp_path: Path) -> None:
    """`plan --git` compares what runs with the file at the paths the containers were made
    from (a throwaway copy would make every repo path differ: `spec changed`)."""
    from reconciler.cli import git_args, history
    from reconciler.targets.host import KIND

    repo = Repo(tmp_path)
    doc = "project: gitplan\nservices:\n  web:\n    image: x:1\n    replicas: 1\n"
    repo.commit({"desired_state.yaml": doc}, "1")
    state = tmp_path / "state"
    values = {"git_url": str(repo.bare), "git_ref": "main", "state_dir": state}
    run = argparse.Namespace(command="apply", **values)
    git_args.prepare(run, KIND)
    assert Path(run.file).is_relative_to(state)
    shown = argparse.Namespace(project=None, target=None, file="absent.yaml", **values)
    assert history.project_of(shown)[0] == "gitplan"  # `history` names the followed project

    plan = argparse.Namespace(command="plan", **values)
    git_args.prepare(plan, KIND)
    assert plan.file == run.file  # the same commit: the daemon's own tree
    repo.commit({"desired_state.yaml": doc.replace("replicas: 1", "replicas: 2")}, "2")
    newer = argparse.Namespace(command="plan", **values)
    git_args.prepare(newer, KIND)
    assert not Path(newer.file).is_relative_to(state)  # a newer one: a copy, left alone
    assert "replicas: 2" in Path(newer.file).read_text()
    assert "replicas: 1" in Path(run.file).read_text()


def test_run_waits_for_a_good_first_commit(tmp_path: Path) -> None:
    """`run` with nothing checked out and a bad (or unsigned) head waits for a good commit
    instead of exiting (a crash loop under systemd); the unsigned one is named so."""
    from reconciler.cli import git_args
    from reconciler.targets.host import KIND

    repo = Repo(tmp_path)
    doc = "project: gitwait\nservices:\n  web:\n    image: x:1\n    replicas: {}\n"
    repo.commit({"desired_state.yaml": doc.format("many")}, "bad")
    values = {"git_url": str(repo.bare), "git_ref": "main", "state_dir": tmp_path / "s"}
    stop = threading.Event()
    args = argparse.Namespace(command="run", git_interval=0.2, signals=SimpleNamespace(stop=stop))
    vars(args).update(values)
    good = threading.Timer(0.5, lambda: repo.commit({"desired_state.yaml": doc.format(2)}, "ok"))
    good.start()
    try:
        git_args.prepare(args, KIND)
    finally:
        good.cancel()
    assert "replicas: 2" in Path(args.file).read_text() and args.git_refused is None

    unsigned = Checkout(GitOptions(url=str(repo.bare), verify_signatures=True), tmp_path / "u")
    with pytest.raises(Refused, match="is unsigned"):
        unsigned.vet(unsigned.fetch())
    stop.set()  # told to stop while waiting: an error, not a hang
    args = argparse.Namespace(command="run", git_interval=30, signals=SimpleNamespace(stop=stop))
    vars(args).update(values, verify_signatures=True, state_dir=tmp_path / "s2")
    with pytest.raises(SourceError, match="stopped"):
        git_args.prepare(args, KIND)


def test_a_commit_refused_for_want_of_an_identity_names_the_file_in_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not `hosts/web.env.age` (read as relative to one's own folder: a file that does not
    exist there), but `URL@COMMIT:hosts/web.env.age`."""
    from reconciler.cli import git_args
    from reconciler.targets.host import KIND

    monkeypatch.delenv(encrypted.IDENTITY_ENV, raising=False)
    monkeypatch.setattr(encrypted, "_identity", None)
    monkeypatch.chdir(tmp_path)
    repo = Repo(tmp_path)
    doc = "project: gitage\nservices:\n  web:\n    image: x:1\n    env_file: hosts/web.env.age\n"
    sha = repo.commit({"desired_state.yaml": doc, "hosts/web.env.age": "not age"}, "1")
    args = argparse.Namespace(
        command="apply", git_url=str(repo.bare), git_ref="main", state_dir=tmp_path / "s"
    )
    with pytest.raises(SourceError) as refused:
        git_args.prepare(args, KIND)
    text = str(refused.value)
    assert f"{repo.bare}@{sha[:12]}:hosts/web.env.age: an age-encrypted file" in text, text
    assert " hosts/web.env.age: " not in text
