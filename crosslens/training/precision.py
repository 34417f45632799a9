"""What a training run computes in: its "auto" precision settings settled, for the device a run
starts on or, on resume, as the run recorded them (:func:`resolve_precision`), and the line its
printout says them in."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.launch import world_size
from crosslens.training.config import CrosscoderRunnerConfig, resolved_autocast
from crosslens.training.memory import choose_optimizer_state, fit_problem

PRECISION_SETTINGS = ("autocast_dtype", "optimizer_state")
"""The runner settings whose "auto" is settled by the device a run starts on (run.json records the choice)."""


def resolve_precision(
    config: CrosscoderRunnerConfig, n_snapshots: int, d_in: int | None, sealed: dict[str, Any] | None = None
) -> CrosscoderRunnerConfig:
    """``config`` with its "auto" precision settings replaced by the choice for its device:
    bfloat16 autocast on CUDA (float32 elsewhere: bfloat16 matmuls are slow on CPUs), and
    bfloat16 Adam moments where the step would not fit the CUDA device with float32 ones. A
    step predicted not to fit the CUDA device even so is warned of, with the micro-batches that
    fit (in one process; `crosslens plan --mesh` sizes a rank of a mesh). ``d_in`` None (a
    streaming run, whose width is known once a model loads), or a mesh (whose ranks hold a
    share each, and where bfloat16 moments are refused): float32 moments.

    ``sealed``: the settings a resumed run's checkpoint recorded. There an "auto" takes the
    choice the run made when it started, not the one this device would make: the checkpoint's
    Adam moments are in that dtype, and the steps still to train compute in the precision the
    first ones did, so a run started on a GPU and resumed on a CPU (or another GPU) is the same
    training to float rounding, as another device makes of any run. Deciding afresh would change
    the training halfway. A value given explicitly is kept, and compared with the sealed one."""
    if sealed is not None:
        chosen = {key: sealed.get(key) for key in PRECISION_SETTINGS if getattr(config, key) == "auto"}
        config = replace(config, **{key: value for key, value in chosen.items() if isinstance(value, str)})
    kind = torch.device(config.device).type
    on_cuda, autocast = kind == "cuda", resolved_autocast(config.autocast_dtype, kind)
    state = config.optimizer_state
    if d_in is None or world_size() > 1:
        return replace(config, autocast_dtype=autocast, optimizer_state="float32" if state == "auto" else state)
    device_bytes = torch.cuda.get_device_properties(torch.device(config.device)).total_memory if on_cuda else None
    shape = (n_snapshots, d_in, config.sae.d_sae, config.train_batch_size_tokens, config.sae.architecture)
    if state == "auto":
        state = choose_optimizer_state(*shape, device_bytes, config.micro_batches, autocast == "bfloat16")
    if device_bytes is not None and world_size() == 1:  # a mesh rank holds a share of the batch or snapshots
        problem = fit_problem(*shape, state, device_bytes, config.micro_batches, autocast == "bfloat16")
        if problem is not None:
            warnings.warn(problem, stacklevel=2)
    return replace(config, autocast_dtype=autocast, optimizer_state=state)


def precision_line(config: CrosscoderRunnerConfig) -> str:
    """What the run computes in, as the run's printout says it."""
    step = "bfloat16 autocast" if config.autocast_dtype == "bfloat16" else "float32"
    return (
        f"precision: crosscoder step in {step} (--autocast), float32 parameters, "
        f"{config.optimizer_state} Adam state (--optimizer-state)"
    )
