"""A config's `check` (pure): the file's forms and rules, the planner's check-then-signal,
a rejected content not checked again, and the rejection's condition (ConfigChecks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.config import loader as desired
from reconciler.core.actions import CheckConfig, SignalContainer
from reconciler.core.desired import DesiredState
from reconciler.core.events import Event
from reconciler.core.observed import Observed
from reconciler.core.planner import Holds, plan
from reconciler.engine.host.config_check import trim
from reconciler.engine.swarm import spec as swarm_file
from reconciler.errors import ConfigRejected, DesiredStateError
from reconciler.targets.host.config_checks import ConfigChecks
from tests.simulator import container_from


def load(tmp_path: Path, config: dict[str, Any]) -> DesiredState:
    (tmp_path / "app.conf").write_text("good\n")
    mount = {"source": "app.conf", "target": "/cfg", **config}
    doc = {"version": 1, "project": "p", "services": {"web": {"image": "w:1", "configs": [mount]}}}
    return desired.parse(yaml.safe_dump(doc), source="s.yaml", base_dir=tmp_path)


def test_forms_and_hash(tmp_path: Path) -> None:
    """A list is argv, a string runs with sh -c; `check` changes neither spec hash nor
    revision (adding one to a running stack recreates nothing)."""
    plain = load(tmp_path, {"reload_signal": "SIGHUP"}).services[0]
    listed = load(tmp_path, {"reload_signal": "SIGHUP", "check": ["app", "-t", "/cfg"]})
    shell = load(tmp_path, {"reload_signal": "SIGHUP", "check": "app -t /cfg && true"})
    assert listed.services[0].replicas[0].reload_check == (("app", "-t", "/cfg"),)
    assert shell.services[0].replicas[0].reload_check == (("sh", "-c", "app -t /cfg && true"),)
    assert plain.replicas[0].reload_check == ()
    for other in (listed.services[0], shell.services[0]):
        assert other.replicas[0].spec_hash == plain.replicas[0].spec_hash
        assert other.revision == plain.revision


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"check": ["app", "-t"]}, "services.web.configs[0].check: needs reload_signal"),
        ({"reload_signal": "SIGHUP", "check": []}, "check: is empty"),
        ({"reload_signal": "SIGHUP", "check": "  "}, "check: is empty"),
    ],
)
def test_rules(tmp_path: Path, config: dict[str, Any], says: str) -> None:
    with pytest.raises(DesiredStateError) as info:
        load(tmp_path, config)
    assert says.replace("[0]", ".0") in str(info.value).replace("[0]", ".0")


def test_swarm_refuses_check(tmp_path: Path) -> None:
    """Swarm configs are immutable objects: `check` is host-only, refused with its line."""
    text = """\
project: demo
services:
  web:
    image: busybox:1
    configs:
      - {source: d.yaml, target: /x, check: [app, -t]}
"""
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(DesiredStateError) as err:
        swarm_file.parse(text, source="d.yaml", base_dir=tmp_path, environ={})
    assert any(
        ":6:" in line and "check: not supported with --target swarm (host only)" in line
        for line in err.value.problems
    ), err.value.problems


def _running(state: DesiredState, config_hash: str) -> Observed:
    spec = state.services[0].replicas[0]
    return Observed(containers=(replace(container_from(spec), config_hash=config_hash),))


def test_planner_checks_before_the_signal_and_holds_a_rejected_content(tmp_path: Path) -> None:
    state = load(tmp_path, {"reload_signal": "SIGHUP", "check": ["app", "-t", "/cfg"]})
    spec = state.services[0].replicas[0]
    observed = _running(state, "old-digest")
    c = observed.containers[0]
    p = plan(state, observed, Holds())
    check = next(s for s in p.steps if isinstance(s.action, CheckConfig))
    signal = next(s for s in p.steps if isinstance(s.action, SignalContainer))
    assert check.action == CheckConfig(
        c.id, c.name, "web", (("app", "-t", "/cfg"),), spec.reload_digest, "config changed"
    )
    assert check.action.key in signal.after  # no signal unless the check passed
    assert check.action.describe().startswith("check the config of container")
    # This content was rejected: neither checked nor signalled again...
    held = plan(state, observed, Holds(rejected={c.id: spec.reload_digest}))
    assert not [a for a in held.actions if isinstance(a, CheckConfig | SignalContainer)]
    # ...but a later edit (another digest) is checked again; without `check`, only a signal.
    again = plan(state, observed, Holds(rejected={c.id: "an-older-rejected-digest"}))
    assert {type(a) for a in again.actions} >= {CheckConfig, SignalContainer}
    bare = load(tmp_path, {"reload_signal": "SIGHUP"})
    bare_actions = plan(bare, _running(bare, "old"), Holds()).actions
    assert [type(a) for a in bare_actions if a.kind == "container"] == [SignalContainer]
    # Delivered already: nothing to do.
    done = plan(state, _running(state, spec.reload_digest), Holds()).actions
    assert not [a for a in done if a.kind == "container"]


def test_rejection_fires_once_and_resolves(tmp_path: Path) -> None:
    state = load(tmp_path, {"reload_signal": "SIGHUP", "check": ["app"]})
    svc = state.services[0]
    observed = _running(state, "old")
    c = observed.containers[0]
    action = CheckConfig(c.id, c.name, "web", (("app",),), svc.replicas[0].reload_digest, "x")
    events: list[Event] = []
    checks = ConfigChecks(record=events.append)

    def refuse(a: CheckConfig) -> None:
        raise ConfigRejected("config check failed", exit_code=1, output="bad line 3")

    for _ in range(2):
        with pytest.raises(ConfigRejected):
            checks.run(action, refuse)
    assert checks.rejected(svc, observed.containers) == {c.id: action.digest}
    assert [(e.kind, e.result, e.cause) for e in events] == [
        ("config_rejected", "firing", "bad line 3")
    ]
    checks.run(action, lambda a: None)  # a later check passes
    assert checks.rejected(svc, observed.containers) == {}
    assert [(e.kind, e.result) for e in events][-1] == ("config_rejected", "resolved")
    # The file moving on (back to what runs, or another edit) resolves it as well.
    with pytest.raises(ConfigRejected):
        checks.run(replace(action, digest="rejected-one"), refuse)
    assert checks.rejected(svc, observed.containers) == {}
    assert [(e.kind, e.result) for e in events][-2:] == [
        ("config_rejected", "firing"),
        ("config_rejected", "resolved"),
    ]


def test_trim_keeps_one_line() -> None:
    assert trim(b"[ALERT] a\n\n  [ALERT] b  \n") == "[ALERT] a | [ALERT] b"
    long = trim("x" * 1000, limit=10)
    assert long == "xxxxxxxxxx... (990 more characters)"
