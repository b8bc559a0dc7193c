"""`reconciler plan --json`: the documented schema of the plan as data (pydantic models; the
JSON Schema is `json_schema()`, `python -m reconciler.ops.plan_schema`).

Built by the CLI from a target's PlanReport; scripts and CI read it. A value of a
secret-looking key, or of a secret, is never in it (`old`/`new` are null, `hidden` true).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.core.actions import Action
from reconciler.core.causes import Cause
from reconciler.core.plan_explain import ServicePlan, Wait, plan_line, replaces
from reconciler.core.spec_diff import FieldChange

SCHEMA: Literal["reconciler.plan/v1"] = "reconciler.plan/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Change(_Strict):
    """One field that differs between what runs and what the file asks."""

    field: str  # file field name: image, replicas, environment.A, healthcheck.interval
    change: Literal["added", "removed", "changed"]
    old: Any = None  # null when unset, hidden or too long to show
    new: Any = None
    hidden: bool = False  # a secret-looking key or a secret: values never shown
    text: str  # as `plan` prints it: environment.A "1" -> "2"


class CauseDoc(_Strict):
    """Why a step is needed."""

    kind: Literal[
        "missing", "spec_changed", "image_moved", "drift", "exited", "unhealthy", "dead", "other"
    ]
    text: str  # missing, spec changed: environment.A, exited 137 (OOM killed), ...
    fields: list[str]  # the fields behind it (spec_changed, image_moved, drift)


class StepDoc(_Strict):
    """One action the next pass would take, in order."""

    service: str | None  # null for a network, volume, config or secret of the project
    verb: str  # create, start, restart, update, scale, remove, pull, ...
    kind: str  # container, network, volume, image, service, config, secret
    name: str
    text: str  # the line `plan` prints
    cause: CauseDoc
    replaces: str | None = None  # a replacement (created under `name`): the replica it replaces


class WaitDoc(_Strict):
    """A held step, or a held revision: what it waits for and why it is needed."""

    subject: str  # what is held: a container, a step key (`create:p-web-3`), `service web`
    waits_for: str  # parallelism 1 reached, db to run, an edit of the file that changes it
    cause: str | None  # why the step is needed (spec changed: environment.A), when known
    text: str  # the line `plan` prints


class ServiceDoc(_Strict):
    """One service of the file: what differs, what is done and why, what waits."""

    name: str
    in_sync: bool
    changes: list[Change]
    steps: list[StepDoc]
    waits: list[WaitDoc]  # held steps (and a held revision): what each waits for, and why


class Denied(_Strict):
    service: str
    rules: str  # the host policy's rules that deny it: host_path, privileged, ...


class PlanDocument(_Strict):
    """The whole plan of one project."""

    schema_: Literal["reconciler.plan/v1"] = Field(alias="schema")
    project: str
    target: str  # host, swarm
    in_sync: bool  # nothing to do and nothing held: what runs is the file's (exit 0)
    errors: list[str]  # each stops the plan (exit 1)
    denied: list[Denied]  # services the host policy denies (exit 1)
    notes: list[str]
    services: list[ServiceDoc]
    steps: list[StepDoc]  # every step, in order (services' and the project's)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _change(c: FieldChange) -> Change:
    return Change(
        field=c.field,
        change=c.change,  # type: ignore[arg-type]
        old=c.shown(c.old),
        new=c.shown(c.new),
        hidden=c.hidden,
        text=str(c),
    )


def _cause(cause: Cause) -> CauseDoc:
    return CauseDoc(kind=cause.kind, text=cause.text, fields=[c.field for c in cause.changes])


def _wait(w: Wait) -> WaitDoc:
    return WaitDoc(subject=w.subject, waits_for=w.waits_for, cause=w.cause or None, text=w.text)


def _step(a: Action) -> StepDoc:
    return StepDoc(
        service=a.service,
        verb=a.verb,
        kind=a.kind,
        name=a.name,
        text=plan_line(a),
        cause=_cause(a.cause),
        replaces=replaces(a),
    )


def document(
    *,
    project: str,
    target: str,
    services: Iterable[ServicePlan],
    actions: Sequence[Action],
    notes: Sequence[str],
    errors: Sequence[str],
    denied: Mapping[str, str],
    in_sync: bool,
) -> dict[str, Any]:
    """The plan as JSON-ready data, validated against the schema on the way."""
    doc = PlanDocument(
        schema=SCHEMA,
        project=project,
        target=target,
        in_sync=in_sync,
        errors=list(errors),
        denied=[Denied(service=s, rules=r) for s, r in sorted(denied.items())],
        notes=list(notes),
        services=[
            ServiceDoc(
                name=s.name,
                in_sync=s.in_sync and s.name not in denied,
                changes=[_change(c) for c in s.changes],
                steps=[_step(a) for a in actions if a.service == s.name],
                waits=[_wait(w) for w in s.waits],
            )
            for s in services
        ],
        steps=[_step(a) for a in actions],
    )
    return doc.model_dump(mode="json", by_alias=True)


def load(data: Mapping[str, Any]) -> PlanDocument:
    """Validate a plan document (what a test or a script reads back)."""
    return PlanDocument.model_validate(data)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `plan --json`."""
    return PlanDocument.model_json_schema(by_alias=True)


if __name__ == "__main__":  # pragma: no cover - prints the schema for the README's readers
    print(json.dumps(json_schema(), indent=2))
