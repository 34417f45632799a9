"""docs/DESIGN.md's table of what runs where is what each device's default plan runs, and the
files and names the design names exist.

The table ("What runs where") is read from the document; each of its device columns is held
against what the code chooses for that device's default run: ``KernelPlan.resolve`` for the
device, under the precision the runner picks there (float32 on a CPU, bfloat16 autocast on
CUDA), passed to the functions that make each choice in a step (the JumpReLU paths the plan
allows, the pairs' kernels it hands out, the optimizer it makes). A change to either side alone
fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import torch

import crosslens.crosscoders as cc
from crosslens.kernels.adam import adam_update, row_norms_of_the_pass
from crosslens.kernels.jumprelu_dense import block_function
from crosslens.kernels.jumprelu_ops import forward_block
from crosslens.kernels.plan import COMPILE_ENV, JUMPRELU_PATHS, KernelPlan, triton_installed
from crosslens.kernels.sparse import kernels_for
from crosslens.training.config import resolved_autocast
from crosslens.training.optim import KernelAdam, make_optimizer, writes_row_norms

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
DEVICES = {"CPU": "cpu", "CUDA": "cuda"}
"""The table's device columns, and the device each stands for."""


def design_table() -> dict[str, dict[str, tuple[str, ...]]]:
    """Row (part of the step) -> column -> the names in backticks in that cell, in order."""
    lines = DESIGN.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| part of the step |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = {name: tuple(re.findall(r"`([^`]+)`", cell)) for name, cell in zip(header, cells)}
    return table


def _module(function) -> str:
    return function.__module__.rsplit(".", 1)[1]


def _topk_decode(plan: KernelPlan) -> str:
    """What a TopK step whose code is sparse decodes with under ``plan``, outside a micro-batched step."""
    _, _, train_cls, cfg_cls = cc.ARCHITECTURES["topk_crosscoder"]
    sae = train_cls(cfg_cls(d_in=4, d_sae=64, n_snapshots=2, k=2))
    sae.use_kernel_plan(plan)
    assert sae.uses_sparse_decode
    pairs_plan = sae._kernels()
    return "embedding_bag" if pairs_plan is None else type(kernels_for(pairs_plan)).__name__


def _float32_adam(device: str, plan: KernelPlan) -> tuple[str, ...]:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}]
    optimizer = make_optimizer(
        params, lr=1e-3, betas=(0.9, 0.999), state_dtype="float32", seed=0, device=torch.device(device), plan=plan
    )
    passes = (_module(adam_update(plan, chunked=False)),) if isinstance(optimizer, KernelAdam) else ()
    return (type(optimizer).__name__, *passes)


def _step_norms(plan: KernelPlan) -> str:
    if not writes_row_norms("float32", plan):
        return "weight_row_norms"  # the step computes them
    written_by = row_norms_of_the_pass(plan)
    return f"{_module(written_by)}.{written_by.__name__}"


def running(device: str) -> dict[str, tuple[str, ...]]:
    """Part of the step -> what the default run on ``device`` runs it with, from the code."""
    plan = KernelPlan.resolve(device)
    autocast = resolved_autocast("auto", device) == "bfloat16"
    chain, _ = block_function(forward_block, 64, 2, 8, torch.device(device), plan)
    return {
        "JumpReLU gate, scores, decode": plan.jumprelu_paths(device, autocast),
        "elementwise chains": ("eager" if chain is forward_block else "compiled",),
        "sums over active pairs": (type(kernels_for(plan)).__name__,),
        "TopK/BatchTopK sparse decode": (_topk_decode(plan),),
        "Adam, float32 moments": _float32_adam(device, plan),
        "Adam, bfloat16 moments": (_module(adam_update(plan, chunked=True)),),
        "decoder norms the step reads": (_step_norms(plan),),
    }


@pytest.mark.parametrize("column", list(DEVICES))
def test_what_runs_where_is_what_each_devices_plan_runs(column, monkeypatch):
    pytest.importorskip("triton")  # CUDA's default plan is the one with triton installed
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    table = design_table()
    code = running(DEVICES[column])
    assert set(table) == set(code), "DESIGN.md's rows and the parts of the step this test reads differ"
    differ = {part: (table[part][column], names) for part, names in code.items() if table[part][column] != names}
    assert not differ, f"DESIGN.md's {column} column against the code (documented, running): {differ}"


def test_topk_pairs_kernels_chooses_the_decode_on_any_backend():
    """The plan's field, not the backend alone, says how TopK's sparse decode sums its pairs."""
    assert _topk_decode(KernelPlan(backend="eager")) == "embedding_bag"
    assert _topk_decode(KernelPlan(backend="eager", topk_pairs_kernels=True)) == "EagerKernels"
    assert _topk_decode(KernelPlan(backend="triton", topk_pairs_kernels=False)) == "embedding_bag"
    assert KernelPlan().describe("cpu").endswith("TopK decode from its pairs where k is sparse enough")
    assert (
        KernelPlan(topk_pairs_kernels=True)
        .describe("cpu")
        .endswith("where k is sparse enough, through the pairs' sums")
    )


def test_the_jumprelu_paths_are_named_in_the_order_tried():
    """Every JumpReLU path a plan allows is one of the recorded names, in their order, the
    reference last."""
    for sparse, split in ((None, False), (None, True), (True, False), (False, False)):
        for device, autocast in (("cpu", False), ("cpu", True), ("cuda", False), ("cuda", True)):
            paths = KernelPlan(jumprelu_sparse=sparse, jumprelu_split=split).jumprelu_paths(device, autocast)
            assert list(paths) == sorted(paths, key=JUMPRELU_PATHS.index)
            assert paths[-1] == ("pairs" if sparse else "per snapshot")


def test_the_printout_names_the_jumprelu_step_the_device_takes():
    """A run's plan line says what jumprelu_paths has the step try on its device: a CPU's default plan
    never takes the pairs, so it does not say it takes them where they pay."""
    cpu, cuda = KernelPlan.resolve("cpu"), dataclasses.replace(KernelPlan.resolve("cpu"), jumprelu_split=True)
    assert cpu.jumprelu_paths("cpu", False) == ("entry classes", "per snapshot")
    assert "JumpReLU step by entry classes where it pays, else from the per-snapshot code;" in cpu.describe("cpu")
    assert "JumpReLU step from the per-snapshot code;" in cpu.describe("cpu", autocast=True)
    assert "JumpReLU step from the active pairs where it pays, else by entry classes" in cpu.describe("cuda")
    assert (
        "JumpReLU step from the active pairs where it pays, else split between the shared code and the pairs where it "
        "pays, else from the per-snapshot code;" in cuda.describe("cuda", autocast=True)
    )
    assert "JumpReLU step from the active pairs always;" in KernelPlan(jumprelu_sparse=True).describe("cpu")


def test_a_plan_refuses_the_split_step_it_would_ignore():
    """jumprelu_split chooses between the pairs and the split step where the step chooses (jumprelu_sparse
    None); with the pairs always or never it would be dropped without a word, so it is refused, and resolve's
    CUDA default leaves it off where the run's settings fix jumprelu_sparse."""
    for sparse in (True, False):
        with pytest.raises(
            ValueError, match=f"jumprelu_split=True needs jumprelu_sparse=None.*jumprelu_sparse={sparse}"
        ):
            KernelPlan(jumprelu_split=True, jumprelu_sparse=sparse)
        plan = KernelPlan.resolve("cuda", jumprelu_sparse=sparse)  # no device needed: only the choice is made
        assert not plan.jumprelu_split and plan.jumprelu_sparse is sparse
    assert KernelPlan.resolve("cuda").jumprelu_split == triton_installed()


def test_a_recorded_plan_of_pairs_always_or_never_reads_as_one_that_never_split():
    """A CUDA run given --sparse-step on/off recorded jumprelu_split True beside a set jumprelu_sparse (its step
    never split there); its run.json is read back as the plan it ran, not refused."""
    for sparse in (True, False):
        recorded = {**KernelPlan().to_dict(), "jumprelu_split": True, "jumprelu_sparse": sparse}
        plan = KernelPlan.from_dict(recorded)
        assert plan.jumprelu_sparse is sparse and plan.jumprelu_split is False


FILE_SUFFIXES = {
    "pt",
    "lock",
    "json",
    "jsonl",
    "safetensors",
    "html",
    "md",
    "txt",
    "yaml",
    "csv",
    "db",
    "png",
    "js",
    "css",
}
"""Suffixes that make ``name.suffix`` a file's name, not a module's attribute."""


def _python_files() -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for folder in ("crosslens", "benchmarks", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            files.setdefault(path.name, []).append(path)
    return files


def _names_something(parts: list[str], modules: dict[str, list[Path]]) -> bool:
    """Whether ``parts`` (a dotted name) is a module path followed by names defined in it: the
    module as a file name (``sources.recorded_suite``) or with its folders
    (``dashboards.sources.recorded_suite``)."""
    for split in range(len(parts) - 1, 0, -1):
        *folders, module = parts[:split]
        tail = "/".join([*folders, module]) + ".py"
        for path in modules.get(module, []):
            if str(path).endswith("/" + tail) and _has(path, parts[split:]):
                return True
    return False


def test_the_design_names_files_and_names_that_exist():
    """Each ``file.py`` (or ``folder/file.py``) in backticks in DESIGN.md is a file of the
    repository, and each ``module.name`` whose module is a crosslens file is a name of it."""
    files = _python_files()
    modules = {
        name.removesuffix(".py"): paths
        for name, paths in files.items()
        if any(ROOT / "crosslens" in path.parents for path in paths)
    }
    missing = []
    for token in re.findall(r"`([^`\s]+)`", DESIGN.read_text(encoding="utf-8")):
        if token.endswith(".py"):
            if not any(str(path).endswith("/" + token) for path in files.get(token.rsplit("/", 1)[-1], [])):
                missing.append(token)
        elif re.fullmatch(r"[a-z_]+(\.[A-Za-z_]+)+", token) and (
            token.split(".")[0] in modules or (ROOT / "crosslens" / token.split(".")[0]).is_dir()
        ):
            if token.rsplit(".", 1)[1] in FILE_SUFFIXES:  # a file a module names, as trainer_state.pt
                continue
            if not _names_something(token.split("."), modules):
                missing.append(token)
    assert not missing, f"DESIGN.md names what is not there: {missing}"


def _has(path: Path, attributes: list[str]) -> bool:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] != "crosslens":
        return False
    target = importlib.import_module(".".join(parts).removesuffix(".__init__"))
    for attribute in attributes:
        if not hasattr(target, attribute):
            return False
        target = getattr(target, attribute)
    return True
