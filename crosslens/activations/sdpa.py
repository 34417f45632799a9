"""The residual trunk with attention computed by ``scaled_dot_product_attention``.

TransformerLens's attention writes every head's ``[query, key]`` scores to memory, masks them,
takes their softmax and reads the pattern back for ``pattern @ v``: at 1,024 positions that is
about 3 GB of traffic a layer for a batch of 32 sequences in bfloat16, more than the block's
matmuls take. ``torch.nn.functional.scaled_dot_product_attention`` computes the same
``softmax(q k^T / scale + bias) v`` in tiles that never leave the chip (FlashAttention on CUDA).

:func:`sdpa_trunk` runs ``model``'s embedding and first blocks with the model's own modules and
methods (layer norms, MLPs, ``calculate_qkv_matrices``, rotary, QK norms) and only the scores,
mask, softmax and ``pattern @ v`` replaced. Its residual equals TransformerLens's up to the
order of float sums (tested to 1e-5 in float32 for GPT-NeoX, OLMo, OLMo-2/3 and BLOOM). The
hook points inside attention (``hook_attn_scores``, ``hook_pattern``, ``hook_z``) do not fire
in it, so it only ever runs the blocks before the hooked one, as the residual trunk does.

:func:`sdpa_refusal` says why a model's attention is not one this function reproduces
(sinks, soft-capped scores, relative position biases, split inputs, ...), or why its forward
would differ (hooks left on its hook points); such models keep TransformerLens's attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

_QK_NORM_ON_HEADS_FLAT = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
"""Architectures whose QK norm TransformerLens applies to all heads' ``q``/``k`` at once, in
its attention's forward rather than in ``calculate_qkv_matrices``."""


def sdpa_refusal(model: HookedTransformer) -> str | None:
    """Why :func:`sdpa_trunk` cannot stand in for ``model``'s own trunk, or None when it can."""
    from transformer_lens.components import Attention, GroupedQueryAttention, TransformerBlock

    cfg = model.cfg
    settings = {
        "positional_embedding_type": cfg.positional_embedding_type not in ("standard", "rotary", "alibi"),
        "attention_dir": cfg.attention_dir != "causal",
        "use_attn_in": cfg.use_attn_in,
        "use_split_qkv_input": cfg.use_split_qkv_input,
        "attn_scores_soft_cap": cfg.attn_scores_soft_cap > 0,
        "use_attention_sinks": cfg.use_attention_sinks,
        "use_logn_attn": cfg.use_logn_attn,
        "load_in_4bit": cfg.load_in_4bit,
        "n_devices": cfg.n_devices > 1,
    }
    unsupported = [name for name, refused in settings.items() if refused]
    if unsupported:
        return f"its config sets {', '.join(f'{n}={getattr(cfg, n)!r}' for n in unsupported)}"
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "padding_side", "right") == "left":
        return "its tokenizer pads on the left, so TransformerLens masks padding"
    for i, block in enumerate(model.blocks):
        if type(block) is not TransformerBlock or type(block.attn) not in (Attention, GroupedQueryAttention):
            return f"block {i} is a {type(block).__name__} with a {type(block.attn).__name__}"
    hooked = [name for name, point in model.hook_dict.items() if point._forward_hooks or point._backward_hooks]
    if hooked:  # the trunk skips attention's hook points and the residual ones
        return f"hook points carry hooks ({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}) that it would not all run"
    return None


def _attention(
    attn: torch.nn.Module, x_BLM: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    """TransformerLens's attention forward (no cache, no padding mask) with SDPA for the
    scores, mask, softmax and ``pattern @ v``."""
    cfg = attn.cfg
    q, k, v = attn.calculate_qkv_matrices(x_BLM, x_BLM, x_BLM)  # [batch, pos, heads, d_head]
    if cfg.original_architecture in _QK_NORM_ON_HEADS_FLAT:
        q = attn.q_norm(q.flatten(2)).view(q.shape)
        k = attn.k_norm(k.flatten(2)).view(k.shape)
    if cfg.clip_qkv is not None:
        q, k, v = (t.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv) for t in (q, k, v))
    if cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q, 0, None), attn.apply_rotary(k, 0, None)
    if k.shape[2] != q.shape[2]:  # grouped-query attention: each key/value head serves a group
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        v = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)
    n_pos = q.shape[1]
    mask = None
    if cfg.positional_embedding_type == "alibi" or attn.attn_type == "local":
        allowed = attn._make_causal_mask(n_pos, n_pos, 0, q.device)  # [1, 1, pos, pos]; local windows too
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        if cfg.positional_embedding_type == "alibi":
            alibi = type(attn).create_alibi_bias(cfg.n_heads, n_pos, q.device)  # [heads, pos, pos]
            mask = mask + alibi[None].to(q.dtype)
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=mask is None,
        scale=1.0 / float(attn.attn_scale),
    ).transpose(1, 2)
    w_O = attn.W_O.flatten(0, 1).T  # [d_model, heads * d_head], as TransformerLens's F.linear takes it
    return F.linear(z.flatten(2).to(w_O.dtype), w_O, attn.b_O)


def _block(block: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """TransformerLens's ``TransformerBlock.forward`` on a residual, attention through SDPA."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = block.cfg
    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    attn_out = _attention(block.attn, resid if post_norm else block.ln1(resid))
    if cfg.use_normalization_before_and_after:
        attn_out = block.ln1_post(attn_out)
    if post_norm:
        attn_out = block.ln1(attn_out)
    if not cfg.attn_only and not cfg.parallel_attn_mlp:
        mid = resid + attn_out
        return mid + block.apply_mlp(mid if post_norm else block.ln2(mid))
    if cfg.parallel_attn_mlp:
        return resid + attn_out + block.apply_mlp(block.ln2(resid))
    return resid + attn_out


def sdpa_trunk(
    model: HookedTransformer, tokens_BL: Int[torch.Tensor, "batch pos"], stop: int
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``model(tokens_BL, stop_at_layer=stop)`` with each block's attention through SDPA; the
    model must pass :func:`sdpa_refusal`."""
    residual, _, shortformer, padding = model.input_to_embed(tokens_BL)
    assert shortformer is None and padding is None, "sdpa_refusal lets neither through"
    for block in model.blocks[:stop]:
        residual = _block(block, residual)
    return residual
