"""An unfinished pass, kept in ``RUN/dashboards.partial/``, and what is already in the run folder.

When the pass stops (Ctrl-C, a signal, an error) it saves its accumulators with the number of
batches done; so does a pass that finished, before the database is written from it. The state
file is written under a name of its own and renamed into place, then the sealed record
(``partial.json``) naming it, its sha256 and the inputs (partners and settings) it was computed
from, so a reader finds either the previous save or this one. A later call with the same inputs
continues from it; a call with other inputs, or a damaged save, is refused unless told to
overwrite (nothing already computed is thrown away silently). The IE tables of ``crosslens
attribute`` are no input of the pass (:func:`pass_inputs`): their causal rows are read when the
database is written, so a pass stopped before ``attribute`` wrote a table goes on and its database
holds the tables found when it finishes, as its record says.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.hashing import file_sha256
from crosslens.core.sealed import BrokenSealError, UnreadableRecordError, read_sealed, write_sealed
from crosslens.dashboards.accumulate import PassState
from crosslens.dashboards.config import DashboardsError, StaleDatabaseError
from crosslens.dashboards.record import database_problem, read_record
from crosslens.dashboards.schema import DATABASE_NAME, RECORD_NAME

PARTIAL_DIR = "dashboards.partial"
PARTIAL_RECORD = "partial.json"
PARTIAL_KEY = "partial_sha256"
PARTIAL_FORMAT = "crosslens.dashboards.partial/1"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a record."""
    return json.loads(json.dumps(value, sort_keys=True))


def differences(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two records."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def pass_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` (partners and settings, as JSON) less what only the written database reads: the
    IE tables, read from the run folder as the database is written, not by the pass."""
    partners = {key: value for key, value in (inputs.get("partners") or {}).items() if key != "attribution"}
    return as_json({**inputs, "partners": partners})


def save_partial(run_dir: Path, state: PassState, inputs: dict[str, Any]) -> Path:
    """Save ``state`` (the pass after ``state.position`` batches) for a later call to continue."""
    folder = run_dir / PARTIAL_DIR
    folder.mkdir(exist_ok=True)
    name = f"state_{state.position:09d}.pt"
    tmp = folder / f"{name}.tmp"
    torch.save(state.to_saved(), tmp)
    os.replace(tmp, folder / name)
    record = {
        "format": PARTIAL_FORMAT,
        "inputs": pass_inputs(inputs),
        "state": name,
        "state_sha256": file_sha256(folder / name),
        "position": state.position,
        "tokens": state.tokens,
    }
    write_sealed(folder / PARTIAL_RECORD, record, PARTIAL_KEY)
    for old in folder.glob("state_*.pt*"):
        if old.name != name:
            old.unlink()
    return folder


def load_partial(run_dir: Path, inputs: dict[str, Any], device: torch.device, overwrite: bool) -> PassState | None:
    """The saved pass over these ``inputs`` (None when there is none, or ``overwrite`` drops it)."""
    folder = run_dir / PARTIAL_DIR
    if not folder.exists():
        return None
    if overwrite:
        shutil.rmtree(folder)
        return None
    fix = f"pass --overwrite to start the pass again (or remove {folder})"
    try:
        record = read_sealed(folder / PARTIAL_RECORD, PARTIAL_KEY)
        if record.get("format") != PARTIAL_FORMAT:
            raise UnreadableRecordError(f"format {record.get('format')!r}, not {PARTIAL_FORMAT}")
    except (OSError, UnreadableRecordError, BrokenSealError) as error:
        raise DashboardsError(f"{folder} holds a damaged unfinished pass ({error}); {fix}") from None
    changed = differences(pass_inputs(record.get("inputs") or {}), pass_inputs(inputs))
    if changed:
        raise DashboardsError(
            f"{folder} holds an unfinished pass over other inputs ({', '.join(changed)} differ); run the command that "
            f"started it again to finish it, or {fix}"
        )
    path = folder / str(record["state"])
    if not path.is_file() or file_sha256(path) != record.get("state_sha256"):
        raise DashboardsError(f"{folder} holds a damaged unfinished pass ({path.name} is missing or altered); {fix}")
    try:
        return PassState.from_saved(torch.load(path, map_location="cpu", weights_only=True), device)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise DashboardsError(f"{folder} holds a damaged unfinished pass ({error}); {fix}") from None


def _saved_pass_of(run_dir: Path, inputs: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds an interrupted pass over these ``inputs`` (one started with
    --overwrite beside the database it replaces); :func:`load_partial` checks it whole."""
    try:
        record = read_sealed(run_dir / PARTIAL_DIR / PARTIAL_RECORD, PARTIAL_KEY)
    except (OSError, UnreadableRecordError, BrokenSealError):
        return False
    return not differences(pass_inputs(record.get("inputs") or {}), pass_inputs(inputs))


def remove_partial(run_dir: Path) -> None:
    shutil.rmtree(run_dir / PARTIAL_DIR, ignore_errors=True)


def existing_database(run_dir: Path, inputs: dict[str, Any], overwrite: bool) -> str:
    """What the run folder already holds: ``"none"``; ``"current"`` (a verified database of these
    inputs: nothing to do); ``"replace"`` (to be replaced: ``overwrite``, the database an interrupted
    call of these inputs left unsealed, or any database where an interrupted pass over these inputs
    is saved, which goes on). Anything else is refused, naming the fix."""
    database, record_path = run_dir / DATABASE_NAME, run_dir / RECORD_NAME
    if not database.exists() and not record_path.exists():
        return "none"
    if overwrite or _saved_pass_of(run_dir, inputs):  # computed again, or the pass started so goes on
        return "replace"
    if not record_path.exists():
        if (run_dir / PARTIAL_DIR).is_dir():
            return "replace"
        raise DashboardsError(
            f"{database} was not written by a finished `crosslens dashboards` (no {RECORD_NAME} beside it); "
            "pass --overwrite to replace it, or move it away"
        )
    try:
        record = read_record(run_dir)
        problem = database_problem(run_dir, record)
    except DashboardsError as error:
        record, problem = None, str(error).split("; rebuild")[0]
    if problem is None and record is not None:
        # the emergence check is no input of the pass: database_problem compared it with the run's
        partners = {k: v for k, v in (record.get("partners") or {}).items() if k != "emergence"}
        changed = differences({"partners": partners, "settings": record.get("settings")}, as_json(inputs))
        if not changed:
            return "current"
        problem = f"{database} holds dashboards computed from other inputs ({', '.join(changed)} differ)"
    raise StaleDatabaseError(problem)
