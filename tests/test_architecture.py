"""Architecture checks on reconciler/'s source (pure, fast: `ast` and pyproject.toml only).

No module uses another reconciler module's underscore names, and every top-level module of
reconciler/ sits in a layer of the import-linter layers contract. Run by CI with the pure suite.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reconciler"


def module_name(path: Path) -> str:
    """`reconciler/config/loader.py` -> `reconciler.config.loader` (a package: its name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


MODULES = {module_name(p): p for p in source_files()}


def is_private(name: str) -> bool:
    """`_x` and `__x` are private; dunder names (`__version__`, `__all__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an `ImportFrom` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def dotted(node: ast.expr) -> str | None:
    """`a.b.c` as a string, or None when the chain does not start at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def violations(path: Path) -> list[str]:
    """`file:line: ...` for each use of another reconciler module's private name."""
    found = scan(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    return [f"{path.relative_to(ROOT).as_posix()}:{line}: {what}" for line, what in sorted(found)]


def scan(source: str, me: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, what) for each use of a private name of a reconciler module other than `me`."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> reconciler module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("reconciler"):
                    continue
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import reconciler.x.y` binds `reconciler`: chains are read whole
                    aliases["reconciler"] = "reconciler"
        elif isinstance(node, ast.ImportFrom):
            source = resolve(node, me, is_package)
            if source != "reconciler" and not source.startswith("reconciler."):
                continue
            for alias in node.names:
                if is_private(alias.name) and source != me:
                    yield node.lineno, f"imports {alias.name} from {source}"
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    aliases[alias.asname or alias.name] = submodule
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain = dotted(node.value)
        if chain is None:
            continue
        head, _, rest = chain.partition(".")
        if head not in aliases:
            continue
        target = ".".join(filter(None, [aliases[head], rest]))
        if target in MODULES and target != me:
            yield node.lineno, f"uses {target}.{node.attr}"


def all_violations() -> list[str]:
    return [v for path in source_files() for v in violations(path)]


def test_no_private_names_across_modules() -> None:
    """No module of reconciler/ imports or uses another module's underscore names."""
    found = all_violations()
    assert not found, "private names used across modules:\n" + "\n".join(found)


def layers_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layered = [
        c
        for c in contracts
        if c["type"] == "layers" and "reconciler" in c.get("containers", ["reconciler"])
    ]
    assert len(layered) == 1, "expected one layers contract over the whole reconciler package"
    return layered[0]


def declared_layers(contract: dict) -> set[str]:
    """Top-level names in the contract's layers (`a | b`, `a : b`, `(optional)` read)."""
    names: set[str] = set()
    for layer in contract["layers"]:
        for item in re.split(r"[|:]", layer):
            name = item.strip().strip("()").strip()
            if not contract.get("containers"):
                name = name.removeprefix("reconciler.")
            names.add(name.split(".")[0])
    return names


def top_level_modules() -> set[str]:
    found = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    found |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return found


def test_every_top_level_module_is_in_a_layer() -> None:
    outside = sorted(top_level_modules() - declared_layers(layers_contract()))
    assert not outside, f"reconciler modules outside the import-linter layers: {outside}"


def test_the_checker_sees_each_form_of_private_use() -> None:
    """The checker itself: each way of reaching a private name is reported, the rest not."""
    source = (
        "from reconciler.config.loader import _PORT, load\n"
        "from reconciler.config import loader as desired_file\n"
        "import reconciler.cli as cli\n"
        "import reconciler.core.desired\n"
        "from . import planner\n"
        "from .probe import _own\n"
        "from reconciler import __version__\n"
        "desired_file._mount(1)\n"
        "cli._reload()\n"
        "reconciler.core.desired._options\n"
        "planner._networks\n"
        "self._private\n"
        "desired_file.__name__\n"
        "load._cache\n"
        "_own()\n"
    )
    found = sorted(scan(source, "reconciler.core.probe", is_package=False))
    assert found == [
        (1, "imports _PORT from reconciler.config.loader"),
        (8, "uses reconciler.config.loader._mount"),
        (9, "uses reconciler.cli._reload"),
        (10, "uses reconciler.core.desired._options"),
        (11, "uses reconciler.core.planner._networks"),
    ]
