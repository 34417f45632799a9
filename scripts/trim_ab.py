"""A/B: the pico harvest with ``release_model`` trimming glibc's heap on every release
against trimming only past ``HEAP_GROWTH_TO_TRIM``, interleaved.

    CROSSLENS_HOME=... HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/trim_ab.py

Prints each mode's harvest wall times and trim counts over 3 rounds.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harvest as hb  # noqa: E402
import torch  # noqa: E402

import crosslens.core.devices as devices  # noqa: E402
from crosslens.activations import harvest_activations  # noqa: E402

torch.set_num_threads(1)
trim, trims = devices._malloc_trim(), [0]


def counted(pad: int) -> None:
    trims[0] += 1
    trim(pad)


devices._malloc_trim = lambda: counted
suite = hb.open_suite("pico")
ids = hb.token_table(suite, 32768, 64)
suite.load(0)
res: dict[str, list[tuple[float, int]]] = {"every release": [], "past the growth": []}
policy = devices.HEAP_GROWTH_TO_TRIM
for _ in range(3):
    for mode in res:
        devices.HEAP_GROWTH_TO_TRIM = -1.0 if mode == "every release" else policy
        trims[0] = 0
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            harvest_activations(suite, "blocks.0.hook_resid_post", ids, Path(tmp) / "s", batch_size=32, overwrite=True, progress=False)
            res[mode].append((round(time.perf_counter() - t, 2), trims[0]))
print({mode: [f"{s} s, {n} trims" for s, n in runs] for mode, runs in res.items()})
