"""Splice a crosscoder into one snapshot's HookedTransformer.

At the hook of snapshot s the activation ``a`` is replaced by

    a' = a_hat_s(f) + e,    a_hat_s(f) = (f W_dec[:, s] + b_dec[s]) / c_s,    e = a - a_hat_s(f)

where f is the snapshot-s code and ``c_s`` the normalisation factor the crosscoder
was trained with (1 once folded), so the model always sees activations on its own
scale. Both come from :class:`~crosslens.crosscoders.snapshot_sae.SnapshotCodec`, the one
per-snapshot view of a crosscoder (``snapshot_sae`` is the same view as a plain SAE). With the error term kept, ``a' == a`` and the model is unchanged; editing f
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import HookedTransformer

from crosslens.activations.store import snapshot_label
from crosslens.core.errors import PartnerMismatchError
from crosslens.core.hooks import block_index, crosscoder_hook
from crosslens.core.metadata import metadata_value
from crosslens.core.progress import progress_bar
from crosslens.crosscoders.protocol import Crosscoder
from crosslens.crosscoders.snapshot_sae import SnapshotCodec

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite

SnapshotModels = Union["CheckpointSuite", Sequence[HookedTransformer]]
"""The snapshots' models: a suite (each loaded when its turn comes) or resident models, in snapshot order."""

ErrorMode = Literal["keep", "detach", "drop"]
CodeEdit = Callable[[torch.Tensor], torch.Tensor]

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


default_hook = crosscoder_hook
"""``hook`` or the hook recorded in the crosscoder's metadata (:func:`crosslens.core.hooks.crosscoder_hook`)."""


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
    """Logits of the model with the activation at ``hook`` set to ``acts``: :func:`unembed` of
    :func:`final_residual_from_hook`."""
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


def check_snapshot_model(crosscoder: Any, snapshot: int, model: Any) -> None:
    """Refuse ``model`` as the crosscoder's snapshot ``snapshot`` when both say which checkpoint
    they are and the two differ: the model's ``crosslens_snapshot`` (as a suite loads it) against
    the crosscoder's record of its snapshots, by revision and step. Neither the model id (a local
    suite's is its folder's name, which a copy changes) nor the weights' hash (taken in the dtype
    the weights were loaded in) is compared. A model built by hand, or a crosscoder without the
    record, is the caller's to pair."""
    info = getattr(model, "crosslens_snapshot", None)
    recorded = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    if info is None or not 0 <= snapshot < len(recorded) or not isinstance(recorded[snapshot], Mapping):
        return
    want, have = recorded[snapshot], info.to_dict()
    if snapshot_label(want) != snapshot_label(have) or want.get("step") != have.get("step"):
        raise PartnerMismatchError(
            f"the model given as snapshot {snapshot} is {snapshot_label(have)}, but the crosscoder's snapshot {snapshot} "
            f"is {snapshot_label(want)}; pass that snapshot's model (the crosscoder's snapshots in order: a suite "
            "selected at its steps)"
        )


def iter_snapshot_models(
    models: SnapshotModels, indices: Sequence[int] | None = None, crosscoder: Any = None
) -> Iterator[tuple[int, HookedTransformer]]:
    """``(snapshot index, model)`` one at a time from a CheckpointSuite or a sequence of models;
    with ``crosscoder``, each model is checked to be its snapshot (:func:`check_snapshot_model`)."""
    if hasattr(models, "load") and hasattr(models, "snapshots"):  # a CheckpointSuite
        chosen = range(len(models)) if indices is None else indices
        for index in chosen:
            model = models.load(index)
            if crosscoder is not None:
                check_snapshot_model(crosscoder, index, model)
            yield index, model
            del model
        return
    models = list(models)
    for index in range(len(models)) if indices is None else indices:
        if crosscoder is not None:
            check_snapshot_model(crosscoder, index, models[index])
        yield index, models[index]


def collect_activations(
    models: SnapshotModels,
    hook: str,
    tokens: Int[torch.Tensor, "n seq"],
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    crosscoder: Any = None,
) -> Float[torch.Tensor, "n seq n_snapshots d_in"]:
    """Every snapshot's activation at ``hook`` for the same tokens (exact mode's input).

    ``models`` is a CheckpointSuite (loaded one model at a time) or a sequence of
    HookedTransformers in snapshot order; with ``crosscoder``, each is checked to be its snapshot.
    """
    per_snapshot = []
    n = len(models) if hasattr(models, "__len__") else None
    for _, model in progress_bar(
        iter_snapshot_models(models, crosscoder=crosscoder), total=n, desc=f"activations at {hook}", show=progress
    ):
        per_snapshot.append(activations_at(model, hook, tokens, attention_mask, batch_size).cpu())
    return torch.stack(per_snapshot, dim=2)


def exact_codes(
    crosscoder: Crosscoder,
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
    crosscoder: Crosscoder,
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
    check_snapshot_model(crosscoder, snapshot, model)
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
