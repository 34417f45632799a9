"""Feature ablation through a spliced crosscoder, and ablation curves across snapshots.

Ablating a feature set A at snapshot s edits the snapshot-s code and decodes it
through that snapshot's decoder, with the error term kept, so only what A explains
changes:

- zero-ablation: ``f_i = 0`` for i in A;
- mean-ablation: ``f_i = mean f_i`` over the task's positions, for i in A;
- keep-only: ablate every feature *not* in A.

Curves (Ge et al.): the task metric after ablating the top-k features by |IE| (and
after keeping only the top-k), for a range of k, with random-k controls drawn from
the features active on the task. Only features with a nonzero IE are ranked: past them
a "top" set would be filled by feature index (a thresholded attribution zeroes every
small effect), so each top-k curve stops at the last k within them, and each row
records how many there are (``n_with_effect``).

Features are ablated at the prompt's positions only; with multi-token continuations
the model then scores both continuations under teacher forcing, their positions
unedited (see :mod:`crosslens.causal.continuations`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import HookedTransformer

from crosslens.causal.attribution import Metric, logit_diff
from crosslens.causal.continuations import check_metric, rows_from_prompt, sequences_metric
from crosslens.causal.ie_table import IETable, identity_problem, table_identity
from crosslens.causal.snapshot_models import (
    SnapshotModels,
    TaskActivations,
    activations_at,
    iter_snapshot_models,
    prepare_task,
    with_activations,
)
from crosslens.causal.splicing import CodeEdit, SpliceState, exact_codes, splice
from crosslens.core.errors import PartnerMismatchError
from crosslens.core.hooks import crosscoder_hook
from crosslens.core.progress import progress_bar
from crosslens.core.tensors import feature_index
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.tasks.base import TaskDataset, TokenizedTask

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


AblationMode = Literal["zero", "mean"]


def ablation_edit(
    features: Sequence[int] | torch.Tensor,
    d_sae: int,
    *,
    mode: AblationMode = "zero",
    keep_only: bool = False,
    mean_codes: Float[torch.Tensor, " d_sae"] | None = None,
) -> CodeEdit:
    """A code edit that zero- or mean-ablates ``features`` (or every other feature with ``keep_only``)."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean" and (mean_codes is None or mean_codes.shape != (d_sae,)):
        raise ValueError(f"mean-ablation needs mean_codes of shape [{d_sae}]; compute them with mean_feature_codes")
    index = feature_index(features, d_sae)
    ablate_F = torch.zeros(d_sae, dtype=torch.bool)
    ablate_F[index] = True
    if keep_only:
        ablate_F = ~ablate_F

    def edit(codes: torch.Tensor) -> torch.Tensor:
        where = ablate_F.to(codes.device)
        if mode == "zero":
            return torch.where(where, torch.zeros_like(codes), codes)
        return torch.where(where, mean_codes.to(codes.device, codes.dtype), codes)  # type: ignore[union-attr]

    return edit


def mean_feature_codes(
    codes: Float[torch.Tensor, "n seq d_sae"], positions: Bool[torch.Tensor, "n seq"]
) -> Float[torch.Tensor, " d_sae"]:
    """Each feature's mean code over the chosen positions (the mean-ablation value)."""
    if not bool(positions.any()):
        raise ValueError("no positions selected to average codes over")
    return codes[positions].mean(dim=0)


@contextmanager
def ablate(
    model: HookedTransformer,
    crosscoder: Crosscoder,
    *,
    snapshot: int,
    features: Sequence[int] | torch.Tensor,
    mode: AblationMode = "zero",
    keep_only: bool = False,
    mean_codes: Float[torch.Tensor, " d_sae"] | None = None,
    hook: str | None = None,
    error: Literal["keep", "detach", "drop"] = "keep",
    codes: Float[torch.Tensor, "batch seq d_sae"] | None = None,
    positions: Bool[torch.Tensor, "batch seq"] | None = None,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
) -> Iterator[SpliceState]:
    """Within the block, ``model`` runs with ``features`` ablated at snapshot ``snapshot``."""
    edit = ablation_edit(features, crosscoder.cfg.d_sae, mode=mode, keep_only=keep_only, mean_codes=mean_codes)
    with splice(
        model,
        crosscoder,
        snapshot=snapshot,
        edit=edit,
        hook=hook,
        error=error,
        codes=codes,
        positions=positions,
        norm_factors=norm_factors,
    ) as state:
        yield state


@torch.no_grad()
def task_metric(
    model: HookedTransformer,
    task: TokenizedTask,
    metric: Metric = logit_diff,
) -> Float[torch.Tensor, " n_examples"]:
    """The metric of every example (one batch) under whatever hooks are active on ``model``.

    A one-token task runs its prompts (``[n_examples, seq]``) and applies ``metric`` at the
    last position. A multi-token task runs two rows per example, prompt + correct and
    prompt + wrong (``[2 * n_examples, width]``, :meth:`TokenizedTask.sequences`), and
    returns the summed log-probability difference; hooks that take per-position inputs
    (``splice(codes=..., positions=...)``) need them in that layout
    (:func:`crosslens.causal.continuations.rows_from_prompt`).
    """
    check_metric(task, metric, logit_diff)
    if task.multi_token:
        return sequences_metric(model, task)
    logits = model(task.clean_tokens, attention_mask=task.mask.long())
    last = logits[torch.arange(len(task)), task.last_pos.to(logits.device)]
    return metric(last, task.correct_ids, task.wrong_ids).cpu()


def _chunks(task: TokenizedTask, batch_size: int) -> Iterator[tuple[slice, TokenizedTask]]:
    for start in range(0, len(task), batch_size):
        rows = slice(start, start + batch_size)
        yield rows, task[rows]


def _ranked(ie_F: torch.Tensor) -> torch.Tensor:
    """Feature indices by decreasing |IE| (ties by index, so runs are reproducible)."""
    return torch.sort(ie_F.abs(), descending=True, stable=True).indices


def _ranked_with_effect(ie_F: torch.Tensor, ks: Sequence[int], snapshot: int) -> torch.Tensor:
    """The features with a nonzero IE, by decreasing |IE| (ties by index), after checking the
    curve's ``ks``; a warning where there are none, since then no top-k curve is drawn."""
    for k in ks:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
    ranked = _ranked(ie_F)[: int((ie_F != 0).sum())]
    if not len(ranked) and any(k > 0 for k in ks):
        warnings.warn(
            f"ablation curves at snapshot {snapshot}: no feature has a nonzero IE, so there is no top-k curve, "
            "only the random-k controls; no feature moves the metric there, or an IE threshold zeroed every "
            "effect (AttributionConfig.threshold, --ie-threshold: lower it)",
            stacklevel=3,
        )
    return ranked


def ablation_curve(
    model: HookedTransformer,
    crosscoder: Crosscoder,
    task: TokenizedTask,
    ie: Float[torch.Tensor, " d_sae"],
    *,
    snapshot: int,
    ks: Sequence[int],
    hook: str | None = None,
    codes: Float[torch.Tensor, "n seq d_sae"] | None = None,
    mode: AblationMode = "zero",
    keep_only: bool = False,
    n_random: int = 3,
    seed: int = 0,
    include_bos: bool = False,
    metric: Metric = logit_diff,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Metric after ablating (or keeping only) the top-k features by |IE|, with random-k controls.

    Codes default to per-snapshot encoding; pass exact codes for exact mode. Each row:
    ``{snapshot, k, selection ("top" | "random" | "none" | "all"), seed, ablation, keep_only,
    metric (mean), accuracy (share with metric < 0), n_with_effect}``; a ``"none"`` row holds
    the unablated model. Keep-only curves also get an ``"all"`` row (every feature ablated,
    the floor a kept set restores from) and, on each kept row, ``restored``: the share
    of the clean-vs-all-ablated gap the kept set brings back.

    Only the ``n_with_effect`` features with a nonzero ``ie`` are ranked, so there is a
    ``"top"`` row only for each k up to that number; the random controls are drawn at every
    k. Where ``ie`` is zero everywhere there is no top-k curve, and a warning says so.
    """
    hook = crosscoder_hook(crosscoder, hook)
    check_metric(task, metric, logit_diff)
    ranked = _ranked_with_effect(ie, ks, snapshot)
    codec = SnapshotCodec(crosscoder, snapshot, norm_factors)
    positions = task.feature_mask(include_bos=include_bos)
    if codes is None:
        with torch.no_grad():
            codes = codec.encode_single(activations_at(model, hook, task.clean_tokens, task.mask.long())).cpu()
    mean_codes = mean_feature_codes(codes, positions) if mode == "mean" else None
    active = torch.nonzero((codes[positions] != 0).any(dim=0)).flatten()
    generator = torch.Generator().manual_seed(seed)

    settings = dict(
        snapshot=snapshot, mode=mode, keep_only=keep_only, mean_codes=mean_codes, hook=hook, norm_factors=norm_factors
    )

    def measure(features: torch.Tensor) -> torch.Tensor:
        return _ablated_metric(model, crosscoder, task, features, codes, positions, metric, batch_size, **settings)

    def row(k: int, selection: str, values: torch.Tensor, draw: int | None = None) -> dict[str, Any]:
        return {
            "snapshot": snapshot,
            "k": k,
            "selection": selection,
            "seed": draw,
            "ablation": mode,
            "keep_only": keep_only,
            "metric": float(values.mean()),
            "accuracy": float((values < 0).float().mean()),
            "n_with_effect": len(ranked),
        }

    rows = [row(0, "none", torch.cat([task_metric(model, part, metric) for _, part in _chunks(task, batch_size)]))]
    if keep_only:
        # Keeping nothing ablates everything: the floor that keep-only restoration is measured from.
        rows.append(row(0, "all", measure(ranked[:0])))
    for k in ks:
        if k <= len(ranked):  # past the features with an effect the set would be filled by index
            rows.append(row(k, "top", measure(ranked[:k])))
        for draw in range(n_random):
            pool = active if active.numel() >= k else torch.arange(codec.d_sae)
            pick = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
            rows.append(row(k, "random", measure(pick), draw))
    if keep_only:
        _add_restored(rows)
    return rows


def _ablated_metric(
    model: HookedTransformer,
    crosscoder: Crosscoder,
    task: TokenizedTask,
    features: torch.Tensor,
    codes: torch.Tensor,
    positions: torch.Tensor,
    metric: Metric,
    batch_size: int,
    **settings: Any,
) -> torch.Tensor:
    """The task metric of every example with ``features`` ablated, a batch at a time
    (``settings``: :func:`ablate`'s snapshot, mode, keep_only, mean_codes, hook, norm_factors)."""
    values = []
    for batch_rows, part in _chunks(task, batch_size):
        width = part.clean_tokens.shape[1]
        part_codes, part_positions = codes[batch_rows, :width], positions[batch_rows, :width]
        if part.multi_token:  # the rows task_metric runs: prompt + each continuation
            part_codes, part_positions = rows_from_prompt(part, part_codes, part_positions)
        with ablate(model, crosscoder, features=features, codes=part_codes, positions=part_positions, **settings):
            values.append(task_metric(model, part, metric))
    return torch.cat(values)


def _add_restored(rows: list[dict[str, Any]]) -> None:
    """On each kept row of a keep-only curve (after the ``"none"`` and ``"all"`` rows), the
    share of the clean-vs-all-ablated gap the kept set brings back."""
    clean, floor = rows[0]["metric"], rows[1]["metric"]
    gap = clean - floor
    for r in rows[2:]:
        r["restored"] = (r["metric"] - floor) / gap if abs(gap) > 1e-8 else None


def ablation_curves(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    task: TaskDataset | TokenizedTask,
    table: IETable,
    *,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50),
    hook: str | None = None,
    mode: AblationMode = "zero",
    keep_only: Sequence[bool] = (False, True),
    n_random: int = 3,
    seed: int = 0,
    exact: bool = True,
    tokenizer: Any = None,
    metric: Metric = logit_diff,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    activations: TaskActivations | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """:func:`ablation_curve` at every snapshot of ``table``, ranking by that snapshot's IE.

    With ``exact`` the codes come from every snapshot's activations on the clean prompts
    (pass ``activations`` from :func:`collect_task_activations` on this task to reuse them).
    """
    hook = crosscoder_hook(crosscoder, hook)
    prepared = prepare_task(
        models,
        crosscoder,
        task,
        hook=hook,
        tokenizer=tokenizer,
        exact=False,
        activations=activations if exact else None,
    )
    tokenized = prepared.tokenized
    S, F = int(crosscoder.cfg.n_snapshots), int(crosscoder.cfg.d_sae)
    if table.d_sae != F or any(not 0 <= s < S for s in table.snapshots):
        # another crosscoder's table would rank features that are not these
        raise ValueError(
            f"the IE table has {table.d_sae} features at snapshots {table.snapshots}; this crosscoder has {F} "
            f"features at snapshots 0 to {S - 1}: pass the table attribute() made with this crosscoder"
        )
    problem = identity_problem(table, table_identity(crosscoder, tokenized))
    if problem is not None:
        raise PartnerMismatchError(
            f"the IE table of {table.task}: {problem}; pass the table attribute() made with this crosscoder on this "
            "task, or compute one: attribute(models, crosscoder, task) (`crosslens attribute`)"
        )
    if exact and prepared.activations is None:
        prepared = with_activations(prepared, models, hook, progress=progress)
    acts_all = prepared.activations.clean if prepared.activations is not None else None
    rows: list[dict[str, Any]] = []
    pairs = iter_snapshot_models(models, table.snapshots, crosscoder)
    bar = progress_bar(pairs, total=len(table.snapshots), show=progress, desc="ablation curves")
    for column, (index, model) in enumerate(bar):
        codes = exact_codes(crosscoder, acts_all, index, norm_factors=norm_factors) if acts_all is not None else None
        rows += snapshot_ablation_rows(
            model,
            crosscoder,
            tokenized,
            table.ie[:, column],
            snapshot=index,
            label=table.snapshot_labels[column],
            task_name=table.task,
            ks=ks,
            hook=hook,
            codes=codes,
            mode=mode,
            keep_only=keep_only,
            n_random=n_random,
            seed=seed,
            metric=metric,
            norm_factors=norm_factors,
        )
    return rows


def snapshot_ablation_rows(
    model: Any,
    crosscoder: Crosscoder,
    tokenized: TokenizedTask,
    ie: Float[torch.Tensor, " d_sae"],
    *,
    snapshot: int,
    label: str,
    task_name: str,
    keep_only: Sequence[bool] = (False, True),
    **curve_options: Any,
) -> list[dict[str, Any]]:
    """One snapshot's :func:`ablation_curve` rows (ablate-top-k, then keep-only-top-k),
    ranked by that snapshot's ``ie`` and labelled with ``label`` and ``task_name``."""
    rows: list[dict[str, Any]] = []
    for keep in keep_only:
        curve = ablation_curve(model, crosscoder, tokenized, ie, snapshot=snapshot, keep_only=keep, **curve_options)
        rows.extend({**r, "label": label, "task": task_name} for r in curve)
    return rows


def top_curves_note(rows: Sequence[dict[str, Any]]) -> str:
    """A sentence for a report of ablation curves: how many features each snapshot ranks (those
    with a nonzero IE), where the top-k curves stop, and the snapshots with no top-k curve."""
    counts = {r.get("label", f"s{r['snapshot']}"): r["n_with_effect"] for r in rows if "n_with_effect" in r}
    if not counts:
        return ""
    listed = ", ".join(f"{label} {n}" for label, n in counts.items())
    note = f"Only features with a nonzero IE are ranked, so each top-k curve stops at their number ({listed})."
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        note += (
            f" No top-k curve at {', '.join(empty)}: no feature has a nonzero IE there (an IE threshold can zero "
            "every effect)."
        )
    return note


def top_k_features(ie: Float[torch.Tensor, " d_sae"], k: int) -> Int[torch.Tensor, " k"]:
    """The k features with the largest |IE| (ties by index)."""
    return _ranked(ie)[:k]
