"""A service's `build:` section as the engine's build API takes it (`BuildSpec`): context and
dockerfile (or dockerfile_inline), args (a bare name from the environment, as compose), target,
shm_size, labels and cache_from; and the form of it that enters the service's revision.

Called by the renderer (`render`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.config.forms import scalar
from reconciler.config.options import text_labels
from reconciler.config.schema import BuildDef
from reconciler.config.yamlread import Path as DataPath
from reconciler.core.desired import BuildSpec


def build_args(
    args: dict[str, Any] | list[str], lookup: Callable[[str], str | None]
) -> tuple[tuple[tuple[str, str], ...], list[tuple[DataPath, str]]]:
    """(name, value) pairs, sorted; a bare name takes the environment's value (then .env's)
    and is left out when neither sets it (the Dockerfile's default applies), as compose.
    Also returns those left out (path under `build`, name)."""
    items: list[tuple[DataPath, str, str | None]]
    if isinstance(args, list):
        items = []
        for i, entry in enumerate(args):
            key, eq, value = entry.partition("=")
            items.append((("args", i), key.strip(), value if eq else None))
    else:
        items = [(("args", k), k, None if v is None else scalar(v)) for k, v in args.items()]
    out: dict[str, str] = {}
    unset: list[tuple[DataPath, str]] = []
    for at, key, given in items:
        found = lookup(key) if given is None else given
        if found is None:
            unset.append((at, key))
            continue
        out[key] = found
    return tuple(sorted(out.items())), unset


def build_spec(
    build: str | BuildDef,
    path: Callable[[str], Path],
    lookup: Callable[[str], str | None],
) -> tuple[BuildSpec, list[tuple[DataPath, str]]]:
    """The BuildSpec of a `build:` (a context path, or the section), and the bare args that
    nothing set (path under `build`, name)."""
    if isinstance(build, str):
        return BuildSpec(str(path(build))), []
    args, unset = build_args(build.args, lookup)
    return (
        BuildSpec(
            context=str(path(build.context)),
            dockerfile=build.dockerfile,
            args=args,
            target=build.target,
            shm_size=build.shm_size,
            labels=tuple(sorted(text_labels(build.labels).items())),
            cache_from=tuple(build.cache_from),
            dockerfile_inline=build.dockerfile_inline,
        ),
        unset,
    )


def revision_form(spec: BuildSpec) -> dict[str, Any]:
    """What of the build enters the service's revision: context and dockerfile as before,
    the other keys only when the file gives them (an older revision stays what it was)."""
    body: dict[str, Any] = {"context": spec.context, "dockerfile": spec.dockerfile}
    if spec.digest:  # args' values enter only as the digest
        body["digest"] = spec.digest
    return body
