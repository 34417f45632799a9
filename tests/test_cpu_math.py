"""torch's CPU math is exact from its first call in a process that imported crosslens.

Without :mod:`crosslens.core.cpu_math`, the first ``sqrt`` of a few thousand elements in a
fresh process was a few thousand ulps off on the second thread's half in about one process in
four (2 threads); a run's bytes then depended on which process computed them. The race shows
only in fresh processes, so each case below is a new one: 16 of them let the unfixed library
through with a chance of about 1%.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

FIRST_CALL = """
import torch
import {module}
x = torch.rand(3172, generator=torch.Generator().manual_seed(0)) + 0.5
first = x.{op}()
exact = x.double().{op}()
print(((first.double() - exact).abs() / (exact.abs() * 2.0**-23)).max().item())
"""


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the race needs two threads")
def test_the_first_math_call_after_importing_crosslens_is_exact():
    modules = ["crosslens.core.tensors", "crosslens.core.packing", "crosslens.core.seeding", "crosslens.tasks.sequences"]
    errors = []
    for case in range(16):
        module, op = modules[case % len(modules)], ("sqrt", "exp")[case % 2]
        done = subprocess.run(
            [sys.executable, "-c", FIRST_CALL.format(module=module, op=op)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        errors.append((module, op, float(done.stdout.split()[-1])))
    assert all(ulps <= 1 for _, _, ulps in errors), [e for e in errors if e[2] > 1]
