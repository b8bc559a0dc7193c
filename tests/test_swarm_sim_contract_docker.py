"""Contract: the Swarm simulator (tests/swarm_simulator.py, which the convergence property
in test_swarm_plan.py runs plans against) predicts what a real one-node swarm shows after the
Swarm engine executed a plan, on the fields the planner reads. Create, update (with a config
rotation), scale (by the file, by hand, held) and remove; `down` last.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler.core import swarm_plan as sp
from reconciler.core.desired import LABEL_SPEC_HASH
from reconciler.engine.swarm import spec as swarm_file
from reconciler.engine.swarm.engine import SwarmEngine
from tests.swarm_simulator import simulate
from tests.swarmkit import one_node_swarm, remove_project

pytestmark = pytest.mark.docker

TEST = {"io.reconciler.test": "1"}


@pytest.fixture(scope="module")
def swarm(api: docker.APIClient) -> Iterator[docker.APIClient]:
    with one_node_swarm(api):  # the shared swarm is used as it is, and never left
        yield api


@pytest.fixture
def sproject(swarm: docker.APIClient) -> Iterator[str]:
    name = f"sc{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_project(swarm, name)


class Stack:
    """One project's file on disk and its config folder and secret: edit, load, step."""

    def __init__(self, project: str, image: str, folder: Path, engine: SwarmEngine) -> None:
        self.project, self.image, self.folder, self.engine = project, image, folder, engine
        self.site = folder / "site"
        self.site.mkdir()
        (self.site / "index.html").write_text("one\n")
        self.secret = folder / "token"
        self.secret.write_text("s3cret\n")
        self.path = folder / "desired_state.yaml"

    def write(self, services: dict[str, dict[str, Any]]) -> sp.SwarmDesired:
        doc = {
            "version": 1,
            "project": self.project,
            "networks": {"front": {}},
            "secrets": {"token": {"file": str(self.secret)}},
            "services": {
                name: {
                    "image": self.image,
                    "command": ["sleep", "100000"],
                    "init": True,
                    "labels": TEST,
                    "stop_grace_period": "1s",
                    "networks": ["front"],
                    **extra,
                }
                for name, extra in services.items()
            },
        }
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return swarm_file.load(self.path)

    def web(self, **extra: Any) -> dict[str, Any]:
        """A service with a config folder and a secret, as rotations need."""
        return {
            "configs": [{"source": str(self.site), "target": "/srv"}],
            "secrets": ["token"],
            **extra,
        }

    def step(
        self, desired: sp.SwarmDesired, held: dict[str, str] | None = None
    ) -> tuple[sp.SwarmPlan, sp.SwarmObserved, sp.SwarmObserved, sp.SwarmObserved]:
        """Plan from what the swarm shows, predict, execute each action in order, observe."""
        before = self.engine.observe(self.project)
        the_plan = sp.plan(desired, before, held)
        predicted = simulate(before, the_plan, self.project)
        for action in the_plan.actions:
            self.engine.execute(action)
        return the_plan, before, predicted, self.engine.observe(self.project)


@pytest.fixture
def stack(swarm: docker.APIClient, sproject: str, busybox_image: str, tmp_path: Path) -> Stack:
    return Stack(sproject, busybox_image, tmp_path, SwarmEngine(swarm))


def verbs(the_plan: sp.SwarmPlan) -> list[str]:
    return [sp.describe(a) for a in the_plan.actions]


def service_view(o: sp.ObservedService, project: str) -> dict[str, Any]:
    """What the planner reads of a service, IDs and versions aside (compared on their own)."""
    spec = o.spec
    return {
        "ours": o.owned_by(project),
        "service": o.service,
        "hash": o.label(LABEL_SPEC_HASH),
        "mode": spec.get("Mode"),
        "image": spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image"),
        "configs_in_use": set(o.configs_in_use),
        "secrets_in_use": set(o.secrets_in_use),
        "force_update": o.force_update,
        "held_back": o.update_state in ("paused", "rollback_started", "rollback_paused")
        or sp.rolled_back(o),
    }


def assert_contract(
    desired: sp.SwarmDesired,
    before: sp.SwarmObserved,
    predicted: sp.SwarmObserved,
    real: sp.SwarmObserved,
) -> None:
    """`real` (observe() after execution) equals `predicted` on what the planner reads."""
    project = desired.project
    objects = lambda o: {  # noqa: E731
        kind: {(x.name, x.owned) for x in getattr(o, kind)}
        for kind in ("networks", "configs", "secrets")
    }
    assert objects(real) == objects(predicted)
    got = {s.name: s for s in real.services}
    want = {s.name: s for s in predicted.services}
    assert set(got) == set(want)
    for name, p in want.items():
        r = got[name]
        assert service_view(r, project) == service_view(p, project), name
        # Everything the simulator says the spec holds, Swarm holds (it adds its defaults).
        assert sp.covers(r.spec, p.spec), (name, r.spec, p.spec)
        assert sp.drift(desired.service(r.service), r) == sp.drift(desired.service(p.service), p), (
            name
        )
    # A service updated or scaled keeps its ID and gets a new version, as predicted.
    old = {s.name: s for s in before.services}
    for name in set(old) & set(got):
        assert got[name].id == old[name].id, name
        changed = want[name].version != old[name].version
        assert (got[name].version != old[name].version) == changed, name
    # And the next plan is the same from either.
    assert verbs(sp.plan(desired, real)) == verbs(sp.plan(desired, predicted))


def test_create_from_nothing(stack: Stack) -> None:
    """Network, config, secret and two services from an empty project."""
    desired = stack.write({"web": stack.web(replicas=2), "db": {}})
    the_plan, before, predicted, real = stack.step(desired)
    assert not before.services and not before.networks
    assert sorted(a.kind for a in the_plan.actions) == [
        "config",
        "network",
        "secret",
        "service",
        "service",
    ]
    assert_contract(desired, before, predicted, real)
    assert not sp.plan(desired, real)


def test_update(stack: Stack) -> None:
    """A changed environment: the service updated in place."""
    stack.step(stack.write({"web": stack.web(), "db": {}}))
    desired = stack.write({"web": stack.web(environment={"COLOR": "blue"}), "db": {}})
    the_plan, before, predicted, real = stack.step(desired)
    assert verbs(the_plan) == [
        f"update service {stack.project}_web (spec changed: environment.COLOR)"
    ]
    assert_contract(desired, before, predicted, real)


def test_update_with_a_config_rotation(stack: Stack) -> None:
    """A changed config file: a new config, the service updated to it; the old config stays
    in use (by PreviousSpec, for a rollback) and is not removed."""
    stack.step(stack.write({"web": stack.web(), "db": {}}))
    (stack.site / "index.html").write_text("two\n")
    desired = stack.write({"web": stack.web(), "db": {}})
    the_plan, before, predicted, real = stack.step(desired)
    assert [(a.verb, a.kind) for a in the_plan.actions] == [
        ("create", "config"),
        ("update", "service"),
    ]
    assert_contract(desired, before, predicted, real)


def test_scale_by_the_file_by_hand_and_held(stack: Stack) -> None:
    """Replicas 1 -> 3 in the file; a hand scale to 4 (updated back); a hand scale while the
    revision is held (only the replica count set back: ScaleService)."""
    stack.step(stack.write({"web": stack.web(), "db": {}}))
    desired = stack.write({"web": stack.web(replicas=3), "db": {}})
    the_plan, before, predicted, real = stack.step(desired)
    assert verbs(the_plan) == [f"update service {stack.project}_web (spec changed: replicas)"]
    assert_contract(desired, before, predicted, real)

    scale = lambda n: subprocess.run(  # noqa: E731
        ["docker", "service", "scale", "-d", f"{stack.project}_web={n}"],
        check=True,
        capture_output=True,
    )
    scale(4)
    the_plan, before, predicted, real = stack.step(desired)
    assert verbs(the_plan) == [f"update service {stack.project}_web (drift: scaled to 4 by hand)"]
    assert_contract(desired, before, predicted, real)

    scale(5)
    held = {"web": desired.service("web").spec_hash}
    the_plan, before, predicted, real = stack.step(desired, held)
    assert [(a.verb, a.name) for a in the_plan.actions] == [("scale", f"{stack.project}_web")]
    assert_contract(desired, before, predicted, real)


def test_remove_from_the_file_then_down(stack: Stack) -> None:
    """A service left out of the file is removed (its config the pass after, once no service
    uses it); `down` removes our services, configs, secrets and networks."""
    stack.step(stack.write({"web": stack.web(), "db": {}}))
    desired = stack.write({"db": {}})
    the_plan, before, predicted, real = stack.step(desired)
    assert verbs(the_plan) == [f"remove service {stack.project}_web (no longer in the file)"]
    assert_contract(desired, before, predicted, real)

    the_plan, before, predicted, real = stack.step(desired)
    # The secret stays: the file still declares it.
    assert [(a.verb, a.kind) for a in the_plan.actions] == [("remove", "config")]
    assert_contract(desired, before, predicted, real)

    before = stack.engine.observe(stack.project)
    down = sp.plan_down(desired, before)
    predicted = simulate(before, down, stack.project)
    for action in down.actions:
        stack.engine.execute(action)
    assert predicted == sp.SwarmObserved()
    # The manager drops an overlay network a moment after `network rm` answers (its last
    # tasks' endpoints go first): the swarm reaches the prediction, it need not at once.
    deadline = time.monotonic() + 60
    while True:
        real = stack.engine.observe(stack.project)
        try:
            assert_contract(desired, before, predicted, real)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_contract_check_sees_a_difference(stack: Stack) -> None:
    """The comparison itself fails when the swarm differs from the prediction (a hand
    scale after the step)."""
    desired = stack.write({"db": {}})
    _, before, predicted, _ = stack.step(desired)
    subprocess.run(
        ["docker", "service", "scale", "-d", f"{stack.project}_db=2"],
        check=True,
        capture_output=True,
    )
    with pytest.raises(AssertionError):
        assert_contract(desired, before, predicted, stack.engine.observe(stack.project))
