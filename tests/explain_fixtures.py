"""Feature databases whose features mean something, for ``crosslens explain``'s tests, and
synthetic explanations of a large one, for the browser's search benchmark.

:func:`write_planted_database` writes, through ``schema.create_schema``, a small run whose
features read known words (the stand-in endpoint, :class:`crosslens.explain.StubEndpoint`, names
the word marked most often and judges passages by it):

* ``CAT``: reads " cat" at every reading (its explanations hold everywhere: no drift);
* ``DRIFTER``: reads " cat" from its emergence to its peak and " dog" at the last snapshot (its
  emergence explanation fails on the last snapshot's contexts: drift);
* ``DENSE``: fires on every token of its windows (no silent stretch: its readings cannot be scored);
* ``DEAD``: never fires (not explained);
* the rest read " mat", " sun", ... one word each.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from crosslens.dashboards import schema
from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME, explanation_id
from crosslens.dashboards.record import read_record, write_record
from crosslens.explain.store import Binding, ExplanationStore

N_SNAPSHOTS, WINDOW, TOP_K, N_QUANTILE = 4, 4, 6, 2
CAT, DRIFTER, DENSE, DEAD = 0, 1, 2, 3
FILLER = [" the", " a", " sat", " ran", " on", " over", " quickly", " and", " then", " it", " was", " big"]
WORDS = [" cat", " dog", " mat", " sun", " hill", " boat", " lamp", " tree"]
VOCAB = ["<|endoftext|>", *FILLER, *WORDS]
N_FEATURES = 10


def word_of(feature: int, snapshot: int) -> str | None:
    """The word a planted feature reads at a reading (None: it does not fire there)."""
    if feature == DEAD:
        return None
    if feature == DRIFTER:
        return " dog" if snapshot == N_SNAPSHOTS - 1 else " cat"
    if feature == CAT:
        return " cat"
    return WORDS[2 + feature % (len(WORDS) - 2)]


def lifetime(feature: int) -> tuple[str, int | None, int | None]:
    """(class, emergence snapshot, peak snapshot)."""
    if feature == DEAD:
        return "dead", None, None
    if feature == DRIFTER:
        return "persistent", 0, 1
    return "persistent", 1, 2


def write_planted_database(run_dir: str | Path, seed: int = 0) -> Path:
    """The planted feature database in ``run_dir``, sealed as ``crosslens dashboards`` seals one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / schema.DATABASE_NAME
    path.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    db = sqlite3.connect(path)
    schema.create_schema(db)
    meta = {
        "format": schema.FORMAT,
        "crosscoder": {"d_sae": N_FEATURES, "n_snapshots": N_SNAPSHOTS, "hook_name": "blocks.0.hook_resid_post"},
        "suite": {"model_id": "planted/pico"},
        "n_tokens": 4096,
        "budget": {"top_k": TOP_K, "n_quantile": N_QUANTILE, "window": WINDOW, "n_logits": 2},
        "histogram_edges": [0.0, 1.0, 2.0],
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    db.executemany(
        "INSERT INTO snapshots VALUES (?, ?, ?, NULL, ?)",
        [(s, f"step{100 * s}", 100 * s, f"step{100 * s}") for s in range(N_SNAPSHOTS)],
    )
    db.executemany("INSERT INTO vocabulary VALUES (?, ?)", list(enumerate(VOCAB)))
    for feature in range(N_FEATURES):
        _write_feature(db, feature, rng)
    db.commit()
    db.close()
    write_record(run_dir, partners={}, settings={}, n_tokens=4096)
    return path


def _write_feature(db: sqlite3.Connection, feature: int, rng: np.random.Generator) -> None:
    cls, emergence, peak = lifetime(feature)
    step = lambda s: None if s is None else 100 * s  # noqa: E731
    fires = feature != DEAD
    db.execute(
        f"INSERT INTO features VALUES ({', '.join('?' * 15)})",
        (
            feature,
            cls,
            emergence,
            step(emergence),
            peak,
            step(peak),
            None,
            None,
            None,
            None,
            1.0,
            0.01 if fires else 0.0,
            1.0 if fires else None,
            3.0 if fires else 0.0,
            None,
        ),
    )
    empty = np.zeros(2, "<u4").tobytes()
    ids = np.zeros(2, "<i4").tobytes()
    for s in range(N_SNAPSHOTS):
        norm = 0.2 + 0.8 * (s >= (emergence if emergence is not None else N_SNAPSHOTS))
        db.execute(
            "INSERT INTO feature_snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                feature,
                s,
                norm,
                norm,
                0.01 if fires else 0.0,
                1.0 if fires else None,
                3.0 if fires else 0.0,
                empty,
                ids,
                np.zeros(2, "<f4").tobytes(),
                ids,
                np.zeros(2, "<f4").tobytes(),
            ),
        )
    for reading in (-1, *range(N_SNAPSHOTS)):
        word = word_of(feature, max(reading, 0) if reading >= 0 else 1)
        if word is None:
            continue
        for kind, count in (("top", TOP_K), ("quantile", N_QUANTILE)):
            for rank in range(count):
                _write_context(db, feature, reading, kind, rank, word, rng)


def _write_context(db, feature: int, reading: int, kind: str, rank: int, word: str, rng) -> None:
    width = 2 * WINDOW + 1
    fillers = [1 + int(t) for t in rng.integers(0, len(FILLER), width)]
    fillers[WINDOW] = VOCAB.index(word)
    activation = (3.0 - 0.2 * rank) if kind == "top" else 1.0 + 0.5 * rank
    acts = np.zeros(width, np.float32)
    acts[WINDOW] = activation
    if feature == DENSE:
        acts[:] = activation
    seq, pos = int(rng.integers(0, 1000)), int(rng.integers(WINDOW, 60))
    db.execute(
        "INSERT INTO contexts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            feature,
            reading,
            kind,
            rank,
            seq,
            pos,
            float(np.float16(activation)),
            None if kind == "top" else 0.25 + 0.5 * rank,
            pos - WINDOW,
            np.array(fillers, "<i4").tobytes(),
            acts.astype("<f2").tobytes(),
        ),
    )


TOPICS = [
    "plural nouns",
    "verbs of motion",
    "closing brackets",
    "numbers in dates",
    "the word 'the'",
    "names of cities",
    "negation",
    "past tense verbs",
    "mathematical symbols",
    "French words",
    "code comments",
    "legal terms",
    "emotional adjectives",
    "questions",
    "quotation marks",
    "colours",
    "units of time",
    "family members",
]
PLACES = [
    "at the start of a sentence",
    "after a comma",
    "inside parentheses",
    "in lists",
    "in dialogue",
    "before a full stop",
    "in headlines",
    "in code",
    "after a preposition",
    "in long words",
]


def write_synthetic_explanations(run_dir: str | Path, per_feature: int = 4, seed: int = 0) -> Path:
    """``per_feature`` explanations (code, and snapshots spread over training) of every feature of
    the run's feature database, each with a detection score, bound to that database as ``crosslens
    explain`` binds them; for the search benchmark and tests."""
    run_dir = Path(run_dir)
    db = sqlite3.connect(run_dir / schema.DATABASE_NAME)
    n_features = db.execute("SELECT count(*) FROM features").fetchone()[0]
    n_snapshots = db.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    db.close()
    record = read_record(run_dir)
    binding = Binding(record["database_sha256"], (record.get("partners") or {}).get("run"), n_features, n_snapshots)
    store = ExplanationStore(run_dir, binding, overwrite=True)
    rng = np.random.default_rng(seed)
    readings = [-1] + [round(k * (n_snapshots - 1) / max(1, per_feature - 2)) for k in range(per_feature - 1)]
    explanations, scores = [], []
    for feature in range(n_features):
        for snapshot in dict.fromkeys(readings):
            text = f"{TOPICS[rng.integers(len(TOPICS))]} {PLACES[rng.integers(len(PLACES))]}"
            row_id = explanation_id(feature, snapshot, "crosslens")
            explanations.append(
                (row_id, feature, snapshot, "crosslens", text, "synthetic", "crosslens-explain/1", None, None, None)
            )
            tp, tn = int(rng.integers(0, 11)), int(rng.integers(0, 11))
            scores.append(
                (row_id, snapshot, feature, (tp / 10 + tn / 10) / 2, tp, 10, tn, 10, "synthetic", "crosslens-explain/1")
            )
    connection = store.connection
    connection.executemany(f"INSERT INTO explanations VALUES ({', '.join('?' * 10)})", explanations)
    connection.executemany(f"INSERT INTO scores VALUES ({', '.join('?' * 10)})", scores)
    connection.execute(
        "INSERT INTO feature_scores SELECT feature, max(balanced_accuracy), NULL, NULL, NULL, 0 FROM scores GROUP BY feature"
    )
    store.close(compact=True)
    return store.path


def rows(run: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """The answer to ``sql`` in the run's explanations file."""
    db = sqlite3.connect(Path(run) / EXPLANATIONS_NAME)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()
