"""The feature list's query: search, filters, sort and paging, from a URL's parameters to SQL.

Every value reaches SQL as a bound parameter; column names come only from the whitelists below.
A string that occurs in a feature's contexts is found through ``context_search`` (an FTS5
trigram index). Its trigrams give the candidates in a few milliseconds, but each candidate's text
is then read to check the string itself; where most features are candidates (a common string),
reading every text in order is faster than looking each one up, so those are scanned. A string
shorter than three characters has no trigram: it is scanned for at most :data:`SCAN_SECONDS`
(the answer then says it is partial). Complete answers are kept (:data:`CACHED_SEARCHES`), so
paging, sorting and filtering one search does not repeat it.
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
from typing import Any

from crosslens.browser.config import MAX_PAGE_SIZE, PAGE_SIZE
from crosslens.browser.database import RunFacts, halves, ints
from crosslens.browser.emergence import (
    AGREEMENT_FILTERS,
    CONTESTED_FILTERS,
    DIFFING_FILTERS,
    LINEAGE_FILTERS,
    add_verdicts,
    filter_clauses,
)
from crosslens.browser.explained import (
    EXPLAINED_SORTS,
    ExplainedQuery,
    add_explanations,
    explained_where,
    parse_explained,
    sort_column,
)
from crosslens.core.errors import CrosslensError
from crosslens.dashboards.schema import RELIE_LABELS

FEATURE_SORTS = (
    "feature",
    "emergence_step",
    "peak_step",
    "fade_step",
    "dip_step",
    "peak_decoder_norm",
    "density",
    "mean_activation",
    "max_activation",
    "relevance",
)
"""Columns of ``features`` the list sorts on."""

SNAPSHOT_SORTS = ("decoder_norm", "relative_norm", "density", "mean_activation", "max_activation")
"""Columns of ``feature_snapshots`` the list sorts on, at the snapshot ``at`` (as ``at_<column>``)."""

STATES = {
    "fires": "fs.density > 0",
    "silent": "fs.density = 0",
    "present": "f.emergence_snapshot <= :at AND (f.fade_snapshot IS NULL OR f.fade_snapshot > :at)",
    "absent": "(f.emergence_snapshot IS NULL OR f.emergence_snapshot > :at OR f.fade_snapshot <= :at)",
    "emerges": "f.emergence_snapshot = :at",
    "fades": "f.fade_snapshot = :at",
    "peaks": "f.peak_snapshot = :at",
}
"""What a feature is at snapshot ``at``: fires (its per-snapshot code is ever > 0 there), present
(emerged by then and not yet faded), or the snapshot is its emergence, fade or peak."""

SCAN_SECONDS = 0.2
"""How long a search for a string of one or two characters scans before answering with what it found."""

SCAN_SHARE = 0.3
"""Share of the features with contexts above which a string's trigram candidates are scanned, not looked up."""

CACHED_SEARCHES = 64
"""Complete search answers kept, per database (the database is read-only while served)."""

_LIST_COLUMNS = (
    "feature",
    "class",
    "emergence_snapshot",
    "emergence_step",
    "peak_step",
    "fade_step",
    "dip_step",
    "recovery_step",
    "peak_decoder_norm",
    "density",
    "mean_activation",
    "max_activation",
    "relevance",
)


class QueryError(CrosslensError):
    """A parameter of the feature list's URL that cannot be read (answered with HTTP 400)."""


@dataclass(frozen=True)
class FeatureQuery:
    """One request for a page of the feature list."""

    ids: tuple[tuple[int, int], ...] = ()
    """Feature id ranges (inclusive), from ``ids=3,10-20``."""
    text: str = ""
    """A string that occurs in the feature's contexts."""
    classes: tuple[str, ...] = ()
    emerged_from: int | None = None
    """Emergence step at least this (dead features, which never emerge, drop out)."""
    emerged_to: int | None = None
    at: int | None = None
    """The snapshot ``state`` and the ``at_*`` sorts read."""
    state: str = ""
    task: str = ""
    relie_class: str = ""
    min_relevance: float | None = None
    """Largest |IE| at least this: over every task (``features.relevance``), or over ``task``'s snapshots."""
    contested: str = ""
    """Contested emergences only: ``any``, ``earlier`` or ``later`` (:data:`CONTESTED_FILTERS`)."""
    lineage: str = ""
    """Features in a lineage event only: ``any`` or one kind (:data:`LINEAGE_FILTERS`)."""
    agreement: str = ""
    """Features in a lineage event another crosscoder makes too, or does not (:data:`AGREEMENT_FILTERS`)."""
    agreement_line: float | None = None
    """The run's agreement line (its database's), where ``agreement`` is given."""
    diffing: str = ""
    """A two-model crosscoder's one-model-only latents only: ``any`` or one latent-scaling verdict
    (:data:`DIFFING_FILTERS`)."""
    sort: str = "feature"
    descending: bool = False
    offset: int = 0
    limit: int = PAGE_SIZE
    explained: ExplainedQuery | None = None
    """Search and filters over the run's explanations (None: it has none)."""


def parse_query(params: Mapping[str, str], facts: RunFacts, default_limit: int = PAGE_SIZE) -> FeatureQuery:
    """A :class:`FeatureQuery` from a URL's query parameters, checked against the run."""
    get = lambda key: (params.get(key) or "").strip()  # noqa: E731
    at = _integer(get("at"), "at") if get("at") else None
    if at is not None and not 0 <= at < facts.n_snapshots:
        raise QueryError(f"at={at}: snapshots are 0 to {facts.n_snapshots - 1}.")
    explained = parse_explained(params, facts.explained)
    sort = get("sort") or ("match" if explained and explained.meaning else "feature")
    if sort not in FEATURE_SORTS + EXPLAINED_SORTS and sort.removeprefix("at_") not in SNAPSHOT_SORTS:
        raise QueryError(
            f"sort={sort}: sort on one of {', '.join(FEATURE_SORTS + tuple('at_' + c for c in SNAPSHOT_SORTS))}."
        )
    state = get("state")
    if state and state not in STATES:
        raise QueryError(f"state={state}: use one of {', '.join(STATES)}.")
    if (state or sort.startswith("at_")) and at is None:
        raise QueryError(f"{'state' if state else 'sort'}={state or sort} reads one snapshot: add at=SNAPSHOT.")
    classes = tuple(c for c in get("class").split(",") if c)
    unknown = [c for c in classes if c not in facts.classes]
    if unknown:
        raise QueryError(f"class={unknown[0]}: this run's classes are {', '.join(facts.classes)}.")
    task = get("task")
    if task and task not in {t["task"] for t in facts.tasks}:
        raise QueryError(
            f"task={task}: this run has attribution for {', '.join(t['task'] for t in facts.tasks) or 'no task'}."
        )
    if get("relie_class") and get("relie_class") not in RELIE_LABELS:
        raise QueryError(f"relie_class={get('relie_class')}: use one of {', '.join(RELIE_LABELS)}.")
    limit = _integer(get("limit"), "limit") if get("limit") else default_limit
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise QueryError(f"limit={limit}: use 1 to {MAX_PAGE_SIZE} features per page.")
    if get("diffing") and facts.emergence.get("diffing") is None:
        raise QueryError(
            f"diffing={get('diffing')}: latent scaling's verdicts are of a two-model crosscoder's one-model-only "
            "latents, and this run's are one model's snapshots (or it holds no check)."
        )
    for name, allowed in (("contested", CONTESTED_FILTERS), ("lineage", LINEAGE_FILTERS), ("diffing", DIFFING_FILTERS)):
        if get(name) and get(name) not in allowed:
            raise QueryError(f"{name}={get(name)}: use one of {', '.join(allowed)}.")
    checked = facts.emergence.get("agreement")
    if get("agreement") and get("agreement") not in AGREEMENT_FILTERS:
        raise QueryError(f"agreement={get('agreement')}: use one of {', '.join(AGREEMENT_FILTERS)}.")
    if get("agreement") and checked is None:
        dropped = facts.emergence.get("agreement_dropped")
        held = (
            f"this database's lineage agreement no longer holds ({dropped})"
            if dropped
            else "this database holds no lineage agreement"
        )
        raise QueryError(
            f"agreement={get('agreement')}: {held}; run `crosslens analyze --crosscoder RUN --store STORE "
            "--lineage-against OTHER`, then `crosslens dashboards RUN --overwrite`."
        )
    return FeatureQuery(
        ids=parse_ids(get("ids")),
        text=params.get("q") or "",
        classes=classes,
        emerged_from=_integer(get("emerged_from"), "emerged_from") if get("emerged_from") else None,
        emerged_to=_integer(get("emerged_to"), "emerged_to") if get("emerged_to") else None,
        at=at,
        state=state,
        task=task,
        relie_class=get("relie_class"),
        min_relevance=_number(get("min_relevance"), "min_relevance") if get("min_relevance") else None,
        contested=get("contested"),
        lineage=get("lineage"),
        agreement=get("agreement"),
        agreement_line=checked["line"] if get("agreement") else None,
        diffing=get("diffing"),
        sort=sort,
        descending=get("order") == "desc",
        offset=max(0, _integer(get("offset") or "0", "offset")),
        limit=limit,
        explained=explained,
    )


def parse_ids(text: str) -> tuple[tuple[int, int], ...]:
    """``"3, 10-20 #7"`` -> ((3, 3), (10, 20), (7, 7))."""
    ranges = []
    for part in re.split(r"[,\s]+", text.replace("#", " ").strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise QueryError(f"feature ids {text!r}: write ids and ranges such as 12, 40-60.")
        low, high = int(match[1]), int(match[2] or match[1])
        ranges.append((min(low, high), max(low, high)))
    return tuple(ranges)


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise QueryError(f"{name}={text}: not a whole number.") from None


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise QueryError(f"{name}={text}: not a number.") from None


# --------------------------------------------------------------------------- text search
@dataclass(frozen=True)
class TextMatches:
    features: list[int]
    route: str
    """'index' (the trigram index) or 'scan' (a string too short for it)."""
    complete: bool


_cache: OrderedDict[tuple[str, str], TextMatches] = OrderedDict()
_cache_lock = threading.Lock()


def text_matches(connection: sqlite3.Connection, text: str) -> TextMatches:
    """The features whose context text holds ``text`` (case-insensitive, as the trigram index is)."""
    key = (connection.execute("PRAGMA database_list").fetchone()[2], text.lower())
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    found = _search(connection, text)
    if found.complete:
        with _cache_lock:
            _cache[key] = found
            while len(_cache) > CACHED_SEARCHES:
                _cache.popitem(last=False)
    return found


def _search(connection: sqlite3.Connection, text: str, scan_share: float = SCAN_SHARE) -> TextMatches:
    pattern = "%" + re.sub(r"([%_\\])", r"\\\1", text) + "%"
    if len(text) >= 3 and not re.search(r"[%_\\]", text):
        grams = " AND ".join('"' + text[i : i + 3].replace('"', '""') + '"' for i in range(len(text) - 2))
        candidates = connection.execute(
            "SELECT count(*) FROM context_search WHERE context_search MATCH ?", (grams,)
        ).fetchone()[0]
        rows = connection.execute("SELECT max(rowid) FROM context_search").fetchone()[0] or 0
        if candidates <= scan_share * rows:
            found = connection.execute("SELECT rowid FROM context_search WHERE text LIKE ?", (f"%{text}%",))
            return TextMatches(sorted(r[0] for r in found), "index", True)
    cursor = connection.execute("SELECT rowid FROM context_search WHERE text LIKE ? ESCAPE '\\'", (pattern,))
    deadline, found = time.perf_counter() + SCAN_SECONDS, []
    while batch := cursor.fetchmany(1024):
        found += [r[0] for r in batch]
        if len(text) < 3 and time.perf_counter() > deadline:
            cursor.close()
            return TextMatches(found, "scan", False)
    return TextMatches(found, "scan", True)


# --------------------------------------------------------------------------- the page
def _where(query: FeatureQuery, matches: TextMatches | None) -> tuple[str, str, dict[str, Any]]:
    """(FROM clause, WHERE clause, parameters) of ``query``."""
    join = query.at is not None and (query.state in ("fires", "silent") or query.sort.startswith("at_"))
    source = "features f" + (
        " JOIN feature_snapshots fs ON fs.feature = f.feature AND fs.snapshot = :at" if join else ""
    )
    clauses, args = [], {"at": query.at}
    if query.ids:
        clauses.append("(" + " OR ".join(f"f.feature BETWEEN :lo{k} AND :hi{k}" for k in range(len(query.ids))) + ")")
        for k, (low, high) in enumerate(query.ids):
            args |= {f"lo{k}": low, f"hi{k}": high}
    if matches is not None:
        clauses.append("f.feature IN (SELECT value FROM json_each(:matches))")
        args["matches"] = json.dumps(matches.features)
    if query.classes:
        clauses.append(f"f.class IN ({', '.join(f':c{k}' for k in range(len(query.classes)))})")
        args |= {f"c{k}": c for k, c in enumerate(query.classes)}
    if query.emerged_from is not None:
        clauses.append("f.emergence_step >= :emerged_from")
        args["emerged_from"] = query.emerged_from
    if query.emerged_to is not None:
        clauses.append("f.emergence_step <= :emerged_to")
        args["emerged_to"] = query.emerged_to
    if query.state:
        clauses.append(STATES[query.state])
    if query.task:
        having = " HAVING max(abs(ie)) >= :min_relevance" if query.min_relevance is not None else ""
        relie = " AND relie_class = :relie_class" if query.relie_class else ""
        clauses.append(f"f.feature IN (SELECT feature FROM causal WHERE task = :task{relie} GROUP BY feature{having})")
        args |= {"task": query.task, "relie_class": query.relie_class, "min_relevance": query.min_relevance}
    else:
        if query.relie_class:
            clauses.append("f.feature IN (SELECT feature FROM causal WHERE relie_class = :relie_class)")
            args["relie_class"] = query.relie_class
        if query.min_relevance is not None:
            clauses.append("f.relevance >= :min_relevance")
            args["min_relevance"] = query.min_relevance
    more, more_args = filter_clauses(
        query.contested, query.lineage, query.diffing, query.agreement, query.agreement_line
    )
    return source, " AND ".join(clauses + more) or "1", args | more_args


def feature_page(connection: sqlite3.Connection, query: FeatureQuery, facts: RunFacts) -> dict[str, Any]:
    """The page of features ``query`` asks for: their rows, how many match in all, and for
    each row its decoder-norm trajectory (norm / peak per snapshot) and strongest context."""
    started = time.perf_counter()
    matches = text_matches(connection, query.text) if query.text else None
    source, where, args = _where(query, matches)
    meanings = None  # -- the explanations' search and filters (crosslens.browser.explained)
    if query.explained is not None:
        found = facts.explained or {}
        source, more, extra, meanings = explained_where(connection, query.explained, found, source, query.sort)
        where, args = " AND ".join([where, *more]), args | extra
    total = connection.execute(f"SELECT count(*) FROM {source} WHERE {where}", args).fetchone()[0]
    column = sort_column(query.sort, query.explained) or (
        f"fs.{query.sort[3:]}" if query.sort.startswith("at_") else f"f.{query.sort}"
    )
    order = f"{column} {'DESC' if query.descending else 'ASC'} NULLS LAST" + (
        ", f.feature" if query.sort != "feature" else ""
    )
    columns = ", ".join(f"f.{c}" for c in _LIST_COLUMNS)
    cursor = connection.execute(
        f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order} LIMIT :limit OFFSET :offset",
        args | {"limit": query.limit, "offset": query.offset},
    )
    rows = [dict(zip(_LIST_COLUMNS, row)) for row in cursor]
    _add_trajectories(connection, rows, query.at)
    if rows:
        add_verdicts(connection, rows, facts.agreement_line)
    _add_snippets(connection, rows, facts, query.at, query.text)
    if query.explained is not None:
        add_explanations(connection, rows, meanings)
    search = (
        None
        if matches is None
        else {"route": matches.route, "complete": matches.complete, "features": len(matches.features)}
    )
    return {
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
        "rows": rows,
        "search": search,
        "meaning": None if meanings is None else {"features": len(meanings.ranked)},
        "ms": round(1000 * (time.perf_counter() - started), 1),
    }


def feature_rows(connection: sqlite3.Connection, features: list[int]) -> list[dict]:
    """The list's columns and decoder-norm trajectory (``norms``) of ``features``, without a context
    snippet: the rows the live panel shows beside the features firing on a text."""
    columns = ", ".join(f"f.{c}" for c in _LIST_COLUMNS)
    cursor = connection.execute(
        f"SELECT {columns} FROM features f WHERE f.feature IN (SELECT value FROM json_each(?)) ORDER BY f.feature",
        (json.dumps(features),),
    )
    rows = [dict(zip(_LIST_COLUMNS, row)) for row in cursor]
    _add_trajectories(connection, rows, None)
    return rows


def _add_trajectories(connection: sqlite3.Connection, rows: list[dict], at: int | None) -> None:
    """Each row's relative norm per snapshot (``norms``), and its values at ``at``."""
    by_feature = {row["feature"]: row for row in rows}
    for row in rows:
        row["norms"] = []
    if not rows:
        return
    cursor = connection.execute(
        "SELECT feature, snapshot, relative_norm, decoder_norm, density, mean_activation, max_activation "
        "FROM feature_snapshots WHERE feature IN (SELECT value FROM json_each(?)) ORDER BY feature, snapshot",
        (json.dumps(list(by_feature)),),
    )
    for feature, snapshot, relative, norm, density, mean, peak in cursor:
        row = by_feature[feature]
        row["norms"].append(round(relative, 4))
        if snapshot == at:
            row["at"] = {
                "decoder_norm": norm,
                "relative_norm": relative,
                "density": density,
                "mean_activation": mean,
                "max_activation": peak,
            }


def _add_snippets(connection: sqlite3.Connection, rows: list[dict], facts: RunFacts, at: int | None, text: str) -> None:
    """Each row's strongest top context at ``at`` (the crosscoder's own code when None): with a
    search string, the strongest one that holds it, else the strongest."""
    if not rows:
        return
    snapshot = -1 if at is None else at
    by_feature: dict[int, list] = {}
    # with a search string, the strongest few are read to find one that holds it
    limit = "AND rank < 5" if text else "AND rank = 0"
    cursor = connection.execute(
        "SELECT feature, rank, activation, pos, first_pos, token_ids, activations FROM contexts "
        f"WHERE feature IN (SELECT value FROM json_each(?)) AND snapshot = ? AND kind = 'top' {limit} ORDER BY feature, rank",
        (json.dumps([row["feature"] for row in rows]), snapshot),
    )
    for feature, _rank, activation, pos, first_pos, token_ids, activations in cursor:
        by_feature.setdefault(feature, []).append((activation, pos - first_pos, token_ids, activations))
    needle = text.lower()
    for row in rows:
        found = by_feature.get(row["feature"], [])
        tokens = [[facts.token(t) for t in ints(item[2])] for item in found]
        pick = next((k for k, words in enumerate(tokens) if needle and needle in "".join(words).lower()), 0)
        if not found:
            row["snippet"] = None
            continue
        activation, focus, _, activations = found[pick]
        row["snippet"] = {
            "snapshot": snapshot,
            "activation": activation,
            "focus": focus,
            "tokens": tokens[pick],
            "acts": [round(a, 3) for a in halves(activations)],
        }
