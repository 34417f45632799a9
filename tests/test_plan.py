"""``crosslens plan``, the table of known models and the shipped recipes."""

from __future__ import annotations

import json

import pytest
from trust_fixtures import one_line_exit_2

from crosslens.checkpoints.schedules import PYTHIA_STEPS
from crosslens.checkpoints.shape import ModelShape, estimate_n_params
from crosslens.cli import build_parser, main
from crosslens.cli.train import train_config
from crosslens.core.units import format_bytes
from crosslens.training.model_sizes import PlanError, known_model, model_shape_for
from crosslens.training.recipes import list_recipes, load_recipe
from crosslens.training.sizing import PlanConfig, crosscoder_flops, default_mesh, make_plan, plan_config_from_recipe

TINY = ModelShape(name="tiny", d_model=8, n_layers=2, d_mlp=32, vocab=100, n_params=2000)


def _tiny(**kw) -> PlanConfig:
    values = dict(
        model=TINY,
        n_snapshots=4,
        hook="blocks.1.hook_resid_post",
        n_tokens=1024,
        d_sae=16,
        architecture="jumprelu_crosscoder",
        batch_size=8,
        n_steps=1000 // 8,
        seq_len=16,
        heldout_tokens=0,
        device="cuda",
        tflops=1.0,
        link_gbps=1.0,
    )
    values.update(kw)
    return PlanConfig(**values)


def test_small_plan_matches_hand_computation():
    plan = make_plan(_tiny())
    # S=4, D=8, F=16, B=8: W_enc 4*8*16 + W_dec 16*4*8 + b_dec 4*8 + b_enc 16 + threshold 16
    assert plan["parameters"]["per_rank"] == {"W_enc": 512, "W_dec": 512, "b_dec": 32, "b_enc": 16, "threshold": 16}
    mem = plan["memory_bytes"]
    assert mem["parameters"] == 1088 * 4 and mem["adam_state"] == 2 * 1088 * 4
    assert mem["training_state"] == 4 * 1088 * 4
    # 3*B*S*D + 4*B*F floats (JumpReLU's per-snapshot gate is never whole on CUDA)
    assert mem["activations_per_batch"] == 4 * (3 * 8 * 4 * 8 + 4 * 8 * 16)
    assert plan["disk_bytes"]["float16"] == 1024 * 4 * 8 * 2 and plan["disk_bytes"]["float32"] == 1024 * 4 * 8 * 4
    assert plan["flops"]["crosscoder_train_per_token"] == 10 * 4 * 8 * 16
    # params per layer (2000 - 2*100*8) / 2 = 200; to block 1: 2 layers; attention 2*L*ctx*d
    assert plan["flops"]["snapshot_models_forward_per_token"] == 4 * (2 * 2 * 200 + 2 * 2 * 16 * 8)
    assert plan["memory_bytes"]["resident_models_full"] == 4 * 2000 * 4  # float32 models
    assert plan["memory_bytes"]["resident_models_truncated"] == 4 * (100 * 8 + 2 * 200) * 4
    assert plan["communication_bytes"]["sent_per_rank_per_step"] == 0  # one rank
    assert plan["inputs"]["n_steps"] == 1000 // 8
    assert plan["seconds"]["train_from_store"] == pytest.approx(10 * 4 * 8 * 16 * 1000 / 1e12)


def test_small_plan_on_a_2x2_mesh():
    plan = make_plan(_tiny(data_parallel=2, snapshot_parallel=2))
    assert plan["mesh"] == {"data": 2, "snapshot": 2, "world_size": 4, "snapshots_per_rank": 2, "batch_per_rank": 4}
    per_rank = plan["parameters"]["per_rank"]
    assert per_rank == {"W_enc": 256, "W_dec": 256, "b_dec": 16, "b_enc": 16, "threshold": 16}
    comm = plan["communication_bytes"]
    # snapshot axis: [B_rank=4, F=16] float32 forward + backward, plus 3 [F] terms; ring over 2 ranks sends it once
    assert comm["snapshot_axis_payload"] == 2 * 4 * 16 * 4 + 3 * 16 * 4
    assert comm["snapshot_axis_sent_per_rank"] == comm["snapshot_axis_payload"]
    assert comm["data_axis_sent_per_rank"] == 560 * 4
    assert comm["sent_per_rank_total"] == (704 + 2240) * (1000 // 8)
    assert plan["seconds"]["train_from_store"] == pytest.approx(10 * 4 * 8 * 16 * 1000 / 4 / 1e12)
    assert plan["seconds"]["communication"] == pytest.approx((704 + 2240) * 125 / 1e9)


def test_topk_plan_notes_the_sparse_decode():
    plan = make_plan(_tiny(architecture="topk_crosscoder", k=2))
    assert "threshold" not in plan["parameters"]["per_rank"]
    assert plan["flops"]["crosscoder_train_per_token_sparse_decode"] == 4 * 4 * 8 * 16 + 6 * 2 * 4 * 8
    assert crosscoder_flops(4, 8, 16) == 5120


def test_parameter_formula_reproduces_published_totals():
    for name in ("pythia-14m", "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-2.8b", "pythia-12b"):
        m = known_model(name)
        assert estimate_n_params(m.d_model, m.n_layers, m.d_mlp, m.vocab, tied=False) == m.n_params, name
    bloom = known_model("bigscience/bloom-1b1-intermediate")
    assert estimate_n_params(1536, 24, 6144, 250880, tied=True) + 2 * 1536 == bloom.n_params == 1_065_314_304
    assert known_model("OLMo-2-1B").vocab == 100352 and known_model("olmo-1b-0724").tied_embeddings
    assert known_model("gpt2") is None


def test_every_recipe_parses_and_plans():
    names = list_recipes()
    assert names == ["bayazit2025-bloom-1b1", "bayazit2025-olmo-1b", "bayazit2025-pythia-1b", "ge2025-pythia-160m"]
    for name in names:
        recipe = load_recipe(name)
        plan = make_plan(plan_config_from_recipe(recipe))
        assert plan["inputs"]["n_snapshots"] == recipe.n_snapshots
        assert plan["memory_bytes"]["training_state"] > 0 and plan["seconds"]["train_from_store"] > 0


def test_ge_recipe_has_32_pythia_steps_and_40_tb_of_fp16_store():
    recipe = load_recipe("ge2025-pythia-160m")
    assert recipe.n_snapshots == 32 and list(recipe.steps) == sorted(set(recipe.steps))
    assert set(recipe.steps) <= set(PYTHIA_STEPS)
    plan = make_plan(plan_config_from_recipe(recipe))
    # 39.3 TB, "about 40 TB", and the default held-out split's 16,384 tokens
    assert plan["disk_bytes"]["float16"] == (800_000_000 + 16_384) * 32 * 768 * 2
    assert plan["inputs"]["n_steps"] == 390_625


def test_a_run_checkpoints_about_20_times_and_the_plan_counts_their_disk(capsys):
    """Ge et al.'s run at train's old every-500-steps cadence would write 781 checkpoints of
    13.5 GiB: 10 TiB. The default is about 20 a run, at least 500 steps apart, and the plan says
    what they hold."""
    from crosslens.training.config import CrosscoderRunnerConfig, checkpoint_interval

    assert [checkpoint_interval(n, None) for n in (100, 1_500, 10_000, 20_000, 390_625)] == [
        500,
        500,
        500,
        1_000,
        19_531,
    ]
    assert (checkpoint_interval(390_625, 0), checkpoint_interval(390_625, 7)) == (0, 7)
    assert CrosscoderRunnerConfig(store_path="s", out_dir="o", n_steps=390_625).checkpoint_interval == 19_531
    plan = make_plan(plan_config_from_recipe(load_recipe("ge2025-pythia-160m")))
    whole = plan["parameters"]["whole_crosscoder"]
    assert whole == 2 * 32 * 768 * 24_576 + 32 * 768 + 2 * 24_576
    assert plan["checkpoints"] == {
        "every": 19_531,
        "count": 20,
        "kept": 2,
        "at_once": 3,
        "bytes_each": {"float32": 12 * whole, "bfloat16": 8 * whole},
    }
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--checkpoint-every", "500", "--keep-checkpoints", "0"]) == 0
    out = capsys.readouterr().out
    assert "781, every 500 steps (--checkpoint-every)" in out and "10.30 TiB: 781 checkpoints (781 kept" in out
    assert main(["plan", "--recipe", "ge2025-pythia-160m"]) == 0
    assert "40.50 GiB: 3 checkpoints (2 kept, --keep-checkpoints)" in capsys.readouterr().out


def test_per_rank_memory_shrinks_with_the_snapshot_axis():
    recipe = load_recipe("ge2025-pythia-160m")
    states = [
        make_plan(plan_config_from_recipe(recipe, snapshot_parallel=p))["memory_bytes"]["training_state"]
        for p in (1, 2, 4, 8, 16, 32)
    ]
    assert all(a > b for a, b in zip(states, states[1:]))
    assert states[0] / states[3] == pytest.approx(8, rel=1e-3)  # only b_enc and threshold are replicated
    data_only = make_plan(plan_config_from_recipe(recipe, data_parallel=8))["memory_bytes"]["training_state"]
    assert data_only == states[0]  # the data axis replicates parameters


def test_default_mesh_prefers_the_snapshot_axis():
    assert default_mesh(1, 32) == (1, 1)
    assert default_mesh(16, 32) == (1, 16)
    assert default_mesh(6, 4) == (3, 2)
    assert default_mesh(8, 5) == (8, 1)


def test_plan_config_refuses_inconsistent_meshes():
    with pytest.raises(PlanError, match="snapshot axis .* exceeds"):
        _tiny(snapshot_parallel=8)
    with pytest.raises(PlanError, match="--hook"):
        _tiny(hook="blocks.7.hook_resid_post")


def test_plan_refuses_seq_len_beyond_the_models_context(capsys, tmp_path):
    with pytest.raises(
        PlanError, match=r"--seq-len 17 is longer than tiny's context of 16 tokens; pass --seq-len 16 or less"
    ):
        PlanConfig(
            model=ModelShape(**{**TINY.__dict__, "n_ctx": 16}),
            n_snapshots=2,
            hook="blocks.1.hook_resid_post",
            seq_len=17,
        )
    assert _tiny(seq_len=10**6).seq_len == 10**6  # a model whose context is not known is not checked
    assert known_model("pythia-160m").n_ctx == 2048 and known_model("allenai/OLMo-2-0425-1B").n_ctx == 4096
    err = one_line_exit_2(
        [
            "plan",
            "--suite",
            "pythia-70m",
            "--n-snapshots",
            "2",
            "--hook",
            "blocks.0.hook_resid_post",
            "--seq-len",
            "4096",
        ],
        capsys,
    )
    assert err == (
        "crosslens plan: error: --seq-len 4096 is longer than EleutherAI/pythia-70m's context of 2048 "
        "tokens; pass --seq-len 2048 or less"
    )
    folder = tmp_path / "suite"
    folder.mkdir()  # a local suite's config.json gives the context under the key its family uses
    (folder / "config.json").write_text(
        json.dumps({"hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 100, "n_positions": 32})
    )
    assert model_shape_for(str(folder)).n_ctx == 32


def test_plan_cli_errors_areone_line_exit_2(capsys):
    assert "unknown recipe 'nope'" in one_line_exit_2(["plan", "--recipe", "nope"], capsys)


def test_a_recipe_yaml_that_is_not_there_is_said_not_to_exist(tmp_path, capsys):
    missing = tmp_path / "my-recipe.yaml"
    err = one_line_exit_2(["plan", "--recipe", str(missing)], capsys)
    assert f"recipe file {missing} does not exist; pass the path of a recipe .yaml" in err, err
    assert "unknown recipe" not in err and "ge2025-pythia-160m" in err, err
    (tmp_path / "folder.yml").mkdir()
    err = one_line_exit_2(["plan", "--recipe", str(tmp_path / "folder.yml")], capsys)
    assert f"recipe file {tmp_path / 'folder.yml'} is not a file" in err, err

    assert "--mesh" in one_line_exit_2(["plan", "--recipe", "ge2025-pythia-160m", "--mesh", "1x64"], capsys)
    assert "--mesh" in one_line_exit_2(["plan", "--recipe", "ge2025-pythia-160m", "--mesh", "2by4"], capsys)
    with pytest.raises(SystemExit):  # not taken as one rank, nor blamed on --mesh
        main(["plan", "--recipe", "ge2025-pythia-160m", "--world-size", "0"])
    assert "argument --world-size: must be >= 1, got 0" in capsys.readouterr().err
    assert "--n-snapshots" in one_line_exit_2(["plan", "--suite", "allenai/OLMo-1B-0724-hf", "--hook", "x"], capsys)
    assert "sizes of 'gpt2'" in one_line_exit_2(
        ["plan", "--suite", "gpt2", "--n-snapshots", "2", "--hook", "blocks.0.hook_resid_post"], capsys
    )


def test_plan_cli_table_and_json(capsys):
    assert main(["plan", "--list-recipes"]) == 0
    assert capsys.readouterr().out.count("\n") == 4
    assert (
        main(["plan", "--recipe", "ge2025-pythia-160m", "--world-size", "8", "--snapshot-parallel", "8", "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["mesh"]["snapshot"] == 8 and plan["mesh"]["snapshots_per_rank"] == 4
    assert plan["inputs"]["tflops"] == 100.0 and plan["inputs"]["tflops_assumed"]
    expected = make_plan(
        plan_config_from_recipe(load_recipe("ge2025-pythia-160m"), snapshot_parallel=8, model_dtype="bfloat16")
    )
    assert plan == json.loads(json.dumps(expected))
    assert (
        main(
            [
                "plan",
                "--suite",
                "pythia-70m",
                "--n-snapshots",
                "4",
                "--hook",
                "blocks.3.hook_resid_post",
                "--d-sae",
                "4096",
                "--tflops",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "training state" in out and "wall time at 20 TFLOP/s per rank" in out


def test_train_recipe_values_are_defaults_and_flags_win():
    parser = build_parser()
    recipe = load_recipe("bayazit2025-pythia-1b")
    args = parser.parse_args(["train", "--recipe", recipe.name, "--out", "o"])
    config = train_config(args, recipe)
    assert config.sae.architecture == "crosscoder" and config.sae.d_sae == 16384 and config.lr == 5e-5
    assert config.train_batch_size_tokens == 4096 and config.n_steps == 400_000_000 // 4096
    assert config.sae.sparsity_coefficient == 2.0 and config.sae.decoder_init_norm == 0.08
    assert config.hook_name == "blocks.8.hook_resid_post" and config.lr_decay_fraction == 0.2
    args = parser.parse_args(["train", "--recipe", recipe.name, "--out", "o", "--batch-size", "1024", "--d-sae", "512"])
    config = train_config(args, recipe)
    assert config.train_batch_size_tokens == 1024 and config.n_steps == 400_000_000 // 1024 and config.sae.d_sae == 512
    plain = train_config(parser.parse_args(["train", "--store", "s", "--out", "o"]), None)
    assert plain.sae.architecture == "jumprelu_crosscoder" and plain.n_steps == 3000 and plain.sae.d_sae == 1024


def _plan_json(argv: list[str], capsys) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_defaults_are_train_and_harvest_defaults(capsys):
    """A plan of the flags harvest and train were given sizes the run they make: one default
    each, in the configs those commands build."""
    from crosslens.cli.harvest import harvest_config

    parser = build_parser()
    hook = "blocks.1.hook_resid_post"
    inputs = _plan_json(["--hook", hook, "--device", "cpu"], capsys)["inputs"]
    trained = train_config(parser.parse_args(["train", "--store", "s", "--out", "o"]), None)
    budget = harvest_config(parser.parse_args(["harvest", "--out", "o", "--hook", hook])).budget
    n_tokens, seq_len, heldout = budget.n_tokens, budget.seq_len, budget.heldout
    assert (inputs["d_sae"], inputs["architecture"], inputs["k"]) == (
        trained.sae.d_sae,
        trained.sae.architecture,
        trained.sae.k,
    )
    assert (inputs["batch_size"], inputs["n_steps"]) == (trained.train_batch_size_tokens, trained.n_steps)
    assert inputs["training_tokens"] == trained.training_tokens
    assert (
        (inputs["n_tokens"], inputs["seq_len"], inputs["heldout_tokens"])
        == (n_tokens, seq_len, heldout)
        == (200_000, 64, 16_384)
    )
    assert inputs["harvested_tokens"] == budget.table_tokens == 200_000
    # the same flags, given to each command, mean the same numbers
    flags = ["--d-sae", "96", "--arch", "topk_crosscoder", "--k", "7", "--batch-size", "512", "--n-steps", "40"]
    inputs = _plan_json(["--hook", hook, "--device", "cpu", *flags, "--n-tokens", "5000", "--seq-len", "32"], capsys)[
        "inputs"
    ]
    trained = train_config(parser.parse_args(["train", "--store", "s", "--out", "o", *flags]), None)
    assert (
        (inputs["d_sae"], inputs["architecture"], inputs["k"])
        == (96, "topk_crosscoder", 7)
        == (trained.sae.d_sae, trained.sae.architecture, trained.sae.k)
    )
    assert (inputs["batch_size"], inputs["n_steps"], inputs["training_tokens"]) == (512, 40, trained.training_tokens)
    assert (inputs["n_tokens"], inputs["seq_len"], inputs["harvested_tokens"], inputs["heldout_tokens"]) == (
        5000,
        32,
        4992,
        480,
    )
    # the help shows each default from its one source
    help_text = " ".join(parser._subparsers._group_actions[0].choices["plan"].format_help().split())
    assert "--d-sae D_SAE Shared features, as train --d-sae. (default: 1024)" in help_text
    assert (
        "--n-tokens N_TOKENS Token budget, before exclusions (a --recipe's is its own). (default: 200000)" in help_text
    )
    assert "--context" not in help_text
    from crosslens.activations.budget import MAX_DEFAULT_HELDOUT_TOKENS

    harvest_help = " ".join(parser._subparsers._group_actions[0].choices["harvest"].format_help().split())
    assert f"10% of --n-tokens, at most {MAX_DEFAULT_HELDOUT_TOKENS}" in harvest_help
    assert "--seq-len SEQ_LEN Tokens per sequence (a --recipe's is its context). (default: 64)" in harvest_help


def test_plan_tells_harvested_tokens_from_training_tokens(capsys):
    """The store's tokens size its disk and harvest's forwards; the training tokens (steps x
    batch) size the crosscoder's FLOPs, the stream's forwards (harvested again each epoch) and
    the communication."""
    base = make_plan(_tiny(data_parallel=2))
    more_steps = make_plan(_tiny(data_parallel=2, n_steps=4 * 125))
    more_tokens = make_plan(_tiny(data_parallel=2, n_tokens=4 * 1024))
    assert more_steps["disk_bytes"] == base["disk_bytes"]
    assert more_steps["flops"]["snapshot_models_forward_harvest"] == base["flops"]["snapshot_models_forward_harvest"]
    for key in ("crosscoder_train_total", "snapshot_models_forward_streaming"):
        assert more_steps["flops"][key] == 4 * base["flops"][key]
        assert more_tokens["flops"][key] == base["flops"][key]
    assert (
        more_steps["communication_bytes"]["sent_per_rank_total"]
        == 4 * base["communication_bytes"]["sent_per_rank_total"]
    )
    assert more_tokens["disk_bytes"]["float32"] == 4 * base["disk_bytes"]["float32"]
    assert (
        more_tokens["flops"]["snapshot_models_forward_harvest"] == 4 * base["flops"]["snapshot_models_forward_harvest"]
    )
    assert more_steps["seconds"]["harvest"] == base["seconds"]["harvest"]
    assert more_steps["seconds"]["train_streaming"] == pytest.approx(4 * base["seconds"]["train_streaming"])
    # the held-out split is harvested once, by both paths, and stored beside the store, in whole
    # rows as harvest cuts them (200 tokens: 12 rows of 16)
    held = make_plan(_tiny(data_parallel=2, heldout_tokens=200))
    per_token = base["flops"]["snapshot_models_forward_per_token"]
    assert held["disk_bytes"]["float32"] == base["disk_bytes"]["float32"] * (1024 + 192) // 1024
    for key in ("snapshot_models_forward_harvest", "snapshot_models_forward_streaming"):
        assert held["flops"][key] == base["flops"][key] + 192 * per_token
    assert make_plan(_tiny(heldout_tokens=None))["inputs"]["heldout_tokens"] == 96  # a tenth of --n-tokens: 6 rows
    assert make_plan(_tiny(n_tokens=1000, heldout_tokens=0))["disk_bytes"]["float32"] == 992 * 4 * 8 * 4  # 62 rows
    with pytest.raises(PlanError, match="--heldout-tokens must be >= 0"):
        _tiny(heldout_tokens=-1)
    with pytest.raises(PlanError, match="--seq-len must be >= 2"):
        _tiny(seq_len=1)
    with pytest.raises(PlanError, match="--k must be >= 1, got 0"):
        _tiny(architecture="topk_crosscoder", k=0)
    with pytest.raises(
        PlanError, match=r"^--k must be at most --d-sae \(16\) for a top-k crosscoder, got 17$"
    ):  # as train
        _tiny(architecture="topk_crosscoder", k=17)
    assert (
        main(
            [
                "plan",
                "--hook",
                "blocks.1.hook_resid_post",
                "--device",
                "cpu",
                "--n-tokens",
                "1000",
                "--seq-len",
                "16",
                "--n-steps",
                "30",
                "--batch-size",
                "100",
            ]
        )
        == 0
    )
    assert (
        "992 tokens harvested + 96 held out (rows of 16); 30 steps x batch 100 = 3k training tokens (3.02 epochs)"
        in capsys.readouterr().out
    )


def test_the_data_axis_splits_the_crosscoder_step_but_not_the_streamed_forwards():
    """Under train --stream every rank of the data axis harvests the whole chunk of its snapshots
    (so that any mesh trains the one-process crosscoder) and trains on its rows: a second data rank
    halves the crosscoder's share of a rank's time, not the forwards'."""
    from crosslens.training.sizing import stream_prediction

    one, two = make_plan(_tiny()), make_plan(_tiny(data_parallel=2))

    def forwards(plan):
        return plan["seconds"]["train_streaming"] - plan["seconds"]["train_from_store"]

    assert two["seconds"]["train_from_store"] == pytest.approx(one["seconds"]["train_from_store"] / 2)
    assert forwards(two) == pytest.approx(forwards(one)) and forwards(one) > 0
    recipe = load_recipe("ge2025-pythia-160m")
    alone, paired = (
        stream_prediction(make_plan(plan_config_from_recipe(recipe, model_dtype="bfloat16", data_parallel=d)))
        for d in (1, 2)
    )
    assert paired["forward_tokens_per_second"] == pytest.approx(alone["forward_tokens_per_second"])
    assert paired["crosscoder_tokens_per_second"] == pytest.approx(2 * alone["crosscoder_tokens_per_second"])


def test_world_size_alone_plans_trains_default_mesh_and_names_the_wider_snapshot_axis(capsys):
    """`torchrun --nproc_per_node 8 -m crosslens train` puts train's --snapshot-parallel (1) on
    the snapshot axis and the rest on the data axis: --world-size 8 plans that mesh, and says what
    the mesh holding the least per rank would hold."""
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 data x 1 snapshot = 8 rank(s)" in out
    hint = next(line for line in out.splitlines() if line.startswith("(--snapshot-parallel 8, a 1x8 mesh"))
    wide = make_plan(plan_config_from_recipe(load_recipe("ge2025-pythia-160m"), snapshot_parallel=8))
    assert f"holds {format_bytes(wide['memory_bytes']['total_training'])} per rank" in hint
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--world-size", "8", "--snapshot-parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 data x 2 snapshot = 8 rank(s)" in out and "(--snapshot-parallel" not in out
    assert "does not divide --world-size 6" in one_line_exit_2(
        ["plan", "--recipe", "ge2025-pythia-160m", "--world-size", "6", "--snapshot-parallel", "4"], capsys
    )


def test_recipe_plan_trains_as_train_recipe_does(capsys):
    """With --recipe the steps see the token budget in force (the recipe's, or --n-tokens) once at
    the batch size in force, as `train --recipe` runs them; --n-steps wins over both."""
    recipe = load_recipe("ge2025-pythia-160m")
    parser = build_parser()
    for extra in ([], ["--batch-size", "1024"], ["--n-steps", "77"]):
        inputs = _plan_json(["--recipe", recipe.name, *extra], capsys)["inputs"]
        trained = train_config(parser.parse_args(["train", "--recipe", recipe.name, "--out", "o", *extra]), recipe)
        assert (inputs["n_steps"], inputs["batch_size"]) == (trained.n_steps, trained.train_batch_size_tokens), extra
        assert (inputs["n_tokens"], inputs["seq_len"]) == (recipe.n_tokens, recipe.context)
    assert inputs["n_steps"] == 77 and inputs["training_tokens"] == 77 * recipe.batch_size
    # a smaller budget is seen once, not cycled through for the recipe's 390,625 steps
    for extra in (["--n-tokens", "4000000"], ["--n-tokens", "4000000", "--batch-size", "1024"]):
        inputs = _plan_json(["--recipe", recipe.name, "--stream", *extra], capsys)["inputs"]
        trained = train_config(
            parser.parse_args(["train", "--recipe", recipe.name, "--stream", "--out", "o", *extra]), recipe
        )
        assert inputs["n_steps"] == trained.n_steps == 4_000_000 // trained.train_batch_size_tokens, extra
    assert trained.n_steps == 3906


def test_train_recipe_offline_names_the_missing_weights(offline_hf_home, tmp_path, capsys):
    err = one_line_exit_2(
        ["train", "--recipe", "ge2025-pythia-160m", "--out", str(tmp_path), "--device", "cpu"], capsys
    )
    assert "EleutherAI/pythia-160m at step0 and 31 more" in err and "HF_HUB_OFFLINE" in err
    assert err.endswith(
        "go online, or harvest where the weights are and train on that store (`crosslens train --store`)"
    )
    err = one_line_exit_2(["train", "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert "--store" in err and "--recipe" in err


def test_train_recipe_without_a_store_harvests_what_plan_sizes(fake_hub, tmp_path, capsys):
    """`train --recipe R` without --store harvests what `harvest --recipe R` would, with the same
    token flags and its held-out split, so that `plan --recipe R` sizes it and the quality table
    is held out; the flags that choose those tokens are taken, not refused."""
    import random

    from hf_cache import FAKE_WORDS

    from crosslens.activations import ActivationStore

    words = list(FAKE_WORDS)
    rng = random.Random(0)
    text = tmp_path / "words.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(80)) for _ in range(60)))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: EleutherAI/pythia-14m\nsteps: [0, 1000, 2000]\nhook: blocks.0.hook_resid_post\n"
        f"dataset: {text}\ncontext: 16\nn_tokens: 400\narchitecture: crosscoder\nd_sae: 16\nbatch_size: 32\n"
    )
    flags = ["--recipe", str(recipe), "--n-steps", "3", "--heldout-tokens", "70"]
    run = tmp_path / "run"
    assert main(["train", *flags, "--out", str(run), "--device", "cpu", "--spliced-seqs", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"held-out tokens ({run / 'activations-heldout'})" in printed
    store, heldout = ActivationStore.open(run / "activations"), ActivationStore.open(run / "activations-heldout")
    inputs = _plan_json([*flags], capsys)["inputs"]
    assert (inputs["seq_len"], inputs["n_steps"], inputs["batch_size"]) == (16, 3, 32)
    assert inputs["harvested_tokens"] == store.sequences.numel() == 25 * 16  # 400 tokens: 25 rows
    assert inputs["heldout_tokens"] == heldout.sequences.numel() == 4 * 16  # 70 tokens: 4 whole rows
    # the store belongs to the run folder: other token flags are refused there, saying what to do
    base = ["train", *flags, "--out", str(run), "--device", "cpu", "--n-tokens", "480"]
    err = one_line_exit_2([*base, "--overwrite"], capsys)
    assert f"{run / 'activations'} holds a store harvested with other flags (differs in: the tokens (" in err
    assert f"`crosslens harvest --recipe {recipe} --out {run / 'activations'} --overwrite` with these flags" in err
    assert "ends that run's --resume" in one_line_exit_2([*base, "--resume"], capsys)
    # a run started on a GPU, whose models ran in bfloat16 by default, resumed on a CPU
    err = one_line_exit_2(
        ["train", *flags, "--out", str(run), "--device", "cpu", "--dtype", "bf16", "--resume"], capsys
    )
    assert "(differs in: --dtype: float32 there, bfloat16 now): pass --dtype float32 (--n-tokens" in err, err
    assert "--dtype, whose default --device sets: bfloat16 on CUDA, else float32)" in err, err


def test_train_recipe_takes_a_store_of_some_of_its_snapshots_as_harvest_recipe_steps_writes(fake_hub, tmp_path, capsys):
    """`harvest --recipe R --steps ...` writes a store of some of R's snapshots; `train --recipe R
    --store` trains on it, and refuses a store of snapshots R does not list, or in another order."""
    import random

    from hf_cache import FAKE_WORDS

    from crosslens.cli.train import _in_order_among

    rng = random.Random(0)
    text = tmp_path / "words.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(list(FAKE_WORDS)) for _ in range(80)) for _ in range(40)))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: EleutherAI/pythia-14m\nsteps: [0, 1000, 2000]\nhook: blocks.0.hook_resid_post\n"
        "context: 16\nn_tokens: 256\narchitecture: crosscoder\nd_sae: 16\nbatch_size: 32\n"
    )
    store = tmp_path / "store"
    harvest = [
        "harvest",
        "--recipe",
        str(recipe),
        "--steps",
        "0,2000",
        "--text",
        str(text),
        "--heldout-tokens",
        "0",
        "--device",
        "cpu",
    ]
    assert main([*harvest, "--out", str(store)]) == 0
    train = [
        "train",
        "--recipe",
        str(recipe),
        "--store",
        str(store),
        "--n-steps",
        "2",
        "--device",
        "cpu",
        "--spliced-seqs",
        "0",
    ]
    assert main([*train, "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "final" / "cfg.json").read_text())["n_snapshots"] == 2
    capsys.readouterr()
    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text().replace("steps: [0, 1000, 2000]", "steps: [0, 1000]"))
    err = one_line_exit_2([*train, "--recipe", str(other), "--out", str(tmp_path / "run2")], capsys)
    assert err.endswith(
        "holds EleutherAI/pythia-14m at 2 snapshots, not recipe other's EleutherAI/pythia-14m at its 2 "
        "or some of them; harvest it with `crosslens harvest --recipe other` (--steps or --n-snapshots "
        "pick some) or drop --recipe"
    ), err
    assert _in_order_among(["step0", "step2000"], ["step0", "step1000", "step2000"])
    assert not _in_order_among(["step2000", "step0"], ["step0", "step1000", "step2000"])
    assert not _in_order_among(["step0", "step0"], ["step0", "step1000"])
    assert _in_order_among(["step0", "step143000"], ["step0", "main"])  # "main": the latest revision, any name


def test_the_streaming_total_counts_the_chunk_buffers_train_stream_counts(tmp_path):
    """The plan's streaming peak holds what `train --stream` says it needs before loading a model
    (the truncated models and the two chunk buffers), at the hook's width."""
    from types import SimpleNamespace

    from crosslens.activations.budget import chunk_buffer_bytes
    from crosslens.cli.train import resident_memory

    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 8,
                "intermediate_size": 32,
                "num_hidden_layers": 2,
                "vocab_size": 100,
                "max_position_embeddings": 64,
            }
        )
    )
    suite = SimpleNamespace(shape=lambda: model_shape_for(str(folder)), model_id="tiny")
    for hook, width in (("blocks.0.hook_resid_post", 8), ("blocks.0.mlp.hook_post", 32)):
        cfg = PlanConfig(
            model=model_shape_for(str(folder)),
            n_snapshots=3,
            hook=hook,
            seq_len=16,
            model_dtype="bfloat16",
            device="cpu",
        )
        mem = make_plan(cfg)["memory_bytes"]
        assert mem["stream_chunks"] == chunk_buffer_bytes(256 * 16, 3, width, 2) == 2 * 256 * 16 * 3 * width * 2
        assert mem["total_streaming"] == mem["total_training"] + mem["resident_models_truncated"] + mem["stream_chunks"]
        need, _ = resident_memory(suite, hook, "bfloat16", 3, 16)
        assert need == mem["resident_models_truncated"] + mem["stream_chunks"], hook


def test_token_budget_counts_whole_rows_and_takes_counts_written_as_floats():
    from crosslens.activations.budget import TokenBudget

    budget = TokenBudget(1e5, 64)  # a count written as 1e5 is the int 100,000
    assert budget.n_tokens == 100_000 and isinstance(budget.n_rows, int)
    assert (budget.n_rows, budget.table_tokens, budget.heldout, budget.heldout_rows) == (1562, 1562 * 64, 10_000, 156)
    assert TokenBudget(10**6).heldout == 16_384 and TokenBudget(10, 64).n_rows == 1  # capped; at least one row
    with pytest.raises(TypeError, match=r"^n_tokens must be a whole number of tokens, got 100.5$"):
        TokenBudget(100.5)
    with pytest.raises(TypeError, match=r"^seq_len must be a whole number of tokens, got True$"):
        TokenBudget(100, True)
    import numpy as np
    import torch

    assert TokenBudget(np.int64(1000), torch.tensor(64)).n_rows == 15  # any integer type
    with pytest.raises(ValueError, match=r"^seq_len must be >= 2, got 1$"):
        TokenBudget(100, 1)


def test_plan_refuses_snapshots_an_olmo_or_bloom_recipe_does_not_hold(capsys):
    """Only the hub lists those suites, but the recipe's own labels say what harvest would find."""
    err = one_line_exit_2(["plan", "--recipe", "bayazit2025-olmo-1b", "--n-snapshots", "30"], capsys)
    assert (
        err
        == "crosslens plan: error: --n-snapshots 30: recipe bayazit2025-olmo-1b lists 5 snapshots; pass --n-snapshots 5 or fewer"
    )
    err = one_line_exit_2(["plan", "--recipe", "bayazit2025-olmo-1b", "--steps", "1000,7"], capsys)
    assert err == (
        "crosslens plan: error: --steps: 7 is not among the 5 snapshots of recipe bayazit2025-olmo-1b "
        "(1000, 2000, 16000, 137000, 1454000)"
    )
    err = one_line_exit_2(["plan", "--recipe", "bayazit2025-bloom-1b1", "--steps", "1000,7,8"], capsys)
    assert err.endswith(
        "--steps: 7, 8 are not among the 4 snapshots of recipe bayazit2025-bloom-1b1 (1000, 10000, 100000, "
        "main); at most 1 of them can be main's"
    )
    assert main(["plan", "--recipe", "bayazit2025-bloom-1b1", "--steps", "1000,7", "--json"]) == 0  # 7 may be main's
    assert json.loads(capsys.readouterr().out)["inputs"]["n_snapshots"] == 2
    assert main(["plan", "--recipe", "bayazit2025-olmo-1b", "--n-snapshots", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["n_snapshots"] == 3


def test_a_recipe_file_is_read_strictly_naming_the_key_at_fault(tmp_path, capsys):
    from crosslens.training.recipes import RecipeError, recipe_from_dict

    base = {
        "model": "EleutherAI/pythia-14m",
        "steps": [0, 1000],
        "hook": "blocks.0.hook_resid_post",
        "n_tokens": "1e6",
        "architecture": "crosscoder",
        "d_sae": 16,
        "batch_size": 32,
    }
    assert recipe_from_dict(base, "r").n_tokens == 1_000_000  # YAML's string "1e6" is the number it spells
    refused = [
        ({"sparsity_coef": 3}, "recipe 'r': unknown key 'sparsity_coef' (did you mean sparsity?)"),
        ({"lr": "abc"}, "recipe 'r': lr must be a number, got 'abc'"),
        ({"d_sae": 16.5}, "recipe 'r': d_sae must be a whole number, got 16.5"),
        ({"steps": [0, "x"]}, "recipe 'r': steps must be a whole number, got 'x'"),
        ({"model": str(tmp_path)}, f"recipe 'r': model {str(tmp_path)!r} is a folder; a recipe names a hub model id"),
    ]
    for change, message in refused:
        with pytest.raises(RecipeError) as error:
            recipe_from_dict({**base, **change}, "r")
        assert str(error.value).startswith(message), str(error.value)
    path = tmp_path / "mine.yaml"
    path.write_text(
        "model: EleutherAI/pythia-14m\nsteps: [0, 1000]\nhook: blocks.0.hook_resid_post\nn_tokens: 1e6\n"
        "architecture: crosscoder\nd_sae: 16\nbatch_size: 32\nsparsity_coef: 3\n"
    )
    err = one_line_exit_2(["plan", "--recipe", str(path)], capsys)
    assert err == "crosslens plan: error: recipe 'mine': unknown key 'sparsity_coef' (did you mean sparsity?)"


def test_a_recipes_k_is_checked_against_the_d_sae_given_not_the_default_k(tmp_path):
    from crosslens.training.recipes import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "model": "EleutherAI/pythia-14m",
            "steps": [0, 1000],
            "hook": "blocks.0.hook_resid_post",
            "n_tokens": 1000,
            "architecture": "topk_crosscoder",
            "k": 8,
            "d_sae": 64,
            "batch_size": 32,
        },
        "r",
    )
    parser = build_parser()
    config = train_config(parser.parse_args(["train", "--store", "s", "--out", "o", "--d-sae", "16"]), recipe)
    assert (config.sae.k, config.sae.d_sae) == (8, 16)  # below the default k of 32: the recipe's 8 counts
    with pytest.raises(ValueError, match=r"^k must be at most d_sae \(4\) for a top-k crosscoder, got 8$"):
        train_config(parser.parse_args(["train", "--store", "s", "--out", "o", "--d-sae", "4"]), recipe)


def test_train_recipe_offline_names_a_revision_cached_without_its_weights(offline_hf_home, tmp_path, capsys):
    """A revision whose config is cached but whose weights file is not would be found only as its
    model loads, after every token is read: it is named before."""
    from hf_cache import make_word_tokenizer, repo_folder, tiny_neox, write_fake_hub_repo

    write_fake_hub_repo(
        offline_hf_home,
        "EleutherAI/pythia-14m",
        {"step0": tiny_neox(seed=0), "step1000": tiny_neox(seed=1)},
        make_word_tokenizer(),
    )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: EleutherAI/pythia-14m\nsteps: [0, 1000]\nhook: blocks.0.hook_resid_post\ndataset: x\n"
        "context: 16\nn_tokens: 400\narchitecture: crosscoder\nd_sae: 16\nbatch_size: 32\n"
    )
    commit = (repo_folder(offline_hf_home, "EleutherAI/pythia-14m") / "refs" / "step1000").read_text().strip()
    (repo_folder(offline_hf_home, "EleutherAI/pythia-14m") / "snapshots" / commit / "model.safetensors").unlink()
    capsys.readouterr()  # the fake repo's own progress bars
    err = one_line_exit_2(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert "needs the weights of EleutherAI/pythia-14m at step1000, which are not in the Hugging Face cache" in err
