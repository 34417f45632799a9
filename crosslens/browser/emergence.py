"""The browser's reading of the emergence check and lineage tables: the list's filters on them
(contested emergences, lineage events), each listed feature's verdict, and a feature page's
latent-scaled presence, lineage events and relatives through time."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from crosslens.core.model_specs import is_models_suite
from crosslens.dashboards.schema import agreement_problem

CONTESTED_FILTERS = ("any", "earlier", "later")
"""``contested=``: any contested emergence, or one way."""

LINEAGE_FILTERS = ("any", "split", "merge", "handoff")
"""``lineage=``: features in any lineage event, or in one kind."""

AGREEMENT_FILTERS = ("made", "not made")
"""``agreement=``: features in a lineage event (of the ``lineage=`` kind, if one) that the crosscoder
``analyze --lineage-against`` named makes too (agreement at or above its line), or does not."""

DIFFING_VERDICTS = ("specific", "shrinkage", "decoupling", "not measured")
"""crosslens.analysis.diffing's verdicts on a two-model crosscoder's one-model-only latents (the
browser imports no torch)."""

DIFFING_FILTERS = ("any", *DIFFING_VERDICTS)
"""``diffing=``: a two-model crosscoder's one-model-only latents with any latent-scaling verdict, or one."""


def filter_clauses(
    contested: str, lineage: str, diffing: str, agreement: str = "", line: float | None = None
) -> tuple[list[str], dict[str, Any]]:
    """SQL clauses on ``f.feature`` for the list's four filters (values checked by the caller;
    ``line``: the agreement's, where ``agreement`` is given)."""
    clauses, args = [], {}
    for column, value in (("contested", contested), ("diffing", diffing)):  # any value, or this one
        if value == "any":
            clauses.append(f"f.feature IN (SELECT feature FROM emergence WHERE {column} IS NOT NULL)")
        elif value:
            clauses.append(f"f.feature IN (SELECT feature FROM emergence WHERE {column} = :{column})")
            args[column] = value
    if lineage:
        if lineage == "any":
            clauses.append(
                "f.feature IN (SELECT m.feature FROM lineage_members m JOIN lineage_events e USING (event) "
                "WHERE e.held)"
            )
        else:
            clauses.append(
                "f.feature IN (SELECT m.feature FROM lineage_members m JOIN lineage_events e USING (event) "
                "WHERE e.held AND e.kind = :lineage)"
            )
            args["lineage"] = lineage
    if agreement:
        kind = " AND e.kind = :lineage" if lineage and lineage != "any" else ""
        test = "e.agreement >= :line" if agreement == "made" else "e.agreement < :line"
        clauses.append(
            "f.feature IN (SELECT m.feature FROM lineage_members m JOIN lineage_events e USING (event) "
            f"WHERE e.held{kind} AND {test})"
        )
        args |= {"line": line} | ({"lineage": lineage} if kind else {})
    return clauses, args


def add_verdicts(connection: sqlite3.Connection, rows: list[dict], line: float | None) -> None:
    """Each listed feature's ``contested`` (earlier, later, None) and latent-scaled emergence step,
    the kinds of lineage event it is in, and per kind whether the crosscoder the lineage was checked
    against makes one of them too (``lineage_made``; None: not checked, or ``line`` None: the run's
    agreement, :func:`run_counts`, is absent or no longer holds)."""
    ids = json.dumps([row["feature"] for row in rows])
    verdicts = {
        f: (contested, step, diffing)
        for f, contested, step, diffing in connection.execute(
            "SELECT feature, contested, scaled_step, diffing FROM emergence "
            "WHERE feature IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    }
    kinds: dict[int, list[str]] = {}
    made: dict[int, dict[str, bool | None]] = {}
    for f, kind, any_made in connection.execute(
        "SELECT m.feature, e.kind, max(e.agreement >= ?) FROM lineage_members m JOIN lineage_events e USING (event) "
        "WHERE e.held AND m.feature IN (SELECT value FROM json_each(?)) GROUP BY m.feature, e.kind "
        "ORDER BY m.feature, e.kind",
        (line, ids),
    ):
        kinds.setdefault(f, []).append(kind)
        made.setdefault(f, {})[kind] = None if any_made is None else bool(any_made)
    for row in rows:
        row["contested"], row["scaled_emergence_step"], row["diffing"] = verdicts.get(
            row["feature"], (None, None, None)
        )
        row["lineage"] = kinds.get(row["feature"], [])
        row["lineage_made"] = made.get(row["feature"], {})


def run_counts(connection: sqlite3.Connection, meta: dict[str, Any]) -> dict[str, Any]:
    """What the run's pages say about its check: whether it has one, contested counts, events per kind,
    and the lineage's agreement with another crosscoder where that crosscoder is still the one it was
    measured with (else ``agreement_dropped`` says why, and the pages show none)."""
    contested = dict(
        connection.execute(
            "SELECT contested, count(*) FROM emergence WHERE contested IS NOT NULL GROUP BY contested"
        ).fetchall()
    )
    events = dict(connection.execute("SELECT kind, count(*) FROM lineage_events WHERE held GROUP BY kind").fetchall())
    set_aside = connection.execute("SELECT count(*) FROM lineage_events WHERE NOT held").fetchone()[0]
    record = meta.get("emergence")
    dropped = agreement_problem(record)
    return {
        "agreement": None if dropped else _agreement_counts(connection, (record or {}).get("agreement")),
        "agreement_dropped": dropped or None,
        "computed": record is not None,
        "latent_scaling": bool(record and record.get("latent_scaling")),
        "n_tokens": record.get("n_tokens") if record else None,
        "contested": {kind: contested.get(kind, 0) for kind in CONTESTED_FILTERS[1:]},
        "events": {kind: events.get(kind, 0) for kind in LINEAGE_FILTERS[1:]},
        "set_aside": set_aside,
        "diffing": _diffing_counts(connection) if _two_models(meta) else None,
    }


def _agreement_counts(connection: sqlite3.Connection, agreement: dict[str, Any] | None) -> dict[str, Any] | None:
    """The crosscoder the lineage was checked against (``against``, ``crosscoder``, ``line``) and, per
    kind, how many held events it makes too (``made``) of those it was asked about (``read``)."""
    if agreement is None:
        return None
    counts = {kind: [0, 0] for kind in LINEAGE_FILTERS[1:]}
    for kind, made, read in connection.execute(
        "SELECT kind, sum(agreement >= ?), count(agreement) FROM lineage_events WHERE held GROUP BY kind",
        (agreement["line"],),
    ):
        counts[kind] = [int(made or 0), int(read)]
    return agreement | {
        "made": {kind: m for kind, (m, _) in counts.items()},
        "read": {kind: r for kind, (_, r) in counts.items()},
    }


def _two_models(meta: dict[str, Any]) -> bool:
    """Whether the crosscoder reads distinct models (a diffing suite: its record's family, as
    analysis's ``is_diffing`` reads it; ``crosslens dashboards`` builds a database of two only)."""
    return is_models_suite(meta.get("suite"))


def _diffing_counts(connection: sqlite3.Connection) -> dict[str, int]:
    """The one-model-only latents per latent-scaling verdict."""
    found = dict(connection.execute("SELECT diffing, count(*) FROM emergence GROUP BY diffing").fetchall())
    return {verdict: found.get(verdict, 0) for verdict in DIFFING_VERDICTS}


def feature_emergence(
    connection: sqlite3.Connection, feature: int, n_snapshots: int, line: float | None, carrier_line: float
) -> dict[str, Any]:
    """A feature page's check (verdict, emergences, latent-scaled presence and the latent carrying
    its direction, ``[latent, cosine]`` or None, per snapshot: the nearest other latent present,
    where its cosine reaches ``carrier_line``, the check's ``carrier_cosine``; one under it carries
    nothing the check counted), its lineage events (each with
    ``first_snapshot``: every latent of it strongest at the first snapshot, its agreement with
    another crosscoder at ``line``, both None where ``line`` is: no agreement that holds, and a split
    by composition's children as ``composed``, ``[[[latent, weight], ...], ...]``, None for the other
    events) and its relatives at each snapshot (``[[relative, cosine], ...]`` nearest first)."""
    row = connection.execute(
        "SELECT measured, contested, decoder_snapshot, scaled_snapshot, reported_snapshot, early_presence, n_fire, "
        "diffing FROM emergence WHERE feature = ?",
        (feature,),
    ).fetchone()
    check = None
    if row is not None:
        keys = ("measured", "contested", "decoder_snapshot", "scaled_snapshot", "reported_snapshot", "early_presence")
        check = dict(zip(keys + ("n_fire", "diffing"), row))
        check["measured"] = bool(check["measured"])
        presence: list[float | None] = [None] * n_snapshots
        carriers: list[list[float] | None] = [None] * n_snapshots
        for snapshot, value, carrier, cosine in connection.execute(
            "SELECT snapshot, presence, carrier, carrier_cosine FROM emergence_snapshots WHERE feature = ? "
            "ORDER BY snapshot",
            (feature,),
        ):
            if 0 <= snapshot < n_snapshots:
                presence[snapshot] = round(value, 4)
                carried = carrier is not None and cosine >= carrier_line
                carriers[snapshot] = [carrier, round(cosine, 3)] if carried else None
        check["presence"], check["carriers"] = presence, carriers
    events = [
        {
            "event": e,
            "kind": kind,
            "snapshot": s,
            "how": how,
            "cosine": cosine,
            "before": json.loads(b),
            "after": json.loads(a),
            "held": bool(held),
            "first_snapshot": bool(first),
            "agreement": None if line is None else agreement,
            "made": None if made is None else bool(made),
            "composed": None if composed is None else json.loads(composed),
        }
        for e, kind, s, how, cosine, b, a, held, first, agreement, made, composed in connection.execute(
            "SELECT e.event, e.kind, e.snapshot, e.how, e.cosine, e.before, e.after, e.held, "
            # every latent of the event strongest at the first snapshot: lineage.strongest_at_first_snapshot,
            # read from the database's peaks here, where the browser runs without torch
            "NOT EXISTS (SELECT 1 FROM lineage_members o JOIN features f USING (feature) "
            "WHERE o.event = e.event AND f.peak_snapshot IS NOT 0), e.agreement, "
            # made there too: at or above the line the run's record counts at (NULL: not measured)
            "e.agreement >= ?, e.composed "
            "FROM lineage_events e JOIN lineage_members m USING (event) WHERE m.feature = ? ORDER BY e.snapshot, e.event",
            (line, feature),
        )
    ]
    relatives: list[list[list[float]]] = [[] for _ in range(n_snapshots)]
    for snapshot, relative, cosine in connection.execute(
        "SELECT snapshot, relative, cosine FROM relatives WHERE feature = ? ORDER BY snapshot, rank", (feature,)
    ):
        if 0 <= snapshot < n_snapshots:
            relatives[snapshot].append([relative, round(cosine, 3)])
    return {"emergence_check": check, "lineage": events, "relatives": relatives}
