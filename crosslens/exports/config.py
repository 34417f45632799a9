"""What ``crosslens export RUN`` takes: :class:`ExportConfig`, one field per flag, and the error
every export refuses bad input with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

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
    """Where an export goes and what it holds. A field one format reads names it in its metadata
    (``formats``) and its docstring; :func:`check_options_read` refuses it set for another."""

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
    model_id: str | None = field(default=None, metadata={"formats": ("neuronpedia",)})
    """neuronpedia: the Neuronpedia model id the sources belong to (default: the suite's model id
    without its organisation, lower-cased: EleutherAI/pythia-160m -> pythia-160m)."""
    set_name: str | None = field(default=None, metadata={"formats": ("neuronpedia",)})
    """neuronpedia: the source set (SAEDashboard's sae_set; Neuronpedia source ids read LAYER-SET)
    (default: res-crosslens at a residual-stream hook, mlp-crosslens or att-crosslens at an MLP or
    attention hook)."""
    features_per_batch: int = field(default=128, metadata={"min": 1, "formats": ("neuronpedia",)})
    """neuronpedia: features per batch-N.json file (SAEDashboard's n_features_at_a_time)."""
    store: str | None = field(default=None, metadata={"formats": ("delphi",)})
    """delphi: the activation store whose tokens the cache is computed on (default: the store the
    run was trained on, as its run.json records it). It must hold the run's snapshots at its hook."""
    n_tokens: int | None = field(default=None, metadata={"min": 1, "formats": ("delphi",)})
    """delphi: cache at most this many of the store's tokens, whole sequences first (default: all of
    them; the cache holds about 14 bytes per firing, per snapshot)."""
    n_splits: int = field(default=5, metadata={"min": 1, "formats": ("delphi",)})
    """delphi: files per hookpoint, each a contiguous range of latents (delphi's n_splits)."""
    tokenizer: str | None = field(default=None, metadata={"formats": ("delphi",)})
    """delphi: what delphi loads the tokenizer from, its config.json's model_name (default: the
    suite's model id, or a local suite's first snapshot folder)."""
    batch_size: int = field(default=4096, metadata={"min": 1, "formats": ("delphi",)})
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


def formats_reading(name: str) -> tuple[str, ...]:
    """The formats that read field ``name`` of :class:`ExportConfig` (all of them but for a field
    whose metadata names its ``formats``)."""
    found = next((f for f in fields(ExportConfig) if f.name == name), None)
    return FORMATS if found is None else tuple(found.metadata.get("formats", FORMATS))


def check_options_read(format: str, names: Iterable[str], named: Callable[[str], str] = str) -> None:
    """Refuse an option set (``names``, fields of :class:`ExportConfig`) that ``format`` does not
    read, which would be dropped without a word; ``named`` spells a field as the caller's user
    knows it (``--n-splits`` on the command line)."""
    for name in names:
        readers = formats_reading(name)
        if format in FORMATS and format not in readers:
            raise ExportError(
                f"{named(name)} is read only by the {' and '.join(readers)} export, not by {format}; "
                f"drop it, or pass {named('format')} {readers[0]}"
            )
