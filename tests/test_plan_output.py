"""`plan`'s output (text and `--json` against its schema) from a pure plan, and what `status`
says of the running daemon (or of none), without an engine."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest

from reconciler.cli import plan_output, status_view
from reconciler.core.actions import CreateContainer
from reconciler.core.desired import ContainerSpec, DesiredState, ServiceSpec
from reconciler.core.observed import Observed, ObservedContainer
from reconciler.core.plan_explain import explain, host_changes
from reconciler.core.planner import plan
from reconciler.core.spec_diff import encode
from reconciler.core.spec_fields import host_view
from reconciler.ops import plan_schema
from reconciler.targets.base import PlanReport


def _state(a: str, replicas: int) -> DesiredState:
    specs = tuple(
        ContainerSpec(
            name=f"p-web-{i}",
            project="p",
            service="web",
            replica=i,
            image="app:1",
            environment=(f"A={a}", f"API_TOKEN=t{a}"),
        )
        for i in range(1, replicas + 1)
    )
    return DesiredState("p", (), (), (ServiceSpec("web", "app:1", specs, revision=a),))


def _running(desired: DesiredState) -> Observed:
    return Observed(
        containers=tuple(
            ObservedContainer(
                id=f"id{spec.replica}",
                name=spec.name,
                service="web",
                replica=spec.replica,
                spec_hash=spec.spec_hash,
                state="running",
                spec_view=encode(host_view(spec)),  # the label the engine creates it with
            )
            for spec in desired.services[0].replicas
        )
    )


def _report() -> PlanReport:
    observed = _running(_state("1", 2))
    desired = _state("2", 3)
    the_plan = plan(desired, observed)
    svc = desired.services[0]
    changes = {"web": host_changes(svc, observed.containers)}
    owners = {s.name: "web" for s in svc.replicas}
    return PlanReport(
        "p",
        notes=tuple(map(str, the_plan.notes)),
        steps=tuple(a.describe() for a in the_plan.actions),
        services=explain(["web"], the_plan.actions, the_plan.notes, changes, owners),
        actions=the_plan.actions,
    )


def test_the_text_names_the_diff_the_causes_and_what_waits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = plan_output.show(_report(), _state("2", 3), {}, "host", as_json=False)
    out = capsys.readouterr().out
    assert code == 2
    assert out.splitlines()[:4] == [
        "~ web:",
        '    environment.A "1" -> "2"',
        "    environment.API_TOKEN (changed, value hidden)",
        "    replicas 2 -> 3",
    ]
    assert (
        "# p-web-1: replacement waits (for p-web-3 to run (missing, created in this pass))" in out
    )
    assert "create container p-web-3 (missing)" in out
    assert "API_TOKEN=" not in out and '"t2"' not in out


def test_the_json_matches_its_schema(capsys: pytest.CaptureFixture[str]) -> None:
    plan_output.show(_report(), _state("2", 3), {"root": "privileged"}, "host", as_json=True)
    data = json.loads(capsys.readouterr().out)
    jsonschema.validate(data, plan_schema.json_schema())
    doc = plan_schema.load(data)
    assert data["schema"] == "reconciler.plan/v1" and not doc.in_sync
    assert doc.denied[0].service == "root"
    (web,) = doc.services
    assert [c.text for c in web.changes][-1] == "replicas 2 -> 3"
    assert web.changes[1].hidden and web.changes[1].old is None
    create = next(s for s in doc.steps if s.verb == "create")
    assert (create.cause.kind, create.cause.text) == ("missing", "missing")
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict: no stray keys
        jsonschema.validate({**data, "extra": 1}, plan_schema.json_schema())


def test_a_replacement_names_the_fields_it_changes() -> None:
    """Without a scale-up nothing waits: each replacement's cause names the fields."""
    observed = _running(_state("1", 2))
    p = plan(_state("2", 2), observed)
    creates = [a for a in p.actions if isinstance(a, CreateContainer)]
    assert [a.cause.text for a in creates] == ["spec changed: environment.A, environment.API_TOKEN"]
    assert [c.field for c in creates[0].cause.changes] == ["environment.A", "environment.API_TOKEN"]
    older = replace(
        observed, containers=tuple(replace(c, spec_view="") for c in observed.containers)
    )
    (old,) = [a for a in plan(_state("2", 2), older).actions if isinstance(a, CreateContainer)]
    assert old.cause.text == "spec changed"  # made before the label: fields unknown


def test_status_takes_the_daemons_judgement_and_says_when_none_runs() -> None:
    own = {"node-exporter": "host_path"}
    assert status_view.denials_of(None, own) == own
    running = {
        "pid": 42,
        "updated_at": 0.0,
        "policy": "/etc/reconciler/policy.yaml",
        "denied": {},
        "decisions": {
            "web": {
                "waits": ["p-web-1: replacement waits (rollout paused)"],
                "recent": [
                    {
                        "at": 0.0,
                        "action": "restart container p-web-2 (unhealthy for 31 s)",
                        "cause": "unhealthy for 31 s",
                        "result": "success",
                    }
                ],
            }
        },
    }
    assert status_view.denials_of(running, own) == {}
    text = status_view.account("p", running, "the built-in default policy")
    assert "daemon pid 42 runs project p under /etc/reconciler/policy.yaml" in text
    assert "web: holds p-web-1: replacement waits (rollout paused)" in text
    assert "restart container p-web-2 (unhealthy for 31 s)" in text
    alone = status_view.account("p", None, "the built-in default policy")
    assert alone.startswith("no daemon runs for project p")
