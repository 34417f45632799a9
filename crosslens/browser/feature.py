"""One feature's page data: its facts, its per-snapshot series, logit effects and causal scores
(:func:`feature_detail`), and its contexts at every reading (:func:`feature_contexts`)."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from crosslens.browser.database import RunFacts, counts, floats, halves, ints
from crosslens.browser.emergence import feature_emergence
from crosslens.browser.queries import QueryError
from crosslens.dashboards.schema import ALL_SNAPSHOTS

_FEATURE_COLUMNS = (
    "feature",
    "class",
    "emergence_snapshot",
    "emergence_step",
    "peak_snapshot",
    "peak_step",
    "fade_snapshot",
    "fade_step",
    "dip_step",
    "recovery_step",
    "peak_decoder_norm",
    "density",
    "mean_activation",
    "max_activation",
    "relevance",
)
SERIES = ("decoder_norm", "relative_norm", "density", "mean_activation", "max_activation")
"""The per-snapshot numbers a feature page plots, one list each (index = snapshot)."""


class NoSuchFeature(LookupError):
    """A feature id the database does not hold (answered with HTTP 404)."""


def checked_feature(text: str, facts: RunFacts) -> int:
    """The feature id a URL names (its digits, maybe signed), refused unless the database holds it:
    negative ids and ids past the last, however many digits they have."""
    if not re.fullmatch(r"-?\d+", text):
        raise NoSuchFeature(f"feature {text[:40]}: not a feature id; ids are 0 to {facts.n_features - 1}")
    if len(text.lstrip("-")) > 20 or not 0 <= int(text) < facts.n_features:
        raise NoSuchFeature(f"feature {text[:40]}: this database holds features 0 to {facts.n_features - 1}.")
    return int(text)


def checked_snapshot(text: str | None, facts: RunFacts) -> int | None:
    """The reading a ``snapshot=`` parameter names (-1: the crosscoder's own code), or None when
    absent; refused unless the run has it."""
    if text is None:
        return None
    if not re.fullmatch(r"-?\d{1,20}", text.strip()) or not -1 <= int(text) < facts.n_snapshots:
        raise QueryError(
            f"snapshot={text[:40]}: give -1 (the crosscoder's code) or a snapshot 0 to {facts.n_snapshots - 1}"
        )
    return int(text)


def feature_detail(connection: sqlite3.Connection, feature: int, facts: RunFacts) -> dict[str, Any]:
    """Everything a feature page shows but its contexts."""
    row = connection.execute(
        f"SELECT {', '.join(_FEATURE_COLUMNS)} FROM features WHERE feature = ?", (feature,)
    ).fetchone()
    if row is None:
        raise NoSuchFeature(f"feature {feature}: this database holds features 0 to {facts.n_features - 1}.")
    detail: dict[str, Any] = dict(zip(_FEATURE_COLUMNS, row))
    S = facts.n_snapshots
    series: dict[str, list] = {name: [None] * S for name in SERIES}
    histograms: list[list[int] | None] = [None] * S
    logits: list[dict[str, list] | None] = [None] * S
    cursor = connection.execute(
        f"SELECT snapshot, {', '.join(SERIES)}, histogram, logit_top_ids, logit_top_values, logit_bottom_ids, "
        "logit_bottom_values FROM feature_snapshots WHERE feature = ? ORDER BY snapshot",
        (feature,),
    )
    for snapshot, *values, histogram, top_ids, top_values, bottom_ids, bottom_values in cursor:
        if not 0 <= snapshot < S:
            continue
        for name, value in zip(SERIES, values):
            series[name][snapshot] = value
        histograms[snapshot] = counts(histogram)
        logits[snapshot] = {
            "top": [[facts.token(t), round(v, 4)] for t, v in zip(ints(top_ids), floats(top_values))],
            "bottom": [[facts.token(t), round(v, 4)] for t, v in zip(ints(bottom_ids), floats(bottom_values))],
        }
    detail |= {"series": series, "histograms": histograms, "logits": logits, "causal": _causal(connection, feature, S)}
    detail |= feature_emergence(connection, feature, S, facts.agreement_line, facts.carrier_line)
    detail["neighbours"] = {
        "previous": feature - 1 if feature > 0 else None,
        "next": feature + 1 if feature + 1 < facts.n_features else None,
    }
    return detail


def _causal(connection: sqlite3.Connection, feature: int, n_snapshots: int) -> dict[str, dict[str, Any]]:
    """Per task: IE, RelIE and ablation per snapshot, and the RelIE class (the stage gives one per feature)."""
    out: dict[str, dict[str, Any]] = {}
    cursor = connection.execute(
        "SELECT task, snapshot, ie, relie, relie_class, ablation FROM causal WHERE feature = ? ORDER BY task, snapshot",
        (feature,),
    )
    for task, snapshot, ie, relie, relie_class, ablation in cursor:
        scores = out.setdefault(
            task,
            {
                "ie": [None] * n_snapshots,
                "relie": [None] * n_snapshots,
                "ablation": [None] * n_snapshots,
                "relie_class": None,
            },
        )
        if 0 <= snapshot < n_snapshots:
            scores["ie"][snapshot], scores["relie"][snapshot], scores["ablation"][snapshot] = ie, relie, ablation
        scores["relie_class"] = scores["relie_class"] or relie_class
    return out


def feature_contexts(
    connection: sqlite3.Connection, feature: int, facts: RunFacts, snapshot: int | None = None
) -> dict[str, Any]:
    """The feature's top and quantile contexts at one reading (``snapshot``; -1 is the crosscoder's
    own code), or at every reading: ``{"readings": {"-1": {"top": [...], "quantile": [...]}, "0": ...}}``.

    A context is its window's token texts and the feature's activation on each, the index of
    the focus token, the focus activation, where it sits in the token rows, and for a quantile
    context the quantile it was drawn at."""
    if connection.execute("SELECT 1 FROM features WHERE feature = ?", (feature,)).fetchone() is None:
        raise NoSuchFeature(f"feature {feature}: this database holds features 0 to {facts.n_features - 1}.")
    where, args = (
        ("feature = ?", (feature,)) if snapshot is None else ("feature = ? AND snapshot = ?", (feature, snapshot))
    )
    readings: dict[str, dict[str, list]] = {}
    cursor = connection.execute(
        "SELECT snapshot, kind, rank, seq, pos, activation, quantile, first_pos, token_ids, activations "
        f"FROM contexts WHERE {where} ORDER BY snapshot, kind DESC, rank",
        args,
    )
    for reading, kind, rank, seq, pos, activation, quantile, first_pos, token_ids, activations in cursor:
        kinds = readings.setdefault(str(reading), {"top": [], "quantile": []})
        kinds.setdefault(kind, []).append(
            {
                "rank": rank,
                "seq": seq,
                "pos": pos,
                "activation": activation,
                "quantile": quantile,
                "focus": pos - first_pos,
                "tokens": [facts.token(t) for t in ints(token_ids)],
                "acts": [round(a, 3) for a in halves(activations)],
            }
        )
    return {"feature": feature, "readings": readings, "all_snapshots": ALL_SNAPSHOTS}
