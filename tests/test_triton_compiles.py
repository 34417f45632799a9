"""Every Triton kernel compiles for an H100 (``sm_90``) from the arguments its wrapper passes,
on a machine without a GPU: triton's compiler needs the target, not the device. The
interpreter's tests check the kernels' numbers; this checks what the interpreter does not, that
the compiler accepts them (``tl.dot``'s tile shapes and input types, casts, the ops a target
has), down to the cubin that ``ptxas`` writes, and that no thread spills registers to memory
(what a kernel costs for that shows only on a GPU, but whether it spills shows here).

Each wrapper runs on CPU tensors with its kernel replaced by a recorder of the launch, so the
signatures compiled are the ones the wrapper would launch with, for each dtype a step gives it
(float32, and bfloat16 under autocast), specialised as triton's JIT specialises them.

CI compiles with the triton these machines install (3.9); the GPU machine has 3.6, whose
registers differ. To check that one too:

    .venv/bin/python -m pip install -q --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36 TRITON_DEFAULT_FP_FUSION=1 .venv/bin/python -m pytest -q tests/test_triton_compiles.py

Only the compiler: triton 3.6's interpreter turns a scalar argument used as a loop bound into a
one-element array that numpy 2.4 (this venv's) will not convert, so the interpreter's tests run
with 3.9 alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from interpreted import HAS_TRITON, INTERPRETED
from test_gpu_step import benchmark_script
from test_sparse_step import S, random_pairs

from crosslens.kernels.plan import KernelPlan

pytestmark = pytest.mark.skipif(
    not HAS_TRITON or INTERPRETED, reason="needs triton, and its compiler rather than the interpreter"
)

H100 = ("cuda", 90, 32)
"""Backend, compute capability and warp size of the target."""

PLAN = KernelPlan(backend="triton")
"""The Triton kernels with the plan's default tunings, as CUDA's default plan launches them."""


def triton_kernels_of(plan: KernelPlan = PLAN) -> Any:
    """``TritonKernels(plan)``: the wrappers whose launches are compiled."""
    from crosslens.kernels.triton_sparse import TritonKernels

    return TritonKernels(plan)


class Launches:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the
    arguments instead of launching."""

    def __init__(self, kernel: Any):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def signature(kernel: Any, args: tuple, kwargs: dict) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int], list]]:
    """Triton's ``(signature, constexprs, attrs)`` of one launch of ``kernel``, specialised as the
    JIT specialises a launch for an H100 (triton's own ``specialize_impl``): ``attrs`` marks the
    pointers and integers divisible by 16, and an integer equal to 1 (a unit stride, say) becomes
    a constant, which is what lets the compiler vectorise the loads it offsets."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    backend = make_backend(GPUTarget(*H100))
    values = {**dict(zip(kernel.arg_names, args)), **kwargs}
    types, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = values[name]
        if param.is_constexpr:
            kind, key = "constexpr", value
        else:
            specialize, align = not param.do_not_specialize, not param.do_not_specialize_on_alignment
            kind, key = native_specialize_impl(backend, value, param.is_const, specialize, align)
        types[name] = kind
        if kind == "constexpr":
            constexprs[name] = key
        elif isinstance(key, str) and key:
            attrs[(i,)] = backend.parse_attr(key)
    return types, constexprs, attrs


def compile_recorded(module: Any, name: str, run: Any, monkeypatch: pytest.MonkeyPatch, check: Any = None) -> int:
    """Run ``run()`` with ``module.name`` recording its launches, then compile each distinct
    launch for the H100, and pass each compiled kernel to ``check``; returns how many were
    compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(module, name)
    launches = Launches(kernel)
    monkeypatch.setattr(module, name, launches)
    run()
    assert launches.calls, f"{name} was never launched"
    seen = set()
    for args, kwargs in launches.calls:
        types, constexprs, attrs = signature(kernel, args, kwargs)
        key = (tuple(types.items()), tuple(constexprs.items()), tuple(attrs))
        if key in seen:
            continue
        seen.add(key)
        options = {key: kwargs[key] for key in LAUNCH_OPTIONS if key in kwargs}
        compiled = triton.compile(ASTSource(kernel, types, constexprs, attrs), target=GPUTarget(*H100), options=options)
        assert compiled.asm["cubin"], f"{name} {types} {constexprs}: no cubin"
        usage = resource_usage(compiled.asm["cubin"])
        if usage is not None:  # shown by `pytest -rP`: what the launch asks of each thread
            registers, spilled = usage
            print(f"{name} {constexprs} {options}: {registers} registers, {spilled} bytes of stack a thread")
            assert spilled == 0, f"{name} {types} {constexprs} {options}: {spilled} bytes of stack a thread"
        if check is not None:
            check(compiled)
    return len(seen)


LAUNCH_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")
"""A launch's keywords that are the compiler's options, not the kernel's arguments."""


def resource_usage(cubin: bytes) -> tuple[int, int] | None:
    """The registers and the stack (spilled registers, in bytes) a thread of this cubin's kernel
    uses, as ``cuobjdump`` (shipped with triton's CUDA backend) reports them; None where there is
    no ``cuobjdump``."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    registers, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    assert registers and stack, usage
    return int(registers.group(1)), int(stack.group(1))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # what a launch on the device compiles with


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, S])
def test_the_sparse_decode_kernels_compile_for_an_h100(groups, dtype, monkeypatch):
    from crosslens.kernels import triton_sparse

    pairs, W_FGD, values_AG, grad_NGD = random_pairs("cpu", groups)
    W_FGD, values_AG, grad_NGD = W_FGD.detach(), values_AG.detach(), grad_NGD.to(dtype)
    read_FGD = W_FGD.to(dtype)  # the rounded copy a step reads under autocast
    scale_FS = torch.rand(W_FGD.shape[0], 2)

    kernels = triton_kernels_of()

    def gathers() -> None:
        kernels.decode(read_FGD, values_AG, pairs)
        kernels.weight_grad(grad_NGD, values_AG, pairs, dtype=torch.float32)
        kernels.weight_grad(grad_NGD, values_AG, pairs, (W_FGD, scale_FS), dtype=torch.float32)
        # a micro-batched step's: added to the block's float32 sum
        kernels.weight_grad(grad_NGD, values_AG, pairs, out=torch.zeros(W_FGD.shape))

    assert compile_recorded(triton_sparse, "_gather_rows", gathers, monkeypatch) == 4
    dots = lambda: kernels.values_grad(grad_NGD, read_FGD, pairs, dtype=torch.float32)  # noqa: E731
    assert compile_recorded(triton_sparse, "_pair_dots", dots, monkeypatch) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N, D", [(70, 40), (70, 64), (144, 40), (144, 64)])
def test_the_window_kernel_compiles_for_an_h100(dtype, N, D, monkeypatch):
    """Both tiles: the wide one where bfloat16 rows and tokens are aligned, the narrow one
    elsewhere."""
    from crosslens.kernels import triton_sparse

    window = window_launch(dtype, N, D)  # d_in not a multiple of the tile's block, or aligned
    wide = dtype == torch.bfloat16 and D % triton_sparse.ALIGNMENT == 0 == N % triton_sparse.ALIGNMENT
    tile = PLAN.window_tile if wide else PLAN.window_tile_narrow

    def launched(compiled: Any) -> None:
        assert compiled.metadata.num_warps == tile.warps and compiled.metadata.num_stages == tile.stages

    assert compile_recorded(triton_sparse, "_window_dots", window, monkeypatch, launched) == 1


def window_launch(dtype: torch.dtype, N: int, D: int, plan: KernelPlan = PLAN) -> Any:
    """A call of ``window_dots`` at 3 snapshots, 90 features, ``N`` tokens and d_in ``D``, with
    ``plan``'s tiles."""
    kernels = triton_kernels_of(plan)
    g = torch.Generator().manual_seed(1)
    S, F_ = 3, 90  # past one tile on each axis (with the narrow tile)
    grad_SND = torch.randn(S, N, D, generator=g).to(dtype)
    W_FSD = torch.randn(F_, S, D, generator=g).to(dtype)
    h_NF = torch.randn(F_, N, generator=g).to(dtype).T  # feature-major, as the encoder leaves it
    window_NF = torch.rand(N, F_, generator=g) < 0.1
    norms_FS, t_F = torch.rand(F_, S, generator=g), torch.rand(F_, generator=g)
    return lambda: kernels.window_dots(grad_SND, W_FSD, h_NF, window_NF, norms_FS, t_F, 0.05)


def swept_tiles() -> tuple:
    """``benchmarks/gpu.py``'s ``WINDOW_TILES``: the launches ``--window-tiles`` times."""
    return benchmark_script("gpu").WINDOW_TILES


@pytest.mark.parametrize("tile", swept_tiles(), ids=str)
def test_every_window_launch_the_benchmark_sweeps_compiles_for_an_h100(tile, monkeypatch):
    """Each of ``WINDOW_TILES`` in bfloat16 at an aligned shape, with its tile and options."""
    from crosslens.kernels import triton_sparse

    plan = dataclasses.replace(PLAN, window_tile=tile)

    def launched(compiled: Any) -> None:
        assert (compiled.metadata.num_warps, compiled.metadata.num_stages) == (tile.warps, tile.stages)

    assert (
        compile_recorded(
            triton_sparse, "_window_dots", window_launch(torch.bfloat16, 144, 64, plan), monkeypatch, launched
        )
        == 1
    )


@pytest.mark.parametrize("copied", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_the_adam_kernels_compile_for_an_h100(scaled, copied, monkeypatch):
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(2)
    n = 3 * triton_adam.BLOCK + 112  # not whole blocks; a multiple of 16, as a crosscoder's sizes are
    p, grad = torch.randn(n, generator=g), torch.randn(n, generator=g)
    m, v = torch.zeros(n), torch.zeros(n)
    m_low, v_low = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    hyper = (0.9, 0.999, 1e-3, math.sqrt(1 - 0.999), 1e-8)
    scale = torch.tensor(2.0) if scaled else None
    copy = torch.empty(n, dtype=torch.bfloat16) if copied else None

    def float32_state() -> None:
        triton_adam.update(p, grad, m, v, scale, hyper, copy)

    def bfloat16_state() -> None:
        triton_adam.chunk_update(
            p, grad, m_low, v_low, -(2**62) - 5, 2**32, scale, hyper, copy
        )  # a key and start past 32 bits

    def vectorised(compiled: Any) -> None:
        # a pass bound by memory: each thread moves its float32 elements 16 bytes at a time
        assert "ld.global.v4.b32" in compiled.asm["ptx"], "the Adam kernel's loads are not vectorised"

    def both() -> None:
        float32_state()
        bfloat16_state()

    assert compile_recorded(triton_adam, "_update", both, monkeypatch, vectorised) == 2


@pytest.mark.parametrize("copied", [False, True])
@pytest.mark.parametrize("d", [768, 40])
def test_the_adam_kernel_writing_row_norms_compiles_for_an_h100(d, copied, monkeypatch):
    """The decoder's update, which also sums its rows' norms: Ge et al.'s d_in (768, three
    column tiles a row) and a short row (one tile, several rows a program), both moment dtypes."""
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(3)
    shape = (37, 2, d)  # [d_sae, n_snapshots, d_in]: not a whole number of programs' rows
    p, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    m, v = torch.zeros(shape), torch.zeros(shape)
    m_low, v_low = torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.bfloat16)
    hyper = (0.9, 0.999, 1e-3, math.sqrt(1 - 0.999), 1e-8)
    copy = torch.empty(shape, dtype=torch.bfloat16) if copied else None
    norms = torch.empty(shape[:-1])

    def both() -> None:
        triton_adam.update(p, grad, m, v, torch.tensor(2.0), hyper, copy, norms)
        triton_adam.chunk_update(p, grad, m_low, v_low, -(2**62) - 5, 0, torch.tensor(2.0), hyper, copy, norms)

    def vectorised(compiled: Any) -> None:
        if d % 16 == 0:  # rows that start 16-byte aligned: loaded 16 bytes at a time
            assert "ld.global.v4.b32" in compiled.asm["ptx"], "the row kernel's loads are not vectorised"

    assert compile_recorded(triton_adam, "_row_pass", both, monkeypatch, vectorised) == 2


@pytest.mark.parametrize("d", [768, 40])
def test_the_row_norms_kernel_compiles_for_an_h100(d, monkeypatch):
    from crosslens.kernels import triton_adam

    x = torch.randn(37, 2, d, generator=torch.Generator().manual_seed(4))
    assert compile_recorded(triton_adam, "_row_pass", lambda: triton_adam.row_norms(x), monkeypatch) == 1


@pytest.mark.parametrize(
    "dtype, threshold_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["float32", "bfloat16-h", "bfloat16-h-and-thresholds"],
)
@pytest.mark.parametrize("layout", ["token-major", "feature-major"])
def test_the_entry_masks_kernel_compiles_for_an_h100_rounding_as_torch(layout, dtype, threshold_dtype, monkeypatch):
    """Its distances ``h * norm - t`` round twice, as torch's do: the launch turns off the
    contraction into one fused multiply-add that the device's default would make (shown here by
    compiling the same launch with it on); with the thresholds in bfloat16 too, as under autocast."""
    import triton
    from test_sparse_step import entry_operands
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crosslens.kernels import triton_sparse

    operands = entry_operands("cpu", layout, dtype, threshold_dtype)
    kernel = triton_sparse._entry_masks

    def two_roundings(compiled: Any) -> None:
        ptx = compiled.asm["ptx"]
        assert "mul.rn.f32" in ptx and "sub.rn.f32" in ptx and "fma.rn.f32" not in ptx, "the distances are contracted"

    run = lambda: triton_kernels_of().entry_masks(*operands, 0.3)  # noqa: E731
    assert compile_recorded(triton_sparse, "_entry_masks", run, monkeypatch, two_roundings) == 1
    recorder = Launches(kernel)
    monkeypatch.setattr(triton_sparse, "_entry_masks", recorder)
    run()
    ((args, kwargs),) = recorder.calls
    types, constexprs, attrs = signature(kernel, args, kwargs)
    fused = triton.compile(
        ASTSource(kernel, types, constexprs, attrs),
        target=GPUTarget(*H100),
        options={"num_warps": kwargs["num_warps"], "enable_fp_fusion": True},
    )
    assert "fma.rn.f32" in fused.asm["ptx"], "a fused multiply-add is what the check above would catch"


def test_the_entry_masks_kernel_reads_h_16_bytes_at_a_time_where_the_shape_allows(monkeypatch):
    """At a shape whose sizes are multiples of 16 (Ge et al.'s 2048 tokens by 24,576 features),
    each thread reads its elements of ``h`` 16 bytes at a time and writes its mask bytes 8 at a
    time, either way round."""
    from crosslens.kernels import triton_sparse

    g = torch.Generator().manual_seed(9)
    h_NF = torch.randn(256, 96, generator=g)
    low_F, high_F, t_F = (torch.rand(96, generator=g) for _ in range(3))

    def vectorised(compiled: Any) -> None:
        ptx = compiled.asm["ptx"]
        assert "ld.global.v4.b32" in ptx and "st.global.v2.b32" in ptx, "the pass's reads or writes are not vectorised"

    def both_layouts() -> None:
        triton_kernels_of().entry_masks(h_NF, low_F, high_F, t_F, 0.3)
        triton_kernels_of().entry_masks(h_NF.T.contiguous().T, low_F, high_F, t_F, 0.3)

    assert compile_recorded(triton_sparse, "_entry_masks", both_layouts, monkeypatch, vectorised) == 2
