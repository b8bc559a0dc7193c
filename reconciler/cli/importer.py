"""`reconciler import`: a desired-state file from compose files (a translation: `${VAR}`
and env_file entries stay as written; what must exist before it runs is listed)."""

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
    from reconciler.config.compose_needs import needs

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
    first = result.files[0] if result.files else Path(args.compose_file)
    source = str(first)
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
    environ = compose_environment(first.resolve().parent)
    wanted = needs(result.tree, result.positions, environ.get, out_dir)
    try:  # what the daemon would say of the file once what it needs is there (the
        desired_file.parse_parts(  # compose file's lines; the result is not written)
            result.text,
            source=source,
            base_dir=out_dir,
            environ={**every_profile(environ), **wanted.stand_ins()},
            positions=result.positions,
            warn=lambda line: print(f"warning: {line}", file=sys.stderr),
            provisional=True,
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
    services = list(result.tree.get("services", {}))
    files = " + ".join(str(p) for p in result.files) or source
    print(f"services ({len(services)}): {', '.join(map(str, services))} [from {files}]",
          file=sys.stderr)  # fmt: skip
    if result.unsupported:
        print(
            f"dropped: {len(result.unsupported)} key(s) (listed above; "
            "a comment in the output marks each)",
            file=sys.stderr,
        )
    if wanted.all():
        print("to provide before it runs (the daemon refuses it until then):", file=sys.stderr)
        for need in wanted.all():
            print(f"  {need.show(source)}", file=sys.stderr)
    for env_file, at in result.include_env:  # compose reads them; the output does not
        where = f" (the include at {at.file or source}:{at})" if at is not None else ""
        print(
            f"warning: {env_file}{where} gives the included files' ${{VAR}} values: the "
            "desired-state file reads only the .env beside it and the environment; copy "
            "what it sets there (a variable with a default would take the default)",
            file=sys.stderr,
        )
    return EXIT_OK
