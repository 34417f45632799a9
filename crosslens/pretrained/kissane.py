"""The Kissane / Nanda crosscoder format: ``cfg.json`` (or ``cc_cfg.json``) and ``cc_weights.pt``.

Written by Connor Kissane's open replication of Anthropic's model-diffing crosscoder
(``ckkissane/crosscoder-model-diff-replication``, adapted from Neel Nanda's ``Crosscoders``) and
by the code built on it, among them tom-pollak's ``crosscoder-through-time``. The weights file is a
``torch.save``d state dict::

    W_enc [n_models, d_in, d_hidden]    b_enc [d_hidden]
    W_dec [d_hidden, n_models, d_in]    b_dec [n_models, d_in]

and the forward (their ``encode``/``decode``), on activations ``x [batch, n_models, d_in]``::

    f     = ReLU(sum_m x_m W_enc[m] + b_enc)
    x_hat = sum_i f_i W_dec[i] + b_dec

which is crosslens's ReLU crosscoder (architecture ``crosscoder``) with the same tensors in the
same layout. The config names ``d_in``, ``dict_size`` (d_hidden), ``enc_dtype`` and, in
crosscoder-through-time's version, ``n_models``; Kissane's also ``hook_point`` and ``model_name``.

Quirks, and what the loader does with each:

- **Two models hard-coded.** Kissane's code builds ``W_enc``, ``W_dec`` and ``b_dec`` for two
  models and its config has no ``n_models``; the loader reads the number of models from
  ``W_enc``, and checks it against the config's ``n_models`` where there is one.
- **A decoder bias for two models whatever n_models is.** Early crosscoder-through-time code
  kept Kissane's ``b_dec [2, d_in]`` while ``W_dec`` read ``n_models``; its decode cannot add the
  two for any other number, so such a checkpoint was never run by its own code, and it is refused.
- **Activation scaling.** Both train on activations each model scales to mean norm sqrt(d_in)
  (``x_m * c_m``, ``c_m = sqrt(d_in) / E||x_m||``), and neither saves ``c_m``. Where the source's
  code publishes them (crosscoder-through-time's ``train.py``), the registry gives them and they
  become the crosscoder's ``activation_norm_factors`` (unfolded: crosslens's stages scale the
  activations, or ``fold_activation_norm_scaling_factors()`` moves them into the weights).
  Otherwise the metadata says they are unknown, and :func:`crosslens.pretrained.measure_norm_factors`
  measures them on your tokens as the source did.
- **dtype names.** ``enc_dtype`` is ``fp32``/``bf16``/``fp16`` (Kissane) or ``float32``/...;
  the weights keep the dtype they were saved in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosslens.pretrained.tensors import (
    Converted,
    ConvertOptions,
    FormatError,
    RowSource,
    load_pt,
    ones,
    positive_int,
    read_json,
    require,
    shape_error,
)

NAME = "kissane"
LAYOUTS = (("cfg.json", "cc_weights.pt"), ("cc_cfg.json", "cc_weights.pt"))
"""(config, weights) file names in the release's folder: Kissane's, crosscoder-through-time's."""
SOURCE = "Kissane / Nanda crosscoder (ckkissane/crosscoder-model-diff-replication)"
KEPT_CONFIG_KEYS = ("model_name", "hook_point", "site", "layer", "l1_coeff", "lr", "num_tokens", "seed", "enc_dtype")
"""Config entries carried into the metadata (``source_config``): what the crosscoder was trained on and how."""


def recognises(config: dict[str, Any]) -> bool:
    return "dict_size" in config and "d_in" in config


def convert(config_path: Path, weights_path: Path, options: ConvertOptions) -> Converted:
    """The ReLU crosscoder in ``config_path`` and ``weights_path`` (see the module docstring)."""
    cfg = read_json(config_path)
    d_in, d_sae = positive_int(cfg, "d_in", config_path), positive_int(cfg, "dict_size", config_path)
    state = load_pt(weights_path)
    require(state, ("W_enc", "W_dec", "b_enc", "b_dec"), weights_path)
    if state["W_enc"].ndim != 3:
        raise FormatError(
            f"{weights_path}: W_enc is {list(state['W_enc'].shape)}, not [n_models, d_in, dict_size]; "
            "it is not a Kissane-format crosscoder"
        )
    S = int(state["W_enc"].shape[0])
    quirks = [] if "n_models" in cfg else ["its config has no n_models (the source code fixes two): read from W_enc"]
    sizes = f"n_models={S}, d_in={d_in}, dict_size={d_sae}"
    if cfg.get("n_models", S) != S:
        raise shape_error(weights_path, "W_enc", state["W_enc"].shape, (cfg["n_models"], d_in, d_sae), f"{config_path}")
    for name, expected in {"W_enc": (S, d_in, d_sae), "W_dec": (d_sae, S, d_in), "b_enc": (d_sae,)}.items():
        if tuple(state[name].shape) != expected:
            raise shape_error(weights_path, name, state[name].shape, expected, f"{config_path}: {sizes}")
    _check_decoder_bias(state["b_dec"], S, d_in, weights_path)
    _check_release(cfg, S, options, config_path)
    metadata = _metadata(cfg, options, quirks)
    dtype = state["W_enc"].dtype
    tensors = {name: RowSource.of(state[name]) for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    tensors["folded_norm_factors"] = ones(S, dtype)
    return Converted("crosscoder", d_in, d_sae, S, dtype, tensors, metadata, quirks)


def _check_decoder_bias(b_dec: Any, S: int, d_in: int, where: Path) -> None:
    if tuple(b_dec.shape) == (S, d_in):
        return
    if tuple(b_dec.shape) == (2, d_in):
        raise FormatError(
            f"{where}: b_dec holds 2 rows (code derived from Kissane's saves a decoder bias for two models "
            f"whatever n_models is) but W_enc and W_dec read {S} models, so the source's own decode could not "
            "run on it and it holds no trained crosscoder; use a checkpoint saved with b_dec [n_models, d_in]"
        )
    raise shape_error(where, "b_dec", b_dec.shape, (S, d_in), f"n_models={S}, d_in={d_in}")


def _check_release(cfg: dict[str, Any], S: int, options: ConvertOptions, where: Path) -> None:
    if options.n_snapshots is not None and options.n_snapshots != S:
        raise FormatError(
            f"{where}: the checkpoint reads {S} models but the release lists {options.n_snapshots}; "
            "fix the release's suite (its models or revisions) to match the checkpoint"
        )
    hook = cfg.get("hook_point")
    if options.hook_name and hook and hook != options.hook_name:
        raise FormatError(
            f"{where} was trained at hook_point {hook!r}, not {options.hook_name!r}; fix the release's hook_name"
        )
    if options.norm_factors is not None and len(options.norm_factors) != S:
        raise FormatError(
            f"{where}: {len(options.norm_factors)} activation scaling factors given for {S} models; give one per model"
        )


def _metadata(cfg: dict[str, Any], options: ConvertOptions, quirks: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "hook_name": options.hook_name or cfg.get("hook_point"),
        "source_config": {key: cfg[key] for key in KEPT_CONFIG_KEYS if key in cfg},
        "activation_norm_factors_folded": False,
    }
    if options.norm_factors is not None:
        metadata["activation_norm_factors"] = [float(c) for c in options.norm_factors]
        quirks.append(
            "activations were scaled per model by factors its code publishes outside the checkpoint: "
            "recorded as activation_norm_factors (unfolded)"
        )
    else:
        metadata["activation_norm_factors_unknown"] = True
        quirks.append(
            "activations were scaled per model to mean norm sqrt(d_in) by factors the source did not save: "
            "measure them on your tokens with crosslens.pretrained.measure_norm_factors before reading raw activations"
        )
    return metadata
