"""dictionary_learning's crosscoders (Minder et al.'s fork), as its hub mixin saves them:
``config.json`` (the constructor's arguments) and ``model.safetensors`` (the state dict).

``CrossCoder`` (trained with an L1 penalty) and ``BatchTopKCrossCoder`` hold::

    encoder.weight [n_layers, d, F]   encoder.bias [F]
    decoder.weight [n_layers, F, d]   decoder.bias [n_layers, d]

with "layers" the models being compared. Their forward, on ``x [batch, n_layers, d]``::

    h     = sum_l x_l W_enc[l] + b_enc
    f     = ReLU(h)                                         CrossCoder
    f     = ReLU(h) * [ReLU(h) * w_i > theta]               BatchTopKCrossCoder, at inference
    x_hat_l = f W_dec[l] + b_dec[l]

where ``w_i`` is the latent's *code normalisation* and ``theta`` the one threshold the training's
moving average left (the ``threshold`` buffer; ``k`` is the batch top-k it trained with). They map
to crosslens's ``crosscoder`` and ``batchtopk_crosscoder``, whose gate is
``ReLU(h_i) * sum_l ||W_dec[l, i]|| > t_i`` with one threshold per latent.

Quirks, and what the loader does with each:

- **Code normalisation.** ``w_i`` is ``sum_l ||W_dec[l, i]||`` (CROSSCODER, the default), the
  norm of the concatenated decoder (SAE), a mix of the two (MIXED, weights
  ``code_normalization_alpha_sae``/``_cc``), or 1 (NONE). crosslens's per-latent threshold takes
  any of them: ``t_i = theta * sum_l ||W_dec[l, i]|| / w_i`` opens exactly where the source's gate
  does (a latent whose decoder is all zeros, which reconstructs nothing, stays shut). DECOUPLED
  BatchTopK gates each layer separately, a code crosslens's shared one cannot hold: refused. Files
  saved before the library recorded it (``code_normalization_id``) are read as the registry says,
  else as CROSSCODER, which is what dictionary_learning itself assumes.
- **Uncalibrated threshold.** ``threshold`` starts at -1 and is set only after
  ``threshold_start_step``; a BatchTopK file still at -1 would keep every positive latent, so it
  is refused.
- **Activation normalisation** (files from mid-2025 on): ``x_l`` becomes
  ``(x_l - mean_l) * g_l`` before encoding and ``x_hat_l / (g_l + 1e-8) + mean_l`` after decoding.
  Both are folded into the weights and biases, and ``g_l + 1e-8`` into ``folded_norm_factors``,
  so the crosscoder reads raw activations and its decoder norms stay those it trained with.
- **encoder_layers.** An encoder reading only some layers gets zero encoder rows for the others.
- **torch.compile prefixes.** State dicts saved from a compiled module (``_orig_mod.``) are read
  without them.
- **Raw activations.** The library reads the models' residual stream as Hugging Face computes it
  (nnsight), so a release's suite loads its models without TransformerLens's weight processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.pretrained.tensors import (
    Converted,
    ConvertOptions,
    FormatError,
    RowSource,
    SafetensorsFile,
    ones,
    positive_int,
    read_json,
    require,
    shape_error,
)

NAME = "dictionary_learning"
LAYOUTS = (("config.json", "model.safetensors"),)
SOURCE = "dictionary_learning (Minder et al.'s fork, github.com/jkminder/dictionary_learning)"
CODE_NORMALIZATIONS = ("CROSSCODER", "SAE", "MIXED", "NONE", "DECOUPLED")
"""The library's ``CodeNormalization`` names, in the order of their ids (1, 2, ...)."""
NORMALIZER = ("activation_mean", "activation_std", "activation_global_scale")
DENORMALIZE_EPS = 1e-8
"""What the library adds to ``g_l`` before dividing a reconstruction by it."""


def recognises(config: dict[str, Any]) -> bool:
    return "activation_dim" in config and "dict_size" in config


class _Source:
    """The checkpoint's tensors under their names without a torch.compile prefix."""

    def __init__(self, weights_path: Path) -> None:
        self.file = SafetensorsFile(weights_path)
        self.names = {key.split("_orig_mod.")[-1]: key for key in self.file.keys()}
        self.path = weights_path

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def source(self, name: str) -> RowSource:
        return self.file.source(self.names[name])

    def tensor(self, name: str) -> torch.Tensor:
        return self.file.tensor(self.names[name])

    def slice(self, name: str) -> Any:
        """The file's lazy slice of ``name``: indexing it reads only the part asked for."""
        return self.file.slice(self.names[name])


def convert(config_path: Path, weights_path: Path, options: ConvertOptions) -> Converted:
    """The crosscoder in ``config_path`` and ``weights_path`` (see the module docstring)."""
    cfg = read_json(config_path)
    D, F = positive_int(cfg, "activation_dim", config_path), positive_int(cfg, "dict_size", config_path)
    src = _Source(weights_path)
    require(src.names, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), weights_path)
    S = int(src.source("decoder.weight").shape[0])
    layers = _encoder_layers(cfg, src, S, D, F, weights_path, config_path)
    quirks = [f"the encoder reads layers {layers} only: zero encoder rows for the others"] if len(layers) != S else []
    if len(src.names) != len(src.file.keys()) or any(k.startswith("_orig_mod.") for k in src.file.keys()):
        quirks.append("saved from a torch.compiled module: read without the _orig_mod. prefixes")
    if options.n_snapshots is not None and options.n_snapshots != S:
        raise FormatError(
            f"{weights_path}: the crosscoder reads {S} models but the release lists {options.n_snapshots}; "
            "fix the release's suite to match the checkpoint"
        )
    code_norm = _code_normalization(cfg, src, options, quirks)
    batchtopk = "threshold" in src or cfg.get("dict_class") == "BatchTopKCrossCoder"
    scale_S, mean_SD = _normalizer(src, S, D, quirks)
    dtype = src.source("decoder.weight").dtype
    enc, dec = src.source("encoder.weight"), src.source("decoder.weight")

    def encoder_rows(i: int, j: int) -> torch.Tensor:
        # a layer is 150 MB at the Gemma releases' shape: copied only where it is scaled, and
        # stacked only where a block holds several (a slice may share the file's memory: never edited)
        blocks = []
        for s in range(i, j):
            block = enc.read(layers.index(s), layers.index(s) + 1) if s in layers else torch.zeros(1, D, F, dtype=dtype)
            blocks.append(block * float(scale_S[s]) if mean_SD is not None else block)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    W_enc = RowSource((S, D, F), dtype, encoder_rows)
    denominator_S = scale_S + DENORMALIZE_EPS if mean_SD is not None else torch.ones(S)
    decoder = src.slice("decoder.weight")
    W_dec = RowSource((F, S, D), dtype, lambda i, j: decoder[:, i:j].permute(1, 0, 2))
    if mean_SD is not None:
        W_dec = W_dec.mapped(lambda rows, i, j: rows / denominator_S[None, :, None].to(rows.dtype))
    tensors = {
        "W_enc": W_enc,
        "W_dec": W_dec,
        "b_enc": RowSource.of(_encoder_bias(src, W_enc, mean_SD)),
        "b_dec": RowSource.of(_decoder_bias(src, denominator_S, mean_SD)),
        "folded_norm_factors": RowSource.of(denominator_S.to(dtype)) if mean_SD is not None else ones(S, dtype),
    }
    # it reads raw activations: the library's normaliser, where there is one, is in the weights now
    metadata: dict[str, Any] = {"code_normalization": code_norm, "hook_name": options.hook_name}
    metadata["activation_norm_factors_folded"] = True
    if mean_SD is not None:
        metadata["activation_norm_factors"] = denominator_S.tolist()
    if batchtopk:
        tensors["threshold"] = RowSource.of(_threshold(cfg, src, dec, code_norm, weights_path).to(dtype))
        metadata["k"] = int(src.tensor("k").item()) if "k" in src else cfg.get("k")
    architecture = "batchtopk_crosscoder" if batchtopk else "crosscoder"
    return Converted(architecture, D, F, S, dtype, tensors, metadata, quirks)


def _encoder_layers(
    cfg: dict[str, Any], src: _Source, S: int, D: int, F: int, weights_path: Path, config_path: Path
) -> list[int]:
    layers = list(cfg.get("encoder_layers") or range(S))
    sizes = f"{config_path}: activation_dim={D}, dict_size={F}, num_layers={cfg.get('num_layers', S)}"
    expected = {
        "encoder.weight": (len(layers), D, F),
        "encoder.bias": (F,),
        "decoder.weight": (S, F, D),
        "decoder.bias": (S, D),
    }
    if cfg.get("num_layers", S) != S or cfg.get("num_decoder_layers") not in (None, S):
        raise shape_error(weights_path, "decoder.weight", (S, F, D), (cfg.get("num_layers"), F, D), sizes)
    for name, shape in expected.items():
        found = src.source(name).shape
        if tuple(found) != shape:
            raise shape_error(weights_path, name, found, shape, sizes)
    if sorted(set(layers)) != layers or not all(0 <= s < S for s in layers):
        raise FormatError(f"{config_path}: encoder_layers {layers} are not distinct layers of 0..{S - 1}")
    return layers


def _code_normalization(cfg: dict[str, Any], src: _Source, options: ConvertOptions, quirks: list[str]) -> str:
    """The code normalisation the files record (their buffer, else config.json), checked against the
    registry's; the registry's, else CROSSCODER, where they record none."""
    recorded = None
    if "code_normalization_id" in src:
        index = int(src.tensor("code_normalization_id").item())
        if not 1 <= index <= len(CODE_NORMALIZATIONS):
            raise FormatError(f"{src.path}: code_normalization_id {index} names no code normalisation the library has")
        recorded = CODE_NORMALIZATIONS[index - 1]
    elif isinstance(cfg.get("code_normalization"), str):
        recorded = cfg["code_normalization"].upper()
    wanted = options.code_normalization.upper() if options.code_normalization else None
    if recorded is not None and wanted is not None and recorded != wanted:
        raise FormatError(
            f"{src.path} records code normalisation {recorded}, the release says {wanted}; fix the release's "
            "code_normalization"
        )
    if recorded is None:
        quirks.append(
            f"its files do not record the code normalisation: {wanted or 'CROSSCODER'} "
            + ("(as the release says)" if wanted else "(as dictionary_learning assumes for such files)")
        )
    name = recorded or wanted or "CROSSCODER"
    if name not in CODE_NORMALIZATIONS:
        raise FormatError(f"code normalisation {name!r} is none of {', '.join(CODE_NORMALIZATIONS)}")
    return name


def _normalizer(src: _Source, S: int, D: int, quirks: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(g [S], mean [S, D])`` of the library's activation normaliser, or ``(ones, None)`` without one."""
    if not all(name in src for name in NORMALIZER):
        return torch.ones(S), None
    mean_SD = src.tensor("activation_mean").double()
    std_SD = src.tensor("activation_std").double()
    if torch.isnan(mean_SD).any() or torch.isnan(std_SD).any():  # the library's "no normaliser"
        return torch.ones(S), None
    scale_S = src.tensor("activation_global_scale").double().reshape(-1)
    if tuple(mean_SD.shape) != (S, D) or scale_S.shape != (S,):
        raise FormatError(
            f"{src.path}: its activation normaliser is shaped for {list(mean_SD.shape)} activations, not [{S}, {D}]"
        )
    quirks.append("activations were normalised ((x - mean) * g per model): folded into the weights and biases")
    return scale_S, mean_SD


def _encoder_bias(src: _Source, W_enc: RowSource, mean_SD: torch.Tensor | None) -> torch.Tensor:
    """``b_enc``, less the normaliser's mean pushed through the (scaled) encoder."""
    b_F = src.tensor("encoder.bias")
    if mean_SD is None:
        return b_F
    shift_F = sum(mean_SD[s].to(W_enc.dtype) @ W_enc.read(s, s + 1)[0] for s in range(mean_SD.shape[0]))
    return b_F - shift_F.to(b_F.dtype)


def _decoder_bias(src: _Source, denominator_S: torch.Tensor, mean_SD: torch.Tensor | None) -> torch.Tensor:
    b_SD = src.tensor("decoder.bias")
    if mean_SD is None:
        return b_SD
    return (b_SD.double() / denominator_S[:, None] + mean_SD).to(b_SD.dtype)


def _threshold(cfg: dict[str, Any], src: _Source, dec: RowSource, code_norm: str, where: Path) -> torch.Tensor:
    """crosslens's per-latent threshold ``theta * sum_l ||W_dec[l, i]|| / w_i`` (see the module docstring)."""
    if code_norm == "DECOUPLED":
        raise FormatError(
            f"{where}: a DECOUPLED BatchTopK crosscoder gates each model's code separately, which crosslens's one "
            "shared code cannot hold; load it with dictionary_learning"
        )
    theta = src.tensor("threshold").double().reshape(-1)
    if theta.numel() != 1:
        raise FormatError(f"{where}: threshold holds {theta.numel()} values, not the one a BatchTopK crosscoder has")
    if float(theta) < 0:
        raise FormatError(
            f"{where}: its threshold is {float(theta)}, the value it starts at before training calibrates it; "
            "the library would keep every positive latent, so use a checkpoint saved after threshold_start_step"
        )
    # in the weights' dtype, as the library computes them (a float64 copy of a layer would be 300 MB)
    norms_SF = torch.stack([dec.read(s, s + 1)[0].norm(dim=-1) for s in range(dec.shape[0])]).double()
    crosscoder_F = norms_SF.sum(dim=0)
    if code_norm == "CROSSCODER":
        return theta.expand_as(crosscoder_F).clone()
    sae_F = norms_SF.pow(2).sum(dim=0).sqrt()
    if code_norm == "SAE":
        w_F = sae_F
    elif code_norm == "MIXED":
        w_F = (
            cfg.get("code_normalization_alpha_sae", 1.0) * sae_F
            + cfg.get("code_normalization_alpha_cc", 0.1) * crosscoder_F
        )
    else:  # NONE
        w_F = torch.ones_like(crosscoder_F)
    return torch.where(w_F > 0, theta * crosscoder_F / w_F.clamp(min=1e-30), theta)
