"""The ``crosslens`` command line: every subcommand answers --help, and the cheap ones run."""

from __future__ import annotations

import pytest

from crosslens.cli import build_parser, main, resolve_suite

SUBCOMMANDS = [
    ["demo"],
    ["suite", "build"],
    ["suite", "list"],
    ["harvest"],
    ["train"],
    ["analyze"],
    ["attribute"],
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


def test_suite_list_prints_pythia_revisions_offline(offline_hf_home, capsys):
    assert main(["suite", "list", "EleutherAI/pythia-160m"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[:3] == ["step0", "step1", "step2"]
    assert lines[-1] == "step143000" and len(lines) == 154


def test_resolve_suite_dispatches_on_family(fake_hub):
    suite = resolve_suite("EleutherAI/pythia-14m", steps=[0, 1000])
    assert suite.family == "pythia" and list(suite.steps) == [0, 1000]
    assert resolve_suite("allenai/OLMo-1B-hf").family == "olmo"
    with pytest.raises(SystemExit, match="cannot tell which family"):
        resolve_suite("gpt2")


def test_train_rejects_an_unknown_architecture(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--store", "s", "--out", "o", "--arch", "relu"])
    assert "invalid choice" in capsys.readouterr().err
