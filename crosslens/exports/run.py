"""What every export shares: finding the run's crosscoder, its snapshots and its feature database,
refusing an output folder that holds something else, and writing the folder whole or not at all.

An export is written into a hidden sibling of ``out`` (``.NAME.partial``) and renamed into place
only once complete, so an interrupted export leaves ``out`` as it was. Its last file is
``crosslens_export.json`` (:data:`~crosslens.core.paths.EXPORT_MANIFEST_NAME`): which run, crosscoder and database it was
written from, the snapshots it holds and the sha256 of every file. Nothing in it depends on the
time or on where the run lies, so the same run exports to the same bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crosslens.core.errors import keyword_and_flag
from crosslens.core.hashing import crosscoder_sha256, file_sha256
from crosslens.core.metadata import metadata_value, saved_metadata
from crosslens.core.model_specs import check_model_pair
from crosslens.core.paths import (
    EXPORT_MANIFEST_FORMAT,
    EXPORT_MANIFEST_NAME,
    FINAL_DIRNAME,
    RUN_SEAL_NAME,
    read_export_manifest,
)
from crosslens.core.staging import staged_folder
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.record import open_database
from crosslens.dashboards.schema import DATABASE_NAME
from crosslens.exports.config import ExportConfig, ExportError, check_options_read

OUT = keyword_and_flag("out", "--out")
OVERWRITE = keyword_and_flag("overwrite=True", "--overwrite")
"""How a refused export names its fixes, for ``export_run``'s callers and the command's."""


@dataclass(frozen=True)
class SnapshotRef:
    """One snapshot of the run, as exports name it."""

    index: int
    """Its index in the crosscoder (0 .. S-1)."""
    label: str
    """Its name in file and source names: the revision (``step1000``)."""
    step: int | None
    """Its training step (None where the run does not record one)."""


@dataclass
class ExportContext:
    """Everything a format's writer reads: the config, the run's crosscoder, the chosen snapshots
    and (for the formats that read it) the feature database."""

    run_dir: Path
    config: ExportConfig
    crosscoder: Any
    snapshots: list[SnapshotRef]
    database: sqlite3.Connection | None
    provenance: dict[str, Any]

    def meta(self, key: str) -> Any:
        """``meta[key]`` of the feature database, decoded (None when absent)."""
        if self.database is None:
            return None
        row = self.database.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])


Writer = Callable[[ExportContext, Path], dict[str, Any]]
"""A format's writer: fills the staging folder, returns what its manifest adds (per snapshot)."""


def open_feature_database(run_dir: str | os.PathLike) -> sqlite3.Connection:
    """The run's feature database, read-only, once its sealed record, bytes and layout check out
    (:func:`crosslens.dashboards.open_database`); an :class:`ExportError` naming the fix else."""
    try:
        return open_database(Path(run_dir))
    except DashboardsError as error:
        raise ExportError(str(error)) from None


def check_run_folder(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run (no final crosscoder, or a seal that fails), or
    whose crosscoder cannot read activations yet."""
    from crosslens.training.runfolder import check_run, finished_run_problem, norm_factors_problem

    problem = finished_run_problem(run_dir)
    if problem is not None:
        raise ExportError(problem)
    check_run(run_dir)
    problem = norm_factors_problem(run_dir)
    if problem is not None:
        raise ExportError(problem)


def load_run_crosscoder(run_dir: Path, device: str) -> Any:
    """The final crosscoder of the run in ``run_dir`` (checked with :func:`check_run_folder`)."""
    from crosslens.crosscoders.saved import load_crosscoder_folder

    return load_crosscoder_folder(run_dir / FINAL_DIRNAME, device=device).eval()


def run_snapshots(crosscoder: Any, database: sqlite3.Connection | None) -> list[SnapshotRef]:
    """The run's snapshots: the database's table where there is one, else the crosscoder's record."""
    n_snapshots = int(crosscoder.cfg.n_snapshots)
    if database is not None:
        rows = database.execute("SELECT snapshot, revision, step FROM snapshots ORDER BY snapshot").fetchall()
        refs = [SnapshotRef(int(s), str(revision), None if step is None else int(step)) for s, revision, step in rows]
    else:
        entries = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
        refs = [
            SnapshotRef(s, str(entry.get("revision", entry.get("step"))), entry.get("step"))
            for s, entry in enumerate(entries)
        ]
        if not refs:
            refs = [SnapshotRef(s, f"snapshot{s}", None) for s in range(n_snapshots)]
    if [ref.index for ref in refs] != list(range(n_snapshots)):
        raise ExportError(
            f"the run's records name {len(refs)} snapshots but its crosscoder has {n_snapshots}; "
            "rebuild the feature database with `crosslens dashboards RUN --overwrite`"
        )
    return refs


def choose_snapshots(refs: Sequence[SnapshotRef], wanted: Sequence[str] | None) -> list[SnapshotRef]:
    """The snapshots ``wanted`` names (revisions or steps), in the run's order; all when None."""
    if not wanted:
        return list(refs)
    chosen: set[int] = set()
    for name in wanted:
        name = str(name).strip()
        found = [ref for ref in refs if name in (ref.label, str(ref.step))]
        if not found:
            have = ", ".join(ref.label for ref in refs)
            raise ExportError(f"snapshots names {name!r}, which this run does not have; pick from {have}")
        chosen.update(ref.index for ref in found)
    return [ref for ref in refs if ref.index in chosen]


def run_provenance(run_dir: Path, database: sqlite3.Connection | None) -> dict[str, Any]:
    """What identifies the inputs: the run's seal, the crosscoder's weights, the database."""
    seal = run_dir / RUN_SEAL_NAME
    return {
        "run_seal_sha256": file_sha256(seal) if seal.is_file() else None,
        "crosscoder_weights_sha256": crosscoder_sha256(run_dir),
        "database_sha256": file_sha256(run_dir / DATABASE_NAME) if database is not None else None,
    }


def check_database_partner(context: ExportContext) -> None:
    """Refuse a database computed for another crosscoder than the run's final one, where it says."""
    recorded = (context.meta("crosscoder") or {}).get("weights_sha256")
    if recorded and recorded != context.provenance["crosscoder_weights_sha256"]:
        raise ExportError(
            f"the feature database in {context.run_dir} was computed for another crosscoder "
            f"({str(recorded)[:12]}...) than the run's {FINAL_DIRNAME}/; run `crosslens dashboards {context.run_dir} --overwrite`"
        )
    d_sae = (context.meta("crosscoder") or {}).get("d_sae")
    if d_sae is not None and int(d_sae) != int(context.crosscoder.cfg.d_sae):
        raise ExportError(
            f"the feature database in {context.run_dir} holds {d_sae} features, the run's crosscoder "
            f"{context.crosscoder.cfg.d_sae}; run `crosslens dashboards {context.run_dir} --overwrite`"
        )


def check_out_folder(out: Path, config: ExportConfig) -> None:
    """Refuse an ``out`` that would lose something: a file, a folder holding anything but an earlier
    export, or an earlier export without ``overwrite``."""
    if out.is_file():
        raise ExportError(f"{out} is a file; pass a folder for {OUT}")
    if not out.is_dir() or not any(out.iterdir()):
        return
    manifest = read_export_manifest(out)
    if manifest is None:
        raise ExportError(f"{out} is not empty and holds no crosslens export; pick a new or empty folder for {OUT}")
    what = f"a {manifest.get('export')} export"
    if not config.overwrite:
        raise ExportError(f"{out} already holds {what}; pass {OVERWRITE} to replace it, or pick another {OUT}")
    stray = foreign_files(out, manifest)
    if stray:
        raise ExportError(
            f"{out} holds {what} and also {stray[0]}, which the export did not write; move it away or pick another {OUT}"
        )


def foreign_files(out: Path, manifest: dict[str, Any]) -> list[str]:
    """Files in ``out`` that its export manifest does not list (sorted)."""
    listed = set(manifest.get("files") or {}) | {EXPORT_MANIFEST_NAME}
    return sorted(
        rel for path in out.rglob("*") if path.is_file() and (rel := path.relative_to(out).as_posix()) not in listed
    )


def write_json(path: Path, value: Any, *, indent: int | None = 1) -> None:
    """``value`` as JSON (key order kept, as the formats define it), parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    path.write_text(text + ("\n" if indent is not None else ""), encoding="utf-8")


def write_manifest(context: ExportContext, folder: Path, written: dict[str, Any]) -> None:
    """``crosslens_export.json``: the inputs, the snapshots, what the writer adds, every file's sha256."""
    files = {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != EXPORT_MANIFEST_NAME
    }
    record = {
        "format": EXPORT_MANIFEST_FORMAT,
        "export": context.config.format,
        **context.provenance,
        "crosscoder": {
            "architecture": context.crosscoder.cfg.architecture(),
            "d_in": int(context.crosscoder.cfg.d_in),
            "d_sae": int(context.crosscoder.cfg.d_sae),
            "n_snapshots": int(context.crosscoder.cfg.n_snapshots),
            "hook_name": metadata_value(context.crosscoder, "hook_name"),
        },
        "snapshots": [asdict(ref) for ref in context.snapshots],
        **written,
        "files": files,
    }
    write_json(folder / EXPORT_MANIFEST_NAME, record)


def export_run(
    run_dir: str | os.PathLike,
    *,
    format: str,
    out: str | os.PathLike,
    snapshots: Sequence[str | int] | None = None,
    **options: Any,
) -> Path:
    """Export the run in ``run_dir`` as ``format`` (neuronpedia, delphi or saebench) into ``out``.

    ``snapshots`` picks snapshots by revision or step (default: all); ``options`` are the other
    fields of :class:`~crosslens.exports.config.ExportConfig`. Returns ``out``. Bad input (an
    unfinished run, a missing feature database, an unknown format, an option the format does not
    read, an ``out`` holding something else) raises :class:`~crosslens.exports.config.ExportError`
    with a one-line message naming the fix, before anything is written."""
    names = None if snapshots is None else [str(name) for name in snapshots]
    check_options_read(format, options)
    config = ExportConfig(format=format, out=str(out), snapshots=names, **options)
    return run_export(run_dir, config)


def run_export(run_dir: str | os.PathLike, config: ExportConfig) -> Path:
    """:func:`export_run` from a built :class:`ExportConfig` (what the command line calls)."""
    from importlib import import_module

    run_dir, out = Path(run_dir), Path(config.out)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ExportError(f"{OUT} {out} lies inside the run folder {run_dir}; pick a folder outside it")
    check_out_folder(out, config)
    writer: Writer = import_module(f"crosslens.exports.{config.format}").write_export
    check_run_folder(run_dir)
    suite = saved_metadata(run_dir / FINAL_DIRNAME).get("suite")
    check_model_pair(suite, len((suite or {}).get("snapshots") or []), str(run_dir), ExportError)
    database = open_feature_database(run_dir) if config.format == "neuronpedia" else None
    try:
        crosscoder = load_run_crosscoder(run_dir, config.device)
        refs = run_snapshots(crosscoder, database)
        context = ExportContext(
            run_dir=run_dir,
            config=config,
            crosscoder=crosscoder,
            snapshots=choose_snapshots(refs, config.snapshots),
            database=database,
            provenance=run_provenance(run_dir, database),
        )
        if database is not None:
            check_database_partner(context)
        with staged_folder(out) as staging:
            written = writer(context, staging)
            write_manifest(context, staging, written)
    finally:
        if database is not None:
            database.close()
    return out
