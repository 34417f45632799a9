"""The JumpReLU kernels' tensor arithmetic, free of settings and of autograd.

The JumpReLU step's modules (:mod:`~crosslens.kernels.jumprelu_dense`,
:mod:`~crosslens.kernels.jumprelu_entry_classes`, :mod:`~crosslens.kernels.jumprelu_pairs`,
:mod:`~crosslens.kernels.jumprelu_split`) hold the autograd functions and their tuning knobs;
the pieces here compute one block, one padded row block or one product at a time from what
those functions hand them.

tanh(x) is computed as ``2 * sigmoid(2x) - 1`` and its derivative ``1 - tanh(x)^2`` as
``4 * sigmoid(2x) * (1 - sigmoid(2x))``: equal in exact arithmetic, within a few float32
roundings of ``torch.tanh``, and on a CPU ``torch.sigmoid`` is several times faster than
``torch.tanh``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float


def forward_block(
    h_BF: torch.Tensor, norms_S1F: torch.Tensor, scale_S1F: torch.Tensor, threshold_F: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gated code ``[S, B, F]``, any-snapshot gate ``[B, F]`` and score sums ``[F]``."""
    open_SBF = h_BF * norms_S1F > threshold_F
    f_SBF = torch.where(open_SBF, h_BF, 0.0)
    score_sum_F = torch.tanh(f_SBF * scale_S1F).sum(dim=(0, 1), dtype=torch.float32)
    return f_SBF, open_SBF.any(dim=0), score_sum_F


def pair_score_sums(
    h_A: torch.Tensor,
    feature_A: torch.Tensor,
    norms_FS: torch.Tensor,
    threshold_F: torch.Tensor,
    tanh_scale: float,
    score_sum_F: torch.Tensor,
) -> None:
    """Add to ``score_sum_F`` (float32) the scores ``tanh(c * h * norm_s)`` at every snapshot whose
    gate ``h * norm_s > t`` is open, of the (token, feature) entries whose pre-activations are
    ``h_A``. The gate is the other kernels' to the bit (the same float32 product); the score is
    computed from a sigmoid, with the mask as a product (both several times faster than
    ``tanh`` and ``torch.where`` on a CPU), a shut gate's ``2 * sigmoid(0) - 1`` exactly 0."""
    x_AS = norms_FS.index_select(0, feature_A).float().mul_(h_A.float()[:, None])
    open_AS = x_AS > threshold_F.index_select(0, feature_A).float()[:, None]
    # in place: one [A, S] float tensor and its mask are all a block of entries allocates
    score_AS = x_AS.mul_(open_AS).mul_(2 * tanh_scale).sigmoid_().mul_(2).sub_(1)
    score_sum_F.index_add_(0, feature_A, score_AS.sum(dim=1))


def backward_block(
    h_BF: torch.Tensor,
    norms_S1F: torch.Tensor,
    scale_S1F: torch.Tensor,
    threshold_F: torch.Tensor,
    grad_SBF: torch.Tensor,
    grad_score_F: torch.Tensor,
    half_width: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gradient to ``h`` ``[B, F]``, the score's gradient to the norms (before
    the factor c) ``[S, F]``, and the decoder-plus-score gradient inside the threshold's
    window summed over tokens ``[S, F]``."""
    distance_SBF = h_BF * norms_S1F - threshold_F
    open_SBF = distance_SBF > 0
    f_SBF = torch.where(open_SBF, h_BF, 0.0)
    score_SBF = torch.tanh(f_SBF * scale_S1F)
    # the scores' gradient: grad * sech^2, times c * norm for f and c * f for the norm
    sech_grad_SBF = torch.ops.aten.tanh_backward(grad_score_F.expand_as(score_SBF), score_SBF)
    grad_norms_SF = (sech_grad_SBF * f_SBF).sum(dim=1)
    grad_SBF = torch.addcmul(grad_SBF, sech_grad_SBF, scale_S1F)
    grad_h_BF = torch.where(open_SBF, grad_SBF, 0.0).sum(dim=0)
    window_grad_SF = torch.where(distance_SBF.abs() < half_width, grad_SBF, 0.0).sum(dim=1)
    return grad_h_BF, grad_norms_SF, window_grad_SF


def everywhere_score_block(h_BF: torch.Tensor, everywhere_BF: torch.Tensor, scale_S1F: torch.Tensor) -> torch.Tensor:
    """One block's score sums ``[F]`` of the entries open at every snapshot (``everywhere_BF``),
    whose code is ``h`` at each: ``tanh(c * h * norm_s)`` summed over those tokens and every
    snapshot, the mask as a product."""
    score_SBF = torch.tanh(h_BF * scale_S1F)
    return (score_SBF * everywhere_BF).sum(dim=(0, 1), dtype=torch.float32)


def everywhere_score_grad_block(
    h_BF: torch.Tensor, everywhere_BF: torch.Tensor, scale_S1F: torch.Tensor, grad_score_F: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`everywhere_score_block`'s sums: to ``h`` ``[B, F]``, and to the
    norms before the factor c ``[S, F]``."""
    score_SBF = torch.tanh(h_BF * scale_S1F)
    sech_grad_SBF = torch.ops.aten.tanh_backward(grad_score_F.expand_as(score_SBF), score_SBF) * everywhere_BF
    grad_norms_SF = (sech_grad_SBF * h_BF).sum(dim=1)
    grad_h_BF = (sech_grad_SBF * scale_S1F).sum(dim=0)
    return grad_h_BF, grad_norms_SF


def threshold_gradient(
    window_grad_FS: torch.Tensor, norms_FS: torch.Tensor, threshold_F: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    """The threshold's straight-through gradient from the code's gradient summed over the
    tokens inside the window: ``-sum_s t / (||W_dec[i, s]|| * eps) * window_grad[i, s]``."""
    kernel_FS = threshold_F[:, None] / (norms_FS.clamp(min=1e-8) * bandwidth)
    return -(window_grad_FS * kernel_FS).sum(dim=1)


def sigmoid_of_twice(x: torch.Tensor, scale2: torch.Tensor) -> torch.Tensor:
    """``sigmoid(2 * x * scale)`` given ``scale2 = 2 * scale``; ``2 * s - 1`` is ``tanh(x * scale)``."""
    return (x * scale2).sigmoid_()


def tanh_from_sigmoid(sigmoid: torch.Tensor) -> torch.Tensor:
    return sigmoid * 2 - 1


def quarter_sech2(sigmoid: torch.Tensor) -> torch.Tensor:
    """``(1 - tanh(x)^2) / 4 = s (1 - s)`` for ``s = sigmoid(2x)``."""
    return torch.addcmul(sigmoid, sigmoid, sigmoid, value=-1)


def sech2_times(sigmoid: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad * (1 - tanh(x)^2)`` for ``s = sigmoid(2x)``."""
    return quarter_sech2(sigmoid).mul_(grad * 4)


SPARSE_WORD_SHARE = 0.15
"""Where at most this share of a CPU mask's 8-entry words hold a True entry, :func:`flat_nonzero`
finds those words first (under it, that is faster than one pass over every entry; over it, slower)."""


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat indices of ``mask``'s True entries, ascending: ``mask.view(-1).nonzero()``. On a CPU,
    a sparse mask is read as 64-bit words of eight entries first (a count of the words that hold
    one, then their indices), and only those words' entries are searched; ``nonzero`` alone reads
    every entry, however few are True."""
    flat = mask.view(-1)
    if flat.device.type != "cpu" or flat.numel() % 8 or flat.storage_offset() % 8:
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64)
    if int(torch.count_nonzero(words)) > SPARSE_WORD_SHARE * words.numel():
        return flat.nonzero().squeeze(1)
    held = words.nonzero().squeeze(1)
    word, entry = flat.view(-1, 8)[held].nonzero().unbind(1)
    return held[word] * 8 + entry


class PaddedRows:
    """Feature-major entries (flat ``i * N + n``, ascending) laid out as the rows of an
    ``[F, P]`` matrix, row i holding feature i's entries in order and zeros after them,
    ``P`` the most entries any feature has."""

    def __init__(self, flat: torch.Tensor, counts_F: torch.Tensor, width: int, n_tokens: int) -> None:
        n_features = counts_F.numel()
        self.shape = (n_features, width)
        # entry e of feature i (the entries before it: first_i) goes to i * P + e - first_i
        first_F = counts_F.cumsum(0, dtype=torch.int64).sub_(counts_F)
        shift_F = torch.arange(n_features, device=flat.device).mul_(width).sub_(first_F)
        entry = torch.arange(flat.numel(), device=flat.device)
        self.slots = entry.add_(shift_F.repeat_interleave(counts_F, output_size=flat.numel()))
        """Where each entry sits in the flattened ``[F, P]`` matrix."""

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """``[F, P]`` from one value per entry (zero, or False, in the padding)."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_copy_(0, self.slots, values).view(self.shape)

    def take(self, values_FP: torch.Tensor) -> torch.Tensor:
        """One value per entry from an ``[F, P]`` matrix (the inverse of :meth:`pad`)."""
        return values_FP.reshape(-1).index_select(0, self.slots)


def padded_scores(
    row_blocks: list[slice],
    h_FP: torch.Tensor,
    scale_FS: torch.Tensor,
    score_sum_F: torch.Tensor,
    window: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None,
    grads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Add each feature's sum over its row's entries and every snapshot of ``tanh(c h norm)``
    (``scale_FS = c * norms``), a block of rows (``row_blocks``) at a time, and return the parts of
    the scores' gradients that do not depend on the gradient reaching them (it is one number per
    feature, so the backward only multiplies by ``4 * grad``): ``sech^2 / 4`` summed against h
    per (feature, snapshot) for the norms (before the factor c), inside the threshold's window
    per (feature, snapshot), and against ``c * norm`` per slot ``[F, P]`` for h. ``window`` is the
    entries' window membership ``[F, P]`` (inside at every snapshot), or ``(norms_FS,
    threshold_F, valid_FP, half_width)`` to test it per snapshot, or None to leave the window to
    the gathered pairs; with ``grads`` False, the sums alone (and None).

    A row's sum of tanh is twice its sum of sigmoids less ``S * P`` (padding adds sigmoid(0) =
    1/2, tanh(0) = 0); the sigmoids are summed in float64 so that the difference keeps float32's
    precision. Working out the gradients' parts here reads each sigmoid while it is in cache,
    instead of computing it again in the backward."""
    n_features, S = scale_FS.shape
    width = h_FP.shape[1]
    scale2_FS = scale_FS * 2
    parts = None
    if grads:
        parts = (scale_FS.new_zeros(n_features, S), scale_FS.new_zeros(n_features, S), torch.empty_like(h_FP))
    for block in row_blocks:
        h_BP = h_FP[block]
        sigmoid_BSP = sigmoid_of_twice(h_BP[:, None, :], scale2_FS[block, :, None])
        sigmoid_sum_B = sigmoid_BSP.sum(dim=(1, 2), dtype=torch.float64)
        score_sum_F[block] += sigmoid_sum_B.mul_(2).sub_(S * width).to(score_sum_F.dtype)
        if parts is None:
            continue
        grad_norms_FS, window_sech_FS, grad_h_FP = parts
        sech_BSP = quarter_sech2(sigmoid_BSP)
        grad_norms_FS[block] = (sech_BSP * h_BP[:, None, :]).sum(dim=-1)
        grad_h_FP[block] = (sech_BSP * scale_FS[block, :, None]).sum(dim=1)
        if isinstance(window, torch.Tensor):
            window_sech_FS[block] = (sech_BSP * window[block, None, :]).sum(dim=-1)
        elif window is not None:
            norms_FS, threshold_F, valid_FP, half_width = window
            distance_BSP = (h_BP[:, None, :] * norms_FS[block, :, None]).sub_(threshold_F[block, None, None])
            inside_BSP = (distance_BSP.abs_() < half_width).logical_and_(valid_FP[block, None, :])
            window_sech_FS[block] = (sech_BSP * inside_BSP).sum(dim=-1)
    return parts


def code_grad_and_window_sums(
    W_dec_FSD: torch.Tensor, grad_flat: torch.Tensor, window_mask: Any, block_rows: int
) -> tuple[Float[torch.Tensor, "d_sae n"], Float[torch.Tensor, "d_sae n_snapshots"]]:
    """The decoder's gradient to the code, summed over snapshots, ``[F, N]``, and its sum
    over each (feature, snapshot)'s tokens inside the threshold window ``[F, S]``
    (``window_mask(s, rows)``: a float ``[rows, N]`` mask of the features in the slice ``rows``),
    from one ``[rows, D] @ [D, N]`` product per snapshot and block of ``block_rows`` features:
    each product is added into the first and gives the second as masked row sums while it is
    still in cache. This is cheaper on a CPU than one matmul for the code's gradient and another
    for the window's sums over tokens (``mask @ grad``, then a dot with W_dec), which reads the
    gradient twice, and than the same products over every feature at once, whose ``[F, N]``
    results go to memory and back; ``benchmarks/cpu_ops.py`` (2c) compares the three."""
    F_, S, D = W_dec_FSD.shape
    grad_NSD = grad_flat.view(-1, S, D)
    grad_FN = W_dec_FSD.new_empty(F_, grad_NSD.shape[0])
    product_BN = W_dec_FSD.new_empty(min(F_, block_rows), grad_NSD.shape[0])
    window_FS = W_dec_FSD.new_empty(F_, S)
    for start in range(0, F_, block_rows):
        rows = slice(start, min(F_, start + block_rows))
        sum_BN, out_BN = grad_FN[rows], product_BN[: rows.stop - start]
        for s in range(S):
            product = sum_BN if s == 0 else out_BN
            torch.mm(W_dec_FSD[rows, s], grad_NSD[:, s].T, out=product)
            window_FS[rows, s] = torch.linalg.vecdot(product, window_mask(s, rows))
            if s:
                sum_BN += out_BN
    return grad_FN, window_FS
