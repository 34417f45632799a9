"""The package's jaxtyping annotations hold at run time (``annotations_worker.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_the_array_annotations_hold_through_training_and_evaluation(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "annotations_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    archs = ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder")
    assert [line for line in done.stdout.splitlines() if line.endswith(": checked")] == [f"{a}: checked" for a in archs]
