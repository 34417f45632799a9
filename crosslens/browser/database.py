"""The feature database, opened read-only for the browser: a small pool of connections shared by
the server's threads, and the run's facts every page needs (read once, at start; the counts of its
explanations, as their file changes).

:func:`open_database` is the one place that finds and opens the file; the layout itself is
:mod:`crosslens.dashboards.schema`.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.browser.emergence import run_counts
from crosslens.browser.explained import attach_explanations, find_explanations
from crosslens.core.errors import CrosslensError
from crosslens.core.hashing import remembered_file_sha256
from crosslens.dashboards import schema
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.explanation_schema import ALIAS, explanations_path
from crosslens.dashboards.record import crosscoder_folder_problem, database_problem, read_record

FEATURE_CLASSES = ("initialization", "persistent", "transient", "dead")
"""crosslens.analysis's classes, in the order pages list them."""


class DatabaseProblem(CrosslensError):
    """The run has no feature database, or the file is not one crosslens can read."""


def database_path(run_dir: str | Path, database: str | Path | None = None) -> Path:
    """Where the run's feature database is: ``database`` when given, RUN itself when it names a
    file, else RUN/dashboards.sqlite. Raises :class:`DatabaseProblem` naming the fix."""
    run = Path(run_dir)
    if database is not None:
        path = Path(database)
    elif run.is_file():
        path = run
    else:
        if not run.is_dir():
            raise DatabaseProblem(f"{run}: no such folder: pass the --out folder of crosslens train.")
        path = run / schema.DATABASE_NAME
    if database is not None and path.is_dir():
        raise DatabaseProblem(_database_folder(path, run))
    if database is not None and not path.is_file():
        raise DatabaseProblem(f"--database {path}: no such file: {_NAME_ONE}.")
    if not path.is_file() and (inside := crosscoder_folder_problem(run)):
        raise DatabaseProblem(f"{inside}.")
    if not path.is_file():
        raise DatabaseProblem(f"{run}: no feature database ({path.name}): run `crosslens dashboards {run}` first.")
    return path


_NAME_ONE = f"name the {schema.DATABASE_NAME} that `crosslens dashboards RUN` writes in RUN"


def _database_folder(folder: Path, run: Path) -> str:
    """What ``--database FOLDER`` should have been: the flag names a file, the one inside FOLDER
    (or, for RUN itself, none: RUN's own database is served, checked against its seal)."""
    inside = folder / schema.DATABASE_NAME
    if not inside.is_file():
        return f"--database {folder} is a folder, holding no {schema.DATABASE_NAME}: {_NAME_ONE}."
    if run.is_dir() and folder.resolve() == run.resolve():
        return f"--database {folder} is the run folder itself: leave --database out to serve its {inside.name}."
    return f"--database {folder} is a folder, not the database file: pass the file inside it, --database {inside}."


def open_database(run_dir: str | Path, database: str | Path | None = None) -> sqlite3.Connection:
    """A read-only connection to the run's feature database, checked against the schema's layout
    and, for the run's own database, against its sealed record (the file `crosslens dashboards`
    wrote, for this run: :mod:`crosslens.dashboards.record`); a ``database`` named explicitly is
    read as it is (:attr:`RunFacts.complete` then says it was not verified). A foreign, damaged,
    unsealed or stale file raises :class:`DatabaseProblem` with the fix."""
    path = database_path(run_dir, database)
    if database is None and Path(run_dir).is_dir():
        _check_sealed(Path(run_dir))
    connection = None
    try:
        connection = _connect(path)
        problem = schema.schema_problem(connection)
    except sqlite3.DatabaseError as error:
        problem = f"damaged or not SQLite ({error})"
    if problem is not None:
        if connection is not None:
            connection.close()
        if database is not None:
            raise DatabaseProblem(f"--database {path}: {problem}: {_NAME_ONE}.")
        if Path(run_dir).is_file():
            raise DatabaseProblem(f"{path}: {problem}: pass the run folder, or {_NAME_ONE}.")
        raise DatabaseProblem(f"{path}: {problem}: rebuild it with `crosslens dashboards {run_dir} --overwrite`.")
    return connection


def _check_sealed(run_dir: Path) -> None:
    """Refuse the run's database where its sealed record does not vouch for it (checked by size and
    sha256, which the record module remembers per file)."""
    try:
        problem = database_problem(run_dir, read_record(run_dir), "full")
    except DashboardsError as error:
        raise DatabaseProblem(str(error)) from None
    if problem is not None:
        raise DatabaseProblem(f"{problem}; rebuild it with `crosslens dashboards {run_dir} --overwrite`")


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    connection.execute("PRAGMA query_only = 1")
    # the database is read far more than its size in pages: map it, and keep more of it cached
    connection.execute("PRAGMA mmap_size = 8589934592")
    connection.execute("PRAGMA cache_size = -65536")
    return connection


# --------------------------------------------------------------------------- blobs
def _unpack(code: str, size: int) -> Any:
    def unpack(blob: bytes | None) -> list:
        if not blob:
            return []
        return list(struct.unpack(f"<{len(blob) // size}{code}", blob))

    return unpack


ints = _unpack("i", 4)
"""``<i4`` blob -> list of ints."""
counts = _unpack("I", 4)
"""``<u4`` blob -> list of ints."""
floats = _unpack("f", 4)
"""``<f4`` blob -> list of floats."""
halves = _unpack("e", 2)
"""``<f2`` blob -> list of floats."""


# --------------------------------------------------------------------------- the run
@dataclass
class RunFacts:
    """What every page shows about the run, read once when the server starts."""

    path: Path
    meta: dict[str, Any]
    snapshots: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    classes: dict[str, int]
    relie_classes: list[str]
    n_features: int
    vocabulary: list[str] = field(repr=False)
    complete: bool = True
    """False for a database file named explicitly, whose sealed record was not checked."""
    explained: dict[str, Any] | None = None
    """The run's explanations (:func:`crosslens.browser.explained.find_explanations`), None without any."""
    emergence: dict[str, Any] = field(default_factory=dict)
    """The emergence check's counts (:func:`crosslens.browser.emergence.run_counts`)."""

    def token(self, token_id: int) -> str:
        return self.vocabulary[token_id] if 0 <= token_id < len(self.vocabulary) else f"<{token_id}>"

    @property
    def n_snapshots(self) -> int:
        return len(self.snapshots)

    @property
    def agreement_line(self) -> float | None:
        """The line of the lineage's agreement with another crosscoder, None where the database holds
        none or it no longer holds (that crosscoder gone or trained again: ``emergence["agreement_dropped"]``)."""
        checked = self.emergence.get("agreement")
        return None if checked is None else float(checked["line"])

    @property
    def carrier_line(self) -> float:
        """The emergence check's ``carrier_cosine``: the cosine from which another latent carries a
        feature's direction, what it reconstructs counting toward the feature's presence; -1 (every
        latent) where the database records no check settings."""
        settings = ((self.meta.get("emergence") or {}).get("settings") or {}).get("check") or {}
        return float(settings.get("carrier_cosine", -1.0))


def read_run_facts(connection: sqlite3.Connection, path: Path, verified: bool = True) -> RunFacts:
    """The meta table, snapshots, tasks, class counts and vocabulary of an opened database."""
    meta = {key: json.loads(value) for key, value in connection.execute("SELECT key, value FROM meta")}
    snapshots = [
        {"snapshot": s, "revision": revision, "step": step, "tokens_seen": seen, "label": label}
        for s, revision, step, seen, label in connection.execute(
            "SELECT snapshot, revision, step, tokens_seen, label FROM snapshots ORDER BY snapshot"
        )
    ]
    tasks = [
        {"task": task, "metric": metric, "n_examples": n, "source": source}
        for task, metric, n, source in connection.execute(
            "SELECT task, metric, n_examples, source FROM tasks ORDER BY task"
        )
    ]
    found = dict(connection.execute("SELECT class, count(*) FROM features GROUP BY class").fetchall())
    classes = {name: found.pop(name, 0) for name in FEATURE_CLASSES} | found
    relie = [
        row[0] for row in connection.execute("SELECT DISTINCT relie_class FROM causal WHERE relie_class IS NOT NULL")
    ]
    size = connection.execute("SELECT coalesce(max(token_id) + 1, 0) FROM vocabulary").fetchone()[0]
    vocabulary = [f"<{i}>" for i in range(size)]
    for token_id, text in connection.execute("SELECT token_id, text FROM vocabulary"):
        vocabulary[token_id] = text
    return RunFacts(
        path=path,
        meta=meta,
        snapshots=snapshots,
        tasks=tasks,
        classes=classes,
        relie_classes=sorted(relie),
        n_features=sum(classes.values()),
        vocabulary=vocabulary,
        complete=verified,
        emergence=run_counts(connection, meta),
    )


class Database:
    """The feature database for a threaded server: read-only connections handed out one per
    request (SQLite connections are not shared between threads at once), opened as needed.

    The explanations beside it follow their file: :meth:`follow_explanations` reads their counts
    again where the file (or its WAL) changed, so a ``crosslens explain`` run that writes while the
    server runs is shown without a restart; each connection is attached to the file as it is when
    handed out."""

    def __init__(self, run_dir: str | Path, database: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        first = open_database(run_dir, database)
        self.path = database_path(run_dir, database)
        self.facts = read_run_facts(first, self.path, verified=database is None)
        sealed = database is None and self.run_dir.is_dir()
        self._sha: str | None = read_record(self.run_dir).get("database_sha256") if sealed else None
        self._follow = threading.Lock()
        self._stamp: tuple | None = ()
        self._attach: tuple | None = None  # the file the connections should have attached (None: none)
        self._attached: dict[sqlite3.Connection, tuple | None] = {first: None}
        self.follow_explanations()
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._idle.put(first)

    def follow_explanations(self) -> dict[str, Any] | None:
        """The run's explanations as their file is now (``facts.explained``), read again only where
        the file changed since last asked: a stat of it and its WAL when it did not."""
        path = explanations_path(self.path)
        stamp = _file_stamp(path)
        if stamp == self._stamp:
            return self.facts.explained
        with self._follow:
            if stamp != self._stamp:
                if stamp is not None and self._sha is None:  # the file checks which database it belongs to
                    self._sha = remembered_file_sha256(self.path)
                found = find_explanations(self.path, self._sha)
                shown = found is not None and not found.get("problem")
                self._attach = (str(path), *stamp[0][2:]) if shown and stamp is not None else None
                self.facts.explained = found
                self._stamp = stamp
        return self.facts.explained

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = _connect(self.path)
        try:
            self._attached_as_now(connection)
            yield connection
        finally:
            self._idle.put(connection)

    def _attached_as_now(self, connection: sqlite3.Connection) -> None:
        """Attach ``connection`` to the explanations file shown now (a new file, by its inode, again)."""
        wanted = self._attach
        if self._attached.get(connection) == wanted:
            return
        if self._attached.get(connection) is not None:
            connection.execute(f"DETACH DATABASE {ALIAS}")
        self._attached[connection] = None
        if wanted is not None:
            attach_explanations(connection, self.facts.explained)
            self._attached[connection] = wanted

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _file_stamp(path: Path) -> tuple | None:
    """(size, modification time, device, inode) of the SQLite file at ``path`` and of its WAL, which
    a writer in WAL mode grows before the file itself; None where there is no file."""
    stamps = []
    for each in (path, path.with_name(path.name + "-wal")):
        try:
            stat = each.stat()
        except FileNotFoundError:
            stamps.append(None)
            continue
        stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_dev, stat.st_ino))
    return None if stamps[0] is None else tuple(stamps)
