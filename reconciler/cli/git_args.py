"""The command line's git source: its options (`--git URL` ...; the same as RECONCILER_GIT_*
in the unit's environment file) and the first fetch, which puts the desired-state file of
the newest good commit where the command reads it. Called by cli.parser and cli.main.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import structlog

from reconciler.config import encrypted
from reconciler.ops.git_repo import GitError
from reconciler.ops.state_store import default_state_dir
from reconciler.runtime.git_checkout import (
    Checkout,
    Refused,
    SourceError,
    checkout_root,
    options_from,
)
from reconciler.targets.base import TargetKind

log = structlog.get_logger("reconciler")
START_RETRY_MAX_S = 60.0


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """The git source's options for `command` (each also read from RECONCILER_GIT_*)."""
    g = p.add_argument_group("git source (instead of FILE; also $RECONCILER_GIT_URL, ...)")
    g.add_argument("--git", dest="git_url", metavar="URL", help="repository: https, ssh or path")
    g.add_argument("--git-ref", dest="git_ref", metavar="REF", help="branch or tag (HEAD)")
    g.add_argument(
        "--git-path", dest="git_path", metavar="FILE", help="the file in it (desired_state.yaml)"
    )
    g.add_argument("--age-identity", type=Path, help="age identity for *.age secrets/env files")
    if command in ("run", "apply", "plan", "validate"):
        g.add_argument(
            "--verify-signatures",
            action="store_true",
            help="take only commits signed by an allowed key (SSH: --allowed-signers; "
            "GPG: the keyring in $GNUPGHOME or $RECONCILER_GNUPG_HOME)",
        )
        g.add_argument("--allowed-signers", type=Path, help="git's allowed-signers file (SSH)")
        g.add_argument(
            "--allow-force-push",
            action="store_true",
            help="take a commit that does not descend from the one in force",
        )
    if command == "run":
        g.add_argument(
            "--git-interval", dest="git_interval", type=float, help="seconds between fetches (60)"
        )
        g.add_argument(
            "--webhook-secret-file",
            type=Path,
            help="accept POST /hooks/git signed with this secret (GitHub, Gitea, GitLab)",
        )


def prepare(args: argparse.Namespace, kind: TargetKind) -> None:
    """With a git source: fetch, vet and check the newest commit, and point `args.file` at
    its desired-state file (`args.git`: the checkout; `args.git_refused`: a commit refused
    while an older good one stays in force). Without one: nothing."""
    args.git, args.git_refused = None, None
    identity = getattr(args, "age_identity", None)
    if identity is not None:
        encrypted.configure(identity)
    opts = options_from(vars(args), os.environ)
    if opts is None:
        return
    own = checkout_root(getattr(args, "state_dir", None) or default_state_dir(), opts)
    root = own
    if args.command in ("validate", "plan"):  # a throwaway copy: the daemon's is its own
        root = Path(tempfile.mkdtemp(prefix="reconciler-git-"))
        atexit.register(shutil.rmtree, root, True)
    checkout = Checkout(opts, root)
    args.git = checkout
    if args.command in ("status", "reload", "down"):  # the daemon's copy, as it is
        if checkout.in_force() is None:
            raise SourceError(f"{opts.shown_url}: no commit checked out yet in {root}")
        args.file = checkout.file
        return
    # Before the first fetch: a daemon following the same repository owns this checkout.
    checkout.hold("reconciler daemon" if args.command == "run" else f"reconciler {args.command}")
    sha = _fetch(args, checkout)
    args.file = checkout.file
    daemons = Checkout(opts, own)
    if root != own and sha is not None and sha == daemons.in_force():
        # The daemon's tree holds this very commit: read it there, at the paths the running
        # containers were made from (in a copy, every path it names differs: `spec changed`).
        args.git, args.file = daemons, daemons.file
        return
    while sha is not None and sha != checkout.in_force():
        try:
            checkout.vet(sha)
            checkout.take(sha, lambda path: _check(kind, path))
            return
        except Refused as exc:
            if args.command != "run":
                raise SourceError(f"git commit {sha[:12]} refused: {exc.reason}") from None
            if checkout.in_force() is not None:
                args.git_refused = exc  # the daemon starts on the last good commit, says so
                return
            # Nothing good to start on: wait for a commit that passes (a crash loop under
            # systemd would fetch again every 2 s and then hit its start limit).
            log.error(
                "git commit refused and no good commit checked out yet; waiting for one",
                url=checkout.opts.shown_url,
                commit=sha[:12],
                error=exc.reason,
                retry_in_s=checkout.opts.interval,
            )
            _wait(args, checkout.opts.interval)
            sha = _fetch(args, checkout)


def _wait(args: argparse.Namespace, delay: float) -> None:
    """Sleep `delay`, or until the daemon is told to stop (SourceError then)."""
    stop: threading.Event | None = getattr(getattr(args, "signals", None), "stop", None)
    if stop is None:
        time.sleep(delay)
    elif stop.wait(delay):
        raise SourceError("stopped before a commit could be taken")


def followed_file(args: argparse.Namespace) -> Path | None:
    """The desired-state file of the commit the daemon has in force, when a git source is
    given (flags or RECONCILER_GIT_*) and checked out; else None (`history` reads it)."""
    opts = options_from(vars(args), os.environ)
    if opts is None:
        return None
    state_dir = getattr(args, "state_dir", None) or default_state_dir()
    checkout = Checkout(opts, checkout_root(state_dir, opts))
    return checkout.file if checkout.in_force() is not None else None


def _check(kind: TargetKind, path: Path) -> None:
    kind.load(path)  # StrictModes and the policy: cli.main, on the file taken


def _fetch(args: argparse.Namespace, checkout: Checkout) -> str | None:
    """The ref's commit; None when unreachable but a commit is already checked out. `run`
    waits (with back-off) for a first reachable fetch; the others fail at once."""
    delay = 2.0
    stop: threading.Event | None = getattr(getattr(args, "signals", None), "stop", None)
    while True:
        try:
            return checkout.fetch()
        except GitError as exc:
            url = checkout.opts.shown_url
            if checkout.in_force() is not None:
                log.warning("git repository unreachable; using the commit checked out", url=url)
                return None
            if args.command != "run":
                raise SourceError(f"{url}: {exc}") from None
            log.warning("git repository unreachable; retrying", url=url, error=str(exc))
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise SourceError(f"{url}: stopped before the first fetch") from None
            delay = min(delay * 2, START_RETRY_MAX_S)
