"""Crosscoder training on a CUDA GPU against the hardware's floors, measured in the same run.

1. The bf16 matmul peak: timed ``[n, n] x [n, n]`` bfloat16 matmuls.
2. The floors at the benchmarked shape (``B`` tokens, ``S`` snapshots, ``d_in`` D, ``d_sae`` F):
   - dense: the step's 5 bfloat16 matmuls shaped ``[B, S*D] x [S*D, F]`` (encode forward and
     weight gradient, decode forward, its input and weight gradients) plus the optimizer's
     pass (the gradient norm and the step's Adam over the crosscoder's float32 parameters:
     crosslens's one-pass kernel on CUDA; the pass is also printed for torch's fused Adam, and
     writing the bfloat16 weights that the next step under autocast reads);
   - sparse: the encoder's 2 matmuls (what a sparse decode leaves) plus the optimizer's pass.
3. Every architecture's ``CrosscoderTrainer.step`` in float32 and under bfloat16 autocast,
   freshly initialised and at a trained crosscoder's sparsity: the ReLU bias or the
   JumpReLU threshold is set, by bisection on one batch, so that the measured L0 lands at
   ``--l0`` (TopK/BatchTopK: ``k`` sets it, and their trained rows have a ``--dead`` share of
   features that the trainer counts as dead, spread evenly, so that the auxiliary loss decodes
   as it does in a long run). Each row: the L0 reached, tokens/s, the
   fraction of its floor (sparse for a trained JumpReLU and TopK/BatchTopK, dense
   otherwise), the peak memory (``torch.cuda.max_memory_allocated``) beside the peak
   ``crosslens plan`` predicts for it (:func:`~crosslens.training.memory.step_peak_bytes`,
   the row's precision, Adam state and micro-batches) and their ratio. Where a row has
   a sparse implementation it is measured beside the dense one (``step_paths``): JumpReLU
   at the trained sparsity with the plan's ``jumprelu_sparse`` off and on, and young
   (:func:`set_young`: some steps into a run, its code still dense) by its default step (split
   on CUDA, the plan's ``jumprelu_split``) and by the dense kernels, TopK/BatchTopK through
   ``embedding_bag`` and through the Triton gather-sum kernels. Each row's
   :class:`~crosslens.kernels.plan.KernelPlan` is the device's default with the
   row's path changed (:func:`row_plan`).

With ``--window-tiles`` it times the JumpReLU window kernel (``TritonKernels.window_dots``) at
the shape in bfloat16 for each launch in :data:`WINDOW_TILES`, checks each one's sums against
the first's, and launches the fastest in the rows that follow.

With ``--gathers`` it first times the sparse decode's three Triton gathers on their own, at
the shape's TopK pairs (``k`` per token), for each block size and warp count it tries, with the
rows read in bfloat16 (autocast) and float32: milliseconds, the bandwidth that the rows and
gradient rows gathered would take from memory (more than the memory's where the L2 cache holds
rows that several pairs read), and the speed-up over the default launch, timed in the same run.

With ``--repeat-steps N`` it times no rows: for each architecture, precision and state asked for,
it trains N steps of the default path twice from the same seed and batch, and says whether the
parameters came out the same bytes, or which differ and by how much at most: what a run's
reproducibility on the device can rest on.

Without CUDA it prints one line and exits 0. ``--small`` runs the same logic on the CPU at
a tiny shape (fractions and memory there mean nothing; it checks that the script works).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py                     # Ge et al.: S 32, d_in 768, d_sae 24576, B 2048
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --d-sae 98304 --only jumprelu_crosscoder --optimizer-state bfloat16 --micro-batches 8
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --small
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --only topk_crosscoder --state trained --profile   # where a row's time goes
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --only jumprelu_crosscoder --memory-peak          # what its peak holds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --only topk_crosscoder --gathers   # the gathers' launch sizes
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --precision bf16 --state trained --repeat-steps 5   # the same bytes twice?
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import crosslens.crosscoders as cc
from crosslens.architectures import SPARSITY_FIELDS
from crosslens.core.devices import counted_cuda_syncs
from crosslens.kernels.jumprelu_pairs import ActiveEntries, active_entries
from crosslens.kernels.jumprelu_split import everywhere_and_rest
from crosslens.kernels.plan import KernelPlan, WindowTile
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
from crosslens.training.memory import OPTIMIZER_STATES, parameter_counts, step_peak_bytes
from crosslens.training.optim import clipped_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiling import print_memory_peak, print_profile, sync

SMALL = {"S": 2, "d_in": 8, "d_sae": 64, "batch": 32, "k": 4, "l0": 8, "steps": 2, "peak_n": 64}


def seconds_per_call(fn: Callable[[], None], device: str, n: int) -> float:
    fn()  # warm-up: kernels chosen, memory allocated
    sync(device)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int, device: str, rounds: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, rounds)


OPTIMIZER_PASSES = ("plain", "step", "copies", "torch")
"""The optimizer's passes timed: crosslens's Adam (its kernel on CUDA) writing nothing but the
parameters and moments; the same as the trainer runs it, writing the decoder's row norms too where
it does (:func:`crosslens.training.optim.writes_row_norms`); that, also writing the bfloat16 weights
the next step reads under autocast; and torch's fused Adam (float32 moments only)."""


def optimizer_pass(S: int, D: int, F: int, device: str, state: str, kind: str = "step") -> Callable[[], None]:
    """The optimizer's pass over a crosscoder's parameters (gradient norm, clip folded into Adam),
    of the ``kind`` :data:`OPTIMIZER_PASSES` names."""
    from crosslens.crosscoders.collectives import LocalCollectives
    from crosslens.kernels.step_weights import WeightWrites
    from crosslens.training.optim import make_optimizer, writes_row_norms

    module = torch.nn.Module()
    for name, count in parameter_counts(S, D, F, "jumprelu_crosscoder").items():
        shape = (F, S, D) if name == "W_dec" else (count,)  # the decoder by rows, whose norms the step reads
        p = torch.nn.Parameter(torch.zeros(shape, device=device))
        p.grad = torch.randn(shape, device=device)
        module.register_parameter(name, p)
    params = [{"params": list(module.parameters())}]
    plan = KernelPlan.resolve(device)
    norms = kind in ("step", "copies") and writes_row_norms(state, plan)
    copies = (module.W_enc, module.W_dec) if kind == "copies" else ()
    writes = WeightWrites(copies, torch.bfloat16 if copies else None, (module.W_dec,) if norms else ())
    if kind == "torch":
        opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), fused=True)
    else:
        opt = make_optimizer(
            params, lr=1e-4, betas=(0.9, 0.999), state_dtype=state, seed=0, device=torch.device(device), plan=plan
        )

    def run() -> None:
        clipped_step(opt, module, LocalCollectives(), 1.0, fused=True, writes=writes)  # what it writes is let go

    return run


def matmul_seconds(a: argparse.Namespace, device: str) -> tuple[float, float]:
    """Seconds of the encoder's 2 bf16 matmuls (forward, weight gradient) and of all 5 (with the
    decoder's forward, input and weight gradients) at the benchmarked shape."""
    B, K, F = a.batch, a.S * a.d_in, a.d_sae
    x = torch.randn(B, K, device=device, dtype=torch.bfloat16)
    W = torch.randn(K, F, device=device, dtype=torch.bfloat16)
    h = torch.randn(B, F, device=device, dtype=torch.bfloat16)
    encoder = seconds_per_call(lambda: (x @ W, x.T @ h), device, a.rounds)
    return encoder, encoder + seconds_per_call(lambda: (h @ W.T, h @ W.T, h.T @ x), device, a.rounds)


def floors(a: argparse.Namespace, device: str) -> dict[str, float]:
    """Seconds per step of the dense and sparse floors at the benchmarked shape (with the step's
    own optimizer pass), and of each optimizer pass (:data:`OPTIMIZER_PASSES`) alone."""
    matmuls2, matmuls5 = matmul_seconds(a, device)
    F = a.d_sae
    passes = {}
    for kind in OPTIMIZER_PASSES:
        if kind != "torch" or a.optimizer_state == "float32":
            passes[kind] = seconds_per_call(
                optimizer_pass(a.S, a.d_in, F, device, a.optimizer_state, kind), device, a.rounds
            )
    opt = passes["step"]
    return {"dense": matmuls5 + opt, "sparse": matmuls2 + opt, "optimizer": opt, "passes": passes}


GATHER_BLOCKS = ((1024, 4), (256, 4), (512, 4), (1024, 8), (2048, 8))
"""``(column_block, gather_warps)`` of the gather kernel tried by ``--gathers``; the first is the
plan's default."""

PAIR_DOT_BLOCKS = ((32, 64), (16, 128), (8, 256), (16, 256))
"""``(pair_block, pair_columns)`` of the pairs' dot products tried by ``--gathers``; the first
is the plan's default."""

WINDOW_TILES = (
    WindowTile(128, 128, 64, 8, 4),
    WindowTile(128, 64, 64, 8, 3),
    WindowTile(64, 128, 64, 8, 3),
)
"""The launches of the aligned half-precision window sums that ``--window-tiles`` times against
each other, the plan's default first. Each compiles for an H100 with no spilled register
(``tests/test_triton_compiles.py``)."""


def gather_sweep(a: argparse.Namespace, device: str) -> None:
    """The gathers of the sparse decode at TopK's pairs for each launch tried."""
    base = KernelPlan.resolve(device)
    if base.backend != "triton":
        print("gathers: no Triton kernels here, nothing timed")
        return
    from crosslens.kernels.active_pairs import ActivePairs
    from crosslens.kernels.triton_sparse import TritonKernels

    F_, K = a.d_sae, a.S * a.d_in
    g = torch.Generator(device=device).manual_seed(0)
    idx = torch.rand(a.batch, F_, device=device, generator=g).topk(a.k, dim=-1).indices.sort(dim=-1).values
    pairs = ActivePairs.from_rows(idx, F_)
    n_pairs = idx.numel()
    W = torch.randn(F_, 1, K, device=device, generator=g)
    values = torch.randn(n_pairs, 1, device=device, generator=g)
    scale = torch.rand(F_, a.S, device=device, generator=g)
    print(f"gathers: {n_pairs:,} pairs of {a.batch} tokens x k {a.k}, rows of {K} columns")
    for dtype in (torch.bfloat16, torch.float32):
        read, grad = W.to(dtype), torch.randn(a.batch, 1, K, device=device, generator=g).to(dtype)
        row_bytes = K * read.element_size()
        first: list[float] = []  # the default launch's times, what each line's speed-up is against
        for block, warps in GATHER_BLOCKS:
            tk = TritonKernels(dataclasses.replace(base, column_block=block, gather_warps=warps))
            decode = seconds_per_call(lambda: tk.decode(read, values, pairs), device, a.rounds)
            weight = seconds_per_call(
                lambda: tk.weight_grad(grad, values, pairs, (W, scale), dtype=torch.float32), device, a.rounds
            )
            first = first or [decode, weight]
            print(
                f"  {str(dtype)[6:]:9s} gather rows, block {block:5d}, {warps} warps: decode {decode * 1e3:6.2f} ms "
                f"({n_pairs * row_bytes / decode / 1e12:5.2f} TB/s, {first[0] / decode:4.2f}x the default), "
                f"weight gradient {weight * 1e3:6.2f} ms ({(n_pairs * row_bytes + 2 * F_ * K * 4) / weight / 1e12:5.2f} "
                f"TB/s, {first[1] / weight:4.2f}x)"
            )
        first = []
        for pair_block, columns in PAIR_DOT_BLOCKS:
            tk = TritonKernels(dataclasses.replace(base, pair_block=pair_block, pair_columns=columns))
            dots = seconds_per_call(lambda: tk.values_grad(grad, read, pairs, dtype=torch.float32), device, a.rounds)
            first = first or [dots]
            print(
                f"  {str(dtype)[6:]:9s} pair dots, {pair_block:2d} pairs x {columns:3d} columns: {dots * 1e3:6.2f} ms "
                f"({2 * n_pairs * row_bytes / dots / 1e12:5.2f} TB/s, {first[0] / dots:4.2f}x the default)"
            )


def window_sweep(a: argparse.Namespace, device: str) -> WindowTile | None:
    """The JumpReLU window kernel's sums at the shape, in bfloat16, for each launch tried, each
    checked against the first's; returns the fastest, for the rows that follow (None: none timed)."""
    base = KernelPlan.resolve(device)
    if base.backend != "triton":
        print("window tiles: no Triton kernels here, nothing timed")
        return None
    from crosslens.kernels.triton_sparse import TritonKernels

    S, N, D, F_ = a.S, a.batch, a.d_in, a.d_sae
    g = torch.Generator(device=device).manual_seed(0)
    grad_SND = torch.randn(S, N, D, device=device, generator=g).to(torch.bfloat16)
    W_FSD = (torch.randn(F_, S, D, device=device, generator=g) / D**0.5).to(torch.bfloat16)
    h_NF = torch.rand(F_, N, device=device, generator=g).to(torch.bfloat16).T  # feature-major, as the encoder leaves it
    window_NF = torch.rand(N, F_, device=device, generator=g) < 0.02  # a trained crosscoder's share
    norms_FS = torch.rand(F_, S, device=device, generator=g)
    t_F = torch.full((F_,), 0.25, device=device)
    window_args = (grad_SND, W_FSD, h_NF, window_NF, norms_FS, t_F, 0.1)
    flops = 2 * S * N * F_ * D
    default, timed = base.window_tile, {}
    want = None
    print(f"window tiles: {S} snapshots x {N} tokens x {F_} features, d_in {D}, bfloat16")
    for tile in WINDOW_TILES:
        label = f"{tile.tokens:3d} x {tile.features:3d} x {tile.depth:2d}, {tile.warps} warps, {tile.stages} stages"
        call = functools.partial(TritonKernels(dataclasses.replace(base, window_tile=tile)).window_dots, *window_args)
        try:
            sums, counts = call()
            seconds = seconds_per_call(call, device, a.rounds)
        except Exception as error:  # noqa: BLE001  a launch that does not compile is that line's result
            print(f"  {label}: FAILED {str(error)[:160]}")
            continue
        want = want or (sums, counts)
        differs = (sums - want[0]).abs().max().item() / want[0].abs().max().item()
        same_counts = torch.equal(counts, want[1])
        timed[tile] = seconds
        first = timed[next(iter(timed))]
        print(
            f"  {label}: {seconds * 1e3:6.2f} ms "
            f"({flops / seconds / 1e12:5.0f} TFLOP/s, {first / seconds:4.2f}x the first); sums differ "
            f"{differs:.1e} of the largest, counts {'equal' if same_counts else 'DIFFER'}"
        )
    best = min(timed, key=timed.get) if timed else default
    print(f"  the rows below launch {best} (the plan's window_tile; its default is {default})")
    del call, window_args, grad_SND, W_FSD, h_NF, window_NF
    torch.cuda.empty_cache()
    return best


STATES = ("fresh", "young", "trained")
"""The crosscoder's state in a row (``--state``): freshly initialised; young (JumpReLU alone,
:func:`set_young`); at a trained sparsity."""

PATHS = ("default", "dense", "eager", "sparse", "embedding_bag")
"""Every implementation :func:`step_paths` names (``--path``)."""


def step_paths(arch: str, state: str, device: str, autocast: str | None) -> list[str]:
    """The implementations measured for one row: JumpReLU at a trained sparsity with the
    dense kernels and from its active pairs (the plan's ``jumprelu_sparse``), young by its
    default step (split, on CUDA: the plan's ``jumprelu_split``) and the dense kernels;
    TopK/BatchTopK through ``embedding_bag`` and, where Triton is there, the Triton gather-sum
    kernels. Under autocast on CUDA, beside the compiled elementwise functions (the JumpReLU
    block functions and the losses, the plan's ``compile``), the same step with them op by op
    (``eager``): JumpReLU's dense step, and TopK's from the Triton kernels."""
    triton_there = KernelPlan.resolve(device).backend == "triton"
    eager = ["eager"] if autocast and device.startswith("cuda") else []
    if arch == "jumprelu_crosscoder" and state == "trained":
        return ["dense", *eager, "sparse"]
    if arch == "jumprelu_crosscoder" and state == "young":
        return ["default", "dense"]
    if arch == "jumprelu_crosscoder":
        return ["default", *eager]
    if state == "young":
        return []
    if arch.endswith("topk_crosscoder"):
        return ["embedding_bag", "sparse", *eager] if triton_there else ["embedding_bag"]
    return ["default"]


def row_plan(arch: str, a: argparse.Namespace, device: str, path: str = "default") -> KernelPlan:
    """The plan a row trains with: the device's default (with the window tile ``--window-tiles``
    chose, if it ran), the row's ``path`` changed: JumpReLU's ``dense`` and ``eager`` steps
    without its step from pairs (nor the split step), ``sparse`` always with it; ``eager`` with
    the elementwise chains op by op; ``embedding_bag`` with the eager gather-sums (the
    optimizer's pass stays the device's)."""
    plan = KernelPlan.resolve(device)
    if getattr(a, "window_tile", None) is not None:
        plan = dataclasses.replace(plan, window_tile=a.window_tile)
    if arch == "jumprelu_crosscoder" and path != "default":
        plan = dataclasses.replace(plan, jumprelu_sparse=path not in ("dense", "eager"), jumprelu_split=False)
    if path == "eager":
        plan = dataclasses.replace(plan, compile=False)
    if path == "embedding_bag":
        plan = dataclasses.replace(plan, backend="eager")
    return plan


def make_trainer(
    arch: str,
    a: argparse.Namespace,
    device: str,
    autocast: str | None,
    path: str = "default",
    lr: float = 1e-5,
    seed: int = 0,
) -> CrosscoderTrainer:
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    # a run's steady state: lambda whole (no warm-up) and no resampling
    extra = {"k": a.k} if arch.endswith("topk_crosscoder") else {}
    extra[SPARSITY_FIELDS[arch][1]] = 0
    torch.manual_seed(seed)
    sae = train_cls(train_cfg_cls(d_in=a.d_in, d_sae=a.d_sae, n_snapshots=a.S, device=device, **extra))
    cfg = CrosscoderTrainerConfig(
        total_steps=10**6,
        lr=lr,
        resample_dead=0,
        device=device,
        autocast_dtype=autocast,
        optimizer_state_dtype=a.optimizer_state,
        micro_batches=a.micro_batches,
        activation_scale_check="off",
    )
    return CrosscoderTrainer(sae, cfg, plan=row_plan(arch, a, device, path))


@torch.no_grad()
def l0_of(trainer: CrosscoderTrainer, x_BSD: torch.Tensor) -> float:
    return float((trainer.sae.encode(x_BSD) != 0).sum(dim=-1).float().mean())


@torch.no_grad()
def set_young(trainer: CrosscoderTrainer, x_BSD: torch.Tensor, open_share: float) -> float:
    """A JumpReLU crosscoder some steps into a run, its code still too dense for the step from
    the pairs: the decoder 30 times its initial norms, so that the threshold's window is as
    narrow against ``h * norm`` as after a real run's first steps (where it holds about 1% of the
    entries), and the threshold set so that ``open_share`` of the entries are open; the norms stay
    equal over snapshots, so every open entry is open everywhere. Returns the L0 reached."""
    trainer.sae.W_dec.mul_(30.0)
    return set_sparsity(trainer, x_BSD, open_share * trainer.sae.cfg.d_sae)


@torch.no_grad()
def set_sparsity(trainer: CrosscoderTrainer, x_BSD: torch.Tensor, target: float) -> float:
    """Bisect the JumpReLU threshold (or the ReLU crosscoder's negative bias) until the L0 on
    ``x_BSD`` is ``target``; returns the L0 reached."""
    sae = trainer.sae
    knob = sae.threshold if hasattr(sae, "threshold") and not hasattr(sae, "k") else sae.b_enc
    sign = 1.0 if knob is not sae.b_enc else -1.0
    lo, hi = 0.0, 1.0
    while knob.fill_(sign * hi) is not None and l0_of(trainer, x_BSD) > target and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = (lo + hi) / 2
        knob.fill_(sign * mid)
        lo, hi = (mid, hi) if l0_of(trainer, x_BSD) > target else (lo, mid)
    knob.fill_(sign * hi)
    return l0_of(trainer, x_BSD)


@torch.no_grad()
def batch_entries(trainer: CrosscoderTrainer, x_BSD: torch.Tensor) -> tuple[ActiveEntries, ActiveEntries]:
    """A JumpReLU batch's (token, feature) entries that the step from pairs reads (open at some
    snapshot, or inside the threshold's window at some), and those of them that the split step
    reads from pairs (not open everywhere outside the window)."""
    sae = trainer.sae
    h_BF = sae.hidden_pre(x_BSD)
    args = (h_BF, sae.snapshot_norms(), sae.threshold.to(h_BF.dtype), sae.cfg.jumprelu_bandwidth / 2)
    entries = active_entries(*args, trainer.plan)
    return entries, everywhere_and_rest(*args, entries)[1]


def active_share(trainer: CrosscoderTrainer, x_BSD: torch.Tensor) -> str:
    """A JumpReLU batch's share of active entries (:func:`batch_entries`), of open ones and of
    those the split step reads from pairs, and the implementations the row's training passes
    took (``pass_paths``); "" for the other architectures."""
    if not hasattr(trainer.sae.cfg, "jumprelu_bandwidth"):
        return ""
    entries, rest = batch_entries(trainer, x_BSD)
    n = entries.active_NF.numel()
    active = (entries.n_open + entries.n_window) / n
    paths = ", ".join(f"{path} {count}" for path, count in sorted(trainer.sae.pass_paths.items()))
    return f"  active {active:.2%} (open {entries.n_open / n:.2%}, not open everywhere {rest.n_open / n:.2%}; passes: {paths})"


def row_step(
    arch: str, a: argparse.Namespace, device: str, autocast: str | None, state: str, path: str = "default"
) -> tuple[CrosscoderTrainer, torch.Tensor, Callable[[], None], str]:
    """A row's ``(trainer, batch, one step, the note on its dead features)``: the batch from seed 0
    and, trained, the JumpReLU threshold or ReLU bias set to ``--l0``, or TopK's ``--dead`` share of
    features counted dead before each step; young (JumpReLU), :func:`set_young`."""
    trainer = make_trainer(arch, a, device, autocast, path)
    g = torch.Generator(device=device).manual_seed(0)
    x_BSD = torch.randn(a.batch, a.S, a.d_in, device=device, generator=g)
    trained = state == "trained"
    if trained and not arch.endswith("topk_crosscoder"):
        set_sparsity(trainer, x_BSD, a.l0)
    if state == "young":
        set_young(trainer, x_BSD, a.young_open)
    step, dead = with_dead_features(trainer, x_BSD, a.dead if trained and arch.endswith("topk_crosscoder") else 0.0)
    return trainer, x_BSD, step, dead


def step_row(
    arch: str,
    a: argparse.Namespace,
    device: str,
    autocast: str | None,
    state: str,
    times: dict[str, float],
    path: str = "default",
) -> str:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer, x_BSD, step, dead = row_step(arch, a, device, autocast, state, path)
    seconds = seconds_per_call(step, device, a.steps)
    l0 = float(trainer.last_l0)
    sparse = arch.endswith("topk_crosscoder") or (state == "trained" and arch == "jumprelu_crosscoder")
    floor = times["sparse" if sparse else "dense"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    planned = step_peak_bytes(a.S, a.d_in, a.d_sae, a.batch, arch, a.micro_batches, autocast == "bfloat16")
    plan = planned[a.optimizer_state] / 2**30
    share = active_share(trainer, x_BSD)  # after the peak was read
    waits = syncs_per_step(step, device)
    if a.profile:  # after the row's own figures, which its extra steps would move
        print_profile(step, device, f"{arch} {autocast or 'fp32'} {path}")
    if a.memory_peak:
        print_memory_peak(step, device, f"{arch} {autocast or 'fp32'} {path}")
    precision = "bf16" if autocast else "fp32"
    del trainer
    return (
        f"{arch:22s} {precision:5s} {state:8s} {path:13s} L0 {l0:8.1f}  {a.batch / seconds:10,.0f} tok/s  "
        f"{floor / seconds:6.1%} of the {'sparse' if sparse else 'dense'} floor  peak {peak:6.1f} GiB "
        f"(plan {plan:.1f}, {peak / plan:.2f}x){waits}{share}{dead}"
    )


def with_dead_features(trainer: CrosscoderTrainer, x_BSD: torch.Tensor, share: float) -> tuple[Callable[[], None], str]:
    """One training step on ``x_BSD``, with every ``1 / share``-th feature dead; and the row's note
    of it. A dead feature's encoder column is zeroed and its bias set below every live
    pre-activation on the batch by as much again, so that it never fires, and its count is set
    past the window once: the trainer's own counting then keeps it dead, as a trained crosscoder's
    dead features stay, and the dead features the trainer lists during a step for the next one
    hold (a write to the counts before every step would make each step count them anew)."""
    if share <= 0:
        return lambda: trainer.step(x_BSD), ""
    sae = trainer.sae
    d_sae = sae.cfg.d_sae
    dead_F = torch.arange(d_sae, device=x_BSD.device) % round(1 / share) == 0
    with torch.no_grad():
        spread = float(sae.hidden_pre(x_BSD).abs().max())
        sae.W_enc[..., dead_F] = 0.0
        sae.b_enc[dead_F] = -(2 * spread + 1)
    trainer.tokens_since_fired.masked_fill_(dead_F, trainer.dead_feature_window_tokens + 1)
    return lambda: trainer.step(x_BSD), f"  {int(dead_F.sum())} dead ({share:.0%}), decoded by the auxiliary loss"


def syncs_per_step(fn: Callable[[], None], device: str) -> str:
    """How often one call of ``fn`` waits for the GPU (:func:`counted_cuda_syncs`)."""
    if not device.startswith("cuda"):
        return ""
    with counted_cuda_syncs() as syncs:
        fn()
    return f"  {len(syncs)} sync{'s' if len(syncs) != 1 else ''}/step"


def repeat_check(arch: str, a: argparse.Namespace, device: str, autocast: str | None, state: str) -> str:
    """``a.repeat_steps`` steps of the row's default path, twice from the same seed and batch
    (the trained state set the same way each time): "same bytes", or the parameters that
    differ with their largest difference."""

    def parameters_after() -> dict[str, torch.Tensor]:
        trainer, _, step, _ = row_step(arch, a, device, autocast, state)
        for _ in range(a.repeat_steps):
            step()
        out = {name: p.detach().clone() for name, p in trainer.sae.named_parameters()}
        del trainer
        gc.collect()
        return out

    first = parameters_after()
    second = parameters_after()
    differ = [
        f"{name} (at most {float((first[name] - second[name]).abs().max()):.2e})"
        for name in first
        if not torch.equal(first[name], second[name])
    ]
    label = f"{arch:22s} {'bf16' if autocast else 'fp32':5s} {state:8s}"
    return f"repeat, {label} {a.repeat_steps} steps twice: " + (
        "same bytes" if not differ else "differ: " + ", ".join(differ)
    )


PRECISIONS = {"fp32": None, "bf16": "bfloat16"}
"""``--precision``'s names, and the autocast dtype each one trains under."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="the whole script on the CPU at a tiny shape")
    p.add_argument("--S", type=int, default=32, help="snapshots")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--k", type=int, default=64, help="TopK/BatchTopK k")
    p.add_argument("--l0", type=float, default=100.0, help="the trained sparsity the bias/threshold is set to")
    p.add_argument(
        "--young-open",
        type=float,
        default=0.08,
        help="JumpReLU's young rows: the share of (token, feature) entries open",
    )
    p.add_argument(
        "--dead",
        type=float,
        default=0.05,
        help="TopK/BatchTopK's trained rows: the share of features counted dead, which the auxiliary loss decodes",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (median)")
    p.add_argument("--rounds", type=int, default=10, help="timed calls per floor (median)")
    p.add_argument("--peak-n", type=int, default=8192, help="matmul side for the bf16 peak")
    p.add_argument("--only", choices=list(cc.ARCHITECTURES), action="append", help="architectures to run (repeatable)")
    p.add_argument("--optimizer-state", choices=OPTIMIZER_STATES, default="float32")
    p.add_argument(
        "--gathers", action="store_true", help="time the sparse decode's Triton gathers for each block size tried"
    )
    p.add_argument(
        "--window-tiles",
        action="store_true",
        help="time the JumpReLU window kernel for each tile tried, and keep the fastest for the rows",
    )
    p.add_argument(
        "--profile", action="store_true", help="after each row, its kernels over 3 steps by time (torch.profiler)"
    )
    p.add_argument(
        "--memory-peak",
        action="store_true",
        help="after each row, one step under CUDA's allocation history: what is alive at its peak, by allocating line",
    )
    p.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        help="train each batch in this many micro-batches (train --micro-batches)",
    )
    p.add_argument(
        "--path",
        action="append",
        choices=PATHS,
        help="the step rows' paths to run (repeatable; default all that apply; step_paths)",
    )
    p.add_argument(
        "--state",
        choices=STATES,
        action="append",
        help="the step rows' states to run (repeatable; default all three; young is JumpReLU's alone)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        action="append",
        help="the step rows' precisions (repeatable; default both): fp32, or bf16 autocast",
    )
    p.add_argument(
        "--repeat-steps",
        type=int,
        default=0,
        help="instead of the rows: train this many steps twice per row and compare the bytes",
    )
    a = p.parse_args(argv)
    if not 0 <= a.dead < 1:
        p.error(f"--dead {a.dead}: give the share of features counted dead, from 0 up to below 1 (e.g. 0.05)")
    if a.repeat_steps < 0:
        p.error(f"--repeat-steps {a.repeat_steps}: give how many steps to train twice, 1 or more (0: time the rows)")
    if a.small:
        for key, value in SMALL.items():
            setattr(a, key, value)
        a.rounds = 2
    return a


def row_or_failure(
    arch: str,
    a: argparse.Namespace,
    device: str,
    autocast: str | None,
    state: str,
    times: dict[str, float],
    path: str,
) -> str:
    """:func:`step_row`, or the row's failure in one line (out of memory, a kernel that does not
    compile) so that the rows after it are still measured."""
    try:
        return step_row(arch, a, device, autocast, state, times, path)
    except Exception as error:  # noqa: BLE001  one row's failure is that row's result
        message = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    gc.collect()  # the failed row's trainer, now that the traceback holding it is gone
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    precision = "bf16" if autocast else "fp32"
    return f"{arch:22s} {precision:5s} {state:8s} {path:13s} FAILED {message}"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.small and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here, nothing measured (--small runs its logic on the CPU)")
        return 0
    device = "cpu" if a.small else "cuda"
    print(
        f"shape: S {a.S}, d_in {a.d_in}, d_sae {a.d_sae}, batch {a.batch} in {a.micro_batches} micro-batch(es); "
        f"Adam state {a.optimizer_state}; device {device}"
    )
    peak = matmul_peak(a.peak_n, device, a.rounds)
    print(f"bf16 matmul peak: {peak / 1e12:,.1f} TFLOP/s")
    times = floors(a, device)
    flops = 10 * a.batch * a.S * a.d_in * a.d_sae
    print(
        f"floor, dense (5 matmuls + optimizer):  {a.batch / times['dense']:10,.0f} tok/s "
        f"(matmuls at {(flops / (times['dense'] - times['optimizer'])) / peak:.0%} of peak)"
    )
    print(f"floor, sparse (2 matmuls + optimizer): {a.batch / times['sparse']:10,.0f} tok/s")
    passes = times["passes"]

    def against_plain(kind: str) -> str:
        return f"{passes[kind] * 1e3:.2f} ms ({passes[kind] / passes['plain']:.2f}x the plain pass)"

    print(
        f"optimizer pass (norm + fused clip/Adam): {passes['plain'] * 1e3:.2f} ms; the step's, writing W_dec's "
        f"row norms too: {against_plain('step')}; and the bf16 weights: {against_plain('copies')}"
        + (f"; torch's fused Adam: {against_plain('torch')}" if "torch" in passes else "")
    )
    if a.gathers:
        gather_sweep(a, device)
    a.window_tile = window_sweep(a, device) if a.window_tiles else None
    for arch in a.only or list(cc.ARCHITECTURES):
        for autocast in (PRECISIONS[p] for p in a.precision or PRECISIONS):
            for state in a.state or STATES:
                if a.repeat_steps:
                    if state != "young":
                        print(repeat_check(arch, a, device, autocast, state), flush=True)
                    continue
                for path in (p for p in step_paths(arch, state, device, autocast) if not a.path or p in a.path):
                    print(row_or_failure(arch, a, device, autocast, state, times, path), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
