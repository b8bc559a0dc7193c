"""The `reconciler` command (`main`), its parser, and the commands; `--target` only picks an
adapter (reconciler.targets)."""

from reconciler.cli.main import main
from reconciler.cli.parser import build_parser

__all__ = ["build_parser", "main"]
