"""How far a synthetic "trained" JumpReLU crosscoder's sparsity moves under Adam, per learning rate.

``benchmarks/stream_gpu.py`` and ``benchmarks/gpu.py`` time the step at a trained sparsity by
bisecting the threshold on one batch until L0 is ``--l0``; Adam's moments are fresh. This script
takes that state on the activations ``stream_gpu.py`` streams (random-init Pythia-160M-shaped
snapshots at ``blocks.6.hook_resid_post``, through :class:`ResidentSnapshotProvider`) and on
Gaussian ones (``gpu.py``'s batch), steps it at each ``--lr``, and prints per step the L0 on the
step's batch and the open and window shares on a batch no step trains on, the two numbers
that decide whether the step runs from the active pairs
(:func:`~crosslens.kernels.jumprelu_pairs.sparse_step_pays`).

The harvest is the slow part on a CPU (about 8 min for 11 batches of 512 tokens at 32 snapshots);
it is kept in ``--out`` and reused.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/held_sparsity.py --out /tmp/held-sparsity   # ~15 min, 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/held_sparsity.py --out /tmp/hs --small      # seconds: the logic only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu import batch_entries, make_trainer, set_sparsity
from stream_gpu import PYTHIA_160M, SMALL_MODEL, write_suite, written_suite

from crosslens.activations.streaming import ResidentSnapshotProvider
from crosslens.kernels.jumprelu_pairs import sparse_step_pays

SMALL = {
    "S": 2,
    "d_sae": 64,
    "batch": 32,
    "batches": 4,
    "seq_len": 16,
    "steps": 2,
    "l0": 4.0,
    "hook": "blocks.1.hook_resid_post",
}
"""``--small``: the script's logic at a tiny shape in seconds (its numbers mean nothing)."""


def streamed_batches(out: Path, a: argparse.Namespace) -> torch.Tensor:
    """``[n, batch, S, d_in]``: full batches the provider serves from the suite, harvested once."""
    cached = out / f"batches-S{a.S}-B{a.batch}{'-small' if a.small else ''}.pt"
    if cached.is_file():
        return torch.load(cached)
    root = out / ("suite-small" if a.small else "suite")
    # the provider keeps the blocks up to the hook's
    shape = SMALL_MODEL if a.small else dict(PYTHIA_160M, num_hidden_layers=7)
    suite = (
        written_suite(root, a.S)
        if (root / f"step{a.S - 1}" / "config.json").is_file()
        else write_suite(root, shape, a.S)
    )
    n_seqs = a.batches * a.batch // a.seq_len + 1
    tokens = torch.randint(3, shape["vocab_size"], (n_seqs, a.seq_len), generator=torch.Generator().manual_seed(0))
    provider = ResidentSnapshotProvider(
        suite,
        a.hook,
        tokens,
        a.batch,
        model_dtype=torch.float32,
        device=a.device,
        model_device=a.device,
        chunk_seqs=n_seqs,
        harvest_batch_size=8,
        compile=False,
        prefetch=False,
    )
    start = time.perf_counter()
    served = [b for b, _ in zip(provider.batches(0), range(a.batches + 1)) if b.shape[0] == a.batch][: a.batches]
    provider.close()
    print(
        f"harvested {len(served)} batches of {a.batch} tokens at {a.S} snapshots in {time.perf_counter() - start:.0f} s"
    )
    batches = torch.stack(served).cpu()
    torch.save(batches, cached)
    return batches


def run(batches: torch.Tensor, label: str, lr: float, a: argparse.Namespace) -> None:
    trainer = make_trainer("jumprelu_crosscoder", a, a.device, None, lr=lr, seed=a.seed)
    first, held_out = batches[0].to(a.device), batches[-1].to(a.device)
    set_sparsity(trainer, first, a.l0)
    print(f"{label}, lr {lr:g}: L0 set to {a.l0:g} on the first batch")
    for i in range(a.steps):
        trainer.step(batches[1 + i % (len(batches) - 2)].to(a.device))
        entries, _ = batch_entries(trainer, held_out)
        n = entries.active_NF.numel()
        # as the step would decide on a GPU, where the window kernel runs
        pays = "" if sparse_step_pays(entries, trainer.plan) else "  (the step from pairs does not pay: dense kernels)"
        print(
            f"  step {i + 1:3d}  L0 {float(trainer.last_l0):7.1f}  held-out batch: open {entries.n_open / n:.2%}, "
            f"window {entries.n_window / n:.2%}{pays}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the suite and the harvested batches (reused)")
    p.add_argument("--S", type=int, default=32, help="snapshots")
    p.add_argument("--d-sae", type=int, default=6144)
    p.add_argument("--batch", type=int, default=512, help="tokens a step")
    p.add_argument("--batches", type=int, default=11, help="batches harvested (one sets the sparsity, one is held out)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--l0", type=float, default=25.0, help="the trained L0 (0.41%% open at d_sae 6144, as 100 at 24576)")
    p.add_argument("--lr", type=float, action="append", help="learning rates (repeatable; default 1e-5 and 1e-9)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="the crosscoder's initialisation and the Gaussian batches")
    p.add_argument("--small", action="store_true", help="a tiny shape, in seconds (checks the script works)")
    a = p.parse_args(argv)
    if not all(lr > 0 for lr in a.lr or []):
        p.error(f"--lr {' '.join(f'{lr:g}' for lr in a.lr)}: every learning rate must be above 0")
    a.hook = "blocks.6.hook_resid_post"
    if a.small:
        for key, value in SMALL.items():
            setattr(a, key, value)
    a.d_in = (SMALL_MODEL if a.small else PYTHIA_160M)["hidden_size"]
    a.k, a.optimizer_state, a.micro_batches = 64, "float32", 1
    a.out.mkdir(parents=True, exist_ok=True)
    streamed = streamed_batches(a.out, a)
    gaussian = torch.randn(streamed.shape, generator=torch.Generator().manual_seed(a.seed))
    for lr in a.lr or [1e-5, 1e-9]:
        run(streamed, "streamed activations", lr, a)
    run(gaussian, "Gaussian activations", (a.lr or [1e-5])[0], a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
