"""Environment values at rest in the state directory: with an age identity (the one that
decrypts `*.age` env files), each rollout record's container environments are stored
encrypted to it, so a value that came from an encrypted file is never plaintext on disk.
ops.state_store seals on write and opens on read.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import structlog

from reconciler.config import encrypted
from reconciler.core.desired import ContainerSpec
from reconciler.core.rollout import RolloutRecord

log = structlog.get_logger("reconciler")
PREFIX = "reconciler-sealed:age:"  # the single entry that replaces a sealed environment


def _keys() -> list[object] | None:
    """The identities to seal to and open with; None without an identity file."""
    if encrypted.identity_file() is None:
        return None
    return encrypted.age_identities()


def _seal_env(env: tuple[str, ...], keys: list[object]) -> tuple[str, ...]:
    import pyrage

    if not env or (len(env) == 1 and env[0].startswith(PREFIX)):
        return env
    data = json.dumps(list(env)).encode()
    blob = pyrage.encrypt(data, [k.to_public() for k in keys])  # type: ignore[attr-defined]
    return (PREFIX + base64.b64encode(blob).decode(),)


@functools.lru_cache(maxsize=256)
def _open_text(text: str, identity: str) -> tuple[str, ...]:
    """The environment sealed in `text` (cached by `identity`, the key file's digest: one
    decryption per sealed environment and key)."""
    import pyrage

    keys = encrypted.age_identities()
    data = pyrage.decrypt(base64.b64decode(text[len(PREFIX) :]), keys)
    values = json.loads(data)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("not a sealed environment")
    return tuple(values)


def seal(record: RolloutRecord) -> RolloutRecord:
    """`record` as it is written: each spec's environment one sealed entry (unchanged
    without an age identity)."""
    keys = _keys()
    if keys is None or not record.stable:
        return record
    specs = tuple(replace(s, environment=_seal_env(s.environment, keys)) for s in record.stable)
    return replace(record, stable=specs)


def is_sealed(spec: ContainerSpec) -> bool:
    return len(spec.environment) == 1 and spec.environment[0].startswith(PREFIX)


def unseal(record: RolloutRecord, where: str = "") -> RolloutRecord:
    """`record` as it was before `seal`. A sealed environment that cannot be opened (no or
    another identity) drops the record's stable specs: no rollback beats a wrong one."""
    if not any(is_sealed(s) for s in record.stable):
        return record
    try:
        ident = hashlib.sha256(Path(str(encrypted.identity_file())).read_bytes()).hexdigest()
        specs = tuple(
            replace(s, environment=_open_text(s.environment[0], ident)) if is_sealed(s) else s
            for s in record.stable
        )
    except Exception as exc:  # no identity, another one, a damaged entry
        log.error(
            "cannot open the sealed environment of a rollout record; it cannot be rolled back to",
            file=where,
            error=str(exc)[:300],
        )
        return replace(record, stable=(), stable_revision="")
    return replace(record, stable=specs)
