"""Image update policies, pure: range selection with suffixes, `v` prefixes and pre-releases
(hypothesis), cooldown, held versions, maintenance windows on an injected clock, the file's
`x-reconciler.update` keys, and the lock file's staleness."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import nodesemver
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config.loader import load
from reconciler.core import image_policy as ip
from reconciler.core.images import pin_tag, repository, tag_of
from reconciler.errors import DesiredStateError
from reconciler.ops.image_lock import ImageLock, LockStale, check_lock, read_lock, write_lock
from reconciler.ops.image_state import ImageRecord, ImageStates
from reconciler.targets.image_updates import PolicyLooker, policy_notes

MADRID = ZoneInfo("Europe/Madrid")
versions_st = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
suffixes = st.sampled_from(["", "-alpine", "-slim", "-alpine3.19"])
pre = st.sampled_from(["", "-rc1", "-beta.2"])


def tag_text(v: tuple[int, int, int], prefix: str = "", pre: str = "", suffix: str = "") -> str:
    return f"{prefix}{v[0]}.{v[1]}.{v[2]}{pre}{suffix}"


@given(
    st.lists(st.tuples(versions_st, st.sampled_from(["", "v"]), pre, suffixes), max_size=30),
    st.sampled_from(["^1.2", "~2.8", ">=2.5 <3", "*", "^0.3", ">=10"]),
    suffixes,
    st.booleans(),
)
def test_the_chosen_tag_is_the_highest_inside_the_range_with_the_files_suffix(
    entries: list[tuple[tuple[int, int, int], str, str, str]],
    rng: str,
    suffix: str,
    prerelease: bool,
) -> None:
    tags = [tag_text(v, p, r, s) for v, p, r, s in entries] + ["latest", "stable", "2.8", "main"]
    policy = ip.UpdatePolicy(semver=rng, prerelease=prerelease)
    chosen = ip.in_range(tags, policy, f"1.0.0{suffix}")
    wanted = nodesemver.make_range(rng, loose=False)
    expected = set()
    for v, p, r, s in entries:
        if s != suffix or (r and not prerelease):
            continue
        sv = nodesemver.make_semver(tag_text(v, "", r), loose=False)
        if wanted.test(sv, include_prerelease=prerelease):
            expected.add(tag_text(v, p, r, s))
    assert set(chosen) == expected
    if chosen:  # newest first: nothing outside is newer than the first inside
        top = ip.version_of(chosen[0], suffix, prerelease)
        assert top is not None
        assert all(
            top.compare(ip.version_of(t, suffix, prerelease)) >= 0  # type: ignore[arg-type]
            for t in chosen
        )
        assert not chosen[0].startswith("v") or f"{chosen[0][1:]}" not in chosen


@given(versions_st, suffixes)
def test_suffix_and_v_prefix_round_trip(v: tuple[int, int, int], suffix: str) -> None:
    tag = tag_text(v, "v", "", suffix)
    assert ip.suffix_of(tag) == suffix
    assert ip.version_of(tag, suffix, False) is not None
    other = "-other" if suffix != "-other" else "-x"
    assert ip.version_of(tag, other, False) is None  # another variant is never a candidate


def test_examples_from_the_issue() -> None:
    tags = ["11.5.0", "11.6.0", "11.6.3", "v11.7.1", "11.7.1", "12.0.0", "11.8.0-beta1", "11.6"]
    assert ip.in_range(tags, ip.UpdatePolicy(semver="^11.6"), "11.6.0")[0] == "11.7.1"
    with_pre = ip.UpdatePolicy(semver="^11.6", prerelease=True)
    assert ip.in_range(tags, with_pre, "11.6.0")[0] == "11.8.0-beta1"
    alpine = ["2.8.14-alpine", "2.8.20-alpine", "2.9.0-alpine", "2.8.21", "2.8.22-slim"]
    assert ip.in_range(alpine, ip.UpdatePolicy(semver="~2.8"), "2.8.14-alpine") == [
        "2.8.20-alpine",
        "2.8.14-alpine",
    ]
    assert (
        ip.in_range(["2.53.1", "2.60.0", "3.0.0"], ip.UpdatePolicy(semver=">=2.53 <3"), "2.53.0")[0]
        == "2.60.0"
    )
    assert ip.newest_version(tags, ip.UpdatePolicy(semver="^11.6"), "11.6.0") == "12.0.0"
    with pytest.raises(ValueError, match="not a valid range"):
        ip.check_range("^^11")


def pub(tag: str, created: float | None = 0.0) -> ip.Published:
    return ip.Published(tag, f"sha256:{tag.replace('.', '')}", created)


def test_decide_cooldown_held_range_and_window_on_an_injected_clock() -> None:
    day = 86400.0
    now = datetime(2026, 12, 12, 3, 0, tzinfo=MADRID).timestamp()  # Saturday 03:00, open
    running = pub("1.0.0")
    young, older = pub("1.3.0", now - day), pub("1.2.0", now - 5 * day)
    policy = ip.UpdatePolicy(semver="^1.0", cooldown_s=3 * day)
    d = ip.decide(running, [young, older, running], policy, [], now, out_of_range="2.0.0")
    assert d.take == older
    assert [(r, why) for r, why, _ in d.skipped] == [("2.0.0", "range"), (young.ref, "cooldown")]
    assert d.newest_published == "2.0.0" and d.newest_allowed == older.ref
    # held: passed over for the next one down
    d = ip.decide(running, [older, running], policy, [older.ref], now)
    assert d.take is None and d.skipped[0][1] == "held"
    # no creation time with a cooldown: not taken
    d = ip.decide(running, [pub("1.4.0", None)], policy, [], now)
    assert d.take is None and d.skipped[0][1] == "cooldown"
    # the window: open on Saturday 02:00-06:00 Madrid, closed on Friday
    windowed = ip.UpdatePolicy(
        semver="^1.0", window=ip.Window("0 2 * * 6", 4 * 3600, "Europe/Madrid")
    )
    assert ip.decide(running, [older], windowed, [], now).take == older
    friday = datetime(2026, 12, 11, 12, 0, tzinfo=MADRID).timestamp()
    closed = ip.decide(running, [older], windowed, [], friday)
    assert closed.take is None and closed.skipped[-1][1] == "window"
    assert closed.newest_allowed == older.ref
    opens = datetime(2026, 12, 12, 2, 0, tzinfo=MADRID).timestamp()
    assert ip.recheck_after(closed, windowed, friday, 7 * day) == opens - friday
    assert ip.decide(running, [older], windowed, [], opens).take == older  # then open


@given(st.integers(0, 14 * 86400 * 1000).map(lambda ms: ms / 1000))
def test_a_window_is_open_exactly_from_each_opening_for_its_duration(offset: float) -> None:
    window = ip.Window("0 2 * * 6", 4 * 3600, "Europe/Madrid")
    start = datetime(2026, 12, 5, 2, 0, tzinfo=MADRID).timestamp()  # a Saturday 02:00
    now = start + offset
    week = 7 * 86400
    assert ip.window_open(window, now) == ((offset % week) < 4 * 3600)
    nxt = ip.next_opening(window, now)
    assert nxt >= now and ip.window_open(window, nxt)


def test_a_window_follows_daylight_saving_time() -> None:
    window = ip.Window("0 2 * * *", 3600, "Europe/Madrid")
    summer = datetime(2026, 7, 1, 2, 30, tzinfo=MADRID).timestamp()
    winter = datetime(2026, 12, 1, 2, 30, tzinfo=MADRID).timestamp()
    assert ip.window_open(window, summer) and ip.window_open(window, winter)
    assert not ip.window_open(window, summer + 3600)


def test_pin_tag_keeps_the_repository_and_port() -> None:
    assert repository("127.0.0.1:5000/a/app:1.2.3@sha256:x") == "127.0.0.1:5000/a/app"
    assert tag_of("127.0.0.1:5000/a/app") == "latest"
    assert tag_of("app:2.8.14-alpine") == "2.8.14-alpine"


def write(tmp_path: Path, update: str, image: str = "reg:5000/app:11.6.0") -> Path:
    path = tmp_path / "desired_state.yaml"
    path.write_text(
        f"project: p\nservices:\n  web:\n    image: {image}\n"
        f"    x-reconciler:\n      other: kept for others\n      update: {update}\n"
    )
    return path


def test_the_files_update_keys_and_their_errors(tmp_path: Path) -> None:
    desired = load(
        write(
            tmp_path,
            '{semver: "^11.6", cooldown: 3d, window: {cron: "0 2 * * 6", duration: 4h, '
            "timezone: Europe/Madrid}}",
        )
    )
    policy = desired.services[0].update_policy
    assert policy == ip.UpdatePolicy(
        semver="^11.6",
        cooldown_s=3 * 86400,
        window=ip.Window("0 2 * * 6", 4 * 3600, "Europe/Madrid"),
    )
    pinned = pin_tag(desired.services[0], "11.7.1", "sha256:ab")
    assert pinned.image == "reg:5000/app:11.7.1@sha256:ab"
    assert pinned.revision != desired.services[0].revision
    bad = [
        ('{semver: "^^1"}', "not a valid range"),
        ('{semver: "^11", window: {cron: "0 2 * *", duration: 4h}}', "cron"),
        ('{window: {cron: "0 2 * * 6", duration: 4h, timezone: Mars/Base}}', "time zone"),
        ("{cooldown: 3x}", "cooldown"),
        ("{semvr: x}", "semvr"),
    ]
    for text, message in bad:
        with pytest.raises(DesiredStateError, match=message) as err:
            load(write(tmp_path, text))
        assert "desired_state.yaml:7" in str(err.value)  # the line of update:
    with pytest.raises(DesiredStateError, match="tag to be a version"):
        load(write(tmp_path, '{semver: "^1"}', image="app:latest"))


def test_each_bad_update_key_is_reported_at_its_own_line(tmp_path: Path) -> None:
    """In block style, `semver`, `cooldown`, `window.cron`, `window.timezone` each point at
    their own line, not at `update:`'s."""
    head = "project: p\nservices:\n  web:\n    image: app:1.0.0\n    x-reconciler:\n"
    good = {"semver": '"^1"', "cooldown": "1h", "cron": '"0 2 * * 6"', "timezone": "UTC"}
    for key, bad in (("semver", '"banana"'), ("cooldown", "3x"), ("cron", '"0 2 * *"'),
                     ("timezone", "Mars/Base")):  # fmt: skip
        v = {**good, key: bad}
        body = (
            f"      update:\n        semver: {v['semver']}\n        cooldown: {v['cooldown']}\n"
            f"        window:\n          cron: {v['cron']}\n          duration: 4h\n"
            f"          timezone: {v['timezone']}\n"
        )
        text = head + body
        line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(key))
        with pytest.raises(DesiredStateError) as err:
            load(written(tmp_path, text))
        assert f"desired_state.yaml:{line}:" in str(err.value), (key, str(err.value))


def test_the_lock_file_says_when_it_was_written_in_iso_too(tmp_path: Path) -> None:
    path = tmp_path / "p.images.lock.json"
    write_lock(path, ImageLock("p", {"web": "app:1"}, {"web": "app:1@sha256:a"}, 1796673942.7))
    data = json.loads(path.read_text())
    assert data["written_at"] == 1796673942.7 and data["written"] == "2026-12-07T20:05:42+00:00"
    assert read_lock(path).written_at == 1796673942.7


def test_status_without_a_daemon_shows_the_real_check_interval(tmp_path: Path) -> None:
    """No pull_policy: a range is looked up hourly (README), not `every 0s`."""
    from reconciler.ops.status import tag_line

    svc = load(written(tmp_path, 'project: p\nservices:\n  app:\n    image: app:1.0.0\n'
                       '    x-reconciler: {update: {semver: "^1"}}\n')).service("app")  # fmt: skip
    line = tag_line(svc, (), {})
    assert "every 3600s" in line and "every 0s" not in line


def test_the_lock_file_is_refused_when_stale(tmp_path: Path) -> None:
    """Stale: another project, a service not locked, or one whose image request changed (the
    image, its range); any other edit of the file leaves the lock good, as a package lock."""
    path = tmp_path / "p.images.lock.json"
    with pytest.raises(LockStale, match="no lock file"):
        read_lock(path)
    asked = {"web": "app:1 semver ^1"}
    write_lock(path, ImageLock("p", asked, {"web": "app:1.4@sha256:a"}))
    lock = read_lock(path)
    assert check_lock(path, lock, "p", asked) == {"web": "app:1.4@sha256:a"}
    with pytest.raises(LockStale, match=r"web asks for app:1 semver \^2, the lock .* app:1 semver"):
        check_lock(path, lock, "p", {"web": "app:1 semver ^2"})
    with pytest.raises(LockStale, match="no image locked for db"):
        check_lock(path, lock, "p", {**asked, "db": "pg:16"})
    with pytest.raises(LockStale, match="for project p, the file is project q"):
        check_lock(path, lock, "q", asked)
    old = json.loads(path.read_text())
    path.write_text(json.dumps({**old, "version": 1}))
    with pytest.raises(LockStale, match="of version 1"):
        read_lock(path)
    path.write_text("{")
    with pytest.raises(LockStale, match="not a readable lock file"):
        read_lock(path)
    path.write_text("[]")
    with pytest.raises(LockStale, match="not a readable lock file"):
        read_lock(path)


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "desired_state.yaml"
    path.write_text(text)
    return path


def test_image_requests_change_with_the_image_and_range_only(tmp_path: Path) -> None:
    """A comment, a replica count, an environment value, a cooldown: the same requests."""
    base = """project: p
services:
  web:
    image: app:1.2.0
    replicas: 1
    x-reconciler: {update: {semver: "^1"}}
  built:
    build: .
    image: mine:1
"""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    first = load(written(tmp_path, base)).image_requests
    assert first == {"web": "app:1.2.0 semver ^1"}  # a built image comes from no registry
    same = base.replace("replicas: 1", "replicas: 3  # scaled\n    environment: {A: '2'}")
    same = same.replace('"^1"}', '"^1", cooldown: 1h}')
    assert load(written(tmp_path, same)).image_requests == first
    moved = base.replace('"^1"', '"~1.2", prerelease: true')
    assert load(written(tmp_path, moved)).image_requests == {
        "web": "app:1.2.0 semver ~1.2 prerelease"
    }


class Offered:
    """A registry's tags for the looker (a stand-in for the registry reader, not for Docker)."""

    def __init__(self, digests: dict[str, str]) -> None:
        self.digests = digests

    def registry_tags(self, image: str) -> list[str]:
        return list(self.digests)

    def published(self, image: str, tag: str) -> ip.Published:
        return ip.Published(tag, self.digests[tag], created=0.0)


def test_status_says_what_runs_once_a_taken_version_rolled_out(tmp_path: Path) -> None:
    """Not the version before it until the next look (an hour by default)."""
    svc = load(written(tmp_path, 'project: p\nservices:\n  web:\n    image: app:1.0.0\n'
                       '    x-reconciler: {update: {semver: "^1"}}\n')).service("web")  # fmt: skip
    looker = PolicyLooker(
        Offered({"1.0.0": "sha256:a", "1.1.0": "sha256:b"}),
        record=lambda e: None, metrics=None, clock=lambda: 100.0,
    )  # fmt: skip
    look = looker.look(svc, ImageRecord(base="app:1.0.0"), "sha256:a")
    assert look.decision.take is not None and look.decision.take.ref == "1.1.0@sha256:b"
    assert looker.status("web")["running"] == "1.0.0@sha256:a"  # type: ignore[index]
    looker.ended("web", svc.image, "1.1.0@sha256:b", "rolled_back")
    assert looker.status("web")["running"] == "1.0.0@sha256:a"  # type: ignore[index]
    looker.ended("web", svc.image, "1.1.0@sha256:b", "completed")
    assert looker.status("web")["running"] == "1.1.0@sha256:b"  # type: ignore[index]


def test_plan_notes_say_which_versions_a_policy_holds_and_what_rolls_out(tmp_path: Path) -> None:
    desired = load(written(tmp_path, 'project: p\nservices:\n  web:\n    image: app:1.0.0\n'
                                     '    x-reconciler: {update: {semver: "^1"}}\n'
                                     '  db:\n    image: pg:16\n'))  # fmt: skip
    states = ImageStates("p", tmp_path)
    assert policy_notes(desired.services, states) == []
    states.put("web", ImageRecord(base="app:1.0.0", tag="1.1.0", digest="sha256:" + "b" * 64,
                                  held=["1.2.0@sha256:" + "c" * 64]))  # fmt: skip
    assert policy_notes(desired.services, states) == [
        "service web: app 1.2.0@sha256:cccccccccccc held (its rollout failed; a newer version "
        "in ^1 ends the hold)"
    ]
