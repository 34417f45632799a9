"""``crosslens train --stream``: the no-disk pipeline as one command, end to end.

A suite is three tiny 2-layer GPT-NeoX snapshots in a local folder (tests/test_activations.py),
the text a seeded stream of its words; a run is 6 steps of 32 tokens with a checkpoint every 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_activations import HOOK, WORDS, _write_suite
from trust_fixtures import one_line_exit_2

from crosslens.cli import main
from crosslens.core.paths import RUN_SEAL_NAME, TRAIN_LOG_NAME
from crosslens.training.run_log import read_run_log
from crosslens.training.streaming import StreamingTrainingRunner

WEIGHTS = Path("final") / "sae_weights.safetensors"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stream")
    suite = _write_suite(root / "suite", seeds=[0, 1, 2])
    rng = random.Random(0)
    text = root / "words.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(40)))
    return suite, text


def data_flags(inputs) -> list[str]:
    suite, text = inputs
    return [
        "--suite",
        str(suite),
        "--text",
        str(text),
        "--n-tokens",
        "512",
        "--seq-len",
        "16",
        "--heldout-tokens",
        "128",
    ]


def stream_flags(inputs, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--stream",
        *data_flags(inputs),
        "--hook",
        HOOK,
        "--n-steps",
        "6",
        "--batch-size",
        "32",
        "--d-sae",
        "32",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def streamed(inputs, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted streamed run and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "plain"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(stream_flags(inputs, out)) == 0
    return out, printed.getvalue()


def test_a_streamed_run_trains_without_a_store_and_says_what_it_streamed(streamed, inputs):
    out, printed = streamed
    assert "resident snapshot models: 3 x" in printed and "they fit" in printed
    assert f"crosscoder saved to {out / 'final'}; its training log: {out / 'train_log.jsonl'}" in printed
    assert (out / "train_log.jsonl").is_file()
    assert not list(out.rglob("*.npy")) and not list(out.rglob("manifest.json"))  # no store anywhere
    record = json.loads((out / "run.json").read_text())
    stream = record["stream"]
    assert record["store_path"] == ""
    assert stream["suite"]["steps"] == [0, 10, 20] and stream["suite"]["root"] == str(inputs[0])
    assert stream["hook"] == HOOK and stream["tokens"] == {"kind": "text", "source": [str(inputs[1])]}
    assert (stream["n_tokens"], stream["seq_len"], stream["heldout_tokens"], stream["model_dtype"]) == (
        512,
        16,
        128,
        "float32",
    )
    cfg = json.loads((out / "final" / "cfg.json").read_text())
    assert len(cfg["metadata"]["activation_norm_factors"]) == 3
    assert [s["step"] for s in cfg["metadata"]["suite"]["snapshots"]] == [0, 10, 20]
    assert all(s["weights_sha256"] for s in cfg["metadata"]["suite"]["snapshots"])
    kinds = [r["kind"] for r in read_run_log(out / TRAIN_LOG_NAME)]  # 6 steps: no log interval of 50 ends
    assert kinds == ["start", "checkpoint", "checkpoint", "checkpoint", "final", "evaluation"]


def test_a_streamed_run_records_its_text_as_one_dataset_path(streamed, inputs):
    """SAELens's dataset_path is one string; the streamed run's --text gave a list."""
    out, _ = streamed
    assert json.loads((out / "final" / "cfg.json").read_text())["metadata"]["dataset_path"] == str(inputs[1])


def test_a_streamed_runs_run_json_reads_back_as_its_config(streamed):
    """run.json holds, beside the settings, what the run streamed and how it was launched."""
    from crosslens.training.config import CrosscoderRunnerConfig

    out, _ = streamed
    record = json.loads((out / "run.json").read_text())
    config = CrosscoderRunnerConfig.from_dict(record)
    assert {"stream", "world_size", "kernel_plan"} <= set(record)
    assert (config.hook_name, config.n_steps, config.out_dir) == (HOOK, 6, str(out))


def test_the_heldout_quality_table_is_measured_on_harvests_heldout_rows(streamed, inputs, tmp_path):
    """The table --stream prints is the one a store harvested with the same flags gives: the same
    held-out rows, the activations scaled by the training run's factors."""
    from sae_lens import SAE

    import crosslens.crosscoders  # noqa: F401
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import heldout_store_path
    from crosslens.training.metrics import evaluate_crosscoder

    out, printed = streamed
    assert "explained variance per snapshot on held-out tokens (harvested from the resident models)" in printed
    saved = json.loads((out / "quality.json").read_text())
    ev_rows = [r for r in saved["rows"] if r["kind"] == "ev"]
    # named by the suite's revisions, as a store's table names them (the spliced table's too)
    assert [(r["label"], r["step"]) for r in ev_rows] == [("step0", 0), ("step10", 10), ("step20", 20)]
    assert [r["snapshot"] for r in saved["spliced_loss"]["crosscoder"]] == ["step0", "step10", "step20"]

    assert (
        main(["harvest", *data_flags(inputs), "--hook", HOOK, "--out", str(tmp_path / "store"), "--device", "cpu"]) == 0
    )
    heldout = ActivationStore.open(heldout_store_path(tmp_path / "store"))
    crosscoder = SAE.load_from_disk(str(out / "final"))
    factors = torch.tensor(json.loads((out / "final" / "cfg.json").read_text())["metadata"]["activation_norm_factors"])
    raw = heldout.read(HOOK, torch.arange(heldout.n_tokens), normalize=False)

    class Rescaled:  # the held-out store's activations under the training factors
        n_tokens, n_snapshots, snapshots = heldout.n_tokens, 3, heldout.snapshots

        def resolve_hook(self, hook):
            return HOOK

        def read(self, hook, idx, normalize=True):
            return raw[idx] * factors[None, :, None]

    want = evaluate_crosscoder(crosscoder, Rescaled())
    assert want["n_tokens"] == heldout.n_tokens > 0
    got = [r["crosscoder"] for r in ev_rows]
    assert got == pytest.approx(want["explained_variance"], abs=1e-5)
    assert saved["dead_features"] == want["dead_features"]


def test_evaluate_counts_the_training_rows_of_a_store_from_the_sealed_row_digests(streamed, inputs, tmp_path, capsys):
    """A streamed run keeps no store, so it seals a digest of each training row: `evaluate` on a
    store of the same tokens says every row was trained on, on its held-out split that none was,
    and a digest file that is not the one sealed is refused."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import RowDigests, heldout_store_path
    from crosslens.core.paths import TRAINED_ROWS_NAME

    out, _ = streamed
    store = tmp_path / "store"
    assert main(["harvest", *data_flags(inputs), "--hook", HOOK, "--out", str(store), "--device", "cpu"]) == 0
    n_rows = len(ActivationStore.open(store).sequences)
    digests = RowDigests.load(out / TRAINED_ROWS_NAME)
    assert (digests.seq_len, len(digests.digests)) == (16, n_rows) and len(set(digests.digests)) > 1
    capsys.readouterr()
    assert main(["evaluate", str(out), "--store", str(store), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"note: {n_rows} of {n_rows} sequences of --store {store} are training sequences" in printed
    assert main(["evaluate", str(out), "--store", str(heldout_store_path(store)), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "training sequences" not in printed and "not compared" not in printed

    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    RowDigests(16, digests.digests[1:]).save(copy / TRAINED_ROWS_NAME)
    err = one_line_exit_2(["evaluate", str(copy), "--store", str(store), "--device", "cpu"], capsys)
    assert f"{copy / TRAINED_ROWS_NAME} is not the file the run was sealed with" in err


def test_row_digests_are_written_in_the_same_bytes_every_time(tmp_path):
    """The file is sealed into its run, so the same rows must give the same file (safetensors
    orders several metadata entries anew for each file it writes)."""
    from crosslens.activations.partners import RowDigests

    rows = RowDigests.of(torch.arange(48).reshape(3, 16))
    for i in range(20):
        rows.save(tmp_path / f"{i}.safetensors")
    assert len({(tmp_path / f"{i}.safetensors").read_bytes() for i in range(20)}) == 1
    assert RowDigests.load(tmp_path / "0.safetensors") == rows
    from safetensors.torch import save_file

    from crosslens.core.errors import PartnerMismatchError

    save_file({"digests": torch.zeros(3, 16, dtype=torch.uint8)}, str(tmp_path / "other.safetensors"))  # no seq_len
    with pytest.raises(PartnerMismatchError, match="cannot be read as a run's row digests .*; train the run again"):
        RowDigests.load(tmp_path / "other.safetensors")


def test_overwrite_replaces_a_finished_streamed_run_and_its_row_digests(streamed, inputs, tmp_path, capsys):
    import shutil

    from crosslens.activations.partners import RowDigests
    from crosslens.core.paths import TRAINED_ROWS_NAME
    from crosslens.training.runfolder import check_run

    out = tmp_path / "run"
    shutil.copytree(streamed[0], out)
    flags = stream_flags(inputs, out)
    flags[flags.index("--n-tokens") + 1] = "256"
    err = one_line_exit_2(flags, capsys)
    assert "holds a finished run; pass " in err and "overwrite=True (`--overwrite`) to train a new one" in err
    assert main([*flags, "--overwrite"]) == 0
    check_run(out)  # sealed anew, with the new digests
    assert len(RowDigests.load(out / TRAINED_ROWS_NAME).digests) == 256 // 16
    assert json.loads((out / "run.json").read_text())["stream"]["n_tokens"] == 256


def run_stopped_before_step_3(monkeypatch, argv: list[str]) -> int:
    """Run ``argv`` with the stream stopped (Ctrl-C) after the step-2 checkpoint, before the run ends, as a
    killed run; the exit status."""
    batches = StreamingTrainingRunner._batches

    def interrupting(self, start_step):
        for i, batch in enumerate(batches(self, start_step)):
            if start_step + i == 3:
                raise KeyboardInterrupt
            yield batch

    with monkeypatch.context() as stopped:
        stopped.setattr(StreamingTrainingRunner, "_batches", interrupting)
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    return exit_info.value.code


def test_an_interrupted_run_resumes_to_the_same_bytes(streamed, inputs, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    assert run_stopped_before_step_3(monkeypatch, stream_flags(inputs, out)) == 130
    assert (out / "step_00000002").is_dir() and not (out / WEIGHTS).exists()
    assert main(stream_flags(inputs, out, "--resume")) == 0
    assert sha256(out / WEIGHTS) == sha256(streamed[0] / WEIGHTS)


def test_a_resume_without_dtype_takes_the_models_dtype_the_run_recorded(inputs, tmp_path, monkeypatch, capsys):
    """A run whose snapshot models ran in bfloat16 (the CUDA default) goes on in bfloat16 where
    --dtype is left out on a device whose default is float32 (here the CPU, whose default it is);
    another --dtype given is refused in one line naming the run's."""
    out = tmp_path / "run"
    flags = stream_flags(inputs, out)
    flags[flags.index("--heldout-tokens") + 1] = "0"
    run_stopped_before_step_3(monkeypatch, [*flags, "--dtype", "bfloat16"])
    assert (out / "step_00000002").is_dir() and not (out / WEIGHTS).exists()
    capsys.readouterr()
    err = one_line_exit_2([*flags, "--resume", "--dtype", "float32"], capsys)
    assert err == (
        f"crosslens train: error: --dtype float32: the run in {out} ran its snapshot models in bfloat16; resume "
        "with --dtype bfloat16 (or without --dtype), or start a new run in another --out"
    )
    assert main([*flags, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"--resume: the snapshot models run in bfloat16, as the run in {out} did (--dtype bfloat16)" in printed
    assert "--resume: continuing from" in printed and (out / WEIGHTS).exists()
    assert json.loads((out / "run.json").read_text())["stream"]["model_dtype"] == "bfloat16"


def test_a_resume_on_other_weights_under_the_same_names_is_refused(inputs, tmp_path, monkeypatch, capsys):
    """A suite folder rebuilt under the same revision names holds other models: the checkpoint's
    record of each snapshot's weights tells them apart once they load, before a step is taken."""
    import shutil

    suite = shutil.copytree(inputs[0], tmp_path / "suite")
    out = tmp_path / "run"
    flags = stream_flags(inputs, out)
    flags[flags.index(str(inputs[0]))] = str(suite)
    run_stopped_before_step_3(monkeypatch, flags)
    _write_suite(suite, seeds=[0, 5, 2])  # snapshot step10 retrained from another seed
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main([*flags, "--resume"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1, err
    assert f"the snapshot models' weights differ from those {out} trained on up to step_00000002 (step10: " in err
    assert not (out / WEIGHTS).exists()

    # a finished run stopped before its table: measured on resume, but not on other models
    import crosslens.cli.train as stream_command

    def stopped(*args):
        raise KeyboardInterrupt

    _write_suite(suite, seeds=[0, 1, 2])
    finished = tmp_path / "finished"
    flags[flags.index(str(out))] = str(finished)
    monkeypatch.setattr(stream_command, "report_quality", stopped)
    with pytest.raises(SystemExit):
        main(flags)
    monkeypatch.undo()
    assert (finished / WEIGHTS).exists() and not (finished / "quality.json").exists()
    _write_suite(suite, seeds=[0, 5, 2])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*flags, "--resume"])
    err = capsys.readouterr().err
    assert f"the snapshot models' weights differ from those {finished} trained on up to final (step10: " in err, err
    assert not (finished / "quality.json").exists()


def test_the_run_folder_stays_locked_through_the_quality_table(inputs, tmp_path, monkeypatch):
    """Another process cannot take the folder between training and the table (an --overwrite
    there would leave one run's table sealed beside another's crosscoder)."""
    import crosslens.cli.train as stream_command

    out, seen = tmp_path / "run", {}
    report = stream_command.report_quality

    def probing(runner, *args):
        probe = f"from crosslens.training.runfolder import check_not_being_written as c; c({str(out)!r})"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        seen["refused"] = done.returncode != 0 and "is being written by" in done.stderr
        return report(runner, *args)

    monkeypatch.setattr(stream_command, "report_quality", probing)
    assert main(stream_flags(inputs, out)) == 0
    assert seen == {"refused": True}


def test_a_resume_of_a_finished_run_keeps_its_quality_table(streamed, inputs, tmp_path, capsys):
    import shutil

    out = shutil.copytree(streamed[0], tmp_path / "run")
    table = (out / "quality.json").read_bytes()
    capsys.readouterr()
    assert main(stream_flags(inputs, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"its quality table: {out / 'quality.json'}" in printed and "crosscoder saved to" not in printed
    assert (out / "quality.json").read_bytes() == table


def test_a_resume_on_other_tokens_is_refused(streamed, inputs, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(streamed[0], out)
    other = tmp_path / "other.txt"
    other.write_text(inputs[1].read_text().replace("cat", "dog"))
    flags = stream_flags(inputs, out, "--resume")
    flags[flags.index(str(inputs[1]))] = str(other)
    with pytest.raises(SystemExit):
        main(flags)
    err = capsys.readouterr().err
    assert (
        "another configuration (differs in stream.tokens.source:" in err and str(other) in err and err.count("\n") == 1
    )


def test_a_streamed_run_and_a_store_run_do_not_resume_as_each_other(streamed, inputs, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(streamed[0], out)
    store = tmp_path / "store"
    assert main(["harvest", *data_flags(inputs), "--hook", HOOK, "--device", "cpu", "--out", str(store)]) == 0
    capsys.readouterr()
    flags = [
        "train",
        "--store",
        str(store),
        "--n-steps",
        "6",
        "--batch-size",
        "32",
        "--d-sae",
        "32",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--resume",
    ]
    err = one_line_exit_2(flags, capsys)
    assert err == (
        f"crosslens train: error: {out} holds a run that was streamed from resident models: resume it with "
        "`crosslens train --stream` and its flags, or pick another out_dir (`--out`)."
    )
    stored = tmp_path / "stored"
    assert main([*flags[:-3], "--out", str(stored)]) == 0
    assert read_run_log(stored / TRAIN_LOG_NAME)[-1]["kind"] == "evaluation"
    capsys.readouterr()
    err = one_line_exit_2(stream_flags(inputs, stored, "--resume"), capsys)
    assert err == (
        f"crosslens train: error: {stored} holds a run that trained on a store: resume it with --store, "
        "without --stream, or pick another out_dir (`--out`)."
    )


def test_a_resume_on_edited_text_at_the_same_path_is_refused(inputs, tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text(inputs[1].read_text())
    flags = stream_flags((inputs[0], text), tmp_path / "run")
    assert main(flags) == 0
    text.write_text(inputs[1].read_text().replace("cat", "dog"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*flags, "--resume"])
    err = capsys.readouterr().err
    assert "the streamed tokens differ from those" in err and "resume with the same inputs" in err, err
    assert err.count("\n") == 1


def tiny_streamed_run(out_dir: Path, suite, train_NL, heldout_NL, resume: bool, **runner_kwargs) -> None:
    """A two-step streamed run of a 16-latent crosscoder into ``out_dir``, run from Python as a
    notebook does: resumed, or started over."""
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig

    config = CrosscoderRunnerConfig(
        store_path="",
        out_dir=str(out_dir),
        hook_name=HOOK,
        sae=ArchitectureConfig(d_sae=16),
        n_steps=2,
        train_batch_size_tokens=32,
        checkpoint_every=2,
        progress=False,
    )
    runner = StreamingTrainingRunner(config, suite, train_NL, heldout_NL, {"note": "api"}, **runner_kwargs)
    try:
        runner.run(resume=resume, overwrite=not resume)
    finally:
        runner.close()


def test_a_library_resume_on_other_snapshots_or_another_model_dtype_is_refused(inputs, tmp_path):
    """The runner names the snapshots and the models' dtype in what it trains on itself, so a
    resume on another suite (the same revision names in another folder) or dtype is refused
    whatever ``stream`` description the caller passes."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import StoreChangedError

    suite = CheckpointSuite.local(inputs[0])
    other = CheckpointSuite.local(_write_suite(tmp_path / "other", seeds=[3, 4, 5]))
    tokens_NL = torch.randint(2, len(WORDS) + 2, (32, 16), generator=torch.Generator().manual_seed(0))

    def run(on, resume: bool, model_dtype=torch.float32) -> None:
        tiny_streamed_run(tmp_path / "run", on, tokens_NL[:24], tokens_NL[24:], resume, model_dtype=model_dtype)

    run(suite, False)
    with pytest.raises(
        StoreChangedError,
        match=rf"the snapshots differ from those {tmp_path / 'run'} trained on up to final "
        rf"\({inputs[0]} at step0, step10, step20 then, {tmp_path / 'other'} at step0, step10, step20 now\)",
    ):
        run(other, True)
    with pytest.raises(
        StoreChangedError, match="the snapshot models ran in float32 up to final of .*, now in bfloat16"
    ):
        run(suite, True, torch.bfloat16)
    run(suite, True)  # the same snapshots and dtype: the finished run is taken


def test_a_library_resume_on_other_inputs_names_the_keyword_for_a_new_run(tmp_path):
    """``StreamingTrainingRunner.run()`` is called from notebooks too: a resume on other tokens, or
    on models rebuilt with other weights under the same names, names ``out_dir`` beside ``--out``,
    and another ``out_dir`` takes the run."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.core.errors import StoreChangedError

    folder = _write_suite(tmp_path / "suite", seeds=[0, 1, 2])
    tokens_NL = torch.randint(2, len(WORDS) + 2, (32, 16), generator=torch.Generator().manual_seed(0))

    def run(out: str, train_NL: torch.Tensor, resume: bool) -> None:
        tiny_streamed_run(tmp_path / out, CheckpointSuite.local(folder), train_NL, tokens_NL[24:], resume)

    run("run", tokens_NL[:24], False)
    with pytest.raises(StoreChangedError) as tokens:
        run("run", tokens_NL[:24].flip(0), True)
    assert str(tokens.value) == (
        f"the streamed tokens differ from those {tmp_path / 'run'} trained on up to final (the text, dataset or "
        "tokenizer changed); resume with the same inputs, or start a new run in another out_dir (`--out`)."
    )
    shutil.rmtree(tmp_path / "run" / "final")  # the run stopped after its checkpoint at step 2
    (tmp_path / "run" / RUN_SEAL_NAME).unlink()
    _write_suite(tmp_path / "suite", seeds=[3, 4, 5])
    with pytest.raises(StoreChangedError) as weights:
        run("run", tokens_NL[:24], True)
    assert str(weights.value) == (
        f"the snapshot models' weights differ from those {tmp_path / 'run'} trained on up to step_00000002 (step0, "
        "step10, step20: another model under the same names); resume with the same models, or start a new run in "
        "another out_dir (`--out`)."
    )
    run("other", tokens_NL[:24], False)  # another out_dir
    assert (tmp_path / "other" / "final").is_dir()


def test_the_spliced_loss_is_measured_on_the_heldout_rows_and_sealed(streamed, inputs, tmp_path):
    """quality.json's spliced loss is the one the library gives on harvest's held-out rows (the same
    token rows), with the snapshot models loaded whole; the table joins the run's seal."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import heldout_store_path
    from crosslens.causal.spliced_loss_eval import spliced_record
    from crosslens.cli.common import resolve_suite
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.runfolder import run_problem

    out, printed = streamed
    assert (
        "spliced-model loss per snapshot on 8 rows of held-out rows of the streamed tokens (zero-ablation floor)"
        in printed
    )
    saved = json.loads((out / "quality.json").read_text())["spliced_loss"]
    assert (saved["n_seqs"], saved["seq_len"], saved["ablation"]) == (8, 16, "zero")
    assert run_problem(out) is None

    assert (
        main(["harvest", *data_flags(inputs), "--hook", HOOK, "--out", str(tmp_path / "store"), "--device", "cpu"]) == 0
    )
    heldout = ActivationStore.open(heldout_store_path(tmp_path / "store"))
    want = spliced_record(resolve_suite(str(inputs[0])), load_crosscoder_folder(out / "final"), heldout, 8)
    assert [r["snapshot"] for r in saved["crosscoder"]] == [r["snapshot"] for r in want["crosscoder"]]
    for got_row, want_row in zip(saved["crosscoder"], want["crosscoder"]):
        for key in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae"):
            assert got_row[key] == pytest.approx(want_row[key], abs=1e-5), key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_analyze_names_the_harvest_that_gives_a_streamed_run_its_store(dtype, streamed, inputs, tmp_path, capsys):
    """A streamed run has no store for the report's firing frequencies and top contexts: analyze
    prints the harvest of the tokens it trained on, and that command's store is accepted, also for
    a run whose resident models were bfloat16 (the run records their files' identity, which the
    harvest's manifest records too)."""
    import shlex

    out, _ = streamed
    if dtype != "float32":
        out = tmp_path / "run"
        assert main(stream_flags(inputs, out, "--dtype", dtype)) == 0
    assert main(["analyze", "--crosscoder", str(out), "--device", "cpu", "--out", str(out.parent / "a.html")]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "the run streamed its activations" in line)
    words = shlex.split(line.split("`")[1])
    assert words[:2] == ["crosslens", "harvest"] and words[words.index("--out") + 1] == str(out.resolve()) + "-store"
    flags = dict(zip(words[2::2], words[3::2]))
    assert (flags["--suite"], flags["--steps"], flags["--hook"]) == (str(inputs[0].resolve()), "0,10,20", HOOK)
    assert (flags["--n-tokens"], flags["--seq-len"], flags["--heldout-tokens"], flags["--text"]) == (
        "512",
        "16",
        "128",
        str(inputs[1].resolve()),
    )
    assert "--dtype" not in flags
    assert main([*words[1:], "--device", "cpu"]) == 0
    assert (
        main(
            [
                "analyze",
                "--crosscoder",
                str(out),
                "--store",
                str(out) + "-store",
                "--device",
                "cpu",
                "--out",
                str(out.parent / "b.html"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "no activation store" not in printed and "the run streamed" not in printed


def test_the_harvest_named_for_a_streamed_run_keeps_what_chose_its_tokens(tmp_path):
    """The printed harvest names a staged suite's one ingredient (the hub lists every ingredient
    under the model's id) and the text's encoding where it is not UTF-8."""
    import shlex

    from crosslens.activations import TokenBudget, TokenSource
    from crosslens.cli.train import stream_record
    from crosslens.training.runfolder import streamed_store_command

    class Staged:  # what stream_record reads of a suite
        model_id, family, root, steps = "allenai/OLMo-2-0425-1B", "olmo", None, (1000, 2000)
        snapshots = [type("Ref", (), {"revision": f"stage2-ingredient2-step{s}-tokens5B"})() for s in (1000, 2000)]

        def processing(self):  # post-norm: its architecture's, which the record leaves out
            return {"fold_ln": False, "center_writing_weights": False, "center_unembed": True}

    text = tmp_path / "a b.txt"
    text.write_text("x")
    latin = TokenSource(text=[str(text)], encoding="latin-1")
    record = stream_record(Staged(), HOOK, latin, TokenBudget(512, 16, 128), "bfloat16")
    (tmp_path / "run.json").write_text(json.dumps({"stream": record}))
    words = shlex.split(streamed_store_command(tmp_path))
    flags = dict(zip(words[2::2], words[3::2]))
    assert flags["--suite"] == "allenai/OLMo-2-0425-1B@ingredient2" and flags["--steps"] == "1000,2000"
    assert flags["--text"] == str(text.resolve()) and flags["--encoding"] == "latin-1" and "--dtype" not in flags
    utf8 = stream_record(
        Staged(), HOOK, TokenSource(text=[str(text)], encoding="UTF-8"), TokenBudget(512, 16, 128), "float32"
    )
    assert "encoding" not in utf8["tokens"]  # the default leaves the record (and a resume's fingerprint) as it was


def test_no_heldout_tokens_means_no_table_and_says_how_to_get_one(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    flags = stream_flags(inputs, out)
    flags[flags.index("--heldout-tokens") + 1] = "0"
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert (
        "no held-out tokens: no quality table; for one, run the same command with --resume --eval-store STORE (a "
        "store of these snapshots and hook), or start a run with --heldout-tokens 16 or more (a row of --seq-len)"
    ) in printed
    assert "Changing model dtype" not in printed  # TransformerLens's line for every snapshot loaded
    assert json.loads((out / "run.json").read_text())["stream"]["heldout_tokens"] == 0
    assert not (out / "quality.json").exists()
    # and that command gives the finished run its table
    store = tmp_path / "store"
    assert main(["harvest", *data_flags(inputs), "--hook", HOOK, "--out", str(store), "--device", "cpu"]) == 0
    assert main([*flags, "--resume", "--eval-store", str(store)]) == 0
    assert json.loads((out / "quality.json").read_text())


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--stream", "--store", "S"], "--stream trains without a store: drop --store"),
        (
            ["--store", "S", "--n-tokens", "100", "--suite", "pico"],
            "--suite, --n-tokens choose the tokens and snapshots --stream",
        ),
        (
            ["--store", "S", "--dataset", "x:text"],
            "--dataset chooses the tokens and snapshots --stream (or a --recipe without --store) harvests; add --stream",
        ),
        (["--stream", "--suite", "SUITE"], "train --stream needs --hook NAME"),
        (
            ["--stream", "--suite", "SUITE", "--hook", "blocks.9.hook_resid_post"],
            "names block 9, but the model has blocks 0..1",
        ),
    ],
    ids=[
        "stream-and-store",
        "data-flags-without-stream",
        "dataset-without-stream-or-recipe",
        "no-hook",
        "hook-past-the-model",
    ],
)
def test_flag_combinations_that_make_no_sense_are_refused_in_one_line(flags, says, inputs, tmp_path, capsys):
    flags = [str(inputs[0]) if f == "SUITE" else f for f in flags]
    with pytest.raises(SystemExit) as refused:
        main(["train", *flags, "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_models_that_do_not_fit_are_refused_before_any_loads(inputs, tmp_path, capsys, monkeypatch):
    from crosslens.activations import streaming

    loads = []
    monkeypatch.setattr(streaming, "available_memory", lambda device: 50_000)
    monkeypatch.setattr(streaming, "load_snapshot", lambda *a, **k: loads.append(a))
    with pytest.raises(SystemExit) as refused:
        main(stream_flags(inputs, tmp_path / "out"))
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1, err
    # 3 models of 18 x 32 embeddings and one block of 8576 parameters, float32, and two chunks of
    # 256 rows of 16 tokens at 3 snapshots of d 32, against 90% of 50 kB
    assert (
        "3 x 9,152 parameters (blocks 0-0 of 2, float32) + 2 chunks of 4,096 tokens x 3 snapshots x d 32 "
        "(3.00 MiB) = 3.10 MiB per process"
    ) in err
    assert "43.95 KiB of cpu available per process: they do NOT fit" in err
    assert "--snapshot-parallel" in err and "--dtype bfloat16" in err
    assert loads == [] and not (tmp_path / "out").exists()


def test_models_larger_than_estimated_are_refused_as_they_load_in_one_line(inputs, tmp_path, capsys, monkeypatch):
    from crosslens.activations import streaming

    free = iter([10**12])  # the estimate before loading fits; the provider then sees 50 kB
    monkeypatch.setattr(streaming, "available_memory", lambda device: next(free, 50_000))
    with pytest.raises(SystemExit) as refused:
        main(stream_flags(inputs, tmp_path / "out"))
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1, err
    assert "3 resident snapshot models need" in err and "--snapshot-parallel" in err
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.parametrize(
    "snapshot_parallel",
    ["2", pytest.param("1", marks=pytest.mark.slow)],  # each rank holds every model: the slower launch
    ids=["snapshot-parallel-2", "data-parallel-2"],
)
def test_torchrun_with_two_processes_trains_the_one_process_crosscoder(snapshot_parallel, streamed, inputs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CROSSLENS_DIST_TIMEOUT": "120"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crosslens",
        *stream_flags(inputs, tmp_path / "mesh", "--snapshot-parallel", snapshot_parallel),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.count("crosscoder saved to") == 1 and done.stdout.count("they fit") == 1
    assert json.loads((tmp_path / "mesh" / "run.json").read_text())["world_size"] == 2
    from crosslens.architectures import JUMPRELU_LR

    got, want = load_file(tmp_path / "mesh" / WEIGHTS), load_file(streamed[0] / WEIGHTS)
    assert got.keys() == want.keys()
    # the mesh sums in another order; Adam turns a gradient's last bits into up to lr per step where
    # it is near zero, so the bound is a share of the learning rate (1e-5 at lr 1e-3)
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-2 * JUMPRELU_LR, name
    mesh_quality = json.loads((tmp_path / "mesh" / "quality.json").read_text())["rows"]
    one_quality = json.loads((streamed[0] / "quality.json").read_text())["rows"]
    assert [r["crosscoder"] for r in mesh_quality] == pytest.approx([r["crosscoder"] for r in one_quality], abs=1e-4)
    if snapshot_parallel == "2":
        # resumed, the finished run is taken and its quality measured again: the held-out rows need
        # every snapshot's norm factor, gathered from both ranks (not from rank 0 alone)
        resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-6000:]
        again = json.loads((tmp_path / "mesh" / "quality.json").read_text())["rows"]
        assert [r["crosscoder"] for r in again] == [r["crosscoder"] for r in mesh_quality]


def test_streamed_chunks_hold_at_most_65536_token_positions():
    """The chunk is the shuffle buffer, on the training device for every snapshot: rows of 1024 (Ge et
    al.'s context) give 64 rows a chunk, short rows keep the provider's 256."""
    from crosslens.activations.budget import CHUNK_TOKENS, chunk_seqs_for

    assert CHUNK_TOKENS == 65536
    assert [chunk_seqs_for(n) for n in (16, 64, 256, 1024, 2048, 100_000)] == [256, 256, 256, 64, 32, 1]


def test_both_runners_build_the_crosscoder_the_jumprelu_flags_ask_for(tmp_path):
    """--target-l0 reaches the crosscoder and --sparse-step the run's kernel plan whichever runner
    builds them (the store's runner and --stream's share new_training_crosscoder and the plan)."""
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig
    from crosslens.training.runner import CrosscoderTrainingRunner, new_training_crosscoder, run_kernel_plan
    from crosslens.training.streaming import StreamingTrainingRunner

    sae = ArchitectureConfig(architecture="jumprelu_crosscoder", d_sae=16, target_l0=3.0, sparse_step="off")
    config = CrosscoderRunnerConfig(store_path="", out_dir=str(tmp_path), sae=sae, n_steps=10)
    crosscoder = new_training_crosscoder(config, d_in=8, n_snapshots=2, device="cpu")
    assert (crosscoder.cfg.target_l0, run_kernel_plan(config, "cpu").jumprelu_sparse) == (3.0, False)
    assert new_training_crosscoder(config, d_in=8, n_snapshots=2, device="cpu").W_dec.equal(crosscoder.W_dec)  # seeded
    plain = CrosscoderRunnerConfig(store_path="", out_dir=str(tmp_path), sae=ArchitectureConfig(d_sae=16), n_steps=10)
    assert (
        new_training_crosscoder(plain, d_in=8, n_snapshots=2, device="cpu").cfg.target_l0,
        plain.sae.sparse_step,
    ) == (None, "auto")
    assert run_kernel_plan(plain, "cpu").jumprelu_sparse is None
    assert "new_training_crosscoder" in StreamingTrainingRunner._new_crosscoder.__code__.co_names
    assert StreamingTrainingRunner.kernel_plan is CrosscoderTrainingRunner.kernel_plan
    with pytest.raises(ValueError, match=r"sparse_step \(--sparse-step\) is the JumpReLU crosscoder's"):
        ArchitectureConfig(architecture="topk_crosscoder", sparse_step="on")


def test_a_store_of_the_run_snapshots_in_bfloat16_is_their_store(streamed, inputs, tmp_path, capsys):
    """The streamed run records each snapshot's file identity, as a store's manifest does, so a
    store of the same snapshots harvested in bfloat16 (whose weights hash is of bfloat16 weights,
    the run's of float32) is matched by its files, not refused as other weights."""
    from crosslens.activations import ActivationStore

    out, _ = streamed
    store = tmp_path / "store"
    harvest = ["harvest", *data_flags(inputs), "--hook", HOOK, "--out", str(store), "--device", "cpu"]
    assert main([*harvest, "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--store", str(store), "--device", "cpu"]) == 0
    assert "explained variance" in capsys.readouterr().out
    manifest = ActivationStore.open(store, verify="none").snapshots
    recorded = json.loads((out / "final" / "cfg.json").read_text())["metadata"]["suite"]["snapshots"]
    assert [r["source"]["digest"] for r in recorded] == [m["source"]["digest"] for m in manifest]
    assert all(r["weights_sha256"] != m["weights_sha256"] for r, m in zip(recorded, manifest))  # dtypes differ


def test_an_eval_store_that_cannot_serve_the_run_is_refused_before_any_model_loads(
    inputs, tmp_path, capsys, monkeypatch
):
    import crosslens.activations.streaming as streaming

    def no_loading(*args, **kwargs):
        raise AssertionError("a snapshot model loaded")

    monkeypatch.setattr(streaming, "load_snapshot", no_loading)
    with pytest.raises(SystemExit) as exited:
        main(stream_flags(inputs, tmp_path / "run", "--eval-store", str(tmp_path / "nope")))
    assert exited.value.code == 2
    assert "--eval-store" in capsys.readouterr().err


def test_an_eval_store_of_other_weights_under_the_same_names_is_refused_before_any_model_loads(
    inputs, tmp_path, capsys, monkeypatch
):
    """A store of a suite with the same revisions and steps but other models (step10 retrained from
    another seed) is refused by its files' identities before training, not after it."""
    import crosslens.activations.streaming as streaming

    other = _write_suite(tmp_path / "other", seeds=[0, 5, 2])
    store = tmp_path / "store"
    flags = ["--suite", str(other), "--text", str(inputs[1]), "--n-tokens", "64", "--seq-len", "16"]
    assert main(["harvest", *flags, "--hook", HOOK, "--out", str(store), "--device", "cpu"]) == 0

    def no_loading(*args, **kwargs):
        raise AssertionError("a snapshot model loaded")

    monkeypatch.setattr(streaming, "load_snapshot", no_loading)
    capsys.readouterr()
    err = one_line_exit_2(stream_flags(inputs, tmp_path / "run", "--eval-store", str(store)), capsys)
    assert f"--eval-store {store} holds other snapshots than the streamed ones (snapshot step10 has other " in err
    assert f"`crosslens harvest --suite {inputs[0]} --steps 0,10,20 --hook {HOOK}`" in err
    assert not (tmp_path / "run").exists()


def test_the_heldout_harvest_waits_for_the_background_one(inputs, tmp_path, monkeypatch):
    """While a chunk harvests aside, the held-out rows go through the same resident models
    (``provider.models()``, which waits for it) after that harvest, never beside it."""
    import threading
    import time

    from crosslens.activations import streaming as provider_module
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.training import streaming as runner_module
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig

    lock, running, overlaps = threading.Lock(), [0], []
    original = provider_module.harvest_rows

    def harvest(*args, slow: bool, **kwargs):
        with lock:
            running[0] += 1
            overlaps.append(running[0] > 1)
        try:
            if slow and threading.current_thread() is not threading.main_thread():  # the harvest aside
                time.sleep(1.0)
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(runner_module, "chunk_seqs_for", lambda seq_len: 2)  # several chunks an epoch
    monkeypatch.setattr(provider_module, "harvest_rows", lambda *a, **k: harvest(*a, slow=True, **k))
    monkeypatch.setattr(runner_module, "harvest_rows", lambda *a, **k: harvest(*a, slow=False, **k))
    tokens_NL = torch.randint(2, len(WORDS) + 2, (32, 16), generator=torch.Generator().manual_seed(0))
    config = CrosscoderRunnerConfig(
        store_path="",
        out_dir=str(tmp_path / "run"),
        hook_name=HOOK,
        sae=ArchitectureConfig(d_sae=16),
        n_steps=2,
        train_batch_size_tokens=16,
        checkpoint_every=0,
        progress=False,
    )
    runner = StreamingTrainingRunner(
        config, CheckpointSuite.local(inputs[0]), tokens_NL[:24], tokens_NL[24:], {"note": "api"}
    )
    try:
        runner.run(resume=False, overwrite=True)
        # the run prefetched nothing past its last step: a stream read on past it harvests aside
        assert runner.provider._pending is None
        next(runner.provider.batches(2))
        assert runner.provider._pending is not None, "no chunk harvesting aside"
        heldout = runner.heldout_activations()
    finally:
        runner.close()
    assert heldout is not None and heldout.acts_NSD.shape[1] == 3
    assert len(overlaps) > 3 and not any(overlaps)
