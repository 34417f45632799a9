"""Input errors of harvest, train and analyze: each is one or two lines that name the flag (or
file) to change and give the command-line fix, never a raw KeyError, ConnectionError or
OSError, and never a Python-only fix alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trust_fixtures import HOOK, OTHER_HOOK, harvest, train, write_suite

from crosslens.cli import main
from crosslens.cli.flags import field_flags, name_flags

TOKENS = ["--n-tokens", "200", "--seq-len", "16", "--heldout-tokens", "0"]


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI, expecting exit status 2 and one or two lines on stderr: a known input error
    (no traceback, no exception type name, no --debug hint)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(line for line in lines if "%|" not in line)  # a progress bar's lines are no message
    assert 1 <= len(err.splitlines()) <= 2 and "Traceback" not in err, err
    assert "--debug for the traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """Three tiny 2-block GPT-NeoX snapshots (attention and MLP in parallel, as in Pythia)."""
    return write_suite(tmp_path_factory.mktemp("suite") / "suite")


@pytest.fixture(scope="module")
def run(suite, tmp_path_factory) -> tuple[Path, Path]:
    """(store, finished run folder) of a 40-step crosscoder on the suite."""
    root = tmp_path_factory.mktemp("run")
    harvest(suite, root / "store")
    train(root / "store", root / "run", checkpoint_every=0)
    return root / "store", root / "run"


# ---------------------------------------------------------------------------- --hook
@pytest.mark.parametrize(
    ("hook", "flag", "instead"),
    [
        ("blocks.0.hook_attn_in", "use_attn_in", "blocks.0.hook_resid_pre"),
        ("blocks.1.hook_q_input", "use_split_qkv_input", "blocks.1.hook_resid_pre"),
        ("blocks.0.hook_mlp_in", "use_hook_mlp_in", "blocks.0.hook_resid_mid"),
        ("blocks.1.attn.hook_result", "use_attn_result", "blocks.1.attn.hook_z"),
    ],
)
def test_a_hook_that_never_fires_is_refused_before_anything_is_written(suite, tmp_path, capsys, hook, flag, instead):
    out = tmp_path / "store"
    err = cli_error(["harvest", "--suite", str(suite), "--hook", hook, "--out", str(out), *TOKENS], capsys)
    assert f"--hook '{hook}' never fires" in err and f"cfg.{flag}" in err and instead in err, err
    assert "hook_resid_post" in err, err  # the hooks that do fire
    assert not out.exists()


def test_train_stream_refuses_a_hook_that_never_fires(suite, tmp_path, capsys):
    argv = [
        "train",
        "--stream",
        "--suite",
        str(suite),
        "--hook",
        "blocks.0.hook_attn_in",
        "--out",
        str(tmp_path / "run"),
    ]
    err = cli_error([*argv, *TOKENS], capsys)
    assert "--hook 'blocks.0.hook_attn_in' never fires" in err and "KeyError" not in err, err


def test_a_loaded_model_refuses_an_opt_in_hook_unless_its_flag_is_on():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from crosslens.activations.forward import ForwardToHooks

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=10, act_fn="relu"
    )
    model = HookedTransformer(cfg).eval()
    with pytest.raises(ValueError, match=r"never fires: .*cfg\.use_attn_in, which is off in this model.*--hook"):
        ForwardToHooks(model, ["blocks.0.hook_attn_in"])
    model.set_use_attn_in(True)  # switched on by the caller, the hook fires and is harvested
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode(), ForwardToHooks(model, ["blocks.0.hook_attn_in"]) as forward:
        got = forward(tokens)["blocks.0.hook_attn_in"]
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_in")
    torch.testing.assert_close(got, cache["blocks.0.hook_attn_in"])
    attn_only = HookedTransformer(HookedTransformerConfig(**{**cfg.to_dict(), "attn_only": True, "d_mlp": None}))
    with pytest.raises(ValueError, match=r"'blocks.0.hook_mlp_out' never fires: the model is attention-only"):
        ForwardToHooks(attn_only, ["blocks.0.hook_mlp_out"])
    with pytest.raises(ValueError, match=r"no hook 'blocks.3.hook_resid_pre': it has blocks 0..0; pass another --hook"):
        ForwardToHooks(model, ["blocks.3.hook_resid_pre"])


def test_a_hook_the_architecture_lacks_says_why_not_a_wrong_block_count(suite, tmp_path, capsys):
    argv = ["harvest", "--suite", str(suite), "--hook", "blocks.0.hook_resid_mid", "--out", str(tmp_path / "s")]
    err = cli_error([*argv, *TOKENS], capsys)
    assert "no hook 'blocks.0.hook_resid_mid'" in err and "attention and the MLP in parallel" in err, err
    assert "1 blocks" not in err and "--hook" in err and "blocks.0.hook_resid_pre" in err, err


# ---------------------------------------------------------------------------- --dtype of a resumed harvest
def test_a_store_harvested_in_another_dtype_is_resumed_by_the_flag_that_gives_it(suite, tmp_path, capsys):
    """A harvest killed on a GPU (its models in bfloat16 by default) and run again on a CPU (float32
    by default): the refusal names the flags, the store's own values first, not the spec's keys."""
    out = tmp_path / "store"
    argv = ["harvest", "--suite", str(suite), "--hook", HOOK, "--out", str(out), "--device", "cpu", *TOKENS]
    assert main([*argv, "--dtype", "bfloat16", "--store-dtype", "float16"]) == 0
    err = cli_error(argv, capsys)
    assert (
        "holds an activation store built for other inputs (differs in: --dtype: bfloat16 there, float32 now; "
        "--store-dtype: float16 there, float32 now); pass --dtype bfloat16 --store-dtype float16 to resume it, "
        "use a new out_dir (`--out`)"
    ) in err, err
    assert "model_dtype" not in err, err
    assert main([*argv, "--dtype", "bfloat16", "--store-dtype", "float16"]) == 0


# ---------------------------------------------------------------------------- --dataset
def test_a_dataset_that_cannot_be_loaded_offline_names_the_flag_and_the_fix(suite, offline_hf_home, tmp_path, capsys):
    argv = ["harvest", "--suite", str(suite), "--hook", HOOK, "--dataset", "foo:bar", "--out", str(tmp_path / "s")]
    err = cli_error([*argv, *TOKENS], capsys)
    assert err.startswith("crosslens harvest: error: --dataset foo:bar:"), err
    assert "offline" in err and "HF_HUB_OFFLINE" in err and "check the name" in err and "--text FILE" in err, err
    assert "ConnectionError" not in err, err


# ---------------------------------------------------------------------------- --out of analyze
def test_analyze_refuses_an_out_whose_folder_cannot_be_made_before_analysing(run, tmp_path, capsys):
    _, run_dir = run
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "report.html"
    err = cli_error(["analyze", "--crosscoder", str(run_dir), "--out", str(out)], capsys)
    assert f"--out {out}: cannot create its folder {blocker}" in err and "pass --out a path" in err, err
    assert "Errno" not in err, err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, a folder no file can be written in")
def test_analyze_refuses_an_out_in_a_folder_it_cannot_write(run, capsys):
    _, run_dir = run
    err = cli_error(["analyze", "--crosscoder", str(run_dir), "--out", "/proc/x.html"], capsys)
    assert "--out /proc/x.html: cannot write in /proc" in err, err


def test_analyze_refuses_an_out_that_is_a_folder(run, tmp_path, capsys):
    _, run_dir = run
    err = cli_error(["analyze", "--crosscoder", str(run_dir), "--out", str(tmp_path)], capsys)
    assert f"--out {tmp_path} is a folder" in err and f"--out {tmp_path / 'report.html'}" in err, err


def test_analyze_refuses_a_one_snapshot_crosscoder_before_reading_its_store(tmp_path, capsys, monkeypatch):
    """A crosscoder trained on a store of one snapshot: refused before the store is hashed and read
    (firing, probes, top contexts), with the fix that helps: a store of two or more snapshots."""
    from crosslens.activations import ActivationStore

    harvest(write_suite(tmp_path / "suite", seeds=(0,)), tmp_path / "store")
    train(tmp_path / "store", tmp_path / "run", checkpoint_every=0)

    real = ActivationStore.open

    def opened(path, *, verify="full"):
        assert verify == "none", "the store was hashed to be read"  # the run's manifest alone is cheap
        return real(path, verify=verify)

    monkeypatch.setattr(ActivationStore, "open", opened)
    err = cli_error(["analyze", "--crosscoder", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert "has W_dec of shape [" in err and ", 1, " in err and "n_snapshots >= 2" in err, err
    assert "harvest two or more snapshots (`crosslens harvest --steps A,B,...` or --n-snapshots N)" in err, err
    assert "train on that store (`crosslens train`)" in err and "train one with" not in err, err


# ---------------------------------------------------------------------------- --store of train
def test_train_on_a_store_that_does_not_exist_gives_the_harvest_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = cli_error(["train", "--store", "nope", "--out", "r2"], capsys)
    assert "nope does not exist" in err and "`crosslens harvest ... --out nope`" in err, err
    assert "harvest_activations() in Python" in err and "holds no manifest" not in err, err


def test_train_on_a_folder_that_is_no_store_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = cli_error(["train", "--store", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys)
    assert "holds no manifest.json" in err and f"`crosslens harvest ... --out {tmp_path / 'empty'}`" in err, err


def test_a_run_folder_or_crosscoder_as_store_names_the_store_it_trained_on(tmp_path, capsys):
    """harvest refuses --out RUN, so the fix for --store RUN is the store in run.json, not a harvest."""
    import json

    run_dir = tmp_path / "r"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"store_path": "/data/my-store"}))
    (run_dir / "final" / "cfg.json").write_text("{}")
    err = cli_error(["train", "--store", str(run_dir), "--out", str(tmp_path / "new")], capsys)
    assert f"{run_dir} is a training run's folder (it holds run.json), not an activation store" in err, err
    assert "pass the store it was trained on (`--store /data/my-store`)" in err and "harvest" not in err, err
    err = cli_error(["train", "--store", str(run_dir / "final"), "--out", str(tmp_path / "new")], capsys)
    assert "is a crosscoder's folder (it holds cfg.json), not an activation store" in err, err
    assert "`--store /data/my-store`" in err and "harvest" not in err, err
    assert not (tmp_path / "new").exists()
    (run_dir / "run.json").write_text("{trunc")
    err = cli_error(["train", "--store", str(run_dir), "--out", str(tmp_path / "new")], capsys)
    assert "pass the activation store it was trained on" in err and "harvest" not in err, err


def test_a_damaged_shard_gives_the_harvest_command_that_repairs_it(run, tmp_path, capsys):
    import shutil

    store, _ = run
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    shard = next(p for p in sorted((copy / "acts").rglob("*")) if p.is_file())
    shard.write_bytes(shard.read_bytes()[:-8])
    err = cli_error(["train", "--store", str(copy), "--out", str(tmp_path / "r")], capsys)
    assert "damaged file" in err and "Run the same `crosslens harvest` command again" in err, err
    assert "harvest_activations() with the same arguments in Python" in err, err


def test_a_store_of_two_hooks_asks_for_the_hook_flag(suite, tmp_path, capsys):
    harvest(suite, tmp_path / "store", hooks=[HOOK, OTHER_HOOK])
    err = cli_error(["train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "r")], capsys)
    assert "say which one to use with --hook" in err and "hook= in Python" in err, err


# ---------------------------------------------------------------------------- config fields as flags
def test_a_config_validation_error_names_the_flag_not_the_field(run, tmp_path, capsys):
    store, _ = run
    argv = ["train", "--store", str(store), "--out", str(tmp_path / "r"), "--lr-decay-fraction", "1.5"]
    err = cli_error(argv, capsys)
    assert "error: --lr-decay-fraction must be in [0, 1), got 1.5" in err and "lr_decay_fraction" not in err, err


def test_a_warm_up_and_decay_longer_than_the_run_are_refused_before_overwrite_removes_a_run(run, tmp_path, capsys):
    """The learning-rate schedule is checked as the config is built: one line naming the three
    flags, and the run --overwrite would replace is still whole."""
    import shutil

    from trust_fixtures import tree_bytes

    store, finished = run
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before = tree_bytes(out)
    argv = ["train", "--store", str(store), "--out", str(out), "--overwrite", "--n-steps", "100"]
    err = cli_error([*argv, "--lr-warm-up-steps", "90"], capsys)
    assert err.endswith(
        "error: --lr-warm-up-steps 90 and --lr-decay-fraction 0.2 (20 steps) exceed --n-steps 100: pass a smaller "
        "--lr-warm-up-steps or --lr-decay-fraction, or a larger --n-steps."
    ), err
    assert tree_bytes(out) == before


def test_a_bound_above_is_refused_by_the_flag_and_every_bound_by_the_config_as_built(run, tmp_path, capsys):
    """Each field's bounds are written once on it and checked as the config is built, so the
    library refuses what the command line refuses, before a store is hashed."""
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig, LoggingConfig

    store, _ = run
    argv = ["train", "--store", str(store), "--out", str(tmp_path / "r"), "--sparsity-warm-up-fraction", "5"]
    assert "error: --sparsity-warm-up-fraction must be in [0, 1], got 5.0" in cli_error(argv, capsys)
    assert not (tmp_path / "r").exists()
    refused = [
        (
            ArchitectureConfig,
            {"sparsity_warm_up_fraction": 5.0},
            "sparsity_warm_up_fraction must be in [0, 1], got 5.0",
        ),
        (ArchitectureConfig, {"decoder_init_norm": 0.0}, "decoder_init_norm must be > 0, got 0.0"),
        (ArchitectureConfig, {"sparsity_coefficient": -1.0}, "sparsity_coefficient must be >= 0, got -1.0"),
        (ArchitectureConfig, {"architecture": "crosscoder", "k": 0}, "k must be >= 1, got 0"),
        (CrosscoderRunnerConfig, {"lr": float("nan")}, "lr must be > 0, got nan"),
        (CrosscoderRunnerConfig, {"lr_warm_up_steps": -5}, "lr_warm_up_steps must be >= 0, got -5"),
        (CrosscoderRunnerConfig, {"lr_decay_fraction": 1.0}, "lr_decay_fraction must be in [0, 1), got 1.0"),
        (LoggingConfig, {"wandb_log_frequency": 0}, "wandb_log_frequency must be >= 1, got 0"),
    ]
    for cls, values, message in refused:
        if cls is CrosscoderRunnerConfig:
            values = {"store_path": "s", "out_dir": "o", **values}
        with pytest.raises(ValueError) as error:
            cls(**values)
        assert str(error.value) == message
    assert ArchitectureConfig(sparsity_warm_up_fraction=1.0, sparsity_coefficient=0.0).sparsity_warm_up_fraction == 1.0


def test_a_field_named_beside_its_flag_is_the_flag_alone_on_the_command_line():
    """A refusal below both the library and the command names a field beside its flag; the
    command line gives the flag alone, the value the flag takes included."""
    from crosslens.cli import harvest as harvest_command

    flags = field_flags(harvest_command.COMMAND.flags)
    said = (
        "out_dir (`--out`) /s: the store needs about 1 GiB; lower n_tokens (`--n-tokens`) (+ heldout_tokens "
        '(`--heldout-tokens`)), pass store_dtype="bfloat16" (`--store-dtype bfloat16`), or harvest into another '
        "out_dir (`--out`)"
    )
    assert name_flags(said, flags) == (
        "--out /s: the store needs about 1 GiB; lower --n-tokens (+ --heldout-tokens), pass --store-dtype bfloat16, "
        "or harvest into another --out"
    )
    assert name_flags("n_tokens (`--n-tokens`): a table of 9 tokens", flags) == "--n-tokens: a table of 9 tokens"


def test_field_names_become_flags_only_in_a_message_about_fields():
    from crosslens.cli import train as train_command

    flags = field_flags(train_command.COMMAND.flags)
    assert flags["store_path"] == "--store" and flags["lr_decay_fraction"] == "--lr-decay-fraction"
    assert "verify_store" not in flags  # --no-verify sets it False: naming it would say the opposite
    assert (
        name_flags("micro_batches (--micro-batches) must be >= 1, got 0.", flags)
        == "--micro-batches must be >= 1, got 0."
    )
    assert name_flags("lr must be > 0, got -1.", flags) == "--lr must be > 0, got -1."
    assert name_flags("k must be in [1, d_sae=32], got 40.", flags) == "--k must be in [1, --d-sae=32], got 40."
    changed = (
        "run holds a run with another configuration (differs in sae.d_sae: 64 in the run, 32 now; "
        "stream.tokens.kind: 'text' in the run, 'dataset' now; train_batch_size_tokens: 32 in the run, 64 now); "
        "resume with the same settings"
    )
    assert name_flags(changed, flags) == changed.replace("sae.d_sae", "--d-sae").replace(
        "train_batch_size_tokens", "--batch-size"
    )
    for prose in (
        "out of memory on cuda:0",
        "the store holds hooks ['a']",
        "seed 3 is taken",
        "cannot read /tmp/lr_decay_fraction/x",
    ):
        assert name_flags(prose, flags) == prose


# ---------------------------------------------------------------------------- --suite offline
def test_a_hub_suite_missing_from_the_cache_offline_is_one_short_line(offline_hf_home, tmp_path, capsys):
    argv = [
        "harvest",
        "--suite",
        "EleutherAI/pythia-14m",
        "--steps",
        "0,1000",
        "--hook",
        HOOK,
        "--out",
        str(tmp_path / "s"),
    ]
    err = cli_error([*argv, *TOKENS], capsys)
    assert "EleutherAI/pythia-14m is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in err, err
    assert "--suite" in err and "hf download EleutherAI/pythia-14m" in err, err
    assert "couldn't connect" not in err.lower() and len(err) < 400, err
