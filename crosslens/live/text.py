"""Every feature's activation on each token of a text, at every snapshot (:class:`TextActivations`).

The readings are the feature database's (:mod:`crosslens.dashboards.readings`): the crosscoder's own
code, from every snapshot's activation of the token at once, and each snapshot's per-snapshot code,
from that snapshot's activation alone. The text is tokenized as a harvest tokenizes (no special
tokens, the row's first token, BOS, put in front), and BOS is left out of the answer, as the
database leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int

from crosslens.activations.forward import forward_to_hook
from crosslens.core.bounds import whole_number
from crosslens.dashboards.readings import Readings
from crosslens.live.resident import ResidentModels

CROSSCODER = -1
"""The reading of the crosscoder's own code (the database's snapshot -1)."""

TOP_FEATURES = 20
"""Features listed per reading for a text."""


@dataclass(frozen=True)
class TextActivations:
    """Every feature's activation on each token of ``text``, for the crosscoder's code and at each snapshot."""

    text: str
    token_ids: Int[np.ndarray, " n_tokens"]
    """The text's tokens (the BOS the models read first is not among them)."""
    tokens: list[str]
    """Each token's text, as the feature database writes it."""
    crosscoder_NF: Float[np.ndarray, "n_tokens d_sae"]
    """The crosscoder's own code: every snapshot's activation of the token read at once."""
    snapshots_SNF: Float[np.ndarray, "n_snapshots n_tokens d_sae"]
    """Each snapshot's per-snapshot code: that snapshot's activation alone."""
    steps: tuple[int, ...]
    """The training step of each snapshot."""

    @property
    def n_snapshots(self) -> int:
        return int(self.snapshots_SNF.shape[0])

    def reading(self, reading: int) -> Float[np.ndarray, "n_tokens d_sae"]:
        """The code of one reading: ``-1`` the crosscoder's, ``s`` snapshot s's."""
        if reading == CROSSCODER:
            return self.crosscoder_NF
        if not 0 <= reading < self.n_snapshots:
            raise IndexError(f"reading {reading}: -1 (the crosscoder's code) or a snapshot 0 to {self.n_snapshots - 1}")
        return self.snapshots_SNF[reading]

    def feature(self, feature: int) -> Float[np.ndarray, "n_readings n_tokens"]:
        """One feature's activation on each token: row 0 the crosscoder's code, row ``s + 1`` snapshot s's."""
        d_sae = self.crosscoder_NF.shape[1]
        index = whole_number(feature)
        if index is None or not 0 <= index < d_sae:
            raise IndexError(f"feature {feature!r}: this crosscoder has features 0 to {d_sae - 1}")  # -1 read the last
        return np.concatenate([self.crosscoder_NF[None, :, index], self.snapshots_SNF[:, :, index]])

    def top(self, reading: int = CROSSCODER, k: int = TOP_FEATURES) -> list[tuple[int, float, int]]:
        """The ``k`` features firing most on the text in ``reading`` (by their largest activation on
        a token), strongest first, as ``(feature, activation, token index)``; silent features are left out."""
        code_NF = self.reading(reading)
        if code_NF.shape[0] == 0:
            return []
        peak_F = code_NF.max(axis=0)
        k = min(int(k), int((peak_F > 0).sum()))
        if k <= 0:
            return []
        chosen = np.argpartition(-peak_F, k - 1)[:k]
        chosen = chosen[np.lexsort((chosen, -peak_F[chosen]))]
        where = code_NF[:, chosen].argmax(axis=0)
        return [(int(f), float(peak_F[f]), int(t)) for f, t in zip(chosen, where)]


@torch.inference_mode()
def text_codes(
    models: ResidentModels, readings: Readings, token_ids_L: Int[torch.Tensor, " seq_len"], hook: str
) -> tuple[Float[np.ndarray, "n_tokens d_sae"], Float[np.ndarray, "n_snapshots n_tokens d_sae"]]:
    """The crosscoder's code and every snapshot's per-snapshot code of the tokens after the first
    (BOS) of ``token_ids_L``: each snapshot model runs to ``hook`` once."""
    device = readings.crosscoder.W_dec.device
    tokens_1L = token_ids_L[None]
    acts = []
    for s in range(readings.n_snapshots):
        with models.use(s) as model:
            acts.append(forward_to_hook(model, tokens_1L, hook)[0, 1:].to(device, torch.float32))
    codes = [code_NF.cpu().numpy() for _, code_NF in readings.codes(torch.stack(acts, dim=1))]
    return codes[0], np.stack(codes[1:])
