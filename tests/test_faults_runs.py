"""Run folders have one writer and one run: faults a user hits by reusing an --out.

Each test sets up the fault for real (a process holding the folder's lock, a finished run
trained over, a new run killed beside an old final/, a resume with other settings, a
SIGINT or SIGTERM between two checkpoints, a folder whose seal is gone or does not match)
and checks the refusal (its message names the file or the flag to pass) or that the work
kept resumes to the uninterrupted run's bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from trust_fixtures import copy_tree, harvest, run_config, tree_bytes, write_suite

import crosslens
from crosslens.cli import main
from crosslens.core.paths import QUALITY_NAME, RUN_CONFIG_NAME, RUN_LOCK_NAME, RUN_SEAL_NAME, TRAIN_LOG_NAME
from crosslens.pretrained.local_hub import LocalHubApi
from crosslens.pretrained.push import push_to_hub
from crosslens.training.interrupts import TrainingInterrupted
from crosslens.training.records import RECORD_NAME, record_problem
from crosslens.training.run_log import read_run_log
from crosslens.training.runfolder import (
    RunFolderInUseError,
    RunFolderLockedError,
    UnsealedRunError,
    crosscoder_folder,
    run_folder,
    run_problem,
    run_store,
)
from crosslens.training.runner import CrosscoderTrainingRunner
from crosslens.training.trainer import CrosscoderTrainer

N_STEPS, EVERY = 40, 30  # one periodic checkpoint, at step 30
READERS = {
    "crosscoder_folder": crosscoder_folder,
    "run_folder": lambda run: run_folder(run / "final"),
    "run_store": run_store,
    "push": lambda run: push_to_hub(run, "someone/cc", api=LocalHubApi(run.parent / "hub")),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    suite = write_suite(tmp_path_factory.mktemp("suite"))
    return harvest(suite, tmp_path_factory.mktemp("store")).path


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "finished"
    train(store, out, n_steps=N_STEPS, checkpoint_every=EVERY)
    return out


@pytest.fixture(scope="module")
def cli_run(store, tmp_path_factory) -> Path:
    """The run ``cli_train`` ends in, uninterrupted."""
    out = tmp_path_factory.mktemp("runs") / "cli"
    assert main(cli_train(store, out)) == 0
    return out


def train(store: Path, out: Path, *, resume: bool = False, overwrite: bool = False, **overrides):
    return CrosscoderTrainingRunner(run_config(store, out, **overrides)).run(resume=resume, overwrite=overwrite)


def final_files(run: Path) -> dict[str, bytes]:
    assert record_problem(run / "final") is None
    return tree_bytes(run / "final", skip=(RECORD_NAME,))


def cli_train(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--arch",
        "crosscoder",
        "--d-sae",
        "32",
        "--n-steps",
        str(N_STEPS),
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--sparsity",
        "0.01",
        "--checkpoint-every",
        str(EVERY),
        "--device",
        "cpu",
        *extra,
    ]


def cli_error(argv: list[str], capsys) -> str:
    """The one line a refused command prints (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1, err
    return err[0]


def interrupt_at(monkeypatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process from inside optimizer step ``step`` (as a Ctrl-C lands)."""
    real, calls = CrosscoderTrainer.step, {"n": 0}

    def step_then_signal(self, batch):
        calls["n"] += 1
        output = real(self, batch)
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return output

    monkeypatch.setattr(CrosscoderTrainer, "step", step_then_signal)


# --------------------------------------------------------------------------- one writer
def test_a_second_train_into_a_locked_folder_is_refused_and_readers_wait(store, finished_run, tmp_path, capsys):
    run = copy_tree(finished_run, tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from crosslens.core.locks import exclusive_lock\n"
            f"with exclusive_lock({str(run / RUN_LOCK_NAME)!r}):\n print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(crosslens.__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_bytes(run)
        with pytest.raises(RunFolderLockedError, match=f"process {holder.pid} .*pick another out_dir \\(`--out`\\)"):
            train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, overwrite=True)
        line = cli_error(cli_train(store, run, "--overwrite"), capsys)
        assert f"process {holder.pid}" in line and "is writing" in line
        assert tree_bytes(run) == before  # nothing removed, nothing written
        for _name, read in READERS.items():
            with pytest.raises(RunFolderLockedError, match=f"being written by process {holder.pid}"):
                read(run)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert crosscoder_folder(run) == run / "final"  # the lock died with its holder


def test_a_batch_larger_than_the_store_is_refused_before_the_run_folder_is_written(store, tmp_path, capsys):
    from crosslens.activations import ActivationStore

    n_tokens = ActivationStore.open(store).n_tokens
    line = cli_error(cli_train(store, tmp_path / "new", "--batch-size", str(n_tokens + 1)), capsys)
    assert line == (
        f"crosslens train: error: a batch of {n_tokens + 1:,} tokens (`--batch-size`) is more than "
        f"the {n_tokens:,} training tokens of the store {store}: pass a batch size of at most {n_tokens:,}, "
        "or a store of more tokens (`crosslens harvest --n-tokens`)"
    )
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- one run per folder
def test_a_new_run_in_a_finished_folder_needs_overwrite_which_removes_the_old_results(
    store, finished_run, tmp_path, capsys
):
    run = copy_tree(finished_run, tmp_path / "run")
    (run / "sections").mkdir()
    (run / "sections" / "attribution.json").write_text("{}")
    (run / "activations").mkdir()  # a recipe's store lives here too: never removed
    (run / "activations" / "keep").write_text("kept")
    before = tree_bytes(run)
    with pytest.raises(RunFolderInUseError, match=r"holds a finished run; pass .*overwrite=True \(`--overwrite`\)"):
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, d_sae=16)
    line = cli_error(cli_train(store, run), capsys)
    assert "holds a finished run; pass " in line and "overwrite=True (`--overwrite`) to train a new one" in line
    assert tree_bytes(run) == before

    train(store, run, n_steps=20, checkpoint_every=0, d_sae=16, overwrite=True)
    names = sorted(p.name for p in run.iterdir())
    # old checkpoints gone; the log is the new run's
    assert names == ["activations", "crosslens_run.json", "final", "run.json", RUN_LOCK_NAME, TRAIN_LOG_NAME]
    assert [r["kind"] for r in read_run_log(run / TRAIN_LOG_NAME)] == ["start", "final"]  # 20 steps: no log interval
    assert json.loads((run / "final" / "cfg.json").read_text())["d_sae"] == 16
    assert json.loads((run / RUN_CONFIG_NAME).read_text())["n_steps"] == 20
    assert (run / "activations" / "keep").read_text() == "kept"
    assert run_problem(run) is None


def test_a_folder_with_checkpoints_is_not_silently_started_over(store, tmp_path, capsys):
    run = tmp_path / "run"
    train(store, run, n_steps=N_STEPS, checkpoint_every=10, keep_checkpoints=0)
    for late in ("step_00000040", "step_00000020", "step_00000030", "final"):  # as a kill after step 10 leaves it
        shutil.rmtree(run / late)
    (run / RUN_SEAL_NAME).unlink()
    before = tree_bytes(run)
    line = cli_error(cli_train(store, run), capsys)
    assert line == (
        f"crosslens train: error: {run} holds a run at step 10; pass resume=True (`--resume`) to continue or "
        "overwrite=True (`--overwrite`) to start again"
    )
    assert tree_bytes(run) == before


def test_a_resume_whose_checkpoints_are_all_damaged_says_so(store, tmp_path, capsys):
    run = tmp_path / "run"
    train(store, run, n_steps=N_STEPS, checkpoint_every=10, keep_checkpoints=0)
    shutil.rmtree(run / "final")
    (run / RUN_SEAL_NAME).unlink()
    for step in (10, 20, 30, 40):  # each cut short
        weights = run / f"step_{step:08d}" / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(cli_train(store, run, "--resume"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"crosslens train: error: resume=True (`--resume`): {run} holds a run's results (step_00000010/, "
        "step_00000020/, step_00000030/, step_00000040/), but no checkpoint or finished run in it verifies; "
        "pass overwrite=True (`--overwrite`) to remove them and start again, or pick another out_dir (`--out`)"
    )


def test_a_killed_new_run_beside_an_old_final_is_refused_by_every_reader(store, finished_run, tmp_path, capsys):
    # an older crosslens started a new run here and was killed: run.json describes it, final/ the old one
    run = copy_tree(finished_run, tmp_path / "run")
    config = json.loads((run / RUN_CONFIG_NAME).read_text())
    (run / RUN_CONFIG_NAME).write_text(json.dumps({**config, "seed": 7, "n_steps": 4000}, indent=2))
    for _name, read in READERS.items():
        with pytest.raises(UnsealedRunError, match=f"{run / RUN_CONFIG_NAME} is not the file the run was sealed with"):
            read(run)
    line = cli_error(["evaluate", str(run), "--store", str(store)], capsys)
    assert str(run / RUN_CONFIG_NAME) in line and "--resume" in line and "--overwrite" in line
    line = cli_error(["analyze", "--crosscoder", str(run / "final")], capsys)
    assert str(run / RUN_CONFIG_NAME) in line

    # this crosslens removes the seal before a new run writes anything: stopped, it leaves none
    run = copy_tree(finished_run, tmp_path / "run2")
    with pytest.raises(TrainingInterrupted), pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 5, signal.SIGINT)
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, seed=7, overwrite=True)
    assert not (run / RUN_SEAL_NAME).exists() and not (run / "final").exists()
    for _name, read in READERS.items():
        with pytest.raises(UnsealedRunError, match=f"{run / RUN_SEAL_NAME} is missing: the run there did not finish"):
            read(run)


def test_a_quality_table_of_another_run_is_refused(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_train(store, run)) == 0
    capsys.readouterr()
    assert crosscoder_folder(run) == run / "final"  # the CLI seals quality.json with the run
    quality = json.loads((run / QUALITY_NAME).read_text())
    quality["rows"][0]["crosscoder"] = 0.99
    (run / QUALITY_NAME).write_text(json.dumps(quality))
    with pytest.raises(UnsealedRunError, match=f"{run / QUALITY_NAME} is not the file the run was sealed with"):
        run_folder(run / "final")


# --------------------------------------------------------------------------- resume
def test_resume_with_another_d_sae_is_refused_naming_it(store, finished_run, tmp_path, capsys):
    run = copy_tree(finished_run, tmp_path / "run")
    before = tree_bytes(run)
    with pytest.raises(ValueError, match=r"differs in sae\.d_sae: 32 in the run, 64 now"):
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, d_sae=64, resume=True)
    line = cli_error(cli_train(store, run, "--resume", "--d-sae", "64", "--seed", "3"), capsys)
    assert "--d-sae: 32 in the run, 64 now" in line and "--seed: 0 in the run, 3 now" in line  # the flags
    assert tree_bytes(run) == before  # nothing retrained over the finished run

    # the same settings: finished, nothing trained, the folder untouched
    runner = CrosscoderTrainingRunner(run_config(store, run, n_steps=N_STEPS, checkpoint_every=EVERY))
    crosscoder = runner.run(resume=True)
    assert runner.finished_before and tree_bytes(run) == before
    assert torch.equal(crosscoder.W_dec, SAE.load_from_disk(str(finished_run / "final")).W_dec)
    assert "holds this run, finished: nothing to train" in capsys.readouterr().out


def test_a_python_caller_is_told_the_keywords_that_fix_a_refused_start(store, finished_run, tmp_path, capsys):
    """A notebook rerun meets these refusals from ``run()``, so each names the keyword beside the
    flag, and the keywords do what the message says."""
    run = copy_tree(finished_run, tmp_path / "run")
    before = tree_bytes(run)
    with pytest.raises(RunFolderInUseError) as finished:
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY)
    assert str(finished.value) == (
        f"{run} holds a finished run; pass resume=True (`--resume`) to take it as it is, overwrite=True "
        "(`--overwrite`) to train a new one in its place, or pick another out_dir (`--out`)"
    )
    with pytest.raises(ValueError) as changed:
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, d_sae=64, resume=True)
    assert str(changed.value) == (
        f"{run} holds a run with another configuration (differs in sae.d_sae: 32 in the run, 64 now); resume with "
        "the same settings, pass overwrite=True (`--overwrite`) to start again, or pick another out_dir (`--out`)."
    )
    with pytest.raises(RunFolderInUseError) as both:
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, resume=True, overwrite=True)
    assert str(both.value) == (
        "resume=True (`--resume`) continues the run in out_dir (`--out`) and overwrite=True (`--overwrite`) "
        "removes it: pass one of them"
    )
    assert tree_bytes(run) == before

    capsys.readouterr()
    same = train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, resume=True)  # resume=True: as it is
    assert torch.equal(same.W_dec, SAE.load_from_disk(str(finished_run / "final")).W_dec)
    assert tree_bytes(run) == before
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said == (
        f"{run} holds this run, finished: nothing to train; overwrite=True (`--overwrite`) instead of resume=True "
        "(`--resume`) trains it again"
    )
    wider = train(store, run, n_steps=20, checkpoint_every=0, d_sae=64, overwrite=True)  # overwrite=True: anew
    assert wider.cfg.d_sae == 64 and run_problem(run) is None
    other = train(store, tmp_path / "other", n_steps=20, checkpoint_every=0, d_sae=16)  # another out_dir
    assert other.cfg.d_sae == 16


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_the_first_checkpoint_keeps_its_steps_and_resumes_to_the_same_bytes(
    signum, store, finished_run, tmp_path, monkeypatch
):
    run, handler = tmp_path / "run", signal.getsignal(signum)
    interrupt_at(monkeypatch, 7, signum)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY)
    name = signal.Signals(signum).name
    assert str(stopped.value) == (
        f"stopped by {name} at step 7 of {N_STEPS}; checkpoint {run / 'step_00000007'} keeps it: "
        "run the same command with resume=True (`--resume`) to continue"
    )
    assert signal.getsignal(signum) == handler and record_problem(run / "step_00000007") is None
    assert not (run / "final").exists() and not (run / RUN_SEAL_NAME).exists()
    monkeypatch.undo()

    with pytest.raises(RunFolderInUseError, match=r"holds a run at step 7; pass resume=True \(`--resume`\)"):
        train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY)
    train(store, run, n_steps=N_STEPS, checkpoint_every=EVERY, resume=True)
    assert final_files(run) == final_files(finished_run)
    last = "step_00000030/sae_weights.safetensors"
    assert (run / last).read_bytes() == (finished_run / last).read_bytes()


def test_ctrl_c_from_the_cli_says_how_to_continue_and_that_is_true(store, cli_run, tmp_path, monkeypatch, capsys):
    run, straight = tmp_path / "run", cli_run
    interrupt_at(monkeypatch, 12, signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        main(cli_train(store, run))
    monkeypatch.undo()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert (
        f"crosslens train: stopped by SIGINT at step 12 of {N_STEPS}" in err
        and "with resume=True (`--resume`) to continue" in err
    )
    assert main(cli_train(store, run, "--resume")) == 0
    assert final_files(run) == final_files(straight)
    assert (run / QUALITY_NAME).read_bytes() == (straight / QUALITY_NAME).read_bytes()
    assert run_problem(run) is None
    capsys.readouterr()
    assert main(cli_train(store, run, "--resume")) == 0  # finished: reported, not retrained
    assert "holds this run, finished: nothing to train" in capsys.readouterr().out


def test_ctrl_c_of_a_run_started_over_says_to_resume_instead_and_that_is_true(
    store, cli_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    interrupt_at(monkeypatch, 12, signal.SIGINT)
    with pytest.raises(SystemExit):
        main(cli_train(store, run, "--overwrite"))  # --overwrite again would remove the checkpoint
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert (
        "run the same command with resume=True (`--resume`) instead of overwrite=True (`--overwrite`) to continue"
    ) in err, err
    assert main(cli_train(store, run, "--resume")) == 0
    assert final_files(run) == final_files(cli_run)


@pytest.mark.parametrize(
    ("at", "said"),
    [
        (1, "interrupted before its first checkpoint; run the same command with --resume to start it again"),
        (EVERY + 5, "interrupted; run the same command with --resume to continue from its last checkpoint"),
    ],
)
def test_a_ctrl_c_that_stops_at_once_names_what_resume_does(at, said, store, cli_run, tmp_path, monkeypatch, capsys):
    run, real, calls = tmp_path / "run", CrosscoderTrainer.step, {"n": 0}

    def step_then_stop(self, batch):  # a second Ctrl-C: training stops without a checkpoint of its own
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(CrosscoderTrainer, "step", step_then_stop)
    with pytest.raises(SystemExit) as stopped:
        main(cli_train(store, run))
    monkeypatch.undo()
    assert stopped.value.code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == f"crosslens train: {said}"
    assert main(cli_train(store, run, "--resume")) == 0
    assert final_files(run) == final_files(cli_run)


# --------------------------------------------------------------------------- readers
@pytest.mark.parametrize("fault", ["seal deleted", "seal edited", "final weights replaced"])
def test_push_and_evaluate_refuse_an_unsealed_folder(fault, store, finished_run, tmp_path, capsys):
    run = copy_tree(finished_run, tmp_path / "run")
    if fault == "seal deleted":
        (run / RUN_SEAL_NAME).unlink()
        named = f"{run / RUN_SEAL_NAME} is missing"
    elif fault == "seal edited":
        seal = json.loads((run / RUN_SEAL_NAME).read_text())
        seal["files"].pop("run.json")
        (run / RUN_SEAL_NAME).write_text(json.dumps(seal))
        named = f"{run / RUN_SEAL_NAME} fails its own checksum"
    else:
        (run / "final" / "sae_weights.safetensors").write_bytes(
            (run / "step_00000030" / "sae_weights.safetensors").read_bytes()
        )
        named = f"{run / 'final'}: sae_weights.safetensors"
    with pytest.raises(UnsealedRunError) as refused:
        push_to_hub(run, "someone/cc", api=LocalHubApi(tmp_path / "hub"))
    assert named in str(refused.value)
    assert not (tmp_path / "hub").exists()  # nothing uploaded
    for argv in (["evaluate", str(run), "--store", str(store)], ["push", str(run / "final"), "--repo", "someone/cc"]):
        line = cli_error(argv, capsys)
        assert named in line and "--overwrite" in line
