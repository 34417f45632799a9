"""Nested-dictionary (Matryoshka) reconstruction on the planted generators: does it stop absorption?

A research variant, not an architecture of crosslens. Each crosscoder trains as
:func:`crosslens.training.planted.train_planted` builds it, except for its reconstruction
term: for every prefix length ``m`` given, the first ``m`` latents alone decode the input, and
the term is the mean of ``sum_s ||x_hat_s - x_s||^2`` over those prefixes and the full code;
the sparsity terms are unchanged. Prints the same columns as ``planted_generators.py``.

    PYTHONPATH=. python scripts/planted_matryoshka.py --prefixes 48 --jobs 2
    PYTHONPATH=. python scripts/planted_matryoshka.py --prefixes 16 32 64 --jobs 2

The TopK crosscoder trains with its dense decode here (a plan with ``topk_sparse_decode=False``,
the same sums):
its sparse decode builds the code without a gradient, and a prefix's decode needs one.
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

from crosslens.kernels.plan import KernelPlan


def nested_reconstruction(crosscoder, prefixes: tuple[int, ...]) -> None:
    """An ``init`` for ``train_planted``: this crosscoder's training pass gets the nested term."""
    S, D = crosscoder.cfg.n_snapshots, crosscoder.cfg.d_in

    def nested(out) -> None:
        f_NF = out.feature_acts.reshape(-1, crosscoder.cfg.d_sae)
        x_NX = out.sae_in.reshape(-1, S * D)
        terms = [out.losses["mse_loss"]]
        for m in prefixes:
            recon_NX = torch.addmm(crosscoder.b_dec.reshape(S * D), f_NF[:, :m], crosscoder.W_dec[:m].reshape(m, S * D))
            terms.append((recon_NX - x_NX).pow(2).sum(-1).mean())
        out.losses["mse_loss"] = torch.stack(terms).mean()

    edit_losses(crosscoder, nested)


DENSE_TOPK = KernelPlan.resolve("cpu", topk_sparse_decode=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", nargs="+", type=int, required=True, help="prefix lengths, each below d_sae (128)")
    parser.add_argument("--generator", nargs="+", default=["correlated"])
    parser.add_argument("--arch", nargs="+", default=["crosscoder", "topk_crosscoder"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    args = parser.parse_args(argv)
    init = functools.partial(nested_reconstruction, prefixes=tuple(args.prefixes))
    grid = [
        (g, a, s, None, {"init": init, **({"plan": DENSE_TOPK} if a == "topk_crosscoder" else {})}, {})
        for g in args.generator
        for a in args.arch
        for s in args.seeds
    ]
    table(run_grid(run_one, grid, args.jobs))


if __name__ == "__main__":
    main()
