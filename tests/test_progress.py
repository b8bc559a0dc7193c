"""The terminal view of `apply` (cli.progress), drawn on a recording console: one line per
object with its latest state, the counter, errors listed in full at the end."""

from __future__ import annotations

import io

from rich.console import Console

from reconciler.cli.progress import ProgressView, objects_in, past, wants_view
from reconciler.core.actions import CreateNetwork
from reconciler.core.desired import NetworkSpec
from reconciler.targets.base import Done


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120, record=True)


class _Step:
    """An action of either target, as the view reads it."""

    def __init__(self, verb: str, kind: str, name: str, reason: str = "missing") -> None:
        self.verb, self.kind, self.name, self.reason = verb, kind, name, reason
        self.key, self.service = f"{kind}:{name}", None

    def describe(self) -> str:
        return f"{self.verb} {self.kind} {self.name} ({self.reason})"


def test_one_line_per_object_with_its_latest_state_and_the_errors_at_the_end() -> None:
    console = _console()
    with ProgressView("p", total=3, console=console) as view:
        view.update(Done(_Step("create", "container", "p-web-1"), "success"))
        view.update(Done(_Step("start", "container", "p-web-1", "just created"), "success"))
        view.update(Done(_Step("create", "container", "p-db-1"), "error", "port is taken"))
    text = console.export_text()
    final = text[text.rfind("[+]") :]
    assert "[+] Failed 1/3" in final and "Done" not in final  # compose marks an error
    assert final.count("p-web-1") == 1 and "Started" in final and "Created" not in final
    assert "error: container p-db-1: port is taken" in final


def test_a_real_action_reads_the_same() -> None:
    console = _console()
    with ProgressView("p", console=console) as view:
        view.update(Done(CreateNetwork(NetworkSpec(name="n"), "missing"), "success"))
    text = console.export_text()  # export_text() empties the record
    assert "Network n" in text and "Created" in text and "[+] Done 1/1" in text


def test_counting_and_words() -> None:
    steps = (
        "create network n",
        "ensure image busybox:1 for web (pull policy missing)",
        "create container p-web-1 (missing)",
        "start container p-web-1 (just created)",
    )
    assert objects_in(steps) == 2
    assert past("create") == "Created" and past("roll_back") == "Roll back"
    assert not wants_view("apply", "auto", verbose=True)
    assert not wants_view("plan", "tty", verbose=False)
    assert wants_view("apply", "tty", verbose=False)
    assert not wants_view("apply", "plain", verbose=False)
