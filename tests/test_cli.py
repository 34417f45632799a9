"""The ``crosslens`` command line: every subcommand answers --help, and the cheap ones run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crosslens.cli import build_parser, main
from crosslens.cli.common import CLIError, resolve_suite

SUBCOMMANDS = [
    ["demo"],
    ["suite", "build"],
    ["suite", "list"],
    ["harvest"],
    ["train"],
    ["analyze"],
    ["report"],
    ["evaluate"],
    ["attribute"],
    ["explain"],
    ["pretrained", "list"],
    ["pretrained", "show"],
    ["push"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w))
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: crosslens " + " ".join(words))


LIMIT = 16
SHARE = 0.25


@dataclasses.dataclass
class _Documented:
    rows: int = 1
    """Rows read (at most {LIMIT}, {SHARE:.0%} of them held out; {causal.defaults.TOP_K} kept)."""


@dataclasses.dataclass
class _Misnamed:
    rows: int = 1
    """Rows read (at most {LIMITS})."""


def test_a_field_docstring_shows_the_constants_it_names():
    """A flag's help says the number the code reads: a constant named in braces in a field's
    docstring is replaced by its value, from the field's module or a named module of crosslens."""
    from crosslens.causal.defaults import TOP_K
    from crosslens.cli.flags import field_docs

    assert field_docs(_Documented)["rows"] == f"Rows read (at most 16, 25% of them held out; {TOP_K} kept)."
    with pytest.raises(NameError, match="_Misnamed names LIMITS, which .*test_cli lacks"):
        field_docs(_Misnamed)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w))
def test_no_help_shows_a_constant_by_name(words, capsys):
    import re

    with pytest.raises(SystemExit):
        main([*words, "--help"])
    assert not re.search(r"\{[a-z_.]*[A-Z][A-Z0-9_]*(:[^{}]*)?\}", capsys.readouterr().out)


def test_help_shows_the_defaults_the_code_reads(capsys):
    """The numbers the harvest and training flags' help spell out are the constants the code uses."""
    from crosslens.activations.budget import DEFAULT_HELDOUT_PERCENT, MAX_DEFAULT_HELDOUT_TOKENS
    from crosslens.architectures import defaults_for
    from crosslens.training.config import CHECKPOINTS_PER_RUN, MIN_CHECKPOINT_STEPS

    def help_of(*words: str) -> str:
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert f"(default: {DEFAULT_HELDOUT_PERCENT}% of --n-tokens, at most {MAX_DEFAULT_HELDOUT_TOKENS};" in help_of(
        "harvest"
    )
    train = help_of("train")
    assert (
        f"about {CHECKPOINTS_PER_RUN} a run (n_steps // {CHECKPOINTS_PER_RUN}), at least {MIN_CHECKPOINT_STEPS}"
        in train
    )
    jumprelu = defaults_for("jumprelu_crosscoder")
    assert f"jumprelu_crosscoder {jumprelu.resample_dead}," in train
    assert f"jumprelu_crosscoder {jumprelu.sparsity_warm_up:.0%}," in train


def test_suite_list_prints_pythia_revisions_offline(offline_hf_home, capsys):
    assert main(["suite", "list", "EleutherAI/pythia-160m"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[:3] == ["step0", "step1", "step2"]
    assert lines[-1] == "step143000" and len(lines) == 154


def test_resolve_suite_dispatches_on_family(fake_hub):
    suite = resolve_suite("EleutherAI/pythia-14m", steps=[0, 1000])
    assert suite.family == "pythia" and list(suite.steps) == [0, 1000]
    assert resolve_suite("allenai/OLMo-1B-hf").family == "olmo"
    with pytest.raises(CLIError, match="cannot tell which family"):
        resolve_suite("gpt2")


def test_train_rejects_an_unknown_architecture(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--store", "s", "--out", "o", "--arch", "relu"])
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------- errors: one line, exit 2
def one_line_error(argv, capsys, lines: int = 1) -> str:
    """Run the CLI expecting an error: exit status 2, no traceback, ``lines`` lines on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == lines, err
    assert "Traceback" not in err
    return err


def test_a_flag_parser_refusing_a_value_keeps_its_message(tmp_path, capsys):
    """argparse reports a ``type`` that raises ValueError as "invalid <name> value", dropping the
    message and its fix; the flags' parsers keep theirs."""
    err = one_line_error(["explain", str(tmp_path), "--dry-run", "--features", "abc"], capsys, lines=2)
    assert err.splitlines()[0] == (
        "crosslens explain: error: argument --features: 'abc': write feature ids and ranges such as 3,10-20"
    )


def test_dashboards_refuses_the_stream_flags_without_stream(tmp_path, capsys):
    """Without --stream the run's store holds the tokens: a suite, snapshot or token flag would be
    silently ignored, so it is refused, as train refuses it; --n-tokens is not, as it caps the
    tokens the pass reads from the store (test_dashboards.py computes with it)."""
    err = one_line_error(["dashboards", str(tmp_path), "--steps", "0,8", "--n-tokens", "64"], capsys)
    assert err == (
        "crosslens dashboards: error: --steps chooses the tokens and snapshots --stream harvests; "
        "add --stream, or drop it (the run's store already holds its tokens)"
    )


def test_evaluate_refuses_spliced_settings_without_the_spliced_loss(tmp_path, capsys):
    err = one_line_error(
        ["evaluate", str(tmp_path), "--store", str(tmp_path), "--spliced-seqs", "5", "--spliced-ablation", "mean"],
        capsys,
    )
    assert (
        err == "crosslens evaluate: error: --spliced-ablation, --spliced-seqs set the spliced loss: add --spliced-loss"
    )
    # 0 rows measure nothing, with --spliced-loss or without: the advice names both ways out
    zero = "crosslens evaluate: error: --spliced-seqs 0 measures no spliced loss: drop it, or pass --spliced-loss with 1 or more rows"
    for extra in ([], ["--spliced-loss"]):
        args = ["evaluate", str(tmp_path), "--store", str(tmp_path), "--spliced-seqs", "0", *extra]
        assert one_line_error(args, capsys) == zero


def test_demo_and_suite_build_refuse_an_output_path_that_is_a_file_or_a_store(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = one_line_error(["demo", "--fast", "--out", str(a_file)], capsys)
    assert err.endswith(f"--out {a_file} is a file, not a folder; pass a folder path for the demo's stores and runs")
    err = one_line_error(["suite", "build", "--small", "--root", str(a_file)], capsys)
    assert err.endswith(f"--root {a_file} is a file, not a folder; pass a folder path for the suite's checkpoints")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{}")
    err = one_line_error(["demo", "--fast", "--out", str(tmp_path / "store")], capsys)
    assert err.endswith(
        f"{tmp_path / 'store'} is an activation store (it holds manifest.json); pass a folder of its own for the demo (--out)"
    )
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["manifest.json"]  # nothing written


def test_export_refuses_an_unknown_device_before_reading_the_run(tmp_path, capsys):
    argv = [
        "export",
        str(tmp_path / "no-run"),
        "--format",
        "saebench",
        "--out",
        str(tmp_path / "x"),
        "--device",
        "nope",
    ]
    err = one_line_error(argv, capsys)
    assert err == "crosslens export: error: unknown device 'nope'; use one of cpu, cuda, cuda:N or mps (--device)"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("fmt", "flag", "reader"),
    [
        ("saebench", ["--n-splits", "3"], "delphi"),
        ("delphi", ["--model-id", "pythia-14m"], "neuronpedia"),
        ("neuronpedia", ["--batch-size", "64"], "delphi"),
        ("saebench", ["--features-per-batch", "8"], "neuronpedia"),
    ],
)
def test_export_refuses_a_flag_of_another_format_before_reading_the_run(tmp_path, capsys, fmt, flag, reader):
    """A flag only another format reads would be dropped without a word: refused, naming it and
    its format, before the run is read or anything written."""
    out = tmp_path / "x"
    err = one_line_error(["export", str(tmp_path / "no-run"), "--format", fmt, "--out", str(out), *flag], capsys)
    assert err == (
        f"crosslens export: error: {flag[0]} is read only by the {reader} export, not by {fmt}; "
        f"drop it, or pass --format {reader}"
    )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_run_refuses_an_option_of_another_format(tmp_path):
    from crosslens.exports import ExportError, export_run

    with pytest.raises(
        ExportError,
        match=r"^n_splits is read only by the delphi export, not by saebench; drop it, or pass format delphi$",
    ):
        export_run(tmp_path / "no-run", format="saebench", out=tmp_path / "out", n_splits=3)
    assert sorted(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_read_is_named_as_a_file(tmp_path, capsys):
    from crosslens.activations import ActivationStore

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = one_line_error(
        ["harvest", "--suite", str(a_file), "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "o")], capsys
    )
    assert err.endswith(f"local suite folder {a_file} is a file, not a folder; pass the folder holding the snapshots")
    with pytest.raises(
        FileNotFoundError, match=r"is a file, not an activation store \(a folder\); pass a store's folder"
    ):
        ActivationStore.open(a_file)


def test_pretrained_run_names_out_when_out_is_taken(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = one_line_error(["pretrained", "run", "some-release", "--out", str(a_file)], capsys)
    assert err.endswith(f"--out {a_file} is a file, not a folder; pass a folder path for the run")
    err = one_line_error(["pretrained", "run", "some-release", "--out", str(tmp_path)], capsys)
    assert err.endswith(f"--out {tmp_path} exists; pick another folder, or pass --overwrite to replace it")


def test_a_diffing_suite_model_written_as_a_folder_must_be_one(tmp_path, capsys):
    """Read as a hub id, a missing folder was sent to the hub's download advice."""
    (tmp_path / "base").mkdir()
    hook = ["--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "o")]
    err = one_line_error(["harvest", "--models", f"{tmp_path / 'base'},{tmp_path / 'gone'}", *hook], capsys)
    assert err.endswith(
        f"--models: {tmp_path / 'gone'} does not exist; pass a model's folder (one holding its config.json) or a hub id ORG/NAME"
    )


def test_suite_list_of_an_unknown_repo_is_one_line(offline_hf_home, capsys):
    err = one_line_error(["suite", "list", "foo/bar"], capsys)
    assert err.startswith("crosslens suite list: error:") and "foo/bar" in err


def test_suite_list_of_a_file_says_it_is_not_a_folder(offline_hf_home, capsys, tmp_path):
    """A file is no suite: read as a hub id it was "neither a local folder nor a hub model id"."""
    (tmp_path / "notes.txt").write_text("x")
    err = one_line_error(["suite", "list", str(tmp_path / "notes.txt")], capsys)
    assert err.endswith(f"{tmp_path / 'notes.txt'} is a file, not a folder; pass the folder holding the snapshots")


def test_a_suite_path_that_does_not_exist_says_so(capsys, tmp_path):
    err = one_line_error(
        ["harvest", "--suite", "/no/such/path", "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "--suite /no/such/path: the path does not exist" in err and "family" not in err
    err = one_line_error(
        ["harvest", "--suite", "someone/gpt2", "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "--suite someone/gpt2: no such local folder, and cannot tell which family" in err


@pytest.mark.parametrize(
    "command", [["analyze", "--crosscoder"], ["attribute", "--crosscoder"], ["evaluate"], ["report"]]
)
def test_a_crosscoder_path_that_does_not_exist_says_so(command, capsys, tmp_path):
    extra = ["--store", str(tmp_path)] if command == ["evaluate"] else []
    err = one_line_error([*command, "/no/such/path", *extra], capsys)
    assert "/no/such/path: the path does not exist" in err
    assert ("--crosscoder" in err) == ("--crosscoder" in command)


def test_a_folder_without_a_crosscoder_is_refused_naming_the_flag(capsys, tmp_path):
    err = one_line_error(["analyze", "--crosscoder", str(tmp_path)], capsys)
    assert "--crosscoder" in err and "no trained crosscoder" in err


@pytest.mark.parametrize(
    "hook, problem",
    [
        ("blocks.9.hook_resid_post", "names block 9, but the model has blocks 0..1"),
        ("blocks.0.resid", "not a TransformerLens hook"),
    ],
)
def test_an_unknown_hook_is_refused_before_any_model_loads(fake_hub, capsys, tmp_path, monkeypatch, hook, problem):
    from crosslens.checkpoints import CheckpointSuite

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the hook was checked")

    monkeypatch.setattr(CheckpointSuite, "load", no_loading)
    out = tmp_path / "store"
    err = one_line_error(["harvest", "--suite", "EleutherAI/pythia-14m", "--hook", hook, "--out", str(out)], capsys)
    assert err.startswith("crosslens harvest: error: --hook") and problem in err
    assert not out.exists() and not Path(str(out) + "-heldout").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["suite", "build", "--d-model", "0"], "--d-model"),
        (["suite", "build", "--n-layers", "-1"], "--n-layers"),
        (["suite", "build", "--train-steps", "0"], "--train-steps"),
        (["suite", "build", "--checkpoints", "3"], "--checkpoints"),
        (["suite", "build", "--batch-size", "0"], "--batch-size"),
        (["harvest", "--hook", "blocks.0.hook_resid_post", "--out", "o", "--heldout-tokens", "-1"], "--heldout-tokens"),
        (["train", "--store", "s", "--out", "o", "--d-sae", "0"], "--d-sae"),
        (["train", "--store", "s", "--out", "o", "--n-steps", "-5"], "--n-steps"),
    ],
)
def test_zero_or_negative_sizes_name_their_flag(argv, flag, capsys):
    err = one_line_error(argv, capsys, lines=2)  # the error, then where --help is
    assert f"argument {flag}: must be >=" in err.splitlines()[0]


def test_suite_build_names_the_flag_when_the_sizes_clash(capsys):
    err = one_line_error(["suite", "build", "--d-model", "30", "--n-heads", "4"], capsys)
    assert "--d-model=30 must be divisible by n_heads=4" in err and "PicoConfig" not in err
    err = one_line_error(["suite", "build", "--small", "--long"], capsys)  # not one of them dropped
    assert err == "crosslens suite build: error: --small and --long name two configurations; pass one of them"


def test_a_shipped_task_refuses_fewer_than_one_pair_whatever_its_kind():
    from crosslens.tasks import get_task

    for name in ("agreement_pp", "agreement_multilingual_en"):
        with pytest.raises(ValueError, match=rf"^{name}: n must be at least 1, got -1$"):
            get_task(name, n=-1)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(CLIError):
        main(["--debug", "analyze", "--crosscoder", "/no/such/path"])
    with pytest.raises(CLIError):
        main(["analyze", "--crosscoder", "/no/such/path", "--debug"])


def test_help_imports_neither_transformer_lens_nor_sae_lens():
    code = (
        "import sys\n"
        "from crosslens.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for sub in (['harvest', '--help'], ['suite', 'build', '--help'], ['attribute', '--help']):\n"
        "    try:\n        main(sub)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('transformer_lens', 'sae_lens', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------- suite build --root
TINY_BUILD = [
    "--n-layers",
    "1",
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--train-steps",
    "16",
    "--checkpoints",
    "16",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
]


def test_suite_build_root_keeps_a_custom_suite(tmp_path, capsys, monkeypatch):
    from crosslens.pico import pico_suite
    from crosslens.pico.config import default_root, is_built
    from crosslens.pico.train import PicoConfig

    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    root = tmp_path / "my_suite"
    assert main(["suite", "build", "--root", str(root), *TINY_BUILD]) == 0
    built = json.loads((root / "suite.json").read_text())["build"]["config_hash"]
    capsys.readouterr()

    # No flags: the suite at --root is used as it is (it is not the default config).
    assert main(["suite", "build", "--root", str(root)]) == 0
    assert "(cached build; --force rebuilds)" in capsys.readouterr().out
    # pico_suite(root=...) without a config takes it too.
    assert len(pico_suite(root=root, build_if_missing=False).steps) == 17
    # --force rebuilds it with the settings it was built with, never the default suite.
    assert main(["suite", "build", "--root", str(root), "--force"]) == 0
    assert json.loads((root / "suite.json").read_text())["build"]["config_hash"] == built
    assert not is_built(default_root(PicoConfig()))
    capsys.readouterr()
    # Other flags without --force: one line naming --force and --root.
    err = one_line_error(["suite", "build", "--root", str(root), "--d-model", "32"], capsys)
    assert "--force" in err and "--root" in err and "force=True" not in err


def test_suite_build_refuses_a_root_holding_a_suite_it_did_not_build(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    root = tmp_path / "mine"
    (root / "step0").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (root / "step0" / name).write_text("{}")
    (root / "suite.json").write_text(json.dumps({"model_id": "me/model", "snapshots": [{"revision": "step0"}]}))
    (root / "NOTES.txt").write_text("keep me")
    for extra in ([], ["--force"], [*TINY_BUILD, "--force"]):
        err = one_line_error(["suite", "build", "--root", str(root), *extra], capsys)
        assert f"--root {root} holds files but no pico suite" in err and "choose another --root" in err, err
        assert "add --force" not in err and "KeyError" not in err, err
        assert (root / "NOTES.txt").read_text() == "keep me" and (root / "step0" / "config.json").is_file()


def test_harvest_takes_a_text_file_given_as_dataset(tmp_path):
    from crosslens.cli.harvest import harvest_config

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One document.\n\nAnother one.\n")
    args = build_parser().parse_args(
        ["harvest", "--hook", "blocks.0.hook_resid_post", "--out", "o", "--dataset", str(corpus)]
    )
    assert harvest_config(args).tokens.resolve() == ("text", [str(corpus)])
    args = build_parser().parse_args(
        ["harvest", "--hook", "blocks.0.hook_resid_post", "--out", "o", "--text", str(tmp_path)]
    )
    assert harvest_config(args).tokens.resolve() == ("text", [str(tmp_path)])
    args = build_parser().parse_args(
        ["harvest", "--hook", "blocks.0.hook_resid_post", "--out", "o", "--dataset", "wikitext:text"]
    )
    assert harvest_config(args).tokens.resolve() == ("dataset", "wikitext:text")


def test_suite_build_flags_show_and_set_the_pico_config_fields(capsys):
    """Each ``suite build`` flag that names a PicoConfig field in its metadata is the flag the
    command maps onto that field, and its help shows that field's default."""
    import dataclasses

    from crosslens.cli.suite import BUILD_FLAGS, SuiteBuildFlags
    from crosslens.pico.config import PicoConfig

    shown = {
        f.name: f.metadata["default_from"] for f in dataclasses.fields(SuiteBuildFlags) if "default_from" in f.metadata
    }
    assert {flag: name for flag, (_, name) in shown.items()} == BUILD_FLAGS
    assert all(owner is PicoConfig for owner, _ in shown.values())
    with pytest.raises(SystemExit):
        main(["suite", "build", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"Optimizer steps. (default: {PicoConfig().n_steps})" in help_text
    assert f"Residual width (the MLP is 4x this). (default: {PicoConfig().d_model})" in help_text


def test_version_prints_the_package_version(capsys):
    import re

    import crosslens

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)[1]
    assert capsys.readouterr().out == f"crosslens {version}\n" and crosslens.__version__ == version
