"""Plotly figures for causal results: RelIE vs RelDec, RelIE heatmap, ablation curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float

from crosslens.causal.relie import RelIEThresholds, classify_relie

_CLASS_COLOURS = {"specific": "#d62728", "shared": "#7f7f7f", "other": "#1f77b4"}


def relie_vs_reldec(
    relie_values: Float[torch.Tensor, " n_features"],
    reldec_values: Float[torch.Tensor, " n_features"],
    *,
    feature_ids: Sequence[int] | None = None,
    snapshot_label: str = "",
    thresholds: RelIEThresholds = RelIEThresholds(),
) -> go.Figure:
    """Scatter of each feature's RelIE (causal share) against its RelDec (decoder-norm share) at one snapshot."""
    x = reldec_values.detach().cpu().numpy()
    y = relie_values.detach().cpu().numpy()
    if x.shape != y.shape:
        raise ValueError(f"RelIE {y.shape} and RelDec {x.shape} need one value per feature each")
    ids = np.arange(len(x)) if feature_ids is None else np.asarray(feature_ids)
    labels = classify_relie(relie_values, thresholds)
    fig = go.Figure()
    for name, colour in _CLASS_COLOURS.items():
        chosen = labels == name
        fig.add_trace(
            go.Scatter(
                x=x[chosen],
                y=y[chosen],
                mode="markers",
                name=name,
                marker={"color": colour, "size": 7, "opacity": 0.8},
                text=[f"feature {i}" for i in ids[chosen]],
                hovertemplate="%{text}<br>RelDec %{x:.2f}<br>RelIE %{y:.2f}<extra></extra>",
            )
        )
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "black"})
    suffix = f" at {snapshot_label}" if snapshot_label else ""
    fig.update_layout(
        title=f"RelIE vs RelDec{suffix}",
        xaxis_title="RelDec (share of decoder norm)",
        yaxis_title="RelIE (share of |IE|)",
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[-0.02, 1.02],
        template="plotly_white",
    )
    return fig


def relie_heatmap(
    relie_values: Float[torch.Tensor, "n_features n_snapshots"],
    *,
    feature_ids: Sequence[int] | None = None,
    snapshot_labels: Sequence[str] | None = None,
    title: str = "RelIE over snapshots",
) -> go.Figure:
    """Heatmap of RelIE, features as rows (ordered by the snapshot of peak RelIE), snapshots as columns."""
    values = relie_values.detach().cpu().numpy()
    n_features, n_snapshots = values.shape
    ids = np.arange(n_features) if feature_ids is None else np.asarray(feature_ids)
    # Order rows by where the feature peaks, then by how sharply, so the diagonal reads as time.
    order = np.lexsort((-values.max(axis=1), values.argmax(axis=1)))
    labels = list(snapshot_labels) if snapshot_labels is not None else [f"s{i}" for i in range(n_snapshots)]
    fig = go.Figure(
        go.Heatmap(
            z=values[order],
            x=labels,
            y=[f"f{i}" for i in ids[order]],
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "RelIE"},
        )
    )
    fig.update_layout(title=title, xaxis_title="snapshot", yaxis_title="feature", template="plotly_white")
    return fig


def ablation_curves_figure(rows: Sequence[dict[str, Any]], *, value: str = "metric", title: str = "") -> go.Figure:
    """Metric vs k per snapshot: top-k lines (solid) and the random-k mean (dashed), ablate and keep-only."""
    if value not in ("metric", "accuracy"):
        raise ValueError(f"value must be 'metric' or 'accuracy', got {value!r}")
    fig = go.Figure()
    keys = sorted(
        {(r.get("label", f"s{r['snapshot']}"), r["snapshot"], r["keep_only"]) for r in rows},
        key=lambda key: (key[1], key[2]),
    )
    for label, snapshot, keep_only in keys:
        mine = [r for r in rows if r["snapshot"] == snapshot and r["keep_only"] == keep_only]
        kind = "keep top-k" if keep_only else "ablate top-k"
        top = sorted((r for r in mine if r["selection"] == "top"), key=lambda r: r["k"])
        if top:
            fig.add_trace(
                go.Scatter(
                    x=[r["k"] for r in top], y=[r[value] for r in top], mode="lines+markers", name=f"{label}: {kind}"
                )
            )
        ks = sorted({r["k"] for r in mine if r["selection"] == "random"})
        if ks:
            means = [float(np.mean([r[value] for r in mine if r["selection"] == "random" and r["k"] == k])) for k in ks]
            fig.add_trace(
                go.Scatter(
                    x=ks, y=means, mode="lines", line={"dash": "dash"}, name=f"{label}: {kind.replace('top', 'random')}"
                )
            )
    fig.update_layout(
        title=title or f"ablation curves ({value})",
        xaxis_title="k (features)",
        yaxis_title="logit[wrong] - logit[correct]" if value == "metric" else "accuracy",
        xaxis_type="log",
        template="plotly_white",
    )
    return fig
