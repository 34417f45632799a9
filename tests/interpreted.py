"""Triton kernels tested on a machine without CUDA: their tests run in a pytest process with
``TRITON_INTERPRET=1``, which must be set before triton is first imported (sae_lens imports
it), so a test in the main process launches that process and asserts on its outcome.

A kernel's test takes the ``device`` parameter; its ``cpu`` case runs only in the
interpreter's process (:func:`skip_outside_the_interpreter`), its ``cuda`` case on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def skip_outside_the_interpreter(device: str) -> None:
    """Skip a Triton kernel's test where it cannot run: without triton, or on a CPU outside
    the interpreter's process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton): the eager kernels are what runs here")
    if device == "cpu" and not INTERPRETED:
        pytest.skip("run by tests/test_triton_interpreted.py, in a process with TRITON_INTERPRET=1")


LAUNCHES = pytest.mark.skipif(
    not HAS_TRITON or INTERPRETED or torch.cuda.is_available(),
    reason="launched only from a main process on a machine with triton and no CUDA (where the cuda "
    "cases test the compiled kernels directly)",
)
"""The mark of a test that launches the interpreter's process."""


def run_under_the_interpreter(test_files: list[str], selection: str) -> None:
    """Run the tests of ``test_files`` (names in ``tests/``) that ``-k selection`` picks in one
    process with ``TRITON_INTERPRET=1``; every one must pass, none be skipped."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow",
        *(str(ROOT / "tests" / name) for name in test_files),
        "-k",
        selection,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
