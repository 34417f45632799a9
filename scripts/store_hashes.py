"""Harvest three pico stores into fixed folders and print every file's sha256.

Run it from two checkouts under one CROSSLENS_HOME and compare the outputs: a change that
keeps the harvest's bytes prints the same lines (manifests included).

    CROSSLENS_HOME=... HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/store_hashes.py OUT_DIR > hashes.txt
"""

import hashlib
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harvest as hb
import torch

from crosslens.activations import harvest_activations

torch.set_num_threads(1)
STORES = {
    "float32": dict(hooks="blocks.0.hook_resid_post", n_tokens=32768, dtype="float32", shard_tokens=1 << 16),
    "bfloat16": dict(hooks="blocks.0.hook_resid_post", n_tokens=8192, dtype="bfloat16", shard_tokens=1 << 16),
    "two-hooks": dict(
        hooks=["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"], n_tokens=8192, dtype="float16", shard_tokens=2048
    ),
}
suite = hb.open_suite("pico")
out = Path(sys.argv[1])
for name, spec in STORES.items():
    root = out / name
    shutil.rmtree(root, ignore_errors=True)
    ids = hb.token_table(suite, spec["n_tokens"], 64)
    harvest_activations(
        suite, spec["hooks"], ids, root, dtype=spec["dtype"], shard_tokens=spec["shard_tokens"], progress=False
    )
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(name, path.relative_to(root), hashlib.sha256(path.read_bytes()).hexdigest())
