"""The same inputs give the same crosscoder, and no input is silently wrong.

One test (or a few) per way a result could be silently wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from trust_fixtures import (
    HOOK,
    OTHER_HOOK,
    copy_tree,
    harvest,
    one_line_exit_2,
    resave_snapshot,
    run_config,
    sha256,
    token_table,
    train,
    tree_bytes,
    write_suite,
)

from crosslens.activations import ActivationStore, CorruptShardError, StoreMismatchError
from crosslens.activations import harvest as harvest_module
from crosslens.activations.store import LOCK_NAME, MANIFEST_NAME, shard_relpath
from crosslens.checkpoints import CheckpointSuite
from crosslens.cli import main
from crosslens.core.errors import (
    CorruptCheckpointError,
    DamagedManifestError,
    DuplicateSnapshotError,
    NonFiniteTrainingError,
    StoreChangedError,
    StoreLockedError,
    UncachedRevisionError,
)
from crosslens.core.locks import exclusive_lock
from crosslens.tasks.blimp import MinimalPairFormatError, load_blimp_jsonl, load_clams
from crosslens.training.runner import CrosscoderTrainingRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def store_path(suite_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    harvest(suite_root, out)
    return out


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_byte_identical_crosscoders_whatever_ran_before(store_path, tmp_path):
    torch.manual_seed(1)
    train(store_path, tmp_path / "a")
    torch.manual_seed(2)  # another process starts from another torch seed
    train(store_path, tmp_path / "b")
    weights = "final/sae_weights.safetensors"
    assert sha256(tmp_path / "a" / weights) == sha256(tmp_path / "b" / weights)
    train(store_path, tmp_path / "c", seed=1)
    assert sha256(tmp_path / "c" / weights) != sha256(tmp_path / "a" / weights)


def test_two_cli_train_processes_give_identical_safetensors(store_path, tmp_path):
    def cli(out: Path) -> subprocess.Popen:
        args = ["train", "--store", str(store_path), "--out", str(out), "--arch", "crosscoder", "--d-sae", "16"]
        args += ["--n-steps", "12", "--batch-size", "64", "--checkpoint-every", "0", "--lr", "0.003"]
        code = f"import sys; from crosslens.cli import main; sys.exit(main({args!r}))"
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
        return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)

    runs = [cli(tmp_path / "one"), cli(tmp_path / "two")]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    weights = "final/sae_weights.safetensors"
    assert sha256(tmp_path / "one" / weights) == sha256(tmp_path / "two" / weights)


def test_baseline_saes_are_reproducible_and_leave_the_callers_generator_alone(store_path):
    from crosslens.training.baselines import train_snapshot_sae

    def baseline():
        return train_snapshot_sae(store_path, HOOK, 1, "standard", 16, n_steps=8, batch_size=64)

    torch.manual_seed(5)
    first = baseline()
    after_first = torch.rand(3)
    torch.manual_seed(5)
    torch.rand(7)  # another generator state before the second run
    second = baseline()
    torch.manual_seed(5)
    assert torch.equal(after_first, torch.rand(3))  # the baseline did not reseed the caller's generator
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


# --------------------------------------------------------------------------- stale stores
def test_a_snapshot_with_other_weights_is_never_served_from_the_old_store(tmp_path):
    suite = write_suite(tmp_path / "suite")
    store = harvest(suite, tmp_path / "store").path
    before = tree_bytes(store)
    old_source = json.loads((store / MANIFEST_NAME).read_text())["snapshots"][1]["source"]
    resave_snapshot(suite, "step10", seed=99)  # the branch was re-pushed
    with pytest.raises(StoreMismatchError, match=r"'step10' has changed .*model.safetensors.*stale.*overwrite=True"):
        harvest(suite, store)
    assert tree_bytes(store) == before  # refused before writing
    fresh = harvest(suite, store, overwrite=True)
    expected = harvest(suite, tmp_path / "reference")
    assert torch.equal(fresh.read(HOOK, slice(None)), expected.read(HOOK, slice(None)))
    assert fresh.snapshots[1]["source"] == expected.snapshots[1]["source"] != old_source


def test_hub_snapshots_record_commit_and_blob_hashes_and_a_moved_branch_is_refused(offline_hf_home, tmp_path):
    from hf_cache import make_word_tokenizer, repo_folder, tiny_neox, write_fake_hub_repo

    repo = "EleutherAI/pythia-14m"
    tokenizer = make_word_tokenizer()
    revisions = {"step0": tiny_neox(0), "step1000": tiny_neox(1)}
    write_fake_hub_repo(offline_hf_home, repo, revisions, tokenizer, main="step1000")
    folder = repo_folder(offline_hf_home, repo)
    commit = (folder / "refs" / "step1000").read_text()
    # as huggingface_hub caches downloads: the snapshot file links to blobs/<sha256>
    weights = folder / "snapshots" / commit / "model.safetensors"
    blob = folder / "blobs" / sha256(weights)
    blob.parent.mkdir(exist_ok=True)
    weights.rename(blob)
    weights.symlink_to(os.path.relpath(blob, weights.parent))

    suite = CheckpointSuite.pythia(repo, steps=[0, 1000])
    store = harvest_module.harvest_activations(suite, HOOK, token_table(8), tmp_path / "store", progress=False)
    source = store.snapshots[1]["source"]
    assert source["commit"] == commit and source["files"]["model.safetensors"] == blob.name

    # the branch moves to a new commit with other weights
    tiny_neox(5).save_pretrained(folder / "snapshots" / ("f" * 40))
    tokenizer.save_pretrained(folder / "snapshots" / ("f" * 40))
    (folder / "refs" / "step1000").write_text("f" * 40)
    with pytest.raises(StoreMismatchError, match=rf"'step1000' has changed .*commit {commit[:12]} -> ffffffffffff"):
        harvest_module.harvest_activations(
            CheckpointSuite.pythia(repo, steps=[0, 1000]), HOOK, token_table(8), tmp_path / "store", progress=False
        )


# --------------------------------------------------------------------------- corrupted shards, NaN training
def _overwrite_rows_in_place(store: Path, rel: str, value: float) -> None:
    array = np.load(store / rel, mmap_mode="r+")
    array[:3] = value
    array.flush()
    del array


def test_a_shard_altered_in_place_is_refused_before_training(store_path, tmp_path):
    store = copy_tree(store_path, tmp_path / "store")
    rel = shard_relpath(HOOK, 1, 2)
    size = (store / rel).stat().st_size
    _overwrite_rows_in_place(store, rel, 7.0)
    assert (store / rel).stat().st_size == size
    with pytest.raises(CorruptShardError, match=rf"{rel}: sha256 differs.*rebuilds exactly the damaged shards"):
        CrosscoderTrainingRunner(run_config(store, tmp_path / "run"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", str(store), "--out", str(tmp_path / "cli"), "--n-steps", "5"])
    assert exit_info.value.code == 2


def test_training_stops_at_a_non_finite_loss_and_keeps_the_last_good_checkpoint(store_path, tmp_path):
    store = copy_tree(store_path, tmp_path / "store")
    for k in range(5):  # NaN rows in every shard of one snapshot: the first batch meets one
        _overwrite_rows_in_place(store, shard_relpath(HOOK, 2, k), np.nan)
    runner = CrosscoderTrainingRunner(run_config(store, tmp_path / "run", verify_store=False))
    with pytest.raises(NonFiniteTrainingError, match=r"loss became nan at step 1\b"):
        runner.run()
    assert not (tmp_path / "run" / "final").exists()
    assert not list((tmp_path / "run").glob("step_*"))


def test_a_parameter_gone_nan_never_reaches_a_checkpoint(store_path, tmp_path, monkeypatch):
    from crosslens.training.trainer import CrosscoderTrainer

    real_step = CrosscoderTrainer.step

    def step(self, batch):
        if self.n_steps == 19:  # step 20's update (after its loss, which stays finite) leaves a NaN
            update = self.optimizer.step

            def poisoned_update(*args, **kwargs):
                update(*args, **kwargs)
                with torch.no_grad():
                    self.sae.b_dec[0, 0] = float("nan")

            self.optimizer.step = poisoned_update
        return real_step(self, batch)

    monkeypatch.setattr(CrosscoderTrainer, "step", step)
    with pytest.raises(NonFiniteTrainingError, match=r"at step 20: parameter\(s\) b_dec hold NaN") as error:
        train(store_path, tmp_path / "run")
    assert "step_00000010" in str(error.value)  # names the last good checkpoint
    assert sorted(p.name for p in (tmp_path / "run").glob("step_*")) == ["step_00000010"]
    kept = load_file(tmp_path / "run/step_00000010/sae_weights.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in kept.values())


# --------------------------------------------------------------------------- duplicates, overwrite
def test_duplicate_weights_are_refused_before_anything_is_written(tmp_path):
    suite = write_suite(tmp_path / "suite", seeds=(0, 1, 1))
    with pytest.raises(DuplicateSnapshotError, match=r"'step10' and 'step20'.*Nothing was written"):
        harvest(suite, tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any(p.name != LOCK_NAME for p in (tmp_path / "store").iterdir())
    resave_snapshot(suite, "step20", seed=2)  # fix the revision and run again
    store = harvest(suite, tmp_path / "store")
    assert store.n_snapshots == 3


def test_overwrite_really_rewrites_every_file(store_path, suite_root, tmp_path, monkeypatch):
    store = copy_tree(store_path, tmp_path / "store")
    written = []
    real = harvest_module.write_npy_atomic
    monkeypatch.setattr(harvest_module, "write_npy_atomic", lambda p, a: written.append(p) or real(p, a))
    harvest(suite_root, store, overwrite=True)
    assert len(written) == 3 * 5  # every shard of every snapshot, not a resume
    assert tree_bytes(store) == tree_bytes(store_path)


# --------------------------------------------------------------------------- concurrency
def test_a_second_harvest_into_a_locked_store_names_the_holder(store_path, suite_root, tmp_path):
    store = copy_tree(store_path, tmp_path / "store")
    held, release = threading.Event(), threading.Event()

    def hold():
        with exclusive_lock(store / LOCK_NAME):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        with pytest.raises(StoreLockedError, match=rf"another harvest \(process {os.getpid()} on .*\) is writing"):
            harvest(suite_root, store)
        with pytest.raises(StoreLockedError, match=rf"being written by process {os.getpid()}"):
            ActivationStore.open(store)
    finally:
        release.set()
        holder.join()
    assert ActivationStore.open(store).n_snapshots == 3


# --------------------------------------------------------------------------- resume against a changed store
def test_resume_against_a_store_harvested_again_with_another_hook_fails_before_any_batch(
    store_path, suite_root, tmp_path, monkeypatch
):
    store = copy_tree(store_path, tmp_path / "store")
    train(store, tmp_path / "run", n_steps=20)
    (tmp_path / "run" / "step_00000020").rename(tmp_path / "run" / "kept")  # pretend it died after step 10
    harvest(suite_root, store, hooks=OTHER_HOOK, overwrite=True)
    batches_read = []
    monkeypatch.setattr(CrosscoderTrainingRunner, "_batches", lambda self, start: batches_read.append(start))
    with pytest.raises(StoreChangedError, match=r"harvested again for other inputs \(differs in: hooks\)"):
        train(store, tmp_path / "run", n_steps=20, resume=True)
    assert batches_read == []


def test_resume_against_a_store_with_other_activations_for_the_same_inputs_is_refused(tmp_path):
    suite = write_suite(tmp_path / "suite")
    store = harvest(suite, tmp_path / "store").path
    train(store, tmp_path / "run", n_steps=20)
    (tmp_path / "run" / "step_00000020").rename(tmp_path / "run" / "kept")
    resave_snapshot(suite, "step20", seed=42)
    harvest(suite, store, overwrite=True)  # same inputs by name, other weights
    with pytest.raises(StoreChangedError, match="other activations for the same inputs"):
        train(store, tmp_path / "run", n_steps=20, resume=True)


# --------------------------------------------------------------------------- sizes on the command line
@pytest.mark.parametrize(
    "words, flag",
    [
        (["harvest", "--hook", HOOK, "--out", "o", "--n-tokens", "0"], "--n-tokens"),
        (["harvest", "--hook", HOOK, "--out", "o", "--seq-len", "0"], "--seq-len"),
        (["harvest", "--hook", HOOK, "--out", "o", "--seq-len", "1"], "--seq-len"),
        (["harvest", "--hook", HOOK, "--out", "o", "--n-snapshots", "0"], "--n-snapshots"),
        (["harvest", "--hook", HOOK, "--out", "o", "--steps", "10,-1"], "--steps"),
        (["train", "--store", "s", "--out", "o", "--d-sae", "0"], "--d-sae"),
        (["train", "--store", "s", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["train", "--store", "s", "--out", "o", "--n-steps", "-3"], "--n-steps"),
        (["train", "--store", "s", "--out", "o", "--k", "0"], "--k"),
        (["train", "--store", "s", "--out", "o", "--lr", "0"], "--lr"),
        (["train", "--store", "s", "--out", "o", "--sparsity", "-1"], "--sparsity"),
        (["train", "--store", "s", "--out", "o", "--checkpoint-every", "-1"], "--checkpoint-every"),
        (["train", "--store", "s", "--out", "o", "--arch", "topk_crosscoder", "--d-sae", "8", "--k", "9"], "--k"),
        (["train", "--store", "s", "--out", "o", "--arch", "crosscoder", "--k", "5"], "--k 5: crosscoder keeps no"),
        (["attribute", "--crosscoder", "c", "--n-examples", "0"], "--n-examples"),
    ],
)
def test_every_size_flag_is_checked_with_a_short_error_naming_it(words, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and flag in err[0]
    assert err[0].startswith(f"crosslens {words[0]}: error: "), err  # the command speaks, not the top-level parser


def test_harvest_stage_refuses_a_zero_token_budget_instead_of_using_the_default():
    from crosslens.cli.demo_stages import harvest_stage

    with pytest.raises(ValueError, match="n_tokens must be >= 1, got 0"):
        harvest_stage(None, hooks=[HOOK], n_tokens=0, out_dir="unused")
    with pytest.raises(ValueError, match="seq_len must be >= 2, got 1"):
        harvest_stage(None, hooks=[HOOK], seq_len=1, out_dir="unused")


# --------------------------------------------------------------------------- damaged inputs
def test_a_truncated_weights_file_is_named_with_its_revision_before_anything_is_written(suite_root, tmp_path):
    suite = copy_tree(suite_root, tmp_path / "suite")
    weights = suite / "step20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match=rf"'step20'.*{weights}.*truncated"):
        harvest(suite, tmp_path / "store")
    assert not list((tmp_path / "store").rglob("*.npy"))
    with pytest.raises(CorruptCheckpointError, match=r"'step20'.*model.safetensors"):
        CheckpointSuite.local(suite).load(2)


def test_a_published_step_missing_from_the_offline_cache_says_how_to_fetch_it(fake_hub, tmp_path):
    suite = CheckpointSuite.pythia("EleutherAI/pythia-14m", steps=[0, 6000])  # 6000 is published, not cached
    fetch = r"'step6000' is a published checkpoint .* not .* cache .*huggingface-cli download EleutherAI/pythia-14m"
    with pytest.raises(UncachedRevisionError, match=fetch):
        suite.load(1)
    with pytest.raises(UncachedRevisionError, match=fetch):
        harvest_module.harvest_activations(suite, HOOK, token_table(4), tmp_path / "store", progress=False)
    assert not list((tmp_path / "store").rglob("*.npy"))


@pytest.mark.parametrize("damage", ["truncate", "edit a number"])
def test_a_damaged_manifest_is_named_with_how_to_rebuild(store_path, suite_root, tmp_path, damage):
    store = copy_tree(store_path, tmp_path / "store")
    manifest = store / MANIFEST_NAME
    text = manifest.read_text()
    if damage == "truncate":
        manifest.write_text(text[: len(text) // 2])
    else:  # still valid JSON: one digit of a norm sum changes
        record = json.loads(text)
        first_shard = shard_relpath(HOOK, 0, 0)
        record["files"][first_shard]["norm_sum"] *= 1.5
        manifest.write_text(json.dumps(record, indent=1, sort_keys=True))
    named = rf"{manifest} is damaged .*--overwrite"
    with pytest.raises(DamagedManifestError, match=named):
        ActivationStore.open(store)
    with pytest.raises(DamagedManifestError, match=named):
        harvest(suite_root, store)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", str(store), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    harvest(suite_root, store, overwrite=True)
    assert tree_bytes(store) == tree_bytes(store_path)


def test_blimp_lines_with_null_sentences_are_named_or_skipped(tmp_path):
    path = tmp_path / "agreement.jsonl"
    lines = [
        {"sentence_good": "The cats run.", "sentence_bad": "The cats runs."},
        {"sentence_good": None, "sentence_bad": "The dog run."},
        "not json",
        {"sentence_good": "The dog runs."},
        {"sentence_good": "The dogs run.", "sentence_bad": "The dogs runs."},
    ]
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    with pytest.raises(MinimalPairFormatError, match=r"agreement.jsonl, line 2: 'sentence_good' is None"):
        load_blimp_jsonl(path)
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 .*3 malformed lines"):
        task = load_blimp_jsonl(path, on_invalid="skip")
    assert [pair.meta["line"] for pair in task.pairs] == [1, 5]

    clams = tmp_path / "clams.txt"
    clams.write_text("False\tThe dog run .\nTrue\tThe dog runs .\nFalse\tThe dog run .\nno tab here\n")
    with pytest.raises(MinimalPairFormatError, match="line 1: an ungrammatical"):
        load_clams(clams)
    with pytest.warns(UserWarning, match="2 malformed lines"):
        assert len(load_clams(clams, on_invalid="skip")) == 1


# --------------------------------------------------------------------------- evaluation partners


def test_an_eval_store_of_another_hook_is_refused_before_training_starts(store_path, suite_root, tmp_path, capsys):
    other = tmp_path / "other_hook"
    harvest(suite_root, other, hooks=OTHER_HOOK)
    err = one_line_exit_2(
        [
            "train",
            "--store",
            str(store_path),
            "--out",
            str(tmp_path / "run"),
            "--n-steps",
            "5",
            "--eval-store",
            str(other),
        ],
        capsys,
    )
    assert f"--eval-store {other}" in err and f"pass a store harvested with --hook {HOOK}" in err
    assert not list((tmp_path / "run").glob("step_*")) and not (tmp_path / "run" / "final").exists()
    err = one_line_exit_2(
        ["train", "--store", str(store_path), "--out", str(tmp_path / "run"), "--eval-store", str(tmp_path / "nope")],
        capsys,
    )
    assert "--eval-store" in err and "does not exist" in err


def test_an_eval_store_holding_training_sequences_is_said_to_be_training_data(store_path, suite_root, tmp_path, capsys):
    seen = tmp_path / "seen"  # 4 of the training rows and 4 rows of another draw
    harvest(suite_root, seen, tokens=torch.cat([token_table()[:4], token_table(4, seed=1)]))
    fresh = tmp_path / "fresh"
    harvest(suite_root, fresh, tokens=token_table(8, seed=2))
    run = [
        "train",
        "--store",
        str(store_path),
        "--arch",
        "crosscoder",
        "--d-sae",
        "16",
        "--n-steps",
        "4",
        "--batch-size",
        "32",
    ]
    assert main([*run, "--out", str(tmp_path / "a"), "--eval-store", str(seen)]) == 0
    out = capsys.readouterr().out
    assert f"note: 4 of 8 sequences of --eval-store {seen} are training sequences" in out
    assert "partly measured on training data" in out
    assert json.loads((tmp_path / "a" / "quality.json").read_text())["training_sequences"] == 4
    assert main([*run, "--out", str(tmp_path / "b"), "--eval-store", str(fresh)]) == 0
    assert "training sequences" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "quality.json").read_text())["training_sequences"] == 0
    # evaluate finds the training store through the run, and the training store itself is all training data
    assert main(["evaluate", str(tmp_path / "b"), "--store", str(store_path)]) == 0
    assert "note: 24 of 24 sequences of --store" in capsys.readouterr().out


def test_a_run_and_a_store_never_share_a_folder(store_path, suite_root, tmp_path, capsys):
    store = copy_tree(store_path, tmp_path / "store")
    before = tree_bytes(store)
    err = one_line_exit_2(["train", "--store", str(store), "--out", str(store), "--n-steps", "2"], capsys)
    assert "is an activation store" in err and "(`--out`)" in err
    err = one_line_exit_2(["train", "--store", str(store), "--out", str(store), "--overwrite"], capsys)
    assert "is an activation store" in err
    assert tree_bytes(store) == before
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(run),
                "--arch",
                "crosscoder",
                "--d-sae",
                "16",
                "--n-steps",
                "2",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # 2 x 32 tokens over the store's 24 x 15 kept tokens
    assert (
        f"data: 2 steps (--n-steps) x 32 tokens (--batch-size) = 64 tokens, {64 / ActivationStore.open(store).n_tokens:,.2f} passes"
        in out
    )
    err = one_line_exit_2(
        [
            "harvest",
            "--suite",
            str(suite_root),
            "--hook",
            HOOK,
            "--n-tokens",
            "64",
            "--seq-len",
            "16",
            "--out",
            str(run),
            "--overwrite",
        ],
        capsys,
    )
    assert "is a training run's folder" in err and "run.json" in err
    assert (run / "run.json").is_file() and not (run / "manifest.json").exists()


def test_resume_says_when_there_is_nothing_to_resume_and_measures_a_finished_run_on_a_new_eval_store(
    store_path, suite_root, tmp_path, capsys
):
    run = [
        "train",
        "--store",
        str(store_path),
        "--out",
        str(tmp_path / "run"),
        "--arch",
        "crosscoder",
        "--d-sae",
        "16",
        "--n-steps",
        "2",
        "--batch-size",
        "32",
    ]
    assert main([*run, "--resume"]) == 0
    assert "--resume: no checkpoint under" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    harvest(suite_root, fresh, tokens=token_table(8, seed=2))
    assert main([*run, "--resume", "--eval-store", str(fresh)]) == 0
    assert f"--eval-store {fresh}" in capsys.readouterr().out
    quality = json.loads((tmp_path / "run" / "quality.json").read_text())
    assert quality["measured_on"] == str(fresh.resolve())


def test_harvest_says_when_the_held_out_share_is_less_than_a_row(suite_root, tmp_path, capsys):
    argv = ["harvest", "--suite", str(suite_root), "--hook", HOOK, "--n-tokens", "64", "--seq-len", "16"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "no held-out tokens: the default held-out share (6 tokens, a tenth of --n-tokens)" in out
    assert "--heldout-tokens 16 or more" in out and not (tmp_path / "a-heldout").exists()
    assert main([*argv, "--out", str(tmp_path / "b"), "--heldout-tokens", "16"]) == 0
    assert "no held-out tokens" not in capsys.readouterr().out and (tmp_path / "b-heldout").exists()


def test_analyze_names_a_training_store_that_has_moved(store_path, tmp_path, capsys):
    store = copy_tree(store_path, tmp_path / "store")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(run),
                "--arch",
                "crosscoder",
                "--d-sae",
                "16",
                "--n-steps",
                "2",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    store.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["analyze", "--crosscoder", str(run), "--out", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr().out
    assert f"the store the run trained on, {store.resolve()} (its run.json), is not there" in out
    assert "no feature is classed dead" in out and "dead 0" in out


def test_overlap_is_counted_by_token_values_and_a_replaced_training_store_compares_nothing(
    store_path, suite_root, tmp_path, capsys
):
    from crosslens.activations.partners import shared_sequences

    table = token_table(6)
    assert shared_sequences(table.int(), torch.cat([table[:2], token_table(3, seed=5)])) == 2
    assert shared_sequences(table, table[:, :8]) == 0  # other lengths share no whole row
    store = copy_tree(store_path, tmp_path / "store")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(run),
                "--arch",
                "crosscoder",
                "--d-sae",
                "16",
                "--n-steps",
                "2",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    harvest(suite_root, store, tokens=token_table(8, seed=3), overwrite=True)  # another store at the run's path
    capsys.readouterr()
    assert main(["evaluate", str(run), "--store", str(store_path)]) == 0
    assert "not compared with the training tokens" in capsys.readouterr().out
