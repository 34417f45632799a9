"""The feature database's sealed record, and the one reader that checks it.

``RUN/dashboards.json`` is written last, once ``RUN/dashboards.sqlite`` is in place: the
database's sha256 and size, the partners it was computed from (the run as training left it, the
crosscoder's weights, the token source, the suite, the attribution files, the emergence check)
and the settings (budget, tokens, seed), sealed by its own checksum (:mod:`crosslens.core.sealed`).
A database without it was never finished; one whose bytes differ from it was damaged or edited;
one whose run differs from the run folder's was computed before the run was trained again; one
whose emergence check is not ``RUN/emergence.json`` as it is now was built before ``crosslens
analyze`` wrote it again (its emergence tables, and an export's flags, would be the earlier check's).

The run is named by :func:`trained_run_sha256`: its seal's entries less the quality table, which
``crosslens train --resume --eval-store`` and the demo measure again and reseal without
touching the crosscoder.

:func:`open_database` is the reader: read-only (``mode=ro``), after those checks and
:func:`~crosslens.dashboards.schema.schema_problem`. Hashing a database of a few GB takes
seconds, so a check is remembered per file by its size and modification time, as
:func:`crosslens.training.runfolder.check_run` does for a run.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from crosslens.core.hashing import file_sha256, json_sha256, remembered_file_sha256
from crosslens.core.metadata import CFG_NAME
from crosslens.core.paths import EMERGENCE_NAME, QUALITY_NAME, RUN_CONFIG_NAME, RUN_SEAL_KEY, RUN_SEAL_NAME
from crosslens.core.sealed import BrokenSealError, UnreadableRecordError, read_sealed, write_sealed
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.schema import DATABASE_NAME, FORMAT, RECORD_NAME, schema_problem

RECORD_FORMAT = "crosslens.dashboards.record/2"
EARLIER_FORMATS = ("crosslens.dashboards.record/1",)
"""Records of earlier crosslens versions, which named the run by its whole seal."""
RECORD_KEY = "record_sha256"
VERIFY_MODES = ("full", "size", "none")


def trained_run_sha256(run_dir: Path) -> str | None:
    """The run as training left it: a sha256 of its seal's entries (``run.json``, ``final/``'s
    record, the rows a streamed run trained on) without the quality table; None without a seal.
    A seal that is unreadable or fails its checksum gives its file's sha256, which no record holds."""
    seal = run_dir / RUN_SEAL_NAME
    if not seal.is_file():
        return None
    try:
        files = dict(read_sealed(seal, RUN_SEAL_KEY).get("files") or {})
    except (UnreadableRecordError, BrokenSealError, TypeError, ValueError):
        return file_sha256(seal)
    files.pop(QUALITY_NAME, None)
    return json_sha256(files)


def emergence_sha256(run_dir: Path) -> str | None:
    """The sha256 of the run's saved emergence check (``crosslens analyze``'s ``RUN/emergence.json``,
    which seals its tables' sha256), None where it has none: what the database's emergence tables
    were read from (``partners.emergence``)."""
    path = run_dir / EMERGENCE_NAME
    return file_sha256(path) if path.is_file() else None


def _emergence_problem(run_dir: Path, recorded: str | None) -> str | None:
    """Why the database's emergence tables are not of the emergence check the run holds now."""
    now = emergence_sha256(run_dir)
    if recorded == now:
        return None
    path, check = run_dir / DATABASE_NAME, run_dir / EMERGENCE_NAME
    if recorded is None:
        return f"{path} was built without the emergence check {check} holds now (`crosslens analyze` wrote it since)"
    if now is None:
        return f"{path} holds the emergence check of {check}, which is gone"
    return f"{path} holds an earlier emergence check than {check} (`crosslens analyze` wrote it again since)"


def write_record(run_dir: Path, partners: dict[str, Any], settings: dict[str, Any], n_tokens: int) -> dict[str, Any]:
    """Seal the finished database of ``run_dir`` with what it was computed from (written last)."""
    path = run_dir / DATABASE_NAME
    record = {
        "format": RECORD_FORMAT,
        "database": DATABASE_NAME,
        "layout": FORMAT,
        "database_sha256": remembered_file_sha256(path),
        "database_bytes": path.stat().st_size,
        "partners": partners,
        "settings": settings,
        "n_tokens": n_tokens,
    }
    return write_sealed(run_dir / RECORD_NAME, record, RECORD_KEY)


def read_record(run_dir: Path) -> dict[str, Any]:
    """The sealed record beside the run's database; :class:`DashboardsError` naming the fix when it
    is missing, unreadable or fails its seal."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        raise DashboardsError(
            f"{run_dir / DATABASE_NAME} has no sealed record beside it ({RECORD_NAME}): `crosslens dashboards` did not "
            f"finish it; rebuild it with `crosslens dashboards {run_dir} --overwrite`"
        )
    try:
        record = read_sealed(path, RECORD_KEY)
    except (UnreadableRecordError, BrokenSealError) as error:
        raise DashboardsError(
            f"{path} is damaged ({error}); rebuild the database with `crosslens dashboards {run_dir} --overwrite`"
        ) from None
    earlier = record.get("format") in EARLIER_FORMATS
    if not earlier and (record.get("format") != RECORD_FORMAT or record.get("database") != DATABASE_NAME):
        raise DashboardsError(
            f"{path} is not a record of `crosslens dashboards` ({record.get('format')}); rebuild it with `crosslens dashboards {run_dir} --overwrite`"
        )
    # the layout is read here, before the database is opened, so that `crosslens dashboards` replaces
    # a database of an earlier layout where it would otherwise keep it as current
    if earlier or record.get("layout") != FORMAT:
        written = record["format"] if earlier else record.get("layout") or "an earlier layout"
        raise DashboardsError(
            f"{path} was written by an earlier crosslens ({written}); rebuild the database with `crosslens dashboards {run_dir} --overwrite`"
        )
    return record


def database_problem(run_dir: Path, record: dict[str, Any], verify: str = "full") -> str | None:
    """Why the run's database is not the file ``record`` vouches for, for this run and the emergence
    check it holds now (None when it is)."""
    path = run_dir / DATABASE_NAME
    if not path.is_file():
        return f"{path} is missing"
    partners = record.get("partners") or {}
    recorded_run = partners.get("run")
    if recorded_run is not None and recorded_run != trained_run_sha256(run_dir):
        return f"{path} was computed for an earlier run in {run_dir} (the run was trained again since)"
    problem = _emergence_problem(run_dir, partners.get("emergence"))
    if problem is not None:
        return problem
    if verify != "none" and path.stat().st_size != record.get("database_bytes"):
        return f"{path} is not the file `crosslens dashboards` wrote (its size differs: damaged or edited)"
    if verify == "full" and remembered_file_sha256(path) != record.get("database_sha256"):
        return f"{path} is not the file `crosslens dashboards` wrote (its sha256 differs: damaged or edited)"
    return None


def open_database(run_dir: str | Path, *, verify: str | bool = "full") -> sqlite3.Connection:
    """The run's feature database, read-only, once its sealed record, its bytes and its layout check out.

    ``verify``: "full" (size and sha256, remembered per file by size and time; ``True``), "size"
    (sizes only) or "none" (the record and the layout only; ``False``). Raises
    :class:`~crosslens.dashboards.config.DashboardsError` with the fix when the run has no
    database, the database was not finished, is damaged, edited, foreign or of another run."""
    run_dir = Path(run_dir)
    verify = {True: "full", False: "none"}.get(verify, verify)  # type: ignore[arg-type]
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES} (or True/False), got {verify!r}")
    path = run_dir / DATABASE_NAME
    if not Path(run_dir).is_dir():
        what = "is a file, not a run folder" if Path(run_dir).exists() else "does not exist"
        raise DashboardsError(f"{run_dir} {what}; pass the --out folder of `crosslens train`")
    if not path.is_file():
        raise DashboardsError(
            crosscoder_folder_problem(run_dir)
            or f"{run_dir} has no feature database ({DATABASE_NAME}); run `crosslens dashboards {run_dir}` first"
        )
    problem = database_problem(run_dir, read_record(run_dir), verify)
    if problem is not None:
        raise DashboardsError(f"{problem}; rebuild it with `crosslens dashboards {run_dir} --overwrite`")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        problem = schema_problem(connection)
    except sqlite3.DatabaseError as error:
        problem, connection = f"not a readable SQLite database ({error})", None
    if problem is not None:
        if connection is not None:
            connection.close()
        raise DashboardsError(f"{path} is {problem}; rebuild it with `crosslens dashboards {run_dir} --overwrite`")
    return connection


def crosscoder_folder_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` holds no database when it is a crosscoder's folder inside a run (``RUN/final``),
    naming its run, since `crosslens dashboards` takes only the run; None for any other folder."""
    run = run_dir.parent
    if not ((run_dir / CFG_NAME).is_file() and (run / RUN_CONFIG_NAME).is_file()):
        return None
    after = "" if (run / DATABASE_NAME).is_file() else f", after `crosslens dashboards {run}`"
    return f"{run_dir} is a crosscoder's folder inside the run {run}; pass the run folder {run}{after}"
