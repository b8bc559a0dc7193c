"""Where a followed git repository lives on this host, and how a new commit is taken: the
source's options (flags or the unit's environment), and the checkout in the state directory
(a bare copy, the commit in force in `tree/`, a candidate in `next/` swapped in whole).
Used by the CLI (the first fetch, one-shot commands) and runtime.git_source (the daemon).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import DesiredStateError
from reconciler.ops.git_repo import CommitInfo, Credentials, GitError, GitRepo, exchange
from reconciler.ops.git_repo import redact_url as redact_url

DEFAULT_FILE = "desired_state.yaml"


class SourceError(DesiredStateError):
    """The git source gives no desired state (unreachable at start, a refused commit)."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.source, self.problems = message.split(":", 1)[0], [message]


class Refused(Exception):
    """A commit that is not taken (rewritten history, no good signature, a bad file)."""

    def __init__(self, sha: str, reason: str) -> None:
        super().__init__(reason)
        self.sha, self.reason = sha, reason


@dataclass(frozen=True, slots=True)
class GitOptions:
    """One repository, one branch or tag, one file in it."""

    url: str
    ref: str | None = None
    file: str = DEFAULT_FILE
    interval: float = 60.0
    webhook_secret: Path | None = None
    verify_signatures: bool = False
    allowed_signers: Path | None = None
    gnupg_home: Path | None = None
    allow_force_push: bool = False
    credentials: Credentials = field(default_factory=Credentials)

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    @property
    def shown_ref(self) -> str:
        return self.ref or "HEAD"

    def slug(self) -> str:
        """A folder name for this source: the repository's name and a short hash."""
        base = re.sub(r"\.git$", "", self.url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
        key = f"{self.url}\0{self.ref}\0{self.file}".encode()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:40] or "repo"
        return f"{safe}-{hashlib.sha256(key).hexdigest()[:10]}"


def options_from(values: Mapping[str, object], env: Mapping[str, str]) -> GitOptions | None:
    """The source from the command line's values (`git_url`...), else from the environment
    (RECONCILER_GIT_URL, ...: the unit's environment file); None without a URL."""

    def get(name: str) -> str | None:
        value = values.get(f"git_{name}")
        if value is not None and value is not False:
            return str(value)
        return env.get(f"RECONCILER_GIT_{name.upper()}") or None

    def flag(name: str) -> bool:
        return bool(values.get(name)) or env.get(f"RECONCILER_{name.upper()}", "") in (
            "1",
            "yes",
            "true",
        )

    def path(name: str, key: str) -> Path | None:
        value = values.get(name) or env.get(key)
        return Path(str(value)) if value else None

    url = get("url")
    if url is None:
        return None
    file = get("path") or DEFAULT_FILE
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise SourceError(f"{file}: the git path must be relative and stay inside the repository")
    interval = get("interval")
    return GitOptions(
        url=url,
        ref=get("ref"),
        file=file,
        interval=float(interval) if interval else 60.0,
        webhook_secret=path("webhook_secret_file", "RECONCILER_WEBHOOK_SECRET_FILE"),
        verify_signatures=flag("verify_signatures"),
        allowed_signers=path("allowed_signers", "RECONCILER_ALLOWED_SIGNERS"),
        gnupg_home=path("gnupg_home", "RECONCILER_GNUPG_HOME"),
        allow_force_push=flag("allow_force_push"),
        credentials=Credentials.from_env(dict(env)),
    )


class Checkout:
    """The daemon's copy of the repository under `root` (in the state directory)."""

    def __init__(self, opts: GitOptions, root: Path) -> None:
        self.opts = opts
        self.root = root
        self.repo = GitRepo(root / "repo.git", opts.url, opts.ref, opts.credentials)
        self.tree = root / "tree"  # the commit in force: paths stay the same across commits
        self.next = root / "next"  # a candidate, checked before it is swapped in
        self.record = root / "source.json"
        self._held: int | None = None

    @property
    def file(self) -> Path:
        """The desired-state file of the commit in force."""
        return self.tree / self.opts.file

    def describe(self) -> str:
        """`URL@COMMIT:FILE` of the commit in force (the URL redacted)."""
        sha = self.in_force() or "?"
        return f"{self.opts.shown_url}@{sha[:12]}:{self.opts.file}"

    def hold(self, role: str) -> None:
        """Take this checkout for the rest of the process (an exclusive flock on `root/lock`,
        released by the kernel when the process ends): one process at a time fetches into
        it and swaps its tree. SourceError naming the holder when another process has it."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.pread(fd, 128, 0).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            raise SourceError(
                f"{self.opts.shown_url}: a {holder or 'reconciler'} (pid {pid or 'unknown'}) "
                f"follows this repository in {self.root} and takes each commit itself (a push "
                "with its webhook, or `systemctl reload`, makes it fetch now); refusing to run "
                f"a {role} beside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
        self._held = fd  # kept open: the lock lasts as long as the process

    def in_force(self) -> str | None:
        try:
            sha = json.loads(self.record.read_text()).get("commit")
        except (OSError, ValueError):
            return None
        return sha if isinstance(sha, str) and self.tree.is_dir() else None

    def fetch(self) -> str:
        """The commit the ref names now (GitError when the repository cannot be reached)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.repo.fetch()

    def vet(self, sha: str) -> None:
        """Refuse a rewrite of history (unless allowed) and an unsigned commit (if asked)."""
        old = self.in_force()
        if (
            old is not None
            and old != sha
            and not self.opts.allow_force_push
            and not self.repo.is_ancestor(old, sha)
        ):
            raise Refused(
                sha,
                f"{self.opts.shown_ref} moved from {old[:12]} to {sha[:12]}, which does not "
                "descend from it (a force-push); refused (--allow-force-push takes it)",
            )
        if self.opts.verify_signatures:
            try:
                self.repo.verify(sha, self.opts.allowed_signers, self.opts.gnupg_home)
            except GitError as exc:
                raise Refused(sha, str(exc)) from None

    def take(self, sha: str, check: Callable[[Path], None]) -> None:
        """Write `sha` into `next/`, let `check` judge its file there (raise to refuse),
        then swap it with `tree/` in one step and remember it as the commit in force."""
        try:
            self.repo.export(sha, self.next)
        except GitError as exc:
            raise Refused(sha, str(exc)) from None
        if self.tree.is_dir():
            keep_unchanged(self.tree, self.next)
        try:
            check(self.next / self.opts.file)
        except Exception as exc:
            shutil.rmtree(self.next, ignore_errors=True)
            # Name the file as it is in the repository (`URL@COMMIT:hosts/web.env.age`), not
            # as it sat in `next/` (removed) nor bare (read as relative to one's own folder).
            where = f"{self.opts.shown_url}@{sha[:12]}"
            text = str(exc).replace(f"{self.next}/", f"{where}:").replace(str(self.next), where)
            raise Refused(sha, text) from None
        if self.tree.is_dir():
            exchange(self.tree, self.next)
            shutil.rmtree(self.next, ignore_errors=True)
        else:
            os.rename(self.next, self.tree)
        self.repo.keep(sha)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commit": sha}))
        tmp.replace(self.record)

    def info(self, sha: str) -> CommitInfo | None:
        try:
            return self.repo.info(sha)
        except GitError:
            return None


def keep_unchanged(old: Path, new: Path) -> None:
    """Each file of `new` whose content and mode are those of the same path in `old` becomes
    a hard link to the old file: same inode and time, so what is named by a file's change
    stamp (a Swarm secret) does not change with a commit that leaves the file alone."""
    for folder, _, names in os.walk(new):
        for name in names:
            fresh = Path(folder, name)
            before = old / fresh.relative_to(new)
            try:
                a, b = fresh.lstat(), before.lstat()
                same = (
                    stat.S_ISREG(a.st_mode)
                    and stat.S_ISREG(b.st_mode)
                    and (a.st_mode, a.st_size) == (b.st_mode, b.st_size)
                    and fresh.read_bytes() == before.read_bytes()
                )
                if same:
                    link = fresh.with_name(fresh.name + ".link")
                    os.link(before, link)
                    os.replace(link, fresh)
            except OSError:
                continue  # a fresh copy is always right, only less thrifty


def checkout_root(state_dir: Path, opts: GitOptions) -> Path:
    return state_dir / "source" / opts.slug()
