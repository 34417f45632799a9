"""The public surface is exactly what docs/API.md lists, every listed name resolves, and the
README and tutorials use nothing else."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

import crosslens

REPO = Path(__file__).resolve().parent.parent
API_DOC = REPO / "docs" / "API.md"


def documented_surface() -> dict[str, set[str]]:
    """``## `module` `` headings and the backticked first cell of each table row under them."""
    surface: dict[str, set[str]] = {}
    module = None
    for line in API_DOC.read_text().splitlines():
        heading = re.match(r"^## `(crosslens(?:\.\w+)?)`\s*$", line)
        if heading:
            module = heading.group(1)
            surface[module] = set()
            continue
        row = re.match(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", line)
        if row and module is not None:
            surface[module].add(row.group(1))
    return surface


SURFACE = documented_surface()


def test_doc_lists_every_subpackage() -> None:
    packages = {
        f"crosslens.{p.name}"
        for p in (REPO / "crosslens").iterdir()
        if (p / "__init__.py").is_file() and p.name != "data"
    }
    assert packages - {"crosslens.recipes"} <= set(SURFACE), sorted(packages - set(SURFACE))
    assert all(len(names) >= 4 for names in SURFACE.values()), {m: len(n) for m, n in SURFACE.items()}


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_all_equals_documented_names(module: str) -> None:
    mod = importlib.import_module(module)
    exported = set(mod.__all__)
    assert exported == SURFACE[module], (
        f"{module}: exported but not in docs/API.md: {sorted(exported - SURFACE[module])}; "
        f"documented but not exported: {sorted(SURFACE[module] - exported)}"
    )
    unresolved = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not unresolved, f"{module}.__all__ names that do not resolve: {unresolved}"


def _imports_in(code: str) -> list[tuple[str, str]]:
    """(module, name) of every ``from crosslens... import name`` in a piece of Python."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "crosslens":
            found += [(node.module, alias.name) for alias in node.names]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "crosslens":
            found.append(("crosslens", node.attr))
    return found


def _user_facing_code() -> dict[str, str]:
    code = {}
    for block_no, block in enumerate(re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)):
        code[f"README.md block {block_no}"] = block
    for notebook in sorted((REPO / "tutorials").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code[notebook.name] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return code


def test_readme_and_tutorials_use_only_the_public_surface() -> None:
    code = _user_facing_code()
    assert any(name.endswith(".ipynb") for name in code) and any(name.startswith("README") for name in code)
    private = []
    n_imports = 0
    for where, source in code.items():
        for module, name in _imports_in(source):
            n_imports += 1
            submodule = f"{module}.{name}"
            if submodule in SURFACE or name in {"plots"}:  # a documented subpackage, or its figure module
                continue
            if name not in SURFACE.get(module, set()):
                private.append(f"{where}: from {module} import {name}")
    assert n_imports >= 10
    assert not private, "user-facing code imports names outside docs/API.md:\n" + "\n".join(private)


def test_top_level_import_stays_light() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, crosslens; print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    assert crosslens.CrosscoderTrainingRunner.__name__ == "CrosscoderTrainingRunner"  # resolves on first use


def test_the_causal_package_resolves_its_names_and_plots_on_first_use() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, crosslens.causal as c; light = 'torch' not in sys.modules; "
        "print(light, c.plots.__name__, c.run_causal_stage.__module__, sorted(c.__all__) == sorted(set(c.__all__)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "crosslens.causal.plots", "crosslens.causal.stage", "True"]
