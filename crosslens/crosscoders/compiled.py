"""Where a training step's elementwise functions run through ``torch.compile``.

A few functions of the step are chains of elementwise passes over tensors as large as the
batch's reconstruction or its per-snapshot code: the JumpReLU block functions
(:mod:`crosslens.crosscoders.jumprelu_ops`) and the reconstruction losses
(:func:`crosslens.crosscoders.base.reconstruction_errors`). Op by op each pass reads and
writes the whole tensor; compiled, a chain is one read of its inputs and one write of its
outputs each way. Each function is its own eager twin: compiled or not, it computes the same
values, to the order of its float sums.

:func:`use_compiled_kernels` is the one switch for all of them: by default they compile on
CUDA where Triton is there (Inductor's CUDA code is Triton), and nowhere else.
``CROSSLENS_COMPILE_KERNELS=1`` or ``=0`` in the environment sets it for the CLI and scripts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from crosslens.core.devices import kernel_backend

_COMPILE: bool | None = None
_COMPILED: dict[tuple[Callable[..., Any], bool | None], Callable[..., Any]] = {}


def use_compiled_kernels(enabled: bool | None = True) -> None:
    """Whether the step's elementwise functions run through ``torch.compile``: True on every
    device, a CPU included (the first call of each shape then compiles, tens of seconds on a
    CPU); False on none; None, the default, on CUDA where Triton is there.
    ``benchmarks/gpu.py``'s ``eager`` rows time them op by op on CUDA and
    ``benchmarks/train.py --compile`` compiled on a CPU. A function compiles for its first
    shape, and once more for any shape at its second (``torch.compile``'s automatic dynamic
    shapes), so a run or a test process compiles each about twice per dtype."""
    global _COMPILE
    _COMPILE = enabled


def compiled_kernels_setting() -> bool | None:
    """What :func:`use_compiled_kernels` last set (the environment's switch, else None): for code
    that changes the setting for a while and gives the process's back."""
    return _COMPILE


def compiles_on(device: torch.device) -> bool:
    """Whether the step's elementwise functions run compiled on ``device``, as
    :func:`use_compiled_kernels` says."""
    if _COMPILE is None:
        return device.type == "cuda" and kernel_backend(device) == "triton"
    return _COMPILE


def compiled(function: Callable[..., Any], *, dynamic: bool | None = None) -> Callable[..., Any]:
    """``function`` under ``torch.compile``, compiled once per process for each ``dynamic``
    (False: one shape; None: automatic dynamic shapes, for calls whose sizes change)."""
    key = (function, dynamic)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(function, dynamic=dynamic)
    return _COMPILED[key]


def _environment_switch() -> None:
    """``CROSSLENS_COMPILE_KERNELS`` 0 or 1, a switch for the CLI and scripts; another value is
    named, not taken for either."""
    value = os.environ.get("CROSSLENS_COMPILE_KERNELS")
    if value in ("0", "1"):
        use_compiled_kernels(value == "1")
    elif value:
        import warnings

        warnings.warn(f"CROSSLENS_COMPILE_KERNELS={value!r} is ignored: set 1 (compile everywhere) or 0 (nowhere)", stacklevel=2)


_environment_switch()
