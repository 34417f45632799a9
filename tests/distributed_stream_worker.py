"""A worker for the streaming test: each rank keeps only its snapshots' models resident,
streams their activations (no store on disk) and trains its block of the crosscoder.

    torchrun --nproc_per_node=N tests/distributed_stream_worker.py SUITE_DIR OUT_DIR SNAPSHOT_PARALLEL
    python tests/forked_ranks.py N tests/distributed_stream_worker.py SUITE_DIR OUT_DIR SNAPSHOT_PARALLEL
"""

from __future__ import annotations

import sys

import torch

from crosslens.distributed import init_mesh, shutdown
from crosslens.training.trainer import CrosscoderTrainer


def main(argv: list[str]) -> int:
    suite_dir, out_dir, snapshot_parallel = argv
    from test_distributed import stream_setup

    torch.set_num_threads(1)
    suite, tokens = stream_setup(suite_dir)
    layout, collectives, _ = init_mesh(len(suite), snapshot_parallel=int(snapshot_parallel))
    try:
        from test_distributed import stream_provider, stream_trainer_parts

        provider = stream_provider(
            suite, tokens, snapshots=layout.snapshots, data_rank=layout.data_rank, data_size=layout.data_size
        )
        sae, cfg = stream_trainer_parts(provider, out_dir)
        trainer = CrosscoderTrainer(sae, cfg, mesh=(layout, collectives))
        trainer.fit(provider.batches)
        provider.close()
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
