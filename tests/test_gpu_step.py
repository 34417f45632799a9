"""The step's GPU-facing parts, checked on CPU: the clip folded into Adam, crosslens's Adam
kernel and the rounded weights it writes for the next step, Adam with bfloat16 moments, the
precision and optimizer-state defaults, their memory plan, and benchmarks/gpu.py run end to end
at a tiny shape."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from interpreted import HAS_TRITON, skip_outside_the_interpreter

import crosslens.crosscoders as cc
from crosslens.kernels.adam import eager_chunk_update, eager_update, noise_key, round_stochastic, rounding_noise
from crosslens.kernels.plan import KernelPlan
from crosslens.kernels.step_weights import StepWeights
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig, optim
from crosslens.training.optim import BFloat16StateAdam, KernelAdam

ROOT = Path(__file__).resolve().parents[1]


def benchmark_script(name: str):
    """``benchmarks/NAME.py``, loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_benchmark():
    """``benchmarks/gpu.py``, loaded as a module."""
    return benchmark_script("gpu")


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def benchmark_env() -> dict[str, str]:
    """The environment for a benchmark script: this checkout first on the path, whatever else was there kept."""
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


S, D, F, B = 2, 8, 32, 16
ARCHS = list(cc.ARCHITECTURES)
CPU = KernelPlan.resolve("cpu")
"""A CPU's default plan: torch's Adam for float32 moments, the eager passes of crosslens's."""
DIRECTIONS = torch.randn(12, S, D, generator=torch.Generator().manual_seed(0))


def batches(n: int, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        codes = torch.rand(B, 12, generator=g) * (torch.rand(B, 12, generator=g) < 0.3)
        out.append(scale * torch.einsum("bf,fsd->bsd", codes, DIRECTIONS))
    return out


def make_sae(arch: str):
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    extra = {"crosscoder": {"l1_coefficient": 0.05}, "jumprelu_crosscoder": {"l0_coefficient": 0.01}}.get(
        arch, {"k": 4}
    )
    torch.manual_seed(0)
    return train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **extra))


def train(
    arch: str, steps: int = 20, scale: float = 1.0, plan: KernelPlan | None = None, **kw
) -> tuple[CrosscoderTrainer, list[float]]:
    """A trainer that ran ``steps`` steps with ``plan`` (the device's default where None), and its losses."""
    cfg = CrosscoderTrainerConfig(total_steps=steps, lr=3e-3, activation_scale_check="off", **kw)
    trainer = CrosscoderTrainer(make_sae(arch), cfg, plan=plan)
    losses = [trainer.step(x).loss.item() for x in batches(steps, scale)]
    return trainer, losses


def parameters(trainer: CrosscoderTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.sae.named_parameters()}


# ------------------------------------------------------------ the clip inside Adam
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_clip_equals_clip_then_adam_after_20_steps(arch):
    """Batches scaled up so that the clip acts on every step: the fused path divides by 1/c
    where clip_grad_norm_ multiplies by c, one float32 rounding apart per step."""
    eager, eager_losses = train(arch, scale=30.0, fused_clip=False)
    fused, fused_losses = train(arch, scale=30.0, fused_clip=True)
    for name, p in parameters(eager).items():
        q = parameters(fused)[name]
        assert not torch.equal(p, make_sae(arch).state_dict()[name]), name  # it trained
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert fused_losses == pytest.approx(eager_losses, rel=1e-4)


def test_fused_clip_is_bitwise_when_the_clip_leaves_the_gradient_alone():
    eager, _ = train("crosscoder", max_grad_norm=1e6, fused_clip=False)
    fused, _ = train("crosscoder", max_grad_norm=1e6, fused_clip=True)
    for name, p in parameters(eager).items():
        assert torch.equal(parameters(fused)[name], p), name


def test_fused_clip_scales_the_step_as_the_clip_does():
    """A clip of 1e-3 shrinks every gradient a lot: with the coefficient folded in, Adam's
    first step still moves each weight by lr (Adam's step is scale-free), but the moments
    hold the clipped gradient."""
    trainer, _ = train("crosscoder", steps=1, scale=30.0, max_grad_norm=1e-3, fused_clip=True)
    moments = [s["exp_avg"] for s in trainer.optimizer.state.values()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in moments]))
    assert norm.item() == pytest.approx(0.1 * 1e-3, rel=1e-3)  # (1 - beta1) * the clipped norm


# ------------------------------------------------------------ crosslens's Adam and its copies
HYPER = (0.9, 0.999, 1e-3 / (1 - 0.9**3), math.sqrt(1 - 0.999**3), 1e-8)


@pytest.fixture
def kernel_adam(request) -> KernelPlan:
    """A CPU's plan whose float32 Adam is :class:`KernelAdam`, with the update ``backend`` names
    (the Triton kernel runs on a CPU only under the interpreter), which writes the decoder's
    row norms where that update is the Triton kernel (as CUDA's default plan does)."""
    backend = request.param
    if backend == "triton":
        skip_outside_the_interpreter("cpu")
    return KernelPlan.resolve("cpu", adam="kernel", adam_backend=backend, handoff_norms=True)


@pytest.mark.parametrize("copied", [False, True], ids=["plain", "copied"])
@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "scaled"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_float32_update_equals_the_eager_update(device, scaled, copied):
    """One parameter (not a whole number of the kernel's blocks): the kernel and its eager twin
    agree to float32 rounding, and the copy is the new parameter rounded, to the bit."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(0)
    n = 3 * triton_adam.BLOCK + 100
    p, grad = torch.randn(n, generator=g), torch.randn(n, generator=g) * 1e-2
    m, v = torch.randn(n, generator=g) * 1e-3, torch.rand(n, generator=g) * 1e-4
    scale = torch.tensor(2.5) if scaled else None
    want = [t.clone() for t in (p, m, v)]
    eager_update(*want[:1], grad, *want[1:], scale, HYPER)
    got = [t.to(device, copy=True) for t in (p, m, v)]
    copy = torch.full((n,), float("nan"), dtype=torch.bfloat16, device=device) if copied else None
    triton_adam.update(
        got[0], grad.to(device), got[1], got[2], None if scale is None else scale.to(device), HYPER, copy
    )
    assert (got[0].cpu() != p).float().mean() > 0.99  # the parameters moved
    for name, value, expected in zip(("p", "exp_avg", "exp_avg_sq"), got, want):
        torch.testing.assert_close(value.cpu(), expected, rtol=1e-6, atol=1e-9, msg=name)
    if copied:
        assert torch.equal(copy, got[0].to(torch.bfloat16))


@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("d", [40, 300])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_update_writing_row_norms_is_the_update_and_the_norms(device, d, state):
    """The decoder's update by rows ([d_sae, S, d_in], rows shorter and longer than one column
    tile, not a whole number of programs): the parameters, moments and copy are the flat kernel's
    to the bit (every element once, with its own rounding noise), and the norms are those of the
    new rows to float32 rounding."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(4)
    shape = (37, 2, d)
    p, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 1e-2
    m, v = torch.randn(shape, generator=g) * 1e-3, torch.rand(shape, generator=g) * 1e-4
    if state == "bfloat16":
        m, v = m.to(torch.bfloat16), v.to(torch.bfloat16)
    scale = torch.tensor(2.5, device=device)
    runs = []
    for rows in (False, True):
        got = [t.to(device, copy=True) for t in (p, m, v)]
        copy = torch.empty(shape, dtype=torch.bfloat16, device=device)
        norms = torch.full(shape[:-1], float("nan"), device=device) if rows else None
        if state == "float32":
            triton_adam.update(got[0], grad.to(device), got[1], got[2], scale, HYPER, copy, norms)
        else:
            triton_adam.chunk_update(
                got[0], grad.to(device), got[1], got[2], noise_key(5, 3, 1), 0, scale, HYPER, copy, norms
            )
        runs.append(([t.cpu() for t in (*got, copy)], norms))
    (flat, _), (by_rows, norms) = runs
    assert (flat[0] != p).float().mean() > 0.99  # the parameters moved
    for name, a, b in zip(("p", "exp_avg", "exp_avg_sq", "copy"), by_rows, flat):
        assert torch.equal(a, b), name
    torch.testing.assert_close(norms.cpu(), torch.linalg.vector_norm(flat[0], dim=-1), rtol=1e-6, atol=0)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_the_kernels_refuse_what_they_would_read_wrong():
    """Row norms only of a whole parameter's rows, in its shape; only contiguous tensors (a
    kernel reads them flat); the entry masks only in the dtypes whose arithmetic torch does in
    float32: refused before anything is launched."""
    from crosslens.kernels import triton_adam

    p = torch.zeros(4, 8)
    low = p.bfloat16()
    for start, norms in ((8, torch.zeros(4)), (0, torch.zeros(2, 2)), (0, torch.zeros(4, dtype=torch.float64))):
        with pytest.raises(ValueError, match="the row norms of an update are those of a whole parameter's rows"):
            triton_adam.chunk_update(p, p, low, low, 1, start, None, HYPER, None, norms)
    with pytest.raises(ValueError, match="reads gradient as a flat contiguous tensor; got strides \\(1, 4\\)"):
        triton_adam.update(p, torch.zeros(8, 4).T, p.clone(), p.clone(), None, HYPER)
    with pytest.raises(ValueError, match="row_norms takes a float32 tensor of at least 2 dimensions"):
        triton_adam.row_norms(torch.zeros(8))
    from crosslens.kernels import triton_sparse

    h, per_feature = torch.zeros(4, 8), torch.zeros(8)
    refused = (
        (h.double(), per_feature, per_feature, per_feature),
        (h, per_feature.bfloat16(), per_feature, per_feature),
        (h, per_feature, per_feature, per_feature.double()),
    )
    for args in refused:
        with pytest.raises(
            ValueError, match="entry_masks computes in float32 from float32 norms, and h and thresholds"
        ):
            triton_sparse.TritonKernels.entry_masks(*args, 0.1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_row_norms_sum_as_the_update_writing_them_does(device):
    """A step that finds no norms written sums them as the update would have: the same bits
    (Ge et al.'s d_in and a short row), so a resumed run does not depend on which it took."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(6)
    for d in (768, 40):
        shape = (37, 3, d)
        p, grad = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
        m, v, written = torch.zeros_like(p), torch.zeros_like(p), torch.empty(shape[:-1], device=device)
        triton_adam.update(p, grad, m, v, None, HYPER, None, written)
        assert torch.equal(triton_adam.row_norms(p), written), d


@pytest.mark.parametrize("kernel_adam", ["triton"], indirect=True)
@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "topk_crosscoder"])
def test_a_run_taking_the_kernels_norms_resumes_to_the_same_bytes_on_cpu(arch, tmp_path, kernel_adam):
    """The norms are not saved: the first step after a resume sums them in the kernel's order,
    which gives the bytes the uninterrupted run's taken norms gave (rows of 96, where
    ``torch.linalg.vector_norm``'s order gives other last bits for some)."""
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]

    def trainer(folder: str) -> CrosscoderTrainer:
        torch.manual_seed(0)
        extra = {"l0_coefficient": 0.01} if arch == "jumprelu_crosscoder" else {"k": 4}
        sae = train_cls(train_cfg_cls(d_in=96, d_sae=F, n_snapshots=S, **extra))
        cfg = CrosscoderTrainerConfig(
            total_steps=8, lr=3e-3, activation_scale_check="off", checkpoint_dir=str(tmp_path / folder)
        )
        return CrosscoderTrainer(sae, cfg, plan=kernel_adam)

    xs = list(torch.randn(8, B, S, 96, generator=torch.Generator().manual_seed(2)))
    whole = trainer("a")
    assert whole.step_weights.norms and whole.step_weights.norms_of is not None  # the Triton pass's default
    whole.fit(xs)
    first = trainer("b")
    for x in xs[:3]:
        first.step(x)
    checkpoint = first.save_checkpoint()
    resumed = CrosscoderTrainer.from_checkpoint(checkpoint, plan=kernel_adam)
    resumed.fit(xs, resume_from=checkpoint)
    for name, p in parameters(whole).items():
        assert torch.equal(parameters(resumed)[name], p), name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_copies_round_as_torch_does(device):
    """A step of size 0 leaves the parameters as they are; their copies are then torch's
    rounding of them, to the bit: ties to even both ways, overflow to infinity, subnormals,
    and a NaN stays a NaN (the next step's loss must see it)."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    ties = (
        torch.tensor(
            [0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x3F80FFFF, 0x7F7FFFFF, 0x00018000, 0x80000001],
            dtype=torch.int64,
        )
        .to(torch.int32)
        .view(torch.float32)
    )
    specials = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0, 1e-40, 3.0e38, -3.0e38])
    p = torch.cat([ties, specials, torch.randn(1000, generator=torch.Generator().manual_seed(0))]).to(device)
    nan = torch.tensor([float("nan")], device=device)
    for part in (p, nan):
        m, v, copy = torch.zeros_like(part), torch.zeros_like(part), torch.empty_like(part, dtype=torch.bfloat16)
        triton_adam.update(part, torch.zeros_like(part), m, v, None, (0.9, 0.999, 0.0, 1.0, 1e-8), copy)
        if part is p:
            assert torch.equal(copy.view(torch.int16), p.to(torch.bfloat16).view(torch.int16))
        else:
            assert copy.isnan().all()


@pytest.mark.parametrize("kernel_adam", ["eager", "triton"], indirect=True)
@pytest.mark.parametrize("arch", ARCHS)
def test_kernel_adam_follows_torch_adam_for_20_steps_on_cpu(arch, kernel_adam):
    """The trainer with crosslens's Adam against torch's fused Adam, float32, the clip acting on
    every step: the same parameters to float32 rounding, and state torch's Adam can load."""
    reference, reference_losses = train(arch, scale=30.0, plan=dataclasses.replace(kernel_adam, adam="torch"))
    trainer, losses = train(arch, scale=30.0, plan=kernel_adam)
    assert isinstance(trainer.optimizer, KernelAdam) and not isinstance(reference.optimizer, KernelAdam)
    for name, p in parameters(reference).items():
        assert not torch.equal(p, make_sae(arch).state_dict()[name]), name  # it trained
        torch.testing.assert_close(parameters(trainer)[name], p, rtol=1e-5, atol=1e-6, msg=name)
    assert losses == pytest.approx(reference_losses, rel=1e-4)


@pytest.mark.parametrize("kernel_adam", ["eager"], indirect=True)
@pytest.mark.parametrize("first", ["kernel", "torch"])
def test_a_checkpoint_moves_between_kernel_adam_and_torch_adam(first, tmp_path, kernel_adam):
    """A run checkpointed with one Adam resumes with the other, which keeps its own way of
    running (torch's stays fused and takes the clip's scale), and ends where a run with the
    first throughout ends, to float32 rounding."""
    cfg = dict(total_steps=8, lr=3e-3, activation_scale_check="off")
    xs = [30.0 * x for x in batches(8)]  # the clip acts

    def adam(kernel: bool) -> KernelPlan:
        return dataclasses.replace(kernel_adam, adam="kernel" if kernel else "torch")

    def trainer(kernel: bool, folder: str) -> CrosscoderTrainer:
        config = CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / folder))
        return CrosscoderTrainer(make_sae("crosscoder"), config, plan=adam(kernel))

    whole = trainer(first == "kernel", "whole")
    whole.fit(xs)
    start = trainer(first == "kernel", "start")
    for x in xs[:3]:
        start.step(x)
    checkpoint = start.save_checkpoint()
    resumed = CrosscoderTrainer.from_checkpoint(checkpoint, plan=adam(first != "kernel"))
    assert isinstance(resumed.optimizer, KernelAdam) == (first != "kernel")
    if first == "kernel":
        assert resumed.optimizer.param_groups[0]["fused"] and optim.takes_grad_scale(resumed.optimizer)
    else:
        assert not resumed.optimizer.param_groups[0]["fused"]
    resumed.fit(xs, resume_from=checkpoint)
    for name, p in parameters(whole).items():
        torch.testing.assert_close(parameters(resumed)[name], p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kernel_adam", ["eager", "triton"], indirect=True)
def test_triton_adam_counts_its_writes_in_the_versions_on_cpu(kernel_adam):
    """A kernel's store is invisible to autograd: the optimizer counts it in each parameter's
    version, or a copy made before it (another optimizer's, on the same weights) would pass
    for current."""
    trainer, _ = train("crosscoder", steps=1, plan=kernel_adam)
    before = {name: p._version for name, p in trainer.sae.named_parameters()}
    trainer.step(batches(1)[0])
    assert all(p._version > before[name] for name, p in trainer.sae.named_parameters()), before


@pytest.mark.parametrize("kernel_adam", ["eager"], indirect=True)
def test_kernel_adam_refuses_what_it_does_not_do_before_moving_anything(kernel_adam):
    w, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(2))
    opt = KernelAdam(
        [{"params": [w]}, {"params": [b], "weight_decay": 0.1}], lr=0.1, betas=(0.9, 0.999), plan=kernel_adam
    )
    w.grad, b.grad = torch.ones(4), torch.ones(2)
    with pytest.raises(ValueError, match="no weight decay"):
        opt.step()
    assert torch.equal(w, torch.ones(4)) and not opt.state  # the first group did not move
    half = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    half.grad = torch.ones(4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="contiguous float32"):
        KernelAdam([half], lr=0.1, betas=(0.9, 0.999), plan=kernel_adam).step()


def train_copying(
    arch: str,
    steps: int,
    *,
    copies: bool,
    norms: bool = False,
    between: Any = None,
    autocast: str | None = "bfloat16",
    plan: KernelPlan | None = None,
    **kw,
) -> CrosscoderTrainer:
    """``steps`` steps with ``plan`` under bfloat16 autocast (or ``autocast``, None: float32), taking the
    optimizer's rounded weights (``copies``) and decoder norms (``norms``), or making them in each step;
    ``between(trainer)`` runs after each step. No latent is resampled (a resample rewrites the
    weights, so the optimizer's writes would not hold at that step)."""
    cfg = CrosscoderTrainerConfig(
        total_steps=steps, lr=3e-3, activation_scale_check="off", autocast_dtype=autocast, resample_dead=0, **kw
    )
    trainer = CrosscoderTrainer(make_sae(arch), cfg, plan=plan)
    trainer.step_weights = StepWeights(torch.bfloat16 if copies else None, norms)
    for x in batches(steps):
        trainer.step(x)
        if between is not None:
            between(trainer)
    return trainer


COPYING = [
    pytest.param(arch, n, state, id=f"{arch}-{n}-{state}")
    for arch in ARCHS
    for n, state in ((1, "float32"), (2, "float32"), (1, "bfloat16"))
]


@pytest.mark.parametrize("kernel_adam", ["eager", "triton"], indirect=True)
@pytest.mark.parametrize(("arch", "micro_batches", "state"), COPYING)
def test_the_optimizers_rounded_weights_give_the_steps_bytes_on_cpu(arch, micro_batches, state, kernel_adam):
    """Under autocast the optimizer writes W_enc and W_dec rounded, and the next step reads those
    copies: the same bytes as rounding them there (in one batch, in micro-batches, and with
    bfloat16 moments); and it does read them: a copy spoilt after the optimizer wrote it
    changes the next step."""
    kw = dict(micro_batches=micro_batches, optimizer_state_dtype=state, plan=kernel_adam)
    reference = parameters(train_copying(arch, 6, copies=False, **kw))
    trainer = train_copying(arch, 6, copies=True, **kw)
    assert (
        id(trainer.sae.W_enc),
        "copy",
    ) in trainer.step_weights.prepared.made  # written by the last step, for the next
    for name, p in parameters(trainer).items():
        assert torch.equal(p, reference[name]), name

    def spoil(trainer: CrosscoderTrainer) -> None:
        for *_, copy in trainer.step_weights.prepared.made.values():
            copy.mul_(0.5)

    spoilt = parameters(train_copying(arch, 3, copies=True, between=spoil, **kw))
    unspoilt = parameters(train_copying(arch, 3, copies=False, **kw))
    assert not torch.equal(spoilt["W_enc"], unspoilt["W_enc"])


HANDING_NORMS = [
    pytest.param(arch, n, state, autocast, id=f"{arch}-{n}-{state}-{autocast}")
    for arch in ARCHS
    for n, state, autocast in ((1, "float32", None), (2, "float32", "bfloat16"), (1, "bfloat16", None))
]


@pytest.mark.parametrize("kernel_adam", ["eager"], indirect=True)
@pytest.mark.parametrize(("arch", "micro_batches", "state", "autocast"), HANDING_NORMS)
def test_the_optimizers_decoder_norms_give_the_steps_bytes_on_cpu(arch, micro_batches, state, autocast, kernel_adam):
    """The optimizer writes the norms of W_dec's rows and the next step takes them instead of
    computing them. The eager pass's norms are the step's own to the bit, so the run's bytes are
    those of a run that computes them (in float32 and under autocast, in one batch and in
    micro-batches, with float32 and bfloat16 moments); and the step does take them: norms spoilt
    after the optimizer wrote them change the next step."""
    kw = dict(micro_batches=micro_batches, optimizer_state_dtype=state, autocast=autocast, plan=kernel_adam)
    reference = parameters(train_copying(arch, 6, copies=False, **kw))
    trainer = train_copying(arch, 6, copies=False, norms=True, **kw)
    assert set(trainer.step_weights.prepared.made) == {
        (id(trainer.sae.W_dec), "norms")
    }  # every architecture reads them
    for name, p in parameters(trainer).items():
        assert torch.equal(p, reference[name]), name

    def spoil(trainer: CrosscoderTrainer) -> None:
        for *_, norms in trainer.step_weights.prepared.made.values():
            norms.mul_(0.5)

    spoilt = parameters(train_copying(arch, 3, copies=False, norms=True, between=spoil, **kw))
    unspoilt = parameters(train_copying(arch, 3, copies=False, **kw))
    assert not torch.equal(spoilt["W_dec"], unspoilt["W_dec"])


@pytest.mark.parametrize("kernel_adam", ["triton"], indirect=True)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_triton_pass_hands_the_next_step_its_decoder_norms_on_cpu(arch, kernel_adam):
    """Where the optimizer's pass is the Triton kernel the trainer takes the norms from it by
    default: the run follows one computing them to float32 rounding (the sums differ in order)."""
    reference, _ = train(arch, steps=10, plan=kernel_adam)
    plain, _ = train(arch, steps=10, plan=dataclasses.replace(kernel_adam, handoff_norms=False))
    assert not plain.step_weights.active and reference.step_weights.norms
    for name, p in parameters(plain).items():
        torch.testing.assert_close(parameters(reference)[name], p, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kernel_adam", ["eager"], indirect=True)
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_weight_edited_in_place_after_the_optimizer_is_rounded_afresh(micro_batches, kernel_adam):
    """An edit under no_grad between steps (a fold, a rescale) changes the weight's version:
    the optimizer's copy and norms are refused, even spoilt ones, and the step rounds the edited
    weight and computes its norms."""

    def edit(trainer: CrosscoderTrainer, spoil: bool = False) -> None:
        if spoil:
            for *_, written in trainer.step_weights.prepared.made.values():
                written.zero_()
        trainer.sae.fold_and_get_W_dec_norm()

    kw = dict(micro_batches=micro_batches, plan=kernel_adam)
    reference = parameters(train_copying("jumprelu_crosscoder", 4, copies=False, between=edit, **kw))
    spoilt = lambda t: edit(t, spoil=True)  # noqa: E731
    edited = parameters(train_copying("jumprelu_crosscoder", 4, copies=True, norms=True, between=spoilt, **kw))
    for name, p in reference.items():
        assert torch.equal(edited[name], p), name


@pytest.mark.parametrize("kernel_adam", ["eager"], indirect=True)
def test_a_run_taking_copies_resumes_to_the_same_bytes(tmp_path, kernel_adam):
    """The copies are not saved: the first step after a resume rounds the weights itself, which
    gives the bytes the uninterrupted run's taken copies gave."""
    cfg = dict(total_steps=8, lr=3e-3, activation_scale_check="off", autocast_dtype="bfloat16")
    xs = batches(8)

    def trainer(folder: str) -> CrosscoderTrainer:
        config = CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / folder))
        return CrosscoderTrainer(make_sae("jumprelu_crosscoder"), config, plan=kernel_adam)

    whole = trainer("a")
    whole.fit(xs)
    assert whole.step_weights.prepared is None  # let go when training ends
    first = trainer("b")
    for x in xs[:3]:
        first.step(x)
    checkpoint = first.save_checkpoint()
    resumed = CrosscoderTrainer.from_checkpoint(checkpoint, plan=kernel_adam)
    assert isinstance(resumed.optimizer, KernelAdam)
    resumed.fit(xs, resume_from=checkpoint)
    for name, p in parameters(whole).items():
        assert torch.equal(parameters(resumed)[name], p), name


def test_kernel_adam_is_the_cuda_default_and_torch_adam_the_cpu_one():
    if torch.cuda.is_available() and HAS_TRITON:
        trainer = CrosscoderTrainer(make_sae("crosscoder"), CrosscoderTrainerConfig(total_steps=1, device="cuda"))
        assert isinstance(trainer.optimizer, KernelAdam)
    trainer = CrosscoderTrainer(make_sae("crosscoder"), CrosscoderTrainerConfig(total_steps=1))
    assert type(trainer.optimizer) is torch.optim.Adam and trainer.optimizer.param_groups[0]["fused"]


@NO_CUDA
def test_kernel_adam_on_cuda_follows_torch_adam_and_its_copies_give_the_steps_bytes():
    def run(kernel: bool, copies: bool = True) -> dict[str, torch.Tensor]:
        plan = KernelPlan.resolve("cuda", adam="kernel" if kernel else "torch")
        trainer = train_copying("jumprelu_crosscoder", 20, copies=copies, device="cuda", plan=plan)
        return {name: p.cpu() for name, p in parameters(trainer).items()}

    kernel, plain, torch_adam = run(True), run(True, copies=False), run(False)
    for name, p in kernel.items():
        assert torch.equal(p, plain[name]), name
        torch.testing.assert_close(p, torch_adam[name], rtol=1e-2, atol=1e-4, msg=name)


@NO_CUDA
@pytest.mark.parametrize("state", ["float32", "bfloat16"])
def test_on_cuda_the_step_takes_the_kernels_decoder_norms_and_follows_a_step_computing_them(state):
    def run(norms: bool | None) -> CrosscoderTrainer:
        plan = KernelPlan.resolve("cuda") if norms is None else KernelPlan.resolve("cuda", handoff_norms=norms)
        trainer, _ = train("jumprelu_crosscoder", device="cuda", optimizer_state_dtype=state, plan=plan)
        return trainer

    taking, computing = run(None), run(False)
    assert taking.step_weights.norms  # the default on CUDA, where the pass is the kernel
    assert (
        not computing.step_weights.active or not computing.step_weights.norms
    )  # none at all without autocast's copies
    for name, p in parameters(computing).items():
        torch.testing.assert_close(parameters(taking)[name].cpu(), p.cpu(), rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------ bfloat16 Adam state
def test_stochastic_rounding_is_unbiased_and_between_neighbours():
    x = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of the way from 1 to the next bfloat16
    for noise in rounding_noise(noise_key(0, 1, 0), 0, x.numel()):
        r = round_stochastic(x, noise).float()
        assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
        assert r.mean().item() == pytest.approx(1.0 + 2**-10, abs=2e-5)


def splitmix64_draw(key: int, element: int) -> tuple[int, int]:
    """SplitMix64 written from its definition, in Python's integers: the ``element``-th draw of
    the generator started at ``key``, split into the two moments' 16-bit noises."""
    mask = (1 << 64) - 1
    z = (key + (element + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 32) & 0xFFFF, z >> 48


def test_rounding_noise_is_splitmix64_of_its_element_in_any_chunk():
    """Each element's noise is the generator's draw at that element, whichever chunk draws it:
    past 2^32 elements too (a 98,304-feature decoder has 2.4 billion), so chunked eager updates
    and the kernel's one pass over a parameter store the same bytes; mixed in a CPU's blocks or
    whole (as on an accelerator), the same."""
    key = noise_key(1234, 7, 3)
    n = 3 * CPU.noise_block + 5  # not whole blocks
    blocked = rounding_noise(key, 3, n, block=CPU.noise_block)
    whole = rounding_noise(key, 3, n, block=1 << 40)
    assert all(torch.equal(a, b) for a, b in zip(blocked, whole))
    for start in (0, 5, 2**32 - 3, 3 * 2**32 + 11):
        m, v = rounding_noise(key, start, 8)
        assert m.dtype == v.dtype == torch.int32
        want = [splitmix64_draw(key & ((1 << 64) - 1), start + i) for i in range(8)]
        assert list(zip(m.tolist(), v.tolist())) == want, start
    whole = rounding_noise(key, 0, 1000)
    halves = [rounding_noise(key, 0, 400), rounding_noise(key, 400, 600)]
    for moment in range(2):
        assert torch.equal(torch.cat([h[moment] for h in halves]), whole[moment])


def test_rounding_noise_is_uniform_and_each_stream_its_own():
    """Both moments' noise is uniform over [0, 2^16) (16 bins, chi-square below its 0.1% point)
    and uncorrelated with the other's; another seed, step or parameter draws another stream."""
    n = 1 << 18
    m, v = rounding_noise(noise_key(0, 1, 0), 0, n)
    for noise in (m, v):
        assert 0 <= int(noise.min()) and int(noise.max()) < 1 << 16
        counts = torch.bincount(noise >> 12, minlength=16).double()
        chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum().item()
        assert chi2 < 37.7  # 15 degrees of freedom, p = 0.001
    assert abs(torch.corrcoef(torch.stack([m.double(), v.double()]))[0, 1].item()) < 0.01
    keys = {noise_key(seed, step, index) for seed in (0, 1) for step in (1, 2) for index in (0, 1)}
    assert len(keys) == 8
    assert not torch.equal(rounding_noise(noise_key(0, 2, 0), 0, 64)[0], m[:64])


@pytest.mark.parametrize("arch", ["crosscoder", "jumprelu_crosscoder"])
def test_bfloat16_state_follows_the_float32_loss_curve(arch):
    """Tolerance: every step's loss within 2% of float32 Adam's, over 60 steps."""
    _, ref = train(arch, steps=60)
    trainer, low = train(arch, steps=60, optimizer_state_dtype="bfloat16")
    assert isinstance(trainer.optimizer, BFloat16StateAdam)
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in trainer.optimizer.state.values())
    assert all(p.dtype == torch.float32 for p in trainer.sae.parameters())
    assert low[-1] < 0.5 * low[0]  # it learns
    for step, (a, b) in enumerate(zip(ref, low)):
        assert b == pytest.approx(a, rel=0.02), f"step {step}"


@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "scaled"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_bfloat16_state_update_equals_the_eager_update(device, scaled):
    """One chunk (not a whole number of the kernel's blocks) updated by the kernel and by the
    eager ops from the same noise: the parameters agree to float32 rounding, the moments to
    bfloat16's but for the rare element whose float32 value and noise sit at a rounding edge."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    g = torch.Generator().manual_seed(0)
    n = 3 * triton_adam.BLOCK + 100
    p, grad = torch.randn(n, generator=g), torch.randn(n, generator=g) * 1e-2
    m, v = (torch.randn(n, generator=g) * 1e-3).bfloat16(), (torch.rand(n, generator=g) * 1e-4).bfloat16()
    key, start = noise_key(5, 3, 1), 2**32 + 16  # a chunk past 2^32 elements of its parameter
    scale = torch.tensor(2.5) if scaled else None
    hyper = (0.9, 0.999, 1e-3 / (1 - 0.9**3), math.sqrt(1 - 0.999**3), 1e-8)
    want = [t.clone() for t in (p, m, v)]
    eager_chunk_update(want[0], grad, want[1], want[2], key, start, scale, hyper)
    got = [t.to(device, copy=True) for t in (p, m, v)]
    copy = torch.empty(n, dtype=torch.bfloat16, device=device)
    triton_adam.chunk_update(
        got[0], grad.to(device), got[1], got[2], key, start, None if scale is None else scale.to(device), hyper, copy
    )
    assert torch.equal(copy, got[0].to(torch.bfloat16))  # the new parameters rounded, to the bit
    got = [t.cpu() for t in got]
    assert (got[0] != p).float().mean() > 0.99  # the parameters moved
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-9)
    for name, moment, expected in zip(("exp_avg", "exp_avg_sq"), got[1:], want[1:]):
        assert moment.dtype == torch.bfloat16
        differ = moment != expected
        assert differ.float().mean() < 1e-3, name
        torch.testing.assert_close(moment.float(), expected.float(), rtol=2**-7, atol=0, msg=name)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_triton_draws_the_eager_rounding_noise(device):
    """The kernel's noise, written out, is :func:`rounding_noise`'s to the bit: both halves of a
    chunk that is not a whole number of blocks, starting below and past 2^32, for a drawn key and
    for keys at the edges of the 32-bit halves the kernel takes it in (one in [2^31, 2^32) was
    typed uint32 by Triton's interpreter when passed whole, and failed there)."""
    skip_outside_the_interpreter(device)
    from crosslens.kernels import triton_adam

    edges = (2**31 + 5, 2**32 - 1, -(2**31), -1, 2**63 - 1, -(2**63), (2**31 + 5) << 32 | 7)
    for key in (noise_key(2**40 + 3, 11, 2), *(k - (1 << 64) if k >= 1 << 63 else k for k in edges)):
        for start in (0, 2**32 - 700):
            got = triton_adam.noise(key, start, 2 * triton_adam.BLOCK + 37, device)
            want = rounding_noise(key, start, 2 * triton_adam.BLOCK + 37)
            for moment in range(2):
                assert torch.equal(got[moment].cpu(), want[moment]), (key, start, moment)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_a_key_splits_into_two_signed_32_bit_halves():
    from crosslens.kernels.triton_adam import key_halves

    for key in (0, 1, -1, 2**31, 2**32 - 1, -(2**63), 2**63 - 1, noise_key(5, 9, 1)):
        low, high = key_halves(key)
        assert all(-(2**31) <= half < 2**31 for half in (low, high))
        assert (high << 32) + (low & 0xFFFFFFFF) == key


@NO_CUDA
def test_bfloat16_state_on_cuda_takes_the_kernel():
    from crosslens.kernels import adam, triton_adam

    want = triton_adam.chunk_update if HAS_TRITON else adam.eager_chunk_update
    assert adam.adam_update(KernelPlan.resolve("cuda"), chunked=True) is want
    assert adam.adam_update(KernelPlan.resolve("cpu"), chunked=True) is adam.eager_chunk_update


def test_bfloat16_state_resumes_to_the_same_bytes(tmp_path):
    cfg = dict(total_steps=10, lr=3e-3, activation_scale_check="off", optimizer_state_dtype="bfloat16")
    xs = batches(10)
    whole = CrosscoderTrainer(
        make_sae("crosscoder"), CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / "a"))
    )
    whole.fit(xs)
    first = CrosscoderTrainer(
        make_sae("crosscoder"), CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / "b"))
    )
    for x in xs[:4]:
        first.step(x)
    checkpoint = first.save_checkpoint()
    resumed = CrosscoderTrainer.from_checkpoint(checkpoint)
    assert all(s["exp_avg_sq"].dtype == torch.bfloat16 for s in resumed.optimizer.state.values())
    resumed.fit(xs, resume_from=checkpoint)
    for name, p in parameters(whole).items():
        assert torch.equal(parameters(resumed)[name], p), name


def test_bfloat16_state_refuses_a_float32_checkpoint(tmp_path):
    cfg = dict(total_steps=4, lr=3e-3, activation_scale_check="off", checkpoint_dir=str(tmp_path))
    trainer = CrosscoderTrainer(make_sae("crosscoder"), CrosscoderTrainerConfig(**cfg))
    trainer.step(batches(1)[0])
    checkpoint = trainer.save_checkpoint()
    with pytest.raises(ValueError, match="saved by float32 Adam"):
        CrosscoderTrainer.from_checkpoint(checkpoint, CrosscoderTrainerConfig(**cfg, optimizer_state_dtype="bfloat16"))


def test_bfloat16_state_refuses_a_state_whose_noise_came_from_a_saved_generator():
    """A state saved when the rounding noise was drawn from a generator would resume to other
    bytes than its run would have reached: it is refused, with what to do."""
    param = torch.nn.Parameter(torch.zeros(4))
    old = BFloat16StateAdam([param], lr=1e-3, betas=(0.9, 0.999), seed=0, plan=CPU).state_dict()
    del old["rounding_seed"]
    old["rounding_generator"] = torch.Generator().get_state()
    with pytest.raises(ValueError, match="earlier crosslens.*crosslens version the run started with"):
        BFloat16StateAdam([param], lr=1e-3, betas=(0.9, 0.999), seed=0, plan=CPU).load_state_dict(old)


def test_bfloat16_state_resumes_with_the_seed_it_was_saved_with():
    """The noise's seed travels in the state: an optimizer made with another seed takes the
    saved one, so its next step stores the moments the saved run stores."""

    def made(seed: int) -> tuple[torch.nn.Parameter, BFloat16StateAdam]:
        param = torch.nn.Parameter(torch.linspace(-1, 1, 5000))
        return param, BFloat16StateAdam([param], lr=1e-3, betas=(0.9, 0.999), seed=seed, plan=CPU)

    def step(param: torch.nn.Parameter, opt: BFloat16StateAdam) -> None:
        param.grad = torch.linspace(1, 2, 5000) * 1e-3
        opt.step()

    param, saved_run = made(7)
    step(param, saved_run)
    state = saved_run.state_dict()
    assert state["rounding_seed"] == 7
    other, resumed = made(99)
    resumed.load_state_dict(state)
    with torch.no_grad():
        other.copy_(param)
    step(param, saved_run)
    step(other, resumed)
    assert resumed.seed == 7 and torch.equal(other, param)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(resumed.state[other][key], saved_run.state[param][key]), key


def test_the_step_count_goes_on_past_float32s_last_integer():
    """From 2^24 steps on, a float32 count's ``+ 1`` is itself, so every later step would draw the
    rounding noise of step 2^24 again: the count is float64, and a float32 one (torch's Adam's, or
    a state it saved) is widened at the next step."""
    param = torch.nn.Parameter(torch.linspace(-1, 1, 300))
    opt = BFloat16StateAdam([param], lr=1e-3, betas=(0.9, 0.999), seed=3, plan=CPU)
    param.grad = torch.ones(300) * 1e-3
    opt.step()
    assert opt.state[param]["step"].dtype == torch.float64
    opt.state[param]["step"] = torch.tensor(float(2**24 - 1))  # float32, as torch's Adam saves it
    keys = []
    for expected in (2**24, 2**24 + 1, 2**24 + 2):
        opt.step()
        assert int(opt.state[param]["step"].item()) == expected
        keys.append(noise_key(3, int(opt.state[param]["step"].item()), 0))
    assert len(set(keys)) == 3


def test_optimizer_state_dtype_is_checked():
    with pytest.raises(ValueError, match="optimizer_state_dtype"):
        CrosscoderTrainerConfig(total_steps=1, optimizer_state_dtype="int8")


# ------------------------------------------------------------ defaults the runner resolves
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite

    from crosslens.activations import harvest_activations
    from crosslens.checkpoints import CheckpointSuite

    root = tmp_path_factory.mktemp("suite")
    write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in (0, 10)}, make_word_tokenizer())
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (16, 16), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("store")
    harvest_activations(CheckpointSuite.local(root), HOOK, tokens, out, progress=False)
    return out


def run_config(store_path, out_dir, **kw):
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig

    return CrosscoderRunnerConfig(
        store_path=str(store_path),
        out_dir=str(out_dir),
        n_steps=3,
        train_batch_size_tokens=32,
        checkpoint_every=0,
        progress=False,
        sae=ArchitectureConfig("crosscoder", d_sae=16),
        **kw,
    )


def test_auto_precision_on_cpu_is_float32_and_run_json_records_it(store_path, tmp_path, capsys):
    import json

    from crosslens.training.runner import CrosscoderTrainingRunner

    runner = CrosscoderTrainingRunner(run_config(store_path, tmp_path / "run"))
    assert (runner.config.autocast_dtype, runner.config.optimizer_state) == ("none", "float32")
    assert runner._trainer_config().autocast_dtype is None
    runner.run()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (record["autocast_dtype"], record["optimizer_state"], record["fused_clip"]) == ("none", "float32", True)
    assert (
        "precision: crosscoder step in float32 (--autocast), float32 parameters, float32 Adam state"
        in capsys.readouterr().out
    )


def test_chosen_precision_reaches_the_trainer(store_path, tmp_path):
    from crosslens.training.runner import CrosscoderTrainingRunner

    runner = CrosscoderTrainingRunner(
        run_config(
            store_path, tmp_path / "run", autocast_dtype="bfloat16", optimizer_state="bfloat16", fused_clip=False
        )
    )
    cfg = runner._trainer_config()
    assert (cfg.autocast_dtype, cfg.optimizer_state_dtype, cfg.fused_clip) == ("bfloat16", "bfloat16", False)


def test_autocast_flag_takes_none_and_refuses_others(capsys):
    from crosslens.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["train", "--store", "s", "--out", "o", "--autocast", "none", "--optimizer-state", "bfloat16"]
    )
    assert (args.autocast_dtype, args.optimizer_state) == ("none", "bfloat16")
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["train", "--store", "s", "--out", "o", "--autocast", "float16"])
    assert refused.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA default needs a CUDA device")
def test_auto_precision_on_cuda_is_bfloat16(store_path, tmp_path):
    from crosslens.training.precision import resolve_precision

    config = resolve_precision(run_config(store_path, tmp_path / "run", device="cuda"), 2, 32)
    assert (config.autocast_dtype, config.optimizer_state) == ("bfloat16", "float32")


def test_auto_adam_state_on_a_mesh_is_float32_whatever_one_gpu_would_hold(store_path, tmp_path, monkeypatch):
    """A mesh rank holds a share of the step, and bfloat16 moments train in one process only: "auto"
    sized the whole step against one GPU and could pick what the trainer then refuses."""
    from crosslens.training.precision import resolve_precision

    monkeypatch.setenv("WORLD_SIZE", "2")
    # no CUDA device is asked for its memory (there is none here), so the choice is made without it
    config = resolve_precision(run_config(store_path, tmp_path / "run", device="cuda"), 2, 32)
    assert (config.autocast_dtype, config.optimizer_state) == ("bfloat16", "float32")
    chosen = run_config(store_path, tmp_path / "run", device="cuda", optimizer_state="bfloat16")
    assert resolve_precision(chosen, 2, 32).optimizer_state == "bfloat16"  # asked for: the trainer's to refuse


# ------------------------------------------------------------ memory of each Adam-state option
def test_plan_peak_per_optimizer_state_at_ge_et_al_widest_dictionary():
    from crosslens.checkpoints import ModelShape
    from crosslens.training import PlanConfig, make_plan

    gpt2 = ModelShape(name="gpt2", d_model=768, n_layers=12, d_mlp=3072, vocab=50257, n_params=124_000_000)
    n = 2 * 32 * 768 * 98_304 + 32 * 768 + 2 * 98_304  # W_enc, W_dec, b_dec, b_enc, threshold
    assert n == 4_832_059_392
    acts = 3 * 2048 * 32 * 768 * 4 + 4 * 2048 * 98_304 * 4
    chunk = (1 << 22) * 4 * 6  # six float32 temporaries of a 4M-element chunk
    copies = 2 * 2 * 32 * 768 * 98_304  # bfloat16 W_enc and W_dec (their gradients come in float32)
    for autocast, extra in (("none", 0), ("auto", copies), ("bfloat16", copies)):
        plan = make_plan(
            PlanConfig(
                model=gpt2,
                n_snapshots=32,
                hook="blocks.5.hook_resid_post",
                n_tokens=10**6,
                d_sae=98_304,
                architecture="jumprelu_crosscoder",
                batch_size=2048,
                seq_len=128,
                device="cuda",
                tflops=1.0,
                link_gbps=1.0,
                autocast=autocast,
            )
        )
        options = plan["memory_bytes"]["optimizer_state_options"]
        assert options["float32"] == {"device": 16 * n, "peak": 16 * n + acts + extra}
        assert options["bfloat16"] == {"device": 12 * n + chunk, "peak": 12 * n + chunk + acts + extra}
        assert plan["memory_bytes"]["autocast_copies"] == extra
        assert options["float32"]["peak"] > 80e9  # fp32 state cannot fit an 80 GB card
        assert options["bfloat16"]["peak"] < 0.9 * 80e9  # bfloat16 state does, in one micro-batch


def test_autocast_copies_count_only_where_the_step_runs_under_autocast():
    from crosslens.training import PlanConfig, make_plan, model_shape_for

    def copies(device, autocast):
        cfg = PlanConfig(
            model=model_shape_for("pico"),
            n_snapshots=4,
            hook="blocks.1.hook_resid_post",
            n_tokens=10**5,
            d_sae=256,
            device=device,
            autocast=autocast,
        )
        return make_plan(cfg)["memory_bytes"]["autocast_copies"]

    d_in = model_shape_for("pico").d_model
    assert copies("cuda", "auto") == copies("cpu", "bfloat16") == 2 * 2 * 4 * d_in * 256
    assert copies("cpu", "auto") == copies("cuda", "none") == 0


def test_auto_state_is_bfloat16_only_when_float32_does_not_fit():
    from crosslens.training.memory import choose_optimizer_state, step_peak_bytes

    need = step_peak_bytes(2, 8, 64, 32, "crosscoder")["float32"]
    assert choose_optimizer_state(2, 8, 64, 32, "crosscoder", None) == "float32"  # a CPU
    assert choose_optimizer_state(2, 8, 64, 32, "crosscoder", int(need / 0.9) + 1) == "float32"
    assert choose_optimizer_state(2, 8, 64, 32, "crosscoder", need) == "bfloat16"


# ------------------------------------------------------------ benchmarks/gpu.py
def test_gpu_benchmark_runs_end_to_end_small_on_cpu():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
        env=benchmark_env(),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "tok/s" in line and " L0 " in line]
    # architectures x precisions x (fresh, trained); JumpReLU trained from its active pairs beside
    # the dense kernels, and young by its default step and the dense kernels (TopK's Triton rows
    # need CUDA)
    assert len(rows) == 4 * 2 * 2 + 2 + 2 * 2
    for path, state in (("sparse", "trained"), ("dense", "trained"), ("dense", "young")):
        assert [r.split()[:4] for r in rows if r.split()[2:4] == [state, path]] == [
            ["jumprelu_crosscoder", precision, state, path] for precision in ("fp32", "bf16")
        ]
    assert {r.split()[0] for r in rows if r.split()[2] == "young"} == {"jumprelu_crosscoder"}
    young = [r for r in rows if " young " in r]  # 8% of the entries open: L0 about 5 of 64
    assert all(4.0 <= float(r.split(" L0 ")[1].split()[0]) <= 6.0 and "passes: " in r for r in young)
    # the path each row's passes took: under autocast on a CPU, the per-snapshot code
    assert all("passes: per snapshot" in r for r in young if " bf16 " in r)
    trained_l0 = [float(r.split(" L0 ")[1].split()[0]) for r in rows if "trained" in r and "topk" not in r]
    assert trained_l0 and all(6.0 <= l0 <= 10.0 for l0 in trained_l0)  # --small sets L0 8
    topk = [r for r in rows if "topk" in r]  # the trained rows: 5% of the features dead, decoded
    assert topk and all(("4 dead (5%)" in r) == (" trained " in r) for r in topk)
    assert "floor, dense" in done.stdout and "floor, sparse" in done.stdout
    assert "FAILED" not in done.stdout


def test_a_failing_gpu_benchmark_row_prints_its_failure_and_the_rows_go_on(monkeypatch):
    gpu = gpu_benchmark()
    rows = iter([torch.OutOfMemoryError("CUDA out of memory.\nTried to allocate 9.00 GiB"), "the next row"])

    def step_row(*args):
        row = next(rows)
        if isinstance(row, Exception):
            raise row
        return row

    monkeypatch.setattr(gpu, "step_row", step_row)
    failed = gpu.row_or_failure("jumprelu_crosscoder", None, "cpu", "bfloat16", "trained", {}, "dense")
    assert failed.split()[:5] == ["jumprelu_crosscoder", "bf16", "trained", "dense", "FAILED"]
    assert failed.endswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB")
    assert gpu.row_or_failure("jumprelu_crosscoder", None, "cpu", None, "fresh", {}, "default") == "the next row"


def test_the_memory_peak_is_read_from_the_allocation_trace():
    """``gpu.py --memory-peak`` replays CUDA's allocation trace: the peak counts what was held
    before the step and frees of blocks made before it, and lists what the step allocated and
    still held at the peak by the crosslens line that made it."""
    profiling = benchmark_script("profiling")  # gpu.py's profiles and memory peaks

    def frames(line):
        torch_frame = {"filename": "/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"}
        return [torch_frame, {"filename": "/repo/crosslens/crosscoders/base.py", "line": line, "name": "hidden_pre"}]

    events = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": frames(10)},
        {"action": "alloc", "addr": 2, "size": 50, "frames": frames(20)},
        {"action": "free_requested", "addr": 1, "size": 100},  # freed once its stream is done: not yet
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 99, "size": 30},  # made before the trace
        {"action": "alloc", "addr": 3, "size": 200, "frames": frames(20)},
        {
            "action": "alloc",
            "addr": 4,
            "size": 10,
            "frames": [{"filename": "/repo/benchmarks/gpu.py", "line": 5, "name": "step"}],
        },
        {"action": "free_completed", "addr": 3, "size": 200},
    ]
    peak, sites = profiling.peak_breakdown(events, before=1000)
    assert peak == 1000 - 30 + 50 + 200 + 10
    assert sites == [("base.py:20 hidden_pre", 250), ("gpu.py:5 step", 10)]
    assert profiling.peak_breakdown([], before=7) == (7, [])


def test_the_repeat_check_says_whether_two_runs_gave_the_same_bytes(monkeypatch):
    """``gpu.py --repeat-steps``: a CPU's steps repeat to the byte; two runs that start from
    different weights are reported as differing, parameter by parameter."""
    gpu = gpu_benchmark()
    a = gpu.parse_args(["--small", "--repeat-steps", "2"])
    line = gpu.repeat_check("topk_crosscoder", a, "cpu", "bfloat16", "trained")
    assert line.split() == ["repeat,", "topk_crosscoder", "bf16", "trained", "2", "steps", "twice:", "same", "bytes"]
    seeds = iter([0, 1])
    make_trainer = gpu.make_trainer
    monkeypatch.setattr(gpu, "make_trainer", lambda *args, **kw: make_trainer(*args, seed=next(seeds), **kw))
    line = gpu.repeat_check("crosscoder", a, "cpu", None, "fresh")
    assert line.split(": ")[1] == "differ" and "W_enc (at most" in line and "W_dec (at most" in line


@NO_CUDA
@pytest.mark.parametrize("arch", ARCHS)
def test_on_cuda_steps_from_one_seed_repeat_to_the_byte(arch):
    """One GPU, one seed, one batch: five steps of the path a run takes under bf16 autocast, fresh
    and at a trained sparsity, give the same parameters to the byte twice (``gpu.py
    --repeat-steps`` measures the same at Ge et al.'s shape)."""
    gpu = gpu_benchmark()
    a = gpu.parse_args(["--small", "--repeat-steps", "5"])
    for state in ("fresh", "trained"):
        line = gpu.repeat_check(arch, a, "cuda", "bfloat16", state)
        assert line.endswith("twice: same bytes"), line


def test_the_profile_places_each_kernel_at_the_line_that_launched_it_and_times_the_gaps():
    """``gpu.py --profile`` finds each kernel's launch (the runtime call sharing its id) inside the
    innermost frame of crosslens on the launching thread (backward's own thread included, and
    any thread's frames where that one has none), and sums the device's idle time between
    kernels, naming the line that launched the kernel after each gap."""
    from types import SimpleNamespace

    profiling = benchmark_script("profiling")  # gpu.py's profiles and memory peaks
    CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def event(name, device, start, end, id=0, thread=1):
        return SimpleNamespace(
            name=name,
            device_type=device,
            time_range=SimpleNamespace(start=start, end=end),
            id=id,
            thread=thread,
            is_python_function=".py(" in name,
        )

    events = [
        event("/repo/crosslens/training/trainer.py(258): step", CPU, 0, 1000),
        event("/repo/crosslens/crosscoders/base.py(533): training_pass", CPU, 10, 50),
        event("/repo/crosslens/kernels/sparse.py(585): backward", CPU, 60, 900, thread=2),
        event("/usr/lib/python3/threading.py(10): run", CPU, 61, 80, thread=2),  # not crosslens's
        event("cudaLaunchKernel", CPU, 20, 21, id=11),
        event("cuLaunchKernel", CPU, 70, 71, id=12, thread=2),
        event("cudaMemcpyAsync", CPU, 55, 56, id=13),
        event("cudaLaunchKernel", CPU, 1500, 1501, id=14, thread=3),  # outside every frame
        event("addmm", CUDA, 100, 200, id=11),
        event("_window_dots", CUDA, 300, 400, id=12),
        event("Memcpy DtoH", CUDA, 1300, 1400, id=13),
        event("unlaunched", CUDA, 1400, 1500, id=99),
        event("late", CUDA, 1600, 1700, id=14),
    ]
    assert profiling.launch_sites(events) == {
        11: "crosslens/crosscoders/base.py(533): training_pass",
        12: "crosslens/kernels/sparse.py(585): backward",
        13: "crosslens/training/trainer.py(258): step",
        99: "(none)",
        14: "(none)",
    }
    sites = profiling.launch_sites(events)
    assert profiling.time_by_line(events, 2, sites)[0] == ("(none)", 0.1)
    gaps = profiling.idle_gaps(events, 1, sites).splitlines()
    assert gaps[0].startswith("device idle: span 1.60 ms per step, kernels running 0.50, idle 1.10 (3 gaps per step)")
    assert gaps[1].split() == [
        "0.900",
        "ms",
        "after",
        "_window_dots",
        "before",
        "Memcpy",
        "DtoH",
        "launched",
        "at",
        "crosslens/training/trainer.py(258):",
        "step",
    ]
    assert profiling.idle_gaps(events, 1).splitlines()[1].split() == [
        "0.900",
        "ms",
        "after",
        "_window_dots",
        "before",
        "Memcpy",
        "DtoH",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a recording that cannot start")
def test_a_memory_peak_that_cannot_be_recorded_leaves_the_row_standing(capsys):
    gpu = gpu_benchmark()
    gpu.print_memory_peak(lambda: None, "cuda", "crosscoder bf16 default")  # no CUDA here: nothing records
    out = capsys.readouterr().out.strip()
    assert out.startswith("memory peak of one step, crosscoder bf16 default: not recorded (")
    assert len(out.splitlines()) == 1


def test_gpu_benchmark_refuses_a_dead_share_outside_0_to_1(capsys):
    gpu = gpu_benchmark()
    for argv, message in (
        (["--dead", "2"], "--dead 2.0: give the share of features counted dead, from 0 up to below 1"),
        (["--repeat-steps", "-1"], "--repeat-steps -1: give how many steps to train twice, 1 or more"),
    ):
        with pytest.raises(SystemExit) as refused:
            gpu.parse_args(argv)
        err = capsys.readouterr().err
        assert refused.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures")
def test_gpu_benchmark_without_cuda_prints_one_line_and_exits_0(capsys):
    assert gpu_benchmark().main([]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "no CUDA device" in out


# ------------------------------------------------------------ checkpoints across GPUs
def test_a_checkpoints_config_puts_each_torchrun_worker_on_its_own_gpu(monkeypatch):
    from crosslens.training.trainer_state import saved_config

    state = {"trainer_cfg": asdict(CrosscoderTrainerConfig(total_steps=3, device="cuda:0"))}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert saved_config(state).device == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert saved_config(state).device == "cuda:3"  # written by rank 0, read by rank 3
    state = {"trainer_cfg": asdict(CrosscoderTrainerConfig(total_steps=3, device="cpu"))}
    assert saved_config(state).device == "cpu"


@NO_CUDA
def test_a_cuda_checkpoint_holds_its_own_gpus_rng_state_and_resumes(tmp_path):
    """Only the trainer's GPU's generator is saved: a resume where other GPUs, or fewer, are
    visible restores that one."""
    cfg = CrosscoderTrainerConfig(
        total_steps=4, lr=3e-3, device="cuda", activation_scale_check="off", checkpoint_dir=str(tmp_path)
    )
    trainer = CrosscoderTrainer(make_sae("crosscoder"), cfg)
    for x in batches(2, 1.0):
        trainer.step(x)
    torch.cuda.manual_seed(7)
    want = torch.cuda.get_rng_state()
    checkpoint = trainer.save_checkpoint()
    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)["rng"]["cuda"]
    assert torch.is_tensor(saved) and torch.equal(saved, want)
    torch.cuda.manual_seed(8)
    CrosscoderTrainer.from_checkpoint(checkpoint)
    assert torch.equal(torch.cuda.get_rng_state(), want)
