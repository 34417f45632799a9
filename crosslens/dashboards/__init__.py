"""Per-feature dashboards for every feature of a crosscoder at every snapshot, in one SQLite file.

:func:`compute_dashboards` (``crosslens dashboards RUN``) reads the tokens once, from an activation
store or from the snapshot models kept resident (:class:`StreamSource`), and computes for every
feature at every snapshot, and for the crosscoder's own code, its firing density, mean and
maximum activation, an activation histogram, its top-activating contexts and contexts sampled at
the quantiles of its firing activations (each with every window token's activation), the tokens
its decoder direction promotes and suppresses through that snapshot's unembedding, its decoder
norm with the evolution analysis's class and lifetime, and the causal scores of the run's
attributions. All features at once: batched matmuls over ``[tokens, d_sae]`` per snapshot, and
merges of the kept contexts by sorting, never a loop over features. :class:`DashboardsConfig`
holds the budget; by default it is sized from the crosscoder's shape so the database stays
under a few GB (:func:`predict_database_bytes`). A stopped pass is saved and continues where it
stopped, to the same bytes.

The result is ``RUN/dashboards.sqlite`` and its sealed record ``RUN/dashboards.json``;
:func:`open_database` opens it read-only after checking both.

Querying it
-----------
It is plain SQLite (the layout is :mod:`crosslens.dashboards.schema`, whose ``TABLES`` carry a
comment on every column). ``snapshot`` is 0 .. S-1 for a snapshot's per-snapshot reading (the
code snapshot s's activation alone gives the feature) and -1 for the crosscoder's own code::

    sqlite3 RUN/dashboards.sqlite

    -- the run: budget, tokens, histogram edges (values are JSON)
    SELECT key, value FROM meta;
    SELECT snapshot, revision, step FROM snapshots;

    -- features that emerged late and are still there, densest first
    SELECT feature, emergence_step, density, max_activation FROM features
     WHERE class = 'persistent' AND emergence_step >= 1000 ORDER BY density DESC LIMIT 20;

    -- one feature through training: decoder norm and firing at each snapshot
    SELECT s.step, f.decoder_norm, f.relative_norm, f.density, f.max_activation
      FROM feature_snapshots f JOIN snapshots s USING (snapshot) WHERE f.feature = 8211 ORDER BY s.step;

    -- its strongest contexts at snapshot 31, and for the crosscoder's own code (-1)
    SELECT snapshot, kind, rank, seq, pos, activation, quantile FROM contexts
     WHERE feature = 8211 AND snapshot IN (31, -1) ORDER BY snapshot, kind DESC, rank;

    -- features whose top contexts contain a string (the trigram index answers LIKE for 3+ characters)
    SELECT rowid AS feature FROM context_search WHERE text LIKE '%the keys%';

    -- causal scores: which features matter for a task, and when
    SELECT feature, snapshot, ie, relie, relie_class FROM causal
     WHERE task = 'agreement_pp' ORDER BY abs(ie) DESC LIMIT 20;

Blob columns are little-endian numpy arrays, their dtype in the column's comment::

    import json, sqlite3
    import numpy as np
    from crosslens.dashboards import open_database

    db = open_database("RUN")                 # read-only, checked against its record
    vocab = dict(db.execute("SELECT token_id, text FROM vocabulary"))
    for ids, acts, first, pos in db.execute(
        "SELECT token_ids, activations, first_pos, pos FROM contexts "
        "WHERE feature = ? AND snapshot = ? AND kind = 'top' ORDER BY rank", (8211, 31)):
        ids, acts = np.frombuffer(ids, "<i4"), np.frombuffer(acts, "<f2")
        print("".join(f"[{vocab[t]}]" if first + k == pos else vocab[t] for k, t in enumerate(ids)))
    edges = json.loads(db.execute("SELECT value FROM meta WHERE key = 'histogram_edges'").fetchone()[0])
    (hist,) = db.execute("SELECT histogram FROM feature_snapshots WHERE feature = 8211 AND snapshot = 31").fetchone()
    counts = np.frombuffer(hist, "<u4")        # firing tokens per bin [edges[i], edges[i + 1])
"""

from crosslens.core.lazy import lazy_attributes

# each name is imported on first use: the browser reads crosslens.dashboards.schema without torch
_LAZY = {
    "compute_dashboards": "crosslens.dashboards.compute",
    "open_database": "crosslens.dashboards.record",
    "StreamSource": "crosslens.dashboards.sources",
    **{
        name: "crosslens.dashboards.config"
        for name in (
            "DEFAULT_N_TOKENS",
            "GE_SHAPE",
            "Budget",
            "DashboardsConfig",
            "DashboardsError",
            "DashboardsInterrupted",
            "StaleDatabaseError",
            "ge_prediction",
            "predict_database_bytes",
            "resolve_budget",
        )
    },
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
