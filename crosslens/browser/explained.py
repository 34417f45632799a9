"""The run's explanations in the browser (``RUN/explanations.sqlite``, from ``crosslens explain``):
found beside the feature database and attached to every connection, searched by meaning from the
feature list, and shown per phase on a feature's page; their counts follow the file as a run
writes it (:meth:`crosslens.browser.database.Database.follow_explanations`).

The file is attached only where it was made from this very feature database
(:func:`crosslens.dashboards.explanation_schema.binding_problem`); one made from another is left
out, and the run's facts say why (the page shows it). The list's parameters:

* ``meaning``: words an explanation holds (stemmed: "plural nouns" finds "a plural noun"; a
  phrase in double quotes; the last word also matches as a prefix while it is typed), every word in
  one explanation. The features found are ranked by their best-matching explanation (SQLite FTS5's
  bm25), the default order while ``meaning`` is set (``sort=match``);
* ``drifted=1``: features whose meaning drifted between phases;
* ``min_detection``: features whose explanation's detection score is at least this;
* sorts ``detection`` and ``drift``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosslens.core.errors import CrosslensError
from crosslens.dashboards.explanation_schema import (
    ALIAS,
    STRIDE,
    binding_problem,
    explanations_path,
    read_meta,
    schema_problem,
)

EXPLAINED_SORTS = ("match", "detection", "drift")
"""Sorts the explanations add to the list (``match``: the best-matching explanation first)."""

CACHED_SEARCHES = 64


class ExplainedQueryError(CrosslensError):
    """A parameter about explanations that cannot be read (answered with HTTP 400)."""


class UnknownFeature(ExplainedQueryError, LookupError):
    """A feature id the database does not hold (answered with HTTP 404)."""


@dataclass(frozen=True)
class ExplainedQuery:
    """The list's parameters about explanations."""

    meaning: str = ""
    drifted: bool = False
    min_detection: float | None = None


def find_explanations(database: Path, database_sha256: str | None) -> dict[str, Any] | None:
    """What the run's explanations file holds (``path``, counts, prompt format, drift rule), or
    ``{"problem": ...}`` where it is stale or unreadable; None where there is none."""
    path = explanations_path(database)
    if not path.is_file():
        return None
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        problem = schema_problem(connection)
        meta = read_meta(connection) if problem is None else {}
        problem = problem or binding_problem(meta, database_sha256)
        if problem is not None:
            return {"path": str(path), "problem": f"{path} is not shown: {problem}; explain the run again"}
        one = lambda sql: connection.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "path": str(path),
            "problem": None,
            "explanations": one("SELECT count(*) FROM explanations"),
            "features": one("SELECT count(DISTINCT feature) FROM explanations"),
            "flagged": one("SELECT count(*) FROM feature_scores WHERE flagged = 1"),
            "sources": [row[0] for row in connection.execute("SELECT DISTINCT source FROM explanations ORDER BY 1")],
            "prompt_format": meta.get("prompt_format"),
            "drift_rule": meta.get("drift_rule"),
            "endpoint": (meta.get("endpoint") or {}).get("model"),
        }
    except sqlite3.DatabaseError as error:
        return {"path": str(path), "problem": f"{path} is not shown: unreadable ({error})"}
    finally:
        connection.close()


def attach_explanations(connection: sqlite3.Connection, found: dict[str, Any] | None) -> None:
    """Attach the explanations file ``found`` describes, where it is shown."""
    if found and not found.get("problem"):
        uri = Path(found["path"]).resolve().as_uri() + "?mode=ro"
        connection.execute(f"ATTACH DATABASE ? AS {ALIAS}", (uri,))


def parse_explained(params: Mapping[str, str], found: dict[str, Any] | None) -> ExplainedQuery | None:
    """The explanation parameters of a list URL; None where the run has no explanations shown."""
    meaning = (params.get("meaning") or "").strip()
    drifted = (params.get("drifted") or "") in ("1", "true", "on")
    raw = (params.get("min_detection") or "").strip()
    if not found or found.get("problem"):
        if meaning or drifted or raw:
            raise ExplainedQueryError(
                "this run has no explanations to search: run `crosslens explain RUN` (they are searched as it writes them)."
            )
        return None
    try:
        min_detection = float(raw) if raw else None
    except ValueError:
        raise ExplainedQueryError(f"min_detection={raw}: not a number.") from None
    return ExplainedQuery(meaning, drifted, min_detection)


def fts_query(text: str) -> str:
    """Words (and "quoted phrases") of ``text`` as an FTS5 query: all of them, the last also as a
    prefix unless the text ends with a space; nothing the user types is read as FTS5 syntax."""
    phrases = re.findall(r'"([^"]+)"', text)
    rest = re.sub(r'"[^"]*"?', " ", text)
    words = re.findall(r"\w+", rest)
    terms = ['"' + " ".join(re.findall(r"\w+", p)) + '"' for p in phrases if re.search(r"\w", p)]
    for k, word in enumerate(words):
        prefix = k == len(words) - 1 and not text.endswith((" ", '"'))
        terms.append(f'"{word}"' + ("*" if prefix else ""))
    return " AND ".join(terms)


@dataclass(frozen=True)
class Matches:
    """Features whose explanations match, best first, and the id of each one's best explanation."""

    ranked: list[int]
    best: dict[int, int]


_cache: OrderedDict[tuple, Matches] = OrderedDict()
_lock = threading.Lock()


def meaning_matches(connection: sqlite3.Connection, found: dict[str, Any], meaning: str) -> Matches:
    """The features whose explanations hold ``meaning``, ranked (kept for the file as it is now)."""
    query = fts_query(meaning)
    path = Path(found["path"])
    stamp = tuple(
        (p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None
        for p in (path, path.with_name(path.name + "-wal"))
    )
    key = (str(path), stamp, query)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    ranked, best = [], {}
    if query:
        # an explanation's id holds its feature (explanation_id): the index alone answers, no join
        rows = connection.execute(
            f"SELECT bm25(explanation_search), rowid FROM {ALIAS}.explanation_search WHERE explanation_search MATCH ?",
            (query,),
        ).fetchall()
        rows.sort()  # best (lowest bm25) first, ties by id
        for _, row_id in rows:
            feature = row_id // STRIDE
            if feature not in best:
                best[feature] = row_id
                ranked.append(feature)
    found_matches = Matches(ranked, best)
    with _lock:
        _cache[key] = found_matches
        while len(_cache) > CACHED_SEARCHES:
            _cache.popitem(last=False)
    return found_matches


def explained_where(
    connection: sqlite3.Connection, query: ExplainedQuery, found: dict[str, Any], source: str, sort: str
) -> tuple[str, list[str], dict[str, Any], Matches | None]:
    """(FROM clause, WHERE clauses, parameters, matches) that the explanation parameters (and the
    sort ``sort``) add to the list's query."""
    if query.drifted or query.min_detection is not None or sort in ("detection", "drift"):
        source += f" LEFT JOIN {ALIAS}.feature_scores xs ON xs.feature = f.feature"
    clauses: list[str] = []
    args: dict[str, Any] = {}
    matches = None
    if query.meaning:
        matches = meaning_matches(connection, found, query.meaning)
        # the features best first: their place in that list (json_each's key) is their rank
        source += " JOIN json_each(:meaning_ranked) xm ON xm.value = f.feature"
        args["meaning_ranked"] = json.dumps(matches.ranked)
    if query.drifted:
        clauses.append("xs.flagged = 1")
    if query.min_detection is not None:
        clauses.append("xs.detection >= :min_detection")
        args["min_detection"] = query.min_detection
    return source, clauses, args, matches


def sort_column(sort: str, query: ExplainedQuery | None) -> str | None:
    """The SQL column of an explanation sort (None for the list's own sorts)."""
    if sort not in EXPLAINED_SORTS:
        return None
    if query is None:
        raise ExplainedQueryError(
            f"sort={sort}: this run has no explanations: run `crosslens explain RUN` (they are sorted as it writes them)."
        )
    if sort == "match" and not query.meaning:
        raise ExplainedQueryError("sort=match ranks a search: add meaning=WORDS.")
    return {"match": "xm.key", "detection": "xs.detection", "drift": "xs.drift"}[sort]


def add_explanations(connection: sqlite3.Connection, rows: list[dict], matches: Matches | None) -> None:
    """Each row's explanation to show (the best-matching one in a search, else its code's, else
    its first), its detection score and drift."""
    if not rows:
        return
    ids = json.dumps([row["feature"] for row in rows])
    found: dict[int, list] = {}
    for feature, row_id, snapshot, source, text, detection in connection.execute(
        f"SELECT e.feature, e.id, e.snapshot, e.source, e.text, s.balanced_accuracy FROM {ALIAS}.explanations e "
        f"LEFT JOIN {ALIAS}.scores s ON s.explanation = e.id AND s.scored_on = e.snapshot "
        "WHERE e.feature IN (SELECT value FROM json_each(?)) ORDER BY e.feature, e.snapshot, e.id",
        (ids,),
    ):
        found.setdefault(feature, []).append(
            {"id": row_id, "snapshot": snapshot, "source": source, "text": text, "detection": detection}
        )
    verdicts = {
        feature: {"detection": detection, "drift": drift, "flagged": bool(flagged)}
        for feature, detection, drift, flagged in connection.execute(
            f"SELECT feature, detection, drift, flagged FROM {ALIAS}.feature_scores "
            "WHERE feature IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    }
    for row in rows:
        items = found.get(row["feature"], [])
        wanted = matches.best.get(row["feature"]) if matches else None
        pick = next((e for e in items if e["id"] == wanted), None) or next(
            (e for e in items if e["snapshot"] < 0), items[0] if items else None
        )
        row["explanation"] = pick
        row["explained"] = verdicts.get(row["feature"], {"detection": None, "drift": None, "flagged": False})


def feature_explanations(connection: sqlite3.Connection, feature: int, found: dict[str, Any] | None) -> dict[str, Any]:
    """A feature's explanations with their phases and scores, its drift matrix and verdict."""
    started = time.perf_counter()
    if connection.execute("SELECT 1 FROM features WHERE feature = ?", (feature,)).fetchone() is None:
        n = connection.execute("SELECT count(*) FROM features").fetchone()[0]
        raise UnknownFeature(f"feature {feature}: this database holds features 0 to {n - 1}.")
    if not found or found.get("problem"):
        return {"feature": feature, "available": False, "problem": (found or {}).get("problem"), "explanations": []}
    phases = [
        {"phase": phase, "snapshot": snapshot, "explained": explained}
        for phase, snapshot, explained in connection.execute(
            f"SELECT phase, snapshot, explained FROM {ALIAS}.phases WHERE feature = ?", (feature,)
        )
    ]
    order = {name: k for k, name in enumerate(("code", "emergence", "peak", "last"))}
    phases.sort(key=lambda p: order.get(p["phase"], 9))
    explanations = []
    for row_id, snapshot, source, text, model, prompt in connection.execute(
        f"SELECT id, snapshot, source, text, model, prompt FROM {ALIAS}.explanations WHERE feature = ? ORDER BY id",
        (feature,),
    ):
        scores = {
            str(scored_on): {"balanced_accuracy": value, "tp": tp, "p": p, "tn": tn, "n": n}
            for scored_on, value, tp, p, tn, n in connection.execute(
                f"SELECT scored_on, balanced_accuracy, true_positives, n_activating, true_negatives, n_non_activating "
                f"FROM {ALIAS}.scores WHERE explanation = ? ORDER BY scored_on",
                (row_id,),
            )
        }
        labels = [p["phase"] for p in phases if p["explained"] == snapshot]
        explanations.append(
            {"id": row_id, "snapshot": snapshot, "source": source, "text": text, "model": model, "prompt": prompt}
            | {
                "phases": labels,
                "scores": scores,
                "detection": (scores.get(str(snapshot)) or {}).get("balanced_accuracy"),
            }
        )
    verdict = connection.execute(
        f"SELECT detection, drift, explained, scored_on, flagged FROM {ALIAS}.feature_scores WHERE feature = ?",
        (feature,),
    ).fetchone()
    drift = None
    if verdict is not None:
        detection, value, explained, scored_on, flagged = verdict
        drift = {
            "detection": detection,
            "drift": value,
            "explained": explained,
            "scored_on": scored_on,
            "flagged": bool(flagged),
        }
    order_phase = {p["explained"]: order.get(p["phase"], 9) for p in reversed(phases)}
    explanations.sort(key=lambda e: (order_phase.get(e["snapshot"], 10), e["snapshot"], e["source"]))
    return {
        "feature": feature,
        "available": True,
        "phases": phases,
        "explanations": explanations,
        "verdict": drift,
        "drift_rule": found.get("drift_rule"),
        "ms": round(1000 * (time.perf_counter() - started), 1),
    }
