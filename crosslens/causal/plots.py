"""Plotly figures for causal results: RelIE vs RelDec, RelIE heatmap, ablation curves."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots

from crosslens.causal.relative_ie import RelIEThresholds, classify_relie
from crosslens.htmlreport import log_axis, spaced

_CLASS_COLOURS = {
    "specific": ("specific", "#d62728"),
    "shared": ("shared", "#7f7f7f"),
    "other": ("other", "#1f77b4"),
    "below_floor": ("below the noise floor", "#e0e0e0"),
    "no_behaviour": ("no behaviour here", "#e0e0e0"),
}
_PANEL_COLUMNS = 4
"""Small multiples per row, in every figure of panels here."""


def relie_vs_reldec(
    relie_values: Float[torch.Tensor, " n_features *n_panels"],
    reldec_values: Float[torch.Tensor, " n_features *n_panels"],
    *,
    feature_ids: Sequence[int] | None = None,
    snapshot_labels: Sequence[str] | None = None,
    thresholds: RelIEThresholds = RelIEThresholds(),
    labels: np.ndarray | Sequence[Any] | None = None,
) -> go.Figure:
    """Each feature's RelIE (causal share) against its RelDec (decoder-norm share), one small
    panel per column of the inputs (a snapshot each; a 1-D input is one panel).

    ``labels`` (the inputs' shape) are the features' classes as the stage decided them, below
    the noise floor included; without them the thresholds alone class every point. RelIE spans
    0-1 in every panel with the thresholds drawn across it, since they are what the colours
    mean; each panel's RelDec spans only what its points reach, since with many snapshots a
    snapshot's share of the decoder norm is small and a 0-1 axis would crowd the points into a
    corner (one feature near 1 in one panel would do that to all of them on a shared axis)."""
    y_FP, x_FP, label_FP, names = _relie_panels(relie_values, reldec_values, snapshot_labels, thresholds, labels)
    n_features, n_panels = y_FP.shape
    ids = np.arange(n_features) if feature_ids is None else np.asarray(feature_ids)
    n_cols = min(_PANEL_COLUMNS, n_panels)
    n_rows = -(-n_panels // n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        shared_yaxes="all",
        subplot_titles=names,
        horizontal_spacing=0.04,
        vertical_spacing=0.16 / n_rows,
    )
    shown: set[str] = set()
    for panel in range(n_panels):
        where = {"row": panel // n_cols + 1, "col": panel % n_cols + 1}
        _relie_panel(fig, where, x_FP[:, panel], y_FP[:, panel], label_FP[:, panel], ids, thresholds, shown)
    fig.update_yaxes(range=[-0.02, 1.02], tickvals=[0, thresholds.other, thresholds.specific, 1])
    for row in range(1, n_rows + 1):
        fig.update_yaxes(title_text="RelIE", row=row, col=1)
    height = 120 + 320 * n_rows
    fig.update_layout(
        title={"text": "RelIE vs RelDec", "y": 1 - 12 / height, "yanchor": "top", "yref": "container"},
        template="plotly_white",
        height=height,
        margin={"t": 100},
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 1 - 44 / height,
            "yanchor": "top",
            "x": 0,
            "xanchor": "left",
        },
    )
    return fig


def _relie_panels(
    relie_values: torch.Tensor,
    reldec_values: torch.Tensor,
    snapshot_labels: Sequence[str] | None,
    thresholds: RelIEThresholds,
    labels: np.ndarray | Sequence[Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The inputs of :func:`relie_vs_reldec` as ``[features, panels]`` arrays: RelIE, RelDec and
    each point's class, with the panels' titles; inputs that do not match are refused."""
    if reldec_values.shape != relie_values.shape:
        raise ValueError(
            f"RelIE {tuple(relie_values.shape)} and RelDec {tuple(reldec_values.shape)} need one value per feature each"
        )
    if relie_values.ndim == 1:
        relie_values, reldec_values = relie_values[:, None], reldec_values[:, None]
    y_FP = relie_values.detach().cpu().numpy()
    x_FP = reldec_values.detach().cpu().numpy()
    n_features, n_panels = y_FP.shape
    names = list(snapshot_labels) if snapshot_labels is not None else [f"s{i}" for i in range(n_panels)]
    if len(names) != n_panels:
        raise ValueError(f"{len(names)} snapshot labels for {n_panels} panels; give one label per column.")
    label_FP = (
        classify_relie(relie_values, thresholds) if labels is None else np.asarray(labels).reshape(n_features, n_panels)
    )
    return y_FP, x_FP, label_FP, names


def _relie_panel(
    fig: go.Figure,
    where: dict[str, int],
    x_F: np.ndarray,
    y_F: np.ndarray,
    label_F: np.ndarray,
    ids: np.ndarray,
    thresholds: RelIEThresholds,
    shown: set[str],
) -> None:
    """One panel of :func:`relie_vs_reldec` at ``where`` (its row and column): the points in
    their classes' colours (each class in the legend once, ``shown`` holding those already
    there), the diagonal RelIE = RelDec and the thresholds across, RelDec up to what its points
    reach."""
    reach = float(np.nanmax(x_F)) if len(x_F) else 0.0
    x_max = min(1.0, math.ceil(max(0.05, reach * 1.1) * 20) / 20)  # the next 0.05 up
    fig.update_xaxes(range=[0, x_max], title_text="RelDec", **where)
    for rank, (name, (legend, colour)) in enumerate(_CLASS_COLOURS.items()):
        chosen = label_F == name
        if not chosen.any():
            continue
        fig.add_trace(
            go.Scatter(
                x=x_F[chosen],
                y=y_F[chosen],
                mode="markers",
                name=legend,
                legendgroup=name,
                legendrank=rank,
                showlegend=name not in shown,
                marker={"color": colour, "size": 6, "opacity": 0.85},
                text=[f"feature {i}" for i in ids[chosen]],
                hovertemplate="%{text}<br>RelDec %{x:.3f}<br>RelIE %{y:.2f}<extra></extra>",
            ),
            **where,
        )
        shown.add(name)
    diagonal = {"dash": "dot", "color": "black", "width": 1}
    fig.add_shape(type="line", x0=0, y0=0, x1=x_max, y1=x_max, line=diagonal, **where)
    for cut in (thresholds.other, thresholds.specific):
        across = {"dash": "dash", "color": "#999999", "width": 1}
        fig.add_shape(type="line", x0=0, x1=x_max, y0=cut, y1=cut, line=across, **where)


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
    row_names = [f"f{i}" for i in ids[order]]
    fig = go.Figure(
        go.Heatmap(
            z=values[order],
            x=labels,
            y=list(range(n_features)),
            customdata=[[name] * n_snapshots for name in row_names],
            hovertemplate="feature %{customdata}<br>%{x}<br>RelIE %{z:.2f}<extra></extra>",
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "RelIE"},
        )
    )
    # A row per feature at up to 12 px; past that, labels on every few rows, none over another.
    height = min(900, max(320, 140 + 12 * n_features))
    shown = [int(r) for r in spaced(range(n_features), min_gap=n_features * 14 / (height - 140))]
    fig.update_layout(
        title=title,
        xaxis_title="snapshot",
        template="plotly_white",
        height=height,
        yaxis={
            "title": "feature",
            "autorange": "reversed",
            "tickmode": "array",
            "tickvals": shown,
            "ticktext": [row_names[r] for r in shown],
        },
    )
    return fig


_CURVES = {
    # (keep_only, selection) -> legend name, colour, dash
    (False, "top"): ("ablate top-k", "#d62728", "solid"),
    (False, "random"): ("ablate random k", "#ff9896", "dash"),
    (True, "top"): ("keep only top-k", "#1f77b4", "solid"),
    (True, "random"): ("keep only random k", "#aec7e8", "dash"),
}


def ablation_curves_figure(
    rows: Sequence[dict[str, Any]], *, value: str = "metric", title: str = "", at_chance: Collection[str] = ()
) -> go.Figure:
    """Metric vs k, one small panel per snapshot (shared axes): top-k ablation and keep-only
    as solid lines, their random-k means dashed, in the same four colours in every panel.
    Panels of the snapshots labelled in ``at_chance`` say so in their titles.

    One panel per snapshot rather than every snapshot's lines on one axis: twelve snapshots
    times four curves is fifty lines, which no legend untangles."""
    if value not in ("metric", "accuracy"):
        raise ValueError(f"value must be 'metric' or 'accuracy', got {value!r}")
    snapshots = sorted({(r["snapshot"], r.get("label", f"s{r['snapshot']}")) for r in rows})
    n_cols = max(1, min(_PANEL_COLUMNS, len(snapshots)))
    n_rows = max(1, -(-len(snapshots) // n_cols))
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        shared_xaxes=True,
        shared_yaxes="all",
        subplot_titles=[f"{label} (at chance)" if label in at_chance else label for _, label in snapshots],
        horizontal_spacing=0.03,
        vertical_spacing=0.12 / n_rows,
    )
    for panel, (snapshot, _) in enumerate(snapshots):
        mine = [r for r in rows if r["snapshot"] == snapshot]
        for (keep_only, selection), (name, colour, dash) in _CURVES.items():
            chosen = [r for r in mine if r["keep_only"] == keep_only and r["selection"] == selection]
            ks = sorted({r["k"] for r in chosen})
            if not ks:
                continue
            ys = [float(np.mean([r[value] for r in chosen if r["k"] == k])) for k in ks]
            fig.add_trace(
                go.Scatter(
                    x=ks,
                    y=ys,
                    mode="lines+markers" if selection == "top" else "lines",
                    name=name,
                    legendgroup=name,
                    showlegend=panel == 0,
                    line={"color": colour, "dash": dash},
                    marker={"size": 4},
                ),
                row=panel // n_cols + 1,
                col=panel % n_cols + 1,
            )
    fig.update_xaxes(**log_axis([r["k"] for r in rows], max_ticks=4))
    for col in range(1, n_cols + 1):  # under each column's lowest panel (the last row may be short)
        lowest = max(p for p in range(len(snapshots)) if p % n_cols == col - 1)
        fig.update_xaxes(title_text="k (features)", showticklabels=True, row=lowest // n_cols + 1, col=col)
    y_title = "metric (wrong - correct)" if value == "metric" else "accuracy"
    for row in range(1, n_rows + 1):
        fig.update_yaxes(title_text=y_title, row=row, col=1)
    height = 150 + 200 * n_rows
    # Title, then the legend in a line of its own under it, then the panels: a legend at the
    # top right would sit under plotly's toolbar.
    fig.update_layout(
        title={
            "text": title or f"ablation curves ({value})",
            "y": 1 - 12 / height,
            "yanchor": "top",
            "yref": "container",
        },
        template="plotly_white",
        height=height,
        margin={"t": 110},
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 1 - 48 / height,
            "yanchor": "top",
            "x": 0,
            "xanchor": "left",
        },
    )
    return fig
