"""One snapshot of a crosscoder as a plain SAELens SAE, for HookedSAETransformer and SAE tools.

A crosscoder reads ``[..., n_snapshots, d_in]``: every snapshot's activation of the same
token. A ``HookedSAETransformer`` hook hands an SAE ``[batch, pos, d_model]`` from one
model, so the crosscoder itself cannot sit there. ``snapshot_sae(crosscoder, s)`` builds the
SAE that does at snapshot s what the crosscoder's *per-snapshot mode* does (the mode
:func:`crosslens.causal.splice` uses when it only has the model at hand):

    h   = (c_s a - b_dec[s]·[apply_b_dec_to_input]) W_enc[s] + b_enc     a: raw activation
    f   = the crosscoder's snapshot-s code of h (below)
    a'  = (f W_dec[:, s] + b_dec[s]) / c_s

with ``c_s`` the activation-normalisation factor the crosscoder was trained with (1 once
folded into the weights), so the SAE reads and writes activations on the model's own
scale. The other snapshots' inputs count as absent: they add nothing to ``h``.

Architecture by architecture (``n_is = ||W_dec[i, s]||`` in the normalised training space,
``w_i = sum_s n_is``):

- ``crosscoder`` (ReLU) -> ``StandardSAE``: ``f = ReLU(h)``. Codes equal.
- ``jumprelu_crosscoder`` -> ``JumpReLUSAE``: the crosscoder opens feature i at snapshot s
  when ``h_i n_is > t_i``, i.e. when ``h_i > t_i / n_is``; the SAE's threshold is
  ``t_i / n_is`` (infinite where ``n_is = 0``: such a feature never reaches snapshot s).
  Codes equal.
- ``batchtopk_crosscoder`` (fixed inference threshold t) -> ``JumpReLUSAE`` with threshold
  ``t_i / w_i``, as SAELens itself saves BatchTopK SAEs for inference (6.x has no inference
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

import functools
import warnings
from typing import Any

import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAE, SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from crosslens.core.hooks import recorded_hook

# metadata keys that describe the crosscoder as a whole, not one snapshot's SAE
_CROSSCODER_ONLY_METADATA = ("activation_norm_factors", "activation_norm_factors_folded", "suite")


def snapshot_sae(
    crosscoder: Any,
    snapshot: int,
    *,
    norm_factors: Any = None,
    hook_name: str | None = None,
) -> SAE[Any]:
    """Snapshot ``snapshot`` of ``crosscoder`` as a plain SAELens SAE on the raw activation scale.

    Args:
        crosscoder: any crosslens crosscoder (inference or training class).
        snapshot: index into the crosscoder's snapshots, ``0 <= snapshot < n_snapshots``
            (negative indices count from the end).
        norm_factors: per-snapshot normalisation factors, as for
            :class:`crosslens.causal.SnapshotCodec`; default: the metadata's, unless folded.
        hook_name: the hook the SAE attaches to; default: the crosscoder's ``hook_name``.

    Returns:
        a ``StandardSAE``, ``JumpReLUSAE`` or ``TopKSAE`` (see the module docstring) whose
        ``cfg.metadata`` names the model, hook and snapshot (revision, step).
    """
    from crosslens.crosscoders.folding import resolve_norm_factors
    from crosslens.crosscoders.base import CrosscoderMixin

    if not isinstance(crosscoder, CrosscoderMixin):
        raise TypeError(
            f"snapshot_sae takes a crosslens crosscoder, got {type(crosscoder).__name__}; "
            "a plain SAE already attaches to a HookedSAETransformer as it is."
        )
    cfg = crosscoder.cfg
    S = cfg.n_snapshots
    if not isinstance(snapshot, int) or not -S <= snapshot < S:
        raise ValueError(f"snapshot must be an int in [0, {S}) for this crosscoder, got {snapshot!r}.")
    s = snapshot % S
    arch = cfg.architecture()

    with torch.no_grad():
        c_s = resolve_norm_factors(crosscoder, norm_factors)[s].to(crosscoder.W_dec.device)
        dtype = crosscoder.W_dec.dtype
        c_s = c_s.to(dtype)
        W_enc_DF = crosscoder.W_enc[s] * c_s
        b_enc_F = crosscoder.b_enc.clone()
        W_dec_FD = crosscoder.W_dec[:, s, :] / c_s
        b_dec_D = crosscoder.b_dec[s] / c_s
        norms_FS = crosscoder.snapshot_norms().detach()
        common = dict(
            d_in=cfg.d_in,
            d_sae=cfg.d_sae,
            dtype=cfg.dtype,
            device=str(crosscoder.W_dec.device),
            apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input),
            normalize_activations="none",
        )
        threshold_F: torch.Tensor | None = None
        if arch == "crosscoder":
            sae: SAE[Any] = StandardSAE(StandardSAEConfig(**common))
        elif arch == "jumprelu_crosscoder":
            t_F = _non_negative(crosscoder.threshold.detach().to(dtype), arch)
            threshold_F = _divide_or_inf(t_F, norms_FS[:, s])
            sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        elif arch == "batchtopk_crosscoder":
            if "threshold" in dict(crosscoder.named_parameters()):
                t_F = crosscoder.threshold.detach().to(dtype)
            else:  # the training class keeps one running threshold
                t_F = crosscoder.topk_threshold.detach().to(dtype).expand(cfg.d_sae)
            threshold_F = _divide_or_inf(_non_negative(t_F, arch), norms_FS.sum(dim=1))
            sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        elif arch == "topk_crosscoder":
            w_F = norms_FS.sum(dim=1)
            W_enc_DF = W_enc_DF * w_F
            b_enc_F = b_enc_F * w_F
            # a feature with no decoder anywhere scores 0 and reconstructs nothing
            W_dec_FD = torch.where(w_F[:, None] > 0, W_dec_FD / w_F.clamp(min=1e-30)[:, None], 0.0)
            sae = TopKSAE(TopKSAEConfig(k=int(cfg.k), rescale_acts_by_decoder_norm=False, **common))
        else:
            raise ValueError(
                f"snapshot_sae does not know architecture {arch!r}; it handles crosscoder, "
                "jumprelu_crosscoder, topk_crosscoder and batchtopk_crosscoder."
            )
        state = {"W_enc": W_enc_DF, "b_enc": b_enc_F, "W_dec": W_dec_FD, "b_dec": b_dec_D}
        if threshold_F is not None:
            state["threshold"] = threshold_F
        sae.load_state_dict({k: v.to(dtype).contiguous().clone() for k, v in state.items()})

    sae.cfg.metadata = _snapshot_metadata(crosscoder, s, hook_name)
    return sae


def _non_negative(t_F: torch.Tensor, arch: str) -> torch.Tensor:
    # Training projects thresholds to >= 0 before each step, so the last Adam step can leave
    # a few slightly negative. There the crosscoder also passes small negative pre-activations,
    # which a JumpReLUSAE (ReLU then gate) cannot; say so rather than differ silently.
    negative = int((t_F < 0).sum())
    if negative:
        warnings.warn(
            f"{negative} features of this {arch} have a negative threshold; the snapshot SAE "
            "uses 0 there, so it drops the small negative activations the crosscoder passes "
            "for them (set crosscoder.threshold.data.clamp_(min=0) to make both agree).",
            stacklevel=3,
        )
    return t_F.clamp(min=0)


def _divide_or_inf(t_F: torch.Tensor, norms_F: torch.Tensor) -> torch.Tensor:
    """``t / n``, infinite where ``n == 0`` (the gate ``h n > t >= 0`` never opens there)."""
    return torch.where(norms_F > 0, t_F / norms_F.clamp(min=1e-30), torch.inf)


def _snapshot_metadata(crosscoder: Any, s: int, hook_name: str | None) -> SAEMetadata:
    meta = {k: v for k, v in crosscoder.cfg.metadata.to_dict().items() if k not in _CROSSCODER_ONLY_METADATA}
    suite = crosscoder.cfg.metadata.get("suite") or {}
    snapshots = suite.get("snapshots") or []
    entry = dict(snapshots[s]) if s < len(snapshots) else {}
    meta.update(
        hook_name=hook_name or recorded_hook(crosscoder),
        model_name=suite.get("model_id") or crosscoder.cfg.metadata.get("model_name"),
        crosscoder_architecture=crosscoder.cfg.architecture(),
        crosscoder_n_snapshots=crosscoder.cfg.n_snapshots,
        snapshot_index=s,
        snapshot=entry or None,
        revision=entry.get("revision"),
        step=entry.get("step"),
    )
    return SAEMetadata(**meta)


# ------------------------------------------------------------------ HookedSAETransformer guard
def refuse_crosscoder_in_hooked_sae_transformer(sae: Any) -> None:
    """Raise if ``sae`` is a crosscoder: at a hook it would read token positions as snapshots."""
    from crosslens.crosscoders.base import CrosscoderMixin

    if isinstance(sae, CrosscoderMixin):
        n = sae.cfg.n_snapshots
        raise ValueError(
            f"cannot attach a {sae.cfg.architecture()} to a HookedSAETransformer: a hook gives "
            f"[batch, pos, d_model] from one model, and the crosscoder would read the positions "
            f"as its {n} snapshots. Attach one snapshot instead: "
            f"model.add_sae(crosscoder.snapshot_sae(s)) with s in [0, {n}) the snapshot this "
            "model is (crosscoder.cfg.metadata.suite['snapshots'][s]['revision'])."
        )


def install_hooked_sae_transformer_guard() -> None:
    """Make ``HookedSAETransformer.add_sae`` (hence ``run_with_saes``,
    ``run_with_cache_with_saes``, ``saes()``) refuse crosscoders. Idempotent."""
    from sae_lens.analysis.hooked_sae_transformer import HookedSAETransformer

    original = HookedSAETransformer.add_sae
    if getattr(original, "_crosslens_guard", False):
        return

    @functools.wraps(original)
    def add_sae(self: Any, sae: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_crosscoder_in_hooked_sae_transformer(sae)
        return original(self, sae, *args, **kwargs)

    add_sae._crosslens_guard = True  # type: ignore[attr-defined]
    HookedSAETransformer.add_sae = add_sae  # type: ignore[method-assign]


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
