"""Llamascopium's crosscoders (OpenMOSS's library, which Ge et al. trained with):
``config.json`` (``sae_type: crosscoder``) and ``sae_weights.safetensors`` (or ``.pt``).

A crosscoder has one "head" per hook point it reads (``hook_points``: one per snapshot in Ge et
al.'s runs, named like ``step1000``) and holds::

    W_E [n_heads, d_model, d_sae]   b_E [n_heads, d_sae]
    W_D [n_heads, d_sae, d_model]   b_D [n_heads, d_model]
    activation_function.log_jumprelu_threshold [d_sae]      (act_fn: jumprelu)
    dataset_average_activation_norm.<hook point>            (one number per head)

Its forward, on ``x [batch, n_heads, d_model]`` (``d_sae = d_model * expansion_factor``)::

    h        = sum_s (x_s W_E[s] + b_E[s])
    f_{s,i}  = act(h_i * ||W_D[s, i]||) / ||W_D[s, i]||     (the decoder norm in the gate)
    x_hat_s  = f_s W_D[s] + b_D[s]

with ``act(z) = z [z > exp(log_jumprelu_threshold)]`` (JumpReLU) or ``z [z > 0]`` (ReLU). For
JumpReLU that is ``h_i [h_i ||W_D[s, i]|| > t_i]``, crosslens's ``jumprelu_crosscoder`` (one
threshold per latent, gated at each snapshot); for ReLU it is ``ReLU(h)`` wherever the decoder
row is not zero, crosslens's ``crosscoder``.

Quirks, and what the loader does with each:

- **One encoder bias per head.** The heads' ``b_E`` are summed into crosslens's one ``b_enc``.
- **The threshold is stored as its logarithm**: exponentiated.
- **Activation normalisation.** ``norm_activation: dataset-wise`` scales head s's input by
  ``c_s = sqrt(d_model) / dataset_average_activation_norm[s]`` and divides its reconstruction by
  it: folded into the weights (``W_E[s] * c_s``, ``W_D[s] / c_s``, ``b_D[s] / c_s``) and recorded in
  ``folded_norm_factors``, so the crosscoder reads raw activations and its gates see the decoder
  norms they trained with. ``inference`` files (the library already folded what it could) are
  read as they are. ``token-wise`` and ``batch-wise`` scale each token or batch by its own norm,
  which no fixed weights can do: refused.
- **Zero decoder rows.** The source divides by ``||W_D[s, i]||``, which gives NaN where a row is
  zero; crosslens gives 0 there (such a latent writes nothing at that snapshot).
- **Top-k activations** (``topk``, ``batchtopk``) select per head and batch and save no inference
  threshold: refused.
"""

from __future__ import annotations

import math
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
    load_pt,
    ones,
    positive_int,
    read_json,
    require,
    shape_error,
)

NAME = "llamascopium"
LAYOUTS = (("config.json", "sae_weights.safetensors"), ("config.json", "sae_weights.pt"))
SOURCE = "Llamascopium (OpenMOSS, github.com/OpenMOSS/Language-Model-SAEs)"
THRESHOLD = "activation_function.log_jumprelu_threshold"
NORM_PREFIX = "dataset_average_activation_norm."


def recognises(config: dict[str, Any]) -> bool:
    return config.get("sae_type") == "crosscoder" or ("hook_points" in config and "expansion_factor" in config)


class _Weights:
    """The checkpoint's tensors, from safetensors (read a slice at a time) or a ``.pt`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".pt":
            state = load_pt(path, key="sae")  # the library saves {"sae": state_dict, "version": ...}
            self.sources = {name: RowSource.of(tensor) for name, tensor in state.items()}
            self.indexable = dict(state)
        else:
            file = SafetensorsFile(path)
            self.sources = {name: file.source(name) for name in file.keys()}
            self.indexable = {name: file.slice(name) for name in file.keys()}


def convert(config_path: Path, weights_path: Path, options: ConvertOptions) -> Converted:
    """The crosscoder in ``config_path`` and ``weights_path`` (see the module docstring)."""
    cfg = read_json(config_path)
    if cfg.get("sae_type", "crosscoder") != "crosscoder":
        raise FormatError(f"{config_path} holds a Llamascopium {cfg.get('sae_type')!r}, not a crosscoder")
    D = positive_int(cfg, "d_model", config_path)
    F = int(D * float(cfg.get("expansion_factor", 0)))
    heads = cfg.get("hook_points")
    if not isinstance(heads, list) or not heads or F < 1:
        raise FormatError(f"{config_path} needs hook_points (one per head) and a positive expansion_factor")
    S = len(heads)
    act_fn = str(cfg.get("act_fn", "relu")).lower()
    if act_fn not in ("relu", "jumprelu"):
        raise FormatError(
            f"{config_path}: act_fn {act_fn!r} selects the top latents per head and batch and saves no inference "
            "threshold; crosslens reads Llamascopium's relu and jumprelu crosscoders"
        )
    checkpoint = _Weights(weights_path)
    weights = checkpoint.sources
    require(weights, ("W_E", "b_E", "W_D", "b_D") + ((THRESHOLD,) if act_fn == "jumprelu" else ()), weights_path)
    sizes = f"{config_path}: {S} hook_points, d_model={D}, d_sae={F}"
    for name, shape in {"W_E": (S, D, F), "b_E": (S, F), "W_D": (S, F, D), "b_D": (S, D)}.items():
        if weights[name].shape != shape:
            raise shape_error(weights_path, name, weights[name].shape, shape, sizes)
    if options.n_snapshots is not None and options.n_snapshots != S:
        raise FormatError(
            f"{config_path}: the crosscoder has {S} heads but the suite has {options.n_snapshots} snapshots; "
            "pass the suite of its hook_points"
        )
    quirks = ["one encoder bias per head (b_E): summed into b_enc"]
    factors_S = _norm_factors(cfg, weights, heads, D, config_path, quirks)
    dtype = weights["W_E"].dtype
    W_E = weights["W_E"]
    tensors = {
        "W_enc": W_E.mapped(lambda rows, i, j: rows * factors_S[i:j, None, None].to(rows.dtype)),
        "W_dec": RowSource(
            (F, S, D), dtype, lambda i, j: _decoder_rows(checkpoint.indexable["W_D"], S, i, j, factors_S)
        ),
        "b_enc": RowSource.of(weights["b_E"].whole().sum(dim=0)),
        "b_dec": RowSource.of(weights["b_D"].whole() / factors_S[:, None].to(dtype)),
        "folded_norm_factors": RowSource.of(factors_S.to(dtype)) if factors_S is not None else ones(S, dtype),
    }
    metadata: dict[str, Any] = {"hook_name": options.hook_name, "llamascopium_hook_points": list(heads)}
    metadata["activation_norm_factors_folded"] = True  # it reads raw activations (any normalisation is in the weights)
    architecture = "crosscoder"
    if act_fn == "jumprelu":
        architecture = "jumprelu_crosscoder"
        tensors["threshold"] = RowSource.of(weights[THRESHOLD].whole().float().exp())
        quirks.append("the JumpReLU threshold is stored as its logarithm: exponentiated")
    if bool(factors_S.ne(1).any()):
        metadata["activation_norm_factors"] = factors_S.tolist()
    return Converted(architecture, D, F, S, dtype, tensors, metadata, quirks)


def _decoder_rows(W_D: Any, S: int, i: int, j: int, factors_S: torch.Tensor) -> torch.Tensor:
    """Rows ``[i, j)`` of crosslens's ``W_dec [F, S, D]``: ``W_D [S, F, D]`` (a tensor or a lazy
    safetensors slice, read one head's rows at a time), divided by ``c_s``."""
    rows = torch.stack([W_D[s, i:j] for s in range(S)], dim=1)
    return rows / factors_S[None, :, None].to(rows.dtype)


def _norm_factors(
    cfg: dict[str, Any], weights: dict[str, RowSource], heads: list[str], D: int, where: Path, quirks: list[str]
) -> torch.Tensor:
    """``c_s`` per head (ones without dataset-wise normalisation)."""
    mode = cfg.get("norm_activation", "dataset-wise")
    if mode == "inference":
        return torch.ones(len(heads), dtype=torch.float64)
    if mode != "dataset-wise":
        raise FormatError(
            f"{where}: norm_activation {mode!r} scales each token (or batch) by its own norm, which no fixed "
            "weights reproduce; crosslens reads dataset-wise and inference crosscoders"
        )
    norms = []
    for head in heads:
        source = weights.get(NORM_PREFIX + head)
        value = float(source.whole()) if source is not None else math.nan
        if not math.isfinite(value) or value <= 0:
            raise FormatError(
                f"{where}: norm_activation is dataset-wise but the checkpoint holds no average norm for {head!r} "
                f"({NORM_PREFIX}{head} is {'missing' if source is None else value}); save it after the library set "
                "the dataset norms, or with norm_activation: inference"
            )
        norms.append(value)
    quirks.append("dataset-wise activation normalisation: folded into the weights (folded_norm_factors)")
    return math.sqrt(D) / torch.tensor(norms, dtype=torch.float64)
