"""The report's "Is this emergence real?" section: the emergence check and lineage, with a flow
picture of the largest lineage families through training."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from crosslens.analysis.emergence_check import EmergenceCheck
from crosslens.analysis.emergence_record import EmergenceResult
from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.lineage import EVENT_KINDS, Lineage, LineageEvent, event_rows
from crosslens.htmlreport import Report

N_CURVES = 6
"""Contested features whose two emergence curves the section draws."""
N_FAMILIES = 6
"""Largest lineage families in the flow picture."""
_KIND_COLORS = {"split": "rgba(31,119,180,0.45)", "merge": "rgba(214,39,40,0.45)", "handoff": "rgba(44,160,44,0.5)"}


def add_emergence_section(report: Report, analysis: EvolutionAnalysis, result: EmergenceResult) -> Report:
    """The check's counts, its two emergences side by side, the contested features' curves and
    table, then lineage: counts, the flow picture and the events."""
    report.add_heading("Is this emergence real? Latent scaling and lineage")
    check = result.check
    if check is None:
        report.add_text(
            "Latent scaling was not run: it fits each latent to the activations, and no activation store was "
            "given. Pass the store the crosscoder was trained on (crosslens analyze --store) to check every "
            "emergence; lineage below reads the decoder alone."
        )
    else:
        _add_check(report, analysis, check, result)
    _add_lineage(report, analysis, result.lineage)
    return report


def _add_check(report: Report, analysis: EvolutionAnalysis, check: EmergenceCheck, result: EmergenceResult) -> None:
    c, cfg = check.counts(), check.config
    report.add_text(
        f"A decoder norm can mislead (Minder et al. 2025): the sparsity penalty shrinks the row of a snapshot where a "
        f"latent is weak to zero, and a crosscoder can split one concept over two latents. Latent scaling fits each "
        f"latent's contribution to each snapshot's activations on {result.scaling.n_tokens:,} tokens; a latent is "
        f"present by it where its amplitude is at least {cfg.presence_threshold:g} of its largest and {cfg.min_t:g} "
        f"standard errors above 0; what other latents reconstruct along its direction counts only where one of them "
        f"points its way (cosine {cfg.carrier_cosine:g} or more), elsewhere the error without it alone. Of "
        f"{c['measured']} measured live latents, {c['contested']} have emergences "
        f"{cfg.contested_margin} or more snapshots apart (contested): {c['earlier']} are present earlier by latent "
        f"scaling ({c['in_error']} in the reconstruction error without the latent, its decoder shrank; "
        f"{c['in_reconstruction']} in what other latents reconstruct, decoupled) and {c['later']} later. Where "
        "contested, crosslens reports the latent-scaled emergence."
    )
    report.add_figure(agreement_heatmap(check), caption="Measured live latents by their two emergence steps.")
    contested = sorted(check.contested_features(), key=lambda i: (-abs(int(check.disagreement[i])), i))
    if not contested:
        return
    report.add_figure(
        emergence_curves(analysis, check, contested[:N_CURVES]),
        caption="Decoder norm / peak (solid) and latent-scaled presence (dashed) of the contested features with the "
        "widest disagreement; triangles mark each reading's emergence.",
    )
    report.add_table(check.feature_rows(contested), title="Contested features", max_rows=50)


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
    ticks = {"tickmode": "array", "tickvals": x, "ticktext": [str(s) for s in check.steps], "tickangle": -45}
    fig.update_xaxes(**ticks)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_yaxes(title_text="share of the feature's peak", col=1)
    fig.update_annotations(font_size=11)
    fig.update_layout(title="Two readings of when a feature is there", height=120 + 260 * n_rows)
    return fig


def _emerges(emergence: torch.Tensor, steps: Sequence[int]) -> str:
    index = int(emergence)
    return "never" if index == NO_STEP else f"step {steps[index]}"


def _add_lineage(report: Report, analysis: EvolutionAnalysis, lineage: Lineage) -> None:
    counts = lineage.counts()
    report.add_text(
        f"Lineage from the per-snapshot decoder directions of the live latents: {counts['split']} splits, "
        f"{counts['merge']} merges and {counts['handoff']} handoffs. A split: latents whose directions coincide, "
        "then part (or a latent that fades as several near-parallel ones emerge); a merge: the reverse; a handoff: "
        "a latent that fades as a near-parallel one emerges, one concept decoupled over two latents through time."
        + (
            f" {len(lineage.set_aside)} more events read from the decoder rows were set aside: latent scaling does not "
            "hold their latents on their sides of the event, so those rows carry nothing the activations show."
            if lineage.set_aside
            else ""
        )
    )
    if not lineage.events:
        return
    families = lineage.families()[:N_FAMILIES]
    report.add_figure(
        family_flow(analysis, lineage, families),
        caption=f"The {len(families)} largest lineage families, one lane per latent (grey where it is present); "
        "a split or merge is a bar across its latents where it happens, a handoff a line from each latent before it "
        "to each after it. Hover for the event.",
    )
    rows = event_rows(lineage.events, analysis.steps)
    for row, event in zip(rows, lineage.events):
        row["before"], row["after"] = _links(event.before), _links(event.after)
    report.add_html(_events_table(rows[:100], len(rows)))


def _links(latents: Sequence[int]) -> str:
    return ", ".join(f'<a class="feature-link" href="feature/{i}">{i}</a>' for i in latents)


def _events_table(rows: list[dict], total: int) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("kind", "step", "before", "after", "cosine", "how"))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{r[k] if k in ('before', 'after') else html.escape(str(r[k]))}</td>" for k in r)
        + "</tr>"
        for r in rows
    )
    more = f'<p class="caption">showing {len(rows)} of {total} events</p>' if len(rows) < total else ""
    return f"<table><caption>Lineage events</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def family_flow(analysis: EvolutionAnalysis, lineage: Lineage, families: Sequence[Sequence[int]]) -> go.Figure:
    """The lineage of ``families`` through training, one lane per latent: a grey line where the latent
    is present, and each event drawn where it happens (a split or merge as a bar across its latents
    between the snapshot before and its own, a handoff as lines from each latent before it, a
    snapshot earlier, to each latent after it); hovering names the latent or the event."""
    steps, present_FS = analysis.steps, analysis.present
    first_F = torch.where(present_FS, torch.arange(len(steps)), len(steps)).amin(dim=1)
    lane: dict[int, int] = {}  # families one under another, a blank lane between two
    for gap, family in enumerate(families):
        for latent in sorted(family, key=lambda i: (int(first_F[i]), i)):
            lane[latent] = len(lane) + gap
    fig = go.Figure()
    xs: list = []
    ys: list = []
    names: list = []
    for latent, y in lane.items():
        for s in range(len(steps)):
            xs.append(s if bool(present_FS[latent, s]) else None)
            ys.append(-y)
            names.append(f"#{latent} at step {steps[s]}")
        xs.append(None)
        ys.append(None)
        names.append("")
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            name="present",
            hovertext=names,
            hoverinfo="text",
            line={"color": "rgba(120,120,120,0.55)", "width": 3},
            marker={"size": 5, "color": "rgba(120,120,120,0.8)"},
        )
    )
    for kind in EVENT_KINDS:
        xs, ys, names = [], [], []
        for event in lineage.events:
            if event.kind != kind or not set(event.latents) <= set(lane):
                continue
            text = (
                f"{kind} at step {steps[event.snapshot]}: {_latents(event.before)} -> {_latents(event.after)}, "
                f"cosine {event.cosine:.2f} ({event.how})"
            )
            for x0, y0, x1, y1 in _event_segments(event, lane):
                xs += [x0, x1, None]
                ys += [-y0, -y1, None]
                names += [text, text, ""]
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"{kind}s",
                    hovertext=names,
                    hoverinfo="text",
                    line={"color": _KIND_COLORS[kind], "width": 3},
                    marker={"size": 8, "color": _KIND_COLORS[kind]},
                )
            )
    fig.update_layout(
        title="Lineage of the largest families through training: one lane per latent",
        xaxis={
            "title": "training step",
            "tickmode": "array",
            "tickvals": list(range(len(steps))),
            "ticktext": [str(s) for s in steps],
            "range": [-0.5, len(steps) - 0.5],
        },
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


def _latents(latents: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in latents)


def _event_segments(event: LineageEvent, lane: dict[int, int]) -> list[tuple[float, int, float, int]]:
    """Line segments ``(x0, lane0, x1, lane1)`` that draw ``event``: a bar half a snapshot before it
    from lane to lane of its latents for a divergence, a line from each latent before it (a snapshot
    earlier) to each latent after it for a succession."""
    if event.how == "divergence":
        x = event.snapshot - 0.5
        lanes = sorted(lane[i] for i in event.latents)
        return [(x, a, x, b) for a, b in zip(lanes, lanes[1:])]
    return [(event.snapshot - 1, lane[a], event.snapshot, lane[b]) for a in event.before for b in event.after]
