"""What the daemon calls each pass (its `trigger`: the logs, `reconciler_reconcile_trigger_total`
and, through core.events, the history): a fake target in a real Daemon, no engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reconciler.config import loader
from reconciler.core.events import trigger_text
from reconciler.runtime.daemon import Daemon, Options
from reconciler.targets.base import RESYNC, Outcome
from reconciler.targets.host import KIND as HOST


class Fake:
    """A target whose resync queues two services: `web` asks to be looked at again twice
    (a rollout monitor), `bad` fails once (a back-off) and then succeeds."""

    def __init__(self) -> None:
        self.desired: Any = None
        self.seen: list[tuple[str, str]] = []
        self.emit: Callable[[str, float], None] = lambda key, delay: None
        self.lock = threading.Lock()

    def bind(self, emit: Callable[[str, float], None]) -> None:
        self.emit = emit

    def first_keys(self) -> Iterable[str]:
        return (RESYNC,)

    def reconcile(self, key: str, trigger: str) -> Outcome:
        with self.lock:
            self.seen.append((key, trigger))
            count = sum(k == key for k, _ in self.seen)
        if key == RESYNC:
            self.emit("service:web", 0.0)
            self.emit("service:bad", 0.0)
            return Outcome()
        if key == "service:web":
            return Outcome(requeue_after=0.01, busy=True) if count < 3 else Outcome()
        return Outcome(errors=1, busy=True) if count < 2 else Outcome()

    def close(self) -> None:
        pass

    def status_data(self) -> dict[str, object]:
        return {}

    def __getattr__(self, name: str) -> Any:  # status, watch...: not under test
        if name == "watch":
            return lambda stop, emit, count: stop.wait()
        raise AttributeError(name)


def test_first_passes_requeues_and_retries_are_told_apart(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("version: 1\nproject: trig\nservices:\n  web:\n    image: busybox\n")
    fake = Fake()
    options = Options(path=f, state_dir=tmp_path, lock_dir=tmp_path, listen=(), interval=3600)
    d = Daemon(options, HOST, loader.load(f), target=fake)  # type: ignore[arg-type]
    d.backoff.base = 0.01
    runner = threading.Thread(target=d.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(fake.seen) < 6:
            time.sleep(0.02)
    finally:
        d.stop()
        runner.join(30)
    by_key: dict[str, list[str]] = {}
    for key, trigger in fake.seen:
        by_key.setdefault(key, []).append(trigger)
    assert by_key[RESYNC] == ["start"]
    # The keys the first pass queued are the start's work, not a back-off.
    assert by_key["service:web"] == ["start", "requeue", "requeue"]
    assert by_key["service:bad"] == ["start", "backoff"]  # only a retry after an error
    passes = {
        t: d.metrics.registry.get_sample_value("reconciler_reconcile_trigger_total", {"trigger": t})
        for t in ("start", "requeue", "backoff")
    }
    assert passes == {"start": 3, "requeue": 2, "backoff": 1}
    assert [trigger_text(t) for t in ("start", "requeue", "backoff")] == [
        "start",
        "requeue",
        "retry",
    ]
