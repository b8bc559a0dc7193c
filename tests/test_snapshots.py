"""Volume snapshots, pure: the opt-in key, which volumes are saved, retention, the snapshot
store on disk, and the step order a rollout gives them (simulated pass by pass: the snapshot
is read from a stopped old replica before any replica of the new revision starts, the
restore point comes before the old replica starts again, other replicas keep serving)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import loader
from reconciler.core import rollout as ro
from reconciler.core.actions import Plan, RemoveContainer, StartContainer, StopContainer
from reconciler.core.desired import DesiredState, ServiceSpec
from reconciler.core.planner import Holds, plan
from reconciler.core.snapshots import (
    MountedVolume,
    SnapshotEntry,
    replacement_of,
    restore_wanted,
    retain,
    rw_volumes,
    snapshot_skip,
    to_restore,
)
from reconciler.errors import DesiredStateError
from reconciler.ops.snapshot_store import SnapshotStore
from tests.conftest import run_cli
from tests.simulator import Daemon, simulate


def state(
    revision: int,
    replicas: int = 1,
    update: dict[str, Any] | None = None,
    snapshots: Any = None,
    volumes: list[str] | None = None,
) -> DesiredState:
    svc: dict[str, Any] = {
        "image": "app:1.0.0",
        "replicas": replicas,
        "environment": {"REVISION": str(revision)},
        "volumes": volumes if volumes is not None else ["data:/var/lib/app", "conf:/etc/app:ro"],
        "drain_period": "0s",
        "deploy": {"update_config": update or {}},
    }
    if snapshots is not None:
        svc["x-reconciler"] = {"snapshots": snapshots, "update": {"semver": "^1"}}
    doc = {
        "version": 1,
        "project": "p",
        "volumes": {"data": {}, "conf": {}},
        "services": {"app": svc},
    }
    return loader.parse(yaml.safe_dump(doc), source="s.yaml", base_dir=Path("/srv"))


def app(d: DesiredState) -> ServiceSpec:
    return d.service("app")


# ----------------------------------------------------------------- the key


def test_the_key_is_read_from_the_extension_and_forces_stop_first() -> None:
    """x-reconciler.snapshots opts in (sizes as compose writes them); other x-reconciler keys
    are another feature's. A service that opts in is replaced stop-first."""
    svc = app(state(1, update={"order": "start-first"}, snapshots={"keep": 2, "max_size": "1GiB"}))
    assert svc.snapshots is not None
    assert (svc.snapshots.keep, svc.snapshots.max_size) == (2, 1024**3)
    assert svc.update.order == "stop-first" and svc.rollback.order == "stop-first"
    assert app(state(1, snapshots={})).snapshots is not None  # defaults
    plain = app(state(1, update={"order": "start-first"}))
    assert plain.snapshots is None and plain.update.order == "start-first"
    # Without a read-write named volume there is nothing to save: the order stays.
    ro_only = state(1, update={"order": "start-first"}, snapshots={}, volumes=["conf:/c:ro"])
    assert app(ro_only).update.order == "start-first"
    # The policy is not part of the revision: opting in replaces no container.
    assert app(state(1, snapshots={})).revision == app(state(1)).revision


def test_a_bad_value_names_its_line() -> None:
    with pytest.raises(DesiredStateError) as exc:
        state(1, snapshots={"keep": 0, "bogus": 1})
    text = str(exc.value)
    assert "x-reconciler.snapshots.keep" in text and "bogus" in text and "s.yaml:" in text


def test_read_write_named_volumes_only() -> None:
    spec = app(state(1)).replicas[0]
    assert rw_volumes(spec) == (MountedVolume("data", "/var/lib/app"),)
    binds = replace(spec, binds=("/srv/x:/x", "data:/a:rw", "conf:/b:ro"), volumes=("data", "conf"))
    assert rw_volumes(binds) == (MountedVolume("data", "/a"),)


# ----------------------------------------------------------------- retention

entries_st = st.lists(
    st.builds(
        lambda i, v, t: SnapshotEntry(
            f"id{i}", "app", f"vol{v}", "/d", "r1", "r2", float(t), 10, "0" * 64, f"id{i}.tar"
        ),
        st.integers(0, 10**6),
        st.integers(0, 3),
        st.integers(0, 50),
    ),
    max_size=30,
    unique_by=lambda e: e.id,
)


@given(entries_st, st.integers(0, 5))
def test_retention_keeps_the_newest_n_of_each_volume(
    entries: list[SnapshotEntry], keep: int
) -> None:
    kept, dropped = retain(entries, keep)
    assert sorted(kept + dropped, key=lambda e: e.id) == sorted(entries, key=lambda e: e.id)
    for volume in {e.volume for e in entries}:
        mine = [e for e in kept if e.volume == volume]
        total = sum(1 for e in entries if e.volume == volume)
        assert len(mine) == min(total, max(keep, 1))
        gone = [e for e in dropped if e.volume == volume]
        assert all((g.created, g.id) < (k.created, k.id) for g in gone for k in mine)


@given(entries_st)
def test_the_restore_takes_the_newest_snapshot_of_each_volume_before_the_failed_rollout(
    entries: list[SnapshotEntry],
) -> None:
    others = [
        replace(e, id=f"x{e.id}", next_revision="r9", created=e.created + 100) for e in entries
    ]
    chosen = to_restore(entries + others, "r2")
    assert [e.volume for e in chosen] == sorted({e.volume for e in entries})
    for e in chosen:
        assert e.next_revision == "r2"
        same = [o for o in entries if o.volume == e.volume]
        assert (e.created, e.id) == max((o.created, o.id) for o in same)


def a_tar(content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("data/marker")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def test_the_store_keeps_n_files_private_and_spots_damage(tmp_path: Path) -> None:
    store = SnapshotStore("p", tmp_path)
    made = []
    for i in range(4):
        data = a_tar(b"x" * (i + 1))
        with store.writing() as (f, tmp):
            f.write(data)
            f.flush()
            sha = hashlib.sha256(data).hexdigest()
            e = SnapshotEntry(
                f"s{i}", "app", "data", "/d", "r1", "r2", float(i), len(data), sha, f"s{i}.tar"
            )
            store.commit(tmp, e, keep=2)
            made.append(e)
    assert [e.id for e in store.entries("app")] == ["s2", "s3"]
    assert sorted(p.name for p in store.folder.iterdir()) == ["s2.tar", "s3.tar"]
    assert store.folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in store.folder.iterdir())
    assert store.verify(made[3]) is None and store.find("app", "s3").id == "s3"
    (store.folder / "s3.tar").write_bytes(b"y" * 4)
    assert "damaged" in (store.verify(made[3]) or "")
    junk = b"y" * 4096  # the index's size and checksum, but no tar
    (store.folder / "s2.tar").write_bytes(junk)
    fake = replace(made[2], size=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    assert "no readable tar" in (store.verify(fake) or "")
    with pytest.raises(KeyError):
        store.find("app", "s")  # two match
    store.hold("app", "restore failed")
    assert store.held("app") == "restore failed"
    store.release("app")
    assert store.held("app") == ""
    assert oct(os.stat(tmp_path / "p.snapshots.json").st_mode & 0o777) == "0o600"


# ----------------------------------------------------------------- step order


def _watched_pass(d: Daemon, seen: list[tuple[str, Any]]) -> Plan:
    """Daemon.run_pass, but the plan's steps are applied one by one and each start is shown
    the engine as it is just before it (what the controller's hook sees)."""
    targets = {s.name: d.target(s) for s in d.desired.services}
    rollouts = {
        n: ro.rollout_for(s, targets[n][2], targets[n][1])
        for n, s in ((s.name, s) for s in d.desired.services)
    }
    planned = replace(d.desired, services=tuple(t for t, _, _ in targets.values()))
    the_plan = plan(
        planned, d.observed, Holds(now=d.now, drained=dict(d.drained), rollouts=rollouts)
    )
    before = d.observed
    failing = {h: how for h, (how, after) in d.failing.items() if after <= 0}
    observed = before
    for step in the_plan.steps:
        a = step.action
        if isinstance(a, StartContainer):
            seen.append(("start", (a, observed)))
        elif isinstance(a, StopContainer | RemoveContainer):
            seen.append(("gone", (a, observed)))
        observed = simulate(observed, Plan((step,)), now=d.now, failing=failing)
    d.observed = observed
    d.drained = ro.drained_after(
        d.drained,
        [(a, True) for a in the_plan.actions],
        {"app": 0.0},
        d.now,
        {c.id for c in observed.containers},
    )
    for svc in d.desired.services:
        target, mode, record = targets[svc.name]
        record, events = ro.record_pass(
            record, svc, target, mode, the_plan.verdicts, (), before.containers, d.now
        )
        d.records[svc.name] = record
        d.events += events
    return the_plan


@settings(max_examples=40, deadline=None)
@given(
    replicas=st.integers(1, 3),
    parallelism=st.integers(0, 2),
    order=st.sampled_from(["start-first", "stop-first"]),
    fails=st.booleans(),
)
def test_a_snapshot_precedes_the_new_revision_and_a_restore_precedes_the_old(
    replicas: int, parallelism: int, order: str, fails: bool
) -> None:
    update = {"parallelism": parallelism, "order": order, "monitor": "1s"}
    v1 = state(1, replicas, update, snapshots={})
    v2 = state(2, replicas, update, snapshots={})
    d = Daemon(v1)
    d.settle()
    d.desired = v2
    new_hashes = {s.spec_hash for s in app(v2).replicas}
    if fails:
        d.failing = {h: ("exited", 0.0) for h in new_hashes}
    seen: list[tuple[str, Any]] = []
    for _ in range(200):
        p = _watched_pass(d, seen)
        if not p.steps and p.wake_at is None:
            break
        d.now = p.wake_at if not p.steps and p.wake_at else d.now + 0.5
        d.advance(0)

    svc = app(v2)
    snapshots = 0
    new_started = False
    for kind, (action, observed) in seen:
        mine = [c for c in observed.containers if c.service == "app"]
        if kind == "gone":
            running = [c for c in mine if c.state == "running" and c.id != action.id]
            # Never more than a batch is down: the others keep serving (a rollout that does
            # not fail; parallelism 0 is "all at once").
            batch = parallelism or replicas
            if not fails and batch < replicas and isinstance(action, StopContainer):
                assert running, "a stop took the last serving replica"
            continue
        r = replacement_of(action.id, mine)
        if r is not None and r.new.spec_hash in new_hashes:
            if snapshot_skip(svc, r, mine) is None:
                snapshots += 1
                assert not new_started, "a snapshot after the new revision had run"
                assert r.old is not None and r.old.state == "exited"  # read from a stopped one
            new_started = True
        if restore_wanted(action.reason, action.name):
            # The old replica starts again: no replica of the failed revision runs beside it
            # in its slot, and the rollback is under way.
            assert fails
            slot = [c for c in mine if c.replica == r_replica(action, mine)]
            assert not any(c.spec_hash in new_hashes and c.state == "running" for c in slot)
    assert snapshots == 1  # once per rollout, before its first replacement
    if fails:
        assert any(restore_wanted(a.reason, a.name) for k, (a, _) in seen if k == "start")
        assert d.records["app"].failed_revision == svc.revision


def r_replica(action: StartContainer, containers: list[Any]) -> int:
    return next(c.replica for c in containers if c.id == action.id)


def test_no_snapshot_for_a_service_that_did_not_opt_in_or_a_running_old_replica() -> None:
    v1, v2 = state(1), state(2)
    d = Daemon(v1)
    d.settle()
    old = next(c for c in d.observed.containers if c.service == "app")
    new = replace(
        old, id="n", name=ro.temp_name(app(v2).replicas[0]), spec_hash="h", state="created"
    )
    r = replacement_of("n", [old, new])
    assert r is not None and r.old == old
    assert snapshot_skip(app(v2), r, [old, new]) == "snapshots are off"
    opted = app(state(2, snapshots={}))
    assert "running" in (snapshot_skip(opted, r, [old, new]) or "")
    assert replacement_of(old.id, [old, new]) is None  # the replica itself is no replacement


def test_swarm_refuses_the_key_and_the_commands(tmp_path: Path) -> None:
    """Snapshots are host-only: the key is an error with its line for --target swarm, and
    `snapshots`/`restore` say so (exit 2) instead of listing nothing."""
    doc = {"version": 1, "project": "p", "services": {"app": {"image": "app:1"}}}
    path = tmp_path / "desired_state.yaml"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    for args in (["snapshots"], ["restore", "app", "abc"]):
        done = run_cli(*args, "-f", str(path), "--target", "swarm")
        assert done.returncode == 2 and "host-only" in done.stderr, done.stderr
    doc["services"]["app"]["x-reconciler"] = {"snapshots": {"keep": 2}}
    text = yaml.safe_dump(doc)
    with pytest.raises(DesiredStateError) as exc:
        loader.parse_parts(text, source="s.yaml", base_dir=tmp_path, checks=lambda d, p: [])
    assert "x-reconciler.snapshots" in str(exc.value) and "host-only" in str(exc.value)


def test_a_crash_during_a_copy_leaves_nothing_after_the_sweep(tmp_path: Path) -> None:
    """The daemon's start sweeps a partial tar a killed copy left (it holds the lock)."""
    from reconciler.ops.state_store import sweep

    store = SnapshotStore("p", tmp_path)
    store.folder.mkdir(mode=0o700)
    (store.folder / ".partial-abc.tar").write_bytes(b"half")
    (store.folder / "kept.tar").write_bytes(b"whole")
    assert sweep("p", tmp_path) == 1
    assert [p.name for p in store.folder.iterdir()] == ["kept.tar"]
