"""Writing the feature database: every table of :mod:`crosslens.dashboards.schema`, in one
transaction, the same bytes for the same rows.

The file is written with a fixed page size and no journal (it is a temporary file, renamed into
place only once complete), rows in primary-key order, the indexes after the rows, and nothing
that depends on the time or the machine, so the same inputs give the same file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crosslens.analysis.evolution import NO_STEP
from crosslens.dashboards import schema
from crosslens.dashboards.rows import ReadingStats, optional


@dataclass
class DatabaseContent:
    """Everything one database holds, each table's rows in the order they are written."""

    meta: dict[str, Any]
    snapshots: list[tuple]
    vocabulary: list[str]
    features: Iterable[tuple]
    feature_snapshots: Iterable[tuple]
    contexts: Iterable[tuple]
    tasks: list[tuple]
    causal: list[tuple]
    search: Iterable[tuple[int, str]]
    emergence: Iterable[tuple] = ()
    emergence_snapshots: Iterable[tuple] = ()
    lineage_events: list[tuple] = field(default_factory=list)
    lineage_members: list[tuple] = field(default_factory=list)
    relatives: Iterable[tuple] = ()


def write_database(path: Path, content: DatabaseContent) -> None:
    """Write ``content`` to a new SQLite file at ``path`` (replacing one there)."""
    for stale in (path, path.with_name(path.name + "-journal")):
        stale.unlink(missing_ok=True)
    connection = sqlite3.connect(path)
    try:
        connection.execute(f"PRAGMA page_size = {schema.PAGE_SIZE}")
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        with connection:
            schema.create_schema(connection)
            meta = sorted((key, json.dumps(value, sort_keys=True)) for key, value in content.meta.items())
            connection.executemany("INSERT INTO meta VALUES (?, ?)", meta)
            connection.executemany("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)", content.snapshots)
            connection.executemany("INSERT INTO vocabulary VALUES (?, ?)", enumerate(content.vocabulary))
            connection.executemany(_insert("features", 15), content.features)
            connection.executemany(_insert("feature_snapshots", 12), content.feature_snapshots)
            connection.executemany(_insert("contexts", 11), content.contexts)
            connection.executemany(_insert("tasks", 4), content.tasks)
            connection.executemany(_insert("causal", 7), content.causal)
            connection.executemany("INSERT INTO context_search (rowid, text) VALUES (?, ?)", content.search)
            connection.executemany(_insert("emergence", 11), content.emergence)
            connection.executemany(_insert("emergence_snapshots", 11), content.emergence_snapshots)
            connection.executemany(_insert("lineage_events", 11), content.lineage_events)
            connection.executemany(_insert("lineage_members", 3), content.lineage_members)
            connection.executemany(_insert("relatives", 5), content.relatives)
            for sql in schema.INDEXES:
                connection.execute(sql)
    finally:
        connection.close()


def _insert(table: str, n_columns: int) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * n_columns)})"


def feature_rows(analysis: Any, stats: ReadingStats, relevance_F: Any) -> Iterator[tuple]:
    """The features table: class and lifetime from the evolution analysis, firing of the crosscoder's code."""
    lifetimes, steps = analysis.lifetimes, analysis.steps
    peak_norm_F = analysis.norms.amax(dim=1).tolist()
    columns = [
        t.tolist() for t in (lifetimes.emergence, lifetimes.peak, lifetimes.fade, lifetimes.dip, lifetimes.recovery)
    ]
    relevance = None if relevance_F is None else [float(v) for v in relevance_F.tolist()]
    for f in range(analysis.d_sae):
        emergence, peak, fade, dip, recovery = (None if col[f] == NO_STEP else int(col[f]) for col in columns)
        step = lambda index: None if index is None else int(steps[index])  # noqa: E731
        yield (
            f,
            analysis.classes[f],
            emergence,
            step(emergence),
            peak,
            step(peak),
            fade,
            step(fade),
            step(dip),
            step(recovery),
            float(peak_norm_F[f]),
            float(stats.density[0, f]),
            optional(stats.mean[0, f]),
            float(stats.max[0, f]),
            None if relevance is None else relevance[f],
        )


def feature_snapshot_rows(
    analysis: Any, stats: ReadingStats, hist_SFB: np.ndarray, logits: list[tuple]
) -> Iterator[tuple]:
    """The feature_snapshots table, feature by feature, snapshot by snapshot. ``logits[s]`` holds
    snapshot s's (top ids, top values, bottom ids, bottom values), ``[F, n]`` each."""
    norms = analysis.norms.double().numpy()
    relative = analysis.normalized.double().numpy()
    hist = hist_SFB.astype("<u4")
    blobs = [[(a.numpy().astype(dtype)) for a, dtype in zip(parts, ("<i4", "<f4", "<i4", "<f4"))] for parts in logits]
    S = norms.shape[1]
    for f in range(analysis.d_sae):
        for s in range(S):
            top_ids, top_values, bottom_ids, bottom_values = (b[f].tobytes() for b in blobs[s])
            yield (
                f,
                s,
                float(norms[f, s]),
                float(relative[f, s]),
                float(stats.density[s + 1, f]),
                optional(stats.mean[s + 1, f]),
                float(stats.max[s + 1, f]),
                hist[s, f].tobytes(),
                top_ids,
                top_values,
                bottom_ids,
                bottom_values,
            )


def snapshot_rows(analysis: Any, revisions: list[str]) -> list[tuple]:
    """The snapshots table: index, revision, step, tokens seen, label."""
    return [
        (s, revisions[s], int(analysis.steps[s]), analysis.tokens_seen[s], revisions[s])
        for s in range(analysis.n_snapshots)
    ]
