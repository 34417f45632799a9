"""The task metric for continuations of several tokens, under splicing and patching.

For a minimal pair the metric is ``sum log p(wrong | prompt) - sum log p(correct |
prompt)`` under teacher forcing (:mod:`crosslens.tasks.sequences`); negative means the
model prefers the correct continuation. A task whose continuations are all one token
keeps the last-position ``logit[wrong] - logit[correct]``
(:func:`crosslens.causal.attribution.logit_diff`), the same number in exact arithmetic,
computed by ``logit_diff`` itself, so such a task gives the same bytes either way.

**Where features are patched.** The crosscoder is spliced at the hook over the prompt's
positions (``TokenizedTask.feature_mask``: every real prompt token but BOS), the
positions IG attributes, ablation edits and RelIE reads. The continuation's positions
run the model under teacher forcing and keep the model's own activation at the hook
(the same as splicing the crosscoder there with its error term kept: the model is
unchanged), and are never attributed or edited. Why:

- both rows of an example (prompt + correct, prompt + wrong) share the prompt, so the
  prompt positions' activation, code and error at the hook are one tensor for both
  rows, and the metric is differentiable in it: IG, ablation and keep-only curves and
  RelIE run unchanged on top of the new metric;
- the continuation positions hold different tokens in the two rows, so they have no
  single code to attribute, and a feature reading the answer being scored measures the
  answer, not the model's preference given the prompt;
- an intervention at the hook cannot change what the layers below it compute, so the
  continuation's clean activation at the hook is what the model computes there under
  any prompt patch;
- with one-token continuations there are no continuation positions: the two
  definitions coincide.

With a corrupted prompt, the patch point is the corrupted prompt's activation at the
hook over the prompt positions, continuation positions unchanged: ``metric_patch`` is
that patched run (activation patching at the hook), which for multi-token pairs is not
the model's metric on the corrupted prompt itself (its lower layers still read the
clean prompt at the continuation positions).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from transformer_lens import HookedTransformer

from crosslens.causal.snapshot_models import activations_at, final_residual_from_hook, unembed
from crosslens.tasks.base import TokenizedTask
from crosslens.tasks.sequences import TaskSequences, at_targets, logprob_diff

SUMMED_LOGPROB_DIFF = "summed_logprob_diff"
"""The name the IE table and summary give the multi-token metric."""


def check_metric(task: TokenizedTask, metric: Callable, default: Callable) -> None:
    """A custom metric reads last-position logits; it cannot score several tokens."""
    if task.multi_token and metric is not default:
        raise ValueError(
            f"metric={getattr(metric, '__name__', metric)!r} reads the prompt's last-position logits, but this task "
            "has continuations of several tokens, scored by summed log-probability; leave metric at its default, "
            "or pass a task whose continuations are all one token"
        )


def metric_name(task: TokenizedTask, metric: Callable) -> str:
    """What the task's numbers measure, for tables and summaries."""
    return SUMMED_LOGPROB_DIFF if task.multi_token else getattr(metric, "__name__", "custom")


def metric_from_residual(
    model: HookedTransformer, resid: Float[torch.Tensor, "n_examples 2 width d_model"], sequences: TaskSequences
) -> Float[torch.Tensor, " n_examples"]:
    """The summed log-probability difference from the final residual stream of both rows,
    unembedding only the positions that predict a continuation token."""
    resid_N2TD = at_targets(resid, sequences)
    n_examples, _, n_cont, d_model = resid_N2TD.shape
    logits = unembed(model, resid_N2TD.reshape(n_examples * 2, n_cont, d_model))
    return logprob_diff(logits.reshape(n_examples, 2, n_cont, -1), sequences)


@torch.no_grad()
def continuation_activations(
    model: HookedTransformer, hook: str, sequences: TaskSequences
) -> Float[torch.Tensor, "n_examples 2 width d_in"]:
    """The model's own activation at ``hook`` along both rows of every example."""
    n_examples, _, width = sequences.tokens.shape
    acts = activations_at(model, hook, sequences.flat_tokens(), sequences.flat_mask().long())
    return acts.reshape(n_examples, 2, width, -1)


def continuation_path_metric(
    model: HookedTransformer, hook: str, task: TokenizedTask, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """IG's ``metric_fn`` for one batch of a multi-token task.

    It takes the prompt positions' activation at the hook for K path points,
    ``[K, batch, seq, d_in]``, lays it over both rows of each example with the
    continuation positions' clean activation, runs the rest of the model from the hook
    and returns the metric ``[K, batch]``.
    """
    sequences = task.sequences().to(device)
    acts_cont_N2WD = continuation_activations(model, hook, sequences).to(device)
    tokens_RW = sequences.flat_tokens()
    mask_RW = sequences.flat_mask().long()
    n_examples, _, width = sequences.tokens.shape

    def path_metric(acts_K: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
        n_points = acts_K.shape[0]
        acts_KN2WD = sequences.from_prompt(acts_K, acts_cont_N2WD.to(acts_K.dtype), lead_dims=1)
        resid = final_residual_from_hook(
            model,
            hook,
            acts_KN2WD.reshape(n_points * n_examples * 2, width, -1),
            tokens_RW.repeat(n_points, 1),
            mask_RW.repeat(n_points, 1),
        )
        resid_KN2WD = resid.reshape(n_points, n_examples, 2, width, -1)
        return torch.stack([metric_from_residual(model, resid_KN2WD[k], sequences) for k in range(n_points)])

    return path_metric


@torch.no_grad()
def sequences_metric(model: HookedTransformer, task: TokenizedTask) -> Float[torch.Tensor, " n_examples"]:
    """The summed log-probability difference of every example under whatever hooks are active
    on ``model`` (they see ``[2 * n_examples, width]`` rows: :func:`rows_from_prompt`)."""
    sequences = task.sequences()
    n_examples, _, width = sequences.tokens.shape
    logits = model(sequences.flat_tokens(), attention_mask=sequences.flat_mask().long())
    logits_N2WV = logits.reshape(n_examples, 2, width, -1)
    return logprob_diff(at_targets(logits_N2WV, sequences), sequences.to(logits.device)).cpu()


def rows_from_prompt(
    task: TokenizedTask,
    codes: Float[torch.Tensor, "n_examples seq d_sae"] | None,
    positions: Bool[torch.Tensor, "n_examples seq"],
) -> tuple[Float[torch.Tensor, "n_rows width d_sae"] | None, Bool[torch.Tensor, "n_rows width"]]:
    """Prompt-position codes and splice positions laid out over the rows
    :func:`sequences_metric` runs (zero codes and no splicing at continuation positions)."""
    sequences = task.sequences()
    rows_positions = sequences.from_prompt(positions, False).flatten(0, 1)
    if codes is None:
        return None, rows_positions
    return sequences.from_prompt(codes, 0.0).flatten(0, 1), rows_positions
