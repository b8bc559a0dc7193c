"""The Docker adapter on the real engine: stops honour the service's grace, sub-second too;
a name held by another reconciler-managed container is not called foreign; what plan reads
is three requests."""

from __future__ import annotations

from collections.abc import Iterable

import docker
import pytest

from reconciler.core.actions import CreateContainer, StopContainer
from reconciler.core.desired import ContainerSpec
from reconciler.core.takeover import ForeignContainer
from reconciler.engine.client import connect
from reconciler.engine.host.engine import Engine
from reconciler.errors import ActionFailed, NameConflict
from tests.conftest import OWNER_LABEL, TEST_LABEL

pytestmark = pytest.mark.docker

# Exits 0 a moment after SIGTERM: a grace long enough lets it; a shorter one kills it (137).
SLOW_TO_STOP = ["sh", "-c", "trap 'sleep 0.05; exit 0' TERM; while true; do sleep 0.01; done"]


def _spec(project: str, image: str, name: str, grace: float | None) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        project=project,
        service="s",
        replica=1,
        image=image,
        command=tuple(SLOW_TO_STOP),
        stop_grace_s=grace,
        labels=((TEST_LABEL, "1"), (OWNER_LABEL, project)),
    )


@pytest.mark.parametrize(("grace", "exit_code"), [(0.45, 0), (0.0, 137)])
def test_stop_waits_the_services_grace_even_below_a_second(
    api: docker.APIClient, busybox_image: str, project: str, grace: float, exit_code: int
) -> None:
    """A 450 ms grace lets the process finish its 50 ms shutdown (Docker's whole seconds, or
    the old rounding to 0, would kill it); a grace of 0 kills it."""
    engine = Engine(api)
    spec = _spec(project, busybox_image, f"{project}-s-1", grace)
    engine.execute(CreateContainer(spec))
    api.start(spec.name)
    engine.execute(StopContainer(spec.name, spec.name, "s", "test", grace_s=grace))
    state = api.inspect_container(spec.name)["State"]
    assert not state["Running"] and state["ExitCode"] == exit_code


def test_a_name_held_by_one_of_ours_is_not_called_foreign(
    api: docker.APIClient, busybox_image: str, project: str
) -> None:
    """Two creates of one replica (a second reconciler): the second says so and is retried;
    a name held by a container without our labels is a foreign clash, left alone."""
    engine = Engine(api)
    spec = _spec(project, busybox_image, f"{project}-s-1", 1.0)
    engine.execute(CreateContainer(spec))
    with pytest.raises(ActionFailed) as ours:
        engine.execute(CreateContainer(spec))
    assert not isinstance(ours.value, NameConflict) and ours.value.transient
    assert "second reconciler" in str(ours.value)
    api.create_container(
        busybox_image,
        ["true"],
        name=f"{project}-s-2",
        labels={TEST_LABEL: "1", OWNER_LABEL: project},
    )
    other = _spec(project, busybox_image, f"{project}-s-2", 1.0)
    with pytest.raises(NameConflict, match="does not manage"):
        engine.execute(CreateContainer(other))


def test_plan_reads_in_three_requests_with_the_engines_own_version(
    api: docker.APIClient, busybox_image: str, project: str
) -> None:
    """What `plan` reads (its containers, every other one, an outside namespace by name) is
    three list calls on a lazy client: no `/version` first, yet the version negotiated."""
    engine = Engine(api)
    engine.execute(CreateContainer(_spec(project, busybox_image, f"{project}-s-1", 1.0)))
    outside = api.create_container(
        busybox_image, ["true"], name=f"{project}-x", labels={TEST_LABEL: "1", OWNER_LABEL: project}
    )["Id"]
    lazy = connect(lazy=True)
    paths: list[str] = []
    lazy.hooks["response"].append(lambda r, *a, **k: paths.append(r.request.path_url))
    view = Engine(lazy).observe_all(project, [f"{project}-x", f"{project}-absent"])
    assert len(paths) == 3, paths
    assert not any(p.startswith("/version") for p in paths)
    assert lazy.api_version == api.version()["ApiVersion"]
    assert view.observed.containers == engine.observe(project).containers
    # Other tests create, start and remove containers meanwhile (pytest-xdist): compare what
    # cannot change (id, name, owners) of the ones both reads saw; ours is in neither.
    again = engine.others(project)
    both = {c.id for c in view.others} & {c.id for c in again}

    def fixed(cs: Iterable[ForeignContainer]) -> list[tuple[str, str, str, str]]:
        return [(c.id, c.name, c.compose_project, c.reconciler_project) for c in cs if c.id in both]

    assert fixed(view.others) == fixed(again)
    assert not any(c.reconciler_project == project for c in view.others)
    assert view.outside == engine.find_containers([f"{project}-x", f"{project}-absent"])
    assert view.outside == {f"{project}-x": outside}
