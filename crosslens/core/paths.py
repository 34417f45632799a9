"""Where crosslens keeps things: its home folder and the names inside a run folder.

Several stages write into the same folders and read what the others wrote (the trainer
writes checkpoints the runner resumes from, ``crosslens train`` reads the held-out store
``crosslens harvest`` wrote, ``crosslens report`` merges the sections ``crosslens
attribute`` added). Each name is defined here once, so a writer and its readers cannot
drift apart.

A run folder (``crosslens train --out RUN``)::

    RUN/run.json                the runner's configuration (RUN_CONFIG_NAME)
    RUN/quality.json            the quality table ``train`` prints (QUALITY_NAME)
    RUN/trained_rows.safetensors  a streamed run's training rows as digests (TRAINED_ROWS_NAME)
    RUN/train_log.jsonl         the run's own log: metrics, checkpoints and evaluation, timed (TRAIN_LOG_NAME)
    RUN/step_00001000/          a checkpoint (CHECKPOINT_PREFIX + 8-digit step), resumable when
                                it holds trainer_state.pt (TRAINER_STATE_FILENAME)
    RUN/final/                  the trained crosscoder (FINAL_DIRNAME)
    RUN/sections/*.json         report sections other commands add (SECTIONS_DIR)
    RUN/emergence.json          ``crosslens analyze``'s emergence check and lineage, sealed, with its
    RUN/emergence.safetensors   tables (EMERGENCE_NAME, EMERGENCE_TENSORS_NAME)
    RUN/report.html             ``crosslens analyze`` and ``crosslens report``'s page, which ``browse``
                                serves (REPORT_NAME)
    RUN/crosslens_run.json      the seal tying run.json, final/, quality.json and the row digests
                                together (RUN_SEAL_NAME)
    RUN/train.lock              held by the process writing the folder (RUN_LOCK_NAME)

and beside an activation store ``STORE``, its held-out split ``STORE-heldout``
(HELDOUT_SUFFIX). The causal stage (``crosslens attribute``, the demo) writes its tables into a folder
of their own, which ``crosslens dashboards`` reads (IE_TABLE_NAME, RELIE_NAME, ABLATION_CURVES_NAME,
CAUSAL_SUMMARY_NAME).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crosslens.core.metadata import WEIGHTS_NAME

HOME_ENV = "CROSSLENS_HOME"
"""The environment variable that moves crosslens's home folder."""

RUN_CONFIG_NAME = "run.json"
"""The runner's configuration, written into the run folder when training starts."""
QUALITY_NAME = "quality.json"
"""The crosscoder's quality table, written beside ``run.json`` after training."""
TRAINED_ROWS_NAME = "trained_rows.safetensors"
"""A run trained without a store (``train --stream``) keeps no copy of its token rows; this file
holds a 16-byte digest of each, so that a store can be checked for rows it trained on."""
TRAIN_LOG_NAME = "train_log.jsonl"
"""The run's own log, one JSON object a line (:mod:`crosslens.training.run_log`); not sealed, since
its seconds differ from run to run."""
CHECKPOINT_PREFIX = "step_"
"""A checkpoint folder's name is this prefix and the step, zero-padded to 8 digits."""
TRAINER_STATE_FILENAME = "trainer_state.pt"
"""What makes a checkpoint folder resumable: the optimizer, scheduler and data position."""
FINAL_DIRNAME = "final"
"""The folder holding the trained crosscoder, beside the step checkpoints."""
HELDOUT_SUFFIX = "-heldout"
"""``harvest --out STORE`` also writes held-out activations to ``STORE-heldout``; ``train`` reads them."""
SECTIONS_DIR = "sections"
"""Report sections other stages add to a run folder (``crosslens attribute``), merged by ``crosslens report``."""
EMERGENCE_NAME = "emergence.json"
"""The sealed record of ``crosslens analyze``'s emergence check (latent scaling) and lineage: what
they were computed from, the lineage events and the sha256 of their tables."""
EMERGENCE_TENSORS_NAME = "emergence.safetensors"
"""The tables of that record (latent scaling, presence, contested flags, relatives)."""
REPORT_NAME = "report.html"
"""Where ``crosslens analyze`` and ``crosslens report`` write by default: inside the run folder,
describing its final crosscoder; ``crosslens browse`` serves it at ``/report``."""
RUN_SEAL_NAME = "crosslens_run.json"
"""The sealed record of a finished run: the sha256 of its run.json, final/ record, quality.json and row digests."""
RUN_SEAL_KEY = "run_sha256"
"""The key of that record's own checksum (:mod:`crosslens.core.sealed`)."""
IE_TABLE_NAME = "ie_table.json"
"""The causal stage's table of every feature's indirect effect at every snapshot."""
RELIE_NAME = "relie.json"
"""The causal stage's RelIE, RelDec, classes and intervals of the features it selected."""
ABLATION_CURVES_NAME = "ablation_curves.json"
"""The causal stage's ablation curves, one row per (snapshot, curve, k)."""
CAUSAL_SUMMARY_NAME = "summary.json"
"""The causal stage's summary (task, metric, per-snapshot behaviour)."""
RUN_LOCK_NAME = "train.lock"
"""The lock file of a run folder, held while a ``crosslens train`` process writes it."""
EXPORT_MANIFEST_NAME = "crosslens_export.json"
"""The record ``crosslens export`` ends an export folder with (written last): which run, crosscoder
and feature database it was written from; ``crosslens explain --import`` reads it back."""
EXPORT_MANIFEST_FORMAT = "crosslens.export/1"
"""That record's ``format``."""


def read_export_manifest(folder: Path) -> dict[str, Any] | None:
    """The export manifest in ``folder`` (None when there is none or it does not parse)."""
    try:
        record = json.loads((folder / EXPORT_MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == EXPORT_MANIFEST_FORMAT else None


def final_weights(run_dir: str | os.PathLike) -> Path:
    """The weights file of a run's trained crosscoder (``RUN/final/sae_weights.safetensors``)."""
    return Path(run_dir) / FINAL_DIRNAME / WEIGHTS_NAME


def free_disk(folder: str | Path) -> int | None:
    """Free bytes on the disk that holds ``folder`` (or would hold it, once made)."""
    import shutil

    here = Path(folder).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def crosslens_home() -> Path:
    """``$CROSSLENS_HOME``, by default ``~/.cache/crosslens``."""
    return Path(os.environ.get(HOME_ENV, "~/.cache/crosslens")).expanduser()


def checkpoint_dirname(step: int) -> str:
    """The folder name of the checkpoint taken after ``step`` steps: ``step_00001000``."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(name: str) -> int | None:
    """The step a checkpoint folder name records (None: not a checkpoint folder's name)."""
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoint_folders(checkpoint_dir: str | Path) -> list[Path]:
    """The checkpoint folders (``step_XXXXXXXX``) under ``checkpoint_dir``, oldest step first."""
    found = [p for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p.name) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p.name))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The resumable checkpoint (one holding ``trainer_state.pt``) with the highest step under
    ``checkpoint_dir``, if any."""
    found = [p for p in checkpoint_folders(checkpoint_dir) if (p / TRAINER_STATE_FILENAME).exists()]
    return found[-1] if found else None


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    root = Path(folder)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a folder rather than a hub id (``owner/name``) or ``pico``:
    it starts with ``/``, ``.`` or ``~``, ends with a separator, or has more than one ``/``."""
    if spec.startswith(("/", ".", "~")) or spec.endswith(("/", "\\")) or "\\" in spec:
        return True
    return os.sep in spec and spec.count("/") != 1
