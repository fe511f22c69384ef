"""The package layout of docs/design.md, "Package map": who may import whom, no import circles, and the size
limits (root modules, module and function lengths). Every import counts, those under ``TYPE_CHECKING`` and
inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fimbench"
ROOT_MODULE_LIMIT = 12
MODULE_LINE_LIMIT = 400
FUNCTION_LINE_LIMIT = 80

BASE = {"fimbench", "fimbench.errors", "fimbench.exit_codes", "fimbench.methods", "fimbench.cost_orders", "fimbench.names", "fimbench.timing", "fimbench.files", "fimbench.termination"}
LAYERS = {  # a part of the package -> the parts it may import (besides itself and the base modules)
    "curvature": set(),
    "fisher": {"curvature"},
    "preconditioner": {"curvature", "fisher"},
    "optimizers": set(),
    "optim": {"preconditioner", "optimizers"},
    "data": set(),
    "engines": {"curvature", "fisher", "preconditioner", "optimizers", "optim", "data"},
    "cli": {"curvature", "fisher", "preconditioner", "optimizers", "optim", "data", "engines"},
    "__main__": {"cli"},
}
LIBRARY = ("curvature", "fisher", "preconditioner", "optimizers", "optim")


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def imports(path: Path, package: Path, known: dict[str, Path]) -> set[str]:
    """The fimbench modules ``path`` imports: ``from P import name`` counts as module ``P.name`` when that
    is a module, else as ``P``."""
    found: set[str] = set()
    own = module_name(path, package)
    anchor = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "fimbench")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = anchor.split(".")[: len(anchor.split(".")) - (node.level - 1)]
                base = ".".join(parents + ([base] if base else []))
            if base.split(".")[0] != "fimbench":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found & set(known)


def part(module: str) -> str:
    """``fimbench.engines.sweep.plan`` -> ``engines``; a base module is its own part."""
    return "base" if module in BASE else module.split(".")[1]


def graph(package: Path) -> dict[str, set[str]]:
    known = modules(package)
    return {name: imports(path, package, known) - {name} for name, path in known.items()}


def wrong_imports(package: Path, layer: str) -> dict[str, list[str]]:
    """The modules of ``layer`` with the imports the package map does not allow them."""
    allowed = LAYERS[layer] | {layer, "base"}
    found = {
        name: sorted(dep for dep in deps if part(dep) not in allowed)
        for name, deps in graph(package).items()
        if name not in BASE and part(name) == layer
    }
    return {name: deps for name, deps in found.items() if deps}


def import_circle(package: Path) -> list[str] | None:
    """One import circle (its modules, the first repeated last), or None."""
    edges = graph(package)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                trail = path + [name]
                return trail[trail.index(dep) :] + [dep]
            if dep not in state and (circle := visit(dep, path + [name])):
                return circle
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state and (circle := visit(name, [])):
            return circle
    return None


def test_every_module_belongs_to_a_known_part_of_the_package() -> None:
    unknown = sorted(name for name in modules(PACKAGE) if part(name) not in LAYERS and part(name) != "base")
    assert not unknown, f"modules outside the package map: {unknown}"


def test_the_base_modules_import_only_each_other() -> None:
    outside = {name: sorted(deps - BASE) for name, deps in graph(PACKAGE).items() if name in BASE and deps - BASE}
    assert not outside, outside


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_part_imports_only_the_parts_below_it(layer: str) -> None:
    assert not wrong_imports(PACKAGE, layer), f"{layer} may import only {sorted(LAYERS[layer])} and the base modules"


def test_the_library_never_imports_the_engines_or_the_cli() -> None:
    reaching = {
        name: sorted(dep for dep in deps if part(dep) in ("engines", "cli"))
        for name, deps in graph(PACKAGE).items()
        if name not in BASE and part(name) in LIBRARY
    }
    assert not {name: deps for name, deps in reaching.items() if deps}


def test_no_import_circle() -> None:
    circle = import_circle(PACKAGE)
    assert circle is None, " -> ".join(circle or [])


def test_the_checks_see_a_circle_and_a_wrong_import(tmp_path: Path) -> None:
    """The checks above can fail: a made-up package with both defects."""
    package = tmp_path / "fimbench"
    (package / "curvature").mkdir(parents=True)
    (package / "engines").mkdir()
    for name, text in {
        "__init__.py": "",
        "curvature/__init__.py": "",
        "curvature/a.py": "from fimbench.curvature.b import x\nfrom fimbench.engines import train\n",
        "curvature/b.py": "if TYPE_CHECKING:\n    from .a import y\n",
        "engines/__init__.py": "",
        "engines/train.py": "",
    }.items():
        (package / name).write_text(text)
    known = modules(package)
    assert imports(package / "curvature" / "a.py", package, known) == {"fimbench.curvature.b", "fimbench.engines.train"}
    assert imports(package / "curvature" / "b.py", package, known) == {"fimbench.curvature.a"}
    assert wrong_imports(package, "curvature") == {"fimbench.curvature.a": ["fimbench.engines.train"]}
    assert import_circle(package) == ["fimbench.curvature.a", "fimbench.curvature.b", "fimbench.curvature.a"]


def test_the_package_root_stays_small() -> None:
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= ROOT_MODULE_LIMIT, root


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MODULE_LINE_LIMIT
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > FUNCTION_LINE_LIMIT  # type: ignore[operator]
    ]
    assert not long
