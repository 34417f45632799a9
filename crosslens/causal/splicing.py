"""Splice a crosscoder into one snapshot's HookedTransformer.

At the hook of snapshot s the activation ``a`` is replaced by

    a' = a_hat_s(f) + e,    a_hat_s(f) = (f W_dec[:, s] + b_dec[s]) / c_s,    e = a - a_hat_s(f)

where f is the snapshot-s code and ``c_s`` the normalisation factor the crosscoder
was trained with (1 once folded), so the model always sees activations on its own
scale. Both come from :class:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec`, the one
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

- **exact** (:func:`~crosslens.causal.snapshot_models.collect_activations` + :func:`exact_codes`): run every snapshot up
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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from transformer_lens import HookedTransformer

from crosslens.causal.snapshot_models import check_hook, check_snapshot_model
from crosslens.core.hooks import crosscoder_hook
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.crosscoders.protocol import Crosscoder

ErrorMode = Literal["keep", "detach", "drop"]
CodeEdit = Callable[[torch.Tensor], torch.Tensor]


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
    check_hook(model, hook)
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
