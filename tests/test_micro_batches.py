"""Gradient accumulation over micro-batches (``micro_batches`` / ``--micro-batches``): one
micro-batch is today's step to the byte, four give the whole batch's gradient and training
to float32 rounding for every architecture, resume stays byte-exact, and a batch that does
not split is refused naming both flags."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from test_runner import _config, store_path  # noqa: F401  (a fixture: a tiny harvested store)

import crosslens.crosscoders as cc
from crosslens.cli import main
from crosslens.core.devices import GPUS
from crosslens.core.paths import RUN_CONFIG_NAME
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
from crosslens.training.config import CrosscoderRunnerConfig
from crosslens.training.memory import (
    AUTO_HEADROOM,
    choose_optimizer_state,
    fit_problem,
    smallest_fitting_micro_batches,
    step_peak_bytes,
)
from crosslens.training.micro import micro_batched_pass
from crosslens.training.runner import CrosscoderTrainingRunner

S, D, F, B = 2, 8, 32, 32
ARCHS = list(cc.ARCHITECTURES)
DIRECTIONS = torch.randn(12, S, D, generator=torch.Generator().manual_seed(0))
SETTINGS = {
    "crosscoder": {"l1_coefficient": 0.05, "l1_warm_up_steps": 5},
    # the target_l0 controller updates lambda once per step from the batch's L0
    "jumprelu_crosscoder": {"l0_coefficient": 0.01, "l0_warm_up_steps": 5, "target_l0": 3.0},
    "topk_crosscoder": {"k": 4},
    "batchtopk_crosscoder": {"k": 4},
}
PARAMETER_ATOL = 1e-6
"""Largest |difference| of any parameter or buffer after 20 steps with 4 micro-batches against
one batch (measured: at most 3e-8 on weights of norm about 0.1): Adam divides by the
gradient's root mean square, so a last-bit difference in a gradient moves a step by up to lr
times its relative size."""


def make_batches(start_step: int = 0):
    """Batch i is a fixed function of i: sparse mixtures of 12 shared directions."""
    for step in itertools.count(start_step):
        gen = torch.Generator().manual_seed(1000 + step)
        active = (torch.rand(B, 12, generator=gen) < 0.25).float()
        yield 2 * torch.einsum("bk,ksd->bsd", active * torch.rand(B, 12, generator=gen), DIRECTIONS)


def make_sae(arch: str, **kw):
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    torch.manual_seed(0)
    return train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **{**SETTINGS[arch], **kw}))


def trainer_cfg(**kw) -> CrosscoderTrainerConfig:
    base = dict(
        total_steps=20,
        lr=3e-3,
        lr_warm_up_steps=3,
        lr_decay_steps=5,
        dead_feature_window_tokens=2 * B,
        activation_scale_check="off",
    )
    return CrosscoderTrainerConfig(**{**base, **kw})


def trained_state(arch: str, **cfg) -> dict[str, torch.Tensor]:
    sae = make_sae(arch)
    CrosscoderTrainer(sae, trainer_cfg(**cfg)).fit(make_batches)
    return {name: value.detach().clone() for name, value in sae.state_dict().items()}


NO_WARM_UP = {"crosscoder": {"l1_warm_up_steps": 0}, "jumprelu_crosscoder": {"l0_warm_up_steps": 0}}


@pytest.mark.parametrize("arch", ARCHS)
def test_one_micro_batch_is_a_plain_forward_backward_adam_step(arch):
    """micro_batches=1 against the step written out by hand (constant lr and coefficients, no
    clip, no dead features): forward, backward, fused Adam; the same bytes."""
    steps, lr = 5, 3e-3
    sae = make_sae(arch, **NO_WARM_UP.get(arch, {}))
    plain = trainer_cfg(
        total_steps=steps,
        lr=lr,
        lr_warm_up_steps=0,
        lr_decay_steps=0,
        max_grad_norm=None,
        dead_feature_window_tokens=10**9,
        resample_dead=0,
    )
    CrosscoderTrainer(sae, plain).fit(make_batches)

    ref = make_sae(arch, **NO_WARM_UP.get(arch, {}))
    optimizer = torch.optim.Adam(ref.optimizer_param_groups(lr), lr=lr, fused=True)
    coefficients = {name: getattr(c, "value", c) for name, c in ref.get_coefficients().items()}
    ref.train()
    for step, x in zip(range(steps), make_batches()):
        dead = torch.zeros(F, dtype=torch.bool)
        ref.training_forward_pass(TrainStepInput(x, coefficients, dead, step, False)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert plain.micro_batches == 1
    for name, value in ref.state_dict().items():
        assert torch.equal(sae.state_dict()[name], value), name


def one_step_gradients(arch: str, micro_batches: int, **kw):
    sae = make_sae(arch, **kw)
    sae.train()
    x = next(make_batches())
    dead = torch.zeros(F, dtype=torch.bool)
    dead[:5] = True  # TopK's aux-k loss has dead features to work with
    coefficients = {name: 0.3 for name in sae.get_coefficients()}

    def step_input(x_bSD):
        return TrainStepInput(x_bSD, coefficients, dead, 10, False)

    if micro_batches == 1:
        output = sae.training_forward_pass(step_input(x))
        output.loss.backward()
    else:
        output = micro_batched_pass(sae, x, micro_batches, step_input, _no_autocast)
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return output, grads, sae


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize(
    ("arch", "settings"),
    [(arch, {}) for arch in ARCHS]
    + [("jumprelu_crosscoder", {"target_l0": None}), ("jumprelu_crosscoder", {"sparsity_target": None})],
)
def test_four_micro_batches_give_the_whole_batch_gradient_and_output(arch, settings):
    whole, grads_1, _ = one_step_gradients(arch, 1, **settings)
    micro, grads_4, _ = one_step_gradients(arch, 4, **settings)
    for name, grad in grads_1.items():
        torch.testing.assert_close(grads_4[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(micro.loss, whole.loss.detach(), rtol=1e-6, atol=0)
    for name, value in whole.losses.items():
        torch.testing.assert_close(micro.losses[name], value.detach(), rtol=1e-5, atol=1e-8, msg=name)
    assert micro.feature_acts.shape == (B, F) and micro.sae_in.shape == (B, S, D)
    assert torch.equal(micro.feature_acts != 0, whole.feature_acts != 0)  # the same codes fire: same L0
    torch.testing.assert_close(micro.sae_out, whole.sae_out.detach(), rtol=1e-5, atol=1e-6)


def test_jumprelus_quadratic_term_needs_the_whole_batchs_p():
    """Without the whole batch's p each micro-batch's quadratic term differs: the test above
    would see it (it is not a rounding difference)."""
    _, grads_1, _ = one_step_gradients("jumprelu_crosscoder", 1, sparsity_target=0.01)

    class PerMicroBatchP(cc.ARCHITECTURES["jumprelu_crosscoder"][2]):
        def _whole_batch_numbers(self, chunks_NSD):
            return {}

    sae = make_sae("jumprelu_crosscoder", sparsity_target=0.01)
    naive = PerMicroBatchP(sae.cfg)
    naive.load_state_dict(sae.state_dict())
    naive.train()
    x = next(make_batches())
    micro_batched_pass(
        naive,
        x,
        4,
        lambda x_b: TrainStepInput(x_b, {"l0": 0.3}, torch.zeros(F, dtype=torch.bool), 10, False),
        _no_autocast,
    )
    gap = (naive.W_enc.grad - grads_1["W_enc"]).abs().max() / grads_1["W_enc"].abs().max()
    assert gap > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_four_micro_batches_train_like_one_batch(arch):
    one, four = trained_state(arch, micro_batches=1), trained_state(arch, micro_batches=4)
    for name, value in one.items():
        torch.testing.assert_close(four[name], value, rtol=0, atol=PARAMETER_ATOL, msg=name)
    if arch == "jumprelu_crosscoder":  # the controller moved lambda, once per step
        assert one["l0_scale"] != 1 and abs(four["l0_scale"] - one["l0_scale"]) < 1e-9
    if arch == "batchtopk_crosscoder":  # the running threshold, once per step
        assert one["topk_threshold"] > 0 and abs(four["topk_threshold"] - one["topk_threshold"]) < 1e-9


@pytest.mark.parametrize("arch", ["jumprelu_crosscoder", "batchtopk_crosscoder"])
def test_a_resumed_micro_batched_run_ends_at_the_same_bytes(arch, tmp_path):
    straight = trained_state(arch, micro_batches=4)
    interrupted = make_sae(arch)
    cfg = trainer_cfg(micro_batches=4, checkpoint_dir=str(tmp_path), checkpoint_every=10)
    with pytest.raises(ValueError, match="ran out after 10 of 20"):
        CrosscoderTrainer(interrupted, cfg).fit(itertools.islice(make_batches(), 10))
    resumed = CrosscoderTrainer.from_checkpoint(tmp_path / "step_00000010")
    assert resumed.cfg.micro_batches == 4
    resumed.fit(make_batches, resume_from=tmp_path / "step_00000010")
    for name, value in resumed.sae.state_dict().items():
        assert torch.equal(value, straight[name]), name


def test_a_batch_that_does_not_split_is_refused_naming_both_flags():
    trainer = CrosscoderTrainer(make_sae("crosscoder"), trainer_cfg(micro_batches=3))
    with pytest.raises(ValueError, match=r"--batch-size 32 does not split into --micro-batches 3 .*--micro-batches 2"):
        trainer.step(next(make_batches()))
    with pytest.raises(ValueError, match="--batch-size 1000 does not split into --micro-batches 3"):
        CrosscoderRunnerConfig(store_path="s", out_dir="o", train_batch_size_tokens=1000, micro_batches=3)
    with pytest.raises(ValueError, match="--micro-batches"):
        trainer_cfg(micro_batches=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "1000", "--micro-batches", "3"], "--batch-size 1000 does not split into --micro-batches 3"),
        (["--micro-batches", "0"], "argument --micro-batches: must be >= 1"),
    ],
)
def test_the_cli_refuses_a_bad_micro_batch_count_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[0] and "Traceback" not in err
    assert len(err.splitlines()) <= 2


def test_the_widest_dictionary_fits_an_h100_in_one_micro_batch_with_bfloat16_state():
    """Ge et al.'s widest dictionary: 54 GiB of float32 weights and gradients and bfloat16
    moments, 3.6 GiB of activations and, under autocast, 9 GiB of bfloat16 weight copies. Its
    step on an H100 measured 64.2 GiB in one micro-batch and 64.4 in 4 or 16 (``benchmarks/gpu.py
    --memory-peak``): micro-batches move the prediction by under 2% either way at this shape."""
    shape, gib = (32, 768, 98304, 2048, "jumprelu_crosscoder"), 1 << 30
    one, cast = step_peak_bytes(*shape), step_peak_bytes(*shape, autocast=True)
    assert one["bfloat16"] / gib == pytest.approx(57.66, abs=0.01)
    assert cast["bfloat16"] / gib == pytest.approx(66.66, abs=0.01)
    for n in (2, 4, 8, 16):
        assert step_peak_bytes(*shape, micro_batches=n, autocast=True)["bfloat16"] / cast["bfloat16"] == pytest.approx(
            1, abs=0.02
        )
    h100 = GPUS["h100"].memory_bytes
    assert smallest_fitting_micro_batches(*shape, "bfloat16", h100, autocast=True) == 1
    assert smallest_fitting_micro_batches(*shape, "float32", h100) is None  # 72 GiB of float32 state alone


WIDE_CODE = (4, 64, 16384, 8192, "topk_crosscoder")
"""A code 64 times wider than its input at a large batch: where the whole-batch activations
outweigh what micro-batches keep, and a step under autocast in 8 of them peaks lower."""


def test_micro_batches_shrink_the_planned_peak_where_the_code_outweighs_what_they_keep():
    mib = 1 << 20
    peaks = {n: step_peak_bytes(*WIDE_CODE, micro_batches=n, autocast=True)["bfloat16"] / mib for n in (1, 2, 8)}
    assert peaks == pytest.approx({1: 2280.19, 2: 2812.19, 8: 2035.19}, abs=0.01)
    # each micro-batch's latent codes and their gradients (16 bytes a token and feature) shrink;
    # the whole batch's codes and inputs, kept for the step's statistics, and the encoder's and
    # decoder's operands, kept for their gradients, do not
    b, B, S_D, F_ = 8192 // 8, 8192, 4 * 64, 16384
    kept = (3 * B * S_D + 2 * B * F_) * 4 + 2 * B * (S_D + F_) * 2
    assert (peaks[1] - peaks[8]) * mib == (3 * (B - b) * S_D + 4 * (B - b) * F_) * 4 - kept


def test_the_automatic_adam_state_reads_the_micro_batched_peak():
    shape = (32, 768, 24576, 2048, "jumprelu_crosscoder")
    device = int(step_peak_bytes(*shape)["float32"] / AUTO_HEADROOM) + 1
    assert choose_optimizer_state(*shape, device) == "float32"
    # two micro-batches keep the whole batch besides the half they train at once: more
    assert choose_optimizer_state(*shape, device, micro_batches=2) == "bfloat16"


def test_plan_prints_the_micro_batched_peak_and_the_fewest_that_fit(capsys):
    argv = ["plan", "--recipe", "ge2025-pythia-160m", "--d-sae", "98304", "--batch-size", "2048", "--gpu", "h100"]
    assert main([*argv, "--micro-batches", "8", "--autocast", "none"]) == 0
    out = capsys.readouterr().out
    assert "activations per batch in 8 micro-batches (est.)    4.38 GiB" in out
    assert "peak with bfloat16 Adam state                    58.48 GiB" in out
    assert "fewest --micro-batches under 90% of h100         float32 none, bfloat16 1 (79.65 GiB GPU)" in out
    assert "autocast" not in out
    # cuda's default precision, bfloat16 autocast, adds 4.5 GiB for each of W_enc's and W_dec's
    # rounded copies (their gradients come out of the matmuls in float32): still one micro-batch
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bfloat16 autocast (--autocast)                     9.00 GiB" in out
    assert "peak with bfloat16 Adam state                    66.66 GiB" in out
    assert "float32 none, bfloat16 1 (79.65 GiB GPU)" in out
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--micro-batches", "3"])
    assert exit_info.value.code == 2
    assert "--batch-size 2048 does not split into --micro-batches 3" in capsys.readouterr().err


def test_a_step_that_does_not_fit_is_told_the_micro_batches_that_do():
    shape, h100 = (32, 768, 98304, 2048, "jumprelu_crosscoder"), GPUS["h100"].memory_bytes
    assert fit_problem(*shape, "bfloat16", h100, autocast=True) is None
    said = fit_problem(*shape, "float32", h100, autocast=True)
    assert said.startswith("the training step is predicted to peak at 84.6 GiB with float32 Adam state")
    assert said.endswith("; --optimizer-state bfloat16 fits (crosslens plan prints the peak of each)")
    said = fit_problem(*shape, "bfloat16", h100 // 4)
    assert said.endswith(
        "in any number of micro-batches; put snapshots on more GPUs (--snapshot-parallel under torchrun)"
    )
    device = int(2100 * (1 << 20) / AUTO_HEADROOM)  # between the 8 micro-batches' peak and one's
    said = fit_problem(*WIDE_CODE, "bfloat16", device, autocast=True)
    assert said.startswith("the training step is predicted to peak at 2.2 GiB with bfloat16 Adam state")
    assert said.endswith("; --micro-batches 8 fits (crosslens plan prints the peak of each)")
    assert fit_problem(*WIDE_CODE, "bfloat16", device, micro_batches=8, autocast=True) is None


@pytest.mark.slow  # two ranks and the single-process reference: about 20 s on 2 CPU cores
@pytest.mark.parametrize("snapshot_parallel", ["1", "2"])
def test_micro_batches_on_a_mesh_equal_one_process(tmp_path, snapshot_parallel):
    """Two ranks, each training its half of the batch (data-parallel) or its half of the
    snapshots (snapshot-parallel) in two micro-batches, against one process and one batch
    (1e-5): the whole batch's numbers (JumpReLU's p, BatchTopK's cut-off, the L0s) span both
    ranks and both micro-batches, and each rank's encoder share takes its gradient summed once
    after them."""
    import test_distributed as mesh_tests

    worker, reference = mesh_tests.worker, tmp_path / "reference"
    torch.set_num_threads(1)
    for arch in worker.ARCHS:
        CrosscoderTrainer(worker.make_crosscoder(arch), worker.trainer_config(reference / arch, 6)).fit(
            worker.global_batches
        )
    mesh_tests.train_on_ranks(
        2, "--out", str(tmp_path / "mesh"), "--snapshot-parallel", snapshot_parallel, "--micro-batches", "2"
    )
    mesh_tests.assert_same_weights(tmp_path / "mesh" / "plain", reference)


def test_a_run_resumes_in_more_micro_batches(store_path, tmp_path, capsys):  # noqa: F811
    """Micro-batches fit a run to its GPU, as the mesh does: a run resumed on a smaller GPU in
    more micro-batches continues (to float rounding, and says so), where another setting is refused."""
    runner = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run"))
    trained = runner.run()
    straight = {name: getattr(trained, name).detach().clone() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    assert json.loads((runner.out_dir / RUN_CONFIG_NAME).read_text())["micro_batches"] == 1
    shutil.rmtree(runner.checkpoint_dir / "step_00000060")  # as if it died after step 30's checkpoint
    shutil.rmtree(runner.final_path)
    with pytest.raises(ValueError, match=r"another configuration \(differs in lr"):
        CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", micro_batches=4, lr=1e-3)).run(resume=True)
    capsys.readouterr()
    resumed = CrosscoderTrainingRunner(_config(store_path, tmp_path / "run", micro_batches=4)).run(resume=True)
    assert (
        "--resume: micro_batches 4 (the run started with 1): the same training to float rounding, not the "
        "bytes an uninterrupted run would end in"
    ) in capsys.readouterr().out
    for name, value in straight.items():
        torch.testing.assert_close(getattr(resumed, name), value, rtol=0, atol=PARAMETER_ATOL, msg=name)


def test_a_resume_reads_the_kernel_plan_a_run_recorded_before_the_split_was_refused(store_path, tmp_path, capsys):  # noqa: F811
    """A run given --sparse-step on recorded jumprelu_split True beside it on CUDA, a split its step never took:
    resumed with the same settings, nothing that shapes the bytes changed, and no note says otherwise."""
    config = _config(store_path, tmp_path / "run")
    config = replace(config, sae=replace(config.sae, architecture="jumprelu_crosscoder", sparse_step="on"))
    runner = CrosscoderTrainingRunner(config)
    started = {**runner.config_record(), **runner.launch_record()}
    started["kernel_plan"] = {**started["kernel_plan"], "jumprelu_split": True}
    run_file = tmp_path / RUN_CONFIG_NAME
    run_file.write_text(json.dumps(started))
    capsys.readouterr()
    runner._say_what_changes_the_bytes(run_file)
    assert "kernel_plan" not in capsys.readouterr().out
    started["kernel_plan"] = {**started["kernel_plan"], "jumprelu_split": False, "backend": "triton"}
    run_file.write_text(json.dumps(started))
    runner._say_what_changes_the_bytes(run_file)
    assert "kernel_plan" in capsys.readouterr().out  # a plan that did change is still named
