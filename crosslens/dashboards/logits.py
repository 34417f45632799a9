"""Logit effects and the vocabulary's text.

A feature's direct effect on the logits at snapshot s is its snapshot-s decoder direction on the
model's raw activation scale (``W_dec[i, s] / c_s``, :meth:`SnapshotCodec.raw_weights`) passed
through the linear part of snapshot s's own final norm and its unembedding: centred where the
norm is a LayerNorm (TransformerLens's ``LayerNormPre`` once the norm's weights are folded into
``W_U``), times the norm's weight where it keeps one (post-norm models load unfolded), then
``@ W_U``. The norm's division by the residual's scale depends on the token, not the feature, and
is left out, as SAEDashboard and Neuronpedia do. Biases add the same to every feature and are
left out too.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec


def raw_directions(crosscoder: Any, snapshot: int) -> Float[torch.Tensor, "d_sae d_in"]:
    """Every feature's decoder direction at ``snapshot`` on the model's raw scale (float32)."""
    with torch.no_grad():
        return SnapshotCodec(crosscoder, snapshot).raw_weights()["W_dec"].detach().float()


@torch.no_grad()
def logit_effects(
    model: Any, directions_FD: torch.Tensor, n_logits: int, *, chunk: int = 2048
) -> tuple[Int[torch.Tensor, "F n"], Float[torch.Tensor, "F n"], Int[torch.Tensor, "F n"], Float[torch.Tensor, "F n"]]:
    """``(top_ids, top_values, bottom_ids, bottom_values)`` of each direction's logit effect through
    ``model``'s final norm and unembedding: the ``n_logits`` largest (largest first) and smallest
    (most negative first), on CPU. Directions are taken ``chunk`` at a time (a ``[chunk, d_vocab]``
    block of logits at once)."""
    W_U_DV = model.W_U.detach().float()
    norm = getattr(model, "ln_final", None)
    centre = norm is not None and "LayerNorm" in type(norm).__name__
    weight_D = getattr(norm, "w", None) if norm is not None else None
    n = min(int(n_logits), int(W_U_DV.shape[1]))
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, directions_FD.shape[0], chunk):
        d_CD = directions_FD[start : start + chunk].to(W_U_DV.device)
        if centre:
            d_CD = d_CD - d_CD.mean(dim=-1, keepdim=True)
        if weight_D is not None:
            d_CD = d_CD * weight_D.detach().float()
        logits_CV = d_CD @ W_U_DV
        top = logits_CV.topk(n, dim=1)
        bottom = logits_CV.topk(n, dim=1, largest=False)
        for part, value in zip(out, (top.indices, top.values, bottom.indices, bottom.values)):
            part.append(value.cpu())
    ids_top, val_top, ids_bottom, val_bottom = (torch.cat(part) for part in out)
    return ids_top.int(), val_top.float(), ids_bottom.int(), val_bottom.float()


def vocabulary_pieces(tokenizer: Any) -> list[str]:
    """Each token's text as it reads inside a window, the space a word-level tokenizer puts before a
    word kept: what decoding the token after a plain word adds to that word's text (the token
    decoded alone where that is not its own text, such as a byte of a split character)."""
    size = len(tokenizer)
    ids = list(range(size))
    alone = tokenizer.batch_decode([[i] for i in ids])
    reference = _plain_word(tokenizer, alone)
    if reference is None:
        return alone
    before = tokenizer.decode([reference])
    after = tokenizer.batch_decode([[reference, i] for i in ids])
    pieces = []
    for text, single in zip(after, alone):
        grown = text[len(before) :] if text.startswith(before) else None
        pieces.append(grown if grown is not None and grown.strip() == single.strip() else single)
    return pieces


def _plain_word(tokenizer: Any, alone: list[str]) -> int | None:
    """A token that decodes to letters only (the word the others are decoded after)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, text in enumerate(alone):
        if token_id not in special and text.strip().isalpha() and text == text.strip():
            return token_id
    return None
