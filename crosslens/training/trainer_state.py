"""What a checkpoint holds beside the crosscoder's weights and Adam's moments: the trainer's
counters, schedules, feature statistics, resampling counts and random states
(``trainer_state.pt``), written and read back whole, so that a resumed run ends at the bytes an
uninterrupted one does."""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.launch import local_rank_device
from crosslens.training.config import CrosscoderTrainerConfig


def rng_states(device: torch.device) -> dict[str, Any]:
    """torch's, numpy's and Python's random states, and the trainer's own GPU's (a resume may see
    other GPUs, or fewer)."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng_states(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    cuda_state = rng.get("cuda")
    if isinstance(cuda_state, (list, tuple)):  # written as every visible GPU's: this GPU's, if it had one
        index = device.index or 0
        cuda_state = cuda_state[index] if index < len(cuda_state) else None
    if cuda_state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda_state.cpu(), device)


def trainer_state(trainer: Any, optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The state ``trainer_state.pt`` holds, with ``optimizer_state`` gathered from the mesh."""
    return {
        "trainer_cfg": asdict(trainer.cfg),
        "n_steps": trainer.n_steps,
        "n_tokens": trainer.n_tokens,
        "optimizer": optimizer_state,
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "coefficient_schedulers": {name: s.state_dict() for name, s in trainer.coefficient_schedulers.items()},
        "tokens_since_fired": trainer.tokens_since_fired.cpu(),
        "window_fire_counts": trainer.window_fire_counts.cpu(),
        "window_tokens": trainer.window_tokens,
        "resample_counts": trainer.resample_counts.cpu(),
        "resample_tokens": trainer.resample_tokens,
        "resampled": trainer.resampled,
        "last_l0": None if trainer.last_l0 is None else float(trainer.last_l0),
        "rng": rng_states(torch.device(trainer.cfg.device)),
        "wandb_run_id": trainer.wandb_run_id,
    }


def restore_trainer_state(trainer: Any, state: dict[str, Any]) -> None:
    """Everything of :func:`trainer_state` but the config and the optimizer (whose moments the
    trainer slices to its block of the mesh)."""
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    for name, s_state in state["coefficient_schedulers"].items():
        trainer.coefficient_schedulers[name].load_state_dict(s_state)
    device = trainer.cfg.device
    trainer.n_steps, trainer.n_tokens = state["n_steps"], state["n_tokens"]
    trainer.tokens_since_fired = state["tokens_since_fired"].to(device)
    trainer.window_fire_counts = state["window_fire_counts"].to(device)
    trainer.window_tokens = state["window_tokens"]
    trainer.resample_counts = state["resample_counts"].to(device)
    trainer.resample_tokens = state["resample_tokens"]
    trainer.resampled = dict(state["resampled"])
    trainer.last_l0 = state.get("last_l0")
    trainer.wandb_run_id = state["wandb_run_id"]
    restore_rng_states(state["rng"], torch.device(device))


def saved_config(state: dict[str, Any]) -> CrosscoderTrainerConfig:
    """The trainer config a checkpoint's state holds, on this worker's own GPU under torchrun
    (the saved one names the device of the rank that wrote it)."""
    saved = CrosscoderTrainerConfig.from_dict(state["trainer_cfg"])
    return replace(saved, device=local_rank_device(saved.device))
