"""The history store (ops.history), the actions' history kinds (core.action_events), the
host's triggers (targets/host/recording) and `reconciler history`'s parsing and table.
Pure: files in a temporary folder, plans from the real planner, no engine."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from reconciler.cli import history as cli
from reconciler.core import causes
from reconciler.core import rollout as ro
from reconciler.core.action_events import event_of, kind_of
from reconciler.core.actions import (
    CreateContainer,
    RemoveContainer,
    RestartContainer,
    SignalContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.events import Event
from reconciler.core.observed import Observed
from reconciler.core.planner import Holds, plan
from reconciler.ops import history
from reconciler.ops.metrics import Metrics
from reconciler.targets.host.executor import StepResult
from reconciler.targets.host.recording import Recording
from tests.test_planner import _CONVERGED, STACK, _id, _with, rollouts, stack


def event(n: int, size: int = 0, service: str = "web") -> Event:
    return Event("create", service=service, replica=f"r{n}", cause="x" * size, message=str(n))


def numbers(found: history.Read) -> list[int]:
    return [int(r["message"]) for r in found.records]


# ---------------------------------------------------------------------- the store


def test_records_round_trip_with_private_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    h = history.History("p", state, target="swarm")
    h(Event("heal", service="web", replica="p-web-1", trigger="engine event",
            cause="exited (137)", duration_s=0.25, data={"v": "start"}))  # fmt: skip
    found = history.read("p", state)
    assert found.skipped == 0
    (row,) = found.records
    assert row["action"] == "heal" and row["target"] == "swarm" and row["cause"] == "exited (137)"
    assert row["duration_s"] == 0.25 and row["time"].endswith("Z") and row["data"]["v"] == "start"
    assert stat.S_IMODE(h.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_torn_line_is_skipped_and_never_swallows_the_next_record(tmp_path: Path) -> None:
    """A crash inside a write (a full disk) leaves half a line: it is not read, and the next
    process ends it before it appends, so its own record is whole."""
    h = history.History("p", tmp_path)
    h(event(1))
    h.close()
    with h.path.open("ab") as f:
        f.write(b'{"time": "2026-01-01T00:00:00Z", "ts": 17')
    assert numbers(history.read("p", tmp_path)) == [1]
    assert history.read("p", tmp_path).skipped == 1
    history.History("p", tmp_path)(event(2))
    found = history.read("p", tmp_path)
    assert numbers(found) == [1, 2] and found.skipped == 1


def test_a_fragment_another_process_appends_is_never_glued_to_the_next_record(
    tmp_path: Path,
) -> None:
    """The review's scenario: the daemon's writer is open, another process appends half a
    line (`printf '{"time":...,"action":"hea' >> P.history.jsonl`), then the daemon records a
    heal: the fragment is skipped, the heal is read."""
    h = history.History("p", tmp_path)
    h(event(1))
    fragment = '{"time":"2026-12-07T03:12:00.000Z","ts":1796,"action":"hea'
    subprocess.run(
        [sys.executable, "-c", f"open({str(h.path)!r}, 'a').write({fragment!r})"], check=True
    )
    h(event(2))
    found = history.read("p", tmp_path)
    assert numbers(found) == [1, 2] and found.skipped == 1
    assert h.path.read_bytes().count(b"\n") == 3  # the fragment ended on its own line


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=400)), min_size=1, max_size=30
    )
)
def test_torn_pieces_anywhere_never_cost_a_record(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[bool, int]]
) -> None:
    """Records and torn pieces (a strict prefix of a record, as a full disk or another
    writer leaves) in any order, through one open writer: every record is read, each run of
    pieces (nothing ends one before the next) is one skipped line."""
    folder = tmp_path_factory.mktemp("t")
    h = history.History("p", folder)
    written, torn, last_torn = [], 0, False
    for n, (is_record, cut_at) in enumerate(steps):
        line = history.line_of(event(n), project="p", target="host")
        if is_record:
            assert h.append(line)
            written.append(n)
        else:
            with h.path.open("ab") as f:
                f.write(line[: min(cut_at, len(line) - 2)])
            torn += not last_torn
        last_torn = not is_record
    found = history.read("p", folder)
    assert numbers(found) == written
    assert found.skipped == torn


def test_a_short_write_is_reported_and_the_next_record_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    h = history.History("p", tmp_path, metrics=metrics)
    h(event(1))
    real = os.write

    def half(fd: int, data: bytes) -> int:
        return real(fd, data[: len(data) // 2])

    monkeypatch.setattr(history.os, "write", half)
    assert h.append(history.line_of(event(2), project="p", target="host")) is False
    monkeypatch.setattr(history.os, "write", real)
    h(event(3))
    found = history.read("p", tmp_path)
    assert numbers(found) == [1, 3] and found.skipped == 1
    assert metrics.history_records.labels("error")._value.get() == 1
    assert metrics.history_records.labels("written")._value.get() == 2


def test_unparsable_and_foreign_lines_are_skipped() -> None:
    good = history.line_of(event(1), project="p", target="host")
    data = b"\n".join([b"not json", b"[1, 2]", b'{"ts": "x", "action": "a"}', b"", good])
    rows, skipped = history.parse_lines(data)
    assert [r["message"] for r in rows] == ["1"] and skipped == 3


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=60),
    cap=st.integers(min_value=4096, max_value=20000),
)
def test_rotation_keeps_the_newest_records_under_the_cap(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], cap: int
) -> None:
    """Whatever is written, the files together stay under the cap (plus one line), every line
    is a whole record, and what is kept is the newest records, in order, without a gap."""
    folder = tmp_path_factory.mktemp("h")
    h = history.History("p", folder, max_bytes=cap)
    longest = 0
    for n, size in enumerate(sizes):
        line = history.line_of(event(n, size), project="p", target="host")
        longest = max(longest, len(line))
        assert h.append(line)
    files = [h.path, h.path.with_name(h.path.name + ".1")]
    assert not h.path.with_name(h.path.name + ".2").exists()
    total = sum(f.stat().st_size for f in files if f.exists())
    assert total <= cap + longest
    found = history.read("p", folder)
    kept = numbers(found)
    assert found.skipped == 0
    assert kept == list(range(len(sizes) - len(kept), len(sizes)))  # the newest, in order
    assert kept and kept[-1] == len(sizes) - 1


WRITER = """
import sys
from pathlib import Path
from reconciler.ops import history
from reconciler.core.events import Event
h = history.History("p", Path(sys.argv[1]), max_bytes=int(sys.argv[3]))
for n in range(int(sys.argv[2])):
    h(Event("create", service="proc", message=str(n), cause="y" * (n % 300)))
"""


@pytest.mark.parametrize("cap", [history.DEFAULT_MAX_BYTES, 64 * 1024])
def test_threads_and_a_second_process_never_mix_lines(tmp_path: Path, cap: int) -> None:
    """Eight threads of one daemon and another process (`apply` beside it) append at once:
    every line is a whole record; without rotation, every record is there exactly once."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "400", str(cap)])
    h = history.History("p", tmp_path, max_bytes=cap)

    def write(t: int) -> None:
        for n in range(200):
            h(Event("heal", service=f"t{t}", message=str(n), cause="z" * (n % 200)))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(60) == 0
    found = history.read("p", tmp_path)
    assert found.skipped == 0
    seen = [(r["service"], r["message"]) for r in found.records]
    assert len(seen) == len(set(seen))
    if cap == history.DEFAULT_MAX_BYTES:
        assert len(seen) == 8 * 200 + 400
    else:
        total = sum(p.stat().st_size for p in tmp_path.glob("p.history.jsonl*"))
        assert total <= cap + 4096


def test_filters_by_time_and_service(tmp_path: Path) -> None:
    h = history.History("p", tmp_path)
    for n, (at, svc) in enumerate([(100.0, "web"), (200.0, "db"), (300.0, "web")]):
        h.append(history.line_of(event(n, service=svc), project="p", target="host", at=at))
    assert numbers(history.read("p", tmp_path, since=150)) == [1, 2]
    assert numbers(history.read("p", tmp_path, service="web")) == [0, 2]
    assert numbers(history.read("p", tmp_path, since=250, service="db")) == []


def test_secrets_are_redacted_and_long_texts_cut() -> None:
    from reconciler.config import secrets

    secrets.mark(["hunter2-history-secret"])
    line = history.line_of(
        Event("create", cause="env PASSWORD=hunter2-history-secret", message="m" * 5000),
        project="p",
        target="host",
    )
    row = json.loads(line)
    assert "hunter2" not in line.decode() and "[redacted]" in row["cause"]
    assert len(row["message"]) == history.FIELD_MAX


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MB", 10 * 1024**2), ("512k", 512 * 1024), ("1g", 1024**3), ("8192", 8192)],
)
def test_sizes(text: str, size: int) -> None:
    assert history.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "10q", "100"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        history.parse_size(text)


# ---------------------------------------------------------------------- the CLI's parsing


@pytest.mark.parametrize(
    ("text", "ago"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2d", 172800)]
)
def test_since_durations(text: str, ago: float) -> None:
    assert cli.since(text, now=1_000_000.0) == 1_000_000.0 - ago


def test_since_iso_times_are_utc_unless_they_say_otherwise() -> None:
    assert cli.since("2026-12-07T17:30:00Z") == cli.since("2026-12-07 17:30:00")
    assert cli.since("2026-12-07T18:30:00+01:00") == cli.since("2026-12-07T17:30:00")


@pytest.mark.parametrize("text", ["yesterday", "1x", "10 m", "h"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        cli.since(text)


def test_the_table_reads_like_the_readme() -> None:
    rows = [
        json.loads(history.line_of(e, project="p", target="host", at=1796664601.0))
        for e in (
            Event("reload", trigger="file edit", cause="3f2a9c1e0b7d -> 9d41c0a2e611",
                  revision="9d41c0a2e611"),
            event_of(StartContainer("id", "p-web-1", "web", "exited (137)"), "success",
                     trigger="event", duration_s=0.31, heal_reason="exited"),
            event_of(RemoveContainer("id", "p-web-3", "web", "scaled down"), "error",
                     trigger="file", error="conflict", duration_s=0.05),
        )
    ]  # fmt: skip
    text = cli.table(rows).splitlines()
    assert text[0].split() == list(cli.HEAD)
    assert "file edit @9d41c0a2" in text[1] and "3f2a9c1e0b7d -> 9d41c0a2e611" in text[1]
    assert text[2].split()[2:] == ["web", "p-web-1", "heal:", "start", "engine", "event",
                                   "exited", "(137)", "0.31s", "success"]  # fmt: skip
    assert text[3].endswith("error: conflict") and "remove" in text[3]


def test_a_multi_line_cause_stays_on_its_row() -> None:
    cause = "desired_state.yaml:3:5: bad\ndesired_state.yaml:9:1: worse"
    rejected = Event("reload_rejected", trigger="file edit", result="firing", cause=cause)
    row = json.loads(history.line_of(rejected, project="p", target="host"))
    text = cli.table([row]).splitlines()
    assert len(text) == 2 and "bad / desired_state.yam" in text[1]


def test_the_cause_is_cut_only_to_fit_a_terminal_and_never_in_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected file's cause (its file:line and problem) shows whole on a wide terminal
    and in a pipe; a narrow terminal cuts TRIGGER and CAUSE just enough to fit."""
    cause = (
        "desired_state.yaml: invalid desired state:\n  desired_state.yaml:12:7: "
        "services.grafana: expected a mapping of the service's keys, got nothing (null)"
    )
    rejected = Event("reload_rejected", trigger="file edit", result="firing", cause=cause)
    row = json.loads(history.line_of(rejected, project="p", target="host"))
    whole = cli.one_line(cause)
    assert whole in cli.table([row]) and whole in cli.table([row], width=300)
    narrow = cli.table([row], width=160).splitlines()
    assert all(len(line) <= 160 for line in narrow) and "…" in narrow[1]
    assert "desired_state.yaml: invalid desired state" in narrow[1]
    h = history.History("p", tmp_path)
    h(rejected)
    h.close()
    monkeypatch.setattr(cli, "terminal_width", lambda: 300)
    assert whole in show(tmp_path)[1]
    monkeypatch.undo()
    assert whole in show(tmp_path)[1]  # stdout is no terminal here: whole lines


def show(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from reconciler.cli.parser import build_parser

    args = build_parser().parse_args(
        ["history", "--project", "p", "--file", str(tmp_path / "none.yaml"),
         "--state-dir", str(tmp_path), *argv]
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.show(args)
    return code, out.getvalue(), err.getvalue()


def test_an_unknown_service_an_empty_window_and_no_file_are_told_apart(tmp_path: Path) -> None:
    """As `docker compose logs nosuch` (exit 1) and `journalctl --since` (no entries, 0)."""
    code, out, _ = show(tmp_path)
    assert code == 0 and "no history yet" in out and "does not exist" in out
    h = history.History("p", tmp_path)
    h(Event("heal", service="web", message="1"))
    code, out, err = show(tmp_path, "nosuch", "--since", "1h")
    assert code == 1 and out == "" and "no such service: nosuch (project p: web)" in err
    code, out, _ = show(tmp_path, "--since", "2099-01-01")
    assert code == 0 and "no records since 2099-01-01 00:00:00 UTC (1 older)" in out
    code, out, _ = show(tmp_path, "web", "--since", "2099-01-01")
    assert code == 0 and "no records of web since" in out
    code, out, _ = show(tmp_path, "web", "--json")
    assert code == 0 and json.loads(out)["service"] == "web"


# ---------------------------------------------------------------------- the actions' kinds


def kinds(p: Any) -> list[tuple[str, str, str]]:
    return [(type(a).__name__, kind_of(a), event_of(a, "success", trigger="x").replica)
            for a in p.actions]  # fmt: skip


def test_a_first_pass_creates_and_starts() -> None:
    found = {k for _, k, _ in kinds(plan(STACK, Observed()))}
    assert found == {"create", "start", "pull"} or found == {"create", "start"}


def test_a_scale_down_is_a_removal_and_a_spec_change_a_rollout() -> None:
    down = kinds(plan(stack(replicas=1), _CONVERGED))
    assert down and all(k == "remove" for _, k, _ in down)
    assert {r for _, _, r in down} == {"p-web-2"}
    changed = stack(environment={"A": "2"})
    steps = kinds(plan(changed, _CONVERGED, Holds(rollouts=rollouts(changed))))
    assert ("CreateContainer", "rollout_step", "p-web-1") in steps  # the replica, not its temp name
    assert all(k in ("rollout_step", "pull") for _, k, _ in steps)


def test_heals_are_heals() -> None:
    exited = plan(STACK, _with("p-web-1", state="exited", exit_code=137))
    assert [(k, r) for _, k, r in kinds(exited)] == [("heal", "p-web-1")]
    dead = plan(STACK, _with("p-web-1", state="dead"))
    assert "recreate" in {k for _, k, _ in kinds(dead)}
    cid = _id("p-web-1")
    assert kind_of(RestartContainer(cid, "p-web-1", "web", "unhealthy")) == "heal"
    assert kind_of(UnpauseContainer(cid, "p-web-1", "web")) == "heal"
    assert kind_of(StartContainer(cid, "p-web-1", "web", "its replacement failed")) == ("rollback")
    assert kind_of(StopContainer(cid, "p-web-1", "web")) == "drift_corrected"
    assert kind_of(SignalContainer(cid, "p-web-1", "web", "SIGHUP", "d", "config")) == "reload"


# ---------------------------------------------------------------------- the host's triggers


def test_a_pass_names_what_asked_for_it_and_follow_ups_inherit_it() -> None:
    seen: list[Event] = []
    rec = Recording(seen.append, lambda: "digest-of-the-file")
    start = StartContainer("id", "p-web-1", "web", "exited (1)")

    def step(key: str, trigger: str) -> str:
        rec.begin(key, trigger)
        rec.step(StepResult(start, "success", duration_s=0.1), "exited")
        return seen[-1].trigger

    assert step("service:web", "event") == "engine event"
    rec.asked("web", "file")  # a resync after an edit queued it
    assert step("service:web", "backoff") == "file edit"
    assert step("service:web", "backoff") == "file edit"  # a requeue of the same work
    assert step("service:web", "interval") == "resync"
    assert step("service:web", "manual") == "operator (apply)"
    rec.step(StepResult(start, "waiting"))
    assert len(seen) == 5  # a step that only waits did nothing yet
    assert seen[-1].revision == "digest-of-th"  # the file's digest, cut as everywhere


def test_a_pull_says_what_asked_for_the_service() -> None:
    from reconciler.core.actions import EnsureImage

    seen: list[Event] = []
    rec = Recording(seen.append, lambda: "d")
    rec.begin("service:web", "file")
    rec.begin("image:web", "backoff")  # the pull the service's pass queued
    rec.step(StepResult(EnsureImage("web", "web:2", "missing"), "success"), job=True)
    assert (seen[-1].kind, seen[-1].trigger) == ("pull", "file edit")
    rec.tag_moved("web", "sha256:abc")
    pull = EnsureImage("web", "web:2", "always", reason="the tag moved")
    rec.step(StepResult(pull, "success"), job=True)
    assert (seen[-1].kind, seen[-1].trigger) == ("pull", "image digest")
    assert seen[-1].data["digest"] == "sha256:abc"
    rec.begin("service:web", "backoff")  # the rollout the new digest asks for
    assert rec.trigger("web") == "image"


def test_a_rollout_keeps_the_trigger_that_started_it() -> None:
    seen: list[Event] = []
    rec = Recording(seen.append, lambda: "d")
    rec.begin("service:web", "file")
    rec.rollout("web", ro.RolloutEvent("web", "started", "rev"))
    rec.begin("service:web", "event")  # its old replica's `die`
    swap = RemoveContainer("id", "p-web-1", "web", "replaced")
    rec.step(StepResult(swap, "success"))
    assert seen[-1].kind == "rollout_step" and seen[-1].trigger == "file edit"
    rows = len(seen)
    # Its end is HostConditions' event (one row): Recording hands it the rollout's trigger.
    assert rec.rollout("web", ro.RolloutEvent("web", "completed", "rev")) == "file edit"
    assert len(seen) == rows
    rec.step(StepResult(swap, "success"))
    assert seen[-1].trigger == "engine event"


def test_a_death_the_engine_announced_is_healed_on_its_event() -> None:
    """The first heal after a `docker kill`: the event's pass hands it to the heal pool, and
    a resync's pass may run before the start is reported; or the resync's pass is the one
    that gets to the death the event announced. Either way: `engine event`."""
    seen: list[Event] = []
    rec = Recording(seen.append, lambda: "d")
    start = StartContainer("c1", "p-web-1", "web", "exited 137 (SIGKILL)")
    rec.died("p-web-1", "c1")
    rec.begin("service:web", "event")
    asked = rec.trigger("web")  # FastHeal.take: the pass that hands the heal over
    rec.asked("web", "interval")
    rec.begin("service:web", "backoff")  # a resync's pass, while the heal runs
    rec.step(StepResult(start, "success"), "exited", trigger=asked)
    assert (seen[-1].kind, seen[-1].trigger) == ("heal", "engine event")
    rec.died("p-web-1", "c1")
    rec.step(StepResult(start, "success"), "exited")  # the resync's pass heals it
    assert seen[-1].trigger == "engine event"
    rec.step(StepResult(start, "success"), "exited")  # a death no event announced
    assert seen[-1].trigger == "resync"
    rec.died("p-web-1", "c1")
    rec.started("c1")  # Docker's restart policy brought it back: the announcement is over
    rec.step(StepResult(start, "success"), "exited")
    assert seen[-1].trigger == "resync"


def test_a_rollout_and_its_rollback_keep_their_trigger_across_a_restart() -> None:
    from reconciler.core.actions import ConnectNetwork, DrainContainer
    from reconciler.core.desired import NetworkAttachment

    seen: list[Event] = []
    rec = Recording(seen.append, lambda: "file-digest-1234")
    rec.begin("service:web", "file")
    started = ro.RolloutEvent("web", "started", "svc-rev")
    record = rec.kept("web", ro.RolloutRecord(rolling_revision="svc-rev"), [started])
    assert record.trigger == "file"
    rec.rollout("web", started, ['environment.A "1" -> "2"'])
    assert (seen[-1].kind, seen[-1].data["diff"]) == ("rollout_started", 'environment.A "1" -> "2"')
    assert seen[-1].revision == "file-digest-" and seen[-1].data["service_revision"] == "svc-rev"
    # kill -9, a new daemon: the rollout goes on, on its old replica's `die`.
    rec = Recording(seen.append, lambda: "file-digest-1234")
    rec.begin("service:web", "event")
    rec.under_way("web", record, "normal")
    swap = StartContainer("c2", "0123456789ab_p-web-2", "web", "replaces p-web-2")
    rec.step(StepResult(swap, "success"))
    assert (seen[-1].kind, seen[-1].trigger) == ("rollout_step", "file edit")
    # It fails and rolls back: every step back is a `rollback`, with the rollout's trigger.
    failed = ro.RolloutRecord(rolling_revision="stable", failed_revision="svc-rev", trigger="file")
    assert rec.kept("web", failed, []).trigger == "file"
    rec.begin("service:web", "interval")
    rec.under_way("web", failed, "rolled_back")
    net = NetworkAttachment("p_default", aliases=("web",))
    back = [
        StartContainer("c1", "p-web-1", "web", "its replacement failed"),
        ConnectNetwork("c1", "p-web-1", "web", net, reconnect=True),
        RemoveContainer("c2", "0123456789ab_p-web-2", "web", "replaced"),
    ]
    for a in back:
        rec.step(StepResult(a, "success"), "network" if isinstance(a, ConnectNetwork) else None)
    assert [(e.kind, e.trigger) for e in seen[-3:]] == [("rollback", "file edit")] * 3
    rec.rollout("web", ro.RolloutEvent("web", "rollback_completed", "stable"))
    assert (seen[-1].kind, seen[-1].trigger) == ("rollback", "file edit")
    assert rec.kept("web", replace(failed, rolling_revision=""), []).trigger == ""
    # A removal keeps what started it (its drain), whatever pass removes it.
    rec.begin("service:db", "file")
    rec.step(StepResult(DrainContainer("d1", "p-db-1", "db", ("p_default",),
                                       "service removed from the file"), "success"))  # fmt: skip
    rec.begin("service:db", "event")
    rec.step(StepResult(RemoveContainer("d1", "p-db-1", "db", "service removed from the file"),
                        "success"))  # fmt: skip
    assert [(e.kind, e.trigger) for e in seen[-2:]] == [("remove", "file edit")] * 2


def test_conditions_carry_the_file_revision_a_trigger_and_a_cause() -> None:
    from reconciler.targets.host.conditions import HostConditions

    seen: list[Event] = []
    conditions = HostConditions(seen.append)
    rec = Recording(seen.append, lambda: "d")
    conditions.context = rec.context
    rolled = ro.RolloutEvent("web", "rolled_back", "svc-rev", "exited 1")
    conditions.rollout_event("web", rolled, trigger="file edit", file_revision="file-rev")
    assert (seen[-1].kind, seen[-1].revision, seen[-1].trigger) == (
        "rolled_back", "file-rev", "file edit")  # fmt: skip
    assert seen[-1].data["service_revision"] == "svc-rev"
    rec.begin("service:web", "event")
    oom = StartContainer("c1", "p-web-1", "web", "x", causes.exited(137, oom_killed=True))
    rec.step(StepResult(oom, "success"), "exited")
    conditions.crash_loops("web", frozenset({"p-web-1"}), 300.0)
    assert (seen[-1].kind, seen[-1].trigger, seen[-1].cause) == (
        "crash_loop", "engine event", "exited 137 (OOM killed)")  # fmt: skip


def test_down_records_an_operator_row(tmp_path: Path) -> None:
    h = history.History("p", tmp_path)
    rec = Recording(h, lambda: "d")
    rec.step(StepResult(RemoveContainer("id", "p-web-1", "web", "down"), "success"), trigger="down")
    (row,) = history.read("p", tmp_path).records
    assert (row["action"], row["trigger"], row["replica"]) == (
        "remove",
        "operator (down)",
        "p-web-1",
    )


def test_a_network_two_passes_raced_to_is_recorded_once() -> None:
    """A cold start: each service's pass plans the shared network; the one that finds it made
    reports nothing (no log line, count or history row), the one that made it reports it."""
    from reconciler.core.actions import CreateNetwork
    from reconciler.targets.host.service_metrics import ServiceMetrics

    seen: list[Event] = []
    reporter = ServiceMetrics(None, desired=lambda: STACK, books=dict, clock=lambda: 0.0,
                              on_result=lambda r: None, record=seen.append)  # fmt: skip
    made, raced = (
        next(a for a in plan(STACK, Observed()).actions if isinstance(a, CreateNetwork))
        for _ in range(2)
    )
    reporter.report(StepResult(made, "success", duration_s=0.1))
    reporter.report(StepResult(raced, "success", duration_s=0.0, shared=True))  # DoneElsewhere
    assert [(e.kind, e.replica, e.data["name"]) for e in seen] == [("create", "", "net")]


# ---------------------------------------------------------------------- starts and heals


def test_a_replica_our_create_left_unstarted_is_started_not_healed(tmp_path: Path) -> None:
    """A fresh deploy: a replica whose start waited for its dependency is found "created"
    on the next pass. Starting it finishes its creation: a `start` row, no heal counted,
    no RESTARTS. A heal that did bring a replica back is counted, also after a restart."""
    from reconciler.core.desired import DesiredState
    from reconciler.ops.state_store import StateStore
    from reconciler.targets.host.service_metrics import ServiceMetrics

    seen: list[Event] = []
    metrics = Metrics(CollectorRegistry(), process=False)
    store = StateStore("p", tmp_path)

    def reporter() -> ServiceMetrics:
        return ServiceMetrics(
            metrics,
            desired=lambda: DesiredState("p", (), (), ()),
            books=dict,
            clock=lambda: 0.0,
            on_result=lambda r: None,
            record=seen.append,
            restarts=store.restarts,
        )

    created = plan(*_created_replica())
    (start,) = [a for a in created.actions if isinstance(a, StartContainer)]
    assert kind_of(start) == "start"
    rep = reporter()
    rep.report(StepResult(start, "success", duration_s=0.1))
    assert (seen[-1].kind, seen[-1].cause) == ("start", "created, never started")
    heals = metrics.registry.get_sample_value
    assert heals("reconciler_heals_total", {"service": "web", "reason": "exited"}) is None
    assert rep.restarts() == {}
    healed = StartContainer(start.id, start.name, "web", "exited 137 (SIGKILL)")
    rep.report(StepResult(healed, "success", duration_s=0.1))
    assert seen[-1].kind == "heal"
    assert heals("reconciler_heals_total", {"service": "web", "reason": "exited"}) == 1
    assert reporter().restarts() == {start.name: {"count": 1}}  # a new daemon knows it
    gone = RemoveContainer(start.id, start.name, "web", "scaled down")
    rep.note_created(start.name)
    rep.report(StepResult(gone, "success"))
    assert StateStore("p", tmp_path).restarts.all() == {}  # a new replica starts at 0
    # Scaled up again (3 -> 1 -> 2): its slot's replica is created as missing, no heal.
    spec = next(c for c in STACK.services[1].replicas if c.name == start.name)
    rep.report(StepResult(CreateContainer(spec), "success"))
    assert seen[-1].kind == "create"
    assert heals("reconciler_heals_total", {"service": "web", "reason": "removed"}) is None


def _created_replica() -> tuple[Any, Observed, Holds]:
    """One replica of STACK's web on its spec, in Docker's state "created"."""
    c = next(c for c in _CONVERGED.containers if c.service == "web")
    return STACK, _with(c.name, state="created"), Holds()
