"""The package's shape: layers import only downwards, no import cycle, modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emotion"
# Each subpackage and the ones it may import (besides itself), lowest layer first.
LAYERS = {
    "utils": set(),
    "data": {"utils"},
    "models": {"utils", "data"},
    "training": {"utils", "data", "models"},
    "inference": {"utils", "data", "models"},
    "evaluation": {"utils", "data", "models", "inference"},
    "video": {"utils", "data", "models", "inference"},
    "bench": {"utils", "data", "models", "training", "inference", "evaluation", "video"},
    "app": {"utils", "data", "models", "training", "inference", "evaluation", "video"},
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every emotion.* module ``path`` imports, at the top or inside functions, resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("emotion"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("emotion")}
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_known_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside a layer subpackage: {loose}"
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS)
    for sub in subpackages:
        doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
        assert doc, f"emotion/{sub}/__init__.py needs a docstring saying what the layer owns and may import"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_only_downwards(path: Path) -> None:
    own = _layer(_module_name(path))
    if own is None:
        return
    bad = {m for m in _imported_modules(path) if _layer(m) not in LAYERS[own] | {own}}
    assert not bad, f"{path.relative_to(PACKAGE)} (layer {own}) imports {sorted(bad)}"


def test_no_import_cycle() -> None:
    graph = {_module_name(p): _imported_modules(p) for p in _modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            if dep not in graph:
                continue
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def _long_functions(path: Path) -> list[str]:
    """Each function in ``path`` longer than MAX_FUNCTION_LINES, as 'file:line name(): N lines'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in _modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        too_long += _long_functions(path)
    assert not too_long, "over the size limits: " + "; ".join(too_long)


def test_command_line_stays_small_and_outside_the_library() -> None:
    # argparse belongs to the command line (train_cli.py and emotion_cli/), never to the importable library.
    root = PACKAGE.parent
    cli = [root / "app.py", root / "train_cli.py", *sorted((root / "emotion_cli").glob("*.py"))]
    too_long = [f"{p.name}: {n} lines" for p in cli if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not too_long, "over the size limit: " + "; ".join(too_long)
    with_argparse = [str(p.relative_to(root)) for p in _modules() if "argparse" in _imported_names(p)]
    assert not with_argparse, f"the library imports argparse: {with_argparse}"


def _imported_names(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_entry_points_and_scripts_keep_functions_small() -> None:
    root = PACKAGE.parent
    paths = [root / "app.py", root / "train_cli.py", *sorted((root / "emotion_cli").glob("*.py"))]
    paths += sorted((root / "scripts").glob("*.py"))
    too_long = [entry for path in paths for entry in _long_functions(path)]
    assert not too_long, "over the size limit: " + "; ".join(too_long)
