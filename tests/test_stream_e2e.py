"""The streaming path's speed work on the CPU: the provider's device buffer and prefetch change
no byte, the GPU benchmark's logic runs, and the plan's --stream prediction is its hand computation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite

from crosslens.activations.streaming import ResidentSnapshotProvider
from crosslens.checkpoints import CheckpointSuite

HOOK = "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    write_local_suite(
        root, {f"step{s}": tiny_neox(seed=60 + s, num_hidden_layers=3) for s in range(2)}, make_word_tokenizer()
    )
    return CheckpointSuite.local(root)


def _batches(suite, n: int, **kwargs) -> tuple[list[torch.Tensor], ResidentSnapshotProvider]:
    tokens = torch.randint(3, 50, (24, 8), generator=torch.Generator().manual_seed(1))
    provider = ResidentSnapshotProvider(suite, HOOK, tokens, 16, chunk_seqs=5, harvest_batch_size=3, **kwargs)
    batches = provider.batches(0)
    try:
        return [next(batches) for _ in range(n)], provider
    finally:
        batches.close()
        provider.close()


def test_prefetch_and_buffer_dtype_change_no_byte(suite, monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path))
    n = 30  # more than two epochs of 24 x 7 kept tokens in batches of 16
    plain, _ = _batches(suite, n, prefetch=False, buffer_dtype=torch.float32)
    ahead, provider = _batches(suite, n, prefetch=True)
    assert provider.buffer_dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead, strict=True))
    # bf16 models: a bf16 buffer holds their rows exactly, so the float32 batches are the same bytes
    wide, _ = _batches(suite, n, model_dtype=torch.bfloat16, buffer_dtype=torch.float32, prefetch=False)
    narrow, provider = _batches(suite, n, model_dtype=torch.bfloat16)
    assert provider.buffer_dtype == torch.bfloat16 and narrow[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow, strict=True))
    assert not torch.equal(plain[0], wide[0])  # the bf16 models are not the float32 ones


def test_resuming_mid_epoch_with_prefetch_gives_the_same_batches(suite, monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path))
    tokens = torch.randint(3, 50, (24, 8), generator=torch.Generator().manual_seed(1))
    provider = ResidentSnapshotProvider(suite, HOOK, tokens, 16, chunk_seqs=5, harvest_batch_size=3)
    everything = list(zip(range(14), provider.batches(0)))
    resumed = list(zip(range(7), provider.batches(7)))
    provider.close()
    assert all(torch.equal(everything[7 + i][1], batch) for i, batch in resumed)
    chunk = provider._cached_chunk[1]
    assert chunk.dtype == torch.float32 and chunk.device.type == "cpu"


def test_the_benchmark_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stream_gpu

    assert stream_gpu.main(["--small", "--suite-dir", str(tmp_path / "suite")]) == 0
    out = capsys.readouterr().out
    assert "loaded 2 models (2 blocks each" in out
    assert "compiled vs eager activations: max |difference| 0 (bf16)" in out
    sdpa_difference = float(out.split("compiled SDPA vs eager: ")[1].split()[0])
    assert 0 < sdpa_difference < 0.01  # bf16 rounding apart: SDPA's softmax is float32 inside
    for line in ("provider:", "end to end, jumprelu_crosscoder", "end to end, crosscoder"):
        assert line in out
    assert out.count("M tokens in ") == 4 and "prefetch off" in out
    assert "end to end, jumprelu_crosscoder, fresh" in out  # a run's first, dense steps
    # each row says the sparsity its timed steps ran at, and HOLD_LR held it there
    rows = [line for line in out.splitlines() if line.startswith("end to end")]
    held = [row.split("  L0 ")[1].split(";")[0].split(" -> ") for row in rows]
    assert len(held) == 4 and all(abs(float(last) - float(first)) <= 1 for first, last in held)
    assert out.count("first batch active") == out.count("last batch active") == 3
    assert "each end-to-end row times 2 chunk(s) of 4 steps, their forwards included" in out
    assert stream_gpu.main(["--small", "--suite-dir", str(tmp_path / "suite"), "--written", "--row", "fresh"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("end to end")]
    assert len(rows) == 1 and rows[0].startswith("end to end, jumprelu_crosscoder, fresh")


def test_the_benchmark_times_whole_chunks_with_their_forwards(capsys):
    """The timed steps start with a chunk's first batch, so each timed chunk's forward (or the
    wait for its prefetch) is timed with the steps it feeds; a run of steps inside the first chunk
    would time the steps alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stream_gpu

    for warmup, per_chunk, untimed in ((10, 64, 63), (0, 64, 63), (63, 64, 63), (64, 64, 127), (1, 4, 3), (3, 4, 3)):
        assert stream_gpu.untimed_steps(warmup, per_chunk) == untimed
        assert (1 + untimed) % per_chunk == 0 and untimed >= warmup  # the first batch sets the sparsity
    with pytest.raises(SystemExit) as refused:
        stream_gpu.parse_args(["--batch", "3000"])  # 128 x 1024 tokens a chunk: no whole number of batches
    assert refused.value.code == 2
    assert "--batch 3000: time at least one chunk, of a whole number of batches" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures")
def test_the_benchmark_without_cuda_says_so(capsys):
    import stream_gpu

    assert stream_gpu.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device here" in out


def test_plan_stream_prediction_is_the_hand_computation(capsys):
    from crosslens.__main__ import main
    from crosslens.training.model_sizes import PlanError, known_model
    from crosslens.training.recipes import load_recipe
    from crosslens.training.sizing import make_plan, plan_config_from_recipe, stream_prediction

    recipe = load_recipe("ge2025-pythia-160m")
    plan = make_plan(plan_config_from_recipe(recipe, model_dtype="bfloat16"))
    predicted = stream_prediction(plan, "h100")
    # by hand: 32 snapshots of Pythia-160M through block 6 (7 blocks) at context 2048, and the 10 S D F step
    per_block = known_model("EleutherAI/pythia-160m").params_per_layer
    forward = 32 * (2 * 7 * per_block + 2 * 7 * 2048 * 768)
    step = 10 * 32 * 768 * 24576
    assert step == 6_039_797_760
    tokens_per_second = 1 / (forward / (989e12 * 0.456) + step / (989e12 * 0.275))
    assert predicted["tokens_per_second"] == pytest.approx(tokens_per_second, rel=1e-12)
    assert predicted["tokens_per_second"] == pytest.approx(32_456, abs=1)
    # within 25% of the parts an H100 measured, in series: the provider's 106,634 tokens/s and the
    # trained JumpReLU step's 45,033 (benchmarks/stream_gpu.py and gpu.py)
    assert abs(predicted["tokens_per_second"] * (1 / 106_634 + 1 / 45_033) - 1) < 0.25
    assert predicted["hours"] == pytest.approx(800_000_000 / tokens_per_second / 3600)
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--stream", "--dtype", "bfloat16"]) == 0
    assert "32,456 tokens/s: 6.8 h" in capsys.readouterr().out
    with pytest.raises(PlanError, match="no utilisation figures for GPU 'v100'"):
        stream_prediction(plan, "v100")
    on_cpu = make_plan(plan_config_from_recipe(load_recipe("ge2025-pythia-160m"), model_dtype="bfloat16", device="cpu"))
    with pytest.raises(PlanError, match="^the stream prediction is for a GPU: plan for device cuda, not cpu$"):
        stream_prediction(on_cpu)


def test_plan_bounds_a_stream_of_float32_models_by_the_float32_peak(capsys):
    """The forward's measured share is for 16-bit models; float32 ones get at most the GPU's float32
    peak, so the prediction is a ceiling, said as one."""
    from crosslens.__main__ import main
    from crosslens.cli.train import slow_forward_hint
    from crosslens.training.recipes import load_recipe
    from crosslens.training.sizing import make_plan, plan_config_from_recipe, stream_prediction

    recipe = load_recipe("ge2025-pythia-160m")
    half = stream_prediction(make_plan(plan_config_from_recipe(recipe, model_dtype="bfloat16")), "h100")
    full = stream_prediction(make_plan(plan_config_from_recipe(recipe, model_dtype="float32")), "h100")
    assert (half["forward_bound"], full["forward_bound"]) == (False, True)
    assert full["crosscoder_tokens_per_second"] == half["crosscoder_tokens_per_second"]
    # 67 TFLOP/s over the same forward FLOPs: 0.456 x 989 / 67 = 6.7 times fewer tokens/s
    assert half["forward_tokens_per_second"] / full["forward_tokens_per_second"] == pytest.approx(0.456 * 989 / 67)
    assert full["hours"] > half["hours"]
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--stream"]) == 0
    assert "at most" not in capsys.readouterr().out  # on CUDA the snapshot models default to bf16
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--stream", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "at most 17,268 tokens/s" in out and "at most 12,481 tokens/s: at least 17.8 h" in out
    assert "bfloat16 (the default on CUDA) runs them at the measured share" in out
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--stream", "--device", "cpu"]) == 0
    assert "predicted for a GPU: --device cuda, not cpu" in capsys.readouterr().out
    assert main(["plan", "--recipe", "ge2025-pythia-160m", "--stream", "--autocast", "none"]) == 0
    out = capsys.readouterr().out
    assert "predicted for the crosscoder step under bfloat16 autocast" in out and "tokens/s" not in out
    assert "without the flag they run in bfloat16" in slow_forward_hint("float32", "cuda:0")
    assert slow_forward_hint("bfloat16", "cuda:0") is None and slow_forward_hint("float32", "cpu") is None


def test_plan_bounds_the_run_by_a_fresh_crosscoders_step(capsys):
    """A fresh JumpReLU crosscoder runs its dense kernels: the plan prints that rate and the hours
    if every step ran at it, beside the trained rate; where the fresh step is no slower (ReLU) it
    prints no such row."""
    from crosslens.__main__ import main
    from crosslens.training.recipes import load_recipe
    from crosslens.training.sizing import make_plan, plan_config_from_recipe, stream_prediction

    recipe = load_recipe("ge2025-pythia-160m")
    plan = make_plan(plan_config_from_recipe(recipe, model_dtype="bfloat16"))
    h200 = stream_prediction(plan, "h200")
    forward = 1 / h200["forward_tokens_per_second"]
    step = 10 * 32 * 768 * 24576
    assert h200["fresh_tokens_per_second"] == pytest.approx(1 / (forward + step / (989e12 * 0.161)), rel=1e-12)
    assert h200["tokens_per_second"] == pytest.approx(1 / (forward + step / (989e12 * 0.305)), rel=1e-12)
    assert h200["fresh_hours"] == pytest.approx(800_000_000 / h200["fresh_tokens_per_second"] / 3600)
    assert round(h200["hours"], 1) == 6.5 and round(h200["fresh_hours"], 1) == 10.5
    h100 = stream_prediction(plan, "h100")
    assert h100["fresh_tokens_per_second"] == pytest.approx(
        1 / (1 / h100["forward_tokens_per_second"] + step / (989e12 * 0.141))
    )
    assert h100["fresh_tokens_per_second"] < h100["tokens_per_second"]

    argv = ["plan", "--recipe", "ge2025-pythia-160m", "--stream", "--dtype", "bfloat16", "--gpu"]
    assert main([*argv, "h200"]) == 0
    out = capsys.readouterr().out
    assert "34,055 tokens/s: 6.5 h" in out
    assert "with a fresh crosscoder's step at 16.1%   21,154 tokens/s: 10.5 h if every step ran so" in out
    assert main([*argv, "h100"]) == 0
    assert (
        "with a fresh crosscoder's step at 14.1%   19,262 tokens/s: 11.5 h if every step ran so"
        in capsys.readouterr().out
    )
    assert main([*argv, "h200", "--arch", "crosscoder"]) == 0
    assert "fresh crosscoder" not in capsys.readouterr().out


def test_the_held_sparsity_script_runs_on_the_cpu(tmp_path, monkeypatch, capsys):
    """``scripts/held_sparsity.py --small``: each learning rate and the Gaussian batches print one
    line a step, with the L0 and the shares that decide the step's path; the harvest is kept in
    ``--out`` and reused."""
    import importlib.util

    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("held_sparsity", root / "scripts" / "held_sparsity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--small", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if "L0 set to 4" in line]
    assert [h.split(":")[0] for h in headers] == [
        "streamed activations, lr 1e-05",
        "streamed activations, lr 1e-09",
        "Gaussian activations, lr 1e-05",
    ]
    steps = [line for line in out.splitlines() if line.lstrip().startswith("step ")]
    assert len(steps) == 6 and all("held-out batch: open " in line and "window " in line for line in steps)
    assert "harvested 4 batches of 32 tokens at 2 snapshots" in out
    assert script.main(["--small", "--out", str(tmp_path / "out"), "--lr", "1e-6"]) == 0
    again = capsys.readouterr().out
    assert "harvested" not in again and "lr 1e-06" in again  # the batches came from --out


def test_the_benchmark_refuses_a_learning_rate_of_zero_in_one_line(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stream_gpu

    with pytest.raises(SystemExit) as exit_info:
        stream_gpu.parse_args(["--lr", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "error: --lr 0.0: give a learning rate above 0 (the default, 1e-09, holds the trained sparsity)"
    )
