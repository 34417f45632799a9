"""A self-contained HTML report: headings, text, tables and plotly figures.

:class:`Report` is a small builder that any stage can add sections to; plotly.js is
embedded once in the page head, so the file opens offline. :func:`evolution_report`
fills a report with the feature-evolution analysis.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.offline
import torch

from crosslens.analysis.contexts import Context
from crosslens.analysis.evolution import FEATURE_CLASSES, NO_STEP, EvolutionAnalysis, feature_lifetimes
from crosslens.analysis.geometry import total_dimensionality, turning_point
from crosslens.analysis.plots import (
    dimensionality_curve,
    drift_curve,
    emergence_histogram,
    evolution_heatmap,
    feature_trajectories,
    probe_scatter,
)
from crosslens.analysis.probes import ProbeValidation

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
.caption { color: #555; font-size: .9rem; }
.context { font-family: ui-monospace, monospace; white-space: pre-wrap; font-size: .85rem; }
mark { background: #ffd54f; }
nav ul { columns: 2; }
"""


@dataclass(frozen=True)
class _Block:
    kind: str
    html: str
    anchor: str | None = None
    title: str | None = None


def _format_cell(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


class Report:
    """An HTML report assembled section by section.

    ``Report("title").add_heading("Classes").add_table(rows).add_figure(fig).write("report.html")``
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[_Block] = []
        self._n_figures = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _anchor(self, text: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        taken = {b.anchor for b in self._blocks}
        anchor, k = slug, 2
        while anchor in taken:
            anchor, k = f"{slug}-{k}", k + 1
        return anchor

    def add_heading(self, text: str, level: int = 2) -> Report:
        """A section heading; level-2 headings appear in the table of contents."""
        if level not in (2, 3, 4):
            raise ValueError(f"heading level {level}: use 2 (section), 3 or 4.")
        anchor = self._anchor(text)
        self._blocks.append(
            _Block(
                "heading" if level == 2 else "subheading",
                f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>',
                anchor,
                text,
            )
        )
        return self

    def add_text(self, text: str) -> Report:
        """Plain text (escaped); blank lines separate paragraphs."""
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        self._blocks.append(_Block("text", "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)))
        return self

    def add_html(self, fragment: str) -> Report:
        """A trusted HTML fragment, inserted as is."""
        self._blocks.append(_Block("html", fragment))
        return self

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]],
        title: str | None = None,
        columns: Sequence[str] | None = None,
        max_rows: int | None = None,
    ) -> Report:
        """A table from a list of dicts (one per row); ``columns`` picks and orders keys."""
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(key for row in rows for key in row))
        shown = rows if max_rows is None else rows[:max_rows]
        numeric = {c: all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in shown) for c in columns}
        head = "".join(f'<th class="{"" if numeric[c] else "text"}">{html.escape(str(c))}</th>' for c in columns)
        body = "".join(
            "<tr>"
            + "".join(f'<td class="{"" if numeric[c] else "text"}">{_format_cell(r.get(c))}</td>' for c in columns)
            + "</tr>"
            for r in shown
        )
        caption = f"<caption>{html.escape(title)}</caption>" if title else ""
        more = f'<p class="caption">showing {len(shown)} of {len(rows)} rows</p>' if len(shown) < len(rows) else ""
        self._blocks.append(
            _Block("table", f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}")
        )
        return self

    def add_figure(self, fig: go.Figure, caption: str | None = None) -> Report:
        """A plotly figure (interactive; plotly.js is embedded once for the whole page)."""
        if not isinstance(fig, go.Figure):
            raise ValueError(f"add_figure takes a plotly go.Figure, got {type(fig).__name__}.")
        self._n_figures += 1
        div_id = f"figure-{self._n_figures}"
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config={"responsive": True, "displaylogo": False},
        )
        note = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
        self._blocks.append(_Block("figure", f"<div>{div}{note}</div>", div_id))
        return self

    def extend(self, other: Report) -> Report:
        """Append all sections of another report (e.g. one built by another stage)."""
        for block in other._blocks:
            fragment, anchor = block.html, block.anchor
            if block.kind == "figure" and anchor is not None:
                # Figure ids must stay unique in the merged page.
                self._n_figures += 1
                anchor = f"figure-{self._n_figures}"
                fragment = fragment.replace(f'"{block.anchor}"', f'"{anchor}"')
            elif block.kind in ("heading", "subheading") and anchor is not None:
                anchor = self._anchor(block.title or anchor)
                fragment = fragment.replace(f'id="{block.anchor}"', f'id="{anchor}"', 1)
            self._blocks.append(_Block(block.kind, fragment, anchor, block.title))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (:meth:`from_dict` restores it), to save a section on disk."""
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "blocks": [{"kind": b.kind, "html": b.html, "anchor": b.anchor, "title": b.title} for b in self._blocks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """The report :meth:`to_dict` saved."""
        report = cls(str(data["title"]), data.get("subtitle"))
        for block in data["blocks"]:
            report._blocks.append(_Block(block["kind"], block["html"], block.get("anchor"), block.get("title")))
            report._n_figures += block["kind"] == "figure"
        return report

    def render(self) -> str:
        """The complete HTML page."""
        toc = "".join(
            f'<li><a href="#{b.anchor}">{html.escape(b.title or "")}</a></li>'
            for b in self._blocks
            if b.kind == "heading"
        )
        nav = f"<nav><ul>{toc}</ul></nav>" if toc else ""
        plotly_js = f"<script>{plotly.offline.get_plotlyjs()}</script>" if self._n_figures else ""
        subtitle = f'<p class="caption">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        body = "\n".join(b.html for b in self._blocks)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n{plotly_js}\n</head>\n"
            f"<body>\n<h1>{html.escape(self.title)}</h1>\n{subtitle}\n{nav}\n{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the page (creating parent folders) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


# ---------------------------------------------------------------------------
# The feature-evolution report
# ---------------------------------------------------------------------------
def representative_features(analysis: EvolutionAnalysis, per_class: int = 2) -> list[int]:
    """The ``per_class`` strongest (largest peak norm) features of each live class."""
    peak_F = analysis.norms.amax(dim=1)
    chosen: list[int] = []
    for name in ("initialization", "persistent", "transient"):
        members = analysis.features_of_class(name)
        members.sort(key=lambda i: -float(peak_F[i]))
        chosen += members[:per_class]
    return chosen


def evolution_report(
    analysis: EvolutionAnalysis,
    *,
    title: str = "crosslens: feature evolution",
    probes: ProbeValidation | None = None,
    contexts: Mapping[int, Sequence[Context]] | None = None,
    trajectory_features: Sequence[int] | None = None,
    n_table_features: int = 50,
    report: Report | None = None,
    device: str | torch.device | None = None,
) -> Report:
    """Build (or extend) a :class:`Report` with the whole feature-evolution analysis.

    Sections: overview and snapshots, feature classes, norm heatmap, emergence histogram,
    trajectories, dimensionality, drift, a per-feature table, and, when given, probe
    validation and top-activating contexts. Callers add their own sections to the
    returned report before writing it. ``device`` is where the (quadratic in ``d_sae``)
    feature dimensionality is computed.
    """
    report = report or Report(title, subtitle=_subtitle(analysis))
    cfg = analysis.config

    report.add_heading("Overview")
    if cfg.presence == "robust":
        presence_text = (
            f"decoder norm is at least {cfg.emergence_threshold:g} of its peak"
            + (
                f" and it fires there on at least {cfg.firing_floor:g} of its peak per-snapshot rate"
                if analysis.snapshot_frequency is not None
                else ""
            )
            + "; it emerges where it is first present (robust presence: a return after a dip is not an "
            "emergence, see Dip and recover)"
        )
    else:
        presence_text = (
            f"decoder norm is at least {cfg.emergence_threshold:g} of its peak (Ge et al.'s decoder-norm "
            "presence); it emerges at the first snapshot from which it stays present"
        )
    report.add_text(
        f"{analysis.d_sae} crosscoder features over {analysis.n_snapshots} snapshots "
        f"(steps {analysis.steps[0]} to {analysis.steps[-1]}). A feature is present at a snapshot when its "
        f"{presence_text}, and fades once it stays below {cfg.fade_threshold:g} of its "
        f"peak to the end. Features are dead when their peak norm is below {cfg.dead_threshold:g} x the median "
        "peak, when their norms never moved from the shared initial value"
        + (
            (
                f", or when they fire on at most {cfg.dead_frequency:g} of the sampled tokens."
                if cfg.dead_frequency > 0
                else ", or when they never fire on the sampled tokens."
            )
            if analysis.frequency is not None
            else " (firing frequencies were not measured: pass an activation store to also catch latents that "
            "stopped firing during training)."
        )
    )
    if analysis.metadata:
        report.add_html(
            "<details><summary>crosscoder metadata</summary><pre>"
            + html.escape(json.dumps(analysis.metadata, indent=2, default=str))
            + "</pre></details>"
        )
    report.add_table(analysis.snapshot_table(), title="Snapshots")

    report.add_heading("Feature classes")
    counts = analysis.class_counts()
    report.add_table(
        [
            {"class": name, "features": counts[name], "fraction": counts[name] / max(1, analysis.d_sae)}
            for name in FEATURE_CLASSES
        ],
        title="Features per class",
    )
    report.add_text(
        "initialization: present from the first snapshot (kept in this class even if it fades later). "
        "persistent: emerges later and survives to the last snapshot. transient: emerges later, then fades. "
        "dead: never carries weight, was never trained, or never fires."
    )

    report.add_heading("Decoder-norm heatmap")
    report.add_figure(evolution_heatmap(analysis), caption="Each row is a live feature, normalised by its peak.")
    report.add_heading("Emergence")
    report.add_figure(emergence_histogram(analysis))

    report.add_heading("Trajectories")
    features = list(trajectory_features) if trajectory_features is not None else representative_features(analysis)
    if features:
        report.add_figure(feature_trajectories(analysis, features))

    _add_dip_section(report, analysis, n_table_features)

    report.add_heading("Feature dimensionality")
    total_S = total_dimensionality(analysis.dimensionality(device=device, progress=analysis.d_sae > 20_000))
    turn = turning_point(total_S)
    report.add_figure(
        dimensionality_curve(total_S, analysis.steps, turn),
        caption="Sum over live features of D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (Elhage et al.). "
        + (f"Minimum at step {analysis.steps[turn]}." if turn is not None else "No interior minimum."),
    )

    report.add_heading("Direction drift")
    adjacent_FS, to_final_FS = analysis.drift()
    report.add_figure(
        drift_curve(adjacent_FS, to_final_FS, analysis.steps),
        caption="Mean cosine of each feature's decoder direction with its direction at the previous and at the "
        "final snapshot, over features present at both.",
    )

    report.add_heading("Features")
    peak_F = analysis.norms.amax(dim=1)
    strongest = sorted(range(analysis.d_sae), key=lambda i: -float(peak_F[i]))[:n_table_features]
    report.add_table(
        analysis.feature_table(strongest), title=f"The {len(strongest)} features with the largest peak norm"
    )

    if probes is not None:
        report.add_heading("Probe validation")
        report.add_text(
            f"For {len(probes.features)} features, a linear probe per snapshot predicts from that snapshot's "
            f"activations whether the feature fires ({probes.n_tokens} tokens, held-out balanced error). "
            f"Pearson r between probe error and normalised decoder norm: {probes.pearson_r:.3f} "
            "(strongly negative means the decoder norm tracks the feature)."
        )
        report.add_figure(probe_scatter(probes))

    if contexts:
        report.add_heading("Top-activating contexts")
        for feature, items in contexts.items():
            cls = analysis.classes[feature] if feature < analysis.d_sae else "?"
            lines = "".join(
                f'<tr><td>{c.activation:.3f}</td><td class="text context">{c.html()}</td></tr>' for c in items
            )
            emergence = analysis.emergence_step(feature) if feature < analysis.d_sae else None
            report.add_html(
                f"<table><caption>feature {feature} ({html.escape(cls)}, emerges at step "
                f"{_format_cell(emergence)})</caption><thead><tr><th>activation</th>"
                f'<th class="text">context</th></tr></thead><tbody>{lines}</tbody></table>'
            )
    return report


def _add_dip_section(report: Report, analysis: EvolutionAnalysis, n_table_features: int) -> None:
    """Features that are present, vanish for a stretch and come back: their own pattern,
    not an emergence (robust presence), with the emergence Ge et al.'s decoder-norm
    reading would give them."""
    report.add_heading("Dip and recover")
    dippers = analysis.dip_and_recover_features()
    live = sum(1 for c in analysis.classes if c != "dead")
    report.add_text(
        f"{len(dippers)} of {live} live features dip below {analysis.config.fade_threshold:g} of their peak "
        "and later come back above the presence threshold. "
        + (
            "Under robust presence they emerge where they first appear; Ge et al.'s decoder-norm reading "
            "would date their emergence to the return."
            if analysis.config.presence == "robust"
            else "Under Ge et al.'s decoder-norm reading (this report's mode) their emergence is the return; "
            "robust presence would date it to where they first appear."
        )
        + " A dip shared by most features at the same snapshots (see the Snapshots table, columns dipping "
        "and recovering) points at the snapshot, e.g. activation norms changing fast, not at the features."
    )
    if not dippers:
        return
    lt = analysis.lifetimes
    by_dip: dict[int, int] = {}
    for i in dippers:
        by_dip[int(lt.dip[i])] = by_dip.get(int(lt.dip[i]), 0) + 1
    report.add_table(
        [
            {"dip_step": analysis.steps[s], "features": n, "fraction_of_live": n / max(1, live)}
            for s, n in sorted(by_dip.items())
        ],
        title="Where the dips start",
    )
    peak_F = analysis.norms.amax(dim=1)
    strongest = sorted(dippers, key=lambda i: -float(peak_F[i]))
    report.add_figure(
        feature_trajectories(analysis, strongest[:6], normalized=True),
        caption="The strongest dip-and-recover features, each normalised by its peak.",
    )
    rows = analysis.feature_table(strongest[:n_table_features])
    other = "robust" if analysis.config.presence == "decoder_norm" else "decoder_norm"
    alt = feature_lifetimes(
        analysis.norms, replace(analysis.config, presence=other), analysis.frequency, analysis.snapshot_frequency
    )
    for row in rows:
        e = int(alt.emergence[row["feature"]])
        row[f"emergence_step ({other})"] = None if e == NO_STEP else analysis.steps[e]
    report.add_table(rows, title=f"The {len(rows)} strongest dip-and-recover features")


def _subtitle(analysis: EvolutionAnalysis) -> str:
    meta = analysis.metadata
    suite = meta.get("suite") if isinstance(meta.get("suite"), dict) else {}
    parts = [
        str(x) for x in (suite.get("model_id") or meta.get("model_id"), meta.get("hook") or meta.get("hook_name")) if x
    ]
    return " | ".join(parts) if parts else f"{analysis.d_sae} features x {analysis.n_snapshots} snapshots"
