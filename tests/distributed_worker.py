"""A worker for the distributed tests: trains every architecture on a mesh.

    torchrun --nproc_per_node=N tests/distributed_worker.py --out DIR --snapshot-parallel P
        [--runs NAME ...] [--steps K] [--micro-batches M] [--fail-rank R]
    python tests/forked_ranks.py N tests/distributed_worker.py --out DIR ...

Each run (:data:`RUNS`) trains its architectures on the same seeded global batches as the
single-process reference in ``test_distributed.py`` (which imports the helpers below) and
writes ``DIR/NAME/<arch>/final`` and its checkpoints. The runs of one launch share its mesh,
one after another: a launch costs its start (torch and SAELens imported), the larger part of a
small run's time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from crosslens.distributed import init_mesh, shard_batches, shutdown
from crosslens.kernels.plan import KernelPlan
from crosslens.training import CrosscoderTrainer, latest_checkpoint
from crosslens.training.config import CrosscoderTrainerConfig
from crosslens.training.runner import build_training_crosscoder

ARCHS = ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder")
S, D, F, B = 5, 8, 32, 16  # five snapshots: uneven blocks over two snapshot ranks


class Interrupted(Exception):
    """Raised by the batch stream to stop a run after a checkpoint, as a kill would."""


PAIRS_ARCHS = ("jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder")
"""The architectures with a step from the active pairs (``--pairs-path``)."""


def make_crosscoder(arch: str):
    torch.manual_seed(1234)
    return build_training_crosscoder(
        arch, d_in=D, n_snapshots=S, d_sae=F, k=4, sparsity_coefficient=0.5, sparsity_warm_up_steps=2
    )


def take_the_pairs_path(device: str) -> KernelPlan:
    """The plan of the sparse steps as they run on CUDA (TopK's decode from its pairs, whose node
    differentiates the norms; the JumpReLU step from its pairs), with the eager sums. TopK
    decodes from its pairs here although k / d_sae (1/8) is above the default's density."""
    return KernelPlan.resolve(
        device, backend="eager", jumprelu_sparse=True, topk_sparse_decode=True, topk_pairs_kernels=True
    )


def take_the_split_path(device: str) -> KernelPlan:
    """A plan whose JumpReLU step runs split at every pass: the step from all the pairs never
    pays, the split step always does."""
    return KernelPlan.resolve(device, jumprelu_split=True, sparse_step_share=0.0, split_rest_share=1.0)


def global_batches(start: int = 0):
    """Seeded global batches; batch i is the same whoever asks and from wherever."""
    step = start
    while True:
        gen = torch.Generator().manual_seed(10_000 + step)
        scales_S = torch.linspace(0.5, 2.0, S)[None, :, None]
        yield torch.randn(B, S, D, generator=gen) * scales_S
        step += 1


def trainer_config(out: Path, steps: int, device: str = "cpu", micro_batches: int = 1) -> CrosscoderTrainerConfig:
    return CrosscoderTrainerConfig(
        micro_batches=micro_batches,
        device=device,
        total_steps=steps,
        lr=1e-3,
        lr_decay_steps=2,
        checkpoint_dir=str(out),
        checkpoint_every=3,
        dead_feature_window_tokens=2 * B,  # features go dead within the run: aux-k is exercised
        seed=0,
    )


def interrupting(batches, stop_after: int | None, start: int):
    for i, batch in enumerate(batches, start=start):
        if stop_after is not None and i >= stop_after:
            raise Interrupted
        yield batch


def dying(batches, at: int):
    for i, batch in enumerate(batches):
        if i == at:
            raise RuntimeError(f"rank died on purpose at step {at}")
        yield batch


RUNS = ("plain", "interrupted", "resumed", "split", "pairs")
"""What a launch may run: a plain run; one stopped at step 4 (after its step-3
checkpoint); one resumed from the checkpoints the test put in ``DIR/resumed``; JumpReLU alone with
its step split at every pass; the sparse architectures through their CUDA path, with the eager sums."""


def train_run(name: str, args: argparse.Namespace, mesh, device) -> None:
    """One run of :data:`RUNS` on this rank (of ``mesh = (layout, collectives)``), every architecture it trains."""
    layout, plan, archs = mesh[0], None, ARCHS
    if name == "pairs":
        plan, archs = take_the_pairs_path(str(device)), PAIRS_ARCHS
    elif name == "split":
        plan, archs = take_the_split_path(str(device)), ("jumprelu_crosscoder",)
    stop_after = 4 if name == "interrupted" else None
    for arch in archs:
        out = args.out / name / arch
        cfg = trainer_config(out, args.steps, str(device), args.micro_batches)
        if name == "resumed":
            trainer = CrosscoderTrainer.from_checkpoint(latest_checkpoint(out), cfg, mesh=mesh, plan=plan)
        else:
            trainer = CrosscoderTrainer(make_crosscoder(arch), cfg, mesh=mesh, plan=plan)

        def batches(start: int):
            stream = interrupting(global_batches(start), stop_after, start)
            if args.fail_rank == layout.rank:
                stream = dying(stream, at=2)
            return shard_batches(stream, layout)

        try:
            trainer.fit(batches, resume_from=None)
        except Interrupted:
            pass
        if name == "split":
            # one write a line: the ranks share the launcher's stdout, and print's two writes (text,
            # then newline) of two ranks can interleave
            sys.stdout.write(f"rank {layout.rank}: {trainer.sae.pass_paths['split']} split passes\n")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--snapshot-parallel", type=int, default=1)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=["plain"], help="the runs of this launch")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cuda runs the mesh on NCCL, one GPU per process")
    parser.add_argument("--fail-rank", type=int, default=None, help="this rank dies at step 2 of the first run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layout, collectives, device = init_mesh(S, snapshot_parallel=args.snapshot_parallel, device=args.device)
    try:
        for name in args.runs:
            train_run(name, args, (layout, collectives), device)
    except BaseException:
        shutdown(wait=False)  # as `crosslens train` leaves: torchrun then stops the others at once
        raise
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
