"""Which snapshots ``--suite``/``--steps``/``--n-snapshots`` select, and ``crosslens suite list``:
more snapshots than a suite lists is refused (never quietly fewer), pico lists like any suite,
and a path that does not exist is named as one."""

from __future__ import annotations

import os

import pytest
from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite
from trust_fixtures import one_line_exit_2

from crosslens.checkpoints import CheckpointSuite
from crosslens.cli import main
from crosslens.cli.common import CLIError, resolve_suite
from crosslens.pico import PicoConfig
from crosslens.pico.config import default_root

HOOK = "blocks.0.hook_resid_post"
PICO_STEPS = PicoConfig().checkpoint_steps


@pytest.fixture(scope="module")
def local_suite(tmp_path_factory):
    """A local suite of three tiny GPT-NeoX snapshots (steps 0, 10, 100)."""
    root = tmp_path_factory.mktemp("local") / "suite"
    return write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in (0, 10, 100)}, make_word_tokenizer())


def test_harvest_refuses_more_pico_snapshots_than_listed_before_building(tmp_path, capsys):
    out = tmp_path / "store"
    err = one_line_exit_2(
        [
            "harvest",
            "--suite",
            "pico",
            "--n-snapshots",
            "100",
            "--hook",
            HOOK,
            "--n-tokens",
            "200",
            "--seq-len",
            "16",
            "--out",
            str(out),
        ],
        capsys,
    )
    n = len(PICO_STEPS)
    assert err.startswith("crosslens harvest: error: --n-snapshots 100:")
    assert f"lists {n} snapshots" in err and f"--n-snapshots {n} or fewer" in err and "crosslens suite list pico" in err
    assert not out.exists()
    assert not default_root(PicoConfig()).exists()  # refused without training the suite first


def test_train_stream_refuses_the_same_selection(tmp_path, capsys):
    err = one_line_exit_2(
        [
            "train",
            "--stream",
            "--suite",
            "pico",
            "--n-snapshots",
            "100",
            "--hook",
            HOOK,
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert "--n-snapshots 100" in err and f"--n-snapshots {len(PICO_STEPS)} or fewer" in err


def test_a_local_suite_refuses_more_snapshots_than_it_holds(local_suite, tmp_path, capsys):
    err = one_line_exit_2(
        [
            "harvest",
            "--suite",
            str(local_suite),
            "--n-snapshots",
            "5",
            "--hook",
            HOOK,
            "--out",
            str(tmp_path / "store"),
        ],
        capsys,
    )
    assert "--n-snapshots 5" in err and "lists 3 snapshots" in err and "--n-snapshots 3 or fewer" in err
    assert list(resolve_suite(str(local_suite), n_snapshots=3).steps) == [0, 10, 100]
    assert list(resolve_suite(str(local_suite), n_snapshots=2).steps) == [0, 100]
    with pytest.raises(CLIError, match=r"--n-snapshots 3: --steps picks 2 snapshots; pass --n-snapshots 2 or fewer"):
        resolve_suite(str(local_suite), steps=[0, 10], n_snapshots=3)
    with pytest.raises(CLIError, match=r"--steps: step7 is not among the 3 snapshots .*nearest: step0, step10"):
        resolve_suite(str(local_suite), steps=[0, 7])


def test_library_select_refuses_more_snapshots_than_the_suite_holds():
    """The recipe paths of harvest and train --stream select on the suite directly."""
    suite = CheckpointSuite.pythia("EleutherAI/pythia-160m", steps=[0, 1000, 2000])
    with pytest.raises(ValueError, match=r"5 snapshots asked for .*holds 3; ask for 3 or fewer"):
        suite.select(n=5)
    assert suite.select(n=3).steps == (0, 1000, 2000)


def test_pico_selection_is_checked_on_its_listed_steps_without_a_build():
    from crosslens.cli.common import pico_listing, select_snapshots

    listed, built = pico_listing()
    assert not built and listed.steps == PICO_STEPS
    picked = select_snapshots(listed, None, 4, "pico")
    assert len(picked) == 4 and picked.steps[0] == PICO_STEPS[0] and picked.steps[-1] == PICO_STEPS[-1]
    with pytest.raises(CLIError, match=r"--steps: step7 is not among the 21 snapshots of pico"):
        select_snapshots(listed, [0, 7], None, "pico")


def test_suite_list_pico_lists_its_snapshots(capsys):
    assert main(["suite", "list", "pico"]) == 0
    lines = capsys.readouterr().out.splitlines()
    revisions = [line for line in lines if not line.startswith("#")]
    assert revisions == [f"step{s}" for s in PICO_STEPS]
    assert any("not built yet" in line for line in lines if line.startswith("#"))
    assert not default_root(PicoConfig()).exists()


def test_suite_list_of_a_local_folder(local_suite, capsys):
    assert main(["suite", "list", str(local_suite)]) == 0
    assert capsys.readouterr().out.split() == ["step0", "step10", "step100"]


@pytest.mark.parametrize("path", ["/nope", "./nope", "../no/such", "~/no-such-crosslens-suite", f"a{os.sep}b{os.sep}c"])
def test_suite_list_of_a_missing_path_says_so(path, capsys):
    err = one_line_exit_2(["suite", "list", path], capsys)
    assert err.startswith(f"crosslens suite list: error: {path}: the path does not exist")
    assert "hub" not in err and "HF_HUB_OFFLINE" not in err


def test_suite_list_of_an_owner_name_is_still_a_hub_id(offline_hf_home, capsys):
    err = one_line_exit_2(["suite", "list", "nobody/nothing"], capsys)
    assert "does not exist" not in err and "nobody/nothing" in err
