"""Prompt + continuation sequences, and their teacher-forced score.

A minimal pair is scored by how much more likely the model finds the wrong
continuation than the correct one after the prompt::

    metric = sum_t log p(wrong_t | prompt, wrong_<t) - sum_t log p(correct_t | prompt, correct_<t)

(negative: the model prefers the correct continuation). Each example becomes two
right-padded rows, prompt + correct and prompt + wrong; position ``t`` of a row
predicts token ``t + 1``, so the continuation's ``j``-th token is read from the
logits at ``prompt_length - 1 + j``. For one-token continuations the log-softmax
normalisers of the two rows are the same number (same prompt, same position) and
cancel: the metric is ``logit[wrong] - logit[correct]`` at the prompt's last position.

Only torch here: the pico suite's eval table (:mod:`crosslens.pico.evals`) and the
causal stage (:mod:`crosslens.causal.attribution`) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

CORRECT, WRONG = 0, 1
"""Index of each continuation on the ``2`` axis of :class:`TaskSequences` tensors."""


@dataclass
class TaskSequences:
    """Every example's prompt + correct and prompt + wrong continuation, right-padded.

    The prompt occupies the same positions in both rows (and in the prompt-only
    ``TokenizedTask.clean_tokens``), so anything computed per prompt position can be
    laid over both rows with :meth:`from_prompt`.
    """

    tokens: Int[torch.Tensor, "n_examples 2 width"]
    mask: Bool[torch.Tensor, "n_examples 2 width"]
    """True at real tokens (prompt, BOS included, and continuation)."""
    prompt_mask: Bool[torch.Tensor, "n_examples 2 width"]
    """True at the prompt's positions."""
    target_pos: Int[torch.Tensor, "n_examples 2 n_cont"]
    """Position whose logits predict each continuation token (padding: a valid index, masked)."""
    target_ids: Int[torch.Tensor, "n_examples 2 n_cont"]
    target_mask: Bool[torch.Tensor, "n_examples 2 n_cont"]
    """True for real continuation tokens."""

    @property
    def width(self) -> int:
        return int(self.tokens.shape[-1])

    def flat_tokens(self) -> Int[torch.Tensor, "n_rows width"]:
        """One row per (example, continuation): rows ``2i`` (correct) and ``2i + 1`` (wrong)."""
        return self.tokens.flatten(0, 1)

    def flat_mask(self) -> Bool[torch.Tensor, "n_rows width"]:
        return self.mask.flatten(0, 1)

    def from_prompt(
        self, per_prompt: torch.Tensor, fill: torch.Tensor | float = 0, *, lead_dims: int = 0
    ) -> torch.Tensor:
        """Lay ``per_prompt`` (``[*lead, n_examples, seq, *rest]`` with ``lead_dims`` leading
        axes, indexed by prompt position) over both rows of each example:
        ``[*lead, n_examples, 2, width, *rest]``, holding it at the prompt's positions and
        ``fill`` (broadcast to that shape) elsewhere.

        ``seq`` may be wider or narrower than ``width``: positions past every prompt are
        cut or padded, and only prompt positions are read.
        """
        seq_axis = lead_dims + 1
        seq = per_prompt.shape[seq_axis]
        if seq >= self.width:
            fitted = per_prompt.narrow(seq_axis, 0, self.width)
        else:
            pad_shape = list(per_prompt.shape)
            pad_shape[seq_axis] = self.width - seq
            fitted = torch.cat([per_prompt, per_prompt.new_zeros(pad_shape)], dim=seq_axis)
        n_rest = fitted.ndim - seq_axis - 1
        both_rows = fitted.unsqueeze(seq_axis)  # [*lead, n_examples, 1, width, *rest]
        where = self.prompt_mask.to(fitted.device).reshape(*self.prompt_mask.shape, *(1,) * n_rest)
        fill = torch.as_tensor(fill, dtype=fitted.dtype, device=fitted.device)
        return torch.where(where, both_rows, fill)

    def to(self, device: torch.device | str) -> "TaskSequences":
        return TaskSequences(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def task_sequences(
    prompt_tokens_NL: Int[torch.Tensor, "n_examples seq"],
    last_pos_N: Int[torch.Tensor, " n_examples"],
    cont_N2T: Int[torch.Tensor, "n_examples 2 n_cont"],
    len_N2: Int[torch.Tensor, "n_examples 2"],
    pad_id: int,
) -> TaskSequences:
    """The teacher-forcing layout of right-padded prompts (each ending at ``last_pos_N``)
    followed by their (correct, wrong) continuations (:meth:`TokenizedTask.sequences`)."""
    n_examples, n_cont = cont_N2T.shape[0], cont_N2T.shape[-1]
    device = prompt_tokens_NL.device
    prompt_len_N = last_pos_N.to(device) + 1
    width = int((prompt_len_N[:, None] + len_N2.to(device)).max())
    pos_W = torch.arange(width, device=device)
    prompt_mask_N2W = (pos_W < prompt_len_N[:, None, None]).expand(n_examples, 2, width)
    # continuation token j of example i sits at position prompt_len_i + j
    offset_N2W = pos_W - prompt_len_N[:, None, None]
    in_cont_N2W = (offset_N2W >= 0) & (offset_N2W < len_N2.to(device)[..., None])
    cont_at_N2W = cont_N2T.to(device).gather(-1, offset_N2W.clamp(0, n_cont - 1).expand(n_examples, 2, width))
    prompt_tokens_NW = _fit_width(prompt_tokens_NL, width, pad_id)
    pad = torch.full_like(cont_at_N2W, pad_id)
    tokens_N2W = torch.where(prompt_mask_N2W, prompt_tokens_NW[:, None, :], torch.where(in_cont_N2W, cont_at_N2W, pad))
    target_mask_N2T = torch.arange(n_cont, device=device) < len_N2.to(device)[..., None]
    target_pos_N2T = (prompt_len_N[:, None, None] - 1 + torch.arange(n_cont, device=device)).clamp(max=width - 1)
    return TaskSequences(
        tokens=tokens_N2W,
        mask=prompt_mask_N2W | in_cont_N2W,
        prompt_mask=prompt_mask_N2W.contiguous(),
        target_pos=target_pos_N2T.expand(n_examples, 2, n_cont).contiguous(),
        target_ids=cont_N2T.to(device),
        target_mask=target_mask_N2T,
    )


def _fit_width(tokens_NL: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    if tokens_NL.shape[1] >= width:
        return tokens_NL[:, :width]
    return torch.cat([tokens_NL, tokens_NL.new_full((tokens_NL.shape[0], width - tokens_NL.shape[1]), pad_id)], 1)


def at_targets(
    per_position: Float[torch.Tensor, "n_examples 2 width *rest"], sequences: TaskSequences
) -> Float[torch.Tensor, "n_examples 2 n_cont *rest"]:
    """The entries of ``per_position`` (logits, or a residual stream) at the positions that
    predict each continuation token."""
    index = sequences.target_pos.to(per_position.device)
    rest = per_position.shape[3:]
    index = index.reshape(*index.shape, *(1,) * len(rest)).expand(*index.shape, *rest)
    return per_position.gather(2, index)


def summed_logprobs(
    logits: Float[torch.Tensor, "n_examples 2 n_cont d_vocab"], sequences: TaskSequences
) -> Float[torch.Tensor, "n_examples 2"]:
    """Each continuation's log-probability, summed over its tokens (float32 log-softmax)."""
    logprobs = logits.float().log_softmax(-1)
    picked = logprobs.gather(-1, sequences.target_ids.to(logits.device)[..., None])[..., 0]
    return torch.where(sequences.target_mask.to(logits.device), picked, torch.zeros_like(picked)).sum(-1)


def logprob_diff(
    logits: Float[torch.Tensor, "n_examples 2 n_cont d_vocab"], sequences: TaskSequences
) -> Float[torch.Tensor, " n_examples"]:
    """``log p(wrong | prompt) - log p(correct | prompt)``, each summed over its tokens:
    negative when the model prefers the correct continuation."""
    summed_N2 = summed_logprobs(logits, sequences)
    return summed_N2[:, WRONG] - summed_N2[:, CORRECT]
