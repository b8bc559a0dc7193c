"""What the desired-state file reads besides its YAML: bounded file reads, the `.env` beside
it, each service's env_file, and `${VAR}` substituted in each scalar as it is read.

Used by the loader's entry points (and the renderer, for secret files).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.config import encrypted
from reconciler.config.interpolation import (
    SECRET_NAME,
    InterpolationError,
    interpolate,
    parse_env_file,
)
from reconciler.config.report import Report
from reconciler.config.schema import DEFAULT_MAX_REPLICAS, DesiredStateDef
from reconciler.config.tree import read_regular
from reconciler.config.yamlread import BOOL, INT, NULL, STR, Document, Mark, Scalar, core_value
from reconciler.config.yamlread import Path as DataPath

MAX_FILE_BYTES = 1024 * 1024  # the desired-state file (its compose stops at MAX_NODES too)
MAX_ENV_FILE_BYTES = 1024 * 1024  # .env and each env_file
ENV_MAX_REPLICAS = "RECONCILER_MAX_REPLICAS"


class TooLarge(Exception):
    """A file larger than its limit (not read further)."""


def read_limited(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` (a FIFO or a device is refused, not read)."""
    data = read_regular(path, limit)
    if len(data) > limit:
        raise TooLarge
    return data


def decode(raw: bytes | str, report: Report) -> str:
    """The file's text (UTF-8, BOM dropped, at most MAX_FILE_BYTES); else raise the report."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = raw[: exc.start]
            mark = Mark(before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1)
            report.add(f"the file is not UTF-8 text (byte {exc.start})", mark=mark)
            raise report.error() from None
    if len(text) > MAX_FILE_BYTES:
        report.add(f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
        raise report.error()
    return text.removeprefix("\ufeff")


def replica_limit(given: int | None, env: Mapping[str, str], report: Report) -> int:
    """The bound on `replicas`: `given`, else $RECONCILER_MAX_REPLICAS, else the default."""
    if given is not None:
        return given
    text = env.get(ENV_MAX_REPLICAS, "").strip()
    if not text:
        return DEFAULT_MAX_REPLICAS
    if not re.fullmatch(r"[0-9]{1,9}", text):
        report.add(f"${ENV_MAX_REPLICAS}: must be a whole number (the default is 1000)")
        raise report.error()
    return int(text)


class DotEnv:
    """The `.env` beside the file: variables for `${VAR}`; the environment wins."""

    def __init__(self, path: Path, env: Mapping[str, str], report: Report) -> None:
        self.path, self.env = path, env
        self.values: dict[str, str] = {}
        self.digest = "absent"
        try:
            content = read_limited(path, MAX_ENV_FILE_BYTES)
        except FileNotFoundError:
            return
        except TooLarge:
            report.add(f"larger than {MAX_ENV_FILE_BYTES // 1024} KiB", file=str(path))
            return
        except OSError as exc:
            report.add(f"cannot read: {exc.strerror}", file=str(path))
            return
        self.digest = hashlib.sha256(content).hexdigest()
        text = _decode_env(content, str(path), report)
        if text is None:
            return
        parsed = parse_env_file(text, env.get, env_first=True)
        for line, message in parsed.problems:
            report.add(message, mark=Mark(line, 0), file=str(path))
        self.values = parsed.values

    def lookup(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value is not None else self.values.get(name)


def _decode_env(content: bytes, name: str, report: Report) -> str | None:
    try:
        text = content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        report.add("not UTF-8 text", mark=Mark(line, 0), file=name)
        return None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        report.add("a NUL character cannot be passed to Docker", mark=Mark(line, 0), file=name)
        return None
    return text


def _env_value(path: DataPath) -> bool:
    """services.NAME.environment.KEY (the map form): always text, as written."""
    return len(path) == 4 and path[0] == "services" and path[2] == "environment"


def _octal_mode(path: DataPath) -> bool:
    """services.NAME.volumes.I.tmpfs.mode: the text as written (`1777` and `0o1777` are the
    same octal mode; a YAML integer could not tell them apart)."""
    return (
        len(path) == 6
        and path[0] == "services"
        and path[2:3] == ("volumes",)
        and (path[4:] == ("tmpfs", "mode"))
    )


def _secret_text(path: DataPath, text: str) -> bool:
    """The scalar is itself a secret (DB_PASSWORD: ..., or - DB_PASSWORD=...)."""
    key = path[-1] if path and isinstance(path[-1], str) else text.partition("=")[0]
    return bool(SECRET_NAME.search(key))


class Scalars:
    """Interpolates and types each scalar as `yamlread.read` meets it.

    `${VAR}` is substituted in strings (plain or quoted, never in keys); the result stays a
    string (the schema takes `"3"` for a count and `"true"` for a flag, as compose does).
    Environment values are kept as written (`012` stays "012"); other plain scalars get
    their YAML 1.2 core type.
    """

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        report: Report,
        positions: Document | None = None,
    ) -> None:
        self.lookup, self.report, self.positions = lookup, report, positions
        self.failed: set[DataPath] = set()

    def __call__(self, path: DataPath, scalar: Scalar) -> Any:
        text = scalar.text
        mark = self.positions.mark(path) if self.positions else scalar.mark
        if "\0" in text:
            self.report.add("a NUL character (\\0) cannot be passed to Docker", path, mark)
            self.failed.add(path)
            return text.replace("\0", "")
        if scalar.tag == STR and "$" in text:
            try:
                result = interpolate(text, self.lookup, hide_names=_secret_text(path, text))
            except InterpolationError as exc:
                self.report.add(str(exc), path, mark)
                self.failed.add(path)
                return text
            if result.secret and result.value:
                self.report.secret_values.add(result.value)
            self.report.secret_values |= result.secret_values
            return result.value
        if _octal_mode(path) and scalar.tag == INT:
            return text
        if _env_value(path):
            if scalar.plain and scalar.tag == NULL:
                return None
            if scalar.plain and scalar.tag == BOOL:
                return text.lower()
            return text
        return core_value(scalar.tag, text)


_ABSENT = "not found"


class EnvFiles:
    """Each service's env_file entries, read in order (a later file wins)."""

    def __init__(
        self,
        d: DesiredStateDef,
        base_dir: Path,
        lookup: Callable[[str], str | None],
        report: Report,
        doc: Document,
        provisional: bool = False,
    ) -> None:
        """`provisional` (`reconciler import`): a file not there yet is listed in `absent`,
        not reported (it must exist before the daemon runs)."""
        self.values: dict[str, dict[str, str]] = {}
        self.absent: list[tuple[str, DataPath]] = []
        self.digests: dict[str, str] = {}
        self.base_dir = base_dir
        parsed: dict[Path, dict[str, str] | str] = {}  # the values, or why they cannot be read
        for name, svc in d.services.items():
            merged: dict[str, str] = {}
            entries = svc.env_file if isinstance(svc.env_file, list) else [svc.env_file]
            for i, entry in enumerate(entries):
                given, required = (
                    (entry, True) if isinstance(entry, str) else (entry.path, entry.required)
                )
                at: DataPath = ("services", name, "env_file")
                if isinstance(svc.env_file, list):
                    at = (*at, i)
                path = resolve(base_dir, given)
                if path not in parsed:
                    parsed[path] = self._read(path, lookup, report)
                values = parsed[path]
                if isinstance(values, dict):
                    merged.update(values)
                elif values == _ABSENT and provisional:
                    self.absent.append((given, at))
                elif values != _ABSENT or required:
                    report.add(f"env file {given!r} {values} ({path})", at, doc.mark(at))
            self.values[name] = merged

    def _read(
        self, path: Path, lookup: Callable[[str], str | None], report: Report
    ) -> dict[str, str] | str:
        self.digests[str(path)] = "absent"  # watched: a file created later is noticed
        try:
            content = read_limited(path, MAX_ENV_FILE_BYTES)
        except FileNotFoundError:
            return _ABSENT
        except TooLarge:
            return f"is larger than {MAX_ENV_FILE_BYTES // 1024} KiB"
        except OSError as exc:
            return f"cannot be read: {exc.strerror}"
        self.digests[str(path)] = hashlib.sha256(content).hexdigest()
        secret = encrypted.is_encrypted(path, content)
        if secret:  # age or SOPS: decrypted in memory, every value kept from any output
            try:
                content = encrypted.plaintext(path, content)
            except encrypted.DecryptError as exc:
                return f"cannot be decrypted: {exc}"
        text = _decode_env(content, str(path), report)
        if text is None:
            return {}
        # A file outside the desired state's folder may be any host file (/etc/shadow): its
        # problems name no variable (the policy judges the path only after this read).
        home = os.path.realpath(self.base_dir).rstrip("/") + "/"
        own = os.path.realpath(path).startswith(home)
        env = parse_env_file(text, lookup, env_first=False, names=own)
        for line, message in env.problems:
            report.add(message, mark=Mark(line, 0), file=str(path))
        if secret:
            report.secret_values |= {v for v in env.values.values() if v}
        return env.values


def resolve(base_dir: Path, text: str) -> Path:
    """A path of the file (`~` expanded) as an absolute path; relative to `base_dir`."""
    p = Path(text)
    with contextlib.suppress(RuntimeError):  # ~user of no such user: left as written
        p = p.expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def without_extensions(data: dict[str, Any]) -> dict[str, Any]:
    """Compose's extension fields (`x-...` keys: a home for anchors) at the top level and in
    each service, network and volume are ignored."""

    def strip(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: v for k, v in d.items() if not k.startswith("x-")}

    out = strip(data)
    for section in ("services", "networks", "volumes"):
        if isinstance(out.get(section), dict):
            out[section] = {k: strip(v) for k, v in out[section].items()}
    return out
