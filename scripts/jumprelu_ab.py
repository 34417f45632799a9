"""The JumpReLU training step now against the same step with the gated decode of an
earlier revision, both against the plain einsum reference, alternating in one process.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python scripts/jumprelu_ab.py --rev 7d8ea1a

``--rev`` names a revision whose ``crosslens/crosscoders/jumprelu_kernels.py`` takes
``(h, norms, threshold, W_dec)`` (the gated decode that read the threshold directly); its
module is loaded from ``git show`` and put in place of today's for the "old" trainer only.
Shapes are those of ``benchmarks/train.py``'s first section (a freshly initialised
crosscoder). Prints the median milliseconds per step and each ratio to the reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train import crosslens_step_fn, reference_step_fn, time_alternating  # noqa: E402

import crosslens.crosscoders.jumprelu_crosscoder as jumprelu_crosscoder  # noqa: E402


def old_kernels(rev: str):
    source = subprocess.run(
        ["git", "show", f"{rev}:crosslens/crosscoders/jumprelu_kernels.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "jumprelu_kernels_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("jumprelu_kernels_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="7d8ea1a")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    old = old_kernels(args.rev)
    S, D, F_, B = 8, 128, 8192, 512
    torch.manual_seed(0)
    x = torch.randn(B, S, D)
    new_step = crosslens_step_fn("jumprelu_crosscoder", S, D, F_, 32)
    old_step = crosslens_step_fn("jumprelu_crosscoder", S, D, F_, 32)

    def old_decode(h, W_dec, threshold, *, norm_factors_S, **kw):  # today's call, the old function
        recon, score, open_any = old.snapshot_gated_decode(
            h.contiguous(), W_dec.norm(dim=-1) * norm_factors_S, threshold, W_dec, **kw
        )
        return recon, score, open_any, None  # None: the crosscoder computes the shared code itself

    def run_old() -> None:
        today = jumprelu_crosscoder.snapshot_gated_decode
        jumprelu_crosscoder.snapshot_gated_decode = old_decode
        try:
            old_step(x)
        finally:
            jumprelu_crosscoder.snapshot_gated_decode = today

    ref = reference_step_fn(S, D, F_)
    times = time_alternating(
        {"reference": lambda: ref(x), "now": lambda: new_step(x), f"gated decode of {args.rev}": run_old},
        rounds=args.rounds,
        warmup=1,
    )
    for name, seconds in times.items():
        print(f"{name:<28}{seconds * 1e3:8.1f} ms/step   ratio {times['reference'] / seconds:5.2f}")


if __name__ == "__main__":
    main()
