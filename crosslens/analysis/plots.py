"""Plotly figures of feature evolution, of the emergence check and of lineage. Every function returns a
``go.Figure``.

Snapshot axes are placed by snapshot index and labelled with training steps: suites are
sampled densely early and sparsely late (0, 2, 4, ..., 143k), so equal spacing per
snapshot reads like a log step axis and still has a place for step 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from crosslens.analysis.emergence_check import EmergenceCheck
from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import EVENT_KINDS, Lineage, LineageEvent
from crosslens.analysis.probes import ProbeValidation
from crosslens.htmlreport import log_axis, spaced

CLASS_COLORS = {
    "initialization": "#7f7f7f",
    "persistent": "#1f77b4",
    "transient": "#d62728",
    "dead": "#c7c7c7",
}
_MAX_TICKS = 16
_KIND_COLORS = {"split": "rgba(31,119,180,0.45)", "merge": "rgba(214,39,40,0.45)", "handoff": "rgba(44,160,44,0.5)"}


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


def agreement_heatmap(check: EmergenceCheck) -> go.Figure:
    """Counts of measured latents by decoder-norm emergence (rows) and latent-scaled emergence (columns)."""
    S = check.presence.shape[1]
    counts_SS = torch.zeros(S, S, dtype=torch.long)
    both = check.measured & (check.decoder_emergence != NO_STEP) & (check.scaled_emergence != NO_STEP)
    for d, s in zip(check.decoder_emergence[both].tolist(), check.scaled_emergence[both].tolist()):
        counts_SS[d, s] += 1
    labels = [str(step) for step in check.steps]
    # colour by log count: the diagonal's first cell (latents there from the start by both) holds most
    # of a run's latents and would leave every other cell white on a linear scale
    fig = go.Figure(
        go.Heatmap(
            z=torch.log10(1 + counts_SS.double()).tolist(),
            x=labels,
            y=labels,
            text=[[str(n) if n else "" for n in row] for row in counts_SS.tolist()],
            texttemplate="%{text}",
            customdata=counts_SS.tolist(),
            colorscale="Blues",
            colorbar={"title": "latents", "tickvals": [0, 1, 2, 3, 4], "ticktext": ["0", "9", "99", "999", "9999"]},
            hovertemplate="decoder norm %{y}<br>latent scaling %{x}<br>%{customdata} latents<extra></extra>",
        )
    )
    fig.update_layout(
        title="Emergence step by decoder norm and by latent scaling (off the diagonal: they disagree)",
        xaxis={"title": "latent-scaled emergence (step)", "type": "category"},
        yaxis={"title": "decoder-norm emergence (step)", "type": "category", "autorange": "reversed"},
        height=460,
    )
    return fig


def emergence_curves(analysis: EvolutionAnalysis, check: EmergenceCheck, features: Sequence[int]) -> go.Figure:
    """Each feature's normalised decoder norm and latent-scaled presence in a panel of its own (three to a
    row), triangles at each reading's emergence."""
    n_cols = min(3, max(1, len(features)))
    n_rows = max(1, -(-len(features) // n_cols))
    titles = [
        f"#{i}: {_emerges(check.decoder_emergence[i], check.steps)} by decoder norm, "
        f"{_emerges(check.scaled_emergence[i], check.steps)} by latent scaling"
        for i in features
    ]
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, shared_yaxes=True)
    x = list(range(analysis.n_snapshots))
    for k, i in enumerate(features):
        row, col = k // n_cols + 1, k % n_cols + 1
        for name, y, color, dash, mark in (
            ("decoder norm", analysis.normalized[i], "#1f77b4", "solid", int(check.decoder_emergence[i])),
            ("latent scaling", check.presence[i], "#ff7f0e", "dash", int(check.scaled_emergence[i])),
        ):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y.tolist(),
                    name=name,
                    legendgroup=name,
                    showlegend=k == 0,
                    mode="lines",
                    line={"color": color, "dash": dash},
                    hovertemplate=f"#{i} {name}: %{{y:.2f}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
            if mark != NO_STEP:
                fig.add_trace(
                    go.Scatter(
                        x=[mark],
                        y=[float(y[mark])],
                        mode="markers",
                        marker={"symbol": "triangle-up", "size": 10, "color": color},
                        showlegend=False,
                        hoverinfo="skip",
                    ),
                    row=row,
                    col=col,
                )
    fig.update_xaxes(**{**_snapshot_axis(check.steps), "title": None, "tickangle": -45})
    fig.update_yaxes(range=[0, 1.05])
    fig.update_yaxes(title_text="share of the feature's peak", col=1)
    fig.update_annotations(font_size=11)
    fig.update_layout(title="Two readings of when a feature is there", height=120 + 260 * n_rows)
    return fig


def _emerges(emergence: torch.Tensor, steps: Sequence[int]) -> str:
    index = int(emergence)
    return "never" if index == NO_STEP else f"step {steps[index]}"


def family_flow(analysis: EvolutionAnalysis, lineage: Lineage, families: Sequence[Sequence[int]]) -> go.Figure:
    """The lineage of ``families`` through training, one lane per latent: a grey line where the latent
    is present, and each event drawn where it happens (a split or merge as a bar across its latents
    between the snapshot before and its own, a handoff as lines from each latent before it, a
    snapshot earlier, to each latent after it); hovering names the latent or the event."""
    steps = analysis.steps
    lane = _lanes(analysis.present, families)
    fig = go.Figure(_presence_lanes(analysis.present, steps, lane))
    for kind in EVENT_KINDS:
        events = [e for e in lineage.events if e.kind == kind and set(e.latents) <= set(lane)]
        if events:
            fig.add_trace(_event_lines(kind, events, steps, lane))
    fig.update_layout(
        title="Lineage of the largest families through training: one lane per latent",
        xaxis={**_snapshot_axis(steps), "range": [-0.5, len(steps) - 0.5]},
        yaxis={
            "tickmode": "array",
            "tickvals": [-y for y in lane.values()],
            "ticktext": [f"#{i}" for i in lane],
            "showgrid": False,
            "zeroline": False,
        },
        height=160 + 22 * (max(lane.values(), default=0) + 1),
        hovermode="closest",
    )
    return fig


def _lanes(present_FS: torch.Tensor, families: Sequence[Sequence[int]]) -> dict[int, int]:
    """Each latent's lane: families one under another, a blank lane between two, and a family's
    latents by the snapshot they are first present at."""
    S = present_FS.shape[1]
    first_F = torch.where(present_FS, torch.arange(S), S).amin(dim=1)
    lane: dict[int, int] = {}
    for gap, family in enumerate(families):
        for latent in sorted(family, key=lambda i: (int(first_F[i]), i)):
            lane[latent] = len(lane) + gap
    return lane


def _presence_lanes(present_FS: torch.Tensor, steps: Sequence[int], lane: dict[int, int]) -> go.Scatter:
    """One trace of every lane's line, broken where its latent is absent."""
    xs: list = []
    ys: list = []
    names: list = []
    for latent, y in lane.items():
        for s, step in enumerate(steps):
            xs.append(s if bool(present_FS[latent, s]) else None)
            ys.append(-y)
            names.append(f"#{latent} at step {step}")
        xs.append(None)
        ys.append(None)
        names.append("")
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines+markers",
        name="present",
        hovertext=names,
        hoverinfo="text",
        line={"color": "rgba(120,120,120,0.55)", "width": 3},
        marker={"size": 5, "color": "rgba(120,120,120,0.8)"},
    )


def _event_lines(kind: str, events: Sequence[LineageEvent], steps: Sequence[int], lane: dict[int, int]) -> go.Scatter:
    """One trace of the events of one kind (:func:`_event_segments`), each named where hovered."""
    xs: list = []
    ys: list = []
    names: list = []
    for event in events:
        before = ", ".join(f"#{i}" for i in event.before)
        after = ", ".join(f"#{i}" for i in event.after)
        text = f"{kind} at step {steps[event.snapshot]}: {before} -> {after}, cosine {event.cosine:.2f} ({event.how})"
        for x0, y0, x1, y1 in _event_segments(event, lane):
            xs += [x0, x1, None]
            ys += [-y0, -y1, None]
            names += [text, text, ""]
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines+markers",
        name=f"{kind}s",
        hovertext=names,
        hoverinfo="text",
        line={"color": _KIND_COLORS[kind], "width": 3},
        marker={"size": 8, "color": _KIND_COLORS[kind]},
    )


def _event_segments(event: LineageEvent, lane: dict[int, int]) -> list[tuple[float, int, float, int]]:
    """Line segments ``(x0, lane0, x1, lane1)`` that draw ``event``: a bar half a snapshot before it
    from lane to lane of its latents for a divergence, a line from each latent before it (a snapshot
    earlier) to each latent after it for a succession."""
    if event.how == "divergence":
        x = event.snapshot - 0.5
        lanes = sorted(lane[i] for i in event.latents)
        return [(x, a, x, b) for a, b in zip(lanes, lanes[1:])]
    return [(event.snapshot - 1, lane[a], event.snapshot, lane[b]) for a in event.before for b in event.after]
