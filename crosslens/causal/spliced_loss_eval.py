"""What happens to each snapshot's language model when the crosscoder's reconstruction
replaces its activation: the standard quality measure of a sparse dictionary.

For snapshot s, on the same tokens, the next-token cross-entropy is measured three ways:

- ``ce_loss_without_sae``: the model as it is (L_clean);
- ``ce_loss_with_sae``: the activation at the hook replaced by the snapshot-s
  reconstruction ``a_hat_s(f)`` of the exact code (every snapshot's activation encoded
  together, as in training), with no error term (L_spliced);
- ``ce_loss_with_ablation``: the activation replaced by the ablation floor, zeros or the
  activation's mean over the tokens (L_ablated).

``ce_loss_score = (L_ablated - L_spliced) / (L_ablated - L_clean)`` is the share of the
loss the ablation costs that the reconstruction recovers (1: the model is unharmed; 0: no
better than the floor). The KL divergence of the next-token distribution from the clean
model's, ``kl_div_with_sae`` and ``kl_div_with_ablation``, gives
``kl_div_score = (KL_ablated - KL_spliced) / KL_ablated``. These are SAELens's names and
formulas for the same quantities (its ``model_performance_preservation`` and
``model_behavior_preservation`` metrics); ``ablation`` names the floor.

The reconstruction replaces the activation only at the positions the dictionary was trained
on, as its metadata records them (SAELens's ``seqpos_slice`` and ``exclude_special_tokens``:
BOS and the excluded tokens keep their clean activation, which the dictionary never learnt to
reconstruct), and the losses are averaged over the positions it replaced that predict a next
token (every one but the last), as SAELens's evaluation averages its cross-entropy with special
tokens excluded (its KL also counts the last position; here the KL has the CE's positions). The
ablation floor replaces every position, as SAELens's and Bayazit et al.'s floors do; a mean
floor is the mean over the trained positions. A dictionary that records neither is spliced at
every position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from crosslens.activations.store import snapshot_label
from crosslens.activations.tokens import recorded_keep_mask
from crosslens.causal import defaults
from crosslens.causal.snapshot_models import (
    SnapshotModels,
    activations_at,
    collect_activations,
    iter_snapshot_models,
    run_from_hook,
)
from crosslens.causal.splicing import exact_codes
from crosslens.core.hooks import crosscoder_hook
from crosslens.core.metadata import metadata_value
from crosslens.core.progress import progress_bar
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from crosslens.crosscoders.protocol import Crosscoder

SplicedAblation = Literal["zero", "mean"]


def _next_token_stats(
    logits_NLV: Float[torch.Tensor, "n seq d_vocab"],
    tokens_NL: Int[torch.Tensor, "n seq"],
    clean_logprobs_NPV: Float[torch.Tensor, "n seq-1 d_vocab"] | None,
    counted_NP: Bool[torch.Tensor, "n seq-1"],
) -> tuple[float, float]:
    """(summed cross-entropy, summed KL from the clean distribution) over the counted predicting
    positions (``P``: every position but the last, whose next token is not in the row)."""
    logprobs = F.log_softmax(logits_NLV[:, :-1].double(), dim=-1)
    ce = -logprobs.gather(-1, tokens_NL[:, 1:, None])[..., 0][counted_NP].sum()
    if clean_logprobs_NPV is None:
        return float(ce), 0.0
    kl = (clean_logprobs_NPV.exp() * (clean_logprobs_NPV - logprobs)).sum(-1)[counted_NP].sum()
    return float(ce), float(kl)


def trained_positions(
    dictionary: Any, tokens_NL: Int[torch.Tensor, "n seq"], tokenizer: Any = None
) -> Bool[torch.Tensor, "n seq"]:
    """The positions of ``tokens_NL`` that ``dictionary`` (a crosscoder or a SAELens SAE) was
    trained on, as its metadata records them (every position where it records nothing)."""
    return recorded_keep_mask(
        tokens_NL,
        metadata_value(dictionary, "seqpos_slice"),
        metadata_value(dictionary, "exclude_special_tokens"),
        tokenizer,
    )


MIN_FLOOR_COST = 0.05
"""Nats of next-token cross-entropy the ablation floor must cost over the clean model for
``ce_loss_score`` to be shown as a share. Below it the hook barely matters to that snapshot's
model (a randomly initialised one, say), and the share is a ratio of two differences near
their noise, free to land far outside [0, 1]. Tables then print ``n/a`` beside the raw
losses and KL, which stay meaningful; records keep the number, as SAELens computes it."""


def recovered_share(row: Mapping[str, Any]) -> float | None:
    """A spliced-loss row's ``ce_loss_score``, or None where its floor costs less than
    :data:`MIN_FLOOR_COST` nats over the clean loss."""
    if row["ce_loss_with_ablation"] - row["ce_loss_without_sae"] < MIN_FLOOR_COST:
        return None
    return row["ce_loss_score"]


def percent_or_na(share: float | None) -> str:
    """A recovered share as the tables print it."""
    return "n/a" if share is None else f"{100 * share:.1f}%"


def floor_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The line under a table that says which snapshots print ``n/a`` and why; "" when none does."""
    shown_na = [str(row["snapshot"]) for row in rows if recovered_share(row) is None]
    if not shown_na:
        return ""
    floor = rows[0]["ablation"]
    return (
        f"n/a at {', '.join(shown_na)}: {floor}-ablating the hook costs under {MIN_FLOOR_COST} nats there, "
        "so a recovered share says nothing; read CE spliced and KL"
    )


def _score(floor: float, spliced: float, best: float) -> float:
    gap = floor - best
    return float("nan") if gap == 0 else (floor - spliced) / gap


@torch.no_grad()
def spliced_loss(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    tokens_NL: Int[torch.Tensor, "n seq"],
    *,
    hook: str | None = None,
    ablation: SplicedAblation = defaults.SPLICED_ABLATION,
    norm_factors: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 16,
    labels: Sequence[str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per snapshot: the cross-entropy and KL figures above, on ``tokens_NL``.

    ``models`` is a CheckpointSuite (one model resident at a time) or the snapshots'
    HookedTransformers in the crosscoder's snapshot order; ``hook`` defaults to the hook
    the crosscoder records. ``norm_factors`` as for
    :class:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec`. ``progress`` shows a bar per
    pass over the snapshots (their activations, then the spliced runs). The reconstruction goes in
    at the positions the crosscoder was trained on (:func:`trained_positions`; each row's
    ``n_positions`` counts those that predict a next token). ``labels`` name the rows;
    by default the snapshots the crosscoder records (their revisions, as every crosslens table
    names them), else their indices.
    """
    _check_inputs(tokens_NL, ablation)
    hook = crosscoder_hook(crosscoder, hook)
    n_snapshots = crosscoder.cfg.n_snapshots
    if labels is None:
        recorded = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
        labels = [snapshot_label(entry) for entry in recorded] if len(recorded) == n_snapshots else None
    acts_NLSD = collect_activations(
        models, hook, tokens_NL, batch_size=batch_size, progress=progress, crosscoder=crosscoder
    )
    if acts_NLSD.shape[2] != n_snapshots:
        raise ValueError(f"the crosscoder reads {n_snapshots} snapshots but {acts_NLSD.shape[2]} models were given")
    rows = []
    spliced_runs = progress_bar(
        iter_snapshot_models(models, crosscoder=crosscoder), total=n_snapshots, desc="spliced loss", show=progress
    )
    for s, model in spliced_runs:
        codec = SnapshotCodec(crosscoder, s, norm_factors)
        codes = exact_codes(crosscoder, acts_NLSD, s, norm_factors=norm_factors)

        def reconstruct(rows_b: slice, codec: SnapshotCodec = codec, codes: torch.Tensor = codes) -> torch.Tensor:
            return codec.decode(codes[rows_b])

        label = labels[s] if labels is not None else str(s)
        positions_NL = trained_positions(crosscoder, tokens_NL, getattr(model, "tokenizer", None))
        rows.append(
            _spliced_row(
                model, hook, tokens_NL, acts_NLSD[:, :, s], reconstruct, ablation, batch_size, label, positions_NL
            )
        )
    return rows


def _check_inputs(tokens_NL: torch.Tensor, ablation: str) -> None:
    if ablation not in defaults.SPLICED_ABLATIONS:
        raise ValueError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    if tokens_NL.ndim != 2 or tokens_NL.shape[1] < 2:
        raise ValueError(
            f"tokens must be [n, seq] with seq >= 2 (a next token to predict), got {tuple(tokens_NL.shape)}"
        )


def _spliced_row(
    model: HookedTransformer,
    hook: str,
    tokens_NL: Int[torch.Tensor, "n seq"],
    acts_NLD: Float[torch.Tensor, "n seq d_in"],
    reconstruct: Callable[[slice], torch.Tensor],
    ablation: SplicedAblation,
    batch_size: int,
    label: str,
    positions_NL: Bool[torch.Tensor, "n seq"],
) -> dict[str, Any]:
    """One snapshot's row: ``reconstruct(rows)`` gives the model-scale reconstruction of those
    token rows, spliced in at ``positions_NL`` (the clean activation elsewhere)."""
    positions_NL = positions_NL.cpu()  # beside the activations, which are on the host; token rows may not be
    n_predicted = int(positions_NL[:, :-1].sum())
    if n_predicted == 0:
        raise ValueError(
            f"none of the {tokens_NL.shape[0]} token rows has a position the dictionary was trained on (by its recorded "
            "seqpos_slice and exclude_special_tokens) before its last: pass longer rows of text"
        )
    floor_D = acts_NLD[positions_NL].mean(dim=0) if ablation == "mean" else torch.zeros(acts_NLD.shape[-1])
    sums = {"clean": [0.0, 0.0], "spliced": [0.0, 0.0], "ablated": [0.0, 0.0]}
    device, dtype = model.cfg.device, next(model.parameters()).dtype
    for start in range(0, tokens_NL.shape[0], batch_size):
        rows_b = slice(start, start + batch_size)
        tokens = tokens_NL[rows_b].to(device)
        spliced_NL1 = positions_NL[rows_b, :, None].to(device)
        clean_logits = model(tokens)
        clean_logprobs_NPV = F.log_softmax(clean_logits[:, :-1].double(), dim=-1)
        recon = torch.where(spliced_NL1, reconstruct(rows_b).to(device, dtype), acts_NLD[rows_b].to(device, dtype))
        floor = floor_D.to(device, dtype).expand_as(recon)
        for name, logits in (
            ("clean", clean_logits),
            ("spliced", run_from_hook(model, hook, recon, tokens)),
            ("ablated", run_from_hook(model, hook, floor, tokens)),
        ):
            ce, kl = _next_token_stats(
                logits, tokens, None if name == "clean" else clean_logprobs_NPV, spliced_NL1[:, :-1, 0]
            )
            sums[name][0] += ce
            sums[name][1] += kl
    ce_clean, ce_spliced, ce_ablated = (sums[k][0] / n_predicted for k in ("clean", "spliced", "ablated"))
    kl_spliced, kl_ablated = (sums[k][1] / n_predicted for k in ("spliced", "ablated"))
    return {
        "snapshot": label,
        "ablation": ablation,
        "ce_loss_without_sae": ce_clean,
        "ce_loss_with_sae": ce_spliced,
        "ce_loss_with_ablation": ce_ablated,
        "ce_loss_score": _score(ce_ablated, ce_spliced, ce_clean),
        "kl_div_with_sae": kl_spliced,
        "kl_div_with_ablation": kl_ablated,
        "kl_div_score": _score(kl_ablated, kl_spliced, 0.0),
        "n_positions": n_predicted,
    }


@torch.no_grad()
def sae_spliced_loss(
    models: SnapshotModels,
    saes: Mapping[int, Any],
    tokens_NL: Int[torch.Tensor, "n seq"],
    *,
    hook: str,
    ablation: SplicedAblation = defaults.SPLICED_ABLATION,
    batch_size: int = 16,
    labels: Sequence[str] | None = None,
) -> dict[int, dict[str, Any]]:
    """The rows of :func:`spliced_loss` for plain per-snapshot SAELens SAEs: ``saes`` maps a
    snapshot index to the SAE trained on that snapshot alone, spliced into that snapshot's model.
    Rows are named by ``labels`` (indexed by snapshot), else by the snapshot each SAE's metadata
    records (its revision), else by index.

    An SAE that reads normalised activations records the factor in
    ``cfg.metadata["activation_norm_factor"]`` (as :mod:`crosslens.training.baselines`'s do):
    it encodes ``a * c`` and its reconstruction is divided by ``c``, back to the model's scale.
    One without that record reads the activation as it is. Each SAE is spliced at the
    positions its metadata records it was trained on (:func:`trained_positions`).
    """
    _check_inputs(tokens_NL, ablation)
    rows: dict[int, dict[str, Any]] = {}
    for s, model in iter_snapshot_models(models, sorted(saes)):
        sae = saes[s]
        recorded = sae.cfg.metadata.get("hook_name")
        if recorded is not None and recorded != hook:
            raise ValueError(
                f"the SAE of snapshot {s} was trained at {recorded!r}, not {hook!r}; splice it at its own hook"
            )
        factor = float(sae.cfg.metadata.get("activation_norm_factor") or 1.0)
        acts_NLD = activations_at(model, hook, tokens_NL)
        if sae.cfg.d_in != acts_NLD.shape[-1]:
            raise ValueError(
                f"the SAE of snapshot {s} reads d_in={sae.cfg.d_in} but {hook!r} has width {acts_NLD.shape[-1]}"
            )

        def reconstruct(
            rows_b: slice, sae: Any = sae, acts_NLD: torch.Tensor = acts_NLD, factor: float = factor
        ) -> torch.Tensor:
            x = acts_NLD[rows_b].to(sae.W_enc.device, sae.W_enc.dtype) * factor
            return sae.decode(sae.encode(x)) / factor

        label = labels[s] if labels is not None else _sae_snapshot_label(sae, s)
        positions_NL = trained_positions(sae, tokens_NL, getattr(model, "tokenizer", None))
        rows[s] = _spliced_row(model, hook, tokens_NL, acts_NLD, reconstruct, ablation, batch_size, label, positions_NL)
    return rows


def _sae_snapshot_label(sae: Any, s: int) -> str:
    """The snapshot an SAE's metadata names (its revision, as :func:`spliced_loss` names the
    crosscoder's rows), else its index."""
    entry = sae.cfg.metadata.get("snapshot")
    return snapshot_label(entry) if isinstance(entry, Mapping) and ("revision" in entry or "step" in entry) else str(s)


def format_spliced_loss(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table (one line per snapshot)."""
    floor = rows[0]["ablation"] if rows else defaults.SPLICED_ABLATION
    head = f"{'snapshot':>12s}  {'CE clean':>9s}  {'CE spliced':>10s}  {'CE ' + floor + '-abl.':>11s}  {'CE recovered':>12s}  {'KL spliced':>10s}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['snapshot']:>12s}  {row['ce_loss_without_sae']:9.4f}  {row['ce_loss_with_sae']:10.4f}  "
            f"{row['ce_loss_with_ablation']:11.4f}  {percent_or_na(recovered_share(row)):>12s}  {row['kl_div_with_sae']:10.4f}"
        )
    note = floor_note(rows)
    return "\n".join(lines + ([note] if note else []))


def spliced_record(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    store: Any,
    n_seqs: int,
    ablation: SplicedAblation = defaults.SPLICED_ABLATION,
) -> dict[str, Any]:
    """The record a quality table keeps of :func:`spliced_loss` on the first ``n_seqs`` token rows
    of an activation store (``store.sequences``), labelled with the store's snapshots::

        {"ablation", "n_seqs", "seq_len", "measured_on": store path, "crosscoder": [row per snapshot]}
    """
    from pathlib import Path

    return tokens_spliced_record(
        models, crosscoder, store.sequences[:n_seqs], store.snapshots, str(Path(store.path).resolve()), ablation
    )


def tokens_spliced_record(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    tokens_NL: Int[torch.Tensor, "n seq"],
    snapshots: Sequence[Mapping[str, Any]],
    measured_on: str,
    ablation: SplicedAblation = defaults.SPLICED_ABLATION,
) -> dict[str, Any]:
    """:func:`spliced_record` on token rows at hand (``snapshots``: the records a store's manifest
    keeps, ``{"revision", "step", ...}``, which label the rows; ``measured_on`` says where the
    rows came from)."""
    labels = [snapshot_label(s) for s in snapshots]
    return {
        "ablation": ablation,
        "n_seqs": int(tokens_NL.shape[0]),
        "seq_len": int(tokens_NL.shape[1]),
        "measured_on": measured_on,
        "crosscoder": spliced_loss(models, crosscoder, tokens_NL, ablation=ablation, labels=labels, progress=True),
    }


def add_baselines(
    record: dict[str, Any], models: SnapshotModels, saes: Mapping[tuple[str, int], Any], store: Any, hook: str
) -> dict[str, Any]:
    """``record["baselines"]``: the rows of per-snapshot SAEs (``(architecture, snapshot)`` -> SAE)
    spliced into their own snapshots' models, on the record's token rows and floor."""
    tokens_NL = store.sequences[: record["n_seqs"]]
    labels = [row["snapshot"] for row in record["crosscoder"]]
    record["baselines"] = {}
    for arch in dict.fromkeys(a for a, _ in saes):
        of_arch = {s: sae for (a, s), sae in saes.items() if a == arch}
        rows = sae_spliced_loss(models, of_arch, tokens_NL, hook=hook, ablation=record["ablation"], labels=labels)
        record["baselines"][arch] = [rows[s] for s in sorted(rows)]
    return record


def comparison_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The crosscoder beside the per-snapshot SAEs of a ``"spliced_loss"`` record (its
    ``"baselines"``: architecture -> rows), one row per snapshot that has them and model (the
    crosscoder first, then each SAE): CE spliced, CE recovered (None where the floor costs too
    little, :func:`recovered_share`) and KL. Clean and floor losses are the crosscoder table's."""
    by_label = {arch: {row["snapshot"]: row for row in rows} for arch, rows in (record.get("baselines") or {}).items()}
    out = []
    for row in record["crosscoder"]:
        beside = {f"{arch} SAE": rows[row["snapshot"]] for arch, rows in by_label.items() if row["snapshot"] in rows}
        if not beside:
            continue
        for model, measured in {"crosscoder": row, **beside}.items():
            out.append(
                {
                    "snapshot": row["snapshot"],
                    "model": model,
                    "CE spliced": measured["ce_loss_with_sae"],
                    "CE recovered": recovered_share(measured),
                    "KL spliced": measured["kl_div_with_sae"],
                }
            )
    return out


def positions_note(record: Mapping[str, Any]) -> str:
    """The line under the side-by-side table naming the SAE rows averaged over other positions
    than the crosscoder's (an SAE that records other trained positions, or none); "" when none is."""
    counts = {row["snapshot"]: row.get("n_positions") for row in record["crosscoder"]}
    differ = [
        f"{arch} SAE at {row['snapshot']} ({row.get('n_positions')} against {counts[row['snapshot']]})"
        for arch, rows in (record.get("baselines") or {}).items()
        for row in rows
        if row["snapshot"] in counts and row.get("n_positions") != counts[row["snapshot"]]
    ]
    if not differ:
        return ""
    return (
        f"averaged over other positions than the crosscoder's (its trained positions differ): {', '.join(differ)}; "
        "their CE spliced and KL do not compare with its row"
    )


def format_comparison(record: Mapping[str, Any]) -> str:
    """:func:`comparison_rows` as a plain-text table, the snapshot named once per group. Clean
    and floor losses are :func:`format_spliced_loss`'s, printed first; so is the line that
    explains an ``n/a`` recovered share."""
    rows = comparison_rows(record)
    if not rows:
        return ""
    head = f"{'snapshot':>12s}  {'model':<14s}  {'CE spliced':>10s}  {'CE recovered':>12s}  {'KL spliced':>10s}"
    lines = [head, "-" * len(head)]
    for i, row in enumerate(rows):
        snapshot = row["snapshot"] if i == 0 or rows[i - 1]["snapshot"] != row["snapshot"] else ""
        lines.append(
            f"{snapshot:>12s}  {row['model']:<14s}  {row['CE spliced']:10.4f}  "
            f"{percent_or_na(row['CE recovered']):>12s}  {row['KL spliced']:10.4f}"
        )
    note = positions_note(record)
    return "\n".join(lines + ([note] if note else []))


def spliced_where_trained(record: Mapping[str, Any]) -> bool:
    """Whether a ``"spliced_loss"`` record was measured with the reconstruction kept to the
    positions the crosscoder trained on (its rows count them); a record from before that rule
    spliced every position, BOS and the excluded tokens included."""
    return all("n_positions" in row for row in record["crosscoder"])


def positions_sentence(record: Mapping[str, Any]) -> str:
    """What a record's splice replaced, as the report and the model card say it."""
    if not spliced_where_trained(record):
        return (
            "The reconstruction replaced every position, BOS and the excluded tokens included, which the crosscoder "
            "never trained on (measured before crosslens kept them clean); the run's `crosslens train` command with "
            "--resume --eval-store STORE measures it again."
        )
    counted = record["crosscoder"][0]["n_positions"] if record["crosscoder"] else 0
    predicting = record["n_seqs"] * (record["seq_len"] - 1)
    if counted == predicting:  # a crosscoder that records no position left out, or rows that hold none
        return (
            f"The reconstruction replaced every position: the crosscoder records none of them as left out of its "
            f"training; the losses are averaged over all {predicting:,} predicting positions."
        )
    return (
        f"The reconstruction replaced the positions the crosscoder was trained on (BOS and the excluded tokens kept "
        f"their clean activation); the losses are averaged over the {counted:,} of {predicting:,} predicting "
        "positions it replaced. The floor replaced every position."
    )


def add_spliced_loss_section(report: Any, record: Mapping[str, Any]) -> Any:
    """Append the spliced-model loss of a ``"spliced_loss"`` record to a report: the raw losses
    beside the recovered share (the share alone misleads where the floor costs little), and the
    per-snapshot SAEs beside the crosscoder when the record has them."""
    floor = record["ablation"]
    report.add_heading("Spliced-model loss")
    report.add_text(
        f"Each snapshot's model run on {record['n_seqs']} token rows of {record['measured_on']} with the activation "
        f"at the hook replaced by the crosscoder's reconstruction (no error term). CE recovered = (CE {floor}-ablated "
        f"- CE spliced) / (CE {floor}-ablated - CE clean), the floor being the activation "
        + ("zeroed" if floor == "zero" else "replaced by its mean over the trained positions")
        + "; it is ill-conditioned where the floor costs little, so read it with the raw losses, and it is left "
        f"out (shown as —) where the floor costs under {MIN_FLOOR_COST} nats over clean. KL is the mean "
        "divergence of the next-token distribution from the clean model's. " + positions_sentence(record)
    )
    table = [
        {
            "snapshot": row["snapshot"],
            "CE clean": row["ce_loss_without_sae"],
            "CE spliced": row["ce_loss_with_sae"],
            f"CE {floor}-ablated": row["ce_loss_with_ablation"],
            "CE recovered": recovered_share(row),
            "KL spliced": row["kl_div_with_sae"],
            f"KL {floor}-ablated": row["kl_div_with_ablation"],
        }
        for row in record["crosscoder"]
    ]
    report.add_table(table, title="Crosscoder spliced into each snapshot", percent=["CE recovered"])
    beside = comparison_rows(record)
    if beside:
        report.add_table(
            beside, title="Crosscoder and per-snapshot SAEs of the same width and L0", percent=["CE recovered"]
        )
        note = positions_note(record)
        if note:
            report.add_text(note.capitalize() + ".")
    return report


__all__ = [
    "MIN_FLOOR_COST",
    "SplicedAblation",
    "add_baselines",
    "add_spliced_loss_section",
    "spliced_record",
    "comparison_rows",
    "format_comparison",
    "format_spliced_loss",
    "positions_note",
    "positions_sentence",
    "recovered_share",
    "sae_spliced_loss",
    "spliced_loss",
    "spliced_where_trained",
    "trained_positions",
]
