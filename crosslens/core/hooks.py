"""TransformerLens hook names: which block a hook is in, whether a name is a hook at all,
and which hook a store or crosscoder means.

A hook name is a TransformerLens ``HookPoint`` path: a global one (``hook_embed``,
``ln_final.hook_normalized``) or a per-block one, ``blocks.{N}.<suffix>``. What counts as
a hook is TransformerLens's own answer, not a list kept here: :func:`hook_points` builds
a one-block ``HookedTransformer`` for each optional hook family (attention result, split
q/k/v inputs, rotary, gated MLP, ...) on the ``meta`` device (no memory, a few
milliseconds), once per process, and collects their ``hook_dict`` names. A name is valid
when, with its block index replaced by 0, it is one of them. A model already loaded
should be asked directly (``hook in model.hook_dict``): it knows which optional hooks it
has switched on.

This module imports TransformerLens only inside :func:`hook_points`; the other functions
are string work and stay cheap.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

from crosslens.core.errors import PartnerMismatchError, check_store_given
from crosslens.core.metadata import metadata_value

EXAMPLE_HOOK = "blocks.0.hook_resid_post"
"""The hook name error messages suggest."""

_BLOCK = re.compile(r"^blocks\.(\d+)\.")

# One config per family of optional hook points; the union of their hooks is every name
# TransformerLens can give (use_attn_in excludes use_split_qkv_input, hence two configs).
_HOOK_FAMILIES: tuple[dict[str, Any], ...] = (
    {},
    {"use_attn_result": True, "use_split_qkv_input": True, "use_hook_mlp_in": True, "use_hook_tokens": True},
    {"use_attn_in": True},
    {
        "positional_embedding_type": "rotary",
        "rotary_dim": 4,
        "gated_mlp": True,
        "act_fn": "silu",
        "normalization_type": "RMS",
    },
)
_TINY = {
    "n_layers": 1,
    "d_model": 8,
    "n_ctx": 4,
    "d_head": 4,
    "n_heads": 2,
    "d_mlp": 16,
    "d_vocab": 8,
    "act_fn": "relu",
}


def block_index(name: str) -> int | None:
    """The block index ``N`` of a ``blocks.N.…`` name (a hook, or a state-dict key), else None."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def hook_width(hook: str, d_model: int, d_mlp: int) -> int:
    """``d_in`` of a per-token hook of a model of widths ``d_model`` and ``d_mlp``: ``d_mlp`` for
    ``mlp.hook_pre``/``mlp.hook_post``, else ``d_model``."""
    return d_mlp if re.search(r"mlp\.hook_(pre|post)", hook) else d_model


def as_block_zero(hook: str) -> str:
    """``hook`` with its block index (if any) replaced by 0: the form :func:`hook_points` holds."""
    return _BLOCK.sub("blocks.0.", hook, count=1)


@functools.cache
def hook_points() -> frozenset[str]:
    """Every hook point name TransformerLens's ``HookedTransformer`` can have, per-block ones as ``blocks.0.…``."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    names: set[str] = set()
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", DeprecationWarning)
        for family in _HOOK_FAMILIES:
            model = HookedTransformer(HookedTransformerConfig(**{**_TINY, **family, "device": "meta"}))
            names.update(model.hook_dict)
    return frozenset(names)


def is_hook_name(hook: str) -> bool:
    """Whether ``hook`` names a TransformerLens hook point (of some block, for per-block hooks)."""
    return as_block_zero(hook) in hook_points()


# Hook points TransformerLens declares but runs only when an opt-in config flag is on (by
# hook name without its ``blocks.N.``: the flag, and what holds the same activation).
# Models crosslens loads leave every one of these flags off, so these hooks never fire there.
OPT_IN_HOOKS: dict[str, tuple[str, str]] = {
    "hook_attn_in": ("use_attn_in", "it is blocks.{N}.hook_resid_pre copied per head: use that"),
    "hook_q_input": ("use_split_qkv_input", "it is blocks.{N}.hook_resid_pre copied per head: use that"),
    "hook_k_input": ("use_split_qkv_input", "it is blocks.{N}.hook_resid_pre copied per head: use that"),
    "hook_v_input": ("use_split_qkv_input", "it is blocks.{N}.hook_resid_pre copied per head: use that"),
    "hook_mlp_in": (
        "use_hook_mlp_in",
        "it is a copy of blocks.{N}.hook_resid_mid (of blocks.{N}.hook_resid_pre where attention and "
        "MLP run in parallel)",
    ),
    "attn.hook_result": (
        "use_attn_result",
        "blocks.{N}.attn.hook_z holds each head's output before W_O, blocks.{N}.hook_attn_out their sum",
    ),
    "hook_tokens": ("use_hook_tokens", "it holds token ids, not activations"),
}

FIRING_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post", "attn.hook_z", "mlp.hook_post")
"""Per-block hooks that fire in every model that has them (error messages list them)."""


def opt_in_problem(hook: str, cfg: Any = None) -> str | None:
    """Why ``hook`` never fires: it runs only with an opt-in TransformerLens flag that is off in
    ``cfg`` (a model's ``HookedTransformerConfig``; None: off, as in every model crosslens loads)."""
    match = _BLOCK.match(hook)
    suffix, n = (hook[match.end() :], match.group(1)) if match else (hook, "0")
    if suffix not in OPT_IN_HOOKS:
        return None
    flag, instead = OPT_IN_HOOKS[suffix]
    if cfg is not None and getattr(cfg, flag, False):
        return None
    where = "which crosslens leaves off" if cfg is None else "which is off in this model"
    return (
        f"{hook!r} never fires: TransformerLens runs it only with cfg.{flag}, {where} "
        f"({instead.format(N=n)}). Hooks that fire in block {n} include {', '.join(FIRING_HOOKS)} "
        f"(as blocks.{n}.NAME)"
    )


def hook_problem(hook: str, n_layers: int | None) -> str | None:
    """Why ``hook`` is not a hook to harvest from a model with ``n_layers`` blocks (None: it is):
    not a TransformerLens hook name, a block past the last, or a hook that never fires.

    ``n_layers`` None checks the name only."""
    if not is_hook_name(hook):
        return f"{hook!r} is not a TransformerLens hook name; use e.g. {EXAMPLE_HOOK}"
    layer = block_index(hook)
    if n_layers is not None and layer is not None and layer >= n_layers:
        return f"{hook!r} names block {layer}, but the model has blocks 0..{n_layers - 1}"
    return opt_in_problem(hook)


def resolve_hook(store: Any, hook: str | None) -> str:
    """``hook`` if ``store`` holds it; with None, the store's only hook.

    ``store`` is anything with a ``hooks`` list (an ``ActivationStore``, a provider); an
    object without one accepts any named hook.
    """
    if hook is None:
        check_store_given(store, needs="hooks")
    hooks = list(getattr(store, "hooks", []))
    if hook is None:
        if len(hooks) != 1:
            raise ValueError(f"the store holds hooks {hooks}; say which one to use with --hook (hook= in Python).")
        return hooks[0]
    if hooks and hook not in hooks:
        raise ValueError(f"hook {hook!r} is not in the store; it has {hooks}.")
    return hook


def recorded_hook(crosscoder: Any) -> str | None:
    """The hook the crosscoder was trained on, as its metadata records it (None: not recorded)."""
    recorded = metadata_value(crosscoder, "hook_name")
    return str(recorded) if recorded else None


def crosscoder_hook(crosscoder: Any, hook: str | None = None, *, parameter: str = "hook") -> str:
    """``hook``, or else the hook recorded in the crosscoder's metadata (:func:`recorded_hook`);
    a ``hook`` other than the recorded one is refused: the crosscoder reads only its own.
    ``parameter`` is the caller's name for ``hook``, which the messages name."""
    recorded = recorded_hook(crosscoder)
    if hook is not None:
        if recorded is not None and hook != recorded:
            raise PartnerMismatchError(
                f"the crosscoder reads {recorded}, not hook {hook!r}; pass {parameter}={recorded!r} or None"
            )
        return hook
    if recorded is None:
        raise ValueError(
            f"the crosscoder's metadata records no hook_name; pass {parameter}=, e.g. 'blocks.1.hook_resid_post'"
        )
    return recorded
