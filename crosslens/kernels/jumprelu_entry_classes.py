"""The JumpReLU step on a CPU: its gate, tanh scores and gated decode without an ``[S, N, F]``
code, where few entries' gates differ between snapshots (the step's "entry classes" path).

Every gate ``[h_i * ||W_dec[i, s]|| > t_i]`` and every score ``tanh(c * f_{i,s} *
||W_dec[i, s]||)`` is a function of the shared pre-activation ``h [N, F]``, the decoder
norms ``[F, S]`` and the threshold ``[F]``. :class:`EntryClasses` sorts each (token, feature)
entry by whether its gate is open at every snapshot, at none or at some, from the smallest and
largest norm alone. Entries open everywhere are decoded with one ``[N, F] @ [F, S*D]`` matmul,
as in a plain crosscoder; the rest work per snapshot on gathered entries
(:class:`SnapshotGatedDecode`). Freshly initialised crosscoders (equal norms) have no mixed
entries, and trained ones few; with many, :func:`entry_classes_gated_decode` declines and the
step takes the per-snapshot reference
(:func:`~crosslens.kernels.jumprelu_dense.per_snapshot_gated_decode`). The values and gradients
are the reference's, to the order of float sums (and tanh's rounding: it is computed from a
sigmoid). Not under autocast, whose matmul dtypes its gathered updates do not follow.

The tensor arithmetic itself lives in :mod:`crosslens.kernels.jumprelu_ops`.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.tensors import mask_values, row_counts
from crosslens.kernels.jumprelu_ops import (
    PaddedRows,
    code_grad_and_window_sums,
    flat_nonzero,
    padded_scores,
    sech2_times,
    sigmoid_of_twice,
    tanh_from_sigmoid,
    threshold_gradient,
)
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.weight_grads import WeightBlock, block_listing

# ----------------------------------------------------------------------------------------
# Gate, scores and decode together, from the shared code's point of view.
#
# For a token n and feature i the S gates differ only through the norms: the gate at s
# is ``d_s > 0`` and the threshold window ``|d_s| < eps/2`` with ``d_s = h * norms_s - t``,
# and d_s (rounded products and differences included) is monotone in norms_s. So the
# smallest and largest norm decide, with two passes over the entries instead of S,
# whether a gate is open at every snapshot, at none or at some ("mixed"), and likewise for
# the window. Where the gate is the same at every snapshot the per-snapshot code is the
# shared code, and decoding it is the plain crosscoder's one [N, F] @ [F, S*D] matmul. The
# threshold's window is summed over tokens with one more matmul where it is the same at
# every snapshot, with a mask and a matmul per snapshot where many entries are inside it
# at some snapshots only, else from gathered rows. Only mixed gates, one open (entry,
# snapshot) pair at a time, and the tanh scores of entries open somewhere need work per
# snapshot.
#
# Entries are held feature-major, as the [F, N] transpose of h: a feature's entries are
# then one contiguous row, its counts and sums are row reductions, and the entries open
# at every snapshot can be packed into the rows of an [F, P] matrix (PaddedRows) whose
# per-snapshot scores broadcast the feature's norms along the row and sum along it,
# instead of gathering the norms and scattering the sums entry by entry. That is what a
# fresh crosscoder needs: no gate is mixed there (all norms start equal), but about 30%
# of the entries are open everywhere. A trained crosscoder has few open entries, gathered
# one at a time.
#
# tanh is computed from a sigmoid (see crosslens.kernels.jumprelu_ops).
# ----------------------------------------------------------------------------------------


class EntryClasses:
    """Where each (token, feature) entry's gate and threshold window stand across
    snapshots, from the smallest and largest decoder norm of each feature, and how
    :class:`SnapshotGatedDecode` will treat them. Entries are indexed feature-major:
    ``h_FN`` is the ``[F, N]`` transpose of h and flat indices are ``i * N + n``."""

    def __init__(
        self,
        h_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        threshold_F: torch.Tensor,
        half_width: float,
        plan: KernelPlan | None = None,
    ) -> None:
        self.plan = plan = plan_for(h_NF.device, plan)
        """The plan whose shares and block sizes the classes and the step follow."""
        self.h_FN = h_NF.detach().T.contiguous()  # no copy when h was made feature-major
        threshold_F1 = threshold_F[:, None]
        # the same two roundings as h * norms - t per snapshot (no fused multiply-add)
        d_lo_FN = (self.h_FN * norms_FS.min(dim=1).values[:, None]).sub_(threshold_F1)
        d_hi_FN = (self.h_FN * norms_FS.max(dim=1).values[:, None]).sub_(threshold_F1)
        d_min_FN = torch.minimum(d_lo_FN, d_hi_FN)
        d_max_FN = torch.maximum(d_lo_FN, d_hi_FN, out=d_hi_FN)
        del d_lo_FN
        self.open_all_FN = d_min_FN > 0
        self.open_any_FN = d_max_FN > 0
        self.all_open_flat = flat_nonzero(self.open_all_FN)
        self.mixed_open_flat = flat_nonzero(self.open_any_FN & ~self.open_all_FN)
        gather_limit = plan.gather_share * self.h_FN.numel()
        self.sparse_ok = self.mixed_open_flat.numel() <= gather_limit
        """Few enough mixed gates for :class:`SnapshotGatedDecode`."""
        self.open_rows: PaddedRows | None = None
        """The entries open everywhere packed into rows, or None where they are gathered."""
        if self.sparse_ok and self.all_open_flat.numel():
            counts_F = row_counts(self.open_all_FN)
            width = int(counts_F.max())
            if counts_F.numel() * width <= plan.padding_limit * self.all_open_flat.numel():
                self.open_rows = PaddedRows(self.all_open_flat, counts_F, width, self.h_FN.shape[1])

        self.window_all_FN = (d_min_FN > -half_width) & (d_max_FN < half_width)
        window_some_FN = (d_min_FN < half_width) & (d_max_FN > -half_width)
        window_mixed_flat = flat_nonzero(window_some_FN & ~self.window_all_FN)
        n_window_all = int(torch.count_nonzero(self.window_all_FN))
        mode = plan.window_mode or (
            "per_snapshot"
            if window_mixed_flat.numel() > gather_limit
            else "matmul"
            if n_window_all > gather_limit
            else "gathered"
        )
        self.window_per_snapshot = mode == "per_snapshot"
        """Sum the threshold window with a mask and a matmul per snapshot."""
        self.dense_window = mode == "matmul"
        """Sum the window of entries inside it at every snapshot with one matmul (and of
        the others from gathered rows)."""
        if self.window_per_snapshot:
            window_mixed_flat = window_mixed_flat[:0]
        elif not self.dense_window and n_window_all:
            window_mixed_flat = torch.cat([window_mixed_flat, flat_nonzero(self.window_all_FN)])
        self.window_gathered_flat = window_mixed_flat
        """Entries whose window is summed from gathered rows, per snapshot."""

    @property
    def gathered_flat(self) -> torch.Tensor:
        """Entries whose gates and scores are worked out one entry at a time: the mixed
        ones, and those open everywhere unless they are packed into rows."""
        if self.open_rows is not None:
            return self.mixed_open_flat
        return torch.cat([self.all_open_flat, self.mixed_open_flat])


def _row_blocks(rows: PaddedRows, n_snapshots: int, device: torch.device, plan: KernelPlan) -> list[slice]:
    """Slices of padded rows whose ``[rows, S, P]`` work fits the plan's block elements (its
    ``row_block_elements`` on a CPU)."""
    n_rows, width = rows.shape
    step = max(1, plan.block_elements(device, plan.row_block_elements) // max(1, n_snapshots * width))
    return [slice(a, a + step) for a in range(0, n_rows, step)]


def _pair_chunks(n_pairs: int, d_in: int, plan: KernelPlan) -> list[slice]:
    """Slices of gathered (entry, snapshot) pairs holding about the plan's ``sparse_entry_chunk``
    elements each."""
    step = max(1, plan.sparse_entry_chunk // max(1, d_in))
    return [slice(a, a + step) for a in range(0, n_pairs, step)]


def _code_grad(
    classes: EntryClasses,
    norms_FS: torch.Tensor,
    threshold_F: torch.Tensor,
    W_dec_FSD: torch.Tensor,
    grad_flat: torch.Tensor,
    grad_score_F: torch.Tensor,
    half_width: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The code's gradient from the decoder's matmul, feature-major ``[F, N]``, with the threshold
    window's decoder sums and shut entries' score sums per (feature, snapshot) where the window is
    summed from masks (see code_grad_and_window_sums); zeros for those otherwise."""
    h_FN = classes.h_FN
    F_, S = norms_FS.shape
    window_grad_FS = norms_FS.new_zeros(F_, S)
    window_sech_FS = norms_FS.new_zeros(F_, S)
    block_rows = max(
        1, classes.plan.block_elements(h_FN.device, classes.plan.code_grad_block_elements) // h_FN.shape[1]
    )
    if classes.window_per_snapshot:  # many entries inside at some snapshots only
        shut_FN = ~classes.open_any_FN

        def window_mask(s: int, rows: slice) -> torch.Tensor:
            distance_BN = (h_FN[rows] * norms_FS[rows, s, None]).sub_(threshold_F[rows, None])
            window_BN = distance_BN.abs_() < half_width
            window_sech_FS[rows, s] += row_counts(window_BN & shut_FN[rows]) * grad_score_F[rows]
            return mask_values(window_BN, grad_flat.dtype)

        grad_h_FN, window_grad_FS = code_grad_and_window_sums(W_dec_FSD, grad_flat, window_mask, block_rows)
    elif classes.dense_window:  # many entries inside at every snapshot
        window_all_FN = mask_values(classes.window_all_FN, grad_flat.dtype)
        grad_h_FN, window_grad_FS = code_grad_and_window_sums(
            W_dec_FSD, grad_flat, lambda s, rows: window_all_FN[rows], block_rows
        )
    else:
        grad_h_FN = torch.mm(W_dec_FSD.reshape(F_, -1), grad_flat.T)
    return grad_h_FN, window_grad_FS, window_sech_FS


def _row_window(classes: EntryClasses, norms_FS: torch.Tensor, threshold_F: torch.Tensor, half_width: float) -> Any:
    """The threshold window of the entries packed into rows, as :func:`padded_scores` takes it."""
    rows, flat_a = classes.open_rows, classes.all_open_flat
    if classes.window_per_snapshot:
        valid_FP = rows.pad(torch.ones_like(flat_a, dtype=torch.bool))
        return (norms_FS, threshold_F, valid_FP, half_width)
    if classes.dense_window:
        return rows.pad(mask_values(classes.window_all_FN.view(-1).index_select(0, flat_a), classes.h_FN.dtype))
    return None  # the gathered window pairs include these entries' scores


def _add_row_scores(
    grad_h_flat: torch.Tensor,
    window_sech_FS: torch.Tensor,
    classes: EntryClasses,
    row_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    grad_score_F: torch.Tensor,
) -> torch.Tensor:
    """The scores' backward for the entries packed into rows (open at every snapshot), from the
    parts :func:`padded_scores` worked out in the forward: their code gradient added to
    ``grad_h_flat``, their window sech sums to ``window_sech_FS``; returns the norms' gradient
    ``[F, S]`` (zeros where no rows were packed)."""
    if row_parts is None:
        return window_sech_FS.new_zeros(window_sech_FS.shape)
    norms_part_FS, window_part_FS, h_part_FP = row_parts
    factor_F1 = grad_score_F[:, None] * 4
    window_sech_FS += window_part_FS * factor_F1
    grad_h_flat.index_add_(0, classes.all_open_flat, classes.open_rows.take(h_part_FP * factor_F1))
    return norms_part_FS * factor_F1


def _add_gathered_window(
    window_sech_FS: torch.Tensor,
    classes: EntryClasses,
    h_flat: torch.Tensor,
    sech_gS: torch.Tensor,
    norms_FS: torch.Tensor,
    threshold_F: torch.Tensor,
    grad_score_F: torch.Tensor,
    half_width: float,
) -> None:
    """Add the gathered entries' sech terms inside the threshold's window (``sech_gS`` is
    overwritten), and where the window is dense, the shut entries' score gradient."""
    flat_g = classes.gathered_flat
    i_g = torch.div(flat_g, classes.h_FN.shape[1], rounding_mode="floor")
    if classes.window_per_snapshot:
        h_g1 = h_flat.index_select(0, flat_g)[:, None]
        distance_gS = h_g1 * norms_FS.index_select(0, i_g) - threshold_F.index_select(0, i_g)[:, None]
        window_sech_FS.index_add_(0, i_g, sech_gS.masked_fill_(distance_gS.abs_() >= half_width, 0.0))
    elif classes.dense_window:
        inside_g1 = classes.window_all_FN.view(-1).index_select(0, flat_g)[:, None]
        window_sech_FS.index_add_(0, i_g, sech_gS.masked_fill_(~inside_g1, 0.0))
        shut_F = row_counts(classes.window_all_FN & ~classes.open_any_FN)
        window_sech_FS += (shut_F * grad_score_F)[:, None]


def _add_window_pairs(
    window_grad_FS: torch.Tensor,
    classes: EntryClasses,
    h_flat: torch.Tensor,
    norms_FS: torch.Tensor,
    threshold_F: torch.Tensor,
    scale_FS: torch.Tensor,
    grad_score_F: torch.Tensor,
    grad_rows: torch.Tensor,
    W_rows: torch.Tensor,
    half_width: float,
) -> None:
    """Add to ``window_grad_FS`` the window terms of the entries gathered for it alone: each
    (entry, snapshot) pair inside the window, its decoder dot product and its score part."""
    N = classes.h_FN.shape[1]
    S, D = norms_FS.shape[1], W_rows.shape[1]
    flat_w = classes.window_gathered_flat
    i_w = torch.div(flat_w, N, rounding_mode="floor")
    h_w = h_flat.index_select(0, flat_w)
    distance_wS = h_w[:, None] * norms_FS.index_select(0, i_w) - threshold_F.index_select(0, i_w)[:, None]
    pair_w, pair_s = (distance_wS.abs() < half_width).nonzero(as_tuple=True)
    pair_i = i_w.index_select(0, pair_w)
    pair_row_F = pair_i * S + pair_s  # also the (feature, snapshot) index of [F, S]
    pair_row_N = (flat_w - i_w * N).index_select(0, pair_w) * S + pair_s
    pair_scale = scale_FS.view(-1).index_select(0, pair_row_F)
    open_p = distance_wS[pair_w, pair_s] > 0
    pair_f = torch.where(open_p, h_w.index_select(0, pair_w), 0.0)
    pair_sech = sech2_times(sigmoid_of_twice(pair_f, pair_scale * 2), grad_score_F.index_select(0, pair_i))
    window_flat_FS = window_grad_FS.view(-1)
    for chunk in _pair_chunks(pair_w.numel(), D, classes.plan):
        dec_p = torch.linalg.vecdot(
            grad_rows.index_select(0, pair_row_N[chunk]), W_rows.index_select(0, pair_row_F[chunk])
        )
        window_flat_FS.index_add_(0, pair_row_F[chunk], torch.addcmul(dec_p, pair_sech[chunk], pair_scale[chunk]))


def _add_norms_part(
    grad_W_FSD: torch.Tensor,
    block: Any,
    grad_raw_norms_FS: torch.Tensor,
    raw_norms_FS: torch.Tensor,
    W_dec_FSD: torch.Tensor,
) -> torch.Tensor | None:
    """W_dec's gradient with its decoder norms' part added, as autograd's norm backward would give
    it: W * (grad of ||W|| / ||W||), zero where a row's norm is 0. None where a micro-batch's
    block holds all of it."""
    per_row_FS = grad_raw_norms_FS.div_(raw_norms_FS).masked_fill_(raw_norms_FS == 0, 0.0)
    if block is None:
        return grad_W_FSD.addcmul_(W_dec_FSD, per_row_FS[..., None])
    if block.add_norm_scale(W_dec_FSD, per_row_FS):
        return None
    # only a weight whose rows are not W_dec's [F, S] would get here
    raise ValueError(
        f"decoder norms of shape {tuple(per_row_FS.shape)} do not split a weight of shape {tuple(W_dec_FSD.shape)} into rows"
    )


def _decode(
    classes: EntryClasses, W_dec_FSD: torch.Tensor, open_gS: torch.Tensor, h_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The gated decode ``[N * S, D]`` of :class:`SnapshotGatedDecode`: one matmul of the shared
    code where a gate is open everywhere, or mostly (a feature that has emerged is shut at a few
    early snapshots), then a correction per (entry, snapshot) pair: + h where a mostly shut gate is
    open, - h where a mostly open one is shut. Rows of ``[N * S, D]`` and ``[F * S, D]``. Returns
    it with the dense part's float mask and code ``[F, N]``, which gathered entries are mostly
    open, and the pairs ``(entry, row of the decode, row of W, sign, signed h)``."""
    h_FN, flat_g = classes.h_FN, classes.gathered_flat
    F_, N = h_FN.shape
    S, D = W_dec_FSD.shape[1:]
    i_g = torch.div(flat_g, N, rounding_mode="floor")
    mostly_open_g = open_gS.sum(dim=1) * 2 > S
    dense_FN = mask_values(classes.open_all_FN, h_FN.dtype)  # a float mask: its products are faster
    dense_FN.view(-1)[flat_g[mostly_open_g]] = 1.0
    # (a product with the mask: several times faster than torch.where on a CPU)
    f_dense_FN = h_FN * dense_FN
    recon_flat = f_dense_FN.T @ W_dec_FSD.reshape(F_, S * D)
    pair_g, pair_s = (open_gS != mostly_open_g[:, None]).nonzero(as_tuple=True)
    pair_row_N = (flat_g - i_g * N).index_select(0, pair_g) * S + pair_s
    pair_row_F = i_g.index_select(0, pair_g) * S + pair_s
    pair_sign = 1.0 - 2.0 * mostly_open_g.index_select(0, pair_g).to(h_FN.dtype)
    pair_h = h_g.index_select(0, pair_g) * pair_sign
    W_rows = W_dec_FSD.reshape(F_ * S, D)
    recon_rows = recon_flat.view(N * S, D)
    for chunk in _pair_chunks(pair_g.numel(), D, classes.plan):
        W_pD = W_rows.index_select(0, pair_row_F[chunk])
        recon_rows.index_add_(0, pair_row_N[chunk], pair_h[chunk, None] * W_pD)
    pairs = (flat_g.index_select(0, pair_g), pair_row_N, pair_row_F, pair_sign, pair_h)
    return recon_flat, dense_FN, f_dense_FN, mostly_open_g, pairs


def _matmul_weight_grad(
    block: Any, W_dec_FSD: torch.Tensor, f_dense_FN: torch.Tensor, grad_flat: torch.Tensor
) -> torch.Tensor:
    """W_dec's gradient from :func:`_decode`'s matmul, ``[F, S, D]``, as its own tensor (not a
    view), so that autograd can add the decoder norms' part to it in place; in a micro-batch
    (``block``) the matmul's operands are kept, and the block's sum is returned for the
    corrections to be added to."""
    if block is not None:
        block.keep(W_dec_FSD, f_dense_FN.T, grad_flat)
        return block.sum_buffer(W_dec_FSD)
    grad_W_FSD = W_dec_FSD.new_empty(W_dec_FSD.shape)
    torch.mm(f_dense_FN, grad_flat, out=grad_W_FSD.view(f_dense_FN.shape[0], -1))
    return grad_W_FSD


def _add_pair_grads(
    grad_h_flat: torch.Tensor,
    grad_W_rows: torch.Tensor,
    grad_rows: torch.Tensor,
    W_rows: torch.Tensor,
    pairs: tuple[torch.Tensor, ...],
    plan: KernelPlan,
) -> None:
    """Add the gradients of :func:`_decode`'s corrections, each (entry, snapshot) pair of a mixed
    gate: to the code (``grad_h_flat``, feature-major) and to W's rows (``grad_W_rows``)."""
    pair_flat, pair_row_N, pair_row_F, pair_sign, pair_h = pairs
    for chunk in _pair_chunks(pair_flat.numel(), W_rows.shape[1], plan):
        grad_pD = grad_rows.index_select(0, pair_row_N[chunk])
        dec_p = torch.linalg.vecdot(grad_pD, W_rows.index_select(0, pair_row_F[chunk]))
        grad_h_flat.index_add_(0, pair_flat[chunk], dec_p.mul_(pair_sign[chunk]))
        grad_W_rows.index_add_(0, pair_row_F[chunk], (pair_h[chunk, None] * grad_pD).to(grad_W_rows.dtype))


class SnapshotGatedDecode(torch.autograd.Function):
    """Per-snapshot gated decode, summed tanh scores and any-snapshot gate of a batch,
    without an ``[S, N, F]`` tensor.

    Inputs: ``h_NF``, ``W_dec_FSD``, ``threshold_F`` (differentiable); ``norms_FS``
    (``raw_norms_FS * norm_factors_S``, the decoder norms in the training space),
    ``raw_norms_FS`` (``||W_dec[i, s]||``) and ``norm_factors_S``, all without gradient:
    the norms' gradient is passed on to ``W_dec`` here, in one pass, instead of by
    autograd's norm backward; ``classes`` (:class:`EntryClasses` of these h, norms and
    threshold), ``bandwidth``, ``tanh_scale``, the micro-batch's ``block`` and ``grads`` (whether a
    backward will follow: the forward then also works out the scores' gradient parts). Outputs
    ``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF)`` (the last two without
    gradient) with ``recon_NSD[n, s] = sum_i f_SNF[s, n, i] W_dec[i, s]`` (no bias): the values and gradients of :class:`SnapshotGateAndScore` on those norms
    followed by the decoder's batched matmul, summed in another order. Entries packed
    into rows are indexed ``P``, gathered ones ``g``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_NF: torch.Tensor,
        W_dec_FSD: torch.Tensor,
        threshold_F: torch.Tensor,
        norms_FS: torch.Tensor,
        raw_norms_FS: torch.Tensor,
        norm_factors_S: torch.Tensor,
        classes: EntryClasses,
        bandwidth: float,
        tanh_scale: float,
        block: WeightBlock | None,
        grads: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, F_ = h_NF.shape
        S, D = W_dec_FSD.shape[1:]
        scale_FS = tanh_scale * norms_FS
        scale2_FS = scale_FS * 2
        h_FN = classes.h_FN
        h_flat = h_FN.view(-1)
        score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)

        # open everywhere and packed into rows: the scores, row by row, and their gradients' parts
        rows, row_parts = classes.open_rows, None
        if rows is not None:
            h_FP = rows.pad(h_flat.index_select(0, classes.all_open_flat))
            window = _row_window(classes, norms_FS, threshold_F, bandwidth / 2) if grads else None
            row_blocks = _row_blocks(rows, S, h_FP.device, classes.plan)
            row_parts = padded_scores(row_blocks, h_FP, scale_FS, score_sum_F, window, grads)

        # the other entries open somewhere: gates and scores per snapshot, one entry at a time
        flat_g = classes.gathered_flat
        i_g = torch.div(flat_g, N, rounding_mode="floor")
        h_g1 = h_flat.index_select(0, flat_g)[:, None]
        open_gS = h_g1 * norms_FS.index_select(0, i_g) > threshold_F.index_select(0, i_g)[:, None]
        f_gS = torch.where(open_gS, h_g1, 0.0)
        sigmoid_gS = sigmoid_of_twice(f_gS, scale2_FS.index_select(0, i_g))
        score_sum_F.index_add_(0, i_g, tanh_from_sigmoid(sigmoid_gS).sum(dim=1, dtype=torch.float32))

        recon_flat, dense_FN, f_dense_FN, mostly_open_g, pairs = _decode(classes, W_dec_FSD, open_gS, h_g1[:, 0])
        ctx.save_for_backward(
            norms_FS,
            raw_norms_FS,
            norm_factors_S,
            threshold_F,
            W_dec_FSD,
            dense_FN,
            f_dense_FN,
            open_gS,
            f_gS,
            sigmoid_gS,
            *pairs,
        )
        ctx.classes, ctx.row_parts, ctx.bandwidth, ctx.tanh_scale = classes, row_parts, bandwidth, tanh_scale
        ctx.block = block_listing(block, W_dec_FSD)
        # the shared code h * [open at some snapshot]: the dense code with the mixed entries
        # it leaves out (open at a few snapshots only) put back (a copy: hooks may edit it)
        shared_FN = f_dense_FN.clone()
        few_open_g = flat_g[~mostly_open_g]
        shared_FN.view(-1)[few_open_g] = h_flat.index_select(0, few_open_g)
        open_any_NF, shared_NF = classes.open_any_FN.T, shared_FN.T
        ctx.mark_non_differentiable(open_any_NF, shared_NF)
        ctx.set_materialize_grads(False)  # the backward takes a missing gradient as zeros, without [N, F] of them
        return recon_flat.view(N, S, D), score_sum_F.to(h_NF.dtype), open_any_NF, shared_NF

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_recon_NSD: torch.Tensor | None,
        grad_score_F: torch.Tensor | None,
        _grad_open: Any,
        _grad_shared: Any,
    ) -> tuple[Any, ...]:
        # One fused pass over the saved tensors: the decoder, score and window parts share the
        # gradient's per-snapshot products, the sech values and the index tensors.
        saved = ctx.saved_tensors
        norms_FS, raw_norms_FS, norm_factors_S, threshold_F, W_dec_FSD = saved[:5]
        dense_FN, f_dense_FN, open_gS, f_gS, sigmoid_gS = saved[5:10]
        classes: EntryClasses = ctx.classes
        h_FN = classes.h_FN
        F_, N = h_FN.shape
        S, D = W_dec_FSD.shape[1:]
        scale_FS = ctx.tanh_scale * norms_FS
        h_flat = h_FN.view(-1)
        grad_flat = h_FN.new_zeros(N, S * D) if grad_recon_NSD is None else grad_recon_NSD.reshape(N, S * D)
        if grad_score_F is None:
            grad_score_F = h_FN.new_zeros(F_)
        half_width = ctx.bandwidth / 2

        # decoder, the matmul's part: the plain crosscoder's backward, feature-major. Where
        # the threshold window is summed from masks, the code's gradient comes per snapshot
        # with the window's decoder sums (see code_grad_and_window_sums).
        grad_h_FN, window_grad_FS, window_sech_FS = _code_grad(
            classes, norms_FS, threshold_F, W_dec_FSD, grad_flat, grad_score_F, half_width
        )
        grad_h_flat = grad_h_FN.mul_(dense_FN).view(-1)
        block = ctx.block if ctx.block is not None and ctx.block.open else None
        grad_W_FSD = _matmul_weight_grad(block, W_dec_FSD, f_dense_FN, grad_flat)
        grad_W_flat = grad_W_FSD.view(F_, S * D)

        # scores of the entries packed into rows. Their window part is the scores' gradient
        # where a gate is open and grad * c * norm where shut (tanh(0) = 0): sech is summed
        # over tokens first and multiplied by c * norm per (feature, snapshot) after.
        grad_norms_FS = _add_row_scores(grad_h_flat, window_sech_FS, classes, ctx.row_parts, grad_score_F)

        # scores of the gathered entries: grad * sech^2, times c * norm for the code, c * f for the norm
        flat_g = classes.gathered_flat
        i_g = torch.div(flat_g, N, rounding_mode="floor")
        sech_gS = sech2_times(sigmoid_gS.clone(), grad_score_F.index_select(0, i_g)[:, None])
        grad_norms_FS.index_add_(0, i_g, sech_gS * f_gS)
        score_grad_gS = sech_gS * scale_FS.index_select(0, i_g)
        grad_h_flat.index_add_(0, flat_g, torch.where(open_gS, score_grad_gS, 0.0).sum(dim=1))

        # decoder, the corrections of mixed gates: each (entry, snapshot) pair
        grad_rows, W_rows = grad_flat.view(N * S, D), W_dec_FSD.reshape(F_ * S, D)
        _add_pair_grads(grad_h_flat, grad_W_flat.view(F_ * S, D), grad_rows, W_rows, saved[10:], classes.plan)

        # the threshold's window: the code's gradient summed over tokens inside it, per
        # (feature, snapshot); its decoder part from the masks above, its score part here
        _add_gathered_window(window_sech_FS, classes, h_flat, sech_gS, norms_FS, threshold_F, grad_score_F, half_width)
        window_grad_FS += window_sech_FS * scale_FS
        # the other entries inside it somewhere: each (entry, snapshot) pair inside it
        _add_window_pairs(
            window_grad_FS,
            classes,
            h_flat,
            norms_FS,
            threshold_F,
            scale_FS,
            grad_score_F,
            grad_rows,
            W_rows,
            half_width,
        )

        grad_threshold_F = threshold_gradient(window_grad_FS, norms_FS, threshold_F, ctx.bandwidth)
        grad_W_FSD = _add_norms_part(
            grad_W_FSD, block, grad_norms_FS.mul_(ctx.tanh_scale).mul_(norm_factors_S), raw_norms_FS, W_dec_FSD
        )
        return grad_h_FN.T, grad_W_FSD, grad_threshold_F, None, None, None, None, None, None, None, None


def entry_classes_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    norms: tuple[Float[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, " n_snapshots"]],
    gate: tuple[float, float],
    plan: KernelPlan | None = None,
    block: WeightBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF)`` of the JumpReLU step by
    :class:`SnapshotGatedDecode`, where few enough entries are mixed (:attr:`EntryClasses.sparse_ok`),
    else None; for ``norms = (raw_FS, norm_factors_S)``, the decoder norms computed without
    gradient (this node differentiates them) and the factors to the training space, and ``gate =
    (bandwidth, tanh_scale)``. In a micro-batched step (where ``block`` lists the decoder) the
    decoder's gradient goes to the block's sum."""
    raw_FS, norm_factors_S = norms
    bandwidth, tanh_scale = gate
    with torch.no_grad():
        norms_FS = raw_FS * norm_factors_S
        classes = EntryClasses(h_NF, norms_FS, threshold_F, bandwidth / 2, plan)
    if not classes.sparse_ok:
        return None
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (h_NF, W_dec_FSD, threshold_F))
    return SnapshotGatedDecode.apply(
        h_NF, W_dec_FSD, threshold_F, norms_FS, raw_FS, norm_factors_S, classes, bandwidth, tanh_scale, block, grads
    )
