"""Notifications without Docker: the gate (de-duplication, repeat interval, rate limit) with an
injected clock, the conditions each part of the daemon emits, the `notify:` block and its
secrets, and the sink against a real local HTTP receiver through Apprise's `json://`: one that
answers, one that answers 500 and one that never answers (the caller is never held up)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import notify_config, secrets
from reconciler.config.loader import load_parts
from reconciler.core import rollout as ro
from reconciler.core.events import Event
from reconciler.core.policy import Denial
from reconciler.errors import DesiredStateError
from reconciler.ops.metrics import Metrics
from reconciler.ops.notifications import Gate, Notice, Notifications, redact_url, render
from reconciler.runtime.conditions import DaemonConditions
from reconciler.targets.host.conditions import HostConditions, at_cap
from reconciler.targets.swarm.conditions import SwarmConditions, condition


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**kw: Any) -> notify_config.NotifyConfig:
    return notify_config.NotifyConfig(urls=("json://127.0.0.1:1/x",), **kw)


def firing(kind: Any = "rolled_back", service: str = "web") -> Event:
    return Event(kind, service=service, message="m", result="firing")


def resolved(kind: Any = "rolled_back", service: str = "web") -> Event:
    return Event(kind, service=service, message="m", result="resolved")


# ---------------------------------------------------------------------------- the gate


def test_a_condition_is_told_once_then_every_repeat_interval_then_resolved_once() -> None:
    clock = Clock()
    gate = Gate(config(repeat_interval=3600), clock)
    assert gate.decide(firing()) == "firing"
    clock.now += 10
    assert gate.decide(firing()) == "deduplicated"
    assert gate.decide(firing(service="api")) == "firing"  # per (service, kind)
    assert gate.decide(firing("paused")) == "firing"
    clock.now += 3600
    assert gate.decide(firing()) == "repeat"
    assert gate.decide(resolved()) == "resolved"
    assert gate.decide(resolved()) is None  # nothing firing: nothing to clear
    assert gate.decide(firing()) == "firing"  # a new episode is told at once


def test_kinds_are_chosen_and_completed_rollouts_are_opt_in() -> None:
    gate = Gate(config(), Clock())
    done = Event("rollout_completed", service="web", message="rev 1")
    assert gate.decide(done) is None
    assert gate.decide(Event("heal", service="web")) is None  # actions are the history's
    opted = Gate(config(kinds=frozenset({"rollout_completed"})), Clock())
    assert opted.decide(done) == "news"
    assert opted.decide(done) == "deduplicated"
    assert opted.decide(Event("rollout_completed", service="web", message="rev 2")) == "news"
    assert opted.decide(firing()) is None


def test_resolved_messages_can_be_turned_off() -> None:
    gate = Gate(config(send_resolved=False), Clock())
    assert gate.decide(firing()) == "firing"
    assert gate.decide(resolved()) is None
    assert gate.decide(firing()) == "firing"  # cleared all the same


def test_the_rate_limit_drops_beyond_its_budget_and_refills() -> None:
    clock = Clock()
    gate = Gate(config(rate_limit=3), clock)
    told = [gate.decide(firing(service=f"s{i}")) for i in range(5)]
    assert told == ["firing"] * 3 + ["rate_limited"] * 2
    clock.now += 20  # a third of a minute: one more token
    assert gate.decide(firing(service="s9")) == "firing"
    assert gate.decide(firing(service="s10")) == "rate_limited"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200))
def test_a_flapping_repeat_never_floods(gaps: list[float]) -> None:
    """However often one condition is reported firing, it is told at most once per repeat
    interval (plus the first time)."""
    clock = Clock()
    gate = Gate(config(repeat_interval=60, rate_limit=1000), clock)
    start, told = clock.now, 0
    for gap in gaps:
        clock.now += gap
        told += gate.decide(firing()) in ("firing", "repeat")
    assert told <= 1 + (clock.now - start) // 60


def test_render_redacts_secrets_and_says_what_and_where() -> None:
    secrets.mark(["hunter2-notify"])
    event = Event(
        "rolled_back",
        service="web",
        message="rollout failed: hunter2-notify",
        cause="unhealthy",
        revision="abcdef0123456789",
        result="firing",
    )
    notice = render(event, "firing", "shop")
    assert notice.title == "[shop] FIRING rolled back: web"
    assert "hunter2" not in notice.body and "cause: unhealthy" in notice.body
    assert "revision: abcdef012345" in notice.body
    assert render(event, "resolved", "shop").title.startswith("[shop] RESOLVED")
    assert redact_url("slack://T000/B000/XXXX") == "slack://..."


# ---------------------------------------------------------------------------- conditions


def collect() -> tuple[list[Event], Any]:
    seen: list[Event] = []
    return seen, seen.append


def test_engine_unreachable_fires_after_the_set_time_and_resolves_when_back() -> None:
    seen, record = collect()
    clock = Clock()
    cond = DaemonConditions(record, engine_after=60, clock=clock)
    cond.engine_down("connection refused")
    clock.now += 30
    cond.tick()
    cond.engine_ok()  # a blip: never told
    assert seen == []
    cond.engine_down("connection refused")
    clock.now += 61
    cond.tick()
    cond.tick()
    assert [(e.kind, e.result) for e in seen] == [("engine_unreachable", "firing")]
    assert seen[0].cause == "connection refused"
    cond.engine_ok()
    cond.engine_ok()
    assert [e.result for e in seen] == ["firing", "resolved"]


def test_denials_fire_per_service_and_resolve_when_allowed_or_gone() -> None:
    seen, record = collect()
    cond = DaemonConditions(record)
    priv = Denial("exporter", "privileged", "privileged", 3, "privileged: true")
    host = Denial("exporter", "host_path", "volumes", 4, "/")
    cond.denials([priv, host], ["exporter", "web"])
    cond.denials([priv, host], ["exporter", "web"])
    assert [(e.service, e.result, e.cause) for e in seen] == [
        ("exporter", "firing", "rule host_path, privileged")
    ]
    cond.denials([], ["exporter", "web"])
    assert (seen[-1].result, seen[-1].message) == ("resolved", "service exporter is allowed now")


def test_a_rejected_reload_fires_and_the_next_good_one_resolves() -> None:
    seen, record = collect()
    cond = DaemonConditions(record)
    reread: list[int] = []
    cond.after_reload = lambda: reread.append(1)
    cond.reload_accepted("d0")
    assert seen == [] and reread == [1]
    cond.reload_rejected("file.yaml:3: replicas: must be a number")
    cond.reload_accepted("d1")
    assert [(e.kind, e.result) for e in seen] == [
        ("reload_rejected", "firing"),
        ("reload_rejected", "resolved"),
    ]


def test_host_rollback_fires_and_is_resolved_by_the_next_completed_rollout() -> None:
    from reconciler.core.desired import ServiceSpec

    seen, record = collect()
    cond = HostConditions(record)
    cond.rollout_event("web", ro.RolloutEvent("web", "rolled_back", "r2", "unhealthy"))
    svc = ServiceSpec(name="web", image="busybox", replicas=(), revision="r2")
    cond.service(svc, ro.RolloutRecord(failed_revision="r2"), {})  # still held: still firing
    assert [(e.kind, e.result) for e in seen] == [("rolled_back", "firing")]
    cond.rollout_event("web", ro.RolloutEvent("web", "completed", "r3"))
    assert [(e.kind, e.result) for e in seen][1:] == [
        ("rolled_back", "resolved"),
        ("rollout_completed", "success"),
    ]
    paused = ro.RolloutEvent("web", "paused", "r4", "exited 1")
    cond.rollout_event("web", paused, pause_chosen=True)  # failure_action: pause
    svc5_on_r5 = ServiceSpec(name="web", image="busybox", replicas=(), revision="r5")
    cond.service(svc5_on_r5, ro.RolloutRecord(), {}, ())  # moved on, and r5 runs
    assert [(e.kind, e.result) for e in seen][3:] == [("paused", "firing"), ("paused", "resolved")]
    # A rollback that fails in turn (or nothing to roll back to): the rollout failed, held.
    cond.rollout_event("web", ro.RolloutEvent("web", "rolled_back", "r5", "unhealthy"))
    cond.rollout_event("web", ro.RolloutEvent("web", "paused", "r5", "rollback failed: x"))
    assert [(e.kind, e.result) for e in seen][5:] == [
        ("rolled_back", "firing"),
        ("rolled_back", "resolved"),
        ("rollout_failed", "firing"),
    ]


def test_the_crash_loop_condition_is_the_back_off_cap() -> None:
    from reconciler.core.desired import HealPolicy

    heal = HealPolicy(backoff_initial_s=1.0, backoff_max_s=8.0)
    assert [at_cap(heal, n) for n in range(1, 7)] == [False, False, False, False, True, True]
    seen, record = collect()
    cond = HostConditions(record)
    cond.crash_loops("web", frozenset({"p-web-1"}), 8.0)
    cond.crash_loops("web", frozenset({"p-web-1", "p-web-2"}), 8.0)
    cond.crash_loops("web", frozenset(), 8.0)
    assert [(e.kind, e.result) for e in seen] == [
        ("crash_loop", "firing"),
        ("crash_loop", "resolved"),
    ]


def test_swarm_update_states_map_to_conditions() -> None:
    assert condition("rollback_started") == "rolled_back"
    assert condition("rollback_completed") == "rolled_back"
    assert condition("paused") == "paused"
    assert condition("rollback_paused") == "rollout_failed"
    assert condition("completed") is None and condition("updating") is None
    seen, record = collect()
    cond = SwarmConditions(record)
    svc = _swarm_service()
    for state in ("updating", "rollback_started", "rollback_completed", "updating", "completed"):
        cond.observed([svc], {svc.full_name: _observed(svc, state)})
    assert [(e.kind, e.result) for e in seen] == [
        ("rolled_back", "firing"),
        ("rolled_back", "resolved"),
        ("rollout_completed", "success"),
    ]


def _swarm_service() -> Any:
    from reconciler.core.swarm_model import SwarmService

    return SwarmService(name="web", full_name="p_web", spec_json="{}", spec_hash="h1")


def _observed(svc: Any, state: str) -> Any:
    from reconciler.core.swarm_model import ObservedService

    return ObservedService(
        id="x", name=svc.full_name, version=1, labels=(), spec_json="{}", update_state=state
    )


# ---------------------------------------------------------------------------- configuration


def _file(tmp_path: Path, notify: Any, project: str = "nt") -> Path:
    doc = {
        "version": 1,
        "project": project,
        "services": {"web": {"image": "busybox"}},
        "notify": notify,
    }
    path = tmp_path / "desired_state.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _read(path: Path) -> notify_config.NotifyConfig | None:
    parsed = load_parts(path)
    return notify_config.from_definition(parsed.definition.notify, str(path), parsed.base_dir)


def test_the_notify_block_takes_urls_from_the_environment_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NT_HOOK_URL", "json://127.0.0.1:9/secret-path-env")
    (tmp_path / "ntfy_url").write_text("# comment\nntfy://secret-topic-file\n")
    path = _file(
        tmp_path,
        {
            "urls": ["${NT_HOOK_URL}", {"url_file": "ntfy_url"}],
            "kinds": ["rolled_back", "rollout_completed"],
            "repeat_interval": "30m",
            "rate_limit": 5,
        },
    )
    cfg = _read(path)
    assert cfg is not None
    assert cfg.urls == ("json://127.0.0.1:9/secret-path-env", "ntfy://secret-topic-file")
    assert cfg.kinds == {"rolled_back", "rollout_completed"}
    assert (cfg.repeat_interval, cfg.rate_limit) == (1800.0, 5)
    urls_file = tmp_path / "more_urls"
    urls_file.write_text("json://127.0.0.1:9/from-env-file\n")
    full = notify_config.resolve(
        cfg, ["json://127.0.0.1:9/flag"], {notify_config.URLS_FILE_ENV: str(urls_file)}
    )
    assert full is not None and len(full.urls) == 4
    line = "sending to json://127.0.0.1:9/secret-path-env and json://127.0.0.1:9/flag"
    assert "secret" not in secrets.redact(line) and "flag" not in secrets.redact(line)


def test_no_url_anywhere_means_no_notifications(tmp_path: Path) -> None:
    assert notify_config.resolve(None, [], {}) is None
    path = _file(tmp_path, None)
    assert notify_config.resolve(_read(path), [], {}) is None


@pytest.mark.parametrize(
    ("notify", "needle"),
    [
        ({"urls": []}, "at least one notification URL"),
        ({"urls": ["json://x"], "kinds": ["rollout_exploded"]}, "kinds[0]: must be one of"),
        ({"urls": ["json://x"], "rate_limit": 0}, "rate_limit"),
        ({"urls": ["json://x"], "every": "1h"}, "every"),
        ({"urls": [{"url_file": "missing"}]}, "cannot read the URL file"),
    ],
)
def test_a_bad_notify_block_is_an_error_naming_it(tmp_path: Path, notify: Any, needle: str) -> None:
    with pytest.raises(DesiredStateError) as err:
        _read(_file(tmp_path, notify))
    assert "notify" in str(err.value) and needle in str(err.value)


# ---------------------------------------------------------------------------- the sink


class Receiver:
    """A local HTTP receiver of Apprise's JSON webhook: records each body, answers `status`
    (or never answers while `hang` is set)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.hung = 0  # requests left without an answer
        self.status = 200
        self.hang = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                if owner.hang.is_set():
                    owner.hung += 1
                    owner.release.wait(30)
                    return
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"json://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _sample(metrics: Metrics, kind: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "reconciler_notifications_total", {"kind": kind, "result": result}
    )
    return value or 0.0


def test_the_sink_sends_through_apprise_and_counts_failures_without_holding_anyone(
    receiver: Receiver,
) -> None:
    metrics = Metrics(process=False)
    cfg = notify_config.NotifyConfig(urls=(receiver.url + "?cto=1&rto=1",), queue_size=2)
    sink = Notifications(cfg, lambda: "shop", metrics)
    try:
        sink(firing())
        _wait(lambda: receiver.bodies)
        body = receiver.bodies[0]
        assert body["title"] == "[shop] FIRING rolled back: web" and body["type"] == "failure"
        sink(firing())  # again within the repeat interval: not told
        assert _sample(metrics, "rolled_back", "deduplicated") == 1
        sink(resolved())
        _wait(lambda: len(receiver.bodies) == 2)
        assert receiver.bodies[1]["type"] == "success"
        _wait(lambda: _sample(metrics, "rolled_back", "sent") == 2)

        receiver.status = 500
        sink(firing("crash_loop"))
        _wait(lambda: _sample(metrics, "crash_loop", "failed") == 1)

        receiver.hang.set()  # never answers: the caller is never held up
        started = time.monotonic()
        for i in range(20):
            sink(firing("denied", service=f"s{i}"))
        assert time.monotonic() - started < 5.0  # generous: each call only queues
        _wait(lambda: sink.dropped > 0)
        assert metrics.registry.get_sample_value("reconciler_notifications_dropped_total") == (
            sink.dropped
        )
    finally:
        receiver.release.set()
        sink.close(timeout=1)


def test_a_sender_that_raises_is_logged_with_the_url_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "json://127.0.0.1:9/very-secret-token"
    secrets.mark([url])

    def boom(urls: tuple[str, ...], notice: Notice) -> bool:
        raise OSError(f"cannot reach {urls[0]}")

    metrics = Metrics(process=False)
    sink = Notifications(notify_config.NotifyConfig(urls=(url,)), lambda: "p", metrics, send=boom)
    sink(firing())
    _wait(lambda: _sample(metrics, "rolled_back", "failed") == 1)
    sink.close()
    assert "very-secret-token" not in capsys.readouterr().out


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_file_names_every_kind_a_notification_tells() -> None:
    """notify.kinds (a Literal, for errors at the file's line) lists core.events' kinds."""
    from reconciler.config.notify_config import ALL_KINDS
    from reconciler.core.events import CONDITIONS, NEWS

    assert set(ALL_KINDS) == CONDITIONS | NEWS
