"""Causal scores per task and snapshot, read from what ``crosslens attribute`` wrote.

``crosslens attribute --crosscoder RUN --out FILE.json`` writes the task's IE table to FILE.json
and, in its causal folder (``FILE_causal/``, see :func:`crosslens.causal.sections.causal_out_dir`),
``ie_table.json`` again beside ``relie.json`` (the selected features' RelIE classes),
``ablation_curves.json`` and ``summary.json``. An IE table is read with
:meth:`crosslens.causal.ie_table.IETable.load`; the files beside it add what they hold:

* ``ie``: the table's integrated-gradient IE, for every feature with an effect at some snapshot
  (its row at every attributed snapshot);
* ``relie``: that row's one-vs-all RelIE (:func:`crosslens.causal.relative_ie.relie`);
* ``relie_class``: the stage's class (other, shared, specific, below_floor, or no_behaviour where
  the model is at chance) for the features the stage selected, else NULL;
* ``ablation``: the metric's change when the feature alone is zero-ablated, which the ablation
  curves measure for one feature per snapshot (the top feature by |IE|: the curve's k = 1), else NULL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.hashing import file_sha256
from crosslens.core.paths import ABLATION_CURVES_NAME, CAUSAL_SUMMARY_NAME, IE_TABLE_NAME, RELIE_NAME, SECTIONS_DIR
from crosslens.dashboards.config import DashboardsError


@dataclass
class CausalScores:
    """Every task's rows for the ``tasks`` and ``causal`` tables, and what they were read from."""

    tasks: list[tuple] = field(default_factory=list)
    causal: list[tuple] = field(default_factory=list)
    relevance_F: torch.Tensor | None = None
    """Largest |IE| of each feature over tasks and snapshots (None: no attribution read)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Each file read (as recorded) -> its sha256."""


def find_tables(run_dir: Path, given: list[str] | None) -> list[Path]:
    """The IE tables to read: those ``given`` (a table, or a folder holding ie_table.json), else every
    ie_table.json under ``run_dir``. A causal folder beside a given ``FILE.json`` is found from it."""
    if given:
        tables = []
        for name in given:
            path = Path(name)
            path = path / IE_TABLE_NAME if path.is_dir() else path
            if not path.is_file():
                raise DashboardsError(
                    f"attribution {name}: no IE table there; pass the --out .json file of `crosslens attribute`, "
                    "or the folder holding its ie_table.json"
                )
            tables.append(path)
        return tables
    return sorted(run_dir.rglob(IE_TABLE_NAME))


def unread_sections(run_dir: Path, tasks: list[str]) -> list[str]:
    """Attribution sections saved in the run (``sections/attribution-TASK.json``) whose task no IE
    table read here holds."""
    folder = run_dir / SECTIONS_DIR
    names = (
        [p.stem.removeprefix("attribution-") for p in sorted(folder.glob("attribution-*.json"))]
        if folder.is_dir()
        else []
    )
    return [name for name in names if name not in tasks]


def read_causal(tables: list[Path], run_dir: Path, revisions: list[str], crosscoder: Any) -> CausalScores:
    """The causal rows of every table, checked to be of the run's ``crosscoder`` (its width,
    snapshots and weights)."""
    from crosslens.causal.ie_table import IETable, crosscoder_identity

    scores = CausalScores()
    if not tables:
        return scores
    d_sae, identity = int(crosscoder.cfg.d_sae), crosscoder_identity(crosscoder)
    relevance_F = torch.zeros(d_sae, dtype=torch.float64)
    seen: dict[str, Path] = {}
    for path in tables:
        try:
            table = IETable.load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DashboardsError(
                f"{path} is not an IE table of `crosslens attribute` ({error}); pass its --out file"
            ) from None
        _check_table(table, path, revisions, d_sae, identity, run_dir)
        if table.task in seen:
            raise DashboardsError(
                f"{path} and {seen[table.task]} both attribute task {table.task}; pass one of them (--attribution)"
            )
        seen[table.task] = path
        folder = _causal_folder(path, table.task)
        extras = (
            {name: folder / name for name in (RELIE_NAME, ABLATION_CURVES_NAME, CAUSAL_SUMMARY_NAME)} if folder else {}
        )
        extras = {name: p for name, p in extras.items() if p.is_file()}
        for p in [path, *extras.values()]:
            scores.sources[_recorded(p, run_dir)] = file_sha256(p)
        summary = _json(extras.get(CAUSAL_SUMMARY_NAME)) or {}
        metric = summary.get("metric") or table.config.get("metric") or "logit_diff"
        n_examples = int(summary.get("n_examples") or table.config.get("n_examples") or 0)
        scores.tasks.append((table.task, str(metric), n_examples, _recorded(path, run_dir)))
        scores.causal.extend(_rows(table, _json(extras.get(RELIE_NAME)), _json(extras.get(ABLATION_CURVES_NAME))))
        relevance_F = torch.maximum(relevance_F, table.ie.abs().amax(dim=1).double())
    scores.tasks.sort()
    scores.causal.sort(key=lambda row: (row[0], row[1], row[2]))
    scores.relevance_F = relevance_F
    return scores


def _check_table(
    table: Any, path: Path, revisions: list[str], d_sae: int, identity: dict[str, Any], run_dir: Path
) -> None:
    from crosslens.causal.ie_table import identity_problem

    labels = [revisions[s] if 0 <= s < len(revisions) else None for s in table.snapshots]
    if table.d_sae != d_sae or labels != list(table.snapshot_labels):
        raise DashboardsError(
            f"{path} attributes another crosscoder ({table.d_sae} features at {', '.join(table.snapshot_labels)}; "
            f"the run's has {d_sae} at {', '.join(revisions)}); pass the IE table `crosslens attribute --crosscoder RUN` wrote"
        )
    problem = identity_problem(table, identity)
    if problem is not None:
        raise DashboardsError(
            f"{path} cannot be read as an attribution of this run's crosscoder: {problem}; pass the IE table "
            f"`crosslens attribute --crosscoder {run_dir}` writes"
        )


def _causal_folder(path: Path, task: str) -> Path | None:
    """The folder holding the stage's other files: the table's own folder when it is ie_table.json,
    else ``STEM_causal/`` beside a ``--out`` file."""
    if path.name == IE_TABLE_NAME:
        return path.parent
    folder = path.with_name(f"{path.stem}_causal")
    return folder if (folder / IE_TABLE_NAME).is_file() else None


def _rows(table: Any, relie_file: dict | None, curves: list | None) -> list[tuple]:
    from crosslens.causal.relative_ie import relie

    ie_FS = table.ie.double()
    share_FS = relie(ie_FS)
    classes: dict[tuple[int, int], str] = {}
    if relie_file:
        for k, feature in enumerate(relie_file.get("features") or []):
            for column, label in enumerate(relie_file["classes"][k]):
                classes[(int(feature), column)] = str(label)
    ablation = _single_ablations(ie_FS, table.snapshots, curves or [])
    rows = []
    for feature in torch.nonzero((ie_FS != 0).any(dim=1)).flatten().tolist():
        for column, snapshot in enumerate(table.snapshots):
            rows.append(
                (
                    table.task,
                    feature,
                    int(snapshot),
                    float(ie_FS[feature, column]),
                    float(share_FS[feature, column]),
                    classes.get((feature, column)),
                    ablation.get((feature, int(snapshot))),
                )
            )
    return rows


def _single_ablations(ie_FS: torch.Tensor, snapshots: list[int], curves: list[dict]) -> dict[tuple[int, int], float]:
    """(feature, snapshot) -> the metric's change when that feature alone is ablated: the ablation
    curve's k = 1 (its top feature by |IE|, as :mod:`crosslens.causal.ablation` ranks) against k = 0."""
    out = {}
    for column, snapshot in enumerate(snapshots):
        rows = [r for r in curves if r.get("snapshot") == snapshot and not r.get("keep_only")]
        clean = next((r["metric"] for r in rows if r.get("selection") == "none"), None)
        one = next((r["metric"] for r in rows if r.get("selection") == "top" and r.get("k") == 1), None)
        if clean is None or one is None:
            continue
        top = int(torch.sort(ie_FS[:, column].abs(), descending=True, stable=True).indices[0])
        out[(top, int(snapshot))] = float(one) - float(clean)
    return out


def _json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _recorded(path: Path, run_dir: Path) -> str:
    """A file's name as the database records it: relative to the run where it lies inside it."""
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())
