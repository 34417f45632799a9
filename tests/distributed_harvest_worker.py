"""A worker for the parallel-harvest tests: every rank runs the same ``harvest_activations``
call, and the ranks write one store together; with several folders, one store after another
(a new one, or the resume of one a job left partial).

    torchrun --nproc_per_node=N tests/distributed_harvest_worker.py SUITE_DIR OUT_DIR [OUT_DIR ...]
    python tests/forked_ranks.py N tests/distributed_harvest_worker.py SUITE_DIR OUT_DIR [OUT_DIR ...]
"""

from __future__ import annotations

import sys

import torch
from test_activations import HOOKS, N_SEQS, SEQ_LEN, SHARD_TOKENS, _open_suite, _texts

from crosslens.activations import harvest_activations, tokenize_texts
from crosslens.distributed import shutdown


def main(argv: list[str]) -> int:
    suite_dir, *out_dirs = argv
    torch.set_num_threads(1)
    suite = _open_suite(suite_dir)
    tokens = tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)
    try:
        for out_dir in out_dirs:
            harvest_activations(suite, HOOKS, tokens, out_dir, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
