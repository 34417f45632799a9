"""The spliced-model loss where a command reports a crosscoder's quality: ``train``'s quality
table (and its ``quality.json``), ``evaluate --spliced-loss`` and the W&B run's summary.

The measure itself is :func:`crosslens.causal.spliced_loss`; this module finds the snapshot
models a store was harvested from, picks the bounded token rows, and shapes the record that
``quality.json`` keeps under ``"spliced_loss"``::

    {"ablation": "zero", "n_seqs": 16, "seq_len": 64, "measured_on": STORE, "crosscoder": [row, ...]}

with one :func:`~crosslens.causal.spliced_loss.spliced_loss` row per snapshot (the demo adds
``"baselines"``: the per-snapshot SAEs' rows, by architecture).
"""

from __future__ import annotations

from typing import Any

from crosslens.commands.common import CLIError

# the per-snapshot figures a W&B run's summary carries, under spliced/<name>/<snapshot>
WANDB_SUMMARY_KEYS = ("ce_loss_score", "kl_div_with_sae")


def store_suite(store: Any, device: str, dtype: str | None, flag: str = "--store"):
    """The snapshot models ``store`` was harvested from, as a CheckpointSuite on ``device``."""
    from crosslens.checkpoints.on_device import on_device
    from crosslens.commands.common import resolve_suite

    record = store.manifest["spec"].get("suite") or {}
    spec = record.get("root") or record.get("model_id")
    if not spec:
        raise CLIError(f"{flag} {store.path}: its manifest records no suite, so the snapshot models cannot be loaded")
    steps = [int(s["step"]) for s in store.snapshots]
    return on_device(resolve_suite(spec, steps, None), device, dtype or "float32")


def measure_spliced(
    crosscoder: Any, store: Any, n_seqs: int, ablation: str, device: str, dtype: str | None = None
) -> dict[str, Any]:
    """The ``"spliced_loss"`` record of ``crosscoder`` on the first ``n_seqs`` token rows of ``store``."""
    from crosslens.causal.spliced_loss import spliced_record

    return spliced_record(store_suite(store, device, dtype), crosscoder, store, n_seqs, ablation)  # type: ignore[arg-type]


def spliced_heading(record: dict[str, Any], where: str | None = None) -> str:
    """The line above the printed table: how many token rows of which store, and the floor."""
    return (
        f"spliced-model loss per snapshot on {record['n_seqs']} rows of {where or record['measured_on']} "
        f"({record['ablation']}-ablation floor):"
    )


def wandb_summary(record: dict[str, Any]) -> dict[str, float]:
    """``spliced/<figure>/<snapshot>`` for each figure of :data:`WANDB_SUMMARY_KEYS`."""
    return {f"spliced/{key}/{row['snapshot']}": float(row[key]) for row in record["crosscoder"] for key in WANDB_SUMMARY_KEYS}


def log_spliced_to_wandb(logger: Any, run_id: str | None, record: dict[str, Any]) -> None:
    """Put the spliced-loss figures into the summary of the W&B run training logged to: the
    caller's open run, else the run ``run_id`` reopened (``logger`` is the run's LoggingConfig)."""
    import wandb

    summary = wandb_summary(record)
    if wandb.run is not None:
        wandb.run.summary.update(summary)
        return
    if not run_id:
        print("spliced loss not logged to W&B: the run records no W&B run id")
        return
    run = wandb.init(
        project=logger.wandb_project, entity=logger.wandb_entity, dir=logger.wandb_dir, mode=logger.wandb_mode,
        id=run_id, resume="allow",
    )  # fmt: skip
    try:
        run.summary.update(summary)
    finally:
        run.finish()


def log_run_spliced(runner: Any, spliced: dict[str, Any] | None) -> None:
    """The spliced-loss figures into the summary of the W&B run a training runner logged to, if any."""
    from dataclasses import replace

    from crosslens.crosscoders.saved import load_crosscoder_folder

    logger = runner.config.logger
    if spliced is None or not logger.log_to_wandb:
        return
    run_id = load_crosscoder_folder(runner.final_path).cfg.metadata.get("wandb_run_id")
    log_spliced_to_wandb(replace(logger, wandb_dir=logger.wandb_dir or str(runner.out_dir)), run_id, spliced)
