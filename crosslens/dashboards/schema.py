"""The feature database: every feature of a crosscoder at every snapshot, in one SQLite file.

``crosslens dashboards RUN`` writes ``RUN/dashboards.sqlite``; ``crosslens browse RUN`` and
``crosslens export RUN`` read it. It is plain SQLite from the standard library, so any SQL
client can query it::

    sqlite3 RUN/dashboards.sqlite "SELECT feature, class, emergence_step FROM features
                                   WHERE class = 'transient' ORDER BY density DESC LIMIT 10"

Two readings of a feature's activation are stored, told apart by ``snapshot``:

* ``snapshot`` 0 .. S-1: the feature's code in the crosscoder's *per-snapshot mode*
  (:meth:`crosslens.crosscoders.per_snapshot_sae.SnapshotCodec.encode_single`): snapshot s's
  activation alone, the other snapshots' inputs absent. It is what snapshot s's model makes
  the feature read, the same code the snapshot's SAELens SAE (``snapshot_sae``) gives, so the
  contexts a feature fires on can differ from snapshot to snapshot.
* ``snapshot`` -1 (:data:`ALL_SNAPSHOTS`): the crosscoder's own code, read from every
  snapshot's activation of the token at once.

Every table below is created by :func:`create_schema`; :data:`FORMAT` names the layout and is
stored in ``meta``, so a reader refuses a file of another layout (or a foreign SQLite file)
with :func:`schema_problem`. Blobs are little-endian numpy arrays of the dtype named in each
column's description (``np.frombuffer(blob, dtype="<i4")``).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from crosslens.core.hashing import agreement_change

FORMAT = "crosslens.dashboards/7"
"""The layout's name and version, ``meta['format']``."""

DATABASE_NAME = "dashboards.sqlite"
"""The database's file name inside the run folder."""

PAGE_SIZE = 4096
"""The database's page size in bytes (``PRAGMA page_size``)."""

RECORD_NAME = "dashboards.json"
"""The sealed record beside it: the database's sha256 and the partners it was computed from
(run seal, crosscoder weights, token source, suite), written last."""

ALL_SNAPSHOTS = -1
"""``snapshot`` value of rows about the crosscoder's own code (every snapshot read at once)."""

CONTEXT_KINDS = ("top", "quantile")
"""``contexts.kind``: the top-activating tokens, or tokens sampled across the activation
quantiles of the firing tokens (as SAEDashboard shows beside the top ones)."""

RELIE_LABELS = ("other", "shared", "specific", "below_floor", "no_behaviour")
"""``causal.relie_class``: the causal stage's RelIE classes
(:data:`crosslens.causal.relative_ie.RELIE_CLASSES`), an effect under its noise floor
(``BELOW_FLOOR``), or a snapshot at chance on the task (``NO_BEHAVIOUR``)."""

TABLES: dict[str, str] = {
    "meta": """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,   -- see META_KEYS
    value TEXT NOT NULL       -- JSON
)""",
    "snapshots": """
CREATE TABLE snapshots (
    snapshot    INTEGER PRIMARY KEY,  -- 0 .. S-1, the crosscoder's snapshot index
    revision    TEXT NOT NULL,        -- the checkpoint's revision ("step1000", ...)
    step        INTEGER NOT NULL,     -- training step (along the trajectory for staged runs)
    tokens_seen INTEGER,              -- NULL where the family does not publish it
    label       TEXT NOT NULL         -- how pages name it ("step1000")
)""",
    "features": """
CREATE TABLE features (
    feature            INTEGER PRIMARY KEY,  -- 0 .. d_sae-1
    class              TEXT NOT NULL,        -- initialization | persistent | transient | dead (crosslens.analysis)
    emergence_snapshot INTEGER,              -- NULL: never present (dead)
    emergence_step     INTEGER,
    peak_snapshot      INTEGER,
    peak_step          INTEGER,
    fade_snapshot      INTEGER,              -- NULL: never faded
    fade_step          INTEGER,
    dip_step           INTEGER,              -- NULL: no dip-and-recover
    recovery_step      INTEGER,
    peak_decoder_norm  REAL NOT NULL,        -- the largest of its decoder norms over snapshots
    density            REAL NOT NULL,        -- share of the tokens on which the crosscoder's code is > 0
    mean_activation    REAL,                 -- mean code over those tokens (NULL: never fired)
    max_activation     REAL NOT NULL,        -- 0 where it never fired
    relevance          REAL                  -- largest |IE| over tasks and snapshots (NULL: the run has no attribution)
)""",
    "feature_snapshots": """
CREATE TABLE feature_snapshots (
    feature             INTEGER NOT NULL,
    snapshot            INTEGER NOT NULL,  -- 0 .. S-1 (per-snapshot mode)
    decoder_norm        REAL NOT NULL,     -- ||W_dec[feature, snapshot]|| as crosslens.analysis reads it
    relative_norm       REAL NOT NULL,     -- decoder_norm / peak_decoder_norm (presence reads this)
    density             REAL NOT NULL,     -- share of the tokens on which the per-snapshot code is > 0
    mean_activation     REAL,              -- mean over those tokens (NULL: never fired)
    max_activation      REAL NOT NULL,
    histogram           BLOB NOT NULL,     -- <u4 counts of firing tokens per bin of meta.histogram_edges (end bins also count beyond)
    logit_top_ids       BLOB NOT NULL,     -- <i4 token ids the decoder direction promotes most ...
    logit_top_values    BLOB NOT NULL,     -- <f4 ... and by how much (direct logit effect)
    logit_bottom_ids    BLOB NOT NULL,     -- <i4 token ids it suppresses most ...
    logit_bottom_values BLOB NOT NULL,     -- <f4 ... (most negative first)
    PRIMARY KEY (feature, snapshot)
) WITHOUT ROWID""",
    "contexts": """
CREATE TABLE contexts (
    feature     INTEGER NOT NULL,
    snapshot    INTEGER NOT NULL,  -- 0 .. S-1, or -1 for the crosscoder's own code
    kind        TEXT NOT NULL,     -- 'top' or 'quantile' (CONTEXT_KINDS)
    rank        INTEGER NOT NULL,  -- 0 = strongest of its kind
    seq         INTEGER NOT NULL,  -- token row (sequence) of the focus token
    pos         INTEGER NOT NULL,  -- its position in the sequence
    activation  REAL NOT NULL,     -- the feature's activation on the focus token
    quantile    REAL,              -- kind 'quantile': the quantile of the firing activations it was drawn at
    first_pos   INTEGER NOT NULL,  -- position of the window's first token
    token_ids   BLOB NOT NULL,     -- <i4 the window's token ids
    activations BLOB NOT NULL,     -- <f2 the feature's activation (same snapshot reading) on each window token (0: not in the store, e.g. BOS)
    PRIMARY KEY (feature, snapshot, kind, rank)
) WITHOUT ROWID""",
    "vocabulary": """
CREATE TABLE vocabulary (
    token_id INTEGER PRIMARY KEY,
    text     TEXT NOT NULL   -- the token as it reads inside a window (its leading space kept)
)""",
    "tasks": """
CREATE TABLE tasks (
    task       TEXT PRIMARY KEY,  -- the attribution section's task name
    metric     TEXT NOT NULL,     -- what IE is the effect on (e.g. summed_logprob_diff)
    n_examples INTEGER NOT NULL,
    source     TEXT NOT NULL      -- the run's file it was read from
)""",
    "causal": """
CREATE TABLE causal (
    task        TEXT NOT NULL,
    feature     INTEGER NOT NULL,
    snapshot    INTEGER NOT NULL,  -- 0 .. S-1
    ie          REAL NOT NULL,     -- integrated-gradient indirect effect on the task metric
    relie       REAL,              -- its share of the feature's IE over snapshots (RelIE)
    relie_class TEXT,              -- other | shared | specific | below_floor | no_behaviour (NULL: not classed)
    ablation    REAL,              -- the metric's change when the feature alone is ablated (NULL: not measured)
    PRIMARY KEY (task, feature, snapshot)
) WITHOUT ROWID""",
    # ---- the emergence check and lineage (``crosslens analyze``'s RUN/emergence.json); empty without it
    "emergence": """
CREATE TABLE emergence (
    feature            INTEGER PRIMARY KEY,
    measured           INTEGER NOT NULL,  -- 1: latent scaling measured it (it fires on enough sampled tokens)
    contested          TEXT,              -- 'earlier' | 'later': the two emergences are far apart (NULL: they agree, or unmeasured)
    decoder_snapshot   INTEGER,           -- emergence by decoder norm, as analyze read it (NULL: dead)
    scaled_snapshot    INTEGER,           -- emergence by latent scaling (NULL: never present by it, or unmeasured)
    scaled_step        INTEGER,
    reported_snapshot  INTEGER,           -- the emergence crosslens reports: latent-scaled where contested
    reported_step      INTEGER,
    early_presence     TEXT,              -- contested earlier: 'error' (no other latent carries it) | 'reconstruction'
    n_fire             INTEGER NOT NULL,  -- sampled tokens it fired on
    diffing            TEXT               -- two models: a one-model-only latent's verdict, 'specific' | 'shrinkage'
                                          -- (the other model's error holds it) | 'decoupling' (other latents
                                          -- reconstruct it there) | 'not measured' (NULL: no such latent)
)""",
    "emergence_snapshots": """
CREATE TABLE emergence_snapshots (
    feature            INTEGER NOT NULL,
    snapshot           INTEGER NOT NULL,
    presence           REAL NOT NULL,     -- latent-scaled presence: amplitude / its largest, 0 where not significant
    amplitude          REAL NOT NULL,     -- its length in the snapshot's activations on its tokens (decoder-norm units)
    error_amplitude    REAL NOT NULL,     -- the same in the reconstruction error without it
    beta               REAL NOT NULL,     -- Minder et al.'s scale of its (reference) decoder row, activation target
    beta_error         REAL NOT NULL,     -- ... error target
    t_value            REAL NOT NULL,     -- amplitude / standard error (capped at 1e9)
    reference_snapshot INTEGER NOT NULL,  -- whose decoder row scored it (its own unless shrunk)
    carrier            INTEGER,           -- the other latent present here whose row is nearest that row (NULL: none)
    carrier_cosine     REAL NOT NULL,     -- their cosine (-1: none); from the check's carrier_cosine on, what other
                                          -- latents reconstruct along the feature counts toward its presence
    PRIMARY KEY (feature, snapshot)
) WITHOUT ROWID""",
    "lineage_events": """
CREATE TABLE lineage_events (
    event    INTEGER PRIMARY KEY,  -- in snapshot order
    kind     TEXT NOT NULL,        -- split | merge | handoff
    snapshot INTEGER NOT NULL,     -- where the new state starts
    step     INTEGER NOT NULL,
    how      TEXT NOT NULL,        -- divergence | succession | turn | composition
    cosine   REAL NOT NULL,        -- the cosine that decided it
    before   TEXT NOT NULL,        -- JSON list of the latents before
    after    TEXT NOT NULL,        -- JSON list of the latents after
    held     INTEGER NOT NULL,     -- 1: the activations hold it (or none were read); 0: set aside, read
                                   -- from decoder rows the activations do not hold (Lineage.set_aside)
    agreement REAL,                -- how far another crosscoder of the store makes its moves (meta's
                                   -- emergence.agreement names it; NULL: not measured, set aside, or no
                                   -- latent of it present beside its snapshot)
    composed TEXT                  -- a split by composition's children, JSON: per child its [latent,
                                   -- weight] terms, the rows summed (LineageEvent.composed); NULL otherwise
)""",
    "lineage_members": """
CREATE TABLE lineage_members (
    feature INTEGER NOT NULL,
    event   INTEGER NOT NULL,
    role    TEXT NOT NULL,  -- before | after | both
    PRIMARY KEY (feature, event)
) WITHOUT ROWID""",
    "relatives": """
CREATE TABLE relatives (
    feature  INTEGER NOT NULL,
    snapshot INTEGER NOT NULL,  -- where both are present
    rank     INTEGER NOT NULL,  -- 0 = nearest
    relative INTEGER NOT NULL,
    cosine   REAL NOT NULL,     -- decoder cosine at the snapshot
    PRIMARY KEY (feature, snapshot, rank)
) WITHOUT ROWID""",
    "context_search": """
CREATE VIRTUAL TABLE context_search USING fts5(
    text,                     -- the feature's context windows as text (rowid = feature)
    tokenize = 'trigram',
    detail = 'none'
)""",
}
"""Every table's SQL, in creation order."""

INDEXES: tuple[str, ...] = (
    "CREATE INDEX features_class ON features (class, feature)",
    "CREATE INDEX features_emergence ON features (emergence_step)",
    "CREATE INDEX features_density ON features (density)",
    "CREATE INDEX features_max_activation ON features (max_activation)",
    "CREATE INDEX features_peak_norm ON features (peak_decoder_norm)",
    "CREATE INDEX features_relevance ON features (relevance)",
    "CREATE INDEX feature_snapshots_density ON feature_snapshots (snapshot, density)",
    "CREATE INDEX feature_snapshots_norm ON feature_snapshots (snapshot, decoder_norm)",
    "CREATE INDEX feature_snapshots_max ON feature_snapshots (snapshot, max_activation)",
    "CREATE INDEX causal_feature ON causal (feature, task, snapshot)",
    "CREATE INDEX emergence_contested ON emergence (contested, feature)",
    "CREATE INDEX lineage_kind ON lineage_events (kind)",
)
"""Indexes for the browser's filters and sorts; created after the rows are written."""

META_KEYS: dict[str, str] = {
    "format": "FORMAT",
    "crosslens_version": "the crosslens that wrote it",
    "run": "the run as training left it when written (a sha256 of RUN/crosslens_run.json's entries, quality.json's aside)",
    "crosscoder": "{architecture, d_sae, d_in, n_snapshots, hook_name, weights_sha256}",
    "suite": "the suite's provenance as the crosscoder records it (family, model_id, snapshots)",
    "tokens": "where the tokens came from: {store: seal, seq_len} or {stream: suite, token source, budget, seq_len}",
    "n_tokens": "how many tokens every statistic was computed over",
    "budget": "{n_tokens, top_k, n_quantile, window, n_logits, n_bins, reservoir, seed}: what was kept per feature and "
    "snapshot (reservoir: the seeded sample of firing tokens the quantile contexts are picked from)",
    "histogram_edges": "the activation histogram's bin edges (JSON list of floats, shared by every row)",
    "activation": "which reading of the activation the rows hold (see the module docstring)",
    "attribution": "the attribution files the tasks and causal rows were read from: {file: sha256} ({} for none)",
    "emergence": "the emergence check and lineage the emergence, lineage and relatives rows hold: {record: sha256 of "
    "RUN/emergence.json, n_tokens, settings, counts, agreement: {against, crosscoder, line} or null}, null where the "
    "run had none (`crosslens analyze` writes it; `--lineage-against OTHER` the agreement)",
}
"""What ``meta`` holds (values are JSON)."""


def create_schema(connection: sqlite3.Connection) -> None:
    """Create every table (not the indexes: :data:`INDEXES` go in after the bulk insert)."""
    for sql in TABLES.values():
        connection.execute(sql)


@functools.cache
def empty_database_bytes() -> int:
    """Bytes of a feature database that holds no row: the schema's pages and a page for each of
    its B-trees (every table, the full-text index's own tables, every index), counted on one built
    in memory."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        create_schema(connection)
        for sql in INDEXES:
            connection.execute(sql)
        return int(connection.execute("PRAGMA page_count").fetchone()[0]) * PAGE_SIZE
    finally:
        connection.close()


def agreement_problem(emergence_meta: dict[str, Any] | None) -> str | None:
    """Why the lineage agreement a database's ``meta.emergence`` holds is not to be shown: it was
    measured under an earlier reading, the other crosscoder is gone or was trained again since
    (checked now), or it was left out when the
    database was built (``agreement_dropped``); None where it holds, or there is none."""
    meta = emergence_meta or {}
    agreement = meta.get("agreement")
    if agreement is None:
        return meta.get("agreement_dropped")
    return agreement_change(agreement)


def schema_problem(connection: sqlite3.Connection) -> str | None:
    """Why ``connection`` is not a feature database of :data:`FORMAT` (None when it is): a
    foreign SQLite file, a database of another layout, or one missing a table."""
    try:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    except sqlite3.DatabaseError as error:
        return f"not an SQLite database ({error})"
    missing = [name for name in TABLES if name not in names]
    if "meta" in missing:
        return "not a crosslens feature database (no meta table)"
    row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    if row is None or row[0] != f'"{FORMAT}"':
        return f"written in another layout ({row[0] if row else 'none'}), not {FORMAT}"
    if missing:
        return f"incomplete: no {', '.join(missing)} table"
    return None
