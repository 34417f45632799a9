"""No file of the repository rebinds a module's constant: a different code path is a different
:class:`~crosslens.kernels.plan.KernelPlan` (or argument), built and passed, never a
process-wide switch flipped from outside.

Every Python file of the checkout (package, tests, benchmarks, scripts) is read with ``ast``. A
constant is a name in upper case (``WINDOW_TILE``, ``_COMPILE``; not a one-letter weight name such
as TransformerLens's ``W_E``). Refused: an assignment to ``module.CONSTANT`` (plain, augmented or
annotated), ``setattr(module, "CONSTANT", ...)`` and ``monkeypatch.setattr(module, "CONSTANT",
...)`` or its dotted-string form, for any module of this repository, and a function's ``global
CONSTANT``; the same for a host library's modules (huggingface_hub reads its cache folder once, at
import: the test session fixes it to a link that each test re-points, ``tests/hf_cache.py``), and
an assignment to any of torch's process-wide switches under ``torch.backends`` (lower case there:
``allow_tf32``), which have setters and scoped ``flags`` context managers instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import crosslens

REPO = Path(crosslens.__file__).resolve().parent.parent
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9]+(_[A-Z0-9]+)*$")
FOLDERS = ("crosslens", "tests", "benchmarks", "scripts")


def python_files() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (REPO / folder).rglob("*.py"))


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def rebindings(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of every rebinding of a constant in ``source``."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and CONSTANT.match(part.attr):
                    found.append((node.lineno, f"assigns {ast.unparse(part)}"))
            if isinstance(target, ast.Attribute) and ast.unparse(target.value).startswith("torch.backends"):
                found.append((node.lineno, f"assigns {ast.unparse(target)}"))
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name == "setattr" and node.args:
                first = _string(node.args[0])
                if first is not None and CONSTANT.match(first.rsplit(".", 1)[-1]):  # monkeypatch's "a.b.NAME"
                    found.append((node.lineno, f"setattr of {first}"))
                second = _string(node.args[1]) if len(node.args) > 1 else None
                if second is not None and CONSTANT.match(second):
                    found.append((node.lineno, f"setattr of {ast.unparse(node.args[0])}.{second}"))
        if isinstance(node, ast.Global):
            found.extend((node.lineno, f"global {name}") for name in node.names if CONSTANT.match(name))
    return found


def test_the_detector_sees_every_form():
    source = (
        "import m\n"
        "m.WINDOW_TILE = 1\n"
        "m.sub.GATHER_SHARE += 2\n"
        "setattr(m, 'BACKEND', 'eager')\n"
        "monkeypatch.setattr(m, '_COMPILE', True)\n"
        "monkeypatch.setattr('crosslens.x.KERNEL_ADAM', False)\n"
        "def f():\n    global ROWS\n    ROWS = 3\n"
        "self.value = 1\nm.lower = 2\nmonkeypatch.setattr(m, 'function', None)\nmodel.embed.W_E = 0\n"
        "import huggingface_hub.constants as hub\nmonkeypatch.setattr(hub, 'HF_HUB_CACHE', '/tmp')\n"
        "torch.backends.cuda.matmul.allow_tf32 = False\ntorch.set_float32_matmul_precision('highest')\n"
    )
    assert sorted(line for line, _ in rebindings(source)) == [2, 3, 4, 5, 6, 8, 15, 16]


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_rebinds_a_constant(path: Path):
    found = rebindings(path.read_text(encoding="utf-8"))
    assert not found, (
        f"{path.relative_to(REPO)} rebinds constants ("
        + "; ".join(f"line {line}: {what}" for line, what in found)
        + "): build a KernelPlan (dataclasses.replace) or pass an argument instead"
    )
