"""`reconciler import`: a desired-state file from compose files (a translation: `${VAR}`
and env_file entries stay as written; what must exist before it runs is listed)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from reconciler.cli import import_output
from reconciler.cli.commands import EXIT_INPUT, EXIT_OK
from reconciler.config import loader as desired_file
from reconciler.config import profiles
from reconciler.config.compose_needs import Needs
from reconciler.errors import DesiredStateError


def every_profile(environ: dict[str, str]) -> dict[str, str]:
    """The result is checked with every service unless profiles are selected (--profile,
    COMPOSE_PROFILES): an import translates every service of the file."""
    return {profiles.ENV: profiles.ALL, **environ}


def carried_elsewhere(
    wanted: Needs, compose_view: dict[str, str], output_view: dict[str, str]
) -> list[str]:
    """The variables the output still needs that the compose file's .env sets (the output,
    in another folder, does not read it)."""
    return [n for n in wanted.variables if n in compose_view and n not in output_view]


def import_compose_file(args: argparse.Namespace) -> int:
    from reconciler.config.compose_import import compose_environment, import_compose
    from reconciler.config.compose_needs import needs

    to_stdout = import_output.is_stdout(args.output)
    out_dir = Path.cwd() if to_stdout else import_output.target(args.output).parent
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
    compose_env = first.resolve().parent / ".env"
    environ = compose_environment(out_dir)  # what the output reads: not the compose .env
    wanted = needs(result.tree, result.positions, environ.get, out_dir)
    compose_view = compose_environment(compose_env.parent)
    left_behind = carried_elsewhere(wanted, compose_view, environ)
    for name in left_behind:
        note = f"set in {compose_env}, which is not beside the output"
        wanted.variables[name] = replace(wanted.variables[name], note=note)
    try:  # what the daemon would say of the file once what it needs is there (the
        desired_file.parse_parts(  # compose file's lines; the result is not written)
            result.text,
            source=source,
            base_dir=out_dir,
            # once provided: the compose .env's values (copied), a stand-in for the rest
            environ={
                **every_profile({**compose_view, **environ}),
                **{k: v for k, v in wanted.stand_ins().items() if k not in compose_view},
            },
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
    if to_stdout:
        import_output.write_stdout(result.text)
    else:
        try:
            written = import_output.write(args.output, result.text)
        except OSError as exc:
            print(f"cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return EXIT_INPUT
        shown = f"{written} (through {args.output})" if written != args.output.absolute() else ""
        print(f"wrote {shown or args.output} (project {result.project})", file=sys.stderr)
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
    if left_behind:
        print(
            f"  copy {compose_env} to {out_dir / '.env'} (or set them in the daemon's "
            "environment): the desired-state file reads the .env beside it",
            file=sys.stderr,
        )
    for env_file, at in result.include_env:  # compose reads them; the output does not
        where = f" (the include at {at.file or source}:{at})" if at is not None else ""
        print(
            f"warning: {env_file}{where} gives the included files' ${{VAR}} values: the "
            "desired-state file reads only the .env beside it and the environment; copy "
            "what it sets there (a variable with a default would take the default)",
            file=sys.stderr,
        )
    return EXIT_OK
