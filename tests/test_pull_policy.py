"""compose's pull_policy, and following a tag as pure decisions: the policies and their
schedules, errors with their line, pinning a digest into the spec hash and the revision, the
hold of a failed digest, and the back-off of a registry that does not answer."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config import loader
from reconciler.config.schema import parse_pull_policy
from reconciler.core import images as im
from reconciler.core import rollout as ro
from reconciler.errors import DesiredStateError

HEAD = """\
project: p
services:
  web:
    image: registry.example:5000/app:stable
"""


def parse(text: str):
    return loader.parse(
        textwrap.dedent(text), source="state.yaml", base_dir=Path("/srv/app"), environ={}
    )


def web(extra: str = ""):
    return parse(HEAD + extra).service("web")


def problems(text: str) -> str:
    with pytest.raises(DesiredStateError) as info:
        parse(text)
    return str(info.value)


@pytest.mark.parametrize(
    ("policy", "pull", "every"),
    [
        ("always", "always", None),
        ("missing", "missing", None),
        ("if_not_present", "missing", None),
        ("never", "never", None),
        ("build", "always", None),
        ("daily", "missing", 86400.0),
        ("weekly", "missing", 604800.0),
        ("every_5m", "missing", 300.0),
        ("every_12h", "missing", 43200.0),
        ("every_1h30m", "missing", 5400.0),
        ("every_2s", "missing", 2.0),
    ],
)
def test_compose_pull_policies(policy: str, pull: str, every: float | None) -> None:
    """Each of compose's values: what a create does, and how often the tag is asked."""
    assert parse_pull_policy(policy) == (pull, every)


@given(st.integers(1, 8760), st.sampled_from(["s", "m", "h"]))  # at most 365 days
def test_every_duration_is_its_seconds(n: int, unit: str) -> None:
    """every_<n><unit> asks the registry every n units."""
    seconds = n * {"s": 1, "m": 60, "h": 3600}[unit]
    assert parse_pull_policy(f"every_{n}{unit}") == ("missing", float(seconds))


@pytest.mark.parametrize("bad", ["sometimes", "every_", "every_0s", "every_500ms", "every_5x", ""])
def test_a_bad_pull_policy_is_refused_with_its_line(bad: str) -> None:
    """An unknown value, or a period under a second, is an error at its line and column."""
    message = problems(HEAD + f"    pull_policy: '{bad}'\n")
    assert "state.yaml:5:18: services.web.pull_policy:" in message, message


def test_pull_still_works_and_both_given_is_an_error() -> None:
    """`pull` (the older name) keeps working; giving it and pull_policy is an error."""
    assert web("    pull: always\n").pull == "always"
    assert web("    pull_policy: never\n").pull == "never"
    message = problems(HEAD + "    pull: always\n    pull_policy: every_5m\n")
    assert "state.yaml:6:18: services.web.pull_policy: give pull_policy" in message, message


def test_build_policy_needs_a_build_and_a_tag_to_follow_needs_a_registry() -> None:
    """pull_policy: build without build:, or a periodic policy on a built image: errors."""
    assert "build needs a build: section" in problems(HEAD + "    pull_policy: build\n")
    built = "project: p\nservices:\n  web:\n    build: .\n    pull_policy: daily\n"
    assert "a service with build: has none to follow" in problems(built)
    rebuilt = parse("project: p\nservices:\n  web:\n    build: .\n    pull_policy: build\n")
    assert rebuilt.service("web").pull == "always"  # rebuilt on every create, as compose


def test_the_policy_is_no_part_of_the_revision() -> None:
    """Switching policies changes no container (no rollout by itself)."""
    plain, followed = web(), web("    pull_policy: every_5m\n")
    assert followed.pull_every_s == 300.0 and plain.pull_every_s is None
    assert plain.revision == followed.revision
    assert plain.replicas == followed.replicas


D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_pinning_a_digest_changes_the_spec_hash_and_the_revision() -> None:
    """A followed service pinned to a digest runs repo:tag@digest; another digest is another
    revision, the same digest the same one (what a held failure is keyed on)."""
    svc = web("    pull_policy: every_5m\n    replicas: 2\n")
    one, two = im.pin(svc, D1), im.pin(svc, D2)
    assert one.image == f"registry.example:5000/app:stable@{D1}"
    assert all(c.image == one.image for c in one.replicas)
    assert one.revision != svc.revision and one.revision != two.revision
    assert im.pin(svc, D1) == one and im.pin(svc, D1).revision == one.revision
    hashes = {c.spec_hash for c in one.replicas} & {c.spec_hash for c in two.replicas}
    assert not hashes and one.replicas[0].spec_hash != svc.replicas[0].spec_hash
    assert im.pin(svc, "") == svc  # nothing known locally: the tag as written
    assert im.pin(web(), D1) == web()  # a service that follows nothing is never pinned
    assert im.digest_of(one.image) == D1 and im.unpinned(one.image) == svc.image


def test_pin_all_asks_the_lookup_for_followed_services_only() -> None:
    doc = parse(HEAD + "    pull_policy: daily\n  other:\n    image: busybox:1\n")
    asked: list[str] = []

    def lookup(image: str) -> str | None:
        asked.append(image)
        return D1

    pinned = im.pin_all(doc, lookup)
    assert asked == ["registry.example:5000/app:stable"]
    assert pinned.service("web").image.endswith(D1)
    assert pinned.service("other") == doc.service("other")


def test_a_failed_digest_is_held_until_the_tag_moves_or_the_file_changes() -> None:
    """Rolled back from digest D2: held while the tag stays at D2; a new digest (or an edit
    of the service) is a new revision and is tried."""
    svc = web("    pull_policy: every_5m\n")
    good, bad = im.pin(svc, D1), im.pin(svc, D2)
    record = ro.RolloutRecord(
        stable_revision=good.revision,
        stable=good.replicas,
        failed_revision=bad.revision,
        failed_reason="new replica unhealthy",
    )
    target, mode = ro.target(bad, ro.refresh(record, bad))
    assert mode == "rolled_back" and target.replicas == good.replicas
    assert target.image == good.image  # the old digest is what a create (and a pull) uses
    moved = im.pin(svc, "sha256:" + "3" * 64)
    assert ro.target(moved, ro.refresh(record, moved)) == (moved, "normal")
    edited = im.pin(web("    pull_policy: every_5m\n    user: '1000'\n"), D2)
    assert ro.target(edited, ro.refresh(record, edited))[1] == "normal"


def test_a_registry_that_fails_is_asked_again_with_back_off_never_later_than_the_period() -> None:
    """1 s, 2 s, 4 s ... capped by the period; an answer resets it and waits a period."""
    check, delays = im.TagCheck(), []
    for _ in range(8):
        check = im.failed(check, 100.0, 10.0, "connection refused")
        delays.append(check.next_at - 100.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert check.error == "connection refused" and check.failures == 8
    ok = im.checked(check, 200.0, 10.0, D1)
    assert (ok.next_at, ok.checked_at, ok.newest, ok.failures, ok.error) == (
        210.0,
        200.0,
        D1,
        0,
        "",
    )
    slow = im.TagCheck()
    for _ in range(20):
        slow = im.failed(slow, 0.0, 86400.0, "down")
    assert slow.next_at == im.CHECK_BACKOFF_MAX_S  # a daily tag is not asked once a day when down


def test_a_pinned_spec_survives_the_state_file_round_trip() -> None:
    """Rollout records keep the pinned specs a rollback returns to."""
    from pydantic import TypeAdapter

    good = im.pin(web("    pull_policy: every_5m\n"), D1)
    record = ro.RolloutRecord(stable_revision=good.revision, stable=good.replicas)
    adapter = TypeAdapter(ro.RolloutRecord)
    back = adapter.validate_json(adapter.dump_json(record))
    assert back == record and back.stable[0].spec_hash == good.replicas[0].spec_hash
    assert replace(back.stable[0], spec_hash="").spec_hash == good.replicas[0].spec_hash
