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
    # Open rows get the same gradient either way; the encoder and threshold are untouched.
    assert torch.allclose(plain.W_dec.grad[0, 0], fixed.W_dec.grad[0, 0])
    # (to float rounding: the plain crosscoder's gated decode works feature-major, its sums in another order)
    torch.testing.assert_close(plain.W_enc.grad, fixed.W_enc.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain.threshold.grad, fixed.threshold.grad, rtol=1e-5, atol=1e-6)
