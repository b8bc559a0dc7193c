"""`reconciler import`: a desired-state file from a compose file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.cli.commands import EXIT_INPUT, EXIT_OK
from reconciler.config import loader as desired_file
from reconciler.config import profiles
from reconciler.errors import DesiredStateError


def every_profile(environ: dict[str, str]) -> dict[str, str]:
    """The result is checked with every service unless profiles are selected (--profile,
    COMPOSE_PROFILES): an import translates every service of the file."""
    return {profiles.ENV: profiles.ALL, **environ}


def import_compose_file(args: argparse.Namespace) -> int:
    from reconciler.config.compose_import import compose_environment, import_compose

    out_dir = (args.output.parent if args.output else Path.cwd()).resolve()
    try:
        result = import_compose(
            args.compose_file,
            output_dir=out_dir,
            project=args.project,
            drop_unsupported=args.drop_unsupported,
        )
    except DesiredStateError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT
    source = str(args.compose_file)
    for f in result.unsupported:
        kind = "warning: dropped" if args.drop_unsupported else "error"
        print(f"{kind}: {f.show(source)}", file=sys.stderr)
    if result.unsupported and not args.drop_unsupported:
        print(
            f"{len(result.unsupported)} key(s) cannot be carried; nothing written "
            "(--drop-unsupported leaves them out)",
            file=sys.stderr,
        )
        return EXIT_INPUT
    try:  # what the daemon would say of the file (the compose folder's .env gives ${VAR}),
        desired_file.parse(  # pointing at the compose file's lines (the result is not written)
            result.text,
            source=source,
            base_dir=out_dir,
            environ=every_profile(compose_environment(args.compose_file.resolve().parent)),
            positions=result.positions,
            warn=lambda line: print(f"warning: {line}", file=sys.stderr),
        )
    except DesiredStateError as exc:
        print(str(exc), file=sys.stderr)
        print("the converted file does not validate; nothing written", file=sys.stderr)
        return EXIT_INPUT
    for f in result.converted:
        print(f"converted: {f.show(source)}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
    else:
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(result.text)
        tmp.replace(args.output)
        print(f"wrote {args.output} (project {result.project})", file=sys.stderr)
    return EXIT_OK
