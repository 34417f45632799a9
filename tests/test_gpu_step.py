"""The step's GPU-facing parts, checked on CPU: the clip folded into Adam, Adam with
bfloat16 moments, the precision and optimizer-state defaults, their memory plan, and
benchmarks/gpu.py run end to end at a tiny shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crosslens.crosscoders as cc
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
from crosslens.training.optim import BFloat16StateAdam, stochastic_bfloat16

ROOT = Path(__file__).resolve().parents[1]
S, D, F, B = 2, 8, 32, 16
ARCHS = list(cc.ARCHITECTURES)
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
    extra = {"crosscoder": {"l1_coefficient": 0.05}, "jumprelu_crosscoder": {"l0_coefficient": 0.01}}.get(arch, {"k": 4})
    torch.manual_seed(0)
    return train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **extra))


def train(arch: str, steps: int = 20, scale: float = 1.0, **kw) -> tuple[CrosscoderTrainer, list[float]]:
    cfg = CrosscoderTrainerConfig(total_steps=steps, lr=3e-3, activation_scale_check="off", **kw)
    trainer = CrosscoderTrainer(make_sae(arch), cfg)
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


# ------------------------------------------------------------ bfloat16 Adam state
def test_stochastic_rounding_is_unbiased_and_between_neighbours():
    x = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of the way from 1 to the next bfloat16
    r = stochastic_bfloat16(x, torch.Generator().manual_seed(0)).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert r.mean().item() == pytest.approx(1.0 + 2**-10, abs=2e-5)


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


def test_bfloat16_state_resumes_to_the_same_bytes(tmp_path):
    cfg = dict(total_steps=10, lr=3e-3, activation_scale_check="off", optimizer_state_dtype="bfloat16")
    xs = batches(10)
    whole = CrosscoderTrainer(make_sae("crosscoder"), CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / "a")))
    whole.fit(xs)
    first = CrosscoderTrainer(make_sae("crosscoder"), CrosscoderTrainerConfig(**cfg, checkpoint_dir=str(tmp_path / "b")))
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


def test_optimizer_state_dtype_is_checked():
    with pytest.raises(ValueError, match="optimizer_state_dtype"):
        CrosscoderTrainerConfig(total_steps=1, optimizer_state_dtype="int8")
