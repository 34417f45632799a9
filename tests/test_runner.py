"""The training runner: activation store in, trained crosscoder with provenance out."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_local_suite
from sae_lens import SAE
from trust_fixtures import run_config

import crosslens.crosscoders  # noqa: F401  (registers the crosscoder architectures with SAELens)
from crosslens.activations import harvest_activations
from crosslens.checkpoints import CheckpointSuite
from crosslens.core.paths import TRAIN_LOG_NAME
from crosslens.training.metrics import evaluate_crosscoder
from crosslens.training.run_log import read_run_log
from crosslens.training.runner import CrosscoderTrainingRunner

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in (0, 10, 100)}, make_word_tokenizer())
    suite = CheckpointSuite.local(root)
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (48, 16), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("store")
    harvest_activations(suite, HOOK, tokens, out, progress=False)
    return out


def _config(store_path, out_dir, **overrides):
    settings = dict(d_sae=64, n_steps=60, batch_size=128, checkpoint_every=30)
    return run_config(store_path, out_dir, **{**settings, **overrides})


def test_runner_trains_saves_and_records_provenance(store_path, tmp_path):
    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run"))
    before = evaluate_crosscoder(runner._new_crosscoder(), runner.store, HOOK)
    crosscoder = runner.run()

    loaded = SAE.load_from_disk(str(runner.final_path))
    assert loaded.cfg.architecture() == "crosscoder"
    assert loaded.W_dec.shape == (64, 3, 32)
    meta = loaded.cfg.metadata
    assert meta.hook_name == HOOK
    assert [s["step"] for s in meta.suite["snapshots"]] == [0, 10, 100]
    torch.testing.assert_close(
        torch.tensor(meta.activation_norm_factors), runner.store.norm_factors(HOOK), rtol=1e-6, atol=0
    )
    x = runner.store.read(HOOK, torch.arange(8), normalize=True)
    torch.testing.assert_close(loaded(x), crosscoder(x))

    after = evaluate_crosscoder(loaded, runner.store, HOOK)
    assert len(after["explained_variance"]) == 3
    # training must improve reconstruction on every snapshot
    for ev_before, ev_after in zip(before["explained_variance"], after["explained_variance"]):
        assert ev_after > ev_before + 0.2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["sae"]["architecture"] == "crosscoder"


def test_runner_resume_matches_uninterrupted_run(store_path, tmp_path, capsys):
    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run"))
    straight = runner.run()
    # Pretend the run died just after its step-30 checkpoint: drop everything later.
    import shutil

    shutil.rmtree(runner.checkpoint_dir / "step_00000060")
    shutil.rmtree(runner.final_path)
    capsys.readouterr()
    resumed = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run")).run(resume=True)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(straight, name), getattr(resumed, name)), name
    n_steps = _config(store_path, tmp_path / "run").n_steps
    assert (
        f"--resume: continuing from {runner.checkpoint_dir / 'step_00000030'} (step 30 of {n_steps})"
        in capsys.readouterr().out
    )


def test_resume_with_other_settings_is_refused(store_path, tmp_path):
    CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", n_steps=30)).run()
    changed = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", n_steps=30, d_sae=32))
    with pytest.raises(ValueError, match="another configuration"):
        changed.run(resume=True)


def test_a_refused_resume_leaves_the_seal_and_quality_in_place(store_path, tmp_path):
    """A finished run whose seal no longer verifies, resumed with other flags, is refused before
    its seal and quality.json are removed."""
    run = tmp_path / "run"
    CrosscoderTrainingRunner(_config(store_path, run, n_steps=30)).run()
    (run / "final" / "sae_weights.safetensors").unlink()
    (run / "quality.json").write_text('{"explained_variance": [0.5]}')
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "crosslens_run.json" in before
    changed = CrosscoderTrainingRunner(_config(store_path, run, n_steps=30, d_sae=32))
    with pytest.raises(ValueError, match="another configuration"):
        changed.run(resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_unknown_architecture_names_the_choices(store_path, tmp_path):
    with pytest.raises(ValueError, match="jumprelu_crosscoder"):
        _config(store_path, tmp_path, architecture="relu")


def test_runner_reuses_a_store_its_caller_holds(store_path, tmp_path, monkeypatch):
    from crosslens.activations import ActivationStore

    store = ActivationStore.open(store_path)
    opened = []
    original = ActivationStore.open.__func__
    monkeypatch.setattr(
        ActivationStore, "open", classmethod(lambda cls, *a, **k: opened.append(a) or original(cls, *a, **k))
    )
    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run"), store=store)
    assert runner.store is store and opened == []
    CrosscoderTrainingRunner(_config(store_path, tmp_path / "run"))
    assert len(opened) == 1  # without one, the runner opens (and verifies) the store itself
    with pytest.raises(ValueError, match="not config.store_path"):
        CrosscoderTrainingRunner(_config(tmp_path / "elsewhere", tmp_path / "run"), store=store)


def test_the_trainer_checkpoints_at_the_runs_resolved_cadence(store_path, tmp_path):
    """Unset, --checkpoint-every is about 20 checkpoints a run (at least 500 steps apart); 0 and a
    number are the trainer's as given."""
    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", n_steps=20_000, checkpoint_every=None))
    assert runner.config.checkpoint_every is None and runner._trainer_config().checkpoint_every == 1_000
    for given in (0, 30):
        runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", checkpoint_every=given))
        assert runner._trainer_config().checkpoint_every == given


def test_a_run_keeps_its_newest_checkpoints(store_path, tmp_path):
    """Each checkpoint holds the whole crosscoder and Adam's moments (13.5 GiB at Ge et al.'s shape):
    a run keeps the newest two, the one before the newest for a resume if the newest is damaged."""
    for keep, kept in ((2, ["step_00000045", "step_00000060"]), (0, [f"step_{s:08d}" for s in (15, 30, 45, 60)])):
        run = tmp_path / f"keep{keep}"
        CrosscoderTrainingRunner(_config(store_path, run, checkpoint_every=15, keep_checkpoints=keep)).run()
        assert sorted(p.name for p in run.glob("step_*")) == kept
        assert (run / "final" / "sae_weights.safetensors").is_file()
        logged = [r["step"] for r in read_run_log(run / TRAIN_LOG_NAME) if r["kind"] == "checkpoint"]
        assert logged == [15, 30, 45, 60]  # written, whether kept or not
    CrosscoderTrainingRunner(_config(store_path, run, checkpoint_every=0)).run(overwrite=True)
    assert [r["kind"] for r in read_run_log(run / TRAIN_LOG_NAME)] == ["start", "step", "final"]  # at step 50


def test_a_run_whose_checkpoints_the_disk_cannot_hold_is_refused_before_its_first_step(
    store_path, tmp_path, monkeypatch
):
    from crosslens.core import paths
    from crosslens.core.errors import StorageError

    monkeypatch.setattr(paths, "free_disk", lambda folder: 1000)
    run = tmp_path / "run"
    runner = CrosscoderTrainingRunner(_config(store_path, run, checkpoint_every=15))
    with pytest.raises(
        StorageError,
        match=r"has 1000 B free, and the run's checkpoints need about .* more \(3 checkpoints "
        r"of .* at once, and the final crosscoder\); .*\(keep_checkpoints \(`--keep-checkpoints`\), checkpoint_every \(`--checkpoint-every`\)\)",
    ):
        runner.run()
    assert not list(run.glob("step_*")) and not (run / "final").exists()
    CrosscoderTrainingRunner(_config(store_path, run, checkpoint_every=0)).run(
        overwrite=True
    )  # no checkpoints: no need


def test_the_checkpoints_already_written_count_towards_the_space_a_resume_needs(tmp_path, monkeypatch):
    """Two checkpoints of 100 B are there and two more are to come: kept two at a time, the disk
    needs one more checkpoint's room (three at once, then two and the final); kept all, both more
    and the final."""
    from crosslens.core import paths
    from crosslens.training.runfolder import checkpoint_space_problem

    for step in (15, 30):
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / "weights").write_bytes(b"x" * 100)
    for keep, needed in ((2, 100), (0, 240)):
        monkeypatch.setattr(paths, "free_disk", lambda folder, free=needed: free)
        assert checkpoint_space_problem(tmp_path, 100, 40, to_write=2, keep=keep) is None
        monkeypatch.setattr(paths, "free_disk", lambda folder, free=needed - 1: free)
        assert f"need about {needed} B more" in checkpoint_space_problem(tmp_path, 100, 40, to_write=2, keep=keep)


def test_a_checkpoint_sealed_with_a_setting_a_resume_may_now_change_still_resumes(
    store_path, tmp_path, monkeypatch, capsys
):
    """A run checkpointed while its logging settings were still compared on resume (its record
    holds them) resumes once they no longer are, to the bytes of an uninterrupted run."""
    import crosslens.training.runner as runner_module

    straight = CrosscoderTrainingRunner(_config(store_path, tmp_path / "straight")).run()
    comparing = runner_module._resume_settings
    monkeypatch.setattr(
        runner_module, "_resume_settings", lambda config: {**comparing(config), "logger": config["logger"]}
    )
    run = tmp_path / "run"
    runner = CrosscoderTrainingRunner(_config(store_path, run))
    runner.run()
    shutil.rmtree(runner.checkpoint_dir / "step_00000060")  # as if it died after step 30's checkpoint
    shutil.rmtree(runner.final_path)
    monkeypatch.undo()
    resumed = CrosscoderTrainingRunner(_config(store_path, run)).run(resume=True)
    assert "--resume: continuing from" in capsys.readouterr().out
    assert torch.equal(resumed.W_dec, straight.W_dec)


def test_a_run_resumes_with_its_checkpoints_spaced_and_kept_otherwise(store_path, tmp_path, capsys):
    """Neither the cadence nor how many checkpoints are kept, nor how it logs, changes what a run trains."""
    from crosslens.training.config import LoggingConfig

    run = tmp_path / "run"
    CrosscoderTrainingRunner(_config(store_path, run, checkpoint_every=15, keep_checkpoints=2)).run()
    logged = LoggingConfig(wandb_log_frequency=7, run_name="again")
    again = CrosscoderTrainingRunner(
        _config(store_path, run, checkpoint_every=None, keep_checkpoints=0, logger=logged)
    ).run(resume=True)
    assert again is not None and "holds this run, finished: nothing to train" in capsys.readouterr().out


def _died_after_step_30(runner) -> None:
    shutil.rmtree(runner.checkpoint_dir / "step_00000060")
    shutil.rmtree(runner.final_path)


def test_a_run_resumed_with_auto_precision_keeps_what_it_started_in(store_path, tmp_path, capsys):
    """A run that started in bfloat16 autocast with bfloat16 Adam moments (what "auto" picks on a
    CUDA device short of memory) resumes with both left at auto on this CPU, whose own choice
    would be float32: it goes on in what it started in, to the bytes of an uninterrupted run. A
    choice given now that differs from the run's is refused, naming it."""
    started = dict(autocast_dtype="bfloat16", optimizer_state="bfloat16")
    straight = CrosscoderTrainingRunner(_config(store_path, tmp_path / "straight", **started)).run()
    run = tmp_path / "run"
    runner = CrosscoderTrainingRunner(_config(store_path, run, **started))
    runner.run()
    _died_after_step_30(runner)
    resumed = CrosscoderTrainingRunner(_config(store_path, run))
    assert (resumed.config.autocast_dtype, resumed.config.optimizer_state) == ("none", "float32")  # this CPU's
    capsys.readouterr()
    crosscoder = resumed.run(resume=True)
    out = capsys.readouterr().out
    assert "crosscoder step in bfloat16 autocast (--autocast), float32 parameters, bfloat16 Adam state" in out, out
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(crosscoder, name), getattr(straight, name)), name
    other = CrosscoderTrainingRunner(_config(store_path, run, autocast_dtype="none"))
    with pytest.raises(ValueError, match=r"differs in autocast_dtype: 'bfloat16' in the run, 'none' now\)"):
        other.run(resume=True)


def test_a_run_on_the_stores_only_hook_resumes_whether_or_not_the_hook_is_named(store_path, tmp_path, capsys):
    """The hook a run trains on is compared as resolved: a run started without a hook (the store's
    only one) resumes with it named, and the other way round; so does a run whose record, as
    runners that recorded the hook unresolved sealed it, names none."""
    from crosslens.training.records import read_record, write_record

    run = tmp_path / "run"
    runner = CrosscoderTrainingRunner(_config(store_path, run, hook_name=None))
    runner.run()
    CrosscoderTrainingRunner(_config(store_path, run, hook_name=HOOK)).run(resume=True)
    assert json.loads((run / "run.json").read_text())["hook_name"] == HOOK
    CrosscoderTrainingRunner(_config(store_path, tmp_path / "named", n_steps=30, hook_name=HOOK)).run()
    CrosscoderTrainingRunner(_config(store_path, tmp_path / "named", n_steps=30, hook_name=None)).run(resume=True)
    _died_after_step_30(runner)
    checkpoint = runner.checkpoint_dir / "step_00000030"
    record = read_record(checkpoint)
    write_record(checkpoint, settings={**record["settings"], "hook_name": None}, store=record["store"])
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "hook_name": None}))
    capsys.readouterr()
    CrosscoderTrainingRunner(_config(store_path, run, hook_name=HOOK)).run(resume=True)
    captured = capsys.readouterr()
    assert "--resume: continuing from" in captured.out and "missing or damaged" not in captured.err


def test_a_warm_up_and_decay_longer_than_the_run_are_refused_as_the_config_is_made(store_path, tmp_path):
    """Before the store is opened or the folder touched, in the words of the runner's own settings."""
    with pytest.raises(
        ValueError,
        match=r"^lr_warm_up_steps 90 and lr_decay_fraction 0.2 \(20 steps\) exceed n_steps 100: pass a smaller "
        r"lr_warm_up_steps or lr_decay_fraction, or a larger n_steps\.$",
    ):
        _config(store_path, tmp_path / "run", n_steps=100, lr_warm_up_steps=90)
    assert _config(store_path, tmp_path / "run", n_steps=100, lr_warm_up_steps=80).lr_decay_steps == 20
    from crosslens.training.config import CrosscoderTrainerConfig

    with pytest.raises(ValueError, match=r"^lr_warm_up_steps 90 and lr_decay_steps 20 exceed total_steps 100: "):
        CrosscoderTrainerConfig(total_steps=100, lr_warm_up_steps=90)


def test_a_run_json_reads_back_as_the_config_the_run_trained_with(store_path, tmp_path):
    from crosslens.training.config import CrosscoderRunnerConfig

    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", n_steps=30))
    runner.run()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {"world_size", "kernel_plan", "store_seal"} <= set(record)
    assert CrosscoderRunnerConfig.from_dict(record) == runner.config
