"""Turning Hugging Face checkpoints into HookedTransformers, and fingerprinting the result.

Pythia checkpoints load through TransformerLens's own checkpoint support
(``HookedTransformer.from_pretrained(name, checkpoint_value=step)``, in
`CheckpointSuite.load`); everything else through this module, ending, as Pythia does, in a
HookedTransformer processed with TransformerLens's defaults (``fold_ln``,
``center_writing_weights``, ``center_unembed``):

* `hf_to_hooked`: any already-loaded ``PreTrainedModel`` (an OLMo or BLOOM revision, a
  local folder). The TransformerLens config is derived from the model's *own* HF config
  rather than from TransformerLens's table of official names, because that table does not
  know the intermediate-checkpoint repos (``bigscience/bloom-560m-intermediate``) and
  hard-codes OLMo's sizes by name. For architectures TransformerLens converts by
  architecture (GPT-NeoX, BLOOM, Llama, GPT-2, ...) the HF config is written to a scratch
  folder and handed to TransformerLens's own converter; OLMo (v1), which TransformerLens
  only recognises by repo name, gets the same config dict built from the HF config fields,
  and so does OLMo-2, whose sizes TransformerLens hard-codes for two repo names only.
  The weights then go through TransformerLens's weight converter for the architecture.

Post-norm architectures (OLMo-2, OLMo-3: RMSNorm on each sublayer's *output*, before the
residual add) cannot have their norms folded into the next weights, so they load with
``fold_ln=False`` and ``center_writing_weights=False`` (``center_unembed`` stays on). This
is a fixed choice for those families, recorded in `CheckpointSuite.provenance` under
``"processing"``, not a per-load warning.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_olmo3_weights
from transformer_lens.utilities.activation_functions import softcap_enabled
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import UnsupportedArchitectureError

ARCHITECTURE_FIELDS = (
    "original_architecture",
    "d_model",
    "n_layers",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "n_ctx",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "rotary_dim",
    "n_key_value_heads",
    "gated_mlp",
    "parallel_attn_mlp",
)
"""HookedTransformerConfig fields that every snapshot of one suite must share."""

# Messages TransformerLens emits on every load that tell a crosslens user nothing.
_NOISE_LOG_PREFIXES = ("Pythia models on HF were updated",)
_NOISE_WARNINGS = (r"HookedTransformer(\.from_pretrained)? is deprecated",)


class _DropLogLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _drop_root_log_lines(*prefixes: str) -> contextlib.ExitStack:
    """Drop records starting with `prefixes` that TransformerLens logs on the root logger, until
    the returned context exits."""
    line_filter = _DropLogLines(prefixes)
    root_logger = logging.getLogger()
    restore = contextlib.ExitStack()
    restore.callback(root_logger.removeFilter, line_filter)
    root_logger.addFilter(line_filter)
    return restore


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence TransformerLens's per-load print, its deprecation notices and the
    Pythia-v0 reminder, and transformers' weight-loading progress bars.

    Real warnings (anything else logged or warned) still get through.
    """
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with (
            _drop_root_log_lines(*_NOISE_LOG_PREFIXES),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            for pattern in _NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
            yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def architecture_signature(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The `ARCHITECTURE_FIELDS` of `cfg`, for comparing snapshots."""
    return {field: getattr(cfg, field, None) for field in ARCHITECTURE_FIELDS}


def _olmo_shared_fields(hf_config: PretrainedConfig) -> dict[str, Any]:
    """What TransformerLens's OLMo v1 and OLMo-2 configs share: the sizes, read from
    `hf_config`, and rotary positions with a gated (SwiGLU) MLP in every block."""
    n_heads = hf_config.num_attention_heads
    return {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.hidden_size // n_heads,
        "n_heads": n_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "initializer_range": hf_config.initializer_range,
        "attn_types": ["global"] * hf_config.num_hidden_layers,
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "quantization_method": None,
    }


def _olmo_cfg_dict(hf_config: PretrainedConfig) -> dict[str, Any]:
    """TransformerLens's OLMo-1B-hf/7B-hf config, with the sizes read from `hf_config`."""
    n_heads = hf_config.num_attention_heads
    n_kv_heads = getattr(hf_config, "num_key_value_heads", None) or n_heads
    if n_kv_heads != n_heads or getattr(hf_config, "attention_bias", False):
        raise UnsupportedArchitectureError(
            "TransformerLens's OLMo weight converter handles only full multi-head attention "
            f"without biases; this config has {n_kv_heads} key/value heads for {n_heads} heads "
            f"and attention_bias={getattr(hf_config, 'attention_bias', False)}. "
            "Use an allenai/OLMo-*-hf (v1) checkpoint."
        )
    return {
        **_olmo_shared_fields(hf_config),
        # OLMo v1's LayerNorm has no parameters and a fixed eps.
        "eps": 1e-05,
        "normalization_type": "LN",
        "rotary_base": rope_theta(hf_config),
        "clip_qkv": getattr(hf_config, "clip_qkv", None),
        "original_architecture": "OlmoForCausalLM",
    }


def _olmo2_cfg_dict(hf_config: PretrainedConfig) -> dict[str, Any]:
    """An OLMo-2 config read from `hf_config` (TransformerLens only knows two repo names'
    sizes): RMSNorm after each sublayer, QK-norm, SwiGLU, plain RoPE, no biases."""
    n_heads = hf_config.num_attention_heads
    n_kv_heads = getattr(hf_config, "num_key_value_heads", None) or n_heads
    if getattr(hf_config, "attention_bias", False):
        raise UnsupportedArchitectureError(
            "this Olmo2ForCausalLM config has attention_bias=True, which TransformerLens's OLMo-2 "
            "converter does not carry over; released OLMo-2 checkpoints have no attention biases"
        )
    rope = _rope_parameters(hf_config)
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError(
            f"this Olmo2ForCausalLM config scales RoPE ({rope}); crosslens converts OLMo-2 with plain "
            "RoPE only, as the released OLMo-2 checkpoints use"
        )
    cfg_dict: dict[str, Any] = {
        **_olmo_shared_fields(hf_config),
        "eps": hf_config.rms_norm_eps,
        "normalization_type": "RMS",
        "rotary_base": rope_theta(hf_config, default=500000.0),
        "tie_word_embeddings": getattr(hf_config, "tie_word_embeddings", False),
        "original_architecture": "Olmo2ForCausalLM",
    }
    if n_kv_heads != n_heads:  # OLMo-2 32B uses grouped-query attention
        cfg_dict["n_key_value_heads"] = n_kv_heads
    return cfg_dict


def _rope_parameters(hf_config: PretrainedConfig) -> dict[str, Any]:
    """The RoPE settings, whether transformers keeps them in ``rope_parameters`` (5.x) or
    ``rope_scaling`` (4.x)."""
    return dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})


def rope_theta(hf_config: PretrainedConfig, default: float = 10000.0) -> float:
    """RoPE's base: ``rope_theta`` at the top of the config (transformers 4.x) or inside
    ``rope_parameters`` (5.x); ``default`` when neither holds it."""
    top_level = getattr(hf_config, "rope_theta", None)
    if top_level is not None:
        return top_level
    return _rope_parameters(hf_config).get("rope_theta", default)


def _gemma2_cfg_dict(hf_config: PretrainedConfig) -> dict[str, Any]:
    """A Gemma-2 config read from `hf_config`: TransformerLens knows Gemma-2's sizes only by repo
    name (``google/gemma-2-2b``), so a cached snapshot's folder would not convert. Sliding-window
    and global layers as the config's ``layer_types`` says (even layers slide in the released models),
    soft-capped attention and logits, norms before and after each sublayer."""
    n_layers = hf_config.num_hidden_layers
    layer_types = getattr(hf_config, "layer_types", None) or ["sliding_attention", "full_attention"] * (n_layers // 2)
    return {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": n_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_activation,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": rope_theta(hf_config),
        "rotary_dim": hf_config.head_dim,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": hf_config.query_pre_attn_scalar**0.5,
        "window_size": hf_config.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if kind == "sliding_attention" else "global" for kind in layer_types],
        "attn_scores_soft_cap": hf_config.attn_logit_softcapping,
        "output_logits_soft_cap": hf_config.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }


_OWN_CONFIG_BUILDERS = {
    "OlmoForCausalLM": _olmo_cfg_dict,
    "Olmo2ForCausalLM": _olmo2_cfg_dict,
    "Gemma2ForCausalLM": _gemma2_cfg_dict,
}


def is_post_norm(architecture: str | None) -> bool:
    """Whether `architecture` normalises sublayer outputs (OLMo-2, OLMo-3), so that its
    norms cannot be folded (see the module docstring)."""
    return architecture in POST_NORM_ARCHITECTURES


def _finish_cfg_dict(
    cfg_dict: dict[str, Any], *, model_id: str, device: str | torch.device | None, dtype: torch.dtype
) -> HookedTransformerConfig:
    """The processing `get_pretrained_model_config` applies to a converted dict, for
    `fold_ln=True` (the crosslens default; off for post-norm architectures), with no
    checkpoint bookkeeping."""
    cfg_dict = dict(cfg_dict)
    if is_post_norm(cfg_dict["original_architecture"]):
        pass  # the norms stay in the model (fold_ln=False)
    elif cfg_dict["normalization_type"] in ("LN", "LNPre"):
        cfg_dict["normalization_type"] = "LNPre"
    elif cfg_dict["normalization_type"] in ("RMS", "RMSPre"):
        cfg_dict["normalization_type"] = "RMSPre"
    cfg_dict.update(
        model_name=model_id.split("/")[-1],
        tokenizer_name=model_id,
        init_weights=False,
        from_checkpoint=False,
        device=device,
        n_devices=1,
        dtype=dtype,
    )
    cfg_dict.setdefault("default_prepend_bos", True)
    return HookedTransformerConfig.from_dict(cfg_dict)


@contextlib.contextmanager
def _config_folder(hf_config: PretrainedConfig) -> Iterator[str]:
    """A scratch folder holding only `hf_config` as config.json, for TransformerLens's
    path-based converters (a path makes them read the architecture from the config)."""
    with tempfile.TemporaryDirectory(prefix="crosslens-config-") as scratch:
        folder = Path(scratch) / "config"
        hf_config.save_pretrained(folder)
        yield str(folder)


def _architecture(hf_config: PretrainedConfig) -> str:
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise UnsupportedArchitectureError(
            f"the checkpoint's config.json has no 'architectures' entry (model_type="
            f"{getattr(hf_config, 'model_type', None)!r}); add e.g. "
            '"architectures": ["GPTNeoXForCausalLM"] to it'
        )
    return architectures[0]


_HOOKED_CONFIGS: dict[str, HookedTransformerConfig] = {}
_MAX_HOOKED_CONFIGS = 64


def hooked_config_from_hf(
    hf_config: PretrainedConfig,
    *,
    model_id: str,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformerConfig:
    """The HookedTransformerConfig for a checkpoint with `hf_config`, set up for
    ``fold_ln=True`` except on post-norm architectures (see the module docstring)."""
    # A suite's snapshots mostly share one config, checked and then loaded one by one, and
    # each conversion writes and re-reads a scratch folder: convert each config once per
    # process and hand out copies (callers, TransformerLens included, mutate them). The
    # key is everything the conversion reads; the folder a config was loaded from is not.
    fields = {key: value for key, value in hf_config.to_dict().items() if key != "_name_or_path"}
    key = json.dumps([fields, model_id, str(device), str(dtype)], sort_keys=True, default=repr)
    if key not in _HOOKED_CONFIGS:
        if len(_HOOKED_CONFIGS) >= _MAX_HOOKED_CONFIGS:
            _HOOKED_CONFIGS.pop(next(iter(_HOOKED_CONFIGS)))
        _HOOKED_CONFIGS[key] = _convert_config(hf_config, model_id=model_id, device=device, dtype=dtype)
    return copy.deepcopy(_HOOKED_CONFIGS[key])


def _convert_config(
    hf_config: PretrainedConfig, *, model_id: str, device: str | torch.device | None, dtype: torch.dtype
) -> HookedTransformerConfig:
    architecture = _architecture(hf_config)
    if architecture in _OWN_CONFIG_BUILDERS:
        cfg_dict = _OWN_CONFIG_BUILDERS[architecture](hf_config)
        return _finish_cfg_dict(cfg_dict, model_id=model_id, device=device, dtype=dtype)
    with _config_folder(hf_config) as folder:
        try:
            cfg = tl_loading.get_pretrained_model_config(
                folder,
                hf_cfg=hf_config.to_dict(),
                fold_ln=not is_post_norm(architecture),  # asking for it would log a warning per load
                device=device,
                dtype=dtype,
            )
        except NotImplementedError as error:
            raise UnsupportedArchitectureError(
                f"TransformerLens cannot convert {architecture} checkpoints ({error}); "
                "crosslens supports what TransformerLens converts by architecture "
                "(e.g. GPTNeoXForCausalLM, BloomForCausalLM, LlamaForCausalLM, Olmo3ForCausalLM) "
                "plus OlmoForCausalLM and Olmo2ForCausalLM"
            ) from error
    cfg.model_name = model_id.split("/")[-1]
    cfg.tokenizer_name = model_id
    return cfg


def processing_flags(cfg: HookedTransformerConfig) -> dict[str, bool]:
    """TransformerLens's defaults, minus what `from_pretrained` turns off for this model."""
    shortformer = cfg.positional_embedding_type == "shortformer"
    post_norm = is_post_norm(cfg.original_architecture)
    return {
        "fold_ln": not (shortformer or post_norm),
        "center_writing_weights": not (shortformer or post_norm),
        "center_unembed": not (shortformer or softcap_enabled(cfg.output_logits_soft_cap)),
    }


def hf_to_hooked(
    hf_model: PreTrainedModel,
    *,
    model_id: str,
    tokenizer: PreTrainedTokenizerBase | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    first_n_layers: int | None = None,
    processing: dict[str, bool] | None = None,
) -> HookedTransformer:
    """Convert a loaded HF causal LM into a processed HookedTransformer on `device`
    (with `first_n_layers`, only its first blocks: converted, built and processed).
    ``processing``: ``center_writing_weights``/``center_unembed`` to use instead of the
    architecture's (`processing_flags`); folding the norms is the config's, not a choice here."""
    cfg = hooked_config_from_hf(hf_model.config, model_id=model_id, device=device, dtype=dtype)
    if first_n_layers is not None and first_n_layers < cfg.n_layers:
        # as TransformerLens's own first_n_layers: the converters walk cfg.n_layers blocks
        cfg = dataclasses.replace(cfg, n_layers=first_n_layers)
    with _config_folder(hf_model.config) as folder:
        # Given a path and `hf_model`, TransformerLens converts the weights in hand by
        # cfg.original_architecture and downloads nothing.
        if cfg.original_architecture == "Olmo2ForCausalLM" and cfg.n_key_value_heads is not None:
            # TransformerLens's OLMo-2 converter assumes one key/value head per query head;
            # its OLMo-3 converter is the same mapping with grouped-query attention.
            state_dict = convert_olmo3_weights(hf_model, cfg)
        else:
            state_dict = tl_loading.get_pretrained_state_dict(folder, cfg, hf_model, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOISE_WARNINGS[0], category=DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    if cfg.positional_embedding_type == "alibi":
        # TransformerLens builds a positional embedding that ALiBi models (BLOOM) never use
        # and would fill it, with a warning, from uninitialised memory, which would give the
        # same checkpoint a different weights_sha256 on every load. Zeros keep it fixed.
        state_dict.setdefault("pos_embed.W_pos", torch.zeros_like(model.pos_embed.W_pos))
    flags = processing_flags(cfg)
    unknown = set(processing or {}) - {"center_writing_weights", "center_unembed"}
    if unknown:
        raise ValueError(
            f"processing {sorted(unknown)} cannot be chosen per suite; choose center_writing_weights or center_unembed"
        )
    flags.update(processing or {})
    model.load_and_process_state_dict(state_dict, **flags)
    model.move_model_modules_to_device()
    return model.eval()
