"""What ``crosslens export RUN`` takes: :class:`ExportConfig`, one field per flag, and the error
every export refuses bad input with."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.core.errors import CrosslensError

FORMATS = ("neuronpedia", "delphi", "saebench")
"""The formats :func:`crosslens.exports.export_run` writes."""


class ExportError(CrosslensError):
    """An export cannot be written from what it was handed; the message names the fix."""


def snapshot_list(text: str) -> list[str]:
    """``"step1000,step2000"`` -> ``["step1000", "step2000"]`` (the ``--snapshots`` flag's parser)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


@dataclass
class ExportConfig:
    """Where an export goes and what it holds. Fields a format does not read are ignored by it."""

    format: str = field(metadata={"choices": FORMATS})
    """neuronpedia: SAEDashboard's batch JSON for Neuronpedia, one source per snapshot (needs the
    feature database of `crosslens dashboards RUN`); delphi: EleutherAI delphi's latent cache,
    one hookpoint folder per snapshot (needs the run's activation store); saebench: one SAEBench
    custom-SAE folder per snapshot (needs only the run's crosscoder)."""
    out: str
    """The folder to write: a new or empty one, or one holding an earlier crosslens export (replaced
    only with --overwrite)."""
    snapshots: list[str] | None = field(default=None, metadata={"parse": snapshot_list})
    """Comma-separated snapshots to export, each a revision (step1000) or a training step (1000)
    (default: every snapshot of the run)."""
    overwrite: bool = False
    """Replace the crosslens export already in --out, once the new one is complete (a folder holding
    files the export did not write is never touched)."""
    model_id: str | None = None
    """neuronpedia: the Neuronpedia model id the sources belong to (default: the suite's model id
    without its organisation, lower-cased: EleutherAI/pythia-160m -> pythia-160m)."""
    set_name: str | None = None
    """neuronpedia: the source set (SAEDashboard's sae_set; Neuronpedia source ids read LAYER-SET)
    (default: res-crosslens at a residual-stream hook, mlp-crosslens or att-crosslens at an MLP or
    attention hook)."""
    features_per_batch: int = field(default=128, metadata={"min": 1})
    """neuronpedia: features per batch-N.json file (SAEDashboard's n_features_at_a_time)."""
    store: str | None = None
    """delphi: the activation store whose tokens the cache is computed on (default: the store the
    run was trained on, as its run.json records it). It must hold the run's snapshots at its hook."""
    n_tokens: int | None = field(default=None, metadata={"min": 1})
    """delphi: cache at most this many of the store's tokens, whole sequences first (default: all of
    them; the cache holds about 14 bytes per firing, per snapshot)."""
    n_splits: int = field(default=5, metadata={"min": 1})
    """delphi: files per hookpoint, each a contiguous range of latents (delphi's n_splits)."""
    tokenizer: str | None = None
    """delphi: what delphi loads the tokenizer from, its config.json's model_name (default: the
    suite's model id, or a local suite's first snapshot folder)."""
    batch_size: int = field(default=4096, metadata={"min": 1})
    """delphi: tokens encoded at a time."""
    device: str = "cpu"
    """Where the crosscoder encodes (delphi) and where the exported SAEs' tensors are computed."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}; pick one of those")
        if not str(self.out).strip():
            raise ExportError("out must name the folder to write the export to; pass --out FOLDER")
        for name in ("features_per_batch", "n_splits", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ExportError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_tokens is not None and int(self.n_tokens) < 1:
            raise ExportError(f"n_tokens must be at least 1, got {self.n_tokens}")
