"""The small tensor helpers of crosslens.core.tensors."""

from __future__ import annotations

import torch

from crosslens.core.tensors import mask_values, row_counts, row_norms


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


def test_bool_masks_counted_and_converted_through_their_bytes_give_what_torch_gives():
    mask = torch.rand(37, 53, generator=torch.Generator().manual_seed(0)) < 0.3
    for view in (mask, mask.T, mask[:, 5:40:3]):  # contiguous, transposed and strided
        assert torch.equal(row_counts(view), view.sum(dim=-1).int())
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            values = mask_values(view, dtype)
            assert values.dtype == dtype and values.shape == view.shape
            assert torch.equal(values, view.to(dtype))
    assert mask_values(mask, torch.float32).unique().tolist() == [0.0, 1.0]


def test_row_counts_read_as_words_never_carry_between_lanes():
    # rows of every entry True fill each byte lane of the summed words to the most it holds;
    # longer rows, tails that are no whole word and rows starting mid-word take other ways
    g = torch.Generator().manual_seed(1)
    for n in (8, 2040, 2048, 4081, 6000):
        full = torch.ones(3, n, dtype=torch.bool)
        assert row_counts(full).tolist() == [n] * 3
        mask = torch.rand(2, 3, n, generator=g) < 0.6
        for view in (mask, mask[..., 8:], mask[..., 3:], mask[0, 1]):
            assert torch.equal(row_counts(view), view.sum(dim=-1).int())
    assert row_counts(torch.ones(0, 16, dtype=torch.bool)).shape == (0,)
