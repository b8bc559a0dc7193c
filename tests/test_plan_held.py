"""What runs against what the file asks, told honestly (review of #19, items 3, 4, 8, 10): a
revision rolled back and held is pending in `plan` (exit 2, `in_sync: false`, why, since
when, what tries it again) on both targets; `status` shows the image that runs and a rollout
only when one is under way; waits are data; a replacement reads as one; project-level
decisions are named; a reader that leaves stdout ends no command in a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.cli import plan_output, status_view
from reconciler.core import rollout as ro
from reconciler.core import swarm_plan as sp
from reconciler.core.actions import CreateContainer
from reconciler.core.desired import DesiredState
from reconciler.core.observed import ObservedContainer
from reconciler.core.plan_explain import (
    ServicePlan,
    Wait,
    explain,
    held_revision,
    host_changes,
    plan_line,
)
from reconciler.core.planner import plan
from reconciler.core.spec_diff import FieldChange
from reconciler.ops import plan_schema
from reconciler.ops.status import image_shown, rollout_state
from reconciler.targets.base import PlanReport
from reconciler.targets.swarm.explain import explain_swarm, held_note, held_waits
from reconciler.targets.swarm.records import SwarmRecord
from tests.test_plan_output import _running, _state
from tests.test_rollout import STABLE, V1, V2, converged_daemon, mine, record, verdict, web
from tests.test_swarm_plan import observed_of, two, with_spec

HELD = held_revision("web", "a" * 40, "b" * 40, "new replica unhealthy", "17:50:36")
CHANGE = FieldChange("environment.A", "1", "2")


# (changes, steps, waits) of one service -> plan's exit code, and whether it says in sync
@pytest.mark.parametrize(
    ("changes", "waits", "steps", "code"),
    [
        ((), (), False, 0),  # in sync
        ((CHANGE,), (HELD,), False, 2),  # held: the diff, no step -> pending, never in sync
        ((CHANGE,), (), False, 2),  # a diff alone (a paused rollout) is pending too
        ((), (HELD,), False, 2),  # held, fields unknown (an older container): pending
        ((CHANGE,), (), True, 2),  # steps: pending
    ],
)
def test_plan_is_in_sync_only_when_what_runs_is_the_files(
    capsys: pytest.CaptureFixture[str],
    changes: tuple[FieldChange, ...],
    waits: tuple[Wait, ...],
    steps: bool,
    code: int,
) -> None:
    desired = _state("1", 1)
    report = PlanReport(
        "p",
        steps=("start container p-web-1 (exited 1)",) if steps else (),
        services=(ServicePlan("web", changes, (), waits),),
    )
    assert plan_output.show(report, desired, {}, "host", as_json=False) == code
    out = capsys.readouterr().out
    assert ("p: in sync" in out) == (code == 0)
    assert plan_output.show(report, desired, {}, "host", as_json=True) == code
    doc = plan_schema.load(json.loads(capsys.readouterr().out))
    assert doc.in_sync == (code == 0) and doc.services[0].in_sync == (code == 0)


def test_a_held_revision_says_why_since_when_and_what_tries_it_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    desired = _state("2", 2)
    observed = _running(_state("1", 2))  # rolled back: revision 1 runs, the file asks 2
    svc = desired.services[0]
    services = explain(
        ["web"], (), (), {"web": host_changes(svc, observed.containers)}, held={"web": HELD}
    )
    report = PlanReport("p", notes=(str(HELD),), services=services)
    assert plan_output.show(report, desired, {}, "host", as_json=False) == 2
    out = capsys.readouterr().out
    assert 'environment.A "1" -> "2"' in out
    assert "revision aaaaaaaaaaaa is held (rolled back at 17:50:36 because new replica" in out
    assert "bbbbbbbbbbbb runs instead" in out
    assert "only after an edit of the file that changes this service" in out
    assert "`reconciler apply` keeps it held" in out
    assert "p: in sync" not in out and "p: not in sync, nothing to do now: web held" in out
    plan_output.show(report, desired, {}, "host", as_json=True)
    data = json.loads(capsys.readouterr().out)
    jsonschema.validate(data, plan_schema.json_schema())
    (wait,) = data["services"][0]["waits"]
    assert wait["subject"] == "service web"
    assert wait["waits_for"] == "an edit of the file that changes this service"
    assert wait["cause"] == "rolled back at 17:50:36 because new replica unhealthy"


def test_a_rollback_records_when_it_happened_and_a_new_revision_forgets_it() -> None:
    old = mine(converged_daemon(V1).observed)
    rec, events = record(STABLE, V2, old, (verdict("n1", False),), now=1234.5)
    assert events[-1][0] == "rolled_back" and rec.failed_at == 1234.5
    assert ro.refresh(rec, web(V1)).failed_at == 0.0  # the file moved on


def test_swarm_a_revision_swarm_rolled_back_is_pending_with_its_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = two(tmp_path)
    o = observed_of(d)
    live = next(s for s in o.services if s.name == "demo_web")
    old = with_spec(live, Labels={**dict(live.labels), "io.reconciler.spec-hash": "previous"})
    old = with_spec(old, TaskTemplate__ContainerSpec__Env=["A=1"])
    old = replace(old, update_state="rollback_completed", update_message="update rolled back")
    o = sp.SwarmObserved((old, *(s for s in o.services if s is not live)), o.networks)
    web_a2 = replace(d.service("web"), spec_json=_env(d.service("web").spec))
    d = replace(d, services=tuple(web_a2 if s.name == "web" else s for s in d.services))
    held = sp.failed_revisions(d, o, {"web": d.service("web").spec_hash}, {})
    the_plan = sp.plan(d, o, held)
    records = {"web": SwarmRecord(failed=held["web"], failed_reason="update rolled back")}
    waits = held_waits(d, records)
    notes = [str(n) for n in the_plan.notes if not held_note(n, waits)]
    report = PlanReport(
        d.project,
        notes=(*map(str, waits.values()), *notes),
        services=explain_swarm(d, o, the_plan, waits),
    )
    assert plan_output.show(report, d, {}, "swarm", as_json=False) == 2
    out = capsys.readouterr().out
    assert 'environment.A "1" -> "2"' in out, out
    assert "held (Swarm rolled it back because update rolled back)" in out
    assert "Swarm rolled this revision back" not in out  # the planner's own note: once
    assert "in sync" not in out.replace("not in sync", "")
    assert "start_period" not in out


def _env(spec: dict[str, Any]) -> str:
    """The file's spec with A=2 (Swarm holds A=1)."""
    spec["TaskTemplate"]["ContainerSpec"]["Env"] = ["A=2"]
    return json.dumps(spec, sort_keys=True)


def test_waits_are_data_and_a_replacement_reads_as_one() -> None:
    observed = _running(_state("1", 2))
    the_plan = plan(_state("2", 3), observed)
    owners = {f"p-web-{i}": "web" for i in (1, 2, 3)}
    (svc,) = explain(["web"], the_plan.actions, the_plan.notes, {}, owners)
    first = svc.waits[0]
    assert first.subject == "p-web-1"
    assert first.waits_for == "for p-web-3 to run (missing, created in this pass)"
    assert first.cause == "spec changed: environment.A, environment.API_TOKEN"
    swap = plan(_state("2", 2), observed)
    (create,) = [a for a in swap.actions if isinstance(a, CreateContainer)]
    line = plan_line(create)
    assert line.startswith("replace container p-web-1 (spec changed: environment.A, ")
    assert f"create {create.name}, start and watch it, then remove p-web-1 and rename" in line
    doc = plan_schema.document(
        project="p", target="host", services=(), actions=swap.actions, notes=(), errors=(),
        denied={}, in_sync=False,
    )  # fmt: skip
    (step,) = [s for s in doc["steps"] if s["verb"] == "create"]
    assert step["replaces"] == "p-web-1" and step["text"] == line


def _c(
    replica: int, spec_hash: str, state: Any = "running", image: str = "x:1"
) -> ObservedContainer:
    name = f"p-web-{replica}"
    return ObservedContainer(f"id{replica}", name, "web", replica, spec_hash, state, image=image)


def _svc(d: DesiredState) -> tuple[str, str]:
    specs = d.services[0].replicas
    return specs[0].spec_hash, specs[1].spec_hash


NEW = _state("2", 2)
OLD = _svc(_state("1", 2))
ROLLING = ro.RolloutRecord(rolling_revision=NEW.services[0].revision)


@pytest.mark.parametrize(
    ("rec", "containers", "expected"),
    [
        (ro.RolloutRecord(), (_c(1, _svc(NEW)[0]), _c(2, _svc(NEW)[1])), "-"),
        (ro.RolloutRecord(), (_c(1, _svc(NEW)[0], "exited"), _c(2, _svc(NEW)[1])), "-"),
        (ro.RolloutRecord(), (_c(1, OLD[0], "exited"), _c(2, OLD[1])), "pending (not started)"),
        (ROLLING, (_c(1, _svc(NEW)[0]), _c(2, OLD[1])), "rolling out 1/2"),
        (ROLLING, (_c(1, _svc(NEW)[0]), _c(2, _svc(NEW)[1])), "-"),
    ],
)
def test_status_says_rolling_out_only_while_a_rollout_is_under_way(
    rec: ro.RolloutRecord, containers: tuple[ObservedContainer, ...], expected: str
) -> None:
    assert rollout_state(NEW.services[0], rec, containers) == expected


def test_status_shows_the_image_that_runs() -> None:
    svc = NEW.services[0]
    assert image_shown(svc, "x:2", ()) == "x:2 (file; none runs)"
    assert image_shown(svc, "x:1", (_c(1, "h"),)) == "x:1"
    assert image_shown(svc, "x:2", (_c(1, "h"), _c(2, "h", "exited"))) == "x:1 (file: x:2)"
    moved = _c(2, "h", image="sha256:" + "f" * 64)  # its tag moved on since
    shown = image_shown(svc, "x:1@sha256:ab", (_c(1, "h"), moved))
    assert shown == "sha256:ffffffffffff, x:1 (file: x:1)"


def test_status_names_the_projects_own_decisions() -> None:
    row = {"at": 0.0, "action": "create network p-net", "result": "success"}
    status = {"pid": 1, "updated_at": 0.0, "decisions": {"": {"recent": [row]}}}
    text = status_view.account("p", status, "the default policy")
    assert "  project p: " in text and " success create network p-net" in text
    assert "\n  : " not in text


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("version: 1\nproject: p\nservices:\n  web:\n    image: x:1\n")
    path.chmod(0o600)
    tmp_path.chmod(0o700)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "validate", str(path)],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr
