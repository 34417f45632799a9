"""Feature dashboards: every feature's statistics computed in one pass over the tokens, against a
loop over the features that makes a pass over the same tokens for each, measured in the same run
on the same machine.

1. ``compute_dashboards`` on a finished run (default: the pico demo's,
   ``$CROSSLENS_HOME/demo/crosscoder`` and its store ``acts-train``), into a scratch copy of the
   run folder: the whole command's time, its pass over the tokens alone (every feature at every
   snapshot and for the crosscoder's own code: counts, sums, maxima, histograms, top-k contexts and
   the seeded sample behind the quantile contexts, with every window token's activation), the
   database's size against its prediction, and its completeness (every feature x snapshot row).
2. The per-feature loop: for a seeded sample of features, one feature at a time, the same batches
   read from the same store, that feature's column of every reading (one matrix-vector product per
   reading, where the architecture allows; TopK needs every feature's pre-activation), and the same
   statistics through the same code (``update_reading`` on one column). Its time per feature times
   d_sae is the loop's time: extrapolated from the sample, and printed as such. Then the same loop
   with the batches read once and held in memory, which only a store that fits in memory allows.
   Goal: the one pass >= 20x faster than the per-feature loop over the same tokens.
3. The predicted database size at Ge et al.'s shape (24,576 features x 32 snapshots) with the
   default budget. Goal: under 5 GB.

Both sides run on ``--threads`` torch threads (default 1: on a shared CPU, other processes make
multi-threaded small operations wait for each other).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dashboards.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dashboards.py --run RUN --store STORE --sample 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from crosslens.core.paths import (
    EMERGENCE_NAME,
    EMERGENCE_TENSORS_NAME,
    FINAL_DIRNAME,
    QUALITY_NAME,
    RUN_CONFIG_NAME,
    RUN_SEAL_NAME,
    TRAINED_ROWS_NAME,
    crosslens_home,
)
from crosslens.dashboards import DashboardsConfig, compute_dashboards, ge_prediction, open_database
from crosslens.dashboards import compute as compute_module
from crosslens.dashboards.accumulate import PassState, apply_updates, token_keys, update_reading
from crosslens.dashboards.config import format_size, predict_database_bytes, resolve_budget
from crosslens.dashboards.readings import Readings

RUN_FILES = (
    RUN_CONFIG_NAME,
    RUN_SEAL_NAME,
    QUALITY_NAME,
    TRAINED_ROWS_NAME,
    FINAL_DIRNAME,
    EMERGENCE_NAME,  # the emergence check, so the database gets its tables as `crosslens dashboards` does
    EMERGENCE_TENSORS_NAME,
)


def scratch_run(run: Path, into: Path) -> Path:
    """The run's sealed files (not its checkpoints) in a folder of their own."""
    out = into / run.name
    out.mkdir(parents=True)
    for name in RUN_FILES:
        if (run / name).is_dir():
            shutil.copytree(run / name, out / name)
        elif (run / name).is_file():
            shutil.copy2(run / name, out / name)
    return out


@contextmanager
def timed_pass(seconds: list[float]):
    """Time ``compute_dashboards``'s pass over the tokens (its ``run_pass``) while inside."""
    real = compute_module.run_pass

    def run_pass(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    compute_module.run_pass = run_pass
    try:
        yield
    finally:
        compute_module.run_pass = real


def column_code(readings: Readings, acts_NSD: torch.Tensor, j: int, f: int) -> torch.Tensor:
    """Feature ``f``'s code ``[N, 1]`` at reading ``j``, computed for that feature alone: one
    matrix-vector product and its gate (a TopK architecture's code needs every feature's)."""
    cc = readings.crosscoder
    if j == 0:
        x_NSD = acts_NSD * readings.factors_S[:, None]
        if readings._jump is None:
            return cc.encode(x_NSD)[:, f : f + 1]
        if cc.cfg.apply_b_dec_to_input:
            x_NSD = x_NSD - cc.b_dec
        h_N1 = x_NSD.reshape(len(x_NSD), -1) @ cc.W_enc[:, :, f : f + 1].reshape(-1, 1) + cc.b_enc[f]
        n_max, n_min, t = (v[f] for v in readings._jump)
        return h_N1.masked_fill_(torch.where(h_N1 >= 0, h_N1 * n_max, h_N1 * n_min) <= t, 0.0)
    gate = readings.gates[j - 1]
    if gate is None:
        return next(code for k, code in readings.codes(acts_NSD) if k == j)[:, f : f + 1]
    W_enc_DF, b_enc_F, b_dec_D, threshold_F = gate
    x_ND = acts_NSD[:, j - 1] - b_dec_D if b_dec_D is not None else acts_NSD[:, j - 1]
    h_N1 = torch.addmm(b_enc_F[f : f + 1], x_ND, W_enc_DF[:, f : f + 1])
    return h_N1.masked_fill_(h_N1 <= threshold_F[f], 0.0)


@torch.inference_mode()
def feature_loop(
    source, readings: Readings, plan, budget, edges: torch.Tensor, features: list[int], held: list | None
) -> float:
    """Seconds per feature of the per-feature loop over the plan's batches (``held``: read once)."""
    start = time.perf_counter()
    for f in features:
        state = PassState.empty(
            readings.n_readings, 1, budget.top_k, budget.reservoir, budget.window, budget.n_bins, "cpu"
        )
        state = replace(state, edges_B1=edges)
        for index, (a, b) in enumerate(plan):
            batch = held[index] if held is not None else source.read(a, b, torch.device("cpu"))
            updates = [
                update_reading(
                    state,
                    j,
                    column_code(readings, batch.acts_NSD, j, f),
                    batch,
                    budget.window,
                    token_keys(batch.row_ids_N, j, 0),
                )
                for j in range(readings.n_readings)
            ]
            state = apply_updates(state, updates, int(batch.row_ids_N.numel()))
    return (time.perf_counter() - start) / len(features)


def check_columns(source, readings: Readings, plan) -> None:
    """The loop's column codes equal the one pass's codes (on the first batch, a few features)."""
    batch = source.read(*plan[0], torch.device("cpu"))
    with torch.inference_mode():
        for j, code_NF in readings.codes(batch.acts_NSD):
            for f in (0, code_NF.shape[1] // 2, code_NF.shape[1] - 1):
                torch.testing.assert_close(
                    column_code(readings, batch.acts_NSD, j, f), code_NF[:, f : f + 1], rtol=1e-4, atol=1e-5
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", type=Path, default=crosslens_home() / "demo" / "crosscoder", help="a finished run folder"
    )
    parser.add_argument("--store", type=Path, default=None, help="its store (default: the one its run.json names)")
    parser.add_argument("--sample", type=int, default=16, help="features timed in the per-feature loop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = args.store or Path(json.loads((args.run / "run.json").read_text())["store_path"])
    config = DashboardsConfig()
    print(f"run {args.run}, store {store}; {args.threads} torch thread(s); load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as scratch:
        run = scratch_run(args.run, Path(scratch))
        pass_seconds: list[float] = []
        start = time.perf_counter()
        with timed_pass(pass_seconds):
            database = compute_dashboards(run, store=store, config=config, device="cpu", progress=False)
        total = time.perf_counter() - start
        db = open_database(run)
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        F, S = meta["crosscoder"]["d_sae"], meta["crosscoder"]["n_snapshots"]
        pairs = db.execute("SELECT count(DISTINCT feature * 1000 + snapshot) FROM feature_snapshots").fetchone()[0]
        n_features = db.execute("SELECT count(*) FROM features").fetchone()[0]
        n_contexts = db.execute("SELECT count(*) FROM contexts").fetchone()[0]
        size = database.stat().st_size
        budget = resolve_budget(config, F, S, vocab_size=db.execute("SELECT count(*) FROM vocabulary").fetchone()[0])
        predicted = predict_database_bytes(
            F, S, budget, vocab_size=db.execute("SELECT count(*) FROM vocabulary").fetchone()[0]
        )
        print(
            f"\n1. one pass: {F:,} features x {S} snapshots (+ the crosscoder's own code) over {meta['n_tokens']:,} tokens"
        )
        print(f"   pass over the tokens    {pass_seconds[0]:8.2f} s")
        print(
            f"   whole command           {total:8.2f} s   (logit effects, evolution analysis, database writing included)"
        )
        print(
            f"   database                {format_size(size)}   (predicted at most {format_size(predicted)}; {n_contexts:,} contexts)"
        )
        complete = n_features == F and pairs == F * S
        print(
            f"   complete                {'yes' if complete else 'NO'}: {n_features:,} features, {pairs:,} feature x snapshot rows of {F * S:,}"
        )
        # the per-feature loop, through the library's own pieces
        from crosslens.activations.store import ActivationStore
        from crosslens.crosscoders.saved import load_crosscoder_folder
        from crosslens.dashboards.sources import StoreTokens

        edges = torch.tensor(meta["histogram_edges"], dtype=torch.float64)
        cc = load_crosscoder_folder(run / "final").eval()
        readings = Readings(cc)
        source = StoreTokens(ActivationStore.open(store, verify="none"), meta["crosscoder"]["hook_name"], None)
        plan, _ = source.plan(meta["n_tokens"], config.batch_size)
        check_columns(source, readings, plan)
        features = sorted(np.random.default_rng(0).choice(F, size=min(args.sample, F), replace=False).tolist())
        reread = feature_loop(source, readings, plan, budget, edges, features, None)
        held = [source.read(a, b, torch.device("cpu")) for a, b in plan]
        in_memory = feature_loop(source, readings, plan, budget, edges, features, held)
        print(f"\n2. per-feature loop: {len(features)} features timed, extrapolated to all {F:,}")
        print(
            f"   store read per feature  {reread:8.3f} s/feature -> {reread * F:9.1f} s   ratio {reread * F / pass_seconds[0]:6.1f}x   (goal >= 20x)"
        )
        print(
            f"   batches held in memory  {in_memory:8.3f} s/feature -> {in_memory * F:9.1f} s   ratio {in_memory * F / pass_seconds[0]:6.1f}x"
        )
    print(f"   (load average {os.getloadavg()[0]:.1f} at the end: the two sides ran one after the other)")
    budget, predicted = ge_prediction()
    print(
        f"\n3. Ge et al.'s shape (24,576 features x 32 snapshots), default budget: top {budget.top_k}, "
        f"{budget.n_quantile} quantile contexts of +-{budget.window} tokens, {budget.n_logits} logits"
    )
    print(f"   predicted database      at most {format_size(predicted)}   (goal < 5 GB)")


if __name__ == "__main__":
    main()
