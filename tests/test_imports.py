"""The package's imports run one way: no cycle between subpackages, no import of a higher layer.

Every ``import`` / ``from ... import`` in crosslens (module level and inside functions) and
every ``importlib.import_module("crosslens...")`` with a literal name is read with ``ast``,
so a lazy import inside a function counts as much as one at the top of a file. Imports
under ``if TYPE_CHECKING:`` never run; they count for cycles but not for the layering.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import crosslens

PACKAGE_ROOT = Path(crosslens.__file__).resolve().parent

# A unit (a subpackage, or a top-level module) may import only units on a strictly lower
# layer, plus itself. Units on one layer are siblings and may not import each other.
LAYERS: dict[str, int] = {
    # 0: no crosslens imports outside the unit itself
    "core": 0,  # paths, hashing, sealed JSON, locks, hook names, torchrun, devices, seeding, errors
    "htmlreport": 0,  # the HTML report builder every stage writes with
    "architectures": 1,  # the architectures by name and their training defaults (no classes)
    "kernels": 1,  # the training step's implementations and the plan choosing them (<- core alone)
    # 2: inputs and the crosscoder architectures, independent of each other
    "checkpoints": 2,  # snapshot suites
    "tasks": 2,  # minimal pairs and the pico grammar (pure text)
    "crosscoders": 2,  # <- kernels; the architectures know nothing of the pipeline
    # 3: built on one of those
    "pico": 3,  # <- checkpoints, tasks
    "activations": 3,  # <- checkpoints (and the pico grammar from tasks as its default text)
    "distributed": 3,  # <- crosscoders
    # 4: the stages that use a crosscoder
    "training": 4,  # <- crosscoders, kernels, distributed, activations, pico (sizing a run, recipes)
    "analysis": 4,  # <- crosscoders (duck-typed), activations
    "causal": 4,  # <- crosscoders, tasks
    # 5: built on the stages
    "pretrained": 5,
    "dashboards": 5,
    # 6: what reads the stages' outputs
    "exports": 6,  # <- core, crosscoders, activations, training (run seal), dashboards (the database's schema)
    "browser": 6,  # <- core, dashboards (the feature database's schema); stdlib only, no torch
    "live": 6,  # <- checkpoints, crosscoders, activations, dashboards (the readings); the browser is handed it
    "explain": 6,  # <- core, dashboards (the feature database and the explanations' schema); openai, no torch
    # 7: the application layer: one module per command, its flags generated from config dataclasses
    "cli": 7,
    "__main__": 8,
    "__init__": 8,  # crosslens/__init__.py resolves its public names lazily
}


def _module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # crosslens itself
        return "__init__"
    return parts[1]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def _imports(path: Path, root: Path = PACKAGE_ROOT) -> list[tuple[str, int, bool]]:
    """(imported crosslens module, line, type-only) for every import in ``path``, a module of the
    package at ``root``."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = _type_checking_lines(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from crosslens import x` may name a submodule
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if target == "crosslens"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                found.append((str(node.args[0].value), node.lineno))
    return [
        (target, line, line in type_only)
        for target, line in found
        if target == "crosslens" or target.startswith("crosslens.")
    ]


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> ["file:line -> module", ...], between different units."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        source = _unit(_module_name(path))
        for target, line, type_only in _imports(path):
            if target == "crosslens":
                continue  # the package root's lazy names, never a stage
            dest = _unit(target)
            if dest != source:
                where = f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} -> {target}"
                edges[(source, dest)].append(where + (" (TYPE_CHECKING)" if type_only else ""))
    return edges


def _find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(path)) for path in PACKAGE_ROOT.rglob("*.py")}
    assert units - set(LAYERS) == set(), "give each new subpackage or top-level module a layer in LAYERS"


def test_no_import_cycle_between_subpackages():
    edges = _edges()
    cycle = _find_cycle(edges)
    if cycle:
        detail = "\n".join(f"  {a} -> {b}: {edges[(a, b)][0]}" for a, b in zip(cycle, cycle[1:]))
        pytest.fail(f"import cycle {' -> '.join(cycle)}:\n{detail}")


def test_no_upward_or_sideways_import():
    bad = []
    for (source, dest), places in sorted(_edges().items()):
        runtime = [p for p in places if not p.endswith("(TYPE_CHECKING)")]
        if runtime and LAYERS.get(dest, 99) >= LAYERS.get(source, -1):
            bad += [
                f"{source} (layer {LAYERS.get(source)}) imports {dest} (layer {LAYERS.get(dest)}): {p}" for p in runtime
            ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The checks above are only as good as the walker: it must see imports inside
    functions, relative imports and import_module calls, and tell type-only ones apart."""
    pkg = tmp_path / "crosslens" / "demo_pkg"
    pkg.mkdir(parents=True)
    source = pkg / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "from . import sibling\n"
        "def f():\n"
        "    from crosslens.cli import main\n"
        "    importlib.import_module('crosslens.demo')\n"
        "if TYPE_CHECKING:\n"
        "    from crosslens.causal import stage\n"
    )
    found = {(target, type_only) for target, _, type_only in _imports(source, tmp_path / "crosslens")}
    assert found == {
        ("crosslens.demo_pkg", False),
        ("crosslens.cli", False),
        ("crosslens.demo", False),
        ("crosslens.causal", True),
    }


def test_no_module_imports_another_modules_private_names():
    """A leading underscore means "this module's own": another module that needs it should
    get a public name (in ``crosslens.core`` when several stages share it)."""
    bad = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crosslens"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    bad.append(
                        f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} imports {private} from {node.module}"
                    )
    assert not bad, "\n".join(bad)
