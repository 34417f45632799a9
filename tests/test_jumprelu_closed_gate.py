"""A JumpReLU decoder row behind a closed gate gets no gradient at all (it freezes
at whatever norm it had); ``closed_gate_decoder_grad`` gives it the reconstruction gradient
it would get if the gate were open, without changing the forward pass."""

from __future__ import annotations

import torch
from sae_lens.saes.sae import TrainStepInput

from crosslens.crosscoders import JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig


def _crosscoder(closed_gate_decoder_grad: bool) -> JumpReLUTrainingCrosscoder:
    torch.manual_seed(0)
    cc = JumpReLUTrainingCrosscoder(
        JumpReLUTrainingCrosscoderConfig(
            d_in=8,
            d_sae=6,
            n_snapshots=3,
            jumprelu_init_threshold=0.01,
            closed_gate_decoder_grad=closed_gate_decoder_grad,
        )
    )
    with torch.no_grad():
        cc.W_dec[0, 2].mul_(0.01)  # feature 0's row at snapshot 2 is tiny: its gate there stays shut
    return cc


def _step(cc):
    x = 10 * torch.randn(64, 3, 8, generator=torch.Generator().manual_seed(1))
    out = cc.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients={"l0": 1.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
    )
    out.loss.backward()
    return out


def test_closed_gate_row_gets_gradient_only_with_the_option():
    plain, fixed = _crosscoder(False), _crosscoder(True)
    out_plain, out_fixed = _step(plain), _step(fixed)
    # Same forward pass (to the order of float sums: only the plain one may take the gated decode).
    torch.testing.assert_close(out_plain.sae_out, out_fixed.sae_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_plain.loss, out_fixed.loss, rtol=1e-6, atol=0)
    f_SNF = fixed._training_encode(10 * torch.randn(64, 3, 8, generator=torch.Generator().manual_seed(1))).extras[
        "f_SNF"
    ]
    fires = (f_SNF[:, :, 0] != 0).any(dim=1)
    assert bool(fires[0]) and not bool(fires[2])  # open at snapshot 0, shut at snapshot 2
    assert float(plain.W_dec.grad[0, 2].norm()) == 0.0  # frozen without the option
    assert float(fixed.W_dec.grad[0, 2].norm()) > 0.0
    # ... and it is the reconstruction gradient of the open gate: the loss written out by hand
    # (mean over tokens of sum_s ||x_hat_s - x_s||^2), decoding with the per-snapshot code
    # h * [h ||W_dec[i, s]|| > t] (no input centring, unit norm factors), plus a term zero forward
    # that decodes feature 0 at snapshot 2 with its shared code h * [open at any snapshot]
    x_NSD = 10 * torch.randn(64, 3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_NF = x_NSD.reshape(64, 24) @ fixed.W_enc.reshape(24, 6) + fixed.b_enc
        open_NSF = h_NF[:, None, :] * fixed.W_dec.norm(dim=-1).T > fixed.threshold
        shared_N = h_NF[:, 0] * open_NSF[:, :, 0].any(dim=1)
    W_dec = fixed.W_dec.detach().clone().requires_grad_(True)
    recon_NSD = torch.einsum("nsf,fsd->nsd", h_NF[:, None, :] * open_NSF, W_dec) + fixed.b_dec.detach()
    torch.testing.assert_close(recon_NSD, out_fixed.sae_out, rtol=1e-5, atol=1e-5)  # the same forward
    opened = shared_N[:, None] * (W_dec[0, 2] - W_dec[0, 2].detach())
    recon_NSD = torch.cat([recon_NSD[:, :2], (recon_NSD[:, 2] + opened)[:, None]], dim=1)
    ((recon_NSD - x_NSD) ** 2).sum(dim=(1, 2)).mean().backward()
    assert float(shared_N.abs().sum()) > 0  # feature 0 is open somewhere on some tokens
    # (the sparsity terms give a shut row nothing: its tanh score is tanh(0) at every token)
    torch.testing.assert_close(fixed.W_dec.grad[0, 2], W_dec.grad[0, 2], rtol=1e-4, atol=1e-5)
    # Open rows get the same gradient either way; the encoder and threshold are untouched.
    assert torch.allclose(plain.W_dec.grad[0, 0], fixed.W_dec.grad[0, 0])
    # (to float rounding: the plain crosscoder's gated decode works feature-major, its sums in another order)
    torch.testing.assert_close(plain.W_enc.grad, fixed.W_enc.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain.threshold.grad, fixed.threshold.grad, rtol=1e-5, atol=1e-6)
