"""Encrypted files kept beside the desired state (a secret, an env_file): `*.age` decrypted
in memory with the daemon's age identity (pyrage), SOPS files through the `sops` binary.
The plaintext is returned, never written; the loader (env files), the host engine (secret
binds, through a tmpfs) and the Swarm spec (secret data) call `plaintext`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

IDENTITY_ENV = "RECONCILER_AGE_IDENTITY"
SOPS_TIMEOUT_S = 30.0
_SOPS_MARKERS = (b'"sops":', b"\nsops:", b"sops_version=", b"sops_mac=")
_identity: Path | None = None


class DecryptError(Exception):
    """An encrypted file that cannot be read (the message names the file)."""


def configure(identity: Path | None) -> None:
    """The age identity file (`--age-identity`); default $RECONCILER_AGE_IDENTITY."""
    global _identity
    _identity = identity


def identity_file() -> Path | None:
    if _identity is not None:
        return _identity
    value = os.environ.get(IDENTITY_ENV)
    return Path(value) if value else None


def secret_digest(plain: bytes) -> str:
    """The digest a secret's plaintext is known by (its spec, its file in the tmpfs)."""
    return hashlib.sha256(b"reconciler-secret\0" + plain).hexdigest()


def is_age(path: Path | str) -> bool:
    return str(path).endswith(".age")


def is_sops(path: Path | str, data: bytes) -> bool:
    """A SOPS file: `*.sops.*` by name, or one whose content carries SOPS's metadata."""
    name = os.path.basename(str(path))
    return ".sops." in name or name.endswith(".sops") or any(m in data for m in _SOPS_MARKERS)


def is_encrypted(path: Path | str, data: bytes) -> bool:
    return is_age(path) or is_sops(path, data)


def plaintext(path: Path | str, data: bytes) -> bytes:
    """`data` (the content of `path`) decrypted when the file is encrypted, else as is."""
    if is_age(path):
        return _age(path, data)
    if is_sops(path, data):
        return _sops(path)
    return data


def age_identities(about: Path | str | None = None) -> list[Any]:
    """The pyrage identities of the identity file (DecryptError naming `about`, else the
    identity file, when there is none or it cannot be read)."""
    import pyrage

    ident = identity_file()
    name = about if about is not None else "age"
    if ident is None:
        raise DecryptError(
            f"{name}: an age-encrypted file, but no identity was given "
            f"(--age-identity or ${IDENTITY_ENV})"
        )
    try:
        lines = ident.read_text().splitlines()
    except OSError as exc:
        why = exc.strerror
        raise DecryptError(f"{name}: cannot read the age identity {ident}: {why}") from None
    keys = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                keys.append(pyrage.x25519.Identity.from_str(line))
            except Exception:
                raise DecryptError(f"{ident}: not a valid age identity line") from None
    if not keys:
        raise DecryptError(f"{name}: the identity file {ident} holds no AGE-SECRET-KEY line")
    return keys


def _age(path: Path | str, data: bytes) -> bytes:
    import pyrage

    keys = age_identities(path)
    try:
        return bytes(pyrage.decrypt(data, keys))
    except Exception as exc:  # pyrage.DecryptError: wrong key, damaged file
        raise DecryptError(f"{path}: cannot decrypt with {identity_file()}: {exc}") from None


def _sops(path: Path | str) -> bytes:
    sops = shutil.which("sops")
    if sops is None:
        raise DecryptError(
            f"{path}: a SOPS-encrypted file, but the sops binary is not installed "
            "(install sops, or encrypt the file with age as NAME.age)"
        )
    env = dict(os.environ)
    ident = identity_file()
    if ident is not None:
        env.setdefault("SOPS_AGE_KEY_FILE", str(ident))
    try:
        done = subprocess.run(
            [sops, "--decrypt", str(path)],
            capture_output=True,
            timeout=SOPS_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DecryptError(f"{path}: sops failed: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise DecryptError(f"{path}: sops cannot decrypt it: {why}")
    return done.stdout
