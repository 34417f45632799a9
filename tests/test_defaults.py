"""One table of training defaults (crosslens.architectures): every entry point reads it."""

from __future__ import annotations

import json

import pytest
import torch

from crosslens.architectures import (
    DEFAULT_LR,
    PICO_DEMO_JUMPRELU_SPARSITY,
    TRAINING_DEFAULTS,
    sparsity_coefficient_for,
)


def test_every_registered_architecture_has_defaults():
    from crosslens.crosscoders import ARCHITECTURES

    assert set(TRAINING_DEFAULTS) == set(ARCHITECTURES)
    assert all(d.source for d in TRAINING_DEFAULTS.values())


def test_each_architecture_trains_at_its_one_learning_rate():
    """The runner's lr and a hand-built trainer's come from the architecture's table entry: 1e-3
    for the TopK-style crosscoders, 3e-3 for the JumpReLU and ReLU crosscoders (slower to
    converge at 1e-3 on the planted generators: benchmarks/README.md)."""
    from crosslens.architectures import JUMPRELU_LR, RELU_LR
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig, CrosscoderTrainerConfig

    assert DEFAULT_LR == 1e-3
    assert JUMPRELU_LR == RELU_LR == 3e-3
    expected = {"crosscoder": RELU_LR, "jumprelu_crosscoder": JUMPRELU_LR}
    hand_built = CrosscoderTrainerConfig(total_steps=10)
    assert (hand_built.lr, hand_built.resample_dead, hand_built.lr_decay_steps) == (None, None, 2)
    for arch in TRAINING_DEFAULTS:
        config = CrosscoderRunnerConfig(
            store_path="unused", out_dir="unused", sae=ArchitectureConfig(architecture=arch)
        )
        assert config.lr == TRAINING_DEFAULTS[arch].lr == expected.get(arch, DEFAULT_LR)
        resolved = hand_built.for_architecture(arch)
        assert (resolved.lr, resolved.lr_end) == (config.lr, config.lr / 10)
        assert resolved.resample_dead == config.sae.resample_dead == TRAINING_DEFAULTS[arch].resample_dead
        assert config.lr_decay_fraction * 10 == resolved.lr_decay_steps
    assert (
        CrosscoderTrainerConfig(total_steps=10, lr=0.5, resample_dead=1).for_architecture("jumprelu_crosscoder").lr
        == 0.5
    )


def test_sparsity_defaults_per_entry_point():
    from crosslens.cli.demo_stages import DemoConfig
    from crosslens.training import baselines

    shape = dict(n_snapshots=8, d_in=64, d_sae=128)
    assert sparsity_coefficient_for("jumprelu_crosscoder", **shape) == pytest.approx(0.45 * 8 * 64 / 128)
    assert sparsity_coefficient_for("crosscoder", **shape) == 1.0
    assert (
        sparsity_coefficient_for("topk_crosscoder", **shape)
        == sparsity_coefficient_for("batchtopk_crosscoder", **shape)
        == 0.25
    )
    # the architectures' own configs default to the same table
    import crosslens.crosscoders as cc

    assert cc.ARCHITECTURES["jumprelu_crosscoder"][3](**shape).l0_coefficient == pytest.approx(0.45 * 8 * 64 / 128)
    assert cc.ARCHITECTURES["jumprelu_crosscoder"][3](**shape, l0_coefficient=0.3).l0_coefficient == 0.3
    assert cc.ARCHITECTURES["crosscoder"][3](**shape).l1_coefficient == 1.0
    assert (
        cc.ARCHITECTURES["topk_crosscoder"][3](**shape).k
        == cc.ARCHITECTURES["batchtopk_crosscoder"][3](**shape).k
        == 32
    )
    assert cc.ARCHITECTURES["topk_crosscoder"][3](**shape).l1_coefficient == 0.25
    assert cc.ARCHITECTURES["batchtopk_crosscoder"][3](**shape).l1_coefficient == 0.25
    # the demo keeps its measured value (its seeded figures in benchmarks/README.md depend on it)
    assert DemoConfig().sae.sparsity_coefficient == PICO_DEMO_JUMPRELU_SPARSITY == 0.5
    # warm-ups: Bayazit et al. 5% (ReLU), Ge et al. 10% (JumpReLU); the baselines use their crosscoder's
    assert {a: d.sparsity_warm_up for a, d in TRAINING_DEFAULTS.items() if d.sparsity_warm_up} == {
        "crosscoder": 0.05,
        "jumprelu_crosscoder": 0.1,
    }
    assert baselines.BASELINE_SPARSITY_WARM_UP == {"standard": 0.05, "jumprelu": 0.1, "topk": 0.0}


def test_one_builder_translates_sparsity_for_crosscoders_and_saes():
    from crosslens.training.baselines import build_training_sae
    from crosslens.training.factory import build_training_crosscoder, fill_sparsity_warm_up

    relu = build_training_crosscoder(
        "crosscoder", d_in=8, n_snapshots=2, d_sae=16, sparsity_coefficient=1.5, sparsity_warm_up_steps=7
    )
    assert (relu.cfg.l1_coefficient, relu.cfg.l1_warm_up_steps) == (1.5, 7)
    jump = build_training_crosscoder("jumprelu_crosscoder", d_in=8, n_snapshots=2, d_sae=16, sparsity_coefficient=0.4)
    assert (jump.cfg.l0_coefficient, jump.cfg.l0_warm_up_steps) == (0.4, None)  # the run's 10%, once known
    fill_sparsity_warm_up(jump.cfg, total_steps=95)
    assert jump.cfg.l0_warm_up_steps == 9
    fill_sparsity_warm_up(jump.cfg, total_steps=1000)  # set stays set
    assert jump.cfg.l0_warm_up_steps == 9
    assert build_training_crosscoder("topk_crosscoder", d_in=8, n_snapshots=2, d_sae=16, k=3).cfg.k == 3
    topk = build_training_crosscoder(
        "batchtopk_crosscoder", d_in=8, n_snapshots=2, d_sae=16, k=3, sparsity_coefficient=0.1
    )
    assert (topk.cfg.k, topk.cfg.l1_coefficient, topk.cfg.l1_warm_up_steps) == (3, 0.1, 0)
    standard = build_training_sae("standard", d_in=8, d_sae=16, sparsity_warm_up_steps=4)
    assert (standard.cfg.l1_coefficient, standard.cfg.l1_warm_up_steps) == (5.0, 4)
    sae = build_training_sae("jumprelu", d_in=8, d_sae=16, sparsity_coefficient=0.25, sparsity_warm_up_steps=3)
    assert (sae.cfg.l0_coefficient, sae.cfg.l0_warm_up_steps) == (0.25, 3)
    assert build_training_sae("topk", d_in=8, d_sae=16, target_l0=2.6).cfg.k == 3


def test_decoder_init_norm_and_k_come_from_the_table():
    from crosslens.architectures import DEFAULT_DECODER_INIT_NORM, DEFAULT_K
    from crosslens.crosscoders import base as crosscoder_base
    from crosslens.training.runner import CrosscoderRunnerConfig

    config = CrosscoderRunnerConfig(store_path="unused", out_dir="unused")
    assert (config.sae.k, config.sae.decoder_init_norm) == (DEFAULT_K, DEFAULT_DECODER_INIT_NORM) == (32, 0.08)
    assert crosscoder_base.DEFAULT_DECODER_INIT_NORM is DEFAULT_DECODER_INIT_NORM
    assert {d.decoder_init_norm for d in TRAINING_DEFAULTS.values()} == {DEFAULT_DECODER_INIT_NORM}


def test_a_hand_built_trainer_trains_the_runners_jumprelu_crosscoder_to_the_byte(tmp_path):
    """The notebook path of docs/API.md (the architecture's training config and
    CrosscoderTrainerConfig, each at its defaults) and the runner that `crosslens train` drives
    train the same JumpReLU crosscoder: the same resampling, warm-up, lambda, learning rate and
    decay, from one table (crosslens.architectures)."""
    from trust_fixtures import HOOK, harvest, write_suite

    from crosslens.activations import ActivationProvider, ActivationStore
    from crosslens.crosscoders import JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig
    from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
    from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig
    from crosslens.training.runner import CrosscoderTrainingRunner

    store_path = tmp_path / "store"
    harvest(write_suite(tmp_path / "suite"), store_path)
    n_steps, batch, d_sae = 60, 64, 32
    config = CrosscoderRunnerConfig(
        store_path=str(store_path),
        out_dir=str(tmp_path / "runner"),
        sae=ArchitectureConfig(d_sae=d_sae),
        n_steps=n_steps,
        train_batch_size_tokens=batch,
        progress=False,
    )
    assert config.sae.architecture == "jumprelu_crosscoder"
    CrosscoderTrainingRunner(config).run()

    store = ActivationStore.open(store_path)
    torch.manual_seed(config.seed)
    crosscoder = JumpReLUTrainingCrosscoder(
        JumpReLUTrainingCrosscoderConfig(d_in=store.d_in_of(HOOK), n_snapshots=store.n_snapshots, d_sae=d_sae)
    )
    trainer = CrosscoderTrainer(
        crosscoder, CrosscoderTrainerConfig(total_steps=n_steps, checkpoint_dir=str(tmp_path / "hand"))
    )
    trainer.fit(ActivationProvider(store, HOOK, batch_size=batch, seed=config.seed, drop_last=True).batches)

    run = json.loads((tmp_path / "runner" / "run.json").read_text())
    assert run["sae"]["resample_dead"] == 4 and run["lr"] == 3e-3
    assert trainer.resample_at == (10, 20, 30, 40)  # JumpReLU's 4 resamplings, in the first two thirds
    assert (trainer.cfg.lr, trainer.cfg.lr_decay_steps, crosscoder.cfg.l0_warm_up_steps) == (3e-3, 12, 6)
    weights = "final/sae_weights.safetensors"
    assert (tmp_path / "hand" / weights).read_bytes() == (tmp_path / "runner" / weights).read_bytes()


def test_a_warm_up_left_to_the_trainer_is_refused_by_another_trainer():
    """SAELens's trainer reads get_coefficients() and knows nothing of crosslens's table: a
    JumpReLU or ReLU warm-up left None is refused with the steps to set; TopK's and BatchTopK's
    share is 0, so theirs is 0 at once and SAELens trains them as before."""
    import crosslens.crosscoders as cc

    shape = dict(d_in=8, n_snapshots=2, d_sae=16)
    for arch, field in (("jumprelu_crosscoder", "l0_warm_up_steps"), ("crosscoder", "l1_warm_up_steps")):
        _, _, train_cls, cfg_cls = cc.ARCHITECTURES[arch]
        with pytest.raises(ValueError, match=rf"{field} is None.*{field}=int\("):
            train_cls(cfg_cls(**shape)).get_coefficients()
        assert train_cls(cfg_cls(**shape, **{field: 3})).get_coefficients()  # set: any trainer takes it
    for arch in ("topk_crosscoder", "batchtopk_crosscoder"):
        assert cc.ARCHITECTURES[arch][3](**shape, k=4).l1_warm_up_steps == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        cc.ARCHITECTURES["crosscoder"][3](**shape, l1_warm_up_steps=-1)


def test_train_and_evaluate_measure_the_spliced_loss_on_one_default():
    """The quality table ``train`` writes and ``crosslens evaluate --spliced-loss`` measure the same
    rows against the same floor unless told otherwise, and the floors the flag offers are the
    ones the measurement takes."""
    import typing

    from crosslens.causal.defaults import SPLICED_ABLATIONS
    from crosslens.causal.spliced_loss_eval import SplicedAblation
    from crosslens.cli import build_parser

    parser = build_parser()
    train = parser.parse_args(["train", "--store", "S", "--out", "O"])
    evaluate = parser.parse_args(["evaluate", "RUN", "--store", "S"])
    assert (train.spliced_seqs, train.spliced_ablation) == (evaluate.spliced_seqs, evaluate.spliced_ablation)
    assert (train.spliced_seqs, train.spliced_ablation) == (64, "zero")
    assert SPLICED_ABLATIONS == typing.get_args(SplicedAblation)
