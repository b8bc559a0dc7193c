"""The options every command takes (`--log-level`, `--log-format`), accepted before or after
the command's name, and a parser whose errors show the usage of the command that failed
(`reconciler plan --bogus` prints plan's usage). `reconciler.cli.parser.build_parser` uses it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def add(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--log-level and --log-format on `p`. On a command's parser (`defaults=False`) an
    option not given sets nothing, so one given before the command's name is kept."""

    def default(value: str) -> str:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--log-level",
        default=default("info"),
        choices=LOG_LEVELS,
        help="the least severe log lines shown (default: info)",
    )
    p.add_argument(
        "--log-format",
        default=default("auto"),
        choices=LOG_FORMATS,
        help="json lines, readable lines, or auto: readable on a terminal (default: auto)",
    )


class CommandParser(argparse.ArgumentParser):
    """The top-level parser: remembers its commands' parsers, gives each the global options
    (`add_global_options`), and reports an unknown argument with its command's usage."""

    commands: dict[str, argparse.ArgumentParser]

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices  # name -> parser, filled as commands are added
        return action

    def add_global_options(self) -> None:
        """Each command also takes the global options after its name."""
        for command in getattr(self, "commands", {}).values():
            add(command, defaults=False)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(self, "commands", {}).get(getattr(parsed, "command", None) or "")
            where: argparse.ArgumentParser = command if command is not None else self
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed
