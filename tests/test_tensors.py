"""The small tensor helpers of crosslens.core.tensors."""

from __future__ import annotations

import torch

from crosslens.core.tensors import row_norms


def test_row_norms_match_autograds_norm_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 9, dtype=torch.float64, generator=g)
    x[2, 1] = 0  # a zero row: gradient 0, as autograd's norm gives
    x.requires_grad_()
    grad = torch.randn(6, 4, dtype=torch.float64, generator=g)
    got = row_norms(x)
    want = x.norm(dim=-1)
    torch.testing.assert_close(got, want)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    (want_grad,) = torch.autograd.grad(want, x, grad)
    torch.testing.assert_close(got_grad, want_grad)
    assert got_grad[2, 1].abs().max() == 0 and got_grad.abs().max() > 0
    assert torch.autograd.gradcheck(row_norms, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))
