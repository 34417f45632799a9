"""``crosslens plan`` refuses what harvest and train refuse: more snapshots than the suite
lists, a step it does not list, a hook the model does not have, a mesh whose data axis does
not divide the batch. It stays offline and builds nothing."""

from __future__ import annotations

import json

import pytest
from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite
from trust_fixtures import one_line_exit_2

from crosslens.cli import main
from crosslens.pico import PicoConfig
from crosslens.pico.config import default_root
from crosslens.training.sizing import default_mesh

HOOK = "blocks.0.hook_resid_post"
RECIPE = "ge2025-pythia-160m"


def plan_json(argv, capsys) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def local_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("local") / "suite"
    return write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in (0, 10, 100)}, make_word_tokenizer())


def test_plan_refuses_more_pico_snapshots_than_listed_as_harvest_does(tmp_path, capsys):
    n = len(PicoConfig().checkpoint_steps)
    err = one_line_exit_2(["plan", "--suite", "pico", "--hook", HOOK, "--n-snapshots", "100"], capsys)
    assert "--n-snapshots 100" in err and f"--n-snapshots {n} or fewer" in err
    harvest = one_line_exit_2(
        ["harvest", "--suite", "pico", "--hook", HOOK, "--n-snapshots", "100", "--out", str(tmp_path / "s")], capsys
    )
    assert err.split("error: ", 1)[1] == harvest.split("error: ", 1)[1]
    assert plan_json(["--suite", "pico", "--hook", HOOK, "--n-snapshots", str(n)], capsys)["inputs"]["n_snapshots"] == n
    assert not default_root(PicoConfig()).exists()  # planning builds nothing


def test_plan_refuses_steps_the_suite_does_not_list(local_suite, capsys):
    err = one_line_exit_2(["plan", "--suite", "pico", "--hook", HOOK, "--steps", "0,7"], capsys)
    assert "--steps" in err and "step7" in err and "nearest" in err and "crosslens suite list pico" in err
    err = one_line_exit_2(["plan", "--suite", "EleutherAI/pythia-160m", "--hook", HOOK, "--steps", "0,7"], capsys)
    assert "--steps" in err and "step7" in err and "154 snapshots" in err
    err = one_line_exit_2(["plan", "--suite", str(local_suite), "--hook", HOOK, "--steps", "0,50"], capsys)
    assert "--steps" in err and "step50" in err
    plan = plan_json(["--suite", str(local_suite), "--hook", HOOK, "--steps", "0,100"], capsys)
    assert plan["inputs"]["n_snapshots"] == 2 and plan["inputs"]["n_layers"] == 2
    err = one_line_exit_2(["plan", "--suite", str(local_suite), "--hook", HOOK, "--n-snapshots", "4"], capsys)
    assert "--n-snapshots 4" in err and "lists 3 snapshots" in err


def test_plan_refuses_a_recipe_selection_its_steps_do_not_hold(capsys):
    err = one_line_exit_2(["plan", "--recipe", RECIPE, "--n-snapshots", "100"], capsys)
    assert "--n-snapshots 100" in err and f"recipe {RECIPE} lists 32 snapshots" in err
    err = one_line_exit_2(["plan", "--recipe", RECIPE, "--steps", "0,7"], capsys)
    assert "--steps" in err and "step7" in err
    assert plan_json(["--recipe", RECIPE, "--n-snapshots", "8"], capsys)["inputs"]["n_snapshots"] == 8


@pytest.mark.parametrize("suite", ["pico", "EleutherAI/pythia-160m", "allenai/OLMo-1B-0724-hf"])
def test_plan_refuses_a_name_that_is_no_hook(suite, capsys):
    err = one_line_exit_2(["plan", "--suite", suite, "--hook", "nonsense", "--n-snapshots", "2"], capsys)
    assert "--hook 'nonsense' is not a TransformerLens hook name" in err


def test_plan_refuses_a_block_the_model_does_not_have(capsys):
    err = one_line_exit_2(
        ["plan", "--suite", "EleutherAI/pythia-160m", "--hook", "blocks.40.hook_resid_post", "--n-snapshots", "2"],
        capsys,
    )
    assert "--hook" in err and "block 40" in err and "12" in err
    err = one_line_exit_2(["plan", "--recipe", RECIPE, "--hook", "blocks.0.nonsense"], capsys)
    assert "--hook 'blocks.0.nonsense' is not a TransformerLens hook name" in err


def test_a_hub_suite_not_listed_offline_is_still_sized_from_the_table(capsys):
    plan = plan_json(
        ["--suite", "allenai/OLMo-1B-0724-hf", "--hook", "blocks.3.mlp.hook_post", "--n-snapshots", "40"], capsys
    )
    assert plan["inputs"]["n_snapshots"] == 40 and plan["inputs"]["d_in"] == plan["inputs"]["d_model"] * 4


def test_without_a_snapshot_choice_plan_counts_every_listed_snapshot_as_harvest_takes_them(local_suite, capsys):
    """harvest and train --stream take all of a suite's snapshots when no --steps or
    --n-snapshots picks some; plan sizes that same run where the suite is listed offline, and asks
    for the count only where the hub alone lists the suite."""
    assert plan_json(["--hook", HOOK], capsys)["inputs"]["n_snapshots"] == len(PicoConfig().checkpoint_steps)
    assert plan_json(["--suite", str(local_suite), "--hook", HOOK], capsys)["inputs"]["n_snapshots"] == 3
    # a recipe with another --suite: that suite's snapshots, all of them, as harvest takes them
    recipe_on_pico = ["--recipe", RECIPE, "--suite", "pico", "--hook", HOOK]
    assert plan_json(recipe_on_pico, capsys)["inputs"]["n_snapshots"] == len(PicoConfig().checkpoint_steps)
    err = one_line_exit_2(["plan", "--suite", "allenai/OLMo-1B-0724-hf", "--hook", "blocks.3.mlp.hook_post"], capsys)
    assert "plan cannot list the snapshots of allenai/OLMo-1B-0724-hf here (offline); pass --n-snapshots N" in err
    assert not default_root(PicoConfig()).exists()  # planning builds nothing


def test_plan_refuses_a_mesh_whose_data_axis_does_not_divide_the_batch(capsys):
    err = one_line_exit_2(["plan", "--recipe", RECIPE, "--mesh", "3x3"], capsys)
    assert err.startswith("crosslens plan: error: --mesh 3x3:") and "--batch-size" in err
    assert "--mesh 1x9" in err  # the same 9 ranks, a data axis of 1 divides any batch
    err = one_line_exit_2(
        ["plan", "--suite", "pico", "--hook", HOOK, "--n-snapshots", "4", "--mesh", "3x1", "--batch-size", "4096"],
        capsys,
    )
    assert "--mesh 3x1" in err and "--batch-size 4095" in err
    plan = plan_json(
        ["--recipe", RECIPE, "--mesh", "2x3"], capsys
    )  # 32 snapshots over 3 ranks: uneven, as train allows
    assert (
        plan["mesh"]["batch_per_rank"] * 2 == plan["inputs"]["batch_size"] and plan["mesh"]["snapshots_per_rank"] == 11
    )


def test_the_default_mesh_keeps_the_batch_divisible(capsys):
    assert default_mesh(6, 32) == (3, 2)
    assert default_mesh(6, 32, batch_size=4096) == (1, 6)
    plan = plan_json(["--recipe", RECIPE, "--world-size", "6", "--snapshot-parallel", "3"], capsys)
    assert plan["inputs"]["batch_size"] % plan["mesh"]["data"] == 0 and plan["mesh"]["world_size"] == 6


@pytest.mark.parametrize("hook", ["nonsense", "blocks.0.hook_nonsense"])
def test_plan_and_harvest_refuse_a_hook_in_the_same_words(hook, local_suite, tmp_path, capsys):
    plan = one_line_exit_2(["plan", "--suite", str(local_suite), "--hook", hook, "--n-snapshots", "2"], capsys)
    harvest = one_line_exit_2(
        ["harvest", "--suite", str(local_suite), "--hook", hook, "--out", str(tmp_path / "s")], capsys
    )
    assert plan.split("error: ", 1)[1] == harvest.split("error: ", 1)[1]


def test_a_world_size_no_mesh_of_which_divides_the_batch_names_the_flags_given(capsys):
    err = one_line_exit_2(
        ["plan", "--suite", "pico", "--hook", HOOK, "--n-snapshots", "2", "--world-size", "6", "--batch-size", "4096"],
        capsys,
    )
    assert err.startswith("crosslens plan: error: --world-size 6 with --snapshot-parallel 1:") and "--mesh" not in err
    assert err.endswith("pass --batch-size 4092")  # no snapshot axis of 2 snapshots leaves a data axis dividing 4096
    err = one_line_exit_2(["plan", "--recipe", RECIPE, "--world-size", "6"], capsys)
    assert err.endswith("pass --snapshot-parallel 3 or --batch-size 2046")


def test_one_checkpoint_folder_is_sized_as_given(tmp_path, capsys):
    folder = tmp_path / "one"
    tiny_neox(seed=0).save_pretrained(folder)
    plan = plan_json(["--suite", str(folder), "--hook", HOOK, "--n-snapshots", "2"], capsys)
    assert plan["inputs"]["n_snapshots"] == 2
