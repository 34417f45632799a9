"""Ge et al.'s run as a user runs it: ``crosslens train --recipe ge2025-pythia-160m --stream``
from a fresh crosscoder on one GPU, timed from the run's own log.

In one run, with nothing downloaded:

1. writes a local suite of 32 random-init snapshots with Pythia-160M's shape (``step0`` ...
   ``step31``, :func:`stream_gpu.write_suite`; a word-level tokenizer with a word for every
   token id) and a seeded text of random words from it, so the tokens are random over the
   whole vocabulary;
2. runs the real command in a subprocess::

       crosslens train --recipe ge2025-pythia-160m --stream --suite SUITE --steps 0,...,31 \\
           --text WORDS --n-tokens N --out RUN

   with everything else the recipe's or the CLI's defaults: N tokens seen once at batch
   2,048, context 2,048, d_sae 24,576, JumpReLU, bf16 snapshot models on CUDA, the provider's
   chunking, a checkpoint every twentieth of the steps (at least 500 apart), the held-out
   quality table and the spliced loss. Flags after ``--`` go to the command as well (they win);
3. reads ``RUN/train_log.jsonl`` and ``RUN/run.json`` and prints, per log interval (50 steps),
   the L0, the share of (token, feature) entries open at some snapshot and the path the
   JumpReLU step takes at that share (:func:`crosslens.kernels.jumprelu_pairs.sparse_step_pays`:
   the dense kernels or the split step, or the active pairs); then tokens/s per phase (the first
   interval, which holds the compiles, apart), the step at which the sparse path starts, the seconds in
   checkpoints, the final save, the evaluation and the start-up (loading the models), and the
   hours for ``--run-tokens`` (800M) at each phase's rate with the recipe's checkpoints, beside
   what ``crosslens plan --recipe ge2025-pythia-160m --stream`` predicts for this GPU.

Random-init snapshots on random tokens do not sparsify as real ones do, so the dense phase's
rate is the figure that bounds a real run, whatever its data's L0 curve.

``--timeout`` stops the command (the run's log up to then is read all the same), so one device
call can hold the whole measurement. ``--read RUN`` runs nothing and reports the log of any run
folder ``crosslens train`` wrote, on any device (the step from which a CUDA run would take the
sparse path included). Without CUDA it prints one line and exits 0; ``--small`` runs the same
logic on the CPU at a tiny shape (its numbers mean nothing; it checks the script).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/user_run.py --n-tokens 4000000 --timeout 420
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/user_run.py --small
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_gpu import PYTHIA_160M, SMALL_MODEL, write_suite, written_suite

RECIPE = "ge2025-pythia-160m"
GOALS = {"dense": 28_000, "sparse": 37_000}
"""Tokens/s end to end the run should reach while its code is dense (800M tokens in under 8 h
whatever the data) and once it runs the sparse path (800M tokens in 6 h)."""
PLAN_TOLERANCE = 0.15
"""How far the measured rate may be from ``plan --stream``'s prediction."""
SMALL_FLAGS = [
    "--hook",
    "blocks.1.hook_resid_post",
    "--d-sae",
    "64",
    "--seq-len",
    "16",
    "--batch-size",
    "32",
    "--wandb-log-frequency",
    "8",
    "--checkpoint-every",
    "32",
    "--spliced-seqs",
    "2",
    "--device",
    "cpu",
]
"""``--small``: SMALL_MODEL's hook, and a crosscoder, sequences and batches to match."""


# --------------------------------------------------------------------------- the command
def write_words(path: Path, n_words: int, vocab_size: int, seed: int = 0) -> None:
    """``n_words`` random words of the suite's tokenizer, in documents of 1,000 words."""
    ids = np.random.default_rng(seed).integers(3, vocab_size, n_words)
    words = np.char.add("w", ids.astype(str))
    with path.open("w") as f:
        for start in range(0, n_words, 1000):
            f.write(" ".join(words[start : start + 1000]) + "\n\n")


def train_command(a: argparse.Namespace, suite: Path, text: Path, run: Path) -> list[str]:
    steps = ",".join(str(s) for s in range(a.n_snapshots))
    command = [
        sys.executable,
        "-m",
        "crosslens",
        "train",
        "--recipe",
        RECIPE,
        "--stream",
        "--suite",
        str(suite),
        "--steps",
        steps,
        "--text",
        str(text),
        "--n-tokens",
        str(a.n_tokens),
        "--out",
        str(run),
    ]
    return command + (SMALL_FLAGS if a.small else []) + a.extra


def run_command(command: list[str], log: Path, timeout: float | None) -> tuple[float, int | None]:
    """Run ``command`` with its output in ``log``: ``(wall seconds, exit status)``, the status None
    where ``timeout`` stopped it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()  # a SIGTERM stops between two steps and checkpoints the step reached
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            status = None
    return time.perf_counter() - began, status


# --------------------------------------------------------------------------- reading the run's log
def step_path(share: float, plan: dict[str, Any], architecture: str, device: str) -> str:
    """The path a step takes at this open share under the run's plan (``run.json``'s
    ``kernel_plan``), as :func:`crosslens.crosscoders.jumprelu_crosscoder.snapshot_gated_decode`
    picks it: ``"sparse"`` (the active pairs) or ``"dense"`` (the dense kernels, or the split step
    where the plan has it and few entries are open at some snapshots only, which the log does not
    tell); ``"-"`` for an architecture without the two."""
    from crosslens.kernels.jumprelu_pairs import open_share_pays
    from crosslens.kernels.plan import KernelPlan

    if architecture != "jumprelu_crosscoder":
        return "-"
    kernels = KernelPlan.from_dict(plan)
    sparse = kernels.jumprelu_sparse
    if sparse is None:  # the plan leaves it to the step: on CUDA, where it pays
        sparse = device.startswith("cuda") and open_share_pays(share, 1.0, kernels)
    return "sparse" if sparse else "dense"


def intervals(records: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per log interval: its steps, tokens and seconds (without the checkpoints written
    inside it), the L0 and open share at its end, and its phase: the path its steps took where
    the shares at both ends agree, ``"switch"`` where they do not, and ``"first"`` for the first
    interval of each fit (a resume starts one), which holds the compiles."""
    plan, architecture, device = run["kernel_plan"], run["sae"]["architecture"], run["device"]
    rows, previous, checkpoint_seconds, d_sae = [], None, 0.0, None
    for record in records:
        if record["kind"] == "start":  # a fit's seconds count from its start
            previous, checkpoint_seconds, d_sae = (
                {"step": record["step"], "seconds": 0.0, "path": None},
                0.0,
                record["d_sae"],
            )
        elif record["kind"] == "checkpoint":
            checkpoint_seconds += record["seconds"]
        if record["kind"] != "step":
            continue
        share = record["l0"] / d_sae
        path = step_path(share, plan, architecture, device)
        tokens = record["n_tokens"] * (record["step"] - previous["step"]) // record["step"]
        seconds = record["seconds"] - previous["seconds"] - checkpoint_seconds
        phase = "first" if previous["path"] is None else path if path == previous["path"] else "switch"
        rows.append(
            {
                "step": record["step"],
                "l0": record["l0"],
                "share": share,
                "path": path,
                "phase": phase,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_second": tokens / max(seconds, 1e-9),
            }
        )
        previous, checkpoint_seconds = {**record, "path": path}, 0.0
    return rows


def phase_rates(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Tokens, seconds and tokens/s of each phase over its intervals."""
    phases: dict[str, dict[str, float]] = {}
    for row in rows:
        phase = phases.setdefault(row["phase"], {"intervals": 0, "tokens": 0, "seconds": 0.0})
        phase["intervals"] += 1
        phase["tokens"] += row["tokens"]
        phase["seconds"] += row["seconds"]
    for phase in phases.values():
        phase["tokens_per_second"] = phase["tokens"] / max(phase["seconds"], 1e-9)
    return phases


def steady_from(rows: list[dict[str, Any]], holds: Callable[[dict[str, Any]], bool]) -> int | None:
    """The first logged step from which ``holds`` is true of every logged step."""
    first = None
    for row in rows:
        first = (first or row["step"]) if holds(row) else None
    return first


def time_split(records: list[dict[str, Any]], rows: list[dict[str, Any]], wall: float | None) -> dict[str, float]:
    """Where the command's ``wall`` seconds went: the logged steps (``rows``), the checkpoints, the
    final save, the evaluation, and the rest: start-up (tokenizing, loading the models) and the
    steps after the last log (0 where ``wall`` is not known)."""
    checkpoints = [r["seconds"] for r in records if r["kind"] == "checkpoint"]
    split = {
        "steps": sum(r["seconds"] for r in rows),
        "checkpoints": sum(checkpoints),
        "n_checkpoints": len(checkpoints),
        "final": sum(r["seconds"] for r in records if r["kind"] == "final"),
        "evaluation": sum(r["seconds"] for r in records if r["kind"] == "evaluation"),
    }
    counted = split["steps"] + split["checkpoints"] + split["final"] + split["evaluation"]
    return {**split, "rest": 0.0 if wall is None else wall - counted}


# --------------------------------------------------------------------------- projection and goals
def run_hours(tokens_per_second: float, split: dict[str, float], run_tokens: float, batch: int) -> float:
    """Hours of a ``run_tokens`` run at ``tokens_per_second``, with the checkpoints the recipe's
    cadence writes at the measured seconds each, and this run's start-up, final save and evaluation."""
    from crosslens.training.config import checkpoint_interval

    n_steps = int(run_tokens) // batch
    n_checkpoints = n_steps // checkpoint_interval(n_steps, None)
    each = split["checkpoints"] / split["n_checkpoints"] if split["n_checkpoints"] else 0.0
    fixed = split["rest"] + split["final"] + split["evaluation"]
    return (run_tokens / tokens_per_second + n_checkpoints * each + fixed) / 3600


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_name() -> str | None:
    """crosslens's name for this CUDA device (``crosslens plan --gpu``), None where it has no figures."""
    import torch

    from crosslens.core.devices import GPUS

    name = torch.cuda.get_device_name(0).lower()
    return next((gpu for gpu in GPUS if gpu in name), None)


def plan_prediction(model_dtype: str, gpu: str) -> dict[str, Any]:
    """What ``crosslens plan --recipe ge2025-pythia-160m --stream --gpu GPU`` predicts."""
    from crosslens.training.recipes import load_recipe
    from crosslens.training.sizing import make_plan, plan_config_from_recipe, stream_prediction

    return stream_prediction(make_plan(plan_config_from_recipe(load_recipe(RECIPE), model_dtype=model_dtype)), gpu)


def verdicts(phases: dict[str, dict[str, float]], predicted: dict[str, Any] | None) -> list[str]:
    """The goals, each met or not, for the phases the run reached."""
    lines = []
    for phase, goal in GOALS.items():
        if phase in phases:
            rate = phases[phase]["tokens_per_second"]
            lines.append(f"goal, {phase}: {rate:,.0f} tok/s against {goal:,} ({'met' if rate >= goal else 'NOT met'})")
    if predicted is not None:
        for phase, key in (("dense", "fresh_tokens_per_second"), ("sparse", "tokens_per_second")):
            if phase in phases:
                ratio = phases[phase]["tokens_per_second"] / predicted[key]
                ok = abs(ratio - 1) <= PLAN_TOLERANCE
                lines.append(
                    f"goal, plan --stream within {PLAN_TOLERANCE:.0%} ({phase}): measured/predicted "
                    f"{ratio:.2f} ({'met' if ok else 'NOT met'})"
                )
    return lines


def report(
    records: list[dict[str, Any]], run: dict[str, Any], wall: float | None, a: argparse.Namespace
) -> dict[str, Any]:
    """Print what the run's log says and return it as one record; ``wall``: the command's seconds,
    None where they are not known (``--read``)."""
    rows = intervals(records, run)
    print(f"{'step':>8} {'L0':>9} {'open':>7} {'path':>6} {'phase':>6} {'tok/s':>9}")
    for row in rows:
        print(
            f"{row['step']:8d} {row['l0']:9.1f} {row['share']:7.2%} {row['path']:>6} {row['phase']:>6} "
            f"{row['tokens_per_second']:9,.0f}"
        )
    phases = phase_rates(rows)
    for phase, p in phases.items():
        print(
            f"phase {phase:6s}: {p['intervals']:3d} intervals, {p['tokens']:12,d} tokens in {p['seconds']:8.1f} s: "
            f"{p['tokens_per_second']:9,.0f} tok/s"
        )
    start = steady_from(rows, lambda row: row["path"] == "sparse")
    from crosslens.kernels.jumprelu_pairs import open_share_pays
    from crosslens.kernels.plan import KernelPlan

    kernels = KernelPlan.from_dict(run["kernel_plan"])
    share = kernels.sparse_step_share
    sparse_enough = steady_from(rows, lambda row: open_share_pays(row["share"], 1.0, kernels))
    print(
        "sparse path: " + (f"from step {start}" if start is not None else "not reached") + "; the open share at most "
        f"{share:.4g} (where a CUDA run takes it) " + (f"from step {sparse_enough}" if sparse_enough else "never")
    )
    split = time_split(records, rows, wall)
    print(
        f"seconds: steps {split['steps']:.1f}, {split['n_checkpoints']} checkpoints {split['checkpoints']:.1f}, "
        f"final save {split['final']:.1f}, evaluation {split['evaluation']:.1f}"
        + ("" if wall is None else f", start-up and the rest {split['rest']:.1f}; the command {wall:.1f}")
    )
    batch = run["train_batch_size_tokens"]
    on_gpu = run["device"].startswith("cuda") and not a.small
    gpu = gpu_name() if on_gpu and torch_cuda() else None
    predicted = plan_prediction(run["stream"]["model_dtype"], gpu) if gpu is not None else None
    hours = {
        phase: run_hours(p["tokens_per_second"], split, a.run_tokens, batch)
        for phase, p in phases.items()
        if phase in ("dense", "sparse")
    }
    for phase, h in hours.items():
        print(f"{a.run_tokens / 1e6:,.0f}M tokens at the {phase} rate: {h:.1f} h, with the recipe's checkpoints")
    if predicted is not None:
        print(
            f"plan --stream --gpu {gpu}: {predicted['fresh_tokens_per_second']:,.0f} tok/s fresh "
            f"({predicted['fresh_hours']:.1f} h), {predicted['tokens_per_second']:,.0f} tok/s trained ({predicted['hours']:.1f} h)"
        )
    elif on_gpu:
        print("plan --stream has no figures for this GPU: no prediction to compare")
    for line in verdicts(phases, predicted) if on_gpu else []:  # the goals are for a GPU
        print(line)
    return {
        "intervals": rows,
        "phases": phases,
        "sparse_from": start,
        "sparse_enough_from": sparse_enough,
        "seconds": split,
        "hours": hours,
        "gpu": gpu,
        "predicted": predicted,
        "wall": wall,
    }


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="the whole script on the CPU at a tiny shape")
    p.add_argument("--n-tokens", type=int, default=None, help="training tokens (default 4,000,000; --small 4,096)")
    p.add_argument("--run-tokens", type=float, default=800e6, help="tokens of the whole run, for the hours")
    p.add_argument("--timeout", type=float, default=None, help="stop the command after this many seconds")
    p.add_argument("--work", type=Path, default=None, help="folder for the text and the run (default: a temporary one)")
    p.add_argument("--suite-dir", type=Path, default=None, help="where to write the suite (default: inside --work)")
    p.add_argument(
        "--written",
        action="store_true",
        help="take the suite an earlier `stream_gpu.py --write-only` left in --suite-dir",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--read",
        type=Path,
        default=None,
        metavar="RUN",
        help="run nothing: read the log of a run folder that `crosslens train` wrote, on any device",
    )
    a = p.parse_args(ours)
    if a.written and a.suite_dir is None:
        p.error("--written names the suite's folder: add --suite-dir DIR")
    a.extra, a.n_snapshots = extra, 2 if a.small else 32
    a.n_tokens = a.n_tokens or (4096 if a.small else 4_000_000)
    return a


def measure(a: argparse.Namespace, work: Path) -> dict[str, Any] | None:
    shape = SMALL_MODEL if a.small else PYTHIA_160M
    suite_dir = a.suite_dir or work / "suite"
    began = time.perf_counter()
    written_suite(suite_dir, a.n_snapshots) if a.written else write_suite(suite_dir, shape, a.n_snapshots)
    text = work / "words.txt"
    write_words(text, int(a.n_tokens * 1.2) + 20_000, shape["vocab_size"])
    print(f"suite and text ready in {time.perf_counter() - began:.0f} s")
    run, log = work / "run", work / "train.out"
    command = train_command(a, suite_dir, text, run)
    print("$ crosslens " + " ".join(command[3:]), flush=True)
    wall, status = run_command(command, log, a.timeout)
    said = log.read_text().splitlines()
    print(f"the command {'stopped by --timeout' if status is None else f'exited {status}'} after {wall:.0f} s")
    if status not in (0, None) or not (run / "train_log.jsonl").is_file():
        print("\n".join(said[-20:]))
        return None
    from crosslens.training.run_log import read_run_log

    return report(read_run_log(run / "train_log.jsonl"), json.loads((run / "run.json").read_text()), wall, a)


def read(run: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The report of a run folder's log, without running anything."""
    from crosslens.training.run_log import read_run_log

    return report(read_run_log(run / "train_log.jsonl"), json.loads((run / "run.json").read_text()), None, a)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.read is not None:
        figures = read(a.read, a)
        if a.json is not None:
            a.json.write_text(json.dumps(figures, indent=1))
        return 0
    if not a.small:
        import torch

        if not torch.cuda.is_available():
            print("benchmarks/user_run.py: no CUDA device here, nothing measured (--small runs its logic on the CPU)")
            return 0
    if a.work is not None:
        a.work.mkdir(parents=True, exist_ok=True)
        figures = measure(a, a.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = measure(a, Path(tmp))
    if figures is None:
        return 1
    if a.json is not None:
        a.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
