"""A decoder-orthogonality penalty on the planted generators: does it stop absorption?

A research variant, not an architecture of crosslens. Each crosscoder trains as
:func:`crosslens.training.planted.train_planted` builds it, plus one loss term: with ``u_i``
latent i's decoder (its snapshots' rows concatenated) scaled to unit norm,
``gamma * mean_i max_{j != i} max(0, u_i . u_j)^2``. A latent that writes its feature and part
of a co-firing partner sits at a high cosine to the partner's own latent, so the term charges
exactly the absorbed code (the orthogonal-SAE remedy of Korznikov et al. 2025, here over the
whole dictionary, which a 128-latent planted run can afford). Prints the same columns as
``planted_generators.py``.

    PYTHONPATH=. python scripts/planted_orthogonal.py --gamma 1 --jobs 2
    PYTHONPATH=. python scripts/planted_orthogonal.py --gamma 10 --jobs 2
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_generators import edit_losses, run_grid, run_one, table


def orthogonality_penalty(crosscoder, gamma: float) -> None:
    """An ``init`` for ``train_planted``: this crosscoder's training pass gets the penalty."""
    F = crosscoder.cfg.d_sae

    def penalty(out) -> None:
        u_FX = torch.nn.functional.normalize(crosscoder.W_dec.reshape(F, -1), dim=-1)
        # The diagonal moved to -1 so that a latent's cosine with itself never is its maximum.
        cos_FF = u_FX @ u_FX.T - 2 * torch.eye(F, dtype=u_FX.dtype)
        out.losses["orthogonality_loss"] = gamma * cos_FF.max(dim=-1).values.clamp(min=0).pow(2).mean()

    edit_losses(crosscoder, penalty)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gamma", type=float, required=True, help="weight of the penalty")
    parser.add_argument("--generator", nargs="+", default=["correlated"])
    parser.add_argument("--arch", nargs="+", default=["crosscoder", "topk_crosscoder"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    args = parser.parse_args(argv)
    init = functools.partial(orthogonality_penalty, gamma=args.gamma)
    grid = [(g, a, s, None, {"init": init}, {}) for g in args.generator for a in args.arch for s in args.seeds]
    table(run_grid(run_one, grid, args.jobs))


if __name__ == "__main__":
    main()
