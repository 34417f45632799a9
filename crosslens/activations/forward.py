"""Run a TransformerLens model only as far as the hook points that are harvested.

Harvesting never needs logits, so nothing past the deepest hooked block runs. Two
mechanisms give the activations, and :class:`ForwardToHooks` picks one per set of hooks:

- **The residual trunk.** A block's input (``blocks.i.hook_resid_pre``) or output
  (``blocks.i.hook_resid_post``) is exactly what ``model(tokens, stop_at_layer=...)``
  returns, so a lone residual hook needs no hook function at all. That trunk is the part
  that runs under ``torch.compile`` (``compile=True``): it holds every block but, at most,
  the hooked one.
- **Captured hook points.** Any other hook (``hook_embed``, ``blocks.i.hook_mlp_out``,
  ``blocks.i.attn.hook_z``, several hooks at once) is captured by forward hooks that the
  context adds on entry and always removes on exit (TransformerLens's ``model.hooks``). When
  compiling, the trunk up to the hooked block is compiled and that one block runs eagerly
  with its hooks (``start_at_layer``): Dynamo does not guard on module hooks by default, so
  a hook added to a module inside a compiled graph could be silently skipped.

The trunk's attention can run through ``scaled_dot_product_attention``
(:mod:`crosslens.activations.sdpa`, ``attention="sdpa"``) instead of TransformerLens's
materialised scores and pattern, for the same residual up to the order of float sums.

Activations come back in the model's dtype, as ``[batch, pos, ...]`` views of what the
model computed. ``compile=None`` compiles where it pays, and ``attention=None`` takes SDPA
where the model allows it: both on CUDA. :func:`harvest_rows` runs a token table through a model
in batches and keeps each hook's activations at the kept tokens, as every harvest does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from crosslens.activations.budget import HARVEST_BATCH_SEQS
from crosslens.activations.sdpa import sdpa_refusal, sdpa_trunk
from crosslens.core.compiling import compile_function
from crosslens.core.hooks import block_index, opt_in_problem

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

_EMBED_HOOKS = {"hook_embed", "hook_pos_embed", "hook_tokens"}


def stop_layer_for(hooks: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still reaches every hook (None: the whole model is needed)."""
    return _stop_layer({hook: block_index(hook) for hook in hooks})


def _stop_layer(blocks: dict[str, int | None]) -> int | None:
    """:func:`stop_layer_for` from each hook's block index (None: not in a block)."""
    stops = []
    for hook, layer in blocks.items():
        if layer is not None:
            stops.append(layer + 1)
        elif hook in _EMBED_HOOKS:
            stops.append(0)
        else:  # ln_final, unembed: past the last block
            return None
    return max(stops)


def check_hooks(model: HookedTransformer, hooks: Sequence[str]) -> None:
    """Refuse hook names the model does not have, or has but never runs (an opt-in
    TransformerLens hook whose flag is off, an attention-only model's MLP output), saying why
    and naming near matches."""
    for hook in hooks:
        if hook in model.hook_dict:
            problem = _never_fires(model, hook)
        else:
            problem = f"the model has no hook {hook!r}: {_missing_hook_reason(model, hook)}"
        if problem is not None:
            raise ValueError(f"{problem}; pass another --hook (hooks= in Python)")


def _never_fires(model: HookedTransformer, hook: str) -> str | None:
    """Why a hook point of ``model.hook_dict`` never runs (None: it runs)."""
    if model.cfg.attn_only and hook.endswith(".hook_mlp_out"):  # declared on every block, run by none
        return f"hook {hook!r} never fires: the model is attention-only, its blocks have no MLP"
    problem = opt_in_problem(hook, model.cfg)
    return None if problem is None else f"hook {problem}"


def _missing_hook_reason(model: HookedTransformer, hook: str) -> str:
    """Why ``model`` has no hook ``hook``, with the near matches it does have."""
    cfg = model.cfg
    layer = block_index(hook)
    suffix = hook if layer is None else hook.split(".", 2)[-1]
    if layer is not None and layer >= cfg.n_layers:
        # a model cut short (keep_first_blocks) keeps every harvested block, so only a whole
        # model meets a block past its last: n_layers is then the model's own count
        return f"it has blocks 0..{cfg.n_layers - 1}"
    if suffix == "hook_resid_mid" and cfg.parallel_attn_mlp:
        why = "it runs attention and the MLP in parallel, so no residual stream lies between them"
    elif cfg.attn_only and ("mlp" in suffix or suffix.startswith("ln2.") or suffix == "hook_resid_mid"):
        why = "it is attention-only: its blocks have no MLP"
    else:
        why = "no such hook point"
    near = [name for name in get_close_matches(hook, list(model.hook_dict), n=4) if _never_fires(model, name) is None]
    return why + (f"; did you mean {', '.join(near[:3])}?" if near else "")


def keep_first_blocks(model: HookedTransformer, n_layers: int | None) -> HookedTransformer:
    """Drop ``model``'s blocks from ``n_layers`` on, in place, for a model that is only ever
    run with ``stop_at_layer <= n_layers`` and stays resident (its unused blocks would hold
    memory for nothing). Its ``crosslens_snapshot`` still describes the whole checkpoint."""
    if n_layers is None or n_layers >= model.cfg.n_layers:
        return model
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:n_layers])
    model.cfg.n_layers = n_layers
    model.setup()  # hook_dict and mod_dict without the dropped blocks' hook points
    return model


def residual_stop(hook: str) -> int | None:
    """The ``stop_at_layer`` whose returned residual IS ``hook``'s activation, or None when
    ``hook`` is not a block's input or output."""
    return _residual_stop(hook, block_index(hook))


def _residual_stop(hook: str, layer: int | None) -> int | None:
    """:func:`residual_stop` of ``hook`` in block ``layer`` (its block index)."""
    if layer is None:
        return None
    if hook == f"blocks.{layer}.hook_resid_pre":
        return layer
    if hook == f"blocks.{layer}.hook_resid_post":
        return layer + 1
    return None


def _trunk(model: HookedTransformer, tokens_BL: torch.Tensor, stop: int) -> torch.Tensor:
    return model(tokens_BL, stop_at_layer=stop)


TRUNKS: dict[str, Callable[..., torch.Tensor]] = {"hooked": _trunk, "sdpa": sdpa_trunk}
"""The residual trunk by its ``attention``: TransformerLens's own forward, or the same
blocks with attention through SDPA."""

_compiled_trunks: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}


def _compiled_trunk(attention: str, backend: str) -> Callable[..., torch.Tensor]:
    """The trunk under ``torch.compile``, run with autograd off but outside inference mode
    (Dynamo's guards on constants that a model makes from numpy, as BLOOM's attention scale,
    fail under inference mode)."""
    if (attention, backend) not in _compiled_trunks:
        compiled = compile_function(TRUNKS[attention], backend=backend, dynamic=False)

        def run(model: HookedTransformer, tokens_BL: torch.Tensor, stop: int) -> torch.Tensor:
            with torch.inference_mode(False), torch.no_grad():
                return compiled(model, tokens_BL, stop)

        _compiled_trunks[attention, backend] = run
    return _compiled_trunks[attention, backend]


def should_compile(device: str | torch.device) -> bool:
    """Whether ``compile=None`` compiles on ``device``: only CUDA, where kernel fusion pays for the compile."""
    return torch.device(device).type == "cuda"


def trunk_attention(model: HookedTransformer, attention: str | None) -> str:
    """The trunk's attention: ``"sdpa"``, ``"hooked"`` (TransformerLens's), or None for SDPA on
    CUDA where the model allows it; an explicit ``"sdpa"`` the model does not allow is refused."""
    if attention is None:
        return "sdpa" if should_compile(model.cfg.device) and sdpa_refusal(model) is None else "hooked"
    if attention not in TRUNKS:
        raise ValueError(f"attention={attention!r}: choose one of {sorted(TRUNKS)}, or None for SDPA on CUDA.")
    if attention == "sdpa" and (why := sdpa_refusal(model)) is not None:
        raise ValueError(f"attention='sdpa' cannot run this model: {why}; use attention='hooked'.")
    return attention


class ForwardToHooks:
    """A context in which ``forward(tokens_BL)`` runs ``model`` to ``hooks`` and returns
    ``{hook: activation}`` in the model's dtype.

    Args:
        model: the model (blocks past the deepest hook may already be dropped).
        hooks: hook names the model has (refused otherwise, with near matches).
        compile: run the residual trunk under ``torch.compile``; None: on CUDA only.
        backend: the ``torch.compile`` backend ("inductor"; "aot_eager" traces without codegen).
        attention: the residual trunk's attention, ``"sdpa"`` or ``"hooked"``
            (:func:`trunk_attention`; None: SDPA on CUDA where the model allows it).
    """

    def __init__(
        self,
        model: HookedTransformer,
        hooks: Sequence[str],
        *,
        compile: bool | None = False,
        backend: str = "inductor",
        attention: str | None = None,
    ) -> None:
        self.hooks = list(dict.fromkeys(hooks))
        check_hooks(model, self.hooks)
        self.model = model
        blocks = {hook: block_index(hook) for hook in self.hooks}  # each name parsed once
        self.stop = _stop_layer(blocks)
        compile = should_compile(model.cfg.device) if compile is None else compile
        self.attention = trunk_attention(model, attention)
        self._trunk = _compiled_trunk(self.attention, backend) if compile else TRUNKS[self.attention]
        self._direct = _residual_stop(self.hooks[0], blocks[self.hooks[0]]) if len(self.hooks) == 1 else None
        # fast trunk + one plain block: only where the block needs nothing but the residual
        fast = compile or self.attention == "sdpa"
        layer = None if self.stop is None else self.stop - 1
        one_block = layer is not None and all(block == layer for block in blocks.values())
        self._split_at = layer if fast and self._direct is None and one_block and _plain_inputs(model) else None
        self._captured: dict[str, torch.Tensor] = {}
        self._stack: ExitStack | None = None

    def __enter__(self) -> ForwardToHooks:
        self._stack = ExitStack()
        if self._direct is None:
            self._stack.enter_context(self.model.hooks(fwd_hooks=[(hook, self._save) for hook in self.hooks]))
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        self._captured.clear()
        if stack is not None:
            stack.close()

    def _save(self, acts: torch.Tensor, hook: Any) -> None:
        self._captured[hook.name] = acts

    def __call__(self, tokens_BL: Int[torch.Tensor, "batch pos"]) -> dict[str, torch.Tensor]:
        if self._stack is None:
            raise RuntimeError(
                "ForwardToHooks runs inside its context: `with ForwardToHooks(model, hooks) as forward:`."
            )
        if self._direct is not None:
            return {self.hooks[0]: self._trunk(self.model, tokens_BL, self._direct)}
        if self._split_at is not None:
            residual = self._trunk(self.model, tokens_BL, self._split_at)
            self.model(residual, start_at_layer=self._split_at, stop_at_layer=self._split_at + 1)
        else:
            self.model(tokens_BL, stop_at_layer=self.stop)
        captured, self._captured = self._captured, {}
        return captured


def _plain_inputs(model: HookedTransformer) -> bool:
    """Whether a block gets nothing from the embedding but the residual: no shortformer
    positional embedding and no attention mask (TransformerLens builds one for left padding)."""
    tokenizer = getattr(model, "tokenizer", None)
    left_padded = tokenizer is not None and getattr(tokenizer, "padding_side", "right") == "left"
    return model.cfg.positional_embedding_type != "shortformer" and not left_padded


def forward_to_hook(
    model: HookedTransformer,
    tokens_BL: Int[torch.Tensor, "batch pos"],
    hook: str,
    *,
    compile: bool | None = False,
    backend: str = "inductor",
    attention: str | None = None,
) -> torch.Tensor:
    """``hook``'s activation for ``tokens_BL``, in the model's dtype, with nothing past it computed."""
    with (
        torch.inference_mode(),
        ForwardToHooks(model, [hook], compile=compile, backend=backend, attention=attention) as forward,
    ):
        return forward(tokens_BL.to(model.cfg.device))[hook]


KeptIndex = tuple[torch.Tensor, list[int], int]
"""The kept rows' flat indices (on the forward's device), where each batch's rows end among
them, and their count: :func:`kept_index`."""


def kept_index(keep_NL: Bool[torch.Tensor, "n_seqs seq_len"], batch_size: int, device: str | torch.device) -> KeptIndex:
    """Where the kept rows of ``keep_NL`` are, for :func:`harvest_rows` in batches of
    ``batch_size`` sequences: from the host's mask (no device sync to find them), copied to
    ``device`` once (a copy from host memory waits for the device's queued work)."""
    n_kept = int(keep_NL.sum())
    kept_A = keep_NL.flatten().nonzero().squeeze(1)
    batch_ends = torch.cumsum(keep_NL.sum(dim=1), 0)[batch_size - 1 :: batch_size].tolist()
    batch_ends.append(n_kept)
    return kept_A.to(device), batch_ends, n_kept


@torch.inference_mode()
def harvest_rows(
    model: HookedTransformer,
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    keep_NL: Bool[torch.Tensor, "n_seqs seq_len"],
    hooks: Sequence[str],
    *,
    batch_size: int = HARVEST_BATCH_SEQS,
    device: str | torch.device | None = None,
    on_batch: Callable[[int], Any] | None = None,
    out_device: str | torch.device = "cpu",
    out_dtype: torch.dtype = torch.float32,
    compile: bool | None = False,
    kept: KeptIndex | None = None,
) -> dict[str, Float[torch.Tensor, "n_kept d_in"]]:
    """Run ``model`` on the sequences and return each hook's activations at kept tokens.

    Rows come in (sequence, position) order, on ``out_device`` in ``out_dtype``; trailing
    dims of a hook (e.g. heads) are flattened into ``d_in``. ``on_batch(n_kept)`` is called
    after each forward pass. ``compile`` as :class:`ForwardToHooks`. ``kept``: :func:`kept_index`
    of ``keep_NL`` at ``batch_size`` on the forward's device, where a caller runs several models
    on the same rows.
    """
    hooks = list(hooks)
    if device is None:
        device = model.cfg.device
    # rows go straight into one output per hook (no concatenation afterwards)
    out: dict[str, torch.Tensor] = {}
    row = 0
    # The hooks go on once for all batches (run_with_cache would add them and then reset
    # every hook point of the model on each batch). The tokens and the kept rows' indices go to
    # the device once, not per batch (``kept``, given: once for several models' calls).
    seq_len = token_ids_NL.shape[1]
    kept_A, batch_ends, n_kept = kept if kept is not None else kept_index(keep_NL, batch_size, device)
    token_ids_NL = token_ids_NL.to(device)
    with ForwardToHooks(model, hooks, compile=compile) as forward:
        for number, start in enumerate(range(0, token_ids_NL.shape[0], batch_size)):
            tokens_BL = token_ids_NL[start : start + batch_size]
            kept_K = kept_A[row : batch_ends[number]] - start * seq_len  # flat indices within the batch
            acts = forward(tokens_BL)
            for hook in hooks:
                if tuple(acts[hook].shape[:2]) != tuple(tokens_BL.shape):
                    raise ValueError(
                        f"hook {hook!r} gives shape {tuple(acts[hook].shape)}, not one vector per token "
                        "[batch, pos, ...]; harvest a per-token hook such as hook_resid_post, hook_mlp_out or attn.hook_z."
                    )
                acts_KD = acts[hook].reshape(tokens_BL.numel(), -1).index_select(0, kept_K.to(acts[hook].device))
                if hook not in out:
                    out[hook] = torch.empty(n_kept, acts_KD.shape[-1], dtype=out_dtype, device=out_device)
                out[hook][row : row + kept_K.numel()] = acts_KD
            row += kept_K.numel()
            if on_batch is not None:
                on_batch(int(kept_K.numel()))
    return {hook: out.get(hook, torch.empty(0, 0)) for hook in hooks}
