"""What `reconciler plan` prints: for humans, per service the fields that differ, then the
notes and the steps with their causes; with `--json`, the same as data
(`reconciler.ops.plan_schema`). Called by `reconciler.cli.commands`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from reconciler.ops.plan_schema import document
from reconciler.targets.base import Desired, PlanReport

EXIT_OK, EXIT_ERROR, EXIT_PENDING = 0, 1, 2


def show(
    report: PlanReport, desired: Desired, denied: Mapping[str, str], target: str, as_json: bool
) -> int:
    """Print the plan; the exit code: 0 in sync, 2 changes pending (steps, or what runs
    differs from the file: a held revision, a rollout that waits), 1 an error or a denial."""
    pending = [s.name for s in report.services if not s.in_sync]
    in_sync = not report.errors and not report.steps and not desired.denied and not pending
    code = EXIT_ERROR if report.errors or desired.denied else (EXIT_OK if in_sync else EXIT_PENDING)
    if as_json:
        data = document(
            project=report.project,
            target=target,
            services=report.services,
            actions=report.actions,
            notes=report.notes,
            errors=report.errors,
            denied=denied,
            in_sync=in_sync,
        )
        print(json.dumps(data, indent=2))
        return code
    for svc in report.services:
        if svc.changes:
            print(f"~ {svc.name}:")
            for change in svc.changes:
                print(f"    {change}")
    for note in report.notes:
        print(f"# {note}")
    for line in report.errors:
        print(f"error: {line}")
    if report.errors:
        return code
    for name, rules in sorted(denied.items()):  # never in sync
        print(f"error: service {name} is denied by the host policy (rule {rules}); not created")
    if in_sync:
        print(f"{report.project}: in sync")
    elif not report.steps and pending:  # nothing to do now, yet what runs is not the file's
        print(f"{report.project}: not in sync, nothing to do now: {', '.join(pending)} held")
    for step in report.steps:
        print(step)
    return code
