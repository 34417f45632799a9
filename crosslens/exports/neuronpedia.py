"""``crosslens export RUN --format neuronpedia``: the batch JSON SAEDashboard writes for Neuronpedia,
one source per snapshot, from the feature database.

Neuronpedia knows one SAE per source; a crosscoder is one SAE per snapshot in its per-snapshot
mode (see :mod:`crosslens.dashboards.schema`), so each snapshot becomes a source of its own,
named ``MODEL@REVISION`` (``pythia-160m@step1000``). Layout of ``OUT``::

    crosslens_export.json                 the manifest (crosslens.exports.run), with each
                                          snapshot's folder and Neuronpedia source id
    pythia-160m@step1000/                 one folder per snapshot, as SAEDashboard's
        batch-0.json                      NeuronpediaRunner leaves its outputs_dir:
        batch-1.json ...                  features 0-127, 128-255, ... (--features-per-batch)
        skipped_indexes.json              {model_id, layer, sae_set, log_sparsity, skipped_indexes}
        explanations/batch-0.jsonl ...    the run's explanations (crosslens explain), where it has any:
                                          Neuronpedia's Explanation rows (crosslens.exports.neuronpedia_explanations)

Each ``batch-N.json`` is ``NeuronpediaDashboardBatch.to_dict()`` of SAEDashboard 0.8.0
(``sae_dashboard/neuronpedia/neuronpedia_dashboard.py``, filled by
``neuronpedia_converter.py``; read at tag v0.8.0, commit 37bb168, and unchanged in those keys
on its main branch at db4839a): ``{model_id, layer, sae_set, sae_id_suffix, features: [...]}``.
``sae_id_suffix`` is the snapshot's revision, so Neuronpedia's source id is
``LAYER-SET__REVISION`` (``6-res-crosslens__step1000``), as SAEDashboard's own
``neuronpedia_export.py`` builds it. Per feature, from the snapshot's rows of the database:

* ``frac_nonzero``, ``freq_hist_data_*``: the per-snapshot density and activation histogram
  (bin centres and counts, the empty bins at either end left out, as SAEDashboard bins from the
  feature's own minimum to maximum);
* ``pos_*``/``neg_*``: the logit effects of the snapshot's decoder direction;
* ``activations``: the top contexts (``bin_min`` -1, ``bin_max`` the maximum activation,
  ``bin_contains`` -1, as SAEDashboard's top group), then the quantile contexts from the highest
  quantile down, each with ``bin_min``/``bin_max`` the lowest and highest activation sampled at
  its quantile and ``bin_contains`` the share of all tokens in its quantile band (halfway to the
  neighbouring quantiles), where SAEDashboard samples equal-width activation intervals;
* ``neuron_alignment_*``: computed as SAEDashboard does, the 3 largest entries of the feature's
  snapshot-s decoder direction (raw activation scale) and their share of its L1 norm.

Where the database holds ``crosslens analyze``'s emergence check, ``emergence_flags.json`` beside the
folders carries each feature's verdict (contested, both emergences) and lineage events
(:mod:`crosslens.exports.emergence_flags`); the batch files keep SAEDashboard's schema.

Fields crosslens does not compute get what SAEDashboard writes when it has no data for them:
``correlated_neurons_*`` and ``correlated_features_*`` (activation correlations) ``[]``;
``logits_hist_data_*`` (a histogram over the whole vocabulary, not stored) ``[]``;
``decoder_weights_dist`` (attention heads only) ``[]``; ``vector`` ``[]`` (as its SAE runner
leaves it); no ``dfa_*`` keys. ``n_tokens_in_prompt`` is the token rows' length and
``n_prompts_total`` the tokens the statistics were computed over divided by it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.metadata import metadata_value
from crosslens.core.model_specs import snapshot_model
from crosslens.dashboards.explanation_schema import neuronpedia_layer, neuronpedia_set
from crosslens.exports.config import ExportError
from crosslens.exports.emergence_flags import write_emergence_flags
from crosslens.exports.neuronpedia_explanations import attach_run_explanations, write_explanations
from crosslens.exports.run import ExportContext, SnapshotRef

SAEDASHBOARD_VERSION = "0.8.0"
"""The SAEDashboard release whose Neuronpedia output this reproduces."""

OUT_OF_RANGE_TOKEN = "<|outofrange|>"
"""What SAEDashboard writes for a token id its vocabulary lacks."""

NEURON_ALIGNMENT_ROWS = 3
"""Rows of the neuron-alignment table (its runner's ``FeatureTablesConfig(n_rows=3)``)."""

LOG_SPARSITY = -6
"""``skipped_indexes.json``'s ``log_sparsity`` (its ``DEFAULT_SPARSITY_THRESHOLD``); no feature is
skipped, as its runner skips none."""

DECIMALS = 5
"""Values are rounded as SAEDashboard's ``round_list`` does."""


def write_export(context: ExportContext, out: Path) -> dict[str, Any]:
    """One SAEDashboard output folder per chosen snapshot; returns the manifest's ``neuronpedia``."""
    settings = source_settings(context)
    vocabulary = read_vocabulary(context)
    edges = np.asarray(context.meta("histogram_edges") or [], dtype=np.float64)
    d_sae, per_batch = int(context.crosscoder.cfg.d_sae), int(context.config.features_per_batch)
    assert context.database is not None
    explained = attach_run_explanations(context.database, context.run_dir)
    sources = []
    for ref in context.snapshots:
        model_id = snapshot_model_id(context, ref.index, settings["model_id"])
        name = f"{model_id}@{ref.label}"
        alignment = neuron_alignment(snapshot_directions(context.crosscoder, ref.index))
        for number, start in enumerate(range(0, d_sae, per_batch)):
            features = range(start, min(start + per_batch, d_sae))
            records = feature_records(context, ref, features, vocabulary, edges, alignment, settings)
            batch = {
                "model_id": model_id,
                "layer": settings["layer"],
                "sae_set": settings["sae_set"],
                "sae_id_suffix": ref.label,
                "features": records,
            }
            write_compact(out / name / f"batch-{number}.json", batch)
        skipped = {
            "model_id": model_id,
            "layer": str(settings["layer"]),
            "sae_set": settings["sae_set"],
            "log_sparsity": LOG_SPARSITY,
            "skipped_indexes": [],
        }
        write_compact(out / name / "skipped_indexes.json", skipped)
        source_id = f"{settings['layer']}-{settings['sae_set']}__{ref.label}"
        source = {
            "snapshot": ref.label,
            "folder": name,
            "neuronpedia_model_id": model_id,
            "neuronpedia_source_id": source_id,
        }
        if explained:  # crosslens explain's explanations, as Neuronpedia's dataset export lays them out
            source["explanations"] = write_explanations(context.database, out / name, model_id, source_id, ref.index)
        sources.append(source)
    flags = write_emergence_flags(context, out)
    return {
        "neuronpedia": {
            "saedashboard_version": SAEDASHBOARD_VERSION,
            "model_id": settings["model_id"],
            "layer": settings["layer"],
            "sae_set": settings["sae_set"],
            "sources": sources,
            **({"emergence_flags": flags} if flags else {}),
        }
    }


def write_compact(path: Path, value: Any) -> None:
    """JSON as SAEDashboard's ``json.dumps`` writes it (one line, ASCII, default separators)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, allow_nan=False), encoding="ascii")


def snapshot_model_id(context: ExportContext, index: int, default: str) -> str:
    """The Neuronpedia model a snapshot is filed under: the suite's, or in a diffing suite (distinct
    models), that snapshot's own model (unless --model-id names one)."""
    suite = metadata_value(context.crosscoder, "suite") or {}
    if context.config.model_id is not None or not suite.get("models"):
        return default
    return str(snapshot_model(suite, index)).rstrip("/").split("/")[-1].lower()


def source_settings(context: ExportContext) -> dict[str, Any]:
    """The batch-level fields and the per-feature constants every source shares."""
    crosscoder, config = context.crosscoder, context.config
    hook = str(metadata_value(crosscoder, "hook_name") or "")
    suite = metadata_value(crosscoder, "suite") or {}
    model_id = config.model_id or str(snapshot_model(suite, 0) or metadata_value(crosscoder, "model_name") or "model")
    if config.model_id is None:
        model_id = model_id.rstrip("/").split("/")[-1].lower()
    if "/" in model_id or "@" in model_id or not model_id:
        raise ExportError(f"model_id must be a Neuronpedia model id (no '/' or '@'), got {model_id!r}; pass --model-id")
    tokens = context.meta("tokens")
    tokens = tokens if isinstance(tokens, dict) else {}
    row_length = int(tokens.get("seq_len") or metadata_value(crosscoder, "context_size") or 0)
    n_tokens = int(context.meta("n_tokens") or 0)
    return {
        "model_id": model_id,
        "layer": neuronpedia_layer(hook),
        "sae_set": config.set_name or neuronpedia_set(hook),
        "n_prompts_total": n_tokens // row_length if row_length else 0,
        "n_tokens_in_prompt": row_length,
        "dataset": str(tokens.get("dataset") or tokens.get("text") or ""),
    }


def read_vocabulary(context: ExportContext) -> dict[int, str]:
    """Token id -> its text, from the database's vocabulary table."""
    assert context.database is not None
    return {int(token): str(text) for token, text in context.database.execute("SELECT token_id, text FROM vocabulary")}


def snapshot_directions(crosscoder: Any, snapshot: int) -> torch.Tensor:
    """Every feature's snapshot-s decoder direction on the raw activation scale, ``[d_sae, d_in]``."""
    from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec

    with torch.no_grad():
        return SnapshotCodec(crosscoder, snapshot).raw_weights()["W_dec"].detach().float().cpu()


def neuron_alignment(directions: torch.Tensor) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
    """Per feature: the indices and values of its direction's largest entries and their share of
    its L1 norm (0 for a zero direction), as SAEDashboard's ``add_neuron_alignment_data``."""
    k = min(NEURON_ALIGNMENT_ROWS, directions.shape[1])
    top = torch.topk(directions, k=k, dim=1, largest=True)
    l1 = directions.abs().sum(dim=1, keepdim=True)
    share = torch.where(l1 > 0, top.values.abs() / l1.clamp(min=1e-30), torch.zeros_like(top.values))
    return top.indices.tolist(), rounded(top.values), rounded(share)


def rounded(values: Any) -> Any:
    """Floats rounded to :data:`DECIMALS` (nested lists kept)."""
    array = np.asarray(values.numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    return np.round(array, DECIMALS).tolist()


def blob(value: bytes, dtype: str) -> np.ndarray:
    """A database blob as the numpy array its column names."""
    return np.frombuffer(value, dtype=dtype)


def token_texts(ids: np.ndarray, vocabulary: dict[int, str]) -> list[str]:
    """Token ids as text, :data:`OUT_OF_RANGE_TOKEN` for ids the vocabulary lacks."""
    return [vocabulary.get(int(token), OUT_OF_RANGE_TOKEN) for token in ids]


def histogram_bars(counts: np.ndarray, edges: np.ndarray) -> tuple[list[float], list[int]]:
    """Bin centres and counts of a histogram, empty bins at either end left out."""
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0 or edges.size != counts.size + 1:
        return [], []
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    centres = (edges[lo:hi] + edges[lo + 1 : hi + 1]) / 2
    return rounded(centres), [int(c) for c in counts[lo:hi]]


def feature_records(
    context: ExportContext,
    ref: SnapshotRef,
    features: range,
    vocabulary: dict[int, str],
    edges: np.ndarray,
    alignment: tuple[list, list, list],
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """``NeuronpediaDashboardFeature.to_dict()`` of each feature in ``features`` at snapshot ``ref``."""
    assert context.database is not None
    rows = context.database.execute(
        "SELECT feature, density, max_activation, histogram, logit_top_ids, logit_top_values, "
        "logit_bottom_ids, logit_bottom_values FROM feature_snapshots "
        "WHERE feature >= ? AND feature < ? AND snapshot = ? ORDER BY feature",
        (features.start, features.stop, ref.index),
    ).fetchall()
    by_feature = {int(row[0]): row for row in rows}
    missing = [f for f in features if f not in by_feature]
    if missing:
        raise ExportError(
            f"the feature database in {context.run_dir} has no row for feature {missing[0]} at snapshot "
            f"{ref.label} (it is incomplete); compute it again with `crosslens dashboards {context.run_dir} --overwrite`"
        )
    contexts = grouped_contexts(context, ref, features)
    indices, values, shares = alignment
    records = []
    for feature in features:
        _, density, max_activation, histogram, top_ids, top_values, bottom_ids, bottom_values = by_feature[feature]
        bar_values, bar_heights = histogram_bars(blob(histogram, "<u4"), edges)
        records.append(
            {
                "feature_index": feature,
                "neuron_alignment_indices": indices[feature],
                "neuron_alignment_values": values[feature],
                "neuron_alignment_l1": shares[feature],
                "correlated_neurons_indices": [],
                "correlated_neurons_l1": [],
                "correlated_neurons_pearson": [],
                "correlated_features_indices": [],
                "correlated_features_l1": [],
                "correlated_features_pearson": [],
                "neg_str": token_texts(blob(bottom_ids, "<i4"), vocabulary),
                "neg_values": rounded(blob(bottom_values, "<f4")),
                "pos_str": token_texts(blob(top_ids, "<i4"), vocabulary),
                "pos_values": rounded(blob(top_values, "<f4")),
                "frac_nonzero": float(density),
                "freq_hist_data_bar_values": bar_values,
                "freq_hist_data_bar_heights": bar_heights,
                "logits_hist_data_bar_heights": [],
                "logits_hist_data_bar_values": [],
                "n_prompts_total": settings["n_prompts_total"],
                "n_tokens_in_prompt": settings["n_tokens_in_prompt"],
                "dataset": settings["dataset"],
                "decoder_weights_dist": [],
                "activations": activation_records(
                    contexts.get(feature, []), float(max_activation), float(density), vocabulary
                ),
                "vector": [],
            }
        )
    return records


def grouped_contexts(context: ExportContext, ref: SnapshotRef, features: range) -> dict[int, list[tuple]]:
    """Each feature's context rows at snapshot ``ref``: (kind, rank, pos, activation, quantile,
    first_pos, token_ids, activations), ordered by kind and rank."""
    assert context.database is not None
    grouped: dict[int, list[tuple]] = {}
    for row in context.database.execute(
        "SELECT feature, kind, rank, pos, activation, quantile, first_pos, token_ids, activations FROM contexts "
        "WHERE feature >= ? AND feature < ? AND snapshot = ? ORDER BY feature, kind, rank",
        (features.start, features.stop, ref.index),
    ):
        grouped.setdefault(int(row[0]), []).append(tuple(row[1:]))
    return grouped


def activation_records(
    rows: list[tuple], max_activation: float, density: float, vocabulary: dict[int, str]
) -> list[dict[str, Any]]:
    """``NeuronpediaDashboardActivation.to_dict()`` of a feature's contexts: the top group, then
    the quantile groups from the highest quantile down."""
    top = [row for row in rows if row[0] == "top"]
    quantile = sorted((row for row in rows if row[0] == "quantile"), key=lambda row: (-(row[4] or 0.0), row[1]))
    records = [activation_record(row, -1, round(max_activation, DECIMALS), -1, vocabulary) for row in top]
    bands = quantile_bands([row[4] for row in quantile if row[4] is not None], density)
    for q in sorted({row[4] for row in quantile if row[4] is not None}, reverse=True):
        group = [row for row in quantile if row[4] == q]
        acts = [float(row[3]) for row in group]
        bin_min, bin_max = round(min(acts), DECIMALS), round(max(acts), DECIMALS)
        records += [activation_record(row, bin_min, bin_max, bands[q], vocabulary) for row in group]
    return records


def quantile_bands(quantiles: list[float], density: float) -> dict[float, float]:
    """Quantile -> the share of all tokens in its band: the firing tokens between the midpoints to
    its neighbouring quantiles (0 and 1 at the ends), times the density."""
    levels = sorted(set(quantiles))
    bands = {}
    for i, q in enumerate(levels):
        lo = 0.0 if i == 0 else (levels[i - 1] + q) / 2
        hi = 1.0 if i == len(levels) - 1 else (q + levels[i + 1]) / 2
        bands[q] = round((hi - lo) * density, DECIMALS)
    return bands


def activation_record(
    row: tuple, bin_min: float, bin_max: float, bin_contains: float, vocabulary: dict[int, str]
) -> dict[str, Any]:
    """One context as SAEDashboard writes a sequence: its tokens, the feature's activation on each,
    and the index of the token it was chosen for."""
    _, _, pos, _, _, first_pos, token_ids, activations = row
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": bin_contains,
        "tokens": token_texts(blob(token_ids, "<i4"), vocabulary),
        "values": rounded(blob(activations, "<f2").astype(np.float32)),
        "qualifying_token_index": int(pos) - int(first_pos),
    }
