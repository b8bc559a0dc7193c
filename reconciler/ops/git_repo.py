"""The daemon's own copy of a git repository, driven through the `git` binary (timeouts on
every call): fetch a branch or tag, check ancestry and signatures, write one commit's files
into a fresh folder. Credentials come from files; URLs are redacted in every message.
Used by runtime.git_source (the daemon) and the CLI's one-shot commands.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 120.0  # a fetch over a slow link; local calls take milliseconds
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
# A token given in a file answers git's credential request; the token never sits in argv.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'printf "username=%s\\n" "${RECONCILER_GIT_USERNAME:-git}"; '
    'printf "password=%s\\n" "$(cat "$RECONCILER_GIT_TOKEN_FILE")"; }; f'
)


class GitError(Exception):
    """A git call failed (its message has every URL redacted)."""


def redact_url(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by `***`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Files named in the unit's environment: an HTTPS token, an SSH key and known_hosts."""

    token_file: Path | None = None
    username: str | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Credentials:
        e = os.environ if env is None else env

        def path(name: str) -> Path | None:
            return Path(e[name]) if e.get(name) else None

        return cls(
            path("RECONCILER_GIT_TOKEN_FILE"),
            e.get("RECONCILER_GIT_USERNAME") or None,
            path("RECONCILER_GIT_SSH_KEY"),
            path("RECONCILER_GIT_KNOWN_HOSTS"),
        )

    def environment(self) -> dict[str, str]:
        """What git's child processes get on top of the process environment."""
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
        if self.token_file is not None:
            env["RECONCILER_GIT_TOKEN_FILE"] = str(self.token_file)
            if self.username:
                env["RECONCILER_GIT_USERNAME"] = self.username
        if self.ssh_key is not None or self.known_hosts is not None:
            ssh = ["ssh", "-o", "BatchMode=yes"]
            if self.ssh_key is not None:
                ssh += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
            if self.known_hosts is not None:
                ssh += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
                ssh += ["-o", "StrictHostKeyChecking=yes"]
            env["GIT_SSH_COMMAND"] = " ".join(ssh)
        return env


@dataclass(frozen=True, slots=True)
class CommitInfo:
    sha: str
    author: str
    time: int  # Unix seconds (the committer's)
    subject: str


class GitRepo:
    """A bare repository at `path` that mirrors one ref of `url`."""

    def __init__(self, path: Path, url: str, ref: str | None, creds: Credentials) -> None:
        self.path, self.url, self.ref, self.creds = path, url, ref, creds

    def git(
        self, *args: str, timeout: float = GIT_TIMEOUT_S, env: dict[str, str] | None = None
    ) -> bytes:
        """Run `git --git-dir=PATH ARGS`; stdout, or a GitError with git's (redacted) words."""
        config = ["-c", "credential.helper=", "-c", "core.hooksPath=/dev/null"]
        if self.creds.token_file is not None:
            config += ["-c", f"credential.helper={_CREDENTIAL_HELPER}"]
        cmd = ["git", *config, f"--git-dir={self.path}", *args]
        full = {**os.environ, **self.creds.environment(), **(env or {})}
        try:
            done = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=full
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} took longer than {timeout:g}s") from None
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}") from None
        if done.returncode != 0:
            words = done.stderr.decode("utf-8", "replace").strip().splitlines()
            why = redact_url(" / ".join(w for w in words if w)[-500:]) or f"exit {done.returncode}"
            raise GitError(f"git {_subcommand(args)} failed: {why}")
        return done.stdout

    def ensure(self) -> None:
        if not (self.path / "HEAD").exists():
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.git("init", "--bare", "--quiet")

    def fetch(self) -> str:
        """Fetch the ref (a branch, a tag, or the remote's HEAD) and return its commit."""
        self.ensure()
        ref = self.ref or "HEAD"
        # Into a ref of our own, forced: whether a rewrite is taken is decided afterwards.
        self.git("fetch", "--quiet", "--no-tags", self.url, f"+{ref}:refs/reconciler/fetched")
        return self.resolve("refs/reconciler/fetched")

    def resolve(self, name: str) -> str:
        return self.git("rev-parse", "--verify", f"{name}^{{commit}}").decode().strip()

    def has(self, sha: str) -> bool:
        try:
            self.resolve(sha)
        except GitError:
            return False
        return True

    def is_ancestor(self, old: str, new: str) -> bool:
        """True when `new` descends from `old` (a fast-forward)."""
        try:
            self.git("merge-base", "--is-ancestor", old, new)
        except GitError:
            return False
        return True

    def keep(self, sha: str) -> None:
        """Pin the commit in force, so a later forced fetch cannot let it be collected."""
        self.git("update-ref", "refs/reconciler/in-force", sha)

    def info(self, sha: str) -> CommitInfo:
        out = self.git("show", "-s", "--format=%H%x00%an <%ae>%x00%ct%x00%s", sha)
        full, author, when, subject = out.decode("utf-8", "replace").rstrip("\n").split("\0", 3)
        return CommitInfo(full, author, int(when), subject)

    def verify(self, sha: str, allowed_signers: Path | None, gnupg_home: Path | None) -> None:
        """Raise GitError unless the commit carries a good signature by an allowed key."""
        args = []
        if allowed_signers is not None:
            args += ["-c", f"gpg.ssh.allowedSignersFile={allowed_signers}"]
        home = {"GNUPGHOME": str(gnupg_home)} if gnupg_home is not None else {}
        if not self.git("cat-file", "commit", sha).partition(b"\n\n")[0].count(b"\ngpgsig"):
            raise GitError(f"commit {sha[:12]} is unsigned (no signature to verify)")
        try:
            self.git(*args, "verify-commit", sha, env=home)
        except GitError as exc:
            raise GitError(
                f"commit {sha[:12]} has no good signature by an allowed key: {exc}"
            ) from None

    def export(self, sha: str, dest: Path) -> None:
        """Write the commit's files into the new folder `dest` (owner-only modes; links that
        leave the folder, devices and absolute paths are refused by tarfile's data filter)."""
        data = self.git("archive", "--format=tar", sha, timeout=GIT_TIMEOUT_S)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True, mode=0o700)
        old = os.umask(0o077)
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(dest, filter=_owner_only)
        except tarfile.FilterError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise GitError(f"commit {sha[:12]}: {exc}") from None
        finally:
            os.umask(old)


def _subcommand(args: tuple[str, ...]) -> str:
    """The git command in `args` (`-c NAME=VALUE` options before it skipped)."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    return rest[0] if rest else "?"


def _owner_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter, then no bit for group or others (StrictModes reads these)."""
    out = tarfile.data_filter(member, dest)
    if out is not None and out.mode is not None:
        out = out.replace(mode=out.mode & 0o700, deep=False)
    return out


_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (renameat2 RENAME_EXCHANGE): a reader of `a` sees the old
    tree or the new one, never a mix. Where the kernel cannot, two renames."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None and fn(-100, bytes(a), -100, bytes(b), _RENAME_EXCHANGE) == 0:
        return
    side = a.with_name(a.name + ".swap")
    os.rename(a, side)
    os.rename(b, a)
    os.rename(side, b)
