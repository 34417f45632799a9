"""``RUN/explanations.sqlite``: opened for writing, checked against the feature database it
belongs to, filled an answer at a time, and what it already holds (so a resumed run asks nothing twice).

Answers are committed in small batches (every :data:`COMMIT_ROWS` rows or :data:`COMMIT_SECONDS`),
in WAL mode so that ``crosslens browse`` can read the file while it grows; an interrupted run
commits what it has before it stops. A finished run leaves a compact file (its full-text index
merged, WAL folded in) whose rows have the ids :func:`explanation_id` gives them, whatever order
the answers came in; where a reader holds the file open then, it stays in WAL mode until a
finished run finds it free.
"""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crosslens
from crosslens.dashboards.explanation_schema import (
    EXPLANATIONS_NAME,
    FORMAT,
    LIFE_PHASES,
    MAX_SNAPSHOTS,
    STRIDE,
    TABLES,
    binding_problem,
    create_schema,
    explanation_id,
    read_meta,
    schema_problem,
)
from crosslens.explain.config import ExplainError
from crosslens.explain.contexts import FeaturePlan
from crosslens.explain.scoring import Detection, DriftRule, feature_drift

COMMIT_ROWS = 64
COMMIT_SECONDS = 0.5


@dataclass(frozen=True)
class Binding:
    """The feature database the explanations belong to; one of more snapshots than explanation
    ids can number is refused (:data:`~crosslens.dashboards.explanation_schema.MAX_SNAPSHOTS`)."""

    database_sha256: str | None
    run: str | None
    n_features: int
    n_snapshots: int

    def __post_init__(self) -> None:
        if self.n_snapshots > MAX_SNAPSHOTS:
            raise ExplainError(
                f"this run has {self.n_snapshots} snapshots; crosslens explain numbers the explanations of at most "
                f"{MAX_SNAPSHOTS} per feature (explanation_schema.STRIDE {STRIDE}): explain a crosscoder of at most "
                f"{MAX_SNAPSHOTS} snapshots"
            )


def store_problem(path: Path, binding: Binding) -> str | None:
    """Why the explanations file at ``path`` cannot take this run's answers (None when it can, or
    there is none yet); read-only, so a refused file is left as it was, byte for byte."""
    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as error:
        return f"not a readable SQLite file ({error})"
    try:
        problem = schema_problem(connection)
        if problem is None:
            meta = read_meta(connection)
            problem = binding_problem(meta, binding.database_sha256)
            shape = (meta.get("n_features"), meta.get("n_snapshots"))
            if problem is None and shape != (binding.n_features, binding.n_snapshots):
                problem = "made for a feature database of another shape"
        return None if problem is None else problem.replace("they were", "its explanations were")
    except sqlite3.DatabaseError as error:
        return f"not a readable SQLite file ({error})"
    finally:
        connection.close()


def has_layout(path: Path) -> bool:
    """Whether ``path`` is an explanations file of this layout (of whichever feature database)."""
    if not path.is_file():
        return False
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return False
    try:
        return schema_problem(connection) is None
    except sqlite3.DatabaseError:
        return False
    finally:
        connection.close()


def group_explanations(
    rows: Iterable[tuple[int, int, str, int, str]], features: Iterable[int] | None = None
) -> dict[int, dict[tuple[int, str], tuple[int, str]]]:
    """Rows (feature, snapshot, source, id, text), grouped: feature -> {(snapshot, source): (id, text)}."""
    wanted = None if features is None else set(features)
    grouped: dict[int, dict[tuple[int, str], tuple[int, str]]] = {}
    for feature, snapshot, source, row_id, text in rows:
        if wanted is None or feature in wanted:
            grouped.setdefault(feature, {})[(snapshot, source)] = (row_id, text)
    return grouped


def refused(path: Path, problem: str) -> ExplainError:
    return ExplainError(f"{path} is {problem}: move it aside to keep it, or pass --overwrite to start it afresh")


class ExplanationStore:
    """The explanations file of one run, open for writing."""

    def __init__(self, run_dir: Path, binding: Binding, *, overwrite: bool = False) -> None:
        self.path = Path(run_dir) / EXPLANATIONS_NAME
        # a file of this layout is emptied in place, not deleted: a running crosslens browse keeps
        # reading the file it opened, and would go on searching a deleted one
        emptied = overwrite and has_layout(self.path)
        if overwrite and not emptied:
            for stale in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))):
                stale.unlink(missing_ok=True)
        problem = None if emptied else store_problem(self.path, binding)
        if problem is not None:
            raise refused(self.path, problem)
        fresh = emptied or not self.path.exists()
        self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = NORMAL")
        if fresh:
            self._create(binding, emptied=emptied)
        self.connection.execute("BEGIN")
        self._pending, self._since = 0, time.perf_counter()

    def _create(self, binding: Binding, *, emptied: bool = False) -> None:
        """The schema and meta of a new file; with ``emptied``, the rows the file holds deleted
        instead, in the transaction that writes the new meta (a reader sees the old rows or the
        new file, never a file without meta)."""
        self.connection.execute("BEGIN")
        if emptied:
            for table in TABLES:
                if table != "explanation_search":
                    self.connection.execute(f"DELETE FROM {table}")
            # the triggers took each row out of the search index; this leaves its structure as a new file's
            self.connection.execute("INSERT INTO explanation_search (explanation_search) VALUES ('delete-all')")
        else:
            create_schema(self.connection)
        meta = {
            "format": FORMAT,
            "crosslens_version": crosslens.__version__,
            "database_sha256": binding.database_sha256,
            "run": binding.run,
            "n_features": binding.n_features,
            "n_snapshots": binding.n_snapshots,
        }
        self.connection.executemany(
            "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in sorted(meta.items())]
        )
        self.connection.execute("COMMIT")

    # ------------------------------------------------------------------ what is stored
    def set_meta(self, values: dict[str, Any]) -> None:
        self.connection.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in sorted(values.items())]
        )
        self._wrote(len(values))

    def explanations(self, features: Iterable[int] | None = None) -> dict[int, dict[tuple[int, str], tuple[int, str]]]:
        """feature -> {(snapshot, source): (id, text)} of the stored explanations (of ``features``)."""
        return group_explanations(
            self.connection.execute("SELECT feature, snapshot, source, id, text FROM explanations"), features
        )

    def text(self, explanation: int) -> str | None:
        """The text of stored explanation ``explanation`` (None: none is stored)."""
        row = self.connection.execute("SELECT text FROM explanations WHERE id = ?", (explanation,)).fetchone()
        return None if row is None else row[0]

    def scores(self) -> set[tuple[int, int]]:
        """(explanation id, scored_on) of every stored score."""
        return set(self.connection.execute("SELECT explanation, scored_on FROM scores"))

    def counts(self) -> dict[str, int]:
        one = lambda sql: self.connection.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "explanations": one("SELECT count(*) FROM explanations"),
            "scores": one("SELECT count(*) FROM scores"),
            "failures": one("SELECT count(*) FROM failures"),
            "flagged": one("SELECT count(*) FROM feature_scores WHERE flagged = 1"),
            "features": one("SELECT count(DISTINCT feature) FROM explanations"),
        }

    # ------------------------------------------------------------------ writing
    def set_phases(self, plan: FeaturePlan) -> None:
        """Store the phases ``plan`` holds, keeping the feature's other stored phases: a run asking
        fewer ``--phases`` leaves the drift and labels that the others decided as they are."""
        rows = [(plan.feature, p.phase, p.snapshot, p.explained) for p in plan.phases]
        self.connection.executemany("INSERT OR REPLACE INTO phases VALUES (?, ?, ?, ?)", rows)
        self._wrote(len(rows))

    def add_explanation(
        self,
        feature: int,
        snapshot: int,
        source: str,
        text: str,
        *,
        model: str | None,
        prompt: str,
        examples: list | None = None,
        tokens: tuple[int | None, int | None] = (None, None),
    ) -> tuple[int, bool]:
        """Store an explanation unless one of this feature, reading and source is stored (kept as it is);
        returns (its id, whether it was added)."""
        row_id = explanation_id(feature, snapshot, source)
        cursor = self.connection.execute(
            "INSERT OR IGNORE INTO explanations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row_id, feature, snapshot, source, text, model, prompt, None if examples is None else json.dumps(examples))
            + tuple(tokens),
        )
        self._forget_failure(feature, snapshot, "explain", snapshot, source)
        self._wrote(1)
        return row_id, cursor.rowcount == 1

    def add_score(
        self, explanation: int, feature: int, scored_on: int, counts: Detection, *, model: str | None, prompt: str
    ) -> bool:
        """Store a score unless one is stored for this explanation and reading; whether it was added."""
        cursor = self.connection.execute(
            "INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                explanation,
                scored_on,
                feature,
                counts.balanced_accuracy,
                counts.true_positives,
                counts.n_activating,
                counts.true_negatives,
                counts.n_non_activating,
                model,
                prompt,
            ),
        )
        snapshot, source = self.connection.execute(
            "SELECT snapshot, source FROM explanations WHERE id = ?", (explanation,)
        ).fetchone()
        self._forget_failure(feature, snapshot, "score", scored_on, source)
        self._wrote(1)
        return cursor.rowcount == 1

    def add_failure(self, feature: int, snapshot: int, kind: str, scored_on: int, source: str, error: str) -> None:
        self.connection.execute(
            "INSERT INTO failures VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT DO UPDATE SET "
            "attempts = attempts + 1, error = excluded.error",
            (feature, snapshot, kind, scored_on, source, " ".join(error.split())[:300]),
        )
        self._wrote(1)

    def _forget_failure(self, feature: int, snapshot: int, kind: str, scored_on: int, source: str) -> None:
        self.connection.execute(
            "DELETE FROM failures WHERE feature = ? AND snapshot = ? AND kind = ? AND scored_on = ? AND source = ?",
            (feature, snapshot, kind, scored_on, source),
        )

    def set_drift_rule(self, rule: DriftRule) -> None:
        """Make ``rule`` meta.drift_rule; where the file names another (or none), recompute every
        stored feature's drift by it, so that no flag was drawn by a rule meta does not name."""
        value = {"min_score": rule.min_score, "min_drop": rule.min_drop}
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'drift_rule'").fetchone()
        if row is not None and json.loads(row[0]) == value:
            return
        self.set_meta({"drift_rule": value})
        self.update_drift(
            [f for (f,) in self.connection.execute("SELECT DISTINCT feature FROM scores").fetchall()], rule
        )

    def update_drift(self, features: Iterable[int], rule: DriftRule) -> None:
        """Recompute the feature_scores rows of ``features`` (detection score, drift) from their
        stored scores and phases."""
        marks = ", ".join("?" * len(LIFE_PHASES))
        for feature in features:
            life = {
                row[0]
                for row in self.connection.execute(
                    f"SELECT explained FROM phases WHERE feature = ? AND phase IN ({marks})", (feature, *LIFE_PHASES)
                )
            }
            scores = self.connection.execute(
                "SELECT e.source, coalesce(s.model, ''), s.prompt, e.snapshot, s.scored_on, s.balanced_accuracy "
                "FROM scores s JOIN explanations e ON e.id = s.explanation WHERE s.feature = ? ORDER BY e.id, s.scored_on",
                (feature,),
            ).fetchall()
            scores = [(source, (model, prompt), *rest) for source, model, prompt, *rest in scores]
            own = [(snapshot, value) for _, _, snapshot, scored_on, value in scores if snapshot == scored_on]
            code = [value for snapshot, value in own if snapshot < 0]
            detection = max(code) if code else max((value for _, value in own), default=None)
            found = feature_drift(scores, life, rule)
            self.connection.execute("DELETE FROM feature_scores WHERE feature = ?", (feature,))
            if detection is not None or found is not None:
                self.connection.execute(
                    "INSERT INTO feature_scores VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        feature,
                        detection,
                        None if found is None else found.drift,
                        None if found is None else found.explained,
                        None if found is None else found.scored_on,
                        int(found is not None and found.flagged),
                    ),
                )
            self._wrote(1)

    def _wrote(self, rows: int) -> None:
        self._pending += rows
        if self._pending >= COMMIT_ROWS or time.perf_counter() - self._since >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("COMMIT")
        self.connection.execute("BEGIN")
        self._pending, self._since = 0, time.perf_counter()

    def close(self, *, compact: bool = False) -> bool:
        """Commit what is written and close; with ``compact`` (a finished run) compact the file too
        (:meth:`compact`). Returns whether it was compacted."""
        if self.connection.in_transaction:
            self.connection.execute("COMMIT")
        compacted = compact and self.compact()
        self.connection.close()
        return compacted

    def compact(self) -> bool:
        """Merge the full-text index, fold the WAL into the file and rewrite it in key order; whether
        it was done. Leaving WAL mode needs the file to itself: where a reader (``crosslens browse``)
        holds it open, the answers stay stored in WAL mode, a warning says so, and the next finished
        run compacts it."""
        try:
            self.connection.execute("INSERT INTO explanation_search (explanation_search) VALUES ('optimize')")
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.connection.execute("PRAGMA journal_mode = DELETE")
            self.connection.execute("VACUUM")
        except sqlite3.OperationalError as error:
            warnings.warn(
                f"{self.path} holds every answer but is not compacted ({error}: crosslens browse or another reader "
                "has it open); the next crosslens explain of this run that finishes while none does compacts it",
                stacklevel=3,
            )
            return False
        return True
