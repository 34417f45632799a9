"""A/B: the pico harvest with and without glibc's heap trim in ``release_model``.

    CROSSLENS_HOME=... HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/trim_ab.py

Prints the harvest's wall time over 3 interleaved rounds of each.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harvest as hb  # noqa: E402

import crosslens.core.devices as devices  # noqa: E402
from crosslens.activations import harvest_activations  # noqa: E402

suite = hb.open_suite("pico")
ids = hb.token_table(suite, 32768, 64)
suite.load(0)
res = {"trim": [], "none": []}
orig = devices._malloc_trim
for r in range(3):
    for mode in ("trim", "none"):
        devices._malloc_trim = orig if mode == "trim" else (lambda: None)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            harvest_activations(suite, "blocks.0.hook_resid_post", ids, Path(tmp) / "s", batch_size=32, overwrite=True, progress=False)
            res[mode].append(time.perf_counter() - t)
print({k: [round(x, 2) for x in v] for k, v in res.items()})
