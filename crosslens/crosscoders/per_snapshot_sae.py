"""One snapshot of a crosscoder: :class:`SnapshotCodec`, and the same view as a plain SAELens SAE.

A crosscoder reads ``[..., n_snapshots, d_in]``: every snapshot's activation of the same
token. Snapshot s's view of it, on the model's own activation scale, is
:class:`SnapshotCodec`, the one implementation of the per-snapshot encode and decode that
:func:`crosslens.causal.splicing` and the attribution stage use:

    h   = (c_s a - b_dec[s]·[apply_b_dec_to_input]) W_enc[s] + b_enc     a: raw activation
    f   = the crosscoder's snapshot-s code of h (below)
    a'  = (f W_dec[:, s] + b_dec[s]) / c_s

with ``c_s`` the activation-normalisation factor the crosscoder was trained with (1 once
folded into the weights), so the view reads and writes activations on the model's own
scale. In this *per-snapshot mode* the other snapshots' inputs count as absent: they add
nothing to ``h``. (``SnapshotCodec.encode`` also gives the exact code, from every
snapshot's activation of the token.)

A ``HookedSAETransformer`` hook hands an SAE ``[batch, pos, d_model]`` from one model, so the
crosscoder itself cannot sit there. ``snapshot_sae(crosscoder, s)`` builds the SAE that
does what the codec's per-snapshot mode does, from the codec's raw-scale weights; only the
gate is translated, by each architecture's ``snapshot_gate`` (``n_is = ||W_dec[i, s]||`` in the
normalised training space, ``w_i = sum_s n_is``):

- ``crosscoder`` (ReLU) -> ``StandardSAE``: ``f = ReLU(h)``. Codes equal.
- ``jumprelu_crosscoder`` -> ``JumpReLUSAE``: the crosscoder opens feature i at snapshot s
  when ``h_i n_is > t_i``, i.e. when ``h_i > t_i / n_is``; the SAE's threshold is
  ``t_i / n_is`` (infinite where ``n_is = 0``: such a feature never reaches snapshot s).
  Codes equal.
- ``batchtopk_crosscoder`` (fixed inference threshold t; the training class's running
  threshold, for the codec as for the SAE) -> ``JumpReLUSAE`` with threshold ``t_i / w_i``, as SAELens itself saves BatchTopK SAEs for inference (6.x has no inference
  BatchTopK class). Codes equal.
- ``topk_crosscoder`` -> ``TopKSAE``: the crosscoder keeps the k largest
  ``ReLU(h_i) w_i``. TopK's code is always the quantity it ranks, so the SAE's code is that
  score, ``ReLU(h_i) w_i``: its encoder and bias are scaled by ``w_i`` and its decoder rows
  divided by it. Same active features, same reconstruction; the code is the crosscoder's
  times ``w_i`` (SAELens's convention for TopK SAEs trained with
  ``rescale_acts_by_decoder_norm``, where the code is ``ReLU(h) ||W_dec||``).

Reconstructions equal the crosscoder's per-snapshot reconstruction in every case.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.sae import SAE, SAEMetadata

from crosslens.core.hooks import crosscoder_hook, recorded_hook
from crosslens.core.model_specs import snapshot_model
from crosslens.crosscoders.folding import resolve_norm_factors
from crosslens.crosscoders.protocol import Crosscoder

# metadata keys that describe the crosscoder as a whole, not one snapshot's SAE
_CROSSCODER_ONLY_METADATA = ("activation_norm_factors", "activation_norm_factors_folded", "suite")


class SnapshotCodec:
    """Snapshot s's view of a crosscoder, on the model's own activation scale."""

    def __init__(
        self,
        crosscoder: Crosscoder,
        snapshot: int,
        norm_factors: Sequence[float] | torch.Tensor | None = None,
    ):
        n_snapshots = crosscoder.cfg.n_snapshots
        if not 0 <= snapshot < n_snapshots:
            raise ValueError(f"snapshot must be in [0, {n_snapshots}) for this crosscoder, got {snapshot}")
        self.crosscoder = crosscoder
        self.snapshot = snapshot
        self.factors_S = resolve_norm_factors(crosscoder, norm_factors).to(crosscoder.W_dec.device)
        self.n_snapshots = n_snapshots
        self.d_in = crosscoder.cfg.d_in
        self.d_sae = crosscoder.cfg.d_sae

    @property
    def dtype(self) -> torch.dtype:
        return self.crosscoder.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.crosscoder.W_dec.device

    @property
    def factor(self) -> torch.Tensor:
        """``c_s``, in the crosscoder's dtype."""
        return self.factors_S[self.snapshot].to(self.dtype)

    def _snapshot_code(self, x_NSD: torch.Tensor) -> torch.Tensor:
        if hasattr(self.crosscoder, "encode_per_snapshot"):
            return self.crosscoder.encode_per_snapshot(x_NSD)[..., self.snapshot, :]
        # a BatchTopK training crosscoder's encode keeps k codes per token of the batch it is
        # given; its inference code (one running threshold) is the one that reads a token alone
        if hasattr(self.crosscoder, "inference_encode"):
            return self.crosscoder.inference_encode(x_NSD)
        return self.crosscoder.encode(x_NSD)

    def encode(self, acts: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Exact snapshot-s code from every snapshot's raw activation of the same tokens."""
        if tuple(acts.shape[-2:]) != (self.n_snapshots, self.d_in):
            raise ValueError(
                f"exact encoding needs all snapshots' activations [..., {self.n_snapshots}, {self.d_in}], "
                f"got {tuple(acts.shape)}; collect them with collect_activations"
            )
        lead = acts.shape[:-2]
        x_NSD = acts.reshape(-1, self.n_snapshots, self.d_in).to(self.device, self.dtype)
        x_NSD = x_NSD * self.factors_S[:, None].to(self.dtype)
        return self._snapshot_code(x_NSD).reshape(*lead, self.d_sae)

    def encode_single(self, acts: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Per-snapshot code: snapshot s's activation alone, the other snapshots' inputs absent."""
        lead = acts.shape[:-1]
        x_ND = acts.reshape(-1, self.d_in).to(self.device, self.dtype) * self.factor
        # An absent snapshot contributes nothing to the pre-activation: its input is zero,
        # or b_dec when the crosscoder subtracts b_dec from its input.
        if self.crosscoder.cfg.apply_b_dec_to_input:
            x_NSD = self.crosscoder.b_dec.detach().expand(x_ND.shape[0], -1, -1).clone()
        else:
            x_NSD = x_ND.new_zeros(x_ND.shape[0], self.n_snapshots, self.d_in)
        x_NSD[:, self.snapshot] = x_ND
        return self._snapshot_code(x_NSD).reshape(*lead, self.d_sae)

    def decode(self, codes: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        """Snapshot-s reconstruction on the raw scale: ``(f W_dec[:, s] + b_dec[s]) / c_s``."""
        W_dec_FD = self.crosscoder.W_dec[:, self.snapshot, :]
        b_dec_D = self.crosscoder.b_dec[self.snapshot]
        recon = codes.to(self.device, self.dtype) @ W_dec_FD + b_dec_D
        return recon / self.factor

    def decode_grad(self, grad_acts: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Pull a gradient w.r.t. the reconstruction back to the code: ``g W_dec[:, s]^T / c_s``."""
        W_dec_FD = self.crosscoder.W_dec[:, self.snapshot, :].detach()
        grad_codes = grad_acts.to(self.device, self.dtype) @ W_dec_FD.T
        return grad_codes / self.factor

    def bias(self) -> Float[torch.Tensor, " d_in"]:
        """The reconstruction of the all-zero code, ``b_dec[s] / c_s``."""
        return (self.crosscoder.b_dec[self.snapshot] / self.factors_S[self.snapshot]).detach()

    @torch.no_grad()
    def raw_weights(self) -> dict[str, torch.Tensor]:
        """Snapshot s's encoder and decoder folded onto the raw scale, as a plain SAE holds them:
        ``W_enc[s] c_s``, ``b_enc``, ``W_dec[:, s] / c_s`` and ``b_dec[s] / c_s`` (subtracting that
        ``b_dec`` from ``a`` is subtracting ``b_dec[s]`` from ``c_s a``)."""
        s, c_s = self.snapshot, self.factor
        return {
            "W_enc": self.crosscoder.W_enc[s] * c_s,
            "b_enc": self.crosscoder.b_enc.clone(),
            "W_dec": self.crosscoder.W_dec[:, s, :] / c_s,
            "b_dec": self.crosscoder.b_dec[s] / c_s,
        }


def snapshot_sae(
    crosscoder: Crosscoder,
    snapshot: int,
    *,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    hook_name: str | None = None,
) -> SAE[Any]:
    """Snapshot ``snapshot`` of ``crosscoder`` as a plain SAELens SAE on the raw activation scale.

    Args:
        crosscoder: any crosslens crosscoder (inference or training class).
        snapshot: index into the crosscoder's snapshots, ``-n_snapshots <= snapshot <
            n_snapshots`` (negative indices count from the end: -1 is the last).
        norm_factors: per-snapshot normalisation factors, as for :class:`SnapshotCodec`;
            default: the metadata's, unless folded.
        hook_name: the hook the SAE attaches to; default: the crosscoder's ``hook_name``
            (another than the one the crosscoder records is refused).

    Returns:
        a ``StandardSAE``, ``JumpReLUSAE`` or ``TopKSAE`` (see the module docstring) whose
        ``cfg.metadata`` names the model, hook and snapshot (revision, step).
    """
    cfg = getattr(crosscoder, "cfg", None)
    if not isinstance(getattr(cfg, "n_snapshots", None), int):
        raise TypeError(
            f"snapshot_sae takes a crosslens crosscoder, got {type(crosscoder).__name__}; "
            "a plain SAE already attaches to a HookedSAETransformer as it is."
        )
    S = cfg.n_snapshots
    if not isinstance(snapshot, int) or not -S <= snapshot < S:
        raise ValueError(
            f"snapshot must be an int in [-{S}, {S}) for this crosscoder (-1: the last), got {snapshot!r}."
        )
    s = snapshot % S
    codec = SnapshotCodec(crosscoder, s, norm_factors)
    common = dict(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        dtype=cfg.dtype,
        device=str(codec.device),
        apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input),
        normalize_activations="none",
    )
    with torch.no_grad():
        sae, state = crosscoder.snapshot_gate(s, codec.raw_weights(), common)
        sae.load_state_dict({k: v.to(codec.dtype).contiguous().clone() for k, v in state.items()})
    sae.cfg.metadata = _snapshot_metadata(crosscoder, s, hook_name)
    return sae


def non_negative_threshold(t_F: torch.Tensor, arch: str) -> torch.Tensor:
    # Training projects thresholds to >= 0 before each step, so the last Adam step can leave
    # a few slightly negative. There the crosscoder also passes small negative pre-activations,
    # which a JumpReLUSAE (ReLU then gate) cannot; say so rather than differ silently.
    negative = int((t_F < 0).sum())
    if negative:
        warnings.warn(
            f"{negative} features of this {arch} have a negative threshold; the snapshot SAE "
            "uses 0 there, so it drops the small negative activations the crosscoder passes "
            "for them (set crosscoder.threshold.data.clamp_(min=0) to make both agree).",
            stacklevel=4,
        )
    return t_F.clamp(min=0)


def divide_or_inf(t_F: torch.Tensor, norms_F: torch.Tensor) -> torch.Tensor:
    """``t / n``, infinite where ``n == 0`` (the gate ``h n > t >= 0`` never opens there)."""
    return torch.where(norms_F > 0, t_F / norms_F.clamp(min=1e-30), torch.inf)


def _snapshot_metadata(crosscoder: Crosscoder, s: int, hook_name: str | None) -> SAEMetadata:
    meta = {k: v for k, v in crosscoder.cfg.metadata.to_dict().items() if k not in _CROSSCODER_ONLY_METADATA}
    suite = crosscoder.cfg.metadata.get("suite") or {}
    snapshots = suite.get("snapshots") or []
    entry = dict(snapshots[s]) if s < len(snapshots) else {}
    meta.update(
        hook_name=crosscoder_hook(crosscoder, hook_name, parameter="hook_name")
        if hook_name
        else recorded_hook(crosscoder),
        model_name=snapshot_model(suite, s) or crosscoder.cfg.metadata.get("model_name"),
        crosscoder_architecture=crosscoder.cfg.architecture(),
        crosscoder_n_snapshots=crosscoder.cfg.n_snapshots,
        snapshot_index=s,
        snapshot=entry or None,
        revision=entry.get("revision"),
        step=entry.get("step"),
    )
    return SAEMetadata(**meta)


def as_hooked_sae_transformer(model: Any) -> Any:
    """A ``HookedSAETransformer`` copy of a ``HookedTransformer`` (e.g. from
    ``CheckpointSuite.load``), so snapshot SAEs can be attached with ``add_sae`` or
    ``run_with_cache_with_saes``. Same config, tokenizer and weights; the snapshot
    provenance (``crosslens_snapshot``) is carried over."""
    from sae_lens import HookedSAETransformer

    copy = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer, move_to_device=False)
    copy.load_state_dict(model.state_dict(), strict=True)
    device = next(model.parameters()).device
    if device != next(copy.parameters()).device:
        copy.to(device)
    if hasattr(model, "crosslens_snapshot"):
        copy.crosslens_snapshot = model.crosslens_snapshot
    return copy.eval()
