"""The quality table: a crosscoder against per-snapshot SAEs at its width and sparsity.

:func:`compare_with_saes` trains the baselines of :mod:`crosslens.training.baselines` at
the snapshots asked for, each aimed at the crosscoder's L0, evaluates everything on the
same tokens and returns :func:`quality_table` rows; :func:`format_quality_table` prints
them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sae_lens.saes.sae import SAE

from crosslens.activations import ActivationStore
from crosslens.activations.partners import processing_problem, snapshot_problem, store_suite
from crosslens.activations.store import snapshot_label
from crosslens.core.metadata import TRAINING_DETAILS_KEY
from crosslens.core.progress import progress_bar
from crosslens.training.baselines import (
    BASELINE_ARCHITECTURES,
    BASELINE_BATCH,
    BASELINE_STEPS,
    calibrate_sparsity_coefficient,
    check_architecture,
    check_snapshot,
    evaluate_sae,
    open_store,
    train_snapshot_sae,
)
from crosslens.training.metrics import EVAL_TOKENS, evaluate_crosscoder

TABLE_COLUMNS = ("crosscoder", *BASELINE_ARCHITECTURES)


def quality_table(
    crosscoder_eval: Mapping[str, Any],
    baselines: Mapping[tuple[str, int], Mapping[str, Any]],
    snapshots: Sequence[Mapping[str, Any]],
    *,
    d_sae: int | None = None,
    sparsity: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows comparing a crosscoder with per-snapshot SAEs.

    ``crosscoder_eval`` is :func:`evaluate_crosscoder`'s result, ``baselines`` maps
    ``(architecture, snapshot)`` to :func:`evaluate_sae`'s result, ``snapshots`` are the
    store's snapshot records (``store.snapshots``), which name each row as every other table
    does (:func:`~crosslens.activations.store.snapshot_label`). Rows, each with ``kind``, ``label``, ``snapshot``, ``step``
    and one value per column (``crosscoder`` then the baseline architectures; None where
    not trained):

    - ``kind="ev"``: one per snapshot, explained variance; also ``<column>_l0`` per column.
    - ``kind="l0"``: mean L0 of each column over its snapshots.
    - ``kind="dead"``: latents that never fire on the evaluated tokens (``dead_features``),
      each baseline's mean over its snapshots; None where an evaluation does not count them.
      Printed beside the sparsity because a code's unused width is what a sparser code pays.
    - ``kind="d_sae"``: width of each column (the crosscoder's from ``d_sae``).
    - ``kind="sparsity"``: how each column's sparsity was set, when ``sparsity`` is given.
    """
    ev_S = list(crosscoder_eval["explained_variance"])
    if len(snapshots) != len(ev_S):
        raise ValueError(
            f"got {len(snapshots)} snapshot records for {len(ev_S)} snapshots; pass the evaluated store's "
            "snapshot records (store.snapshots)."
        )
    for arch, snapshot in baselines:
        check_architecture(arch)
        if not 0 <= snapshot < len(ev_S):
            raise ValueError(f"baseline ({arch!r}, {snapshot}) names a snapshot outside 0..{len(ev_S) - 1}.")
    columns = ["crosscoder", *[a for a in BASELINE_ARCHITECTURES if any(b == a for b, _ in baselines)]]

    rows: list[dict[str, Any]] = []
    for s, entry in enumerate(snapshots):
        row: dict[str, Any] = {"kind": "ev", "label": snapshot_label(entry), "snapshot": s, "step": entry.get("step")}
        row["crosscoder"], row["crosscoder_l0"] = ev_S[s], crosscoder_eval.get("l0")
        for arch in columns[1:]:
            metrics = baselines.get((arch, s))
            row[arch] = None if metrics is None else metrics["explained_variance"]
            row[f"{arch}_l0"] = None if metrics is None else metrics["l0"]
        rows.append(row)

    def summary(kind: str, label: str) -> dict[str, Any]:
        return {"kind": kind, "label": label, "snapshot": None, "step": None}

    l0_row, width_row = summary("l0", "mean L0"), summary("d_sae", "d_sae")
    dead_row = summary("dead", "dead latents")
    l0_row["crosscoder"], width_row["crosscoder"] = crosscoder_eval.get("l0"), d_sae
    dead_row["crosscoder"] = crosscoder_eval.get("dead_features")
    for arch in columns[1:]:
        evals = [m for (a, _), m in sorted(baselines.items()) if a == arch]
        l0_row[arch] = sum(m["l0"] for m in evals) / len(evals)
        dead = [m.get("dead_features") for m in evals]
        dead_row[arch] = None if None in dead else sum(dead) / len(dead)
        widths = {m.get("d_sae") for m in evals} - {None}
        width_row[arch] = widths.pop() if len(widths) == 1 else None
    rows += [l0_row, dead_row, width_row]
    if sparsity:
        sparsity_row = summary("sparsity", "sparsity")
        sparsity_row.update({col: sparsity.get(col) for col in columns})
        rows.append(sparsity_row)
    return rows


def _table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {key for row in rows for key in row}
    return [col for col in TABLE_COLUMNS if col in present]


def _cell(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "ev":
        return f"{100 * value:.1f}%"
    if kind == "l0":
        return f"{value:.1f}"
    if kind == "dead":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return str(value)


def format_quality_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`quality_table` rows for a terminal: one line per snapshot with each
    column's explained variance, then mean L0, dead latents, d_sae (and sparsity settings)
    below a rule.
    Blank cells are baselines not trained at that snapshot."""
    columns = _table_columns(rows)
    header = ["", *[f"{col} EV" for col in columns]]
    body = [[str(row["label"]), *[_cell(row["kind"], row.get(col)) for col in columns]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *[c.rjust(w) for c, w in zip(cells[1:], widths[1:])]]).rstrip()

    rule = "-" * len(render(["-" * w for w in widths]))
    lines = [render(header), rule]
    ruled_summary = False
    for row, cells in zip(rows, body):
        if row["kind"] != "ev" and not ruled_summary:
            lines.append(rule)
            ruled_summary = True
        lines.append(render(cells))
    return "\n".join(lines)


def compare_with_saes(
    store: ActivationStore | str | os.PathLike,
    hook: str | None,
    crosscoder: SAE[Any],
    *,
    snapshots: Sequence[int],
    architectures: Sequence[str] = ("standard", "jumprelu", "topk"),
    d_sae: int | None = None,
    target_l0: float | None = None,
    n_steps: int = BASELINE_STEPS,
    batch_size: int = BASELINE_BATCH,
    lr: float | None = None,
    seed: int = 0,
    eval_store: ActivationStore | str | os.PathLike | None = None,
    n_eval_tokens: int = EVAL_TOKENS,
    sparsity_coefficients: Mapping[str, float] | None = None,
    calibrate: str = "per_snapshot",
    calibration_snapshot: int | None = None,
    progress: bool = True,
    trained: dict[tuple[str, int], SAE[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train per-snapshot SAEs on ``snapshots`` and tabulate them against ``crosscoder``.

    Every baseline gets the crosscoder's width (``d_sae``, default the crosscoder's) and
    aims at its L0 (``target_l0``, default the crosscoder's mean L0 on ``eval_store``):
    ``topk`` with ``k = round(target_l0)``, ``jumprelu`` through its quadratic target-L0
    loss, ``standard`` with an L1 coefficient from :func:`calibrate_sparsity_coefficient`
    (full-length runs): ``calibrate="per_snapshot"`` searches it at every snapshot (each
    search starts from the previous snapshot's coefficient, and its closest run is the
    baseline, so nothing trains twice); ``"once"`` searches at ``calibration_snapshot``
    (default: the middle of ``snapshots``) and reuses that coefficient everywhere, which
    is cheaper but lets L0 drift between snapshots. A coefficient in
    ``sparsity_coefficients`` skips the search (for ``jumprelu`` it weighs the target-L0 loss).

    Everything is evaluated on ``eval_store`` (default ``store``; pass a store of held-out
    tokens for an honest comparison). Returns :func:`quality_table` rows, with each
    baseline's achieved L0 and a ``sparsity`` row saying how each column's sparsity was
    set; print them with :func:`format_quality_table`. ``trained``, when given, receives each
    baseline SAE by ``(architecture, snapshot)`` (to splice them into their models, say).
    """
    store = open_store(store)
    hook = store.resolve_hook(hook)
    eval_store = store if eval_store is None else open_store(eval_store)
    snapshots = _check_comparison(store, eval_store, architectures, snapshots, calibrate)
    crosscoder_eval = evaluate_crosscoder(crosscoder, eval_store, hook, n_tokens=n_eval_tokens)
    train_kwargs: dict[str, Any] = dict(batch_size=batch_size, lr=lr, seed=seed, device=str(crosscoder.device))
    plan = _BaselinePlan(
        store=store,
        hook=hook,
        eval_store=eval_store,
        n_steps=n_steps,
        n_eval_tokens=n_eval_tokens,
        d_sae=int(crosscoder.cfg.d_sae) if d_sae is None else d_sae,
        target_l0=float(crosscoder_eval["l0"]) if target_l0 is None else float(target_l0),
        coefficients=dict(sparsity_coefficients or {}),
        train_kwargs=train_kwargs,
    )
    if "standard" in architectures:
        plan.standard = _standard_coefficients_up_front(plan, snapshots, calibrate, calibration_snapshot)

    baselines: dict[tuple[str, int], dict[str, Any]] = {}
    used: dict[str, set[str]] = {arch: set() for arch in architectures}
    jobs = [(s, arch) for s in snapshots for arch in architectures]
    for s, arch in progress_bar(jobs, desc="baseline SAEs", show=progress):
        sae, setting = _train_baseline(plan, s, arch)
        used[arch].add(setting)
        if trained is not None:
            trained[(arch, s)] = sae
        baselines[(arch, s)] = evaluate_sae(sae, eval_store, hook, s, n_tokens=n_eval_tokens)
    sparsity = {"crosscoder": _crosscoder_sparsity(crosscoder), **_sparsity_labels(used)}
    return quality_table(
        crosscoder_eval, baselines, eval_store.snapshots, d_sae=int(crosscoder.cfg.d_sae), sparsity=sparsity
    )


@dataclass
class _BaselinePlan:
    """What every baseline of one :func:`compare_with_saes` call shares."""

    store: ActivationStore
    hook: str
    eval_store: ActivationStore
    n_steps: int
    n_eval_tokens: int
    d_sae: int
    target_l0: float
    coefficients: dict[str, float]
    train_kwargs: dict[str, Any]
    standard: dict[int, tuple[float, SAE[Any] | None]] = field(default_factory=dict)
    """``standard``'s (L1 coefficient, SAE already trained with it or None) per snapshot."""

    @property
    def calibration_kwargs(self) -> dict[str, Any]:
        return dict(
            n_steps=self.n_steps, eval_store=self.eval_store, n_eval_tokens=self.n_eval_tokens, **self.train_kwargs
        )


def _check_comparison(
    store: ActivationStore,
    eval_store: ActivationStore,
    architectures: Sequence[str],
    snapshots: Sequence[int],
    calibrate: str,
) -> list[int]:
    """The checked snapshot indices."""
    for arch in architectures:
        check_architecture(arch)
    if calibrate not in ("per_snapshot", "once"):
        raise ValueError(f"calibrate must be 'per_snapshot' or 'once', got {calibrate!r}.")
    checked = [check_snapshot(store, s) for s in snapshots]
    if not checked:
        raise ValueError("snapshots is empty; name the snapshot indices to train baselines on.")
    problem = snapshot_problem(store.snapshots, eval_store.snapshots, require_identity=False)
    if problem is not None:
        raise ValueError(
            f"eval_store holds other snapshots than store ({problem}); harvest the held-out tokens from the same suite."
        )
    problem = processing_problem(store_suite(store), store_suite(eval_store), "store's models", "eval_store's")
    if problem is not None:
        raise ValueError(
            f"eval_store holds other activations than store ({problem}); harvest the held-out tokens from the same "
            "suite, loaded with store's processing."
        )
    return checked


def _standard_coefficients_up_front(
    plan: _BaselinePlan, snapshots: Sequence[int], calibrate: str, calibration_snapshot: int | None
) -> dict[int, tuple[float, SAE[Any] | None]]:
    """``standard``'s coefficients known before training: given, or searched once at one
    snapshot; empty for a per-snapshot search (done as each snapshot comes)."""
    if "standard" in plan.coefficients:
        return {s: (plan.coefficients["standard"], None) for s in snapshots}
    if calibrate != "once":
        return {}
    at = snapshots[len(snapshots) // 2] if calibration_snapshot is None else calibration_snapshot
    found = calibrate_sparsity_coefficient(
        plan.store, plan.hook, at, "standard", plan.d_sae, plan.target_l0, **plan.calibration_kwargs
    )
    return {s: (found.coefficient, found.sae if s == at else None) for s in snapshots}


def _train_baseline(plan: _BaselinePlan, s: int, arch: str) -> tuple[SAE[Any], str]:
    """One baseline SAE at snapshot ``s``, and how its sparsity was set."""
    store, hook, d_sae, target_l0 = plan.store, plan.hook, plan.d_sae, plan.target_l0
    if arch == "topk":
        k = max(1, round(target_l0))
        return train_snapshot_sae(store, hook, s, arch, d_sae, k=k, n_steps=plan.n_steps, **plan.train_kwargs), f"k={k}"
    if arch == "jumprelu":
        sae = train_snapshot_sae(
            store,
            hook,
            s,
            arch,
            d_sae,
            target_l0=target_l0,
            sparsity_coefficient=plan.coefficients.get(arch),
            n_steps=plan.n_steps,
            **plan.train_kwargs,
        )
        return sae, f"L0->{target_l0:.1f}"
    if s not in plan.standard:  # per-snapshot search, warm-started from the last one
        previous = [c for c, _ in plan.standard.values()]
        found = calibrate_sparsity_coefficient(
            store,
            hook,
            s,
            arch,
            d_sae,
            target_l0,
            initial=previous[-1] if previous else None,
            **plan.calibration_kwargs,
        )
        plan.standard[s] = (found.coefficient, found.sae)
    coefficient, sae = plan.standard[s]
    if sae is None:
        sae = train_snapshot_sae(
            store, hook, s, arch, d_sae, sparsity_coefficient=coefficient, n_steps=plan.n_steps, **plan.train_kwargs
        )
    return sae, f"{coefficient:.3g}"


def _sparsity_labels(used: Mapping[str, set[str]]) -> dict[str, str]:
    """The quality table's ``sparsity`` row: how each baseline column's sparsity was set."""
    labels = {}
    for arch, settings in used.items():
        if arch == "standard":
            values = sorted(settings, key=float)
            labels[arch] = "l1=" + (values[0] if len(values) == 1 else f"{values[0]}..{values[-1]}")
        else:
            labels[arch] = ",".join(sorted(settings))
    return labels


def _crosscoder_sparsity(crosscoder: SAE[Any]) -> str | None:
    """How a crosscoder's sparsity was set, read from its config (k) or training metadata."""
    k = getattr(crosscoder.cfg, "k", None)
    if k is not None:
        return f"k={k}"
    details = crosscoder.cfg.metadata.get(TRAINING_DETAILS_KEY) or {}
    for name, label in (("l1_coefficient", "l1"), ("l0_coefficient", "l0")):
        if details.get(name) is not None:
            return f"{label}={details[name]:.3g}"
    return None
