"""What happens to each snapshot's language model when the crosscoder's reconstruction
replaces its activation: the standard quality measure of a sparse dictionary.

For snapshot s, on the same tokens, the next-token cross-entropy is measured three ways:

- ``ce_loss_without_sae``: the model as it is (L_clean);
- ``ce_loss_with_sae``: the activation at the hook replaced by the snapshot-s
  reconstruction ``a_hat_s(f)`` of the exact code (every snapshot's activation encoded
  together, as in training), with no error term (L_spliced);
- ``ce_loss_with_ablation``: the activation replaced by the ablation floor, zeros or the
  activation's mean over the tokens (L_ablated).

``ce_loss_score = (L_ablated - L_spliced) / (L_ablated - L_clean)`` is the share of the
loss the ablation costs that the reconstruction recovers (1: the model is unharmed; 0: no
better than the floor). The KL divergence of the next-token distribution from the clean
model's, ``kl_div_with_sae`` and ``kl_div_with_ablation``, gives
``kl_div_score = (KL_ablated - KL_spliced) / KL_ablated``. These are SAELens's names and
formulas for the same quantities (its ``model_performance_preservation`` and
``model_behavior_preservation`` metrics); ``ablation`` names the floor.

Every position but the last predicts the next token; all of them are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from crosslens.causal.splice import collect_activations, exact_codes, iter_snapshot_models, run_from_hook
from crosslens.core.hooks import crosscoder_hook
from crosslens.crosscoders.snapshot_sae import SnapshotCodec

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder

SplicedAblation = Literal["zero", "mean"]


def _next_token_stats(
    logits_NLV: Float[torch.Tensor, "n seq d_vocab"],
    tokens_NL: Int[torch.Tensor, "n seq"],
    clean_logprobs_NLV: Float[torch.Tensor, "n seq d_vocab"] | None,
) -> tuple[float, float]:
    """(summed cross-entropy, summed KL from the clean distribution) over the predicting positions."""
    logprobs = F.log_softmax(logits_NLV[:, :-1].double(), dim=-1)
    ce = -logprobs.gather(-1, tokens_NL[:, 1:, None]).sum()
    if clean_logprobs_NLV is None:
        return float(ce), 0.0
    kl = (clean_logprobs_NLV.exp() * (clean_logprobs_NLV - logprobs)).sum()
    return float(ce), float(kl)


def _score(floor: float, spliced: float, best: float) -> float:
    gap = floor - best
    return float("nan") if gap == 0 else (floor - spliced) / gap


@torch.no_grad()
def spliced_loss(
    models: Any,
    crosscoder: Crosscoder,
    tokens_NL: Int[torch.Tensor, "n seq"],
    *,
    hook: str | None = None,
    ablation: SplicedAblation = "zero",
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 16,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per snapshot: the cross-entropy and KL figures above, on ``tokens_NL``.

    ``models`` is a CheckpointSuite (one model resident at a time) or the snapshots'
    HookedTransformers in the crosscoder's snapshot order; ``hook`` defaults to the hook
    the crosscoder records. ``norm_factors`` as for
    :class:`~crosslens.crosscoders.snapshot_sae.SnapshotCodec`.
    """
    if ablation not in ("zero", "mean"):
        raise ValueError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    if tokens_NL.ndim != 2 or tokens_NL.shape[1] < 2:
        raise ValueError(f"tokens must be [n, seq] with seq >= 2 (a next token to predict), got {tuple(tokens_NL.shape)}")
    hook = crosscoder_hook(crosscoder, hook)
    n_snapshots = crosscoder.cfg.n_snapshots
    acts_NLSD = collect_activations(models, hook, tokens_NL, batch_size=batch_size)
    if acts_NLSD.shape[2] != n_snapshots:
        raise ValueError(f"the crosscoder reads {n_snapshots} snapshots but {acts_NLSD.shape[2]} models were given")
    n_predicted = tokens_NL.shape[0] * (tokens_NL.shape[1] - 1)
    rows = []
    for s, model in iter_snapshot_models(models):
        codec = SnapshotCodec(crosscoder, s, norm_factors)
        codes = exact_codes(crosscoder, acts_NLSD, s, norm_factors=norm_factors)
        acts_NLD = acts_NLSD[:, :, s]
        floor_D = acts_NLD.mean(dim=(0, 1)) if ablation == "mean" else torch.zeros(acts_NLD.shape[-1])
        sums = {"clean": [0.0, 0.0], "spliced": [0.0, 0.0], "ablated": [0.0, 0.0]}
        device, dtype = model.cfg.device, next(model.parameters()).dtype
        for start in range(0, tokens_NL.shape[0], batch_size):
            rows_b = slice(start, start + batch_size)
            tokens = tokens_NL[rows_b].to(device)
            clean_logits = model(tokens)
            clean_logprobs = F.log_softmax(clean_logits[:, :-1].double(), dim=-1)
            recon = codec.decode(codes[rows_b]).to(device, dtype)
            floor = floor_D.to(device, dtype).expand_as(recon)
            for name, logits in (
                ("clean", clean_logits),
                ("spliced", run_from_hook(model, hook, recon, tokens)),
                ("ablated", run_from_hook(model, hook, floor, tokens)),
            ):
                ce, kl = _next_token_stats(logits, tokens, None if name == "clean" else clean_logprobs)
                sums[name][0] += ce
                sums[name][1] += kl
        ce_clean, ce_spliced, ce_ablated = (sums[k][0] / n_predicted for k in ("clean", "spliced", "ablated"))
        kl_spliced, kl_ablated = (sums[k][1] / n_predicted for k in ("spliced", "ablated"))
        rows.append(
            {
                "snapshot": labels[s] if labels is not None else str(s),
                "ablation": ablation,
                "ce_loss_without_sae": ce_clean,
                "ce_loss_with_sae": ce_spliced,
                "ce_loss_with_ablation": ce_ablated,
                "ce_loss_score": _score(ce_ablated, ce_spliced, ce_clean),
                "kl_div_with_sae": kl_spliced,
                "kl_div_with_ablation": kl_ablated,
                "kl_div_score": _score(kl_ablated, kl_spliced, 0.0),
            }
        )
    return rows


def format_spliced_loss(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table (one line per snapshot)."""
    floor = rows[0]["ablation"] if rows else "zero"
    head = f"{'snapshot':>12s}  {'CE clean':>9s}  {'CE spliced':>10s}  {'CE ' + floor + '-abl.':>11s}  {'CE recovered':>12s}  {'KL spliced':>10s}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['snapshot']:>12s}  {row['ce_loss_without_sae']:9.4f}  {row['ce_loss_with_sae']:10.4f}  "
            f"{row['ce_loss_with_ablation']:11.4f}  {100 * row['ce_loss_score']:11.1f}%  {row['kl_div_with_sae']:10.4f}"
        )
    return "\n".join(lines)


__all__ = ["SplicedAblation", "format_spliced_loss", "spliced_loss"]
