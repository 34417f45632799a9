"""The training step's elementwise chains through ``torch.compile``.

A few functions of the step are chains of elementwise passes over tensors as large as the
batch's reconstruction or its per-snapshot code: the JumpReLU block functions
(:mod:`crosslens.kernels.jumprelu_ops`) and the reconstruction losses
(:func:`crosslens.crosscoders.base.reconstruction_errors`). Op by op each pass reads and
writes the whole tensor; compiled, a chain is one read of its inputs and one write of its
outputs each way. Each function is its own eager twin: compiled or not, it computes the same
values, to the order of its float sums.

Whether they compile is the run's plan's choice
(:attr:`~crosslens.kernels.plan.KernelPlan.compile`: by default on CUDA where Triton
is there, Inductor's CUDA code being Triton, and nowhere else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crosslens.core.compiling import compile_function

_COMPILED: dict[tuple[Callable[..., Any], bool | None], Callable[..., Any]] = {}
"""Each function's compiled form, made once a process (a cache, not a setting)."""


def compiled(function: Callable[..., Any], *, dynamic: bool | None = None) -> Callable[..., Any]:
    """``function`` under ``torch.compile``, compiled once per process for each ``dynamic``
    (False: one shape; None: automatic dynamic shapes, for calls whose sizes change). A function
    compiles for its first shape, and once more for any shape at its second, so a run compiles
    each about twice per dtype."""
    key = (function, dynamic)
    if key not in _COMPILED:
        _COMPILED[key] = compile_function(function, dynamic=dynamic)
    return _COMPILED[key]
