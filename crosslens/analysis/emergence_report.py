"""The report's "Is this emergence real?" section: the emergence check and lineage, with a flow
picture of the largest lineage families through training."""

from __future__ import annotations

import html
from collections.abc import Sequence

from crosslens.analysis.emergence_check import EmergenceCheck
from crosslens.analysis.emergence_record import EmergenceResult, first_snapshot_counts, made_there
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import Lineage, counts_text, event_rows
from crosslens.analysis.plots import agreement_heatmap, emergence_curves, family_flow
from crosslens.htmlreport import Report

N_CURVES = 6
"""Contested features whose two emergence curves the section draws."""
N_FAMILIES = 6
"""Largest lineage families in the flow picture."""


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


UNCHECKED_EVENTS = (
    " One crosscoder's events include its own ways of reusing latents, which no other crosscoder of the same "
    "activations repeats: crosslens analyze --lineage-against RUN (lineage_agreement in Python) counts the events "
    "that a crosscoder of another architecture, trained on the same store, makes too."
)
"""The lineage text's last sentence where there are events: how they are checked (a section of its own
follows where they were)."""

MERGES_WEAKER = (
    " A merge is the weakest of the three events: where the feature one latent carries fades and the "
    "crosscoder reuses that latent for the feature its partner carries, the two latents also end on one "
    "row, and the decoder cannot tell that from two concepts becoming one."
)
"""Said where lineage reports a merge: on planted sets without merges, most merges lineage reports are
of that kind (benchmarks/README.md, "Is an emergence real?")."""


def _add_lineage(report: Report, analysis: EvolutionAnalysis, lineage: Lineage) -> None:
    n_aside = len(lineage.set_aside)
    aside = (
        f" {n_aside} more {'event' if n_aside == 1 else 'events'} read from the decoder rows "
        f"{'was' if n_aside == 1 else 'were'} set aside: latent scaling does not hold their latents on their sides "
        "of the event, so those rows carry nothing the activations show."
        if n_aside
        else ""
    )
    report.add_text(
        "Lineage from the per-snapshot decoder directions of the live latents: "
        f"{counts_text(lineage.counts(), last=' and ')}. A split: latents whose directions coincide, "
        "then part (or a latent that fades as several near-parallel ones emerge); a merge: the reverse; a handoff: "
        "a latent that fades as a near-parallel one emerges, one concept decoupled over two latents through time."
        + aside
        + _first_snapshot_text(lineage, analysis)
        + (MERGES_WEAKER if lineage.counts()["merge"] else "")
        + (UNCHECKED_EVENTS if lineage.events else "")
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


def _first_snapshot_text(lineage: Lineage, analysis: EvolutionAnalysis) -> str:
    """A sentence on the events among latents strongest at the first snapshot, where there are any."""
    first = first_snapshot_counts(lineage.events, analysis.lifetimes.peak, analysis.steps[0])
    if not first:
        return ""
    return (
        f" Of them, {first}. Those latents' largest decoder rows are "
        "at the first snapshot; where that is the untrained model, a latent there carries a single token's direction, "
        "and an event among such latents follows tokens' directions as training reorganises them (words of one class "
        "coming to share a direction, say), not concepts the model had already learned."
    )


def lineage_agreement_section(
    lineage: Lineage, agreement: Sequence[float], steps: Sequence[int], other: str, line: float
) -> Report:
    """A report section: each lineage event's agreement with ``other``'s crosscoder
    (:mod:`crosslens.analysis.agreement`), the events it makes least first."""
    report = Report(f"Lineage checked against {other}")
    made = [made_there(a, line) for a in agreement]
    shown, read = made.count(True), len(made) - made.count(None)
    report.add_text(
        f"{shown} of {read} lineage events are made too by {other}'s crosscoder, trained on the same "
        f"activations (agreement {line} or more). An event's agreement is the least, over its latents, of the best "
        "decoder cosine with which one of that crosscoder's latents makes the latent's move (its rows at the snapshot "
        "before the event and at it). An event of the model, not of one crosscoder's training, is made by every "
        "crosscoder of the same activations; another architecture's is the test, since a second seed of the same "
        "one repeats its reorganisations of latents."
        + (
            f" {len(agreement) - read} more have no latent present beside their snapshot, so no agreement."
            if read < len(agreement)
            else ""
        )
    )
    rows = event_rows(lineage.events, steps)
    for row, a, m in zip(rows, agreement, made):
        row.pop("how")
        row["agreement"] = None if m is None else round(a, 3)
        row["made there"] = {None: "-", True: "yes", False: "no"}[m]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["agreement"] is not None, rows[i]["agreement"] or 0.0))
    report.add_table([rows[i] for i in order], title="Lineage events and their agreement", max_rows=100)
    return report
