"""The JumpReLU crosscoder's per-(snapshot, token, feature) gate, tanh sparsity score and
gated decode, without ``[S, N, F]`` temporaries where it can.

Every gate ``[h_i * ||W_dec[i, s]|| > t_i]`` and every score ``tanh(c * f_{i,s} *
||W_dec[i, s]||)`` is a function of the shared pre-activation ``h [N, F]``, the decoder
norms ``[F, S]`` and the threshold ``[F]``. Two implementations compute the same values
and gradients (to the order of float sums):

* :func:`snapshot_gated_decode` (training's default): :class:`EntryClasses` sorts each
  (token, feature) entry by whether its gate is open at every snapshot, at none or at
  some, from the smallest and largest norm alone. Entries open everywhere are decoded with
  one ``[N, F] @ [F, S*D]`` matmul, as in a plain crosscoder; the rest work per snapshot
  on gathered entries (:class:`SnapshotGatedDecode`). Freshly initialised crosscoders
  (equal norms) have no mixed entries, and trained ones few. With many mixed entries it
  falls back to the second implementation.
* :func:`snapshot_gate_and_score` (:class:`SnapshotGateAndScore`): the per-snapshot code
  ``[S, N, F]`` itself, a cache-sized block of tokens at a time, recomputing gates and
  scores in backward so that nothing else of that size is kept;
  :func:`use_compiled_kernels` fuses its block functions with ``torch.compile``. The
  decoder is then a batched matmul over snapshots.

docs/notes/issue-14-speed.md has the measurements.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from jaxtyping import Bool, Float

CPU_BLOCK_ELEMENTS = 1 << 22
"""Elements of one ``[S, block, F]`` block on a CPU: 16 MiB in float32, about half of a
32 MiB L3 cache. On a shared 2-core EPYC, 2^22 was the best of 2^20, 2^22 and the whole
batch in one noisy run (docs/notes/issue-14-speed.md); smaller blocks pay per-op overhead."""


def token_block(n_tokens: int, n_snapshots: int, n_features: int, device: torch.device) -> int:
    """Tokens per block: every token at once off the CPU, else about ``CPU_BLOCK_ELEMENTS``."""
    if device.type != "cpu":
        return max(n_tokens, 1)
    return max(1, min(n_tokens, CPU_BLOCK_ELEMENTS // max(1, n_snapshots * n_features)))


def _forward_block(
    h_BF: torch.Tensor, norms_S1F: torch.Tensor, scale_S1F: torch.Tensor, threshold_F: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gated code ``[S, B, F]``, any-snapshot gate ``[B, F]`` and score sums ``[F]``."""
    open_SBF = h_BF * norms_S1F > threshold_F
    f_SBF = torch.where(open_SBF, h_BF, 0.0)
    score_sum_F = torch.tanh(f_SBF * scale_S1F).sum(dim=(0, 1), dtype=torch.float32)
    return f_SBF, open_SBF.any(dim=0), score_sum_F


def _backward_block(
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


_COMPILED: dict[str, Any] = {}


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the block functions through ``torch.compile`` (a few fused loops instead of a
    dozen elementwise ops each way; the first step of each shape then compiles, tens of
    seconds on a CPU). Off by default, on with ``CROSSLENS_COMPILE_KERNELS=1`` in the
    environment; ``benchmarks/train.py --compile`` measures both."""
    if not enabled:
        _COMPILED.clear()
    elif not _COMPILED:
        _COMPILED["forward"] = torch.compile(_forward_block, dynamic=False)
        _COMPILED["backward"] = torch.compile(_backward_block, dynamic=False)


if os.environ.get("CROSSLENS_COMPILE_KERNELS") == "1":  # a switch for the CLI and scripts
    use_compiled_kernels(True)


class SnapshotGateAndScore(torch.autograd.Function):
    """Gated per-snapshot code, summed tanh scores and the any-snapshot gate of a batch.

    Inputs: ``h_NF`` (shared pre-activation), ``norms_FS`` (decoder norms in the training
    space), ``threshold_F``, ``bandwidth`` (eps) and ``tanh_scale`` (c). Outputs:

    * ``f_SNF = h * [h * norms_s > t]`` (snapshot-major, for one batched decoder matmul);
    * ``score_sum_F = sum over tokens and snapshots of tanh(c * f * norms_s)``;
    * ``open_anywhere_NF``: the gate is open at some snapshot (no gradient).

    Gradients: to ``h`` through open gates; to the norms through the scores only; to the
    threshold through the rectangle kernel, ``-(t / (norms_s * eps)) * [|h norms_s - t| <
    eps / 2]`` times the upstream gradient of ``f`` (which, from the scores, is ``c *
    norms_s`` where a gate is shut: the straight-through estimate of the L0 term).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_NF: Float[torch.Tensor, "n d_sae"],
        norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
        threshold_F: Float[torch.Tensor, " d_sae"],
        bandwidth: float,
        tanh_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, F_ = h_NF.shape
        S = norms_FS.shape[1]
        norms_S1F = norms_FS.T.contiguous()[:, None, :]
        scale_S1F = (tanh_scale * norms_FS.T).contiguous()[:, None, :]
        block = N if _COMPILED else token_block(N, S, F_, h_NF.device)
        forward_block = _COMPILED.get("forward", _forward_block)
        if block >= N:
            f_SNF, open_anywhere_NF, score_sum_F = forward_block(h_NF, norms_S1F, scale_S1F, threshold_F)
        else:
            f_SNF = h_NF.new_empty(S, N, F_)
            open_anywhere_NF = torch.empty(N, F_, dtype=torch.bool, device=h_NF.device)
            score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)
            for a in range(0, N, block):
                f_SNF[:, a : a + block], open_anywhere_NF[a : a + block], sums_F = forward_block(
                    h_NF[a : a + block], norms_S1F, scale_S1F, threshold_F
                )
                score_sum_F += sums_F
        ctx.save_for_backward(h_NF, norms_S1F, threshold_F)
        ctx.bandwidth, ctx.tanh_scale = bandwidth, tanh_scale
        ctx.mark_non_differentiable(open_anywhere_NF)
        return f_SNF, score_sum_F.to(h_NF.dtype), open_anywhere_NF

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_f_SNF: torch.Tensor | None,
        grad_score_F: torch.Tensor | None,
        _grad_open: Any,
    ) -> tuple[Any, ...]:
        h_NF, norms_S1F, threshold_F = ctx.saved_tensors
        N, F_ = h_NF.shape
        S = norms_S1F.shape[0]
        scale_S1F = ctx.tanh_scale * norms_S1F
        if grad_score_F is None:
            grad_score_F = h_NF.new_zeros(F_)
        block = N if _COMPILED else token_block(N, S, F_, h_NF.device)
        backward_block = _COMPILED.get("backward", _backward_block)
        grad_h_NF = torch.empty_like(h_NF)
        grad_norms_SF = norms_S1F.new_zeros(S, F_)
        window_grad_SF = norms_S1F.new_zeros(S, F_)
        for a in range(0, N, block):
            h_BF = h_NF[a : a + block]
            grad_h_NF[a : a + block], norms_part_SF, window_part_SF = backward_block(
                h_BF, norms_S1F, scale_S1F, threshold_F,
                _grad_of_code(grad_f_SNF, a, block, h_BF, S), grad_score_F, ctx.bandwidth / 2,
            )  # fmt: skip
            grad_norms_SF += norms_part_SF
            window_grad_SF += window_part_SF
        grad_norms_FS = (grad_norms_SF * ctx.tanh_scale).T
        grad_threshold_F = threshold_gradient(window_grad_SF.T, norms_S1F[:, 0].T, threshold_F, ctx.bandwidth)
        return grad_h_NF, grad_norms_FS, grad_threshold_F, None, None


def threshold_gradient(
    window_grad_FS: torch.Tensor, norms_FS: torch.Tensor, threshold_F: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    """The threshold's straight-through gradient from the code's gradient summed over the
    tokens inside the window: ``-sum_s t / (||W_dec[i, s]|| * eps) * window_grad[i, s]``."""
    kernel_FS = threshold_F[:, None] / (norms_FS.clamp(min=1e-8) * bandwidth)
    return -(window_grad_FS * kernel_FS).sum(dim=1)


def _grad_of_code(
    grad_f_SNF: torch.Tensor | None, start: int, block: int, h_BF: torch.Tensor, n_snapshots: int
) -> Float[torch.Tensor, "n_snapshots block d_sae"]:
    """The upstream gradient of the code for one block (zeros when the code was unused)."""
    if grad_f_SNF is None:
        return h_BF.new_zeros(n_snapshots, *h_BF.shape)
    return grad_f_SNF[:, start : start + block]


def snapshot_gate_and_score(
    h_NF: Float[torch.Tensor, "n d_sae"],
    norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    *,
    bandwidth: float,
    tanh_scale: float,
) -> tuple[
    Float[torch.Tensor, "n_snapshots n d_sae"], Float[torch.Tensor, " d_sae"], Bool[torch.Tensor, "n d_sae"]
]:
    """``(f_SNF, score_sum_F, open_anywhere_NF)``; see :class:`SnapshotGateAndScore`."""
    return SnapshotGateAndScore.apply(h_NF, norms_FS, threshold_F, bandwidth, tanh_scale)


# ----------------------------------------------------------------------------------------
# Gate, scores and decode together, from the shared code's point of view.
#
# For a token n and feature i the S gates differ only through the norms: the gate at s
# is ``d_s > 0`` and the threshold window ``|d_s| < eps/2`` with ``d_s = h * norms_s - t``,
# and d_s (rounded products and differences included) is monotone in norms_s. So the
# smallest and largest norm decide, with two [N, F] passes instead of S, whether a gate
# is open at every snapshot, at none or at some ("mixed"), and likewise for the window.
# Where the gate is the same at every snapshot the per-snapshot code is the shared code,
# and decoding it is the plain crosscoder's one [N, F] @ [F, S*D] matmul. The threshold's
# window is summed over tokens with one more matmul where it is the same at every
# snapshot, with a mask and a matmul per snapshot where many entries are inside it at
# some snapshots only, else from gathered rows. Only mixed gates, one open (entry,
# snapshot) pair at a time, and the tanh scores of entries open somewhere need work per
# snapshot. At initialisation no gate is mixed (all norms start equal); a trained
# crosscoder has few open entries, so both stay small.
# ----------------------------------------------------------------------------------------

SPARSE_ENTRY_CHUNK = 1 << 20
"""Elements ``pairs * D`` gathered at once for the work per (entry, snapshot) pair."""

GATHER_SHARE = 1 / 16
"""Largest share of (token, feature) entries worth gathering for work per snapshot. Above
it, mixed gates fall back to :class:`SnapshotGateAndScore`, the window of entries inside
it at some snapshots only is summed with one mask and one matmul per snapshot, and that of
entries inside it at every snapshot with one matmul. On the trained demo crosscoder
(S 12, d_in 128, d_sae 1024, batch 512, 2 CPU cores) gathering the window a whole entry
(all S rows) at a time broke even with a mask and a matmul per snapshot at about 7% of
entries (docs/notes/issue-14-speed.md); it now gathers only the pairs inside the window,
which is cheaper, so the limit errs on the side of the matmuls."""

WINDOW_MODE: str | None = None
"""Force one way of summing the threshold window (``"per_snapshot"``, ``"matmul"`` or
``"gathered"``, see :class:`EntryClasses`); None chooses by the shares above. For tests."""


class EntryClasses:
    """Where each (token, feature) entry's gate and threshold window stand across
    snapshots, from the smallest and largest decoder norm of each feature, and how
    :class:`SnapshotGatedDecode` will treat them."""

    def __init__(
        self,
        h_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        threshold_F: torch.Tensor,
        half_width: float,
    ) -> None:
        # the same two roundings as h * norms - t per snapshot (no fused multiply-add)
        d_lo_NF = (h_NF * norms_FS.min(dim=1).values).sub_(threshold_F)
        d_hi_NF = (h_NF * norms_FS.max(dim=1).values).sub_(threshold_F)
        d_min_NF = torch.minimum(d_lo_NF, d_hi_NF)
        d_max_NF = torch.maximum(d_lo_NF, d_hi_NF, out=d_hi_NF)
        del d_lo_NF
        self.open_all_NF = d_min_NF > 0
        self.open_any_NF = d_max_NF > 0
        self.all_open_flat = _flat_nonzero(self.open_all_NF)
        self.mixed_open_flat = _flat_nonzero(self.open_any_NF & ~self.open_all_NF)
        gather_limit = GATHER_SHARE * h_NF.numel()
        self.sparse_ok = self.mixed_open_flat.numel() <= gather_limit
        """Few enough mixed gates for :class:`SnapshotGatedDecode`."""

        self.window_all_NF = (d_min_NF > -half_width) & (d_max_NF < half_width)
        window_some_NF = (d_min_NF < half_width) & (d_max_NF > -half_width)
        window_mixed_flat = _flat_nonzero(window_some_NF & ~self.window_all_NF)
        # (count_nonzero: a bool tensor's sum() is many times slower on a CPU)
        n_window_all = int(torch.count_nonzero(self.window_all_NF))
        mode = WINDOW_MODE or (
            "per_snapshot"
            if window_mixed_flat.numel() > gather_limit
            else "matmul" if n_window_all > gather_limit else "gathered"
        )
        self.window_per_snapshot = mode == "per_snapshot"
        """Sum the threshold window with a mask and a matmul per snapshot."""
        self.dense_window = mode == "matmul"
        """Sum the window of entries inside it at every snapshot with one matmul (and of
        the others from gathered rows)."""
        if self.window_per_snapshot:
            window_mixed_flat = window_mixed_flat[:0]
        elif not self.dense_window and n_window_all:
            window_mixed_flat = torch.cat([window_mixed_flat, _flat_nonzero(self.window_all_NF)])
        self.window_gathered_flat = window_mixed_flat
        """Entries whose window is summed from gathered rows, per snapshot."""


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1).nonzero().squeeze(1)


def _pair_chunks(n_pairs: int, d_in: int) -> list[slice]:
    """Slices of gathered (entry, snapshot) pairs holding about ``SPARSE_ENTRY_CHUNK`` elements each."""
    step = max(1, SPARSE_ENTRY_CHUNK // max(1, d_in))
    return [slice(a, a + step) for a in range(0, n_pairs, step)]


class SnapshotGatedDecode(torch.autograd.Function):
    """Per-snapshot gated decode, summed tanh scores and any-snapshot gate of a batch,
    without an ``[S, N, F]`` tensor.

    Inputs: ``h_NF``, ``norms_FS``, ``threshold_F``, ``W_dec_FSD``, ``classes``
    (:class:`EntryClasses` of these h, norms and threshold), ``bandwidth``, ``tanh_scale``.
    Outputs ``(recon_NSD, score_sum_F, open_anywhere_NF)`` with ``recon_NSD[n, s] =
    sum_i f_SNF[s, n, i] W_dec[i, s]`` (no bias): the values and gradients of
    :class:`SnapshotGateAndScore` followed by the decoder's batched matmul, summed in
    another order. Entries open everywhere are indexed ``a``, mixed ones ``m``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        threshold_F: torch.Tensor,
        W_dec_FSD: torch.Tensor,
        classes: EntryClasses,
        bandwidth: float,
        tanh_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, F_ = h_NF.shape
        S, D = W_dec_FSD.shape[1:]
        W_flat = W_dec_FSD.reshape(F_, S * D)
        scale_FS = tanh_scale * norms_FS
        h_flat = h_NF.view(-1)
        score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)

        # open everywhere: the per-snapshot code is the shared code at every snapshot
        i_a = classes.all_open_flat % F_
        scale_aS = scale_FS.index_select(0, i_a)
        score_aS = (h_flat.index_select(0, classes.all_open_flat)[:, None] * scale_aS).tanh_()
        score_sum_F.index_add_(0, i_a, score_aS.sum(dim=1, dtype=torch.float32))

        # open at some snapshots: gates and scores per snapshot
        flat_m = classes.mixed_open_flat
        i_m = flat_m % F_
        h_m1 = h_flat.index_select(0, flat_m)[:, None]
        open_mS = h_m1 * norms_FS.index_select(0, i_m) > threshold_F.index_select(0, i_m)[:, None]
        f_mS = torch.where(open_mS, h_m1, 0.0)
        score_mS = (f_mS * scale_FS.index_select(0, i_m)).tanh_()
        score_sum_F.index_add_(0, i_m, score_mS.sum(dim=1, dtype=torch.float32))

        # decode: one matmul of the shared code where a gate is open everywhere, or mostly
        # (a feature that has emerged is shut at a few early snapshots), then a correction
        # per (entry, snapshot) pair: + h where a mostly shut gate is open, - h where a
        # mostly open one is shut. Rows of [N * S, D] and [F * S, D].
        mostly_open_m = open_mS.sum(dim=1) * 2 > S
        dense_NF = classes.open_all_NF.clone()
        dense_NF.view(-1)[flat_m[mostly_open_m]] = True
        f_dense_NF = torch.where(dense_NF, h_NF, 0.0)
        recon_flat = f_dense_NF @ W_flat
        pair_m, pair_s = (open_mS != mostly_open_m[:, None]).nonzero(as_tuple=True)
        pair_row_N = (flat_m // F_).index_select(0, pair_m) * S + pair_s
        pair_row_F = i_m.index_select(0, pair_m) * S + pair_s
        pair_sign = 1.0 - 2.0 * mostly_open_m.index_select(0, pair_m).to(h_NF.dtype)
        pair_h = h_m1[:, 0].index_select(0, pair_m) * pair_sign
        W_rows = W_dec_FSD.reshape(F_ * S, D)
        recon_rows = recon_flat.view(N * S, D)
        for chunk in _pair_chunks(pair_m.numel(), D):
            W_pD = W_rows.index_select(0, pair_row_F[chunk])
            recon_rows.index_add_(0, pair_row_N[chunk], pair_h[chunk, None] * W_pD)

        ctx.save_for_backward(
            h_NF, norms_FS, threshold_F, W_dec_FSD, dense_NF, f_dense_NF, scale_aS, score_aS, open_mS, f_mS,
            score_mS, flat_m.index_select(0, pair_m), pair_row_N, pair_row_F, pair_sign, pair_h,
        )  # fmt: skip
        ctx.classes, ctx.bandwidth, ctx.tanh_scale = classes, bandwidth, tanh_scale
        ctx.mark_non_differentiable(classes.open_any_NF)
        return recon_flat.view(N, S, D), score_sum_F.to(h_NF.dtype), classes.open_any_NF

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_recon_NSD: torch.Tensor | None,
        grad_score_F: torch.Tensor | None,
        _grad_open: Any,
    ) -> tuple[Any, ...]:
        (
            h_NF, norms_FS, threshold_F, W_dec_FSD, dense_NF, f_dense_NF, scale_aS, score_aS, open_mS, f_mS,
            score_mS, pair_flat, pair_row_N, pair_row_F, pair_sign, pair_h,
        ) = ctx.saved_tensors  # fmt: skip
        classes: EntryClasses = ctx.classes
        N, F_ = h_NF.shape
        S, D = W_dec_FSD.shape[1:]
        W_flat = W_dec_FSD.reshape(F_, S * D)
        scale_FS = ctx.tanh_scale * norms_FS
        h_flat = h_NF.view(-1)
        grad_flat = (
            h_NF.new_zeros(N, S * D) if grad_recon_NSD is None else grad_recon_NSD.reshape(N, S * D)
        )
        if grad_score_F is None:
            grad_score_F = h_NF.new_zeros(F_)
        # gradient of the code, summed over tokens in the threshold's window, per (feature, snapshot)
        window_grad_FS = norms_FS.new_zeros(F_, S)
        grad_norms_FS = norms_FS.new_zeros(F_, S)

        # decoder, the matmul's part: the plain crosscoder's backward
        grad_h_NF = torch.where(dense_NF, grad_flat @ W_flat.T, 0.0)
        grad_h_flat = grad_h_NF.view(-1)
        grad_W_flat = f_dense_NF.T @ grad_flat

        # scores: grad * sech^2 (tanh_backward), times c * norm for the code, c * f for the norm
        flat_a, flat_m = classes.all_open_flat, classes.mixed_open_flat
        i_a, i_m = flat_a % F_, flat_m % F_
        sech_aS = torch.ops.aten.tanh_backward(grad_score_F.index_select(0, i_a)[:, None].expand_as(score_aS), score_aS)
        grad_norms_FS.index_add_(0, i_a, sech_aS * h_flat.index_select(0, flat_a)[:, None])
        grad_h_flat.index_add_(0, flat_a, torch.linalg.vecdot(sech_aS, scale_aS))
        sech_mS = torch.ops.aten.tanh_backward(grad_score_F.index_select(0, i_m)[:, None].expand_as(score_mS), score_mS)
        grad_norms_FS.index_add_(0, i_m, sech_mS * f_mS)
        score_grad_mS = sech_mS * scale_FS.index_select(0, i_m)
        grad_h_flat.index_add_(0, flat_m, torch.where(open_mS, score_grad_mS, 0.0).sum(dim=1))

        # decoder, the corrections of mixed gates: each (entry, snapshot) pair
        grad_rows, W_rows = grad_flat.view(N * S, D), W_dec_FSD.reshape(F_ * S, D)
        grad_W_rows = grad_W_flat.view(F_ * S, D)
        for chunk in _pair_chunks(pair_flat.numel(), D):
            grad_pD = grad_rows.index_select(0, pair_row_N[chunk])
            dec_p = torch.linalg.vecdot(grad_pD, W_rows.index_select(0, pair_row_F[chunk]))
            grad_h_flat.index_add_(0, pair_flat[chunk], dec_p.mul_(pair_sign[chunk]))
            grad_W_rows.index_add_(0, pair_row_F[chunk], pair_h[chunk, None] * grad_pD)

        # the threshold's window. Its score part is the scores' gradient where a gate is open
        # and grad * c * norm where shut (tanh(0) = 0): sech is summed over tokens first and
        # multiplied by c * norm per (feature, snapshot) after.
        half_width = ctx.bandwidth / 2
        window_sech_FS = torch.zeros_like(window_grad_FS)
        open_sets = ((flat_a, i_a, sech_aS), (flat_m, i_m, sech_mS))
        if classes.window_per_snapshot:  # many entries inside at some snapshots only
            shut_NF = ~classes.open_any_NF
            grad_NSD = grad_flat.view(N, S, D)
            for s in range(S):
                window_NF = (h_NF * norms_FS[:, s]).sub_(threshold_F).abs_() < half_width
                summed_FD = window_NF.to(grad_flat.dtype).T @ grad_NSD[:, s]
                window_grad_FS[:, s] += torch.linalg.vecdot(summed_FD, W_dec_FSD[:, s])
                window_sech_FS[:, s] += (window_NF & shut_NF).sum(dim=0, dtype=torch.int32) * grad_score_F
            for flat_o, i_o, sech_oS in open_sets:
                h_o1 = h_flat.index_select(0, flat_o)[:, None]
                distance_oS = h_o1 * norms_FS.index_select(0, i_o) - threshold_F.index_select(0, i_o)[:, None]
                window_sech_FS.index_add_(0, i_o, sech_oS.masked_fill_(distance_oS.abs_() >= half_width, 0.0))
        elif classes.dense_window:  # many entries inside at every snapshot: one matmul
            summed_FSD = (classes.window_all_NF.to(grad_flat.dtype).T @ grad_flat).view(F_, S, D)
            window_grad_FS += summed_FSD.mul_(W_dec_FSD).sum(dim=-1)
            window_flat = classes.window_all_NF.view(-1)
            for flat_o, i_o, sech_oS in open_sets:
                in_o1 = window_flat.index_select(0, flat_o)[:, None]
                window_sech_FS.index_add_(0, i_o, sech_oS.masked_fill_(~in_o1, 0.0))
            shut_F = (classes.window_all_NF & ~classes.open_any_NF).sum(dim=0, dtype=torch.int32)
            window_sech_FS += (shut_F * grad_score_F)[:, None]
        window_grad_FS += window_sech_FS * scale_FS
        # the other entries inside it somewhere: each (entry, snapshot) pair inside it
        flat_w = classes.window_gathered_flat
        i_w = flat_w % F_
        h_w = h_flat.index_select(0, flat_w)
        distance_wS = h_w[:, None] * norms_FS.index_select(0, i_w) - threshold_F.index_select(0, i_w)[:, None]
        pair_w, pair_s = (distance_wS.abs() < half_width).nonzero(as_tuple=True)
        pair_i = i_w.index_select(0, pair_w)
        pair_row_F = pair_i * S + pair_s  # also the (feature, snapshot) index of [F, S]
        pair_row_N = (flat_w // F_).index_select(0, pair_w) * S + pair_s
        pair_scale = scale_FS.view(-1).index_select(0, pair_row_F)
        open_p = distance_wS[pair_w, pair_s] > 0
        pair_score = torch.tanh(torch.where(open_p, h_w.index_select(0, pair_w), 0.0) * pair_scale)
        pair_sech = torch.ops.aten.tanh_backward(grad_score_F.index_select(0, pair_i), pair_score)
        window_flat_FS = window_grad_FS.view(-1)
        for chunk in _pair_chunks(pair_w.numel(), D):
            dec_p = torch.linalg.vecdot(
                grad_rows.index_select(0, pair_row_N[chunk]), W_rows.index_select(0, pair_row_F[chunk])
            )
            window_flat_FS.index_add_(0, pair_row_F[chunk], torch.addcmul(dec_p, pair_sech[chunk], pair_scale[chunk]))

        grad_threshold_F = threshold_gradient(window_grad_FS, norms_FS, threshold_F, ctx.bandwidth)
        grad_W_FSD = grad_W_flat.view(F_, S, D)
        return grad_h_NF, grad_norms_FS * ctx.tanh_scale, grad_threshold_F, grad_W_FSD, None, None, None


def snapshot_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    *,
    bandwidth: float,
    tanh_scale: float,
) -> tuple[
    Float[torch.Tensor, "n n_snapshots d_in"], Float[torch.Tensor, " d_sae"], Bool[torch.Tensor, "n d_sae"]
]:
    """``(recon_NSD, score_sum_F, open_anywhere_NF)``: the decode of the per-snapshot gated
    code (no bias), the summed tanh scores and the any-snapshot gate.

    Uses :class:`SnapshotGatedDecode` when few entries are mixed, else (and under
    autocast, whose matmul dtypes the gathered updates do not follow) the per-snapshot
    :class:`SnapshotGateAndScore` and a batched matmul. Both give the same values and
    gradients up to the order of float sums.
    """
    classes = None
    if not torch.is_autocast_enabled(h_NF.device.type):
        with torch.no_grad():
            classes = EntryClasses(h_NF, norms_FS, threshold_F, bandwidth / 2)
    if classes is not None and classes.sparse_ok:
        return SnapshotGatedDecode.apply(h_NF, norms_FS, threshold_F, W_dec_FSD, classes, bandwidth, tanh_scale)
    f_SNF, score_sum_F, open_anywhere_NF = snapshot_gate_and_score(
        h_NF, norms_FS, threshold_F, bandwidth=bandwidth, tanh_scale=tanh_scale
    )
    recon_SND = torch.bmm(f_SNF, W_dec_FSD.transpose(0, 1))
    return recon_SND.transpose(0, 1), score_sum_F, open_anywhere_NF
