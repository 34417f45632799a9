"""W&B logging of a crosscoder trainer's run: the run, each logged step's metrics under SAELens's
keys, the decoder-norm histograms and the final crosscoder as a model artifact. ``wandb`` is
imported where a run logs to it (it is heavy, and a run without W&B never needs it).

Each function takes the :class:`~crosslens.training.trainer.CrosscoderTrainer` that logs (typed
``Any`` here: the trainer imports this module, and this module reads only its attributes)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepOutput

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.training.metrics import crosscoder_metrics


def log_model_artifact(trainer: Any, wandb_run: Any, folder: Path) -> None:
    """The saved crosscoder folder as a W&B ``model`` artifact, named as SAELens names its
    SAE artifacts (``sae.get_name()`` with "/" replaced)."""
    import wandb

    name = re.sub(r"[^A-Za-z0-9._-]", "_", trainer.sae.get_name().replace("/", "__"))
    artifact = wandb.Artifact(name, type="model", metadata={"n_steps": trainer.n_steps, "n_tokens": trainer.n_tokens})
    for file in sorted(folder.iterdir()):
        artifact.add_file(str(file))
    wandb_run.log_artifact(artifact, aliases=["final"])


@torch.no_grad()
def step_log(trainer: Any, output: TrainStepOutput, *, tokens_per_s: float | None = None) -> dict[str, Any]:
    """Scalar metrics of ``trainer``'s latest step, under SAELens's W&B keys; resets the
    dense-feature window."""
    log: dict[str, Any] = {"losses/overall_loss": output.loss.item()}
    for name, value in output.losses.items():
        log[f"losses/{name}"] = float(value)
    log.update(crosscoder_metrics(output.sae_in, output.sae_out, output.feature_acts))
    for name, value in output.metrics.items():
        log[f"metrics/{name}"] = float(value() if callable(value) else value)
    frequency_F = trainer.window_fire_counts.float() / max(trainer.window_tokens, 1)
    log["sparsity/dead_features"] = int(trainer.dead_features.sum())
    log["sparsity/dense_features"] = int((frequency_F > trainer.cfg.dense_feature_threshold).sum())
    log["details/current_learning_rate"] = trainer.optimizer.param_groups[0]["lr"]
    log["details/n_tokens"] = trainer.n_tokens
    for name, value in trainer.coefficients.items():
        log[f"details/{name}_coefficient"] = value
    if tokens_per_s is not None:
        log["performance/tokens_per_second"] = tokens_per_s
    trainer.window_fire_counts.zero_()
    trainer.window_tokens = 0
    return log


@torch.no_grad()
def histograms(trainer: Any) -> dict[str, Any]:
    """The decoder norms of every snapshot as W&B histograms."""
    import wandb

    return {name: wandb.Histogram(values) for name, values in trainer.sae.log_histograms().items()}


def start_wandb(trainer: Any) -> tuple[Any, bool]:
    """The W&B run to log into, and whether this call started it (the caller's open run is
    taken as it is)."""
    import wandb

    if wandb.run is not None:  # the caller's run: log into it, leave it open
        return wandb.run, False
    if trainer.cfg.logger.wandb_dir is not None:
        os.makedirs(trainer.cfg.logger.wandb_dir, exist_ok=True)
    run = wandb.init(
        project=trainer.cfg.logger.wandb_project,
        name=trainer.cfg.logger.run_name,
        entity=trainer.cfg.logger.wandb_entity,
        dir=trainer.cfg.logger.wandb_dir,
        mode=trainer.cfg.logger.wandb_mode,  # type: ignore[arg-type]
        id=trainer.wandb_run_id,
        resume="allow" if trainer.wandb_run_id else None,
        config={"trainer": asdict(trainer.cfg), "crosscoder": trainer.sae.cfg.to_dict()},
    )
    trainer.wandb_run_id = run.id
    return run, True
