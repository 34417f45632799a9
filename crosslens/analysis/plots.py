"""Plotly figures of feature evolution. Every function returns a ``go.Figure``.

Snapshot axes are placed by snapshot index and labelled with training steps: suites are
sampled densely early and sparsely late (0, 2, 4, ..., 143k), so equal spacing per
snapshot reads like a log step axis and still has a place for step 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.probes import ProbeValidation
from crosslens.htmlreport import log_axis, spaced

CLASS_COLORS = {
    "initialization": "#7f7f7f",
    "persistent": "#1f77b4",
    "transient": "#d62728",
    "dead": "#c7c7c7",
}
_MAX_TICKS = 16


def _format_step(step: int) -> str:
    """143000 -> "143k", 2500 -> "2.5k", 204800000 -> "204.8M"."""
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if abs(step) >= size:
            return f"{step / size:.4g}{suffix}"
    return str(step)


def _snapshot_axis(steps: Sequence[int], title: str = "training step") -> dict:
    stride = max(1, -(-len(steps) // _MAX_TICKS))
    ticks = list(range(0, len(steps), stride))
    return {
        "title": title,
        "tickmode": "array",
        "tickvals": ticks,
        "ticktext": [_format_step(steps[i]) for i in ticks],
    }


def _analysis_axis(analysis: EvolutionAnalysis, x: str) -> dict:
    """Snapshot axis labelled by training step (``x="step"``) or tokens seen (``"tokens"``)."""
    if x == "step":
        return _snapshot_axis(analysis.steps)
    if x == "tokens":
        if any(t is None for t in analysis.tokens_seen):
            raise ValueError(
                "tokens_seen is unknown for some snapshots; use x='step' or pass tokens_seen to the analysis."
            )
        return _snapshot_axis([int(t) for t in analysis.tokens_seen], title="training tokens")  # type: ignore[arg-type]
    raise ValueError(f"x={x!r}: use 'step' or 'tokens'.")


def evolution_heatmap(
    analysis: EvolutionAnalysis,
    normalized: bool = True,
    include_dead: bool = False,
    max_features: int = 600,
    x: str = "step",
) -> go.Figure:
    """Features x snapshots heatmap of decoder norms, rows sorted by emergence.

    With more than ``max_features`` features, rows are thinned evenly along the sorted
    order so the shape of the picture survives. ``x`` labels the snapshot axis with
    ``"step"`` or ``"tokens"``.
    """
    order = analysis.emergence_order()
    if not include_dead:
        order = [i for i in order if analysis.classes[i] != "dead"]
    if len(order) > max_features:
        keep = torch.linspace(0, len(order) - 1, max_features).round().long().tolist()
        order = [order[k] for k in keep]
    table_FS = analysis.normalized if normalized else analysis.norms
    z = table_FS[order].tolist() if order else [[0.0] * analysis.n_snapshots]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(analysis.n_snapshots)),
            y=list(range(len(order))),
            customdata=[[[i, analysis.classes[i], step] for step in analysis.steps] for i in order],
            hovertemplate=(
                "feature %{customdata[0]} (%{customdata[1]})<br>step %{customdata[2]}<br>norm %{z:.3f}<extra></extra>"
            ),
            colorscale="Viridis",
            meta={"link": "feature"},  # a click opens the row's feature in crosslens browse
            zmin=0.0,
            zmax=1.0 if normalized else None,
            colorbar={"title": "norm / peak" if normalized else "decoder norm"},
        )
    )
    # The sort made visible: a white staircase through each row's emergence snapshot, and a
    # tick at the first row of each emergence step.
    emergence = [int(analysis.lifetimes.emergence[i]) for i in order]
    if order and all(e != NO_STEP for e in emergence):
        fig.add_trace(
            go.Scatter(
                x=emergence,
                y=list(range(len(order))),
                mode="lines",
                line={"color": "white", "width": 1.5},
                line_shape="hv",
                name="emergence",
                hoverinfo="skip",
                showlegend=False,
            )
        )
    starts = [row for row, e in enumerate(emergence) if e != NO_STEP and (row == 0 or e != emergence[row - 1])]
    # Labels at least ~16 px apart in the plot's ~400 px of rows, so none is drawn over another.
    shown = [int(r) for r in spaced(starts, min_gap=len(order) * 16 / 400)]
    fig.update_layout(
        title=f"Decoder norm of {len(order)} features, sorted by emergence step (white line: where each emerges)",
        xaxis=_analysis_axis(analysis, x),
        yaxis={
            "title": "features, by emergence step",
            "autorange": "reversed",
            "tickmode": "array",
            "tickvals": shown,
            "ticktext": [f"from {_format_step(analysis.steps[emergence[r]])}" for r in shown],
        },
        height=520,
    )
    return fig


def emergence_histogram(analysis: EvolutionAnalysis) -> go.Figure:
    """How many features emerge at each step, on a log step axis, stacked by class.

    Initialization features (present from the first snapshot) have no place on a log axis
    when it is step 0; their count is in the title, with what the class means for these
    snapshots (:meth:`EvolutionAnalysis.initialization_words`). Dead features are left out.
    """
    lt = analysis.lifetimes
    n_init = len(analysis.features_of_class("initialization"))
    width = _log_bar_widths([s for s in analysis.steps if s > 0])
    fig = go.Figure()
    plotted: list[int] = []
    for name in ("persistent", "transient"):
        members = analysis.features_of_class(name)
        counts: dict[int, int] = {}
        for i in members:
            step = analysis.steps[int(lt.emergence[i])]
            counts[step] = counts.get(step, 0) + 1
        steps = sorted(s for s in counts if s > 0)
        plotted += steps
        fig.add_trace(
            go.Bar(
                x=steps,
                y=[counts[s] for s in steps],
                width=[width[s] for s in steps],
                name=name,
                marker_color=CLASS_COLORS[name],
            )
        )
    fig.update_layout(
        barmode="stack",
        title=f"Emergence steps of emergent features ({n_init} initialization features, present {analysis.initialization_words()}, not shown)",
        xaxis=log_axis(plotted, title="emergence step", max_ticks=10, label=lambda s: _format_step(int(s))),
        yaxis={"title": "features"},
        height=400,
    )
    return fig


def _log_bar_widths(steps: Sequence[int]) -> dict[int, float]:
    """Bar widths, in step units, for bars at ``steps`` on a log axis: proportional to the step,
    so that bars look alike across decades (plotly's default width is a fraction of the smallest
    gap, invisible there), but never wider than 0.6 of the gap to a neighbouring step, so that
    bars at close steps (240, 288, 336) do not overlap."""
    ordered = sorted(set(steps))
    widths = {}
    for i, step in enumerate(ordered):
        gaps = [abs(step - ordered[j]) for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
        widths[step] = min([0.3 * step] + [0.6 * g for g in gaps])
    return widths


def feature_trajectories(
    analysis: EvolutionAnalysis,
    features: Sequence[int],
    normalized: bool = False,
    x: str = "step",
    title: str = "Feature trajectories",
) -> go.Figure:
    """Decoder norm over training of chosen features, one line each, with emergence and
    fade marked. ``x`` labels the snapshot axis with ``"step"`` or ``"tokens"``; the markers'
    key follows ``title``."""
    table_FS = analysis.normalized if normalized else analysis.norms
    fig = go.Figure()
    snapshots = list(range(analysis.n_snapshots))
    for i in features:
        i = int(i)
        fig.add_trace(
            go.Scatter(
                x=snapshots,
                y=table_FS[i].tolist(),
                mode="lines+markers",
                name=f"#{i} ({analysis.classes[i]})",
                customdata=analysis.steps,
                meta={"link": "feature", "feature": i},
                hovertemplate=f"feature {i}<br>step %{{customdata}}<br>norm %{{y:.3f}}<extra></extra>",
            )
        )
        for index, symbol in (
            (int(analysis.lifetimes.emergence[i]), "triangle-up"),
            (int(analysis.lifetimes.fade[i]), "x"),
        ):
            if index != NO_STEP:
                fig.add_trace(
                    go.Scatter(
                        x=[index],
                        y=[float(table_FS[i, index])],
                        mode="markers",
                        marker={"symbol": symbol, "size": 12, "color": "black"},
                        showlegend=False,
                        hoverinfo="skip",
                    )
                )
    fig.update_layout(
        title=f"{title} (triangle: emergence, x: fade)",
        xaxis=_analysis_axis(analysis, x),
        yaxis={"title": "norm / peak" if normalized else "decoder norm"},
        height=420,
    )
    return fig


def dimensionality_curve(
    total: torch.Tensor,
    steps: Sequence[int],
    turning_index: int | None = None,
) -> go.Figure:
    """Total feature dimensionality per snapshot; the compress-then-expand turning point
    (if given) is marked."""
    fig = go.Figure(
        go.Scatter(
            x=list(range(len(steps))),
            y=[float(v) for v in total],
            mode="lines+markers",
            name="sum of D_i",
            customdata=list(steps),
            hovertemplate="step %{customdata}<br>%{y:.2f}<extra></extra>",
        )
    )
    if turning_index is not None:
        fig.add_vline(x=turning_index, line_dash="dash", annotation_text=f"turn at step {steps[turning_index]}")
    fig.update_layout(
        title="Total feature dimensionality per snapshot",
        xaxis=_snapshot_axis(steps),
        yaxis={"title": "sum over features of D_i"},
        height=380,
    )
    return fig


def drift_curve(
    adjacent: torch.Tensor,
    to_final: torch.Tensor,
    steps: Sequence[int],
) -> go.Figure:
    """Mean direction cosine between adjacent snapshots and against the final snapshot.

    ``adjacent`` is ``[F, S-1]``, ``to_final`` is ``[F, S]`` (from
    :func:`~crosslens.analysis.geometry.direction_drift`); NaN entries (absent features)
    are ignored in the means.
    """
    x = list(range(len(steps)))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x[1:],
            y=torch.nanmean(adjacent, dim=0).tolist(),
            mode="lines+markers",
            name="cos(s-1, s)",
        )
    )
    fig.add_trace(
        go.Scatter(x=x, y=torch.nanmean(to_final, dim=0).tolist(), mode="lines+markers", name="cos(s, final)")
    )
    fig.update_layout(
        title="Direction drift of decoder rows",
        xaxis=_snapshot_axis(steps),
        yaxis={"title": "mean cosine", "range": [min(0.0, float(torch.nan_to_num(to_final, 1.0).min())), 1.02]},
        height=380,
    )
    return fig


def probe_scatter(probes: ProbeValidation) -> go.Figure:
    """Probe error against normalised decoder norm for every probed (feature, snapshot)."""
    n_snap = probes.probe_error.shape[1]
    labels = [f"feature {f}, snapshot {s}" for f in probes.features for s in range(n_snap)]
    fig = go.Figure(
        go.Scatter(
            x=probes.normalized_norm.flatten().tolist(),
            y=probes.probe_error.flatten().tolist(),
            mode="markers",
            text=labels,
            hovertemplate="%{text}<br>norm %{x:.3f}<br>error %{y:.3f}<extra></extra>",
            marker={"opacity": 0.6},
        )
    )
    fig.update_layout(
        title=f"Probe error vs decoder norm (Pearson r = {probes.pearson_r:.3f})",
        xaxis={"title": "decoder norm / peak"},
        yaxis={"title": "held-out balanced probe error"},
        height=400,
    )
    return fig
