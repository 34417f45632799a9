"""A self-contained HTML report: headings, text, tables and plotly figures.

:class:`Report` is a small builder that any stage can add sections to (the evolution
analysis, the causal stage, the demo); plotly.js is embedded once in the page head, so the
file opens offline. It sits below every stage package so that each can write a report
without importing another stage.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import plotly.graph_objects as go
import plotly.offline

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
a.feature-link:not([href]) { color: inherit; text-decoration: none; }
"""

FEATURE_COLUMNS = ("feature",)
"""Table columns whose integer cells are crosscoder feature ids, rendered as :func:`feature_link`."""

# ``crosslens browse RUN`` serves the report at /report, so a relative "feature/ID" resolves to the
# feature's page there. Opened as a file there is no such page: the links fall back to plain text.
# Plotly traces whose ``meta`` is {"link": "feature"} open the clicked feature the same way (its id
# from ``meta.feature``, else the point's first customdata value).
_FEATURE_LINK_SCRIPT = """
(function () {
  var served = location.protocol === "http:" || location.protocol === "https:";
  document.querySelectorAll("a.feature-link").forEach(function (a) {
    if (!served) { a.removeAttribute("href"); a.title = "crosslens browse RUN shows this feature"; }
  });
  if (!served) return;
  document.querySelectorAll(".plotly-graph-div").forEach(function (div) {
    if (!div.on) return;
    div.on("plotly_click", function (event) {
      var point = event.points && event.points[0];
      var meta = point && point.data.meta;
      if (!meta || meta.link !== "feature") return;
      var id = meta.feature !== undefined ? meta.feature : (point.customdata || [])[0];
      if (Number.isInteger(id)) location.href = "feature/" + id;
    });
  });
})();
"""


def feature_link(feature: int) -> str:
    """A feature id as a link to its page in ``crosslens browse`` (relative, so it resolves from
    the report served at /report; plain text where the report is opened as a file)."""
    return f'<a class="feature-link" href="feature/{int(feature)}">{int(feature)}</a>'


def spaced(positions: Sequence[float], min_gap: float) -> list[float]:
    """``positions`` (sorted) thinned so that kept ones lie at least ``min_gap`` apart, the
    first kept: tick labels that would overlap are left out instead of drawn over each other."""
    kept: list[float] = []
    for position in positions:
        if not kept or position - kept[-1] >= min_gap:
            kept.append(position)
    return kept


def log_axis(
    values: Sequence[float], *, title: str = "", max_ticks: int = 7, label: Callable[[float], str] = lambda v: f"{v:g}"
) -> dict[str, Any]:
    """A log axis ticked at the plotted ``values`` themselves, at most ``max_ticks`` of them
    spread evenly in log space. Plotly's own log ticks label the minor steps too
    ("8 9 1 2 3 ... 10 2 3"), which run into each other on a narrow panel."""
    shown = sorted({float(v) for v in values if v > 0})
    if len(shown) > max_ticks:
        logs = {math.log10(v): v for v in shown}
        span = max(logs) - min(logs)
        shown = [logs[p] for p in spaced(sorted(logs), span / max_ticks)]
    return {
        "title": title,
        "type": "log",
        "tickmode": "array",
        "tickvals": shown,
        "ticktext": [label(v) for v in shown],
    }


@dataclass(frozen=True)
class _Block:
    kind: Literal["heading", "subheading", "text", "html", "table", "figure"]
    html: str
    anchor: str | None = None
    title: str | None = None


def _is_number(value: Any) -> bool:
    """A value right-aligned as a number (a flag is not one: it prints as yes/no)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_cell(value: Any, percent: bool = False) -> str:
    """A table cell's HTML; with ``percent`` a number is a fraction printed as a percentage."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if percent and _is_number(value):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _cell(value: Any, percent: bool, feature: bool) -> str:
    if feature and isinstance(value, int) and not isinstance(value, bool):
        return feature_link(value)
    return format_cell(value, percent)


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

    def add_list(self, items: Sequence[str]) -> Report:
        """A bulleted list of plain-text items (escaped)."""
        if items:
            self._blocks.append(_Block("text", "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"))
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
        percent: Collection[str] = (),
        feature_columns: Collection[str] = FEATURE_COLUMNS,
    ) -> Report:
        """A table from a list of dicts (one per row); ``columns`` picks and orders keys, and
        the columns named in ``percent`` hold fractions shown as percentages (0.988 as 98.8%),
        so a table reads in the units its paragraph and the console use. Integer cells of the
        ``feature_columns`` link to the feature's page (:func:`feature_link`)."""
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(key for row in rows for key in row))
        unknown = set(percent) - set(columns)
        if rows and unknown:
            raise ValueError(f"percent names {sorted(unknown)}, not columns of this table ({columns})")
        shown = rows if max_rows is None else rows[:max_rows]
        numeric = {c: all(_is_number(r.get(c)) or r.get(c) is None for r in shown) for c in columns}
        # snake_case keys are long single words to a browser; let a header wrap after each underscore
        head = "".join(
            f'<th class="{"" if numeric[c] else "text"}">{html.escape(str(c)).replace("_", "_<wbr>")}</th>'
            for c in columns
        )
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{"" if numeric[c] else "text"}">{_cell(r.get(c), c in percent, c in feature_columns)}</td>'
                for c in columns
            )
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
        """Append all sections of another report (e.g. one built by another stage), under a heading
        of its title (when it has its own), so that several such reports stay told apart."""
        if other.title and other.title != self.title:
            self.add_heading(other.title)
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
        if 'class="feature-link"' in body or '"link":"feature"' in body:
            body += f"\n<script>{_FEATURE_LINK_SCRIPT}</script>"
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
