"""The explanations of a run's features: their layout, and how a reader finds and checks them.

``crosslens explain RUN`` asks a language model to explain each feature, at the crosscoder's own
code and at each phase of its life, and to judge held-out contexts from each explanation alone
(a detection score). Those answers live in ``RUN/explanations.sqlite``, beside the feature
database, in the tables below; every reader (``crosslens browse``, ``crosslens export``) attaches
the file to its connection to the feature database under the name :data:`ALIAS`, so one SQL
statement reads both::

    sqlite3 RUN/dashboards.sqlite "ATTACH 'RUN/explanations.sqlite' AS explained" \\
      "SELECT e.feature, e.snapshot, e.text, s.balanced_accuracy FROM explained.explanations e
       JOIN explained.scores s ON s.explanation = e.id AND s.scored_on = e.snapshot
       ORDER BY s.balanced_accuracy DESC LIMIT 10"

Why a file of its own: the feature database is what ``crosslens dashboards`` wrote, sealed by
the sha256 in ``dashboards.json`` (the same bytes for the same inputs). Explanations are a
remote model's answers, paid for one request at a time and written as they arrive; keeping them
apart leaves the seal intact while they are written, lets the browser read both at once, and a
rebuilt feature database can never silently pair with explanations of contexts that are gone:
``meta.database_sha256`` names the feature database the explanations were made from, and
:func:`binding_problem` refuses any other.

``snapshot`` means what it means in :mod:`crosslens.dashboards.schema`: 0 .. S-1 is a
snapshot's per-snapshot reading, -1 the crosscoder's own code. :data:`FORMAT` names the layout
(``meta.format``); a reader refuses another with :func:`schema_problem`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from crosslens.core.hooks import block_index
from crosslens.dashboards.schema import TABLES as FEATURE_TABLES

FORMAT = "crosslens.explanations/1"
"""The layout's name and version, ``meta['format']``."""

EXPLANATIONS_NAME = "explanations.sqlite"
"""The file's name inside the run folder."""

ALIAS = "explained"
"""The schema name readers attach the file under (``explained.explanations``, ...)."""

PHASES = ("code", "emergence", "peak", "last")
"""What a feature is explained at: the crosscoder's own code (snapshot -1), and the phases of its
life in the evolution analysis: its emergence snapshot, its peak snapshot, the last snapshot."""

LIFE_PHASES = PHASES[1:]
"""The phases whose explanations are scored on each other's contexts (the drift matrix)."""

SOURCES = ("crosslens", "delphi", "neuronpedia")
"""Where an explanation came from: asked by ``crosslens explain``, or imported from a delphi run's
output or Neuronpedia's explanation export (``crosslens explain --import``)."""

TABLES: dict[str, str] = {
    "meta": FEATURE_TABLES["meta"],  # the feature database's: key -> JSON value (META_KEYS below)
    "explanations": """
CREATE TABLE explanations (
    id                INTEGER PRIMARY KEY,  -- explanation_id(feature, snapshot, source); explanation_search's rowid
    feature           INTEGER NOT NULL,
    snapshot          INTEGER NOT NULL,     -- the reading explained: 0 .. S-1, or -1 for the crosscoder's own code
    source            TEXT NOT NULL,        -- crosslens | delphi | neuronpedia (SOURCES)
    text              TEXT NOT NULL,        -- the explanation
    model             TEXT,                 -- the model that wrote it (NULL: the import did not say)
    prompt            TEXT NOT NULL,        -- the prompt format and version it was asked with, or the import's own name for it
    examples          TEXT,                 -- JSON [[seq, pos], ...]: the contexts shown (NULL: imported)
    prompt_tokens     INTEGER,              -- as the endpoint counted them (NULL: not reported, or imported)
    completion_tokens INTEGER,
    UNIQUE (feature, snapshot, source)
)""",
    "phases": """
CREATE TABLE phases (
    feature   INTEGER NOT NULL,
    phase     TEXT NOT NULL,     -- code | emergence | peak | last (PHASES)
    snapshot  INTEGER NOT NULL,  -- the phase's reading (-1 for code)
    explained INTEGER NOT NULL,  -- the reading whose explanation stands for it: the phase's own, or an earlier
                                 -- phase's where the contexts there are the same ones
    PRIMARY KEY (feature, phase)
) WITHOUT ROWID""",
    "scores": """
CREATE TABLE scores (
    explanation       INTEGER NOT NULL,  -- explanations.id
    scored_on         INTEGER NOT NULL,  -- the reading whose held-out contexts were judged (= its own: the detection score)
    feature           INTEGER NOT NULL,
    balanced_accuracy REAL NOT NULL,     -- (true_positives / n_activating + true_negatives / n_non_activating) / 2
    true_positives    INTEGER NOT NULL,
    n_activating      INTEGER NOT NULL,
    true_negatives    INTEGER NOT NULL,
    n_non_activating  INTEGER NOT NULL,
    model             TEXT,              -- the model that judged (NULL: the import did not say)
    prompt            TEXT NOT NULL,     -- the prompt format and version with what chose the passages judged
                                         -- (the rule, window, n_examples, seed), or the import's scorer
    PRIMARY KEY (explanation, scored_on)
) WITHOUT ROWID""",
    "feature_scores": """
CREATE TABLE feature_scores (
    feature   INTEGER PRIMARY KEY,
    detection REAL,              -- the detection score of its code's explanation (else its best one's; NULL: none scored)
    drift     REAL,              -- the largest drop of a life phase's explanation from its own contexts to another phase's,
                                 -- both scored by one judge, scores.model and prompt (NULL: no such pair scored)
    explained INTEGER,           -- the reading of that explanation ...
    scored_on INTEGER,           -- ... and of the contexts it fell on
    flagged   INTEGER NOT NULL   -- 1: its meaning drifted (meta.drift_rule)
)""",
    "failures": """
CREATE TABLE failures (
    feature   INTEGER NOT NULL,
    snapshot  INTEGER NOT NULL,  -- the reading explained
    kind      TEXT NOT NULL,     -- explain | score
    scored_on INTEGER NOT NULL,  -- score: the reading judged (explain: the reading explained)
    source    TEXT NOT NULL,     -- the explanation's source
    attempts  INTEGER NOT NULL,  -- times it was asked for and not got, over every run (each after its retries,
                                 -- or a second unreadable answer)
    error     TEXT NOT NULL,     -- the last one's failure, one line (never the key)
    PRIMARY KEY (feature, snapshot, kind, scored_on, source)
) WITHOUT ROWID""",
    "explanation_search": """
CREATE VIRTUAL TABLE explanation_search USING fts5(
    text,                      -- explanations.text (rowid = explanations.id), kept in step by triggers
    content = 'explanations',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
)""",
}
"""Every table's SQL, in creation order."""

TRIGGERS: tuple[str, ...] = (
    "CREATE TRIGGER explanations_added AFTER INSERT ON explanations BEGIN "
    "INSERT INTO explanation_search (rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER explanations_removed AFTER DELETE ON explanations BEGIN "
    "INSERT INTO explanation_search (explanation_search, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER explanations_changed AFTER UPDATE OF text ON explanations BEGIN "
    "INSERT INTO explanation_search (explanation_search, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO explanation_search (rowid, text) VALUES (new.id, new.text); END",
)
"""The full-text index follows the explanations table (SQLite's external-content FTS5 pattern)."""

INDEXES: tuple[str, ...] = (
    "CREATE INDEX explanations_feature ON explanations (feature, snapshot)",
    "CREATE INDEX scores_feature ON scores (feature)",
    "CREATE INDEX feature_scores_flagged ON feature_scores (flagged, drift)",
)

META_KEYS: dict[str, str] = {
    "format": "FORMAT",
    "crosslens_version": "the crosslens that created it",
    "database_sha256": "the feature database the explanations were made from (dashboards.json's database_sha256)",
    "run": "the run as training left it (dashboards.json's partners.run)",
    "n_features": "the feature database's d_sae",
    "n_snapshots": "its snapshots",
    "prompt_format": "the prompt format (and version) crosslens explain asks with, PROMPT_FORMAT",
    "drift_rule": "{min_score, min_drop}: a feature drifted where a life phase's explanation scores at least min_score "
    "on its own contexts and at least min_drop less on another phase's, by the same judge; every flag in feature_scores "
    "was drawn by it",
    "endpoint": "the endpoint and model of the last crosslens explain that asked for something (its URL without "
    "credentials; never the key)",
}
"""What ``meta`` holds (values are JSON)."""

STRIDE = 4096
"""explanation_id's room per feature: (S + 1) readings times the sources."""

MAX_SNAPSHOTS = (STRIDE - len(SOURCES)) // len(SOURCES)
"""The most snapshots whose explanations :func:`explanation_id` numbers within one feature's
:data:`STRIDE` (1,364): with more, a feature's last readings would take the next feature's ids."""


def explanation_id(feature: int, snapshot: int, source: str) -> int:
    """The row id of a feature's explanation at a reading from a source: the same for the same
    explanation in every run, whatever the order answers arrive in."""
    return int(feature) * STRIDE + (int(snapshot) + 1) * len(SOURCES) + SOURCES.index(source)


def create_schema(connection: sqlite3.Connection) -> None:
    """Create every table, trigger and index of a new file."""
    for sql in (*TABLES.values(), *TRIGGERS, *INDEXES):
        connection.execute(sql)


def read_meta(connection: sqlite3.Connection, schema: str = "main") -> dict[str, Any]:
    """``meta`` of the file attached as ``schema``, values decoded."""
    return {key: json.loads(value) for key, value in connection.execute(f"SELECT key, value FROM {schema}.meta")}


def schema_problem(connection: sqlite3.Connection, schema: str = "main") -> str | None:
    """Why the file attached as ``schema`` is not an explanations file of :data:`FORMAT` (None when it is)."""
    try:
        names = {row[0] for row in connection.execute(f"SELECT name FROM {schema}.sqlite_master")}
    except sqlite3.DatabaseError as error:
        return f"not an SQLite database ({error})"
    if "meta" not in names:
        return "not a crosslens explanations file (no meta table)"
    row = connection.execute(f"SELECT value FROM {schema}.meta WHERE key = 'format'").fetchone()
    if row is None or row[0] != json.dumps(FORMAT):
        return f"written in another layout ({row[0] if row else 'none'}), not {FORMAT}"
    missing = [name for name in TABLES if name not in names]
    return f"incomplete: no {', '.join(missing)} table" if missing else None


def binding_problem(meta: dict[str, Any], database_sha256: str | None) -> str | None:
    """Why explanations whose meta is ``meta`` do not belong to the feature database of sha256
    ``database_sha256`` (None when they do)."""
    made_from = meta.get("database_sha256")
    if database_sha256 is not None and made_from != database_sha256:
        return (
            f"they were made from another feature database ({str(made_from)[:12]}...; "
            "crosslens dashboards rebuilt it since), whose contexts they describe"
        )
    return None


def explanations_path(database_path: str | Path) -> Path:
    """Where the explanations of the feature database at ``database_path`` are (beside it)."""
    return Path(database_path).with_name(EXPLANATIONS_NAME)


def attach(connection: sqlite3.Connection, path: str | Path, *, read_only: bool = True) -> None:
    """Attach the explanations file at ``path`` to ``connection`` as :data:`ALIAS`."""
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if read_only else "")
    connection.execute("ATTACH DATABASE ? AS " + ALIAS, (uri,))


CODE_TYPE_SUFFIX = "-code"
"""Ends the Neuronpedia explanation type of an explanation of the crosscoder's own code."""


def neuronpedia_type(prompt: str, snapshot: int) -> str:
    """The Neuronpedia ``typeName`` an explanation is exported with (``crosslens-explain-1``, and
    ``crosslens-explain-1-code`` for one of the crosscoder's own code, which every snapshot's source
    carries): the prompt format, with what Neuronpedia's type names do not hold written as dashes."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in prompt)
    return name + (CODE_TYPE_SUFFIX if snapshot < 0 else "")


NEURONPEDIA_SETS = {kind: f"{kind}-crosslens" for kind in ("res", "mlp", "att")}
"""The source set ``crosslens export --format neuronpedia`` files a crosscoder's sources under
unless ``--set-name`` names another, by what its hook reads (:func:`hook_kind`); each snapshot's
source id is ``LAYER-SET__REVISION``."""


def hook_kind(hook: str) -> str:
    """Neuronpedia's word for what ``hook`` reads: res, mlp or att."""
    if "mlp" in hook:
        return "mlp"
    if "attn" in hook or hook.endswith("hook_z"):
        return "att"
    return "res"


def neuronpedia_layer(hook: str) -> int:
    """The layer a Neuronpedia source id of a crosscoder reading ``hook`` starts with: its block's
    number (0 where it names none)."""
    block = block_index(hook)
    return 0 if block is None else block


def neuronpedia_set(hook: str) -> str:
    """The source set of a crosscoder reading ``hook`` (:data:`NEURONPEDIA_SETS`)."""
    return NEURONPEDIA_SETS[hook_kind(hook)]
