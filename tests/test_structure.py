"""The package's rooms stay a size a reader can hold: no module over 600 lines, no function over 80.

A module's size is its count of lines (newline characters) as stored; a function's runs from
its ``def`` line to its last line (``ast``'s ``end_lineno``), nested functions and methods
counted as functions of their own too. A piece that outgrows its room is split along a seam of
its own (one concern per module, one step per function), not cut at an arbitrary line.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

import crosslens

PACKAGE_ROOT = Path(crosslens.__file__).resolve().parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE_ROOT.parent))


def oversized(source: str, name: str) -> list[str]:
    """One line per piece of ``source`` (the module ``name``) over its limit."""
    found = []
    lines = source.count("\n")
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES} a module)")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(
                    f"{name}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES} a function)"
                )
    return found


def test_no_module_or_function_is_over_its_size():
    found = [line for path in _modules() for line in oversized(path.read_text(encoding="utf-8"), _name(path))]
    if found:
        pytest.fail("split these along their seams:\n" + "\n".join(found), pytrace=False)


def test_the_sizes_are_counted_as_documented():
    """The check above is only as good as its counting: a module of 601 lines and a function of
    81 (its ``def`` line to its last, decorators not counted) are over; 600 and 80 are not; a
    nested function and a method count on their own."""
    body = "".join(f"    x{i} = {i}\n" for i in range(79))

    def function(name: str, extra: str = "") -> str:
        return f"@decorator\ndef {name}():\n{body}{extra}"

    at_limit = function("fits")
    assert oversized(at_limit, "m.py") == []
    over = function("long", "    return 0\n")
    assert oversized(over, "m.py") == [f"m.py:2 long: 81 lines (at most {MAX_FUNCTION_LINES} a function)"]
    nested = "class Holder:\n" + "".join("    " + line + "\n" for line in over.splitlines())
    assert oversized(nested, "m.py") == [f"m.py:3 long: 81 lines (at most {MAX_FUNCTION_LINES} a function)"]
    assert oversized("x = 0\n" * 600, "m.py") == []
    assert oversized("x = 0\n" * 601, "m.py") == [f"m.py: 601 lines (at most {MAX_MODULE_LINES} a module)"]


def shadowed_submodules(package: ModuleType) -> list[str]:
    """The submodules of ``package`` (and of its subpackages) that a package attribute of the same
    name hides: ``import package.name as m`` then binds the attribute, not the module."""
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        parent_name, _, leaf = info.name.rpartition(".")
        module = importlib.import_module(info.name)
        held = getattr(importlib.import_module(parent_name), leaf, module)
        if held is not module:
            found.append(f"{info.name} (hidden by {parent_name}.{leaf}, a {type(held).__name__})")
    return found


def test_no_package_attribute_hides_a_submodule():
    found = shadowed_submodules(crosslens)
    if found:
        pytest.fail("rename these modules, so their import gives the module:\n" + "\n".join(found), pytrace=False)


def test_a_hidden_submodule_is_found(tmp_path, monkeypatch):
    package = tmp_path / "hiddenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("from hiddenpkg.tool import tool\nfrom hiddenpkg import plain\n")
    (package / "tool.py").write_text("def tool():\n    return 1\n")
    (package / "plain.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import hiddenpkg

    try:
        assert shadowed_submodules(hiddenpkg) == ["hiddenpkg.tool (hidden by hiddenpkg.tool, a function)"]
    finally:
        for name in [n for n in sys.modules if n == "hiddenpkg" or n.startswith("hiddenpkg.")]:
            del sys.modules[name]
