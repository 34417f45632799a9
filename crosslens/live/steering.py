"""Steering one feature at every snapshot: each snapshot model continues a prompt twice, as it is and
with the feature's snapshot-s decoder direction written into its activation at the crosscoder's hook.

The direction is the one the feature's code decodes through at snapshot s, on the model's own
activation scale: ``d_s = W_dec[i, s] / c_s`` with ``c_s`` the snapshot's normalisation factor (1 once
folded into the weights), what :meth:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec.decode` adds
for a code of 1. So a strength is in the units of the feature's activations:

* ``add``: ``x + strength d_s`` at every position, what the feature firing at ``strength`` more adds;
* ``clamp``: ``x + (strength - f_s(x)) d_s``, the feature's per-snapshot code ``f_s`` replaced by
  ``strength`` (0 ablates it), as Neuronpedia's clamping does for one SAE.

Both continuations run as one batch of two rows (the hook writes the second), with
TransformerLens's key-value cache, so each new token costs one position's forward. Greedy
(``temperature`` 0) or sampled from a generator seeded by ``seed`` per snapshot: the same request
gives the same tokens. A sampled step draws one Gumbel vector ``g`` that both rows share and takes
``argmax(logits + T g)`` in each (the Gumbel-max draw from ``softmax(logits / T)``), so the rows
differ only where the steering moved the logits, and no temperature divides the logits to
overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from crosslens.dashboards.readings import Readings


@dataclass(frozen=True)
class SteeredSnapshot:
    """One snapshot's continuations of the prompt, without and with the feature steered."""

    snapshot: int
    step: int
    plain_ids: list[int]
    steered_ids: list[int]
    plain: list[str]
    """The unsteered continuation's tokens, as text."""
    steered: list[str]
    direction_norm: float
    """``||d_s||``: how far a strength of 1 moves the activation at this snapshot."""

    @property
    def plain_text(self) -> str:
        return "".join(self.plain)

    @property
    def steered_text(self) -> str:
        return "".join(self.steered)


@dataclass(frozen=True)
class Steering:
    """A steering request's answer at every snapshot it ran on."""

    feature: int
    prompt: str
    prompt_tokens: list[str]
    mode: str
    strength: float
    n_tokens: int
    temperature: float
    seed: int
    snapshots: list[SteeredSnapshot]


def direction(readings: Readings, feature: int, s: int) -> Float[torch.Tensor, " d_in"]:
    """The feature's snapshot-``s`` decoder direction on the raw activation scale, ``W_dec[i, s] / c_s``."""
    crosscoder = readings.crosscoder
    return (crosscoder.W_dec[feature, s] / readings.factors_S[s]).detach()


def steering_hook(
    readings: Readings, feature: int, s: int, mode: str, strength: float, dtype: torch.dtype
) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """A TransformerLens hook writing the feature at snapshot ``s`` into row 1 of its ``[2, pos, d_in]``
    activation (row 0 runs unsteered)."""
    d_D = direction(readings, feature, s)

    def add(acts_BLD: torch.Tensor, hook: object) -> torch.Tensor:
        acts_BLD[1] += (strength * d_D).to(dtype)
        return acts_BLD

    def clamp(acts_BLD: torch.Tensor, hook: object) -> torch.Tensor:
        f_L = readings.snapshot_code(s, acts_BLD[1])[:, feature]
        acts_BLD[1] += ((strength - f_L)[:, None] * d_D).to(dtype)
        return acts_BLD

    return add if mode == "add" else clamp


def _next_tokens(logits_BV: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each row's next token: greedy at temperature 0, else a Gumbel-max draw whose noise every row
    shares, so a steered row departs from the plain one only through its logits."""
    if temperature <= 0:
        return logits_BV.argmax(dim=-1)
    uniform_V = torch.rand(logits_BV.shape[-1], generator=generator, device=logits_BV.device)
    gumbel_V = -torch.log(-torch.log(uniform_V))  # a uniform of 0 gives -inf: that token is not drawn
    return (logits_BV.float() + temperature * gumbel_V).argmax(dim=-1)


@torch.inference_mode()
def continue_twice(
    model: object,
    prompt_L: Int[torch.Tensor, " prompt_len"],
    hook: str,
    hook_fn: Callable[[torch.Tensor, object], torch.Tensor],
    n_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> Int[torch.Tensor, "2 n_tokens"]:
    """``n_tokens`` tokens after ``prompt_L``, unsteered (row 0) and through ``hook_fn`` at ``hook`` (row 1)."""
    device = model.cfg.device
    tokens_BL = prompt_L.to(device)[None].expand(2, -1).contiguous()
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 2)
    generator = torch.Generator(device=device).manual_seed(int(seed)) if temperature > 0 else None
    chosen = []
    with model.hooks(fwd_hooks=[(hook, hook_fn)]):
        logits_BLV = model(tokens_BL, past_kv_cache=cache)
        for i in range(n_tokens):
            next_B = _next_tokens(logits_BLV[:, -1], temperature, generator)
            chosen.append(next_B)
            if i + 1 < n_tokens:
                logits_BLV = model(next_B[:, None], past_kv_cache=cache)
    return torch.stack(chosen, dim=1).cpu()
