"""The Triton kernels' cpu cases, run under the interpreter (:mod:`interpreted`): the kernels
and the steps of ``test_gpu_step.py`` and the kernels of ``test_sparse_step.py`` in one process
(each process pays SAELens's import), the sparse steps' whole runs in another (minutes: slow)."""

from __future__ import annotations

import pytest
from interpreted import LAUNCHES, run_under_the_interpreter

KERNELS = "gather or window_dots or entry_masks"
"""The tests of ``test_sparse_step.py`` that run a kernel alone."""


@LAUNCHES
def test_the_kernels_and_the_gpu_steps_under_the_interpreter():
    run_under_the_interpreter(
        ["test_gpu_step.py", "test_sparse_step.py"], f"triton and cpu and (test_gpu_step.py or {KERNELS})"
    )


@LAUNCHES
@pytest.mark.slow
def test_the_sparse_steps_under_the_interpreter():
    run_under_the_interpreter(["test_sparse_step.py"], f"triton and cpu and not ({KERNELS})")
