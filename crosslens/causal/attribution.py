"""Integrated-gradient attribution of crosscoder features (and the error node) for a task.

For snapshot s, the activation at the hook is written as ``a = a_hat_s(f) + e``
(see :mod:`crosslens.causal.splicing`). The task metric is
``m = sum log p(wrong | prompt) - sum log p(correct | prompt)`` under teacher forcing,
each continuation's log-probability summed over its tokens; when every continuation
of the task is one token it is computed as ``logit[wrong] - logit[correct]`` at the
prompt's last position (the same number: the log-softmax normaliser cancels). Either way it is a function of (f, e) at the prompt's
positions through the rest of the model (continuation positions keep their own clean
activation: :mod:`crosslens.causal.continuations` says why). Integrated gradients
(:func:`crosslens.causal.ig.integrated_gradients`) split ``m(patch) - m(clean)``
over every feature at every prompt position and over the error term, where the patch
point comes from the corrupted prompt when the task has one; otherwise every feature and
the error are zero there, which leaves the decoder bias (``decode(0)``).
All path points of a batch run as one forward/backward pass along the batch axis.

Per-token effects are optionally thresholded (``|IE| <= threshold`` set to zero,
Bayazit et al. use 0.1), then averaged over each prompt's positions and over
examples, giving one IE per (feature, snapshot): an :class:`IETable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from crosslens.causal.continuations import check_metric, continuation_path_metric, metric_name
from crosslens.causal.ie_table import IETable, table_identity
from crosslens.causal.ig import integrated_gradients
from crosslens.causal.snapshot_models import (
    SnapshotModels,
    TaskActivations,
    activations_at,
    check_snapshot_model,
    check_token_ids,
    iter_snapshot_models,
    prepare_task,
    run_from_hook,
)
from crosslens.causal.splicing import exact_codes
from crosslens.core.hooks import crosscoder_hook
from crosslens.core.progress import progress_bar
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.tasks.base import TaskDataset, TokenizedTask

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder

# metric(last-position logits [B, V], correct ids [B], wrong ids [B]) -> [B]
Metric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def logit_diff(
    logits: Float[torch.Tensor, "batch d_vocab"],
    correct_ids: Int[torch.Tensor, " batch"],
    wrong_ids: Int[torch.Tensor, " batch"],
) -> Float[torch.Tensor, " batch"]:
    """``logit[wrong] - logit[correct]``: negative when the model gets the pair right.

    The metric of one-token tasks; a task with a longer continuation is scored by summed
    log-probabilities instead (:mod:`crosslens.causal.continuations`), which equals this
    for one-token continuations.
    """
    picked = logits.gather(-1, torch.stack([wrong_ids, correct_ids], dim=-1).to(logits.device))
    return picked[..., 0] - picked[..., 1]


@dataclass(frozen=True)
class AttributionConfig:
    """How attribution is computed and reduced."""

    n_steps: int = 10
    """Integrated-gradient path points ``alpha_k = k/n``; 1 is attribution patching."""
    mode: Literal["exact", "per_snapshot"] = "exact"
    """Shared code from all snapshots' activations ("exact") or from snapshot s alone (see splice)."""
    batch_size: int = 16
    """Examples per forward/backward pass (each runs ``steps_per_pass`` path points)."""
    steps_per_pass: int | None = None
    """Path points batched into one pass; None runs all ``n_steps`` at once, 1 loops."""
    threshold: float | None = None
    """Zero per-token |IE| at or below this before averaging (Bayazit et al.: 0.1); None keeps all."""
    reduce_positions: Literal["mean", "sum"] = "mean"
    """Average (or sum) per-token effects over each prompt's positions, then average over examples."""
    include_bos: bool = False
    """Attribute features at the BOS position too (crosscoders are usually trained without it)."""

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {self.n_steps}")
        if self.mode not in ("exact", "per_snapshot"):
            raise ValueError(f"mode must be 'exact' or 'per_snapshot', got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.steps_per_pass is not None and self.steps_per_pass < 1:
            raise ValueError(f"steps_per_pass must be None or at least 1, got {self.steps_per_pass}")
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f"threshold must be None or >= 0, got {self.threshold}")
        if self.reduce_positions not in ("mean", "sum"):
            raise ValueError(f"reduce_positions must be 'mean' or 'sum', got {self.reduce_positions!r}")


@dataclass
class SnapshotAttribution:
    """One snapshot's attribution for one task."""

    snapshot: int
    ie: Float[torch.Tensor, " d_sae"]
    """Reduced IE of each feature (see :class:`AttributionConfig`)."""
    error_ie: float
    """Reduced IE of the error node (summed over d_in), never thresholded."""
    metric_clean: Float[torch.Tensor, " n_examples"]
    metric_patch: Float[torch.Tensor, " n_examples"]
    total_ie: Float[torch.Tensor, " n_examples"]
    """Sum of all unthresholded attributions per example; approximates metric_patch - metric_clean."""
    per_token: Float[torch.Tensor, "n_examples seq d_sae"] | None = None
    """Unreduced feature IE (only with ``keep_per_token=True``)."""
    per_token_error: Float[torch.Tensor, "n_examples seq"] | None = None
    per_example: Float[torch.Tensor, "n_examples d_sae"] | None = None
    """Each example's reduced (thresholded, position-reduced) IE; ``ie`` is its mean. For
    bootstrap confidence intervals over examples (:func:`~crosslens.causal.relative_ie.bootstrap_ie_ci`)."""

    def completeness_gap(self) -> Float[torch.Tensor, " n_examples"]:
        """``total_ie - (metric_patch - metric_clean)`` per example; shrinks as n_steps grows."""
        return self.total_ie - (self.metric_patch - self.metric_clean)


def ig_endpoints(
    codec: SnapshotCodec,
    acts_clean: torch.Tensor,
    codes_clean: torch.Tensor,
    acts_patch: torch.Tensor | None,
    codes_patch: torch.Tensor | None,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f_clean, e_clean, f_patch, e_patch) with features only at ``positions``.

    Elsewhere the code is zero at both ends and the error carries the clean
    activation, so those positions stay clean along the whole path.
    """
    keep = positions[..., None].to(codes_clean.dtype)
    f_clean = codes_clean * keep
    e_clean = acts_clean - codec.decode(f_clean)
    if acts_patch is None:
        f_patch = torch.zeros_like(f_clean)
        e_patch = torch.where(positions[..., None], torch.zeros_like(e_clean), e_clean)
    else:
        f_patch = codes_patch * keep  # type: ignore[operator]
        e_patch = torch.where(positions[..., None], acts_patch - codec.decode(f_patch), e_clean)
    return f_clean, e_clean, f_patch, e_patch


def attribute_snapshot(
    model: HookedTransformer,
    crosscoder: Crosscoder,
    task: TokenizedTask,
    *,
    snapshot: int,
    hook: str | None = None,
    acts_clean: Float[torch.Tensor, "n seq d_in"] | None = None,
    acts_patch: Float[torch.Tensor, "n seq d_in"] | None = None,
    codes_clean: Float[torch.Tensor, "n seq d_sae"] | None = None,
    codes_patch: Float[torch.Tensor, "n seq d_sae"] | None = None,
    config: AttributionConfig = AttributionConfig(),
    metric: Metric = logit_diff,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    keep_per_token: bool = False,
    progress: bool = False,
) -> SnapshotAttribution:
    """Attribute ``metric`` on ``task`` to snapshot ``snapshot``'s crosscoder features.

    Activations and codes are those of the prompt positions (``task.clean_tokens``).
    Activations default to the model's own; codes default to per-snapshot encoding.
    For exact mode pass codes from :func:`exact_codes` (``attribute`` does this).
    ``metric`` applies to one-token tasks; multi-token tasks use the summed
    log-probability difference (a custom metric is refused for them).
    """
    hook = crosscoder_hook(crosscoder, hook)
    check_metric(task, metric, logit_diff)
    check_snapshot_model(crosscoder, snapshot, model)
    check_token_ids(task, model.cfg.d_vocab)
    codec = SnapshotCodec(crosscoder, snapshot, norm_factors)
    acts_clean, acts_patch, codes_clean, codes_patch = _snapshot_inputs(
        model, hook, codec, task, acts_clean, acts_patch, codes_clean, codes_patch
    )
    positions_all = task.feature_mask(include_bos=config.include_bos)
    n_examples = task.clean_tokens.shape[0]
    totals = _IETotals(codec.d_sae, keep_per_token)
    batches = range(0, n_examples, config.batch_size)
    for start in progress_bar(batches, desc=f"IG snapshot {snapshot}", show=progress):
        rows = slice(start, start + config.batch_size)
        ie_tok, err_tok, metric_clean, metric_patch = _attribute_batch(
            model,
            hook,
            codec,
            task,
            rows,
            positions_all[rows],
            config,
            metric,
            acts_clean[rows],
            codes_clean[rows],
            None if acts_patch is None else acts_patch[rows],
            None if codes_patch is None else codes_patch[rows],
        )
        totals.add(ie_tok, err_tok, metric_clean, metric_patch, positions_all[rows].to(codec.device), config)
    return totals.result(snapshot, n_examples)


def _snapshot_inputs(
    model: HookedTransformer,
    hook: str,
    codec: SnapshotCodec,
    task: TokenizedTask,
    acts_clean: torch.Tensor | None,
    acts_patch: torch.Tensor | None,
    codes_clean: torch.Tensor | None,
    codes_patch: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The clean (and corrupted) activations and codes: given, or the model's own and
    this snapshot's per-snapshot encoding of them."""
    attention_mask = task.mask.long()
    if acts_clean is None:
        acts_clean = activations_at(model, hook, task.clean_tokens, attention_mask)
    has_patch = task.corrupted_tokens is not None
    if has_patch and acts_patch is None:
        acts_patch = activations_at(model, hook, task.corrupted_tokens, attention_mask)  # type: ignore[arg-type]
    with torch.no_grad():
        if codes_clean is None:
            codes_clean = codec.encode_single(acts_clean).cpu()
        if has_patch and codes_patch is None:
            codes_patch = codec.encode_single(acts_patch).cpu()  # type: ignore[arg-type]
    return acts_clean, acts_patch, codes_clean, codes_patch


def _attribute_batch(
    model: HookedTransformer,
    hook: str,
    codec: SnapshotCodec,
    task: TokenizedTask,
    rows: slice,
    positions: torch.Tensor,
    config: AttributionConfig,
    metric: Metric,
    acts_clean: torch.Tensor,
    codes_clean: torch.Tensor,
    acts_patch: torch.Tensor | None,
    codes_patch: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token feature IE ``[B, L, F]`` and error IE ``[B, L]`` of one batch of examples,
    with the metric at the clean and the patched end of the path ``[B]``."""
    dtype, device = codec.dtype, codec.device
    positions = positions.to(device)
    with torch.no_grad():
        f_clean, e_clean, f_patch, e_patch = ig_endpoints(
            codec,
            acts_clean.to(device, dtype),
            codes_clean.to(device, dtype),
            None if acts_patch is None else acts_patch.to(device, dtype),
            None if codes_patch is None else codes_patch.to(device, dtype),
            positions,
        )
    if task.multi_token:
        path_metric = continuation_path_metric(model, hook, task[rows], device)
    else:
        path_metric = _last_position_path_metric(model, hook, task, rows, metric, device)

    # a = a_hat_s(f) + e is affine in (f, e), so interpolating (f, e) together is
    # interpolating the activation, and dm/df = dm/da W_dec[:, s]^T / c_s. One path
    # of gradients at the hook gives every feature's and the error's IE without
    # pushing [steps, batch, seq, d_sae] codes through the decoder at every step.
    with torch.no_grad():
        acts_start = codec.decode(f_clean) + e_clean
        acts_end = codec.decode(f_patch) + e_patch
    path = integrated_gradients(
        path_metric, acts_start, acts_end, n_steps=config.n_steps, batched=config.steps_per_pass or config.n_steps
    )
    with torch.no_grad():
        end_metric = path_metric(acts_end[None])[0]
        grad_acts = path.mean_grad_features  # dm/da averaged over the path, [B, L, D]
        ie_tok = (f_patch - f_clean) * codec.decode_grad(grad_acts)  # [B, L, F]
        err_tok = ((e_patch - e_clean) * grad_acts).sum(-1)  # [B, L]
    return ie_tok, err_tok, path.metric_path[0], end_metric


def _last_position_path_metric(
    model: HookedTransformer, hook: str, task: TokenizedTask, rows: slice, metric: Metric, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """IG's ``metric_fn`` for one batch of a one-token task: ``metric`` on the logits at each
    prompt's last position, ``[K, batch]`` for K path points of ``[K, batch, seq, d_in]``."""
    tokens = task.clean_tokens[rows].to(device)
    mask = task.mask.long()[rows].to(device)
    last_pos, correct, wrong = task.last_pos[rows], task.correct_ids[rows], task.wrong_ids[rows]
    seq = task.clean_tokens.shape[1]
    batch = tokens.shape[0]

    def path_metric(acts_K: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
        n_points = acts_K.shape[0]
        logits = run_from_hook(
            model,
            hook,
            acts_K.reshape(n_points * batch, seq, -1),
            tokens.repeat(n_points, 1),
            mask.repeat(n_points, 1),
            positions=last_pos.repeat(n_points),
        )
        return metric(logits, correct.repeat(n_points), wrong.repeat(n_points)).reshape(n_points, batch)

    return path_metric


class _IETotals:
    """Running sums of one snapshot's attribution over batches of examples."""

    def __init__(self, d_sae: int, keep_per_token: bool) -> None:
        self.keep_per_token = keep_per_token
        self.ie_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.error_sum = 0.0
        self.metric_clean: list[torch.Tensor] = []
        self.metric_patch: list[torch.Tensor] = []
        self.total_ie: list[torch.Tensor] = []
        self.per_token: list[torch.Tensor] = []
        self.per_token_error: list[torch.Tensor] = []
        self.per_example: list[torch.Tensor] = []

    def add(
        self,
        ie_tok: torch.Tensor,
        err_tok: torch.Tensor,
        metric_clean: torch.Tensor,
        metric_patch: torch.Tensor,
        positions: torch.Tensor,
        config: AttributionConfig,
    ) -> None:
        """One batch: totals before thresholding, then the thresholded, position-reduced IE."""
        self.total_ie.append((ie_tok.sum((1, 2)) + err_tok.sum(1)).detach().cpu())
        self.metric_clean.append(metric_clean.cpu())
        self.metric_patch.append(metric_patch.cpu())
        if self.keep_per_token:
            self.per_token.append(ie_tok.detach().cpu())
            self.per_token_error.append(err_tok.detach().cpu())
        if config.threshold is not None:
            ie_tok = torch.where(ie_tok.abs() > config.threshold, ie_tok, torch.zeros_like(ie_tok))
        if config.reduce_positions == "mean":
            n_positions = positions.sum(1).clamp(min=1).to(ie_tok.dtype)
            self.ie_sum += (ie_tok.sum(1) / n_positions[:, None]).sum(0).double().cpu()
            self.error_sum += float((err_tok.sum(1) / n_positions).sum())
            self.per_example.append((ie_tok.sum(1) / n_positions[:, None]).detach().float().cpu())
        else:
            self.ie_sum += ie_tok.sum((0, 1)).double().cpu()
            self.error_sum += float(err_tok.sum())
            self.per_example.append(ie_tok.sum(1).detach().float().cpu())

    def result(self, snapshot: int, n_examples: int) -> SnapshotAttribution:
        keep = self.keep_per_token
        return SnapshotAttribution(
            snapshot=snapshot,
            ie=(self.ie_sum / n_examples).float(),
            error_ie=self.error_sum / n_examples,
            metric_clean=torch.cat(self.metric_clean),
            metric_patch=torch.cat(self.metric_patch),
            total_ie=torch.cat(self.total_ie),
            per_token=torch.cat(self.per_token) if keep else None,
            per_token_error=torch.cat(self.per_token_error) if keep else None,
            per_example=torch.cat(self.per_example),
        )


def attribute(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    task: TaskDataset | TokenizedTask,
    *,
    hook: str | None = None,
    snapshots: Sequence[int] | None = None,
    config: AttributionConfig = AttributionConfig(),
    metric: Metric = logit_diff,
    tokenizer: Any = None,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    activations: TaskActivations | None = None,
    progress: bool = True,
) -> IETable:
    """IE of every crosscoder feature at each snapshot, for one task.

    Args:
        models: the CheckpointSuite the crosscoder was trained on (one model resident at a
            time), or a sequence of HookedTransformers in snapshot order.
        crosscoder: the trained crosscoder.
        task: a :class:`TaskDataset` (tokenized with the suite's tokenizer) or a TokenizedTask;
            continuations may be several tokens (scored by summed log-probability).
        hook: hook name (default: the crosscoder's metadata).
        snapshots: which snapshots to attribute (default: all).
        config: steps, mode, batching, thresholding, reduction.
        activations: exact mode's activations from :func:`collect_task_activations` on this task,
            to reuse them across calls; activations of another task are refused.
    """
    hook = crosscoder_hook(crosscoder, hook)
    exact = config.mode == "exact"
    prepared = prepare_task(
        models,
        crosscoder,
        task,
        hook=hook,
        snapshots=snapshots,
        tokenizer=tokenizer,
        exact=exact,
        activations=activations if exact else None,
        progress=progress,
    )
    tokenized, activations = prepared.tokenized, prepared.activations
    check_metric(tokenized, metric, logit_diff)

    results = []
    for index, model in iter_snapshot_models(models, prepared.chosen, crosscoder):
        inputs = exact_snapshot_inputs(crosscoder, activations, index, norm_factors) if activations is not None else {}
        results.append(
            attribute_snapshot(
                model,
                crosscoder,
                tokenized,
                snapshot=index,
                hook=hook,
                config=config,
                metric=metric,
                norm_factors=norm_factors,
                progress=progress,
                **inputs,
            )
        )
    return table_from_snapshots(
        prepared.name,
        results,
        [prepared.labels[i] for i in prepared.chosen],
        config,
        hook,
        len(tokenized),
        metric_name(tokenized, metric),
        identity=table_identity(crosscoder, tokenized),
    )


def exact_snapshot_inputs(
    crosscoder: Crosscoder,
    activations: TaskActivations,
    index: int,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`attribute_snapshot`'s ``acts_*`` and ``codes_*`` at snapshot ``index`` in exact
    mode, from every snapshot's (clean, corrupted) activations (:func:`collect_task_activations`)."""
    acts_clean_all, acts_patch_all = activations.clean, activations.corrupted
    inputs = {
        "acts_clean": acts_clean_all[:, :, index],
        "codes_clean": exact_codes(crosscoder, acts_clean_all, index, norm_factors=norm_factors),
    }
    if acts_patch_all is not None:
        inputs["acts_patch"] = acts_patch_all[:, :, index]
        inputs["codes_patch"] = exact_codes(crosscoder, acts_patch_all, index, norm_factors=norm_factors)
    return inputs


def table_from_snapshots(
    name: str,
    results: Sequence[SnapshotAttribution],
    labels: Sequence[str],
    config: AttributionConfig,
    hook: str,
    n_examples: int,
    metric: str = "logit_diff",
    *,
    identity: Mapping[str, Any],
) -> IETable:
    """The :class:`IETable` of per-snapshot attributions, one column per result in order;
    ``metric`` names what the numbers measure (``"logit_diff"`` or ``"summed_logprob_diff"``),
    ``identity`` what they were computed with (:func:`~crosslens.causal.ie_table.table_identity`)."""
    return IETable(
        task=name,
        snapshots=[r.snapshot for r in results],
        ie=torch.stack([r.ie for r in results], dim=1),
        error_ie=torch.tensor([r.error_ie for r in results]),
        metric_clean=torch.stack([r.metric_clean.mean() for r in results]),
        metric_patch=torch.stack([r.metric_patch.mean() for r in results]),
        snapshot_labels=list(labels),
        config={**asdict(config), "hook": hook, "n_examples": n_examples, "metric": metric, **identity},
        ie_per_example=torch.stack([r.per_example for r in results], dim=2),
    )
