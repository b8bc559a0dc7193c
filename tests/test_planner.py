"""The pure planner: cases, and hypothesis properties against the engine model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import loader as desired
from reconciler.core.model import (
    ConnectNetwork,
    CreateContainer,
    CreateNetwork,
    CreateVolume,
    DesiredState,
    EnsureImage,
    Observed,
    ObservedContainer,
    ObservedNetwork,
    ObservedVolume,
    RecreateContainer,
    RemoveContainer,
    RestartContainer,
    StartContainer,
    StopContainer,
    UnpauseContainer,
)
from reconciler.core.planner import Holds, plan
from tests.simulator import container_from, simulate


def state(doc: dict[str, Any]) -> DesiredState:
    doc = {"version": 1, "project": "p", **doc}
    return desired.parse(yaml.safe_dump(doc), source="s.yaml", base_dir=Path("/srv"))


STACK = state(
    {
        "networks": {"net": {}},
        "volumes": {"data": {}},
        "services": {
            "db": {"image": "db:1", "volumes": ["data:/data"], "networks": ["net"]},
            "web": {"image": "web:1", "replicas": 2, "depends_on": ["db"], "networks": ["net"]},
        },
    }
)


def converged(d: DesiredState) -> Observed:
    return simulate(Observed(), plan(d, Observed()))


_CONVERGED = converged(STACK)


def test_from_empty_creates_everything_in_order() -> None:
    """Networks, volumes, images, then containers (create, start) in depends_on order."""
    actions = plan(STACK, Observed()).actions
    kinds = [type(a).__name__ for a in actions]
    assert kinds[:4] == ["CreateNetwork", "CreateVolume", "EnsureImage", "EnsureImage"]
    assert kinds[4:] == ["CreateContainer", "StartContainer"] * 3
    starts = [a.name for a in actions if isinstance(a, StartContainer)]
    assert starts == ["p-db-1", "p-web-1", "p-web-2"]


def test_creates_run_early_and_starts_wait_for_dependencies() -> None:
    """Creating waits for network, volume and image; starting waits for its dependencies."""
    steps = {s.key: s for s in plan(STACK, Observed()).steps}
    assert steps["create:p-db-1"].after == {"network:net", "volume:data", "image:db"}
    assert steps["create:p-web-1"].after == {"network:net", "image:web"}
    assert steps["container:p-db-1"].after == {"create:p-db-1"}
    assert steps["container:p-web-1"].after == {"create:p-web-1", "container:p-db-1"}


def test_converged_plans_nothing() -> None:
    """A converged project needs no action."""
    assert not plan(STACK, _CONVERGED)


def test_scale_down_removes_highest_replicas() -> None:
    """Replicas beyond `replicas` are removed."""
    smaller = state(
        {
            "networks": {"net": {}},
            "volumes": {"data": {}},
            "services": {
                "db": {"image": "db:1", "volumes": ["data:/data"], "networks": ["net"]},
                "web": {"image": "web:1", "replicas": 1, "depends_on": ["db"], "networks": ["net"]},
            },
        }
    )
    actions = plan(smaller, _CONVERGED).actions
    assert actions == (RemoveContainer(_id("p-web-2"), "p-web-2", "web", "scaled down"),)


def _id(name: str) -> str:
    return next(c.id for c in _CONVERGED.containers if c.name == name)


def _with(name: str, **changes: Any) -> Observed:
    cs = tuple(replace(c, **changes) if c.name == name else c for c in _CONVERGED.containers)
    return replace(_CONVERGED, containers=cs)


def test_exited_is_started() -> None:
    """An exited container (crash or docker stop) is started again."""
    (a,) = plan(STACK, _with("p-db-1", state="exited", exit_code=137)).actions
    assert isinstance(a, StartContainer) and a.reason == "exited (137)"


def test_paused_is_unpaused_and_dead_is_recreated() -> None:
    """Paused -> unpause; dead -> recreate."""
    assert isinstance(plan(STACK, _with("p-db-1", state="paused")).actions[0], UnpauseContainer)
    actions = plan(STACK, _with("p-db-1", state="dead")).actions
    assert any(isinstance(a, RecreateContainer) and a.reason == "dead" for a in actions)


def test_restarting_is_left_to_docker() -> None:
    """A container Docker is restarting is not touched."""
    assert not plan(STACK, _with("p-db-1", state="restarting"))


def test_unhealthy_restarts_only_after_grace() -> None:
    """Unhealthy is restarted when its grace ran out, not before."""
    obs = _with("p-db-1", health="unhealthy")
    assert not plan(STACK, obs, Holds(unhealthy_due=frozenset()))
    (a,) = plan(STACK, obs, Holds(unhealthy_due=frozenset({"p-db-1"}))).actions
    assert isinstance(a, RestartContainer)


def test_changed_spec_recreates_one_replica_at_a_time() -> None:
    """A changed variable recreates replicas in a chain, each after the previous one."""
    changed = state(
        {
            "networks": {"net": {}},
            "volumes": {"data": {}},
            "services": {
                "db": {"image": "db:1", "volumes": ["data:/data"], "networks": ["net"]},
                "web": {
                    "image": "web:1",
                    "replicas": 2,
                    "depends_on": ["db"],
                    "networks": ["net"],
                    "environment": {"A": "2"},
                },
            },
        }
    )
    steps = plan(changed, _CONVERGED).steps
    recreates = [s for s in steps if isinstance(s.action, RecreateContainer)]
    assert [s.key for s in recreates] == ["container:p-web-1", "container:p-web-2"]
    assert "container:p-web-1" in recreates[1].after


def test_missing_network_is_reconnected() -> None:
    """A container that lost a network it belongs on is connected again."""
    (a,) = plan(STACK, _with("p-db-1", networks=frozenset())).actions
    assert isinstance(a, ConnectNetwork) and a.attachment.network == "net"


def test_unowned_network_and_volume_are_adopted_not_created() -> None:
    """Existing objects without our labels are used as they are and reported."""
    obs = Observed(
        networks=(ObservedNetwork("net", "x", owned=False),),
        volumes=(ObservedVolume("data", owned=False),),
    )
    result = plan(STACK, obs)
    assert not any(isinstance(a, CreateNetwork | CreateVolume) for a in result.actions)
    assert any("net: adopted, not owned" in n for n in result.notes)
    assert any("data: adopted, not owned" in n for n in result.notes)


def test_orphans_are_reported_never_removed() -> None:
    """A network or volume gone from the file is reported, not removed."""
    obs = replace(
        _CONVERGED,
        project_networks=frozenset({"net", "old"}),
        project_volumes=frozenset({"data", "olddata"}),
    )
    result = plan(STACK, obs)
    assert not result
    assert "network old: orphaned" in " ".join(result.notes)
    assert "volume olddata: orphaned" in " ".join(result.notes)


def test_service_removed_from_file_is_removed() -> None:
    """Containers of a service gone from the file are removed."""
    extra = ObservedContainer("x1", "p-old-1", "old", 1, "h", "running")
    obs = replace(_CONVERGED, containers=(*_CONVERGED.containers, extra))
    (a,) = plan(STACK, obs).actions
    assert a == RemoveContainer("x1", "p-old-1", "old", "service removed from the file")


def test_held_steps_and_their_dependents_are_left_out() -> None:
    """A held image holds back the containers that need it."""
    result = plan(STACK, Observed(), Holds(held={"image:db": "retry in 2s"}))
    keys = {s.key for s in result.steps}
    assert "image:db" not in keys and "container:p-db-1" not in keys
    assert "container:p-web-1" not in keys  # web depends on db
    assert "image:web" in keys
    assert any("held back (retry in 2s)" in n for n in result.notes)


def test_network_namespace_sharers_follow_their_owner() -> None:
    """When a container is recreated, those in its network namespace are recreated after it."""
    d = state(
        {
            "services": {
                "vpn": {"image": "v:1", "environment": {"V": 1}},
                "app": {"image": "a:1", "network_mode": "service:vpn"},
            }
        }
    )
    live = converged(d)
    assert not plan(d, live)
    changed = state(
        {
            "services": {
                "vpn": {"image": "v:1", "environment": {"V": 2}},
                "app": {"image": "a:1", "network_mode": "service:vpn"},
            }
        }
    )
    steps = {s.key: s for s in plan(changed, live).steps}
    app = steps["container:p-app-1"]
    assert isinstance(app.action, RecreateContainer) and "container:p-vpn-1" in app.after
    removed = replace(live, containers=tuple(c for c in live.containers if c.name != "p-vpn-1"))
    assert isinstance(plan(d, removed).steps[-1].action, RecreateContainer)


def test_stopped_state_stops_and_does_not_create() -> None:
    """state: stopped keeps a service down on purpose."""
    d = state({"services": {"w": {"image": "w:1", "state": "stopped"}}})
    assert not any(isinstance(a, CreateContainer) for a in plan(d, Observed()).actions)
    running = simulate(Observed(), plan(state({"services": {"w": {"image": "w:1"}}}), Observed()))
    assert isinstance(plan(d, running).actions[-1], StopContainer)


# ----------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    services: dict[str, Any] = {}
    chosen = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    for i, name in enumerate(chosen):
        svc: dict[str, Any] = {
            "image": draw(st.sampled_from(["x:1", "y:2"])),
            "replicas": draw(st.integers(0, 3)),
            "environment": {"V": draw(st.integers(0, 2))},
            "networks": draw(st.sampled_from([[], ["n1"], ["n1", "n2"]])),
        }
        if draw(st.booleans()):
            svc["volumes"] = ["v_{replica}:/data"]
        if draw(st.booleans()):
            svc["healthcheck"] = {"test": "true", "interval": "1s"}
        if i and draw(st.booleans()):
            svc["depends_on"] = [chosen[draw(st.integers(0, i - 1))]]
        if i and draw(st.integers(0, 3)) == 0:
            owner = chosen[draw(st.integers(0, i - 1))]
            services[owner]["replicas"] = max(1, services[owner]["replicas"])
            services[owner].pop("state", None)
            svc["network_mode"] = f"service:{owner}"
            svc["networks"] = []
        if draw(st.booleans()):
            svc["state"] = "stopped"
        services[name] = svc
    return state(
        {"networks": {"n1": {}, "n2": {}}, "volumes": {"v_{replica}": {}}, "services": services}
    )


STATES = ["created", "running", "paused", "restarting", "exited", "dead"]


@st.composite
def observed_for(draw: st.DrawFn, d: DesiredState) -> Observed:
    """Live states near `d`: missing, drifted, failed, extra and foreign objects."""
    containers: list[ObservedContainer] = []
    containers_by_name: dict[str, ObservedContainer] = {}
    for svc in d.services:
        for spec in svc.replicas:
            if draw(st.booleans()):
                continue  # missing
            owner = containers_by_name.get((spec.network_mode or "").removeprefix("container:"))
            c = container_from(spec, draw(st.sampled_from([owner.id if owner else "", "gone"])))
            c = replace(
                c,
                state=draw(st.sampled_from(STATES)),
                spec_hash=draw(st.sampled_from([spec.spec_hash, "stale"])),
                health=draw(st.sampled_from([c.health, "unhealthy"])) if c.health else None,
                networks=draw(st.sampled_from([c.networks, frozenset()])),
            )
            containers.append(c)
            containers_by_name[c.name] = c
    for i in range(draw(st.integers(0, 2))):  # leftovers: scaled down or removed services
        svc_name = draw(st.sampled_from(["a", "zz"]))
        containers.append(
            ObservedContainer(
                f"extra{i}",
                f"p-{svc_name}-{9 + i}",
                svc_name,
                9 + i,
                "h",
                draw(st.sampled_from(STATES)),
            )
        )
    nets = [
        ObservedNetwork(n, n, owned=draw(st.booleans()))
        for n in ("n1", "n2", "p_default")
        if draw(st.booleans())
    ]
    vols = [
        ObservedVolume(v.name, owned=draw(st.booleans())) for v in d.volumes if draw(st.booleans())
    ]
    return Observed(
        containers=tuple(containers),
        networks=tuple(nets),
        volumes=tuple(vols),
        project_networks=frozenset(n.name for n in nets if n.owned),
        project_volumes=frozenset(v.name for v in vols if v.owned),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[DesiredState, Observed]:
    d = draw(desired_states())
    return d, draw(observed_for(d))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_then_simulate_converges(scenario: tuple[DesiredState, Observed]) -> None:
    """Applying the plan to the engine model and planning again gives nothing to do."""
    d, obs = scenario
    after = simulate(obs, plan(d, obs))
    second = plan(d, after)
    # Containers Docker is restarting right now are left to Docker: they are the only rest.
    leftover = [a for a in second.actions]
    assert leftover == [], leftover


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_touches_what_is_not_ours(scenario: tuple[DesiredState, Observed]) -> None:
    """No action names a container we did not observe as ours, or recreates an existing object."""
    d, obs = scenario
    p = plan(d, obs)
    ours = {c.id for c in obs.containers}
    ours |= {a.name for a in p.actions if isinstance(a, CreateContainer)}  # started by name
    existing_nets = {n.name for n in obs.networks}
    existing_vols = {v.name for v in obs.volumes}
    for a in p.actions:
        if hasattr(a, "id"):
            assert a.id in ours
        if isinstance(a, RecreateContainer):
            assert a.old_id in ours
        if isinstance(a, CreateNetwork):
            assert a.spec.name not in existing_nets
        if isinstance(a, CreateVolume):
            assert a.spec.name not in existing_vols


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_is_deterministic_and_dependencies_come_first(
    scenario: tuple[DesiredState, Observed],
) -> None:
    """Same input, same plan; every step comes after the steps it waits on."""
    d, obs = scenario
    p = plan(d, obs)
    assert p == plan(d, obs)
    seen: set[str] = set()
    keys = {s.key for s in p.steps}
    assert len(keys) == len(p.steps)  # one step per key
    for step in p.steps:
        assert (step.after & keys) <= seen
        seen.add(step.key)
    assert all(not isinstance(a, EnsureImage) or a.image in ("x:1", "y:2") for a in p.actions)
