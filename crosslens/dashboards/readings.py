"""The readings of every feature's activation on a batch of tokens: the crosscoder's own code,
then each snapshot's per-snapshot code.

Reading ``j`` is 0 for the crosscoder's code (database snapshot -1) and ``s + 1`` for snapshot
s's per-snapshot code, :meth:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec.encode_single`'s:
snapshot s's raw activation alone, the other snapshots' inputs absent. Per snapshot that is one
``[tokens, d_in] @ [d_in, d_sae]`` matmul through :func:`~crosslens.crosscoders.per_snapshot_sae`'s
SAE, whose code equals the codec's (built once, on the crosscoder's device); for
``topk_crosscoder`` that SAE's code is the crosscoder's times ``w_i = sum_s ||W_dec[i, s]||``, so
it is divided back. For SAELens's ``JumpReLUSAE`` and ``StandardSAE`` (what the ReLU, JumpReLU
and BatchTopK crosscoders give) the code is computed here from the SAE's own parameters: one
``addmm`` and one masked fill over ``[tokens, d_sae]``, the same values their ``encode`` gives in
five passes.

The crosscoder's own code reads every snapshot's activation scaled by its normalisation factor
(ones once folded), as the crosscoder was trained: its ``encode``, or for a JumpReLU crosscoder
the same gate tested once per feature instead of once per snapshot (checked equal to ``encode``
on the first tokens, and dropped if it is not).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float

from crosslens.crosscoders.folding import resolve_norm_factors, training_space_decoder
from crosslens.crosscoders.per_snapshot_sae import snapshot_sae

SCALED_CODE_ARCHITECTURES = ("topk_crosscoder",)
"""Architectures whose snapshot SAE's code is the crosscoder's times ``w_i`` (see snapshot_sae)."""


class Readings:
    """Every reading's code ``[tokens, d_sae]`` of a batch of raw activations, one at a time."""

    def __init__(self, crosscoder: Any) -> None:
        self.crosscoder = crosscoder
        self.n_snapshots = int(crosscoder.cfg.n_snapshots)
        self.d_sae = int(crosscoder.cfg.d_sae)
        device = crosscoder.W_dec.device
        self.factors_S = resolve_norm_factors(crosscoder).to(device, crosscoder.W_dec.dtype)
        self.saes = [snapshot_sae(crosscoder, s).eval() for s in range(self.n_snapshots)]
        self.gates = [_gate(sae) for sae in self.saes]
        self._jump: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._checked = False
        if crosscoder.cfg.architecture() == "jumprelu_crosscoder":
            with torch.no_grad():
                norms_FS = crosscoder.snapshot_norms().detach()
                t_F = crosscoder.threshold.detach().to(norms_FS.dtype)
            self._jump = (norms_FS.amax(dim=1), norms_FS.amin(dim=1), t_F)
        self.unscale_F: torch.Tensor | None = None
        if crosscoder.cfg.architecture() in SCALED_CODE_ARCHITECTURES:
            w_F = training_space_decoder(crosscoder).norm(dim=-1).sum(dim=1)
            self.unscale_F = torch.where(w_F > 0, 1.0 / w_F.clamp(min=1e-30), 0.0)

    @property
    def n_readings(self) -> int:
        return self.n_snapshots + 1

    @torch.inference_mode()
    def codes(self, acts_NSD: Float[torch.Tensor, "n n_snapshots d_in"]) -> Iterator[tuple[int, torch.Tensor]]:
        """``(j, code_NF)`` for j = 0 (the crosscoder's code), then 1..S (snapshot j - 1's)."""
        dtype = self.crosscoder.W_dec.dtype
        x_NSD = acts_NSD.to(dtype) * self.factors_S[:, None]
        yield 0, self._crosscoder_code(x_NSD).float()
        for s in range(self.n_snapshots):
            yield s + 1, self.snapshot_code(s, acts_NSD[:, s])

    @torch.inference_mode()
    def snapshot_code(self, s: int, acts_ND: Float[torch.Tensor, "n d_in"]) -> Float[torch.Tensor, "n d_sae"]:
        """Snapshot ``s``'s per-snapshot code of its raw activations ``acts_ND`` (on the crosscoder's scale)."""
        x_ND = acts_ND.to(self.crosscoder.W_dec.dtype)
        gate = self.gates[s]
        if gate is None:
            code_NF = self.saes[s].encode(x_ND).float()
        else:
            W_enc_DF, b_enc_F, b_dec_D, threshold_F = gate
            code_NF = torch.addmm(b_enc_F, x_ND - b_dec_D if b_dec_D is not None else x_ND, W_enc_DF)
            code_NF.masked_fill_(code_NF <= threshold_F, 0.0)
        return code_NF if self.unscale_F is None else code_NF * self.unscale_F

    def _crosscoder_code(self, x_NSD: torch.Tensor) -> torch.Tensor:
        """The crosscoder's code of normalised activations. A JumpReLU crosscoder opens feature i
        when ``h_i n_is > t_i`` at some snapshot s, i.e. when ``max_s h_i n_is`` (``h_i`` times the
        largest ``n_is`` for ``h_i >= 0``, the smallest below) does: one ``[N, F]`` test in place of its
        ``[N, S, F]`` one. That shortcut is checked equal to ``encode`` on the first tokens it sees
        and dropped if it is not."""
        if self._jump is not None and not self._checked:
            self._checked = True
            probe_NSD = x_NSD[:256]
            if not torch.equal(self.crosscoder.encode(probe_NSD), self._jump_code(probe_NSD)):
                self._jump = None
        return self.crosscoder.encode(x_NSD) if self._jump is None else self._jump_code(x_NSD)

    def _jump_code(self, x_NSD: torch.Tensor) -> torch.Tensor:
        h_NF = self.crosscoder.hidden_pre(x_NSD)
        n_max_F, n_min_F, t_F = self._jump
        reach_NF = torch.where(h_NF >= 0, h_NF * n_max_F, h_NF * n_min_F)
        return h_NF.masked_fill_(reach_NF <= t_F, 0.0)


def _gate(sae: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
    """``(W_enc, b_enc, b_dec or None, threshold)`` of an SAE whose code is ``h`` where
    ``h = (x - b_dec) W_enc + b_enc`` exceeds the threshold, else 0: a ``JumpReLUSAE`` (ReLU, then
    its threshold: ``max(threshold, 0)``) or a ``StandardSAE`` with a ReLU (threshold 0). None for any
    other SAE, whose own ``encode`` is used."""
    name = type(sae).__name__
    if name not in ("JumpReLUSAE", "StandardSAE") or not isinstance(sae.activation_fn, torch.nn.ReLU):
        return None
    if getattr(sae.cfg, "normalize_activations", "none") != "none" or getattr(sae, "d_head", None):
        return None
    W_enc_DF, b_enc_F = sae.W_enc.detach(), sae.b_enc.detach()
    b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
    threshold = sae.threshold.detach().clamp(min=0) if name == "JumpReLUSAE" else torch.zeros_like(b_enc_F)
    return W_enc_DF, b_enc_F, b_dec_D, threshold
