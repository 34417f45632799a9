"""benchmarks/user_run.py: what it reads from a run's log, checked by hand, and the whole script
on the CPU (`--small`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import user_run

RUN = {
    "kernel_plan": {"jumprelu_sparse": None, "sparse_step_share": 1 / 32},
    "sae": {"architecture": "jumprelu_crosscoder"},
    "device": "cuda",
    "train_batch_size_tokens": 2048,
    "stream": {"model_dtype": "bfloat16"},
}
TOKENS = 50 * 2048


def _step(step: int, seconds: float, l0: float) -> dict:
    return {"kind": "step", "step": step, "n_tokens": step * 2048, "seconds": seconds, "l0": l0, "loss": 1.0}


# d_sae 3,200: the sparse path from an L0 of 100 (1/32 of the entries)
RECORDS = [
    {"kind": "start", "step": 0, "total_steps": 250, "d_sae": 3200},
    _step(50, 10.0, 800),
    _step(100, 14.0, 500),
    {"kind": "checkpoint", "step": 100, "seconds": 3.0},
    _step(150, 20.0, 90),
    _step(200, 22.5, 80),
    _step(250, 25.0, 100),
    {"kind": "checkpoint", "step": 250, "seconds": 4.0},
    {"kind": "final", "seconds": 2.0},
    {"kind": "evaluation", "seconds": 30.0},
]


def test_the_intervals_phases_and_where_the_time_went_by_hand():
    rows = user_run.intervals(RECORDS, RUN)
    assert [(r["step"], r["path"], r["phase"]) for r in rows] == [
        (50, "dense", "first"),
        (100, "dense", "dense"),
        (150, "sparse", "switch"),
        (200, "sparse", "sparse"),
        (250, "sparse", "sparse"),
    ]
    # the checkpoint written at step 100 is taken out of the interval after it: 20 - 14 - 3 seconds
    assert [r["seconds"] for r in rows] == [10.0, 4.0, 3.0, 2.5, 2.5]
    assert rows[0]["share"] == 0.25 and rows[-1]["share"] == 1 / 32
    phases = user_run.phase_rates(rows)
    assert {name: p["tokens_per_second"] for name, p in phases.items()} == pytest.approx(
        {"first": TOKENS / 10, "dense": TOKENS / 4, "switch": TOKENS / 3, "sparse": 2 * TOKENS / 5}
    )
    assert user_run.steady_from(rows, lambda row: row["path"] == "sparse") == 150
    assert user_run.steady_from(rows, lambda row: row["l0"] < 95) is None  # step 250's L0 is 100
    split = user_run.time_split(RECORDS, rows, wall=100.0)
    assert split == {
        "steps": 22.0,
        "checkpoints": 7.0,
        "n_checkpoints": 2,
        "final": 2.0,
        "evaluation": 30.0,
        "rest": 39.0,
    }
    # 800M tokens at 40,960 tok/s, the recipe's 20 checkpoints at 3.5 s, and 71 s of the rest
    assert user_run.run_hours(40_960, split, 800e6, 2048) == pytest.approx((800e6 / 40_960 + 20 * 3.5 + 71) / 3600)


def test_a_resume_starts_a_first_interval_of_its_own_and_the_path_follows_the_plan():
    fit = [{"kind": "start", "step": 100, "total_steps": 250, "d_sae": 3200}, _step(150, 8.0, 90), *RECORDS[5:]]
    rows = user_run.intervals([*RECORDS[:4], *fit], RUN)  # the seconds count from each fit's start
    assert [(r["step"], r["phase"], r["tokens"], r["seconds"]) for r in rows] == [
        (50, "first", TOKENS, 10.0),
        (100, "dense", TOKENS, 4.0),
        (150, "first", TOKENS, 8.0),
        (200, "sparse", TOKENS, 14.5),
        (250, "sparse", TOKENS, 2.5),
    ]
    assert user_run.step_path(0.01, RUN["kernel_plan"], "jumprelu_crosscoder", "cpu") == "dense"  # CUDA alone
    assert user_run.step_path(0.5, {"jumprelu_sparse": True}, "jumprelu_crosscoder", "cpu") == "sparse"
    assert user_run.step_path(0.01, {"jumprelu_sparse": False}, "jumprelu_crosscoder", "cuda") == "dense"
    assert user_run.step_path(0.01, RUN["kernel_plan"], "crosscoder", "cuda") == "-"


def test_the_goals_are_judged_on_each_phase_and_against_the_plan():
    phases = user_run.phase_rates(user_run.intervals(RECORDS, RUN))
    lines = user_run.verdicts(phases, {"fresh_tokens_per_second": 24_000, "tokens_per_second": 36_000})
    assert lines == [
        "goal, dense: 25,600 tok/s against 28,000 (NOT met)",
        "goal, sparse: 40,960 tok/s against 37,000 (met)",
        "goal, plan --stream within 15% (dense): measured/predicted 1.07 (met)",
        "goal, plan --stream within 15% (sparse): measured/predicted 1.14 (met)",
    ]


def test_the_script_runs_the_command_and_reads_its_log_on_the_cpu(tmp_path, capsys):
    assert user_run.main(["--small", "--work", str(tmp_path), "--json", str(tmp_path / "figures.json")]) == 0
    out = capsys.readouterr().out
    assert "$ crosslens train --recipe ge2025-pythia-160m --stream --suite" in out and "the command exited 0" in out
    figures = json.loads((tmp_path / "figures.json").read_text())
    # 4,096 tokens seen once at batch 32: 128 steps, logged every 8, a checkpoint every 32
    assert [r["step"] for r in figures["intervals"]] == list(range(8, 129, 8))
    assert sum(p["tokens"] for p in figures["phases"].values()) == 4096
    assert set(figures["phases"]) == {"first", "dense"} and figures["sparse_from"] is None  # no sparse path on a CPU
    assert figures["seconds"]["n_checkpoints"] == 4 and figures["seconds"]["evaluation"] > 0
    assert "sparse path: not reached; the open share at most 0.03125 (where a CUDA run takes it) never" in out
    assert "goal" not in out  # the goals are for a GPU
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["kind"] == "evaluation"
    # --read reports a finished run's log without running anything, the same intervals
    assert user_run.main(["--read", str(tmp_path / "run"), "--json", str(tmp_path / "read.json")]) == 0
    read = json.loads((tmp_path / "read.json").read_text())
    assert read["intervals"] == figures["intervals"] and read["seconds"]["rest"] == 0.0
    assert "$ crosslens" not in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures")
def test_without_cuda_the_script_says_so_in_one_line(capsys):
    assert user_run.main([]) == 0
    assert (
        capsys.readouterr().out
        == "benchmarks/user_run.py: no CUDA device here, nothing measured (--small runs its logic on the CPU)\n"
    )
    with pytest.raises(SystemExit) as refused:
        user_run.parse_args(["--written"])  # the suite's folder is needed
    assert refused.value.code == 2
    assert "--written names the suite's folder: add --suite-dir DIR" in capsys.readouterr().err
