"""Issue 14: the blocked JumpReLU gate/score function gives the loss and every gradient
of the whole-batch implementation it replaced (copied below as the reference), on random
inputs whose gates are open at some snapshots and shut at others."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

import crosslens.crosscoders.jumprelu_kernels as kernels
from crosslens.crosscoders import JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig
from crosslens.crosscoders.base import CrosscoderPass
from crosslens.crosscoders.collectives import LocalCollectives


# ------------------------------------------------- the implementation before issue 14
class OldSnapshotJumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h_NF, norms_FS, threshold_F, bandwidth):  # type: ignore[override]
        norms_S1F = norms_FS.T.contiguous()[:, None, :]
        ctx.save_for_backward(h_NF, norms_S1F, threshold_F)
        ctx.bandwidth = bandwidth
        return torch.where(h_NF * norms_S1F > threshold_F, h_NF, 0.0)

    @staticmethod
    def backward(ctx: Any, grad_SNF):  # type: ignore[override]
        h_NF, norms_S1F, threshold_F = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        distance_SNF = h_NF * norms_S1F - threshold_F
        grad_h = torch.where(distance_SNF > 0, grad_SNF, 0.0).sum(dim=0)
        in_window_SNF = distance_SNF.abs_() < bandwidth / 2
        window_grad_SF = torch.where(in_window_SNF, grad_SNF, 0.0).sum(dim=1)
        kernel_SF = threshold_F / (norms_S1F[:, 0].clamp(min=1e-8) * bandwidth)
        grad_t = -(window_grad_SF * kernel_SF).sum(dim=0)
        return grad_h, None, grad_t, None


class OldJumpReLU(JumpReLUTrainingCrosscoder):
    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD)
        norms_FS = self.snapshot_norms()
        f_SNF = OldSnapshotJumpReLU.apply(h_NF, norms_FS, self.threshold.to(h_NF.dtype), self.cfg.jumprelu_bandwidth)
        with torch.no_grad():
            on_anywhere_NF = self.collectives.snapshot_any((f_SNF != 0).any(dim=0))
            f_NF = torch.where(on_anywhere_NF, h_NF, 0.0)
        f_NF = self.hook_sae_acts_post(f_NF)
        return CrosscoderPass(
            x_NSD=x_NSD, hidden_pre_NF=h_NF, feature_acts_NF=f_NF, extras={"f_SNF": f_SNF, "norms_FS": norms_FS}
        )

    def _sparsity_losses(self, step_input, fwd):
        f_SNF, norms_FS = fwd.extras["f_SNF"], fwd.extras["norms_FS"]
        scale_S1F = (self.cfg.tanh_scale * norms_FS.T).contiguous()[:, None, :]
        score_SNF = torch.tanh(f_SNF * scale_S1F)
        p_F = self.collectives.mean_over_snapshots_and_tokens(score_SNF)
        q = self.cfg.sparsity_target
        per_feature_F = p_F if q is None else p_F * (1 + p_F / q)
        penalty = self.collectives.replicated_share(per_feature_F.sum())
        return {"l0_loss": step_input.coefficients["l0"] * penalty}


# ------------------------------------------------------------------------- helpers
def _pair(seed: int, **cfg: Any) -> tuple[JumpReLUTrainingCrosscoder, OldJumpReLU]:
    config = dict(d_in=6, d_sae=40, n_snapshots=4, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1) | cfg
    torch.manual_seed(seed)
    new = JumpReLUTrainingCrosscoder(JumpReLUTrainingCrosscoderConfig(**config))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # snapshots of very different strength, so gates differ per snapshot
        new.W_dec.mul_(torch.rand(config["d_sae"], config["n_snapshots"], 1, generator=gen) * 3)
        new.threshold.copy_(torch.rand(config["d_sae"], generator=gen) * 0.2)
        new.b_enc.copy_(torch.randn(config["d_sae"], generator=gen) * 0.1)
    old = OldJumpReLU(JumpReLUTrainingCrosscoderConfig(**config))
    old.load_state_dict(new.state_dict())
    return new, old


def _run(cc, x: torch.Tensor):
    step = TrainStepInput(
        sae_in=x, coefficients={"l0": 0.7}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    out = cc.training_forward_pass(step)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in cc.named_parameters()}


@pytest.mark.parametrize("block_elements", [200, 1 << 20])  # many blocks, then one
@pytest.mark.parametrize(
    "cfg",
    [{}, {"sparsity_target": None}, {"closed_gate_decoder_grad": True}, {"tanh_scale": 1.5, "jumprelu_bandwidth": 0.3}],
)
@pytest.mark.parametrize("collectives", ["default", "local"])
def test_loss_and_every_gradient_match_the_old_implementation(monkeypatch, block_elements, cfg, collectives):
    monkeypatch.setattr(kernels, "CPU_BLOCK_ELEMENTS", block_elements)
    new, old = _pair(3, **cfg)
    if collectives == "local":  # the object a one-rank mesh run holds, with the snapshot count set
        new.collectives = LocalCollectives(n_snapshots_total=4)
        old.collectives = LocalCollectives(n_snapshots_total=4)
    x = 3 * torch.randn(37, 4, 6, generator=torch.Generator().manual_seed(9))
    out_new, grads_new = _run(new, x)
    out_old, grads_old = _run(old, x)

    # the inputs exercise every case: gates open at some snapshots and shut at others, in the window
    f_SNF = new._training_encode(x).extras["f_SNF"]
    open_SNF = f_SNF != 0
    partly_open = open_SNF.any(0) & ~open_SNF.all(0)
    assert partly_open.float().mean() > 0.05 and open_SNF.float().mean() > 0.1
    assert float(grads_old["threshold"].abs().sum()) > 0 and float(grads_old["W_dec"].abs().sum()) > 0

    for key in ("mse_loss", "l0_loss"):
        torch.testing.assert_close(out_new.losses[key], out_old.losses[key], rtol=1e-5, atol=1e-6)
    assert torch.equal(out_new.sae_out, out_old.sae_out)  # same gated code, same decoder matmul
    assert torch.equal(out_new.feature_acts, out_old.feature_acts)
    assert set(grads_new) == set(grads_old) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    for name, grad in grads_old.items():
        torch.testing.assert_close(grads_new[name], grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")


def test_block_size_follows_the_device():
    assert kernels.token_block(4096, 8, 8192, torch.device("cpu")) == kernels.CPU_BLOCK_ELEMENTS // (8 * 8192)
    assert kernels.token_block(4096, 8, 8192, torch.device("meta")) == 4096  # one block off the CPU
    assert kernels.token_block(3, 8, 8192, torch.device("cpu")) == 3
    assert kernels.token_block(100, 1 << 12, 1 << 12, torch.device("cpu")) == 1  # never zero


def test_gradient_without_the_score_matches_old_straight_through():
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(6, 3, generator=gen, requires_grad=True)
    norms = torch.rand(3, 2, generator=gen) + 0.5
    t = torch.tensor([0.1, 0.3, 0.2], requires_grad=True)
    upstream = torch.randn(2, 6, 3, generator=gen)
    f_new, _, _ = kernels.snapshot_gate_and_score(h, norms, t, bandwidth=0.8, tanh_scale=4.0)
    (f_new * upstream).sum().backward()
    grads_new = (h.grad.clone(), t.grad.clone())
    h.grad = t.grad = None
    f_old = OldSnapshotJumpReLU.apply(h, norms, t, 0.8)
    assert torch.equal(f_new, f_old)
    (f_old * upstream).sum().backward()
    torch.testing.assert_close(grads_new, (h.grad, t.grad))


@pytest.mark.slow  # torch.compile takes tens of seconds on 2 CPU cores
def test_compiled_kernels_match_the_old_implementation():
    kernels.use_compiled_kernels(True)
    try:
        new, old = _pair(3)
        x = 3 * torch.randn(37, 4, 6, generator=torch.Generator().manual_seed(9))
        out_new, grads_new = _run(new, x)
        out_old, grads_old = _run(old, x)
    finally:
        kernels.use_compiled_kernels(False)
    for key in ("mse_loss", "l0_loss"):
        torch.testing.assert_close(out_new.losses[key], out_old.losses[key], rtol=1e-5, atol=1e-6)
    for name, grad in grads_old.items():
        torch.testing.assert_close(grads_new[name], grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
