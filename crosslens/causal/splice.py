"""Splice a crosscoder into one snapshot's HookedTransformer.

At the hook of snapshot s the activation ``a`` is replaced by

    a' = a_hat_s(f) + e,    a_hat_s(f) = (f W_dec[:, s] + b_dec[s]) / c_s,    e = a - a_hat_s(f)

where f is the snapshot-s code and ``c_s`` the normalisation factor the crosscoder
was trained with (1 once folded), so the model always sees activations on its own
scale. With the error term kept, ``a' == a`` and the model is unchanged; editing f
(ablation, patching) then changes only what the crosscoder explains. The error can
also be detached (same values, no gradient to earlier layers) or dropped (the model
runs on the reconstruction alone).

The snapshot-s code. For ReLU/TopK/BatchTopK crosscoders it is the shared code
``encode(x)``. A JumpReLU crosscoder gates each feature per snapshot; its snapshot-s
code is ``encode_per_snapshot(x)[..., s, :]``, which is exactly what the crosscoder's
own ``decode(encode(x))`` feeds snapshot s. Decoding that code is linear, so
interpolating or zeroing it never re-gates.

Two ways to get the code, because the shared code reads every snapshot's activation
of the same token:

- **exact** (:func:`collect_activations` + :func:`exact_codes`): run every snapshot up
  to the hook on the task inputs (one model resident at a time), cache
  ``[n, seq, S, d_in]``, and encode that. This is the code the crosscoder was trained
  to produce; use it for attribution and ablation results you report.
- **per-snapshot** (the default when no ``codes`` are given): encode with snapshot
  s's encoder slice only, as if the other snapshots' activations were absent
  (``h = x_s W_enc[s] + b_enc``). It needs only the model at hand (interactive use,
  generation, a snapshot outside the crosscoder's training inputs' reach), but the
  code is off the training distribution: features driven mostly by other snapshots
  are weaker or missing, and the error term absorbs the difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from crosslens.core.hooks import block_index, crosscoder_hook
from crosslens.crosscoders.folding import resolve_norm_factors

ErrorMode = Literal["keep", "detach", "drop"]
CodeEdit = Callable[[torch.Tensor], torch.Tensor]

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class SnapshotCodec:
    """Snapshot s's view of a crosscoder, on the model's own activation scale."""

    def __init__(
        self,
        crosscoder: Any,
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

    def _snapshot_code(self, x_NSD: torch.Tensor) -> torch.Tensor:
        if hasattr(self.crosscoder, "encode_per_snapshot"):
            return self.crosscoder.encode_per_snapshot(x_NSD)[..., self.snapshot, :]
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
        x_ND = acts.reshape(-1, self.d_in).to(self.device, self.dtype) * self.factors_S[self.snapshot].to(self.dtype)
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
        return recon / self.factors_S[self.snapshot].to(self.dtype)

    def decode_grad(self, grad_acts: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Pull a gradient w.r.t. the reconstruction back to the code: ``g W_dec[:, s]^T / c_s``."""
        W_dec_FD = self.crosscoder.W_dec[:, self.snapshot, :].detach()
        grad_codes = grad_acts.to(self.device, self.dtype) @ W_dec_FD.T
        return grad_codes / self.factors_S[self.snapshot].to(self.dtype)

    def bias(self) -> Float[torch.Tensor, " d_in"]:
        """The reconstruction of the all-zero code, ``b_dec[s] / c_s``."""
        return (self.crosscoder.b_dec[self.snapshot] / self.factors_S[self.snapshot]).detach()


# ---------------------------------------------------------------------------- running models
def _check_hook(model: HookedTransformer, hook: str) -> None:
    if hook not in model.hook_dict:
        near = [name for name in model.hook_dict if name.split(".")[-1] == hook.split(".")[-1]][:4]
        raise ValueError(f"the model has no hook {hook!r}; hooks with that ending: {near or 'none'}")


def final_residual_from_hook(
    model: HookedTransformer,
    hook: str,
    acts: Float[torch.Tensor, "batch seq d_in"],
    tokens: Int[torch.Tensor, "batch seq"],
    attention_mask: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch seq d_model"]:
    """The final residual stream (before ``ln_final``) with the activation at ``hook`` set to ``acts``.

    Residual-stream hooks start the forward pass at the block after the hook, so the
    layers before it are not recomputed; any other hook replaces the activation
    inside a full forward pass.
    """
    n_layers = model.cfg.n_layers
    resid = _RESID_HOOK.match(hook)
    if resid is not None:
        layer = int(resid.group(1)) + (resid.group(2) == "post")
        if layer == n_layers:
            return acts
        return model(acts, start_at_layer=layer, stop_at_layer=n_layers, attention_mask=attention_mask)

    def replace(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return acts

    with model.hooks(fwd_hooks=[(hook, replace)]):
        return model(tokens, stop_at_layer=n_layers, attention_mask=attention_mask)


def unembed(model: HookedTransformer, resid: Float[torch.Tensor, "batch seq d_model"]) -> torch.Tensor:
    """Logits from a final residual stream: ``ln_final``, unembedding, soft-cap (as the model does)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def run_from_hook(
    model: HookedTransformer,
    hook: str,
    acts: Float[torch.Tensor, "batch seq d_in"],
    tokens: Int[torch.Tensor, "batch seq"],
    attention_mask: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch seq d_vocab"]:
    """Logits of the model with the activation at ``hook`` set to ``acts``."""
    return unembed(model, final_residual_from_hook(model, hook, acts, tokens, attention_mask))


@torch.no_grad()
def activations_at(
    model: HookedTransformer,
    hook: str,
    tokens: Int[torch.Tensor, "n seq"],
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> Float[torch.Tensor, "n seq d_in"]:
    """The activation at ``hook`` for every token, stopping the forward pass right after it."""
    _check_hook(model, hook)
    layer = block_index(hook)
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        _, cache = model.run_with_cache(
            tokens[rows],
            names_filter=[hook],
            stop_at_layer=None if layer is None else layer + 1,
            attention_mask=None if attention_mask is None else attention_mask[rows],
        )
        out.append(cache[hook].detach().cpu())
    return torch.cat(out, dim=0)


def iter_snapshot_models(
    models: Any, indices: Sequence[int] | None = None
) -> Iterator[tuple[int, HookedTransformer]]:
    """``(snapshot index, model)`` one at a time from a CheckpointSuite or a sequence of models."""
    if hasattr(models, "load") and hasattr(models, "snapshots"):  # a CheckpointSuite
        chosen = range(len(models)) if indices is None else indices
        for index in chosen:
            model = models.load(index)
            yield index, model
            del model
        return
    models = list(models)
    for index in range(len(models)) if indices is None else indices:
        yield index, models[index]


def collect_activations(
    models: Any,
    hook: str,
    tokens: Int[torch.Tensor, "n seq"],
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Float[torch.Tensor, "n seq n_snapshots d_in"]:
    """Every snapshot's activation at ``hook`` for the same tokens (exact mode's input).

    ``models`` is a CheckpointSuite (loaded one model at a time) or a sequence of
    HookedTransformers in snapshot order.
    """
    per_snapshot = []
    n = len(models) if hasattr(models, "__len__") else None
    for _, model in tqdm(iter_snapshot_models(models), total=n, desc=f"activations at {hook}", disable=not progress):
        per_snapshot.append(activations_at(model, hook, tokens, attention_mask, batch_size).cpu())
    return torch.stack(per_snapshot, dim=2)


def exact_codes(
    crosscoder: Any,
    acts: Float[torch.Tensor, "... n_snapshots d_in"],
    snapshot: int,
    *,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 4096,
) -> Float[torch.Tensor, "... d_sae"]:
    """The snapshot-s code of every token from all snapshots' activations (no gradient; on the CPU)."""
    codec = SnapshotCodec(crosscoder, snapshot, norm_factors)
    lead = acts.shape[:-2]
    flat = acts.reshape(-1, *acts.shape[-2:])
    with torch.no_grad():
        codes = [codec.encode(flat[i : i + batch_size]).cpu() for i in range(0, flat.shape[0], batch_size)]
    return torch.cat(codes, dim=0).reshape(*lead, codec.d_sae)


# ---------------------------------------------------------------------------- splicing
@dataclass
class SpliceState:
    """What the splice saw on its latest forward pass (for inspection and tests)."""

    codes: torch.Tensor | None = None
    """The snapshot-s code before any edit, ``[batch, seq, d_sae]``."""
    error: torch.Tensor | None = None
    """``a - a_hat_s`` from the unedited code, ``[batch, seq, d_in]``."""
    n_calls: int = 0
    """How many times the hook fired."""


@contextmanager
def splice(
    model: HookedTransformer,
    crosscoder: Any,
    *,
    snapshot: int,
    hook: str | None = None,
    error: ErrorMode = "keep",
    codes: Float[torch.Tensor, "batch seq d_sae"] | None = None,
    edit: CodeEdit | None = None,
    positions: Bool[torch.Tensor, "batch seq"] | None = None,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
) -> Iterator[SpliceState]:
    """Within the block, ``model`` runs with the crosscoder spliced in at ``hook``.

    Args:
        model: snapshot ``snapshot``'s HookedTransformer.
        crosscoder: a crosslens crosscoder trained on this hook.
        snapshot: which of the crosscoder's snapshots the model is.
        hook: hook name (default: the crosscoder's metadata ``hook_name``).
        error: ``"keep"`` the error term, ``"detach"`` it (no gradient through it) or
            ``"drop"`` it (run on the reconstruction alone).
        codes: precomputed snapshot-s codes for the exact inputs about to be run
            (exact mode, :func:`exact_codes`); None encodes per snapshot from the model's
            own activation.
        edit: a function applied to the code before decoding (ablation, patching);
            the error term is always computed from the unedited code.
        positions: where to splice (True); elsewhere the activation passes through
            unchanged. None splices everywhere.
        norm_factors: override the crosscoder's normalisation factors.

    Hooks are removed on exit, also when the block raises.
    """
    if error not in ("keep", "detach", "drop"):
        raise ValueError(f"error must be 'keep', 'detach' or 'drop', got {error!r}")
    hook = crosscoder_hook(crosscoder, hook)
    _check_hook(model, hook)
    codec = SnapshotCodec(crosscoder, snapshot, norm_factors)
    state = SpliceState()

    def splice_hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        if codes is None:
            f = codec.encode_single(activation)
        else:
            if tuple(codes.shape[:-1]) != tuple(activation.shape[:-1]):
                raise ValueError(
                    f"precomputed codes {tuple(codes.shape)} do not match the activation "
                    f"{tuple(activation.shape)} at {hook.name}; compute codes for exactly the tokens being run"
                )
            f = codes.to(activation.device, codec.dtype)
        recon = codec.decode(f)
        err = activation - recon.to(activation.dtype)
        state.codes, state.error, state.n_calls = f.detach(), err.detach(), state.n_calls + 1
        edited = recon if edit is None else codec.decode(edit(f))
        spliced = edited.to(activation.dtype)
        if error == "keep":
            spliced = spliced + err
        elif error == "detach":
            spliced = spliced + err.detach()
        if positions is not None:
            spliced = torch.where(positions.to(activation.device)[..., None], spliced, activation)
        return spliced

    with model.hooks(fwd_hooks=[(hook, splice_hook)]):
        yield state
