"""The JumpReLU crosscoder's training step from its active (token, feature) pairs.

Where few entries of a batch are open at any snapshot (a trained crosscoder), the step gates,
scores and decodes only the entries open at some snapshot, through the gather-sum kernels of
:mod:`crosslens.kernels.sparse` (:func:`sparse_gated_decode`), and sums the
threshold's straight-through window over the entries shut everywhere but inside it at some
snapshot with the fused window kernel (:class:`ShutWindow`). It computes the values and
gradients of the dense reference
(:func:`crosslens.kernels.jumprelu_dense.per_snapshot_gated_decode`), to the order of float sums.
:func:`snapshot_score_sums` is the scores alone, from the pairs open at some snapshot.

A step reads from the device only the counts it cannot do without (on a GPU each read waits
for the queue to drain, and a streamed run's forward overlaps the step only between reads):
it reads its open and window counts together (:func:`active_entries`) and lists its pairs to
those sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float

from crosslens.core.devices import autocast_dtype
from crosslens.core.tensors import host_ints
from crosslens.kernels.active_pairs import ActivePairs
from crosslens.kernels.jumprelu_ops import pair_score_sums, threshold_gradient
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.sparse import EagerKernels, autocast_copy, gather_decode_and_norms, kernels_for
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock


def sparse_step_pays(entries: ActiveEntries, plan: KernelPlan) -> bool:
    """Whether the step from the pairs is the cheaper one for these entries (:func:`open_share_pays`)."""
    return open_share_pays(entries.n_open, entries.active_NF.numel(), plan)


def open_share_pays(n_open: float, n_entries: float, plan: KernelPlan) -> bool:
    """Whether ``n_open`` of ``n_entries`` (token, feature) entries open at some snapshot are few
    enough for the step from the pairs: at most the plan's ``sparse_step_share`` of them (a run's
    log gives them per token: its L0 of d_sae)."""
    return n_open <= plan.sparse_step_share * n_entries


class JumpGate(torch.autograd.Function):
    """``f[a, s] = h[a] * [h[a] * norm[a, s] > t[a]]`` for gathered pairs, with JumpReLU's
    straight-through gradient: to ``h`` where open; to each pair's threshold through the
    rectangle kernel, ``-(t / (norm * eps)) * [|h norm - t| < eps / 2]`` times the upstream
    gradient (from the decode and the scores, shut gates included); none to the norms."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h_A: torch.Tensor, norms_AS: torch.Tensor, t_A: torch.Tensor, bandwidth: float
    ) -> torch.Tensor:
        ctx.save_for_backward(h_A, norms_AS, t_A)
        ctx.bandwidth = bandwidth
        open_AS = h_A[:, None] * norms_AS > t_A[:, None]
        return torch.where(open_AS, h_A[:, None], 0.0)

    @staticmethod
    def backward(ctx: Any, grad_AS: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h_A, norms_AS, t_A = ctx.saved_tensors
        distance_AS = h_A[:, None] * norms_AS - t_A[:, None]
        grad_h_A = torch.where(distance_AS > 0, grad_AS, 0.0).sum(dim=1)
        window_AS = torch.where(distance_AS.abs() < ctx.bandwidth / 2, grad_AS, 0.0)
        return grad_h_A, None, threshold_gradient(window_AS, norms_AS, t_A, ctx.bandwidth), None


class ShutWindow(torch.autograd.Function):
    """The threshold's gradient from the entries shut at every snapshot yet inside the
    window at some: their code is 0 everywhere, so they add nothing to the decode or the
    scores, and the decode and score outputs pass through unchanged. In backward each
    (entry, snapshot) pair inside the window gives ``grad_f = <grad_out[n, s], W[i, s]> +
    c * norm * grad_score[i]`` (tanh's slope at 0 is 1) to the rectangle kernel; the window
    kernel (``window_dots`` of the plan's kernels) decides which pairs are inside and sums
    their dot products, one matmul tile of ``<grad, W>`` per (tokens, features, snapshot)
    block masked in registers, whatever the window's share, with no work in forward.
    Backward runs under the forward's autocast state."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(  # type: ignore[override]
        ctx: Any,
        recon_NSD: torch.Tensor,
        score_sum_F: torch.Tensor,
        threshold_F: torch.Tensor,
        h_NF: torch.Tensor,
        decoder: tuple[torch.Tensor, torch.Tensor | None],
        norms_FS: torch.Tensor,
        window_NF: torch.Tensor,
        gate: tuple[float, float],
        ops: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        W_dec_FSD, read_FSD = decoder
        ctx.gate, ctx.ops = gate, ops
        # the kernel rounds W to the gradient's dtype as it loads it: the rounded copy is the
        # same numbers in half the bytes
        W_FSD = W_dec_FSD if read_FSD is None else read_FSD
        ctx.save_for_backward(W_FSD, h_NF, window_NF, norms_FS.float(), threshold_F.float())
        return recon_NSD.view_as(recon_NSD), score_sum_F.view_as(score_sum_F)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(  # type: ignore[override]
        ctx: Any, grad_recon_NSD: torch.Tensor, grad_score_F: torch.Tensor
    ) -> tuple[Any, ...]:
        (bandwidth, tanh_scale), score_grad_F = ctx.gate, grad_score_F.float()
        W_dec_FSD, h_NF, window_NF, norms_FS, t_F = ctx.saved_tensors
        grad_f_FS, counts_FS = ctx.ops.window_dots(
            _snapshot_major(grad_recon_NSD), W_dec_FSD, h_NF, window_NF, norms_FS, t_F, bandwidth / 2
        )
        grad_f_FS += tanh_scale * norms_FS * score_grad_F[:, None] * counts_FS
        grad_t_F = threshold_gradient(grad_f_FS, norms_FS, t_F, bandwidth)
        return grad_recon_NSD, grad_score_F, grad_t_F, None, None, None, None, None, None


def _snapshot_major(grad_NSD: torch.Tensor) -> Float[torch.Tensor, "n_snapshots n d_in"]:
    """The gradient the window sums read: snapshot-major, in autocast's dtype where it is on; one
    copy that rounds as it transposes (the same numbers as rounding, then transposing)."""
    N, S, D = grad_NSD.shape
    out_SND = grad_NSD.new_empty((S, N, D), dtype=autocast_dtype(grad_NSD.device) or grad_NSD.dtype)
    return out_SND.copy_(grad_NSD.transpose(0, 1))


@dataclass(frozen=True)
class ActiveEntries:
    """The (token, feature) entries of a JumpReLU batch that its step from the pairs works
    on, with their counts on the host: reading those counts is the step's one wait for the
    device (the pairs and the window entries are then listed to a known size)."""

    active_NF: Bool[torch.Tensor, "n d_sae"]
    """Open at some snapshot, or inside the threshold's window at some."""
    open_NF: Bool[torch.Tensor, "n d_sae"]
    """Open at some snapshot."""
    n_open: int
    """Entries of ``open_NF``."""
    n_window: int
    """Entries active but shut at every snapshot (inside the window at some)."""

    def window_NF(self) -> Bool[torch.Tensor, "n d_sae"]:
        """The entries shut at every snapshot yet inside the window at some."""
        return self.active_NF & ~self.open_NF


def active_entries(
    h_NF: torch.Tensor,
    norms_FS: torch.Tensor,
    threshold_F: torch.Tensor,
    half_width: float,
    plan: KernelPlan | None = None,
) -> ActiveEntries:
    """The entries open at some snapshot or inside the window at some, and those open at
    some. ``h * norm - t`` is monotone in the norm, so the smallest and largest of a
    feature's norms bound it at every snapshot (the same two roundings): where the plan's
    Triton kernels run and take the dtypes, one pass over ``h``, else the eager masks."""
    low_F, high_F = norms_FS.min(dim=1).values, norms_FS.max(dim=1).values
    plan = plan_for(h_NF.device, plan)
    kernels = kernels_for(plan)
    if not kernels.entry_masks_take(h_NF, low_F, high_F, threshold_F):
        kernels = EagerKernels(plan)
    open_NF, active_NF, n_open_t, n_active_t = kernels.entry_masks(h_NF, low_F, high_F, threshold_F, half_width)
    n_open, n_active = host_ints(n_open_t, n_active_t)
    return ActiveEntries(active_NF, open_NF, n_open, n_active - n_open)


def sparse_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    norms: tuple[Float[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, " n_snapshots"]],
    entries: ActiveEntries,
    gate: tuple[float, float],
    plan: KernelPlan | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The JumpReLU step's ``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF,
    norms_FS)`` from the active ``entries`` (:func:`active_entries`): those open at some
    snapshot gated, scored and decoded at every snapshot, those shut at every snapshot
    but inside the window at some left to :class:`ShutWindow`; for ``norms = (raw_FS,
    norm_factors_S)``, the decoder norms ``||W_dec[i, s]||`` computed without gradient (the
    decode's node differentiates them, :func:`gather_decode_and_norms`) and the factors to
    the training space, and ``gate = (bandwidth, tanh_scale)``; the values and gradients of
    :func:`crosslens.crosscoders.jumprelu_crosscoder.snapshot_gated_decode`. Gate, scores and
    values are computed in float32 whatever the autocast dtype of h; under autocast the rows are
    read from the decoder rounded as ``step_weights`` holds it where the optimizer wrote it. ``norms_FS`` are the
    training space's decoder norms, differentiable through the decode's node, whose one pass
    writes W's gradient from the pairs and the norms: further scores read them at no
    further pass (:func:`crosslens.kernels.jumprelu_split.split_gated_decode`). In a micro-batched
    step ``block`` (a :func:`~crosslens.kernels.weight_grads.deferred_weight_grads` block) takes
    the decoder's gradient and gives its rounded copy."""
    bandwidth, tanh_scale = gate
    plan = plan_for(h_NF.device, plan)
    raw_FS, norm_factors_S = norms
    norms_FS = raw_FS * norm_factors_S
    open_any_NF = entries.open_NF
    pairs = ActivePairs.from_mask(open_any_NF, entries.n_open)
    N, F_ = h_NF.shape
    if h_NF.T.is_contiguous():  # feature-major (CrosscoderMixin.hidden_pre): a view either way
        h_flat, flat_A = h_NF.T.reshape(-1), pairs.feature_A * N + pairs.token_A
    else:
        h_flat, flat_A = h_NF.reshape(-1), pairs.token_A * F_ + pairs.feature_A
    h_A = h_flat.index_select(0, flat_A).float()
    t_A = threshold_F.float().index_select(0, pairs.feature_A)
    f_AS = JumpGate.apply(h_A, norms_FS.float().index_select(0, pairs.feature_A), t_A, bandwidth)
    read_FSD = autocast_copy(W_dec_FSD, entries.n_open, plan, step_weights, block)
    recon_NSD, raw_FS, _ = gather_decode_and_norms(W_dec_FSD, f_AS, pairs, raw_FS, plan, read_FSD, block=block)
    decoded_norms_FS = raw_FS * norm_factors_S
    norms_AS = decoded_norms_FS.float().index_select(0, pairs.feature_A)
    score_A = torch.tanh(f_AS * norms_AS * tanh_scale).sum(dim=1)
    score_sum_F = score_A.new_zeros(F_).index_add(0, pairs.feature_A, score_A)
    with torch.no_grad():
        shared_NF = h_NF * open_any_NF
    if threshold_F.requires_grad and entries.n_window:
        recon_NSD, score_sum_F = ShutWindow.apply(
            recon_NSD,
            score_sum_F,
            threshold_F,
            h_NF.detach(),
            (W_dec_FSD.detach(), read_FSD),
            norms_FS.detach(),
            entries.window_NF(),
            gate,
            kernels_for(plan),
        )
    return recon_NSD, score_sum_F.to(h_NF.dtype), open_any_NF, shared_NF, decoded_norms_FS


def snapshot_score_sums(
    h_NF: Float[torch.Tensor, "n d_sae"],
    norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    *,
    tanh_scale: float,
    plan: KernelPlan | None = None,
) -> Float[torch.Tensor, " d_sae"]:
    """``sum over tokens and snapshots of tanh(c * f * norms_s)``, float32, for the gated code
    ``f = h * [h * norms_s > t]``: the score sums of the JumpReLU step without its code, decode or
    gradient, which is all a micro-batched step's whole-batch ``p`` needs. An
    entry shut at every snapshot scores 0, so only the entries open at some snapshot are
    gathered and scored (:func:`~crosslens.kernels.jumprelu_ops.pair_score_sums`), a
    block of them at a time."""
    with torch.no_grad():
        S = norms_FS.shape[1]
        score_sum_F = h_NF.new_zeros(h_NF.shape[1], dtype=torch.float32)
        # h * norm is monotone in the norm: open at some snapshot is open at its smallest or largest
        open_NF = h_NF * norms_FS.min(dim=1).values > threshold_F
        open_NF |= h_NF * norms_FS.max(dim=1).values > threshold_F
        (n_open,) = host_ints(open_NF.sum())
        token_A, feature_A = torch.nonzero_static(open_NF, size=n_open).unbind(1)
        step = max(1, plan_for(h_NF.device, plan).block_elements(h_NF.device) // S)
        for a in range(0, n_open, step):
            part = slice(a, a + step)
            h_A = h_NF[token_A[part], feature_A[part]]
            pair_score_sums(h_A, feature_A[part], norms_FS, threshold_F, tanh_scale, score_sum_F)
        return score_sum_F
