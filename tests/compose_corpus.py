"""The compose corpus (tests/data/compose-corpus): each case imported as a user would, strictly
and with --drop-unsupported. `python -m tests.compose_corpus` prints the rates (the README
quotes them); tests/test_compose_corpus.py checks that nothing crashes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from reconciler.cli.main import main
from reconciler.ops import logs

CORPUS = Path(__file__).parent / "data" / "compose-corpus"
CLEAN_ENV = ("COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR", "COMPOSE_PROJECT_NAME")


@dataclass(frozen=True)
class Outcome:
    case: str
    strict: int  # exit code
    dropping: int
    why: str  # the first line of what the import said when it refused, else ""
    unsupported: tuple[str, ...]  # the keys a strict import refused (last path part)


def cases() -> list[dict[str, object]]:
    return list(json.loads((CORPUS / "manifest.json").read_text())["cases"])


def run_import(files: list[str], *, drop: bool) -> tuple[int, str]:
    """`reconciler import -f a -f b ... -o tmp [--drop-unsupported]`: (exit code, stderr).
    Anything but our own refusal (exit 2) escapes as an exception: a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["import", *(a for f in files for a in ("-f", str(CORPUS / f)))]
        argv += ["-o", str(Path(tmp) / "state.yaml"), "--project", "corpus"]
        argv += ["--drop-unsupported"] if drop else []
        err, out = io.StringIO(), io.StringIO()
        saved = {k: os.environ.pop(k) for k in CLEAN_ENV if k in os.environ}
        try:  # (main's log set-up is skipped: it would bind logs to `err`, gone after)
            with (
                contextlib.redirect_stderr(err),
                contextlib.redirect_stdout(out),
                mock.patch.object(logs, "configure"),
            ):
                code = main(argv)
        finally:
            os.environ.update(saved)
    return code, err.getvalue()


def outcome(case: dict[str, object]) -> Outcome:
    files = [str(f) for f in case["files"]]  # type: ignore[attr-defined]
    strict, refused = run_import(files, drop=False)
    # Nothing to drop: the same import again would say the same.
    dropping, said = (strict, refused) if strict == 0 else run_import(files, drop=True)
    why = ""
    if dropping != 0:
        lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
        skip = ("warning:", "converted:")
        why = next(
            (
                ln
                for ln in lines
                if not ln.startswith(skip) and not ln.endswith("invalid desired state:")
            ),
            "",
        )
    keys = tuple(
        ln.split(": ")[2].split(".")[-1].split("[")[0]
        for ln in refused.splitlines()
        if ln.startswith("error: ") and ": not supported" in ln
    )
    return Outcome(str(case["id"]), strict, dropping, why, keys)


def report(outcomes: list[Outcome]) -> str:
    n = len(outcomes)
    strict = sum(o.strict == 0 for o in outcomes)
    dropping = sum(o.dropping == 0 for o in outcomes)
    lines = [
        f"{n} cases: strict {strict}/{n} ({100 * strict / n:.0f} %), "
        f"--drop-unsupported {dropping}/{n} ({100 * dropping / n:.0f} %)"
    ]
    keys = Counter(k for o in outcomes if o.strict != 0 for k in set(o.unsupported))
    lines.append("strict imports refused for a key reconciler lacks (cases per key):")
    lines.append("  " + ", ".join(f"{k} {n}" for k, n in keys.most_common()))
    lines.append("refused even with --drop-unsupported:")
    reasons = Counter(_reason(o.why) for o in outcomes if o.dropping != 0)
    for why, count in reasons.most_common():
        lines.append(f"  {count:3d}  {why}")
    return "\n".join(lines)


def _reason(line: str) -> str:
    """What blocks an import, without the file and line (to count alike ones together)."""
    parts = line.split(": ")
    return ": ".join(parts[1:])[:110] if len(parts) > 1 else line[:110]


if __name__ == "__main__":
    results = [outcome(c) for c in cases()]
    if "-v" in sys.argv:
        for o in results:
            print(f"{o.strict} {o.dropping} {o.case}  {o.why}")
    print(report(results))
