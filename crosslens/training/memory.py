"""What a crosscoder's training step holds in memory, per option for Adam's state; torch-free,
so ``crosslens plan`` and the runner's automatic choice read the same numbers.

Parameters and gradients are float32 (``4 n`` bytes each for ``n`` parameters). Adam's two
moments take, on the training device:

- ``float32``: ``8 n``;
- ``bfloat16``: ``4 n``, plus the float32 temporaries of the chunk being updated
  (:data:`CHUNK` elements; gradient, two moments, denominator and the two rounding buffers).

The step's activations (:func:`activation_bytes`) come on top, whatever the option; trained in
``N`` micro-batches (``--micro-batches``), a step holds one micro-batch's activations at a time,
beside the whole batch's detached inputs, reconstructions and codes that its statistics read.
Under bfloat16 autocast the step also holds bfloat16 copies of the two weight matrices
(:func:`autocast_bytes`), whatever the micro-batch count. With more than one micro-batch it
keeps the operands of its weight matmuls until the last (:func:`activation_bytes`).
"""

from __future__ import annotations

from typing import Any

from crosslens.core.devices import GPUS

F32 = 4
BF16 = 2

CHUNK = 1 << 22
"""Elements of a parameter whose Adam update is computed at once when the moments are not
float32 on the device (bounds the float32 temporaries)."""

CHUNK_TEMPORARIES = 6
"""float32 buffers of CHUNK elements alive during such an update, at most: the eager update's
(the Triton kernel on CUDA, which draws the rounding noise in registers, holds none)."""

OPTIMIZER_STATES = ("float32", "bfloat16")
"""The dtypes Adam's moments can be kept in (``--optimizer-state``)."""

AUTO_HEADROOM = 0.9
"""Share of the device's memory a run may plan to use when the state dtype is chosen for it
(the allocator's fragmentation and CUDA's own context take the rest)."""


def parameter_counts(S: int, D: int, F: int, architecture: str) -> dict[str, int]:
    """Element counts of a crosscoder's parameters holding ``S`` of its snapshots."""
    counts = {"W_enc": S * D * F, "W_dec": F * S * D, "b_dec": S * D, "b_enc": F}
    if architecture == "jumprelu_crosscoder":
        counts["threshold"] = F
    return counts


def activation_bytes(B: int, S: int, D: int, F: int, micro_batches: int = 1, autocast: bool = False) -> dict[str, int]:
    """Estimated float32 bytes alive at the peak of one training step on one rank
    (``B`` local tokens, ``S`` local snapshots), trained in ``micro_batches`` of ``b = B / N``:

    - snapshot-wide: the input ``x``, the reconstruction and its gradient: ``3 b S D``;
    - latent: pre-activation, code and their gradients: ``4 b F``, for every architecture.
      JumpReLU's per-snapshot gate ``[S, b, F]`` is never whole on CUDA: its compiled kernels
      and its step from the pairs hold what ReLU's step holds (``benchmarks/gpu.py
      --memory-peak`` measures it; ``benchmarks/README.md``). Its eager blocks (a plan without
      ``compile``, and a CPU) hold about five 1 GiB blocks more;
    - with N > 1, the whole batch kept for the step's statistics and its input: inputs and
      reconstructions ``3 B S D``, codes and pre-activations ``2 B F`` (a gradient-free pass's
      encoder products are the pre-activations the micro-batches then take,
      :func:`~crosslens.kernels.weight_grads.kept_products`); and the operands of the
      weight matmuls whose gradients are summed after the last micro-batch
      (:func:`~crosslens.kernels.weight_grads.deferred_weight_grads`): ``B (S D + F)`` for
      the encoder, as much again for a dense decode (JumpReLU's keeps its dense code or its
      pre-activation, and its output gradient: the same size), in bfloat16 under ``autocast``
      (the matmuls' operands). The decoder's is counted for every architecture, so it
      over-counts the steps that decode sparsely (TopK's and BatchTopK's default at Ge et al.'s
      shape, JumpReLU's from pairs), which add their few rows to the gradient instead.
    """
    b = B // micro_batches
    parts = {"inputs and reconstructions": 3 * b * S * D * F32, "latent codes": 4 * b * F * F32}
    if micro_batches > 1:
        kept_operands = 2 * B * (S * D + F) * (BF16 if autocast else F32)
        parts["whole batch kept"] = (3 * B * S * D + 2 * B * F) * F32 + kept_operands
    return parts


def autocast_bytes(S: int, D: int, F: int) -> int:
    """Bytes a bfloat16-autocast step holds beyond a float32 one, at most: the bfloat16 copies
    of ``W_enc`` and ``W_dec`` that its matmuls read (the decoder's is kept for backward; where
    the optimizer writes them, they are made beside the gradients and Adam's state at the end
    of the step before, which this peak counts too). The
    weights' gradients come out of the matmuls in float32
    (:mod:`crosslens.kernels.weight_grads`), so no bfloat16 gradient is held on its way to
    ``.grad``. (Autocast's activations are half the float32 ones :func:`activation_bytes`
    counts; the estimate keeps that half as margin.)"""
    return BF16 * 2 * S * D * F  # W_enc and W_dec are S * D * F each


def _check_option(option: str) -> None:
    if option not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer state option must be one of {OPTIMIZER_STATES}, got {option!r}.")


def optimizer_state_bytes(n_params: int, option: str) -> int:
    """Device bytes of parameters, gradients and Adam's moments under ``option``."""
    _check_option(option)
    weights = 2 * n_params * F32  # parameters and gradients
    if option == "float32":
        return weights + 2 * n_params * F32
    return weights + 2 * n_params * BF16 + min(CHUNK, n_params) * F32 * CHUNK_TEMPORARIES


def checkpoint_bytes(n_params: int, option: str) -> int:
    """Disk bytes of one checkpoint of ``n_params`` parameters: the float32 weights and Adam's two
    moments, float32 or bfloat16 (``option``)."""
    _check_option(option)
    return n_params * (F32 + 2 * (F32 if option == "float32" else BF16))


def step_peak_bytes(
    S: int, D: int, F: int, B: int, architecture: str, micro_batches: int = 1, autocast: bool = False
) -> dict[str, int]:
    """Predicted device peak of one training step per optimizer-state option, the step in
    float32 or (``autocast``) under bfloat16 autocast."""
    n_params = sum(parameter_counts(S, D, F, architecture).values())
    act = sum(activation_bytes(B, S, D, F, micro_batches, autocast).values())
    act += autocast_bytes(S, D, F) if autocast else 0
    return {option: optimizer_state_bytes(n_params, option) + act for option in OPTIMIZER_STATES}


def smallest_fitting_micro_batches(
    S: int, D: int, F: int, B: int, architecture: str, option: str, device_bytes: int, autocast: bool = False
) -> int | None:
    """The fewest micro-batches (a divisor of ``B``) whose step peaks within ``AUTO_HEADROOM``
    of ``device_bytes`` with ``option`` Adam state; None when even one token at a time does not."""
    for n in (n for n in range(1, B + 1) if B % n == 0):
        if step_peak_bytes(S, D, F, B, architecture, n, autocast)[option] <= AUTO_HEADROOM * device_bytes:
            return n
    return None


def choose_optimizer_state(
    S: int,
    D: int,
    F: int,
    B: int,
    architecture: str,
    device_bytes: int | None,
    micro_batches: int = 1,
    autocast: bool = False,
) -> str:
    """float32 moments when the step (in ``micro_batches``) fits in ``AUTO_HEADROOM`` of the
    device (or the device's memory is not known: a CPU), else bfloat16 moments."""
    if device_bytes is None:
        return "float32"
    peak = step_peak_bytes(S, D, F, B, architecture, micro_batches, autocast)["float32"]
    return "float32" if peak <= AUTO_HEADROOM * device_bytes else "bfloat16"


def fit_problem(
    S: int,
    D: int,
    F: int,
    B: int,
    architecture: str,
    option: str,
    device_bytes: int,
    micro_batches: int = 1,
    autocast: bool = False,
) -> str | None:
    """Why the step would not fit ``AUTO_HEADROOM`` of a device of ``device_bytes``, and the
    fix; None when it fits."""
    peak = step_peak_bytes(S, D, F, B, architecture, micro_batches, autocast)[option]
    if peak <= AUTO_HEADROOM * device_bytes:
        return None
    gib = 1 << 30
    said = (
        f"the training step is predicted to peak at {peak / gib:.1f} GiB with {option} Adam state, over "
        f"{AUTO_HEADROOM:.0%} of this GPU's {device_bytes / gib:.1f} GiB"
    )
    # each way out, in the order it is offered: a smaller step in the precision asked for first;
    # one that needs no fewer micro-batches than an earlier one is left out
    fixes: list[tuple[int, str]] = []
    states = [option] if option == "bfloat16" else [option, "bfloat16"]
    for state, cast in [(state, cast) for state in states for cast in dict.fromkeys((autocast, False))]:
        fewest = smallest_fitting_micro_batches(S, D, F, B, architecture, state, device_bytes, cast)
        if fewest is not None and all(fewest < n for n, _ in fixes):
            flags = [f"--micro-batches {fewest}"] * (fewest != micro_batches)
            flags += ["--optimizer-state bfloat16"] * (state != option) + ["--autocast none"] * (cast != autocast)
            fixes.append((fewest, " ".join(flags)))
    if not fixes:
        return (
            f"{said}, in any number of micro-batches; put snapshots on more GPUs (--snapshot-parallel under torchrun)"
        )
    return f"{said}; {' or '.join(flags for _, flags in fixes[:2])} fits (crosslens plan prints the peak of each)"


def training_memory(
    S: int,
    D: int,
    F: int,
    B: int,
    architecture: str,
    micro_batches: int = 1,
    gpu: str | None = None,
    autocast: bool = False,
) -> dict[str, Any]:
    """The training step's memory on one rank (``S`` snapshots, ``B`` tokens), as ``crosslens
    plan`` reports it: float32 state, activations, autocast's weight copies, the peak per
    Adam-state option and, for a ``gpu`` of :data:`~crosslens.core.devices.GPUS`, the fewest
    micro-batches that fit it per option."""
    param_bytes = sum(parameter_counts(S, D, F, architecture).values()) * F32
    memory: dict[str, Any] = {"parameters": param_bytes, "gradients": param_bytes, "adam_state": 2 * param_bytes}
    memory["training_state"] = sum(memory.values())
    act = activation_bytes(B, S, D, F, micro_batches, autocast)
    memory.update(micro_batches=micro_batches, activations_per_batch=sum(act.values()), activations_breakdown=act)
    memory["autocast_copies"] = autocast_bytes(S, D, F) if autocast else 0
    memory["total_training"] = memory["training_state"] + memory["activations_per_batch"] + memory["autocast_copies"]
    peaks = step_peak_bytes(S, D, F, B, architecture, micro_batches, autocast)
    memory["optimizer_state_options"] = {
        option: {"device": optimizer_state_bytes(param_bytes // F32, option), "peak": peaks[option]}
        for option in OPTIMIZER_STATES
    }
    if gpu is not None:
        gpu_bytes = GPUS[gpu].memory_bytes
        fewest = {
            option: smallest_fitting_micro_batches(S, D, F, B, architecture, option, gpu_bytes, autocast)
            for option in OPTIMIZER_STATES
        }
        memory["fewest_micro_batches"] = {
            "gpu": gpu,
            "device_bytes": gpu_bytes,
            "headroom": AUTO_HEADROOM,
            "per_option": fewest,
        }
    return memory
