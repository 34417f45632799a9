"""CrosscoderTrainer: metrics, schedules, dead features, exact resume, W&B offline
logging, and SAELens's own trainer on a crosscoder."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from wandb_files import item_values, wandb_records

import crosslens.crosscoders as cc
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig, LoggingConfig, latest_checkpoint
from crosslens.training.metrics import crosscoder_metrics
from crosslens.training.run_log import read_run_log

S, D, F, B = 2, 8, 32, 16
ARCHS = list(cc.ARCHITECTURES)
TRUE_DIRECTIONS = torch.randn(12, S, D, generator=torch.Generator().manual_seed(0))


def make_batches(start_step: int = 0):
    """Batch i is a fixed function of i: sparse mixtures of 12 shared directions."""
    for step in itertools.count(start_step):
        gen = torch.Generator().manual_seed(1000 + step)
        active = (torch.rand(B, 12, generator=gen) < 0.25).float()
        yield torch.einsum("bk,ksd->bsd", active * torch.rand(B, 12, generator=gen), TRUE_DIRECTIONS)


def make_sae(arch: str, seed: int = 0, **kw):
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    defaults = {
        "crosscoder": {"l1_coefficient": 0.05, "l1_warm_up_steps": 5},
        "jumprelu_crosscoder": {"l0_coefficient": 0.01, "l0_warm_up_steps": 5},
        "topk_crosscoder": {"k": 4},
        "batchtopk_crosscoder": {"k": 4},
    }[arch]
    torch.manual_seed(seed)
    return train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **{**defaults, **kw}))


def trainer_cfg(**kw) -> CrosscoderTrainerConfig:
    base = dict(
        total_steps=20,
        lr=3e-3,
        lr_warm_up_steps=3,
        lr_decay_steps=5,
        dead_feature_window_tokens=3 * B,
    )
    return CrosscoderTrainerConfig(**{**base, **kw})


def test_metrics_by_hand():
    x = torch.tensor([[[1.0, 0.0], [2.0, 2.0]], [[3.0, 0.0], [0.0, 2.0]]])  # [2, 2, 2]
    x_hat = torch.tensor([[[1.0, 1.0], [2.0, 2.0]], [[2.0, 0.0], [0.0, 0.0]]])
    f = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    m = crosscoder_metrics(x, x_hat, f)
    # snapshot 0: errors 1 and 1; mean (2, 0): variance 1 + 1
    # snapshot 1: errors 0 and 4; mean (1, 2): variance 1 + 1
    assert m["metrics/mse/snapshot_0"] == pytest.approx(1.0)
    assert m["metrics/mse/snapshot_1"] == pytest.approx(2.0)
    assert m["metrics/explained_variance/snapshot_0"] == pytest.approx(1 - 2 / 2)
    assert m["metrics/explained_variance/snapshot_1"] == pytest.approx(1 - 4 / 2)
    assert m["metrics/explained_variance"] == pytest.approx(1 - 6 / 4)
    assert m["metrics/l0"] == pytest.approx(1.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_reaches_the_same_weights(arch, tmp_path):
    straight = make_sae(arch)
    CrosscoderTrainer(straight, trainer_cfg()).fit(make_batches)

    # same run, killed after step 10 (the data runs out), then resumed from its checkpoint
    interrupted = make_sae(arch)
    cfg = trainer_cfg(checkpoint_dir=str(tmp_path), checkpoint_every=10)
    with pytest.raises(ValueError, match="ran out after 10 of 20"):
        CrosscoderTrainer(interrupted, cfg).fit(itertools.islice(make_batches(), 10))
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step_00000010"

    resumed = CrosscoderTrainer.from_checkpoint(checkpoint)
    assert resumed.n_steps == 10
    resumed.fit(make_batches)
    assert resumed.n_steps == 20
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], value), name
    if "topk" in arch:  # the aux loss saw dead features, so that state was restored too
        assert resumed.dead_features.any()


def test_resume_from_a_plain_iterable_skips_consumed_batches(tmp_path):
    batches = list(itertools.islice(make_batches(), 20))
    straight = make_sae("crosscoder")
    CrosscoderTrainer(straight, trainer_cfg()).fit(batches)

    cfg = trainer_cfg(checkpoint_dir=str(tmp_path), checkpoint_every=10)
    with pytest.raises(ValueError, match="ran out"):
        CrosscoderTrainer(make_sae("crosscoder"), cfg).fit(batches[:10])
    fresh = make_sae("crosscoder", seed=123)  # weights come from the checkpoint
    CrosscoderTrainer(fresh, cfg).fit(batches, resume_from=tmp_path / "step_00000010")
    for name, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_lr_schedule_and_threshold_learning_rate():
    trainer = CrosscoderTrainer(
        make_sae("jumprelu_crosscoder", threshold_lr_scale=0.1),
        trainer_cfg(total_steps=12, lr=1e-2, lr_warm_up_steps=4, lr_decay_steps=4),
    )
    main_lrs, threshold_lrs = [], []
    for batch in itertools.islice(make_batches(), 12):
        main_lrs.append(trainer.optimizer.param_groups[0]["lr"])
        threshold_lrs.append(trainer.optimizer.param_groups[1]["lr"])
        trainer.step(batch)
    assert main_lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert main_lrs[4:8] == pytest.approx([1e-2] * 4)
    assert main_lrs[8:] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert threshold_lrs == pytest.approx([0.1 * lr for lr in main_lrs])


def test_sparsity_coefficient_warms_up_linearly():
    trainer = CrosscoderTrainer(
        make_sae("crosscoder", l1_coefficient=2.0, l1_warm_up_steps=4),
        trainer_cfg(total_steps=6, lr_warm_up_steps=0, lr_decay_steps=0),
    )
    seen = []
    for batch in itertools.islice(make_batches(), 6):
        seen.append(trainer.coefficients["l1"])
        trainer.step(batch)
    assert seen == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_dead_features_are_counted_in_tokens():
    sae = make_sae("crosscoder")
    with torch.no_grad():  # feature 0 can never fire, and gets no gradient to revive it
        sae.W_enc[:, :, 0] = 0
        sae.b_enc[0] = -1.0
    trainer = CrosscoderTrainer(sae, trainer_cfg(dead_feature_window_tokens=40))
    batches = make_batches()
    trainer.step(next(batches))
    trainer.step(next(batches))  # 32 tokens without firing: not yet dead
    assert not trainer.dead_features[0]
    trainer.step(next(batches))  # 48 > 40
    assert trainer.dead_features[0]
    assert int(trainer.dead_features.sum()) < F // 2


def test_the_default_dead_window_is_a_thirtieth_of_a_short_run_and_1m_tokens_of_a_long_one():
    from crosslens.training.config import dead_feature_window

    assert dead_feature_window(3_000 * 1024) == 102_400
    assert dead_feature_window(10**9) == 1_000_000
    assert dead_feature_window(10) == 1
    sae = make_sae("crosscoder")
    with torch.no_grad():  # feature 0 can never fire
        sae.W_enc[:, :, 0] = 0
        sae.b_enc[0] = -1.0
    trainer = CrosscoderTrainer(sae, trainer_cfg(total_steps=150, dead_feature_window_tokens=None))
    batches = make_batches()
    trainer.step(next(batches))
    assert trainer.dead_feature_window_tokens == 150 * B // 30 == 80
    for _ in range(4):  # 80 tokens without firing: not yet dead
        trainer.step(next(batches))
    assert not trainer.dead_features[0]
    trainer.step(next(batches))  # 96 > 80
    assert trainer.dead_features[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_training_learns_the_synthetic_features(arch, tmp_path):
    sae = make_sae(arch)
    held_out = next(make_batches(10_000))
    before = crosscoder_metrics(held_out, sae(held_out), sae.encode(held_out))
    cfg = trainer_cfg(
        total_steps=100,
        lr=1e-2,
        lr_warm_up_steps=0,
        lr_decay_steps=0,
        dead_feature_window_tokens=10_000,
        checkpoint_dir=str(tmp_path),
    )
    CrosscoderTrainer(sae, cfg).fit(make_batches)
    sae.eval()
    after = crosscoder_metrics(held_out, sae(held_out), sae.encode(held_out))
    assert before["metrics/explained_variance"] < 0.2
    assert after["metrics/explained_variance"] > 0.8
    for s in range(S):
        assert after[f"metrics/explained_variance/snapshot_{s}"] > 0.7
    # the final inference model went to checkpoint_dir/final and loads with SAELens
    loaded = SAE.load_from_disk(tmp_path / "final")
    assert isinstance(loaded, cc.ARCHITECTURES[arch][0])
    if arch != "batchtopk_crosscoder":  # BatchTopK's inference code uses the fixed threshold
        torch.testing.assert_close(loaded(held_out), sae(held_out))


def _read_wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of an offline .wandb file."""
    return [
        item_values(record.history.item)
        for record in wandb_records(run_file)
        if record.WhichOneof("record_type") == "history"
    ]


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    cfg = trainer_cfg(
        total_steps=6,
        lr_decay_steps=0,
        log_path=str(tmp_path / "train_log.jsonl"),
        logger=LoggingConfig(
            log_to_wandb=True,
            wandb_mode="offline",
            wandb_dir=str(tmp_path),
            wandb_project="crosslens-test",
            run_name="offline-check",
            wandb_log_frequency=2,
            eval_every_n_wandb_logs=2,
        ),
    )
    CrosscoderTrainer(make_sae("crosscoder"), cfg).fit(make_batches)
    import wandb

    # run.finish() can return before wandb's service process has flushed the offline
    # file; teardown stops the service, which waits for the flush
    wandb.teardown()
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    rows = _read_wandb_history(run_files[0])
    assert [int(r["_step"]) for r in rows] == [2, 4, 6]
    keys = set().union(*rows)
    expected = {
        "losses/overall_loss",
        "losses/mse_loss",
        "losses/l1_loss",
        "metrics/explained_variance",
        "metrics/explained_variance/snapshot_0",
        "metrics/explained_variance/snapshot_1",
        "metrics/mse/snapshot_0",
        "metrics/mse/snapshot_1",
        "metrics/l0",
        "sparsity/dead_features",
        "sparsity/dense_features",
        "details/current_learning_rate",
        "details/l1_coefficient",
        "performance/tokens_per_second",
    }
    assert expected <= keys
    histogram_keys = {k for k in rows[1] if k.startswith("weights/decoder_norms/snapshot_")}
    assert {k.rsplit("/", 1)[0] for k in histogram_keys} == {
        "weights/decoder_norms/snapshot_0",
        "weights/decoder_norms/snapshot_1",
    }
    assert not any(k.startswith("weights/") for k in rows[0])
    assert float(rows[0]["details/l1_coefficient"]) == pytest.approx(0.05 * 2 / 5)
    # W&B's tokens/s is read off the run log's clock: the log's tokens over its seconds
    steps = [r for r in read_run_log(tmp_path / "train_log.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for row, (before, after) in zip(rows[1:], zip(steps, steps[1:])):
        rate = (after["n_tokens"] - before["n_tokens"]) / (after["seconds"] - before["seconds"])
        assert float(row["performance/tokens_per_second"]) == pytest.approx(rate, rel=1e-9)


def test_saelens_trainer_trains_a_crosscoder():
    sae = make_sae("topk_crosscoder")
    held_out = next(make_batches(10_000))
    mse_before = (sae(held_out) - held_out).pow(2).sum((-2, -1)).mean().item()
    cfg = SAETrainerConfig(total_training_samples=60 * B, train_batch_size_samples=B, lr=1e-2, lr_end=1e-3)
    SAETrainer(cfg, sae, data_provider=make_batches()).fit()
    mse_after = (sae(held_out) - held_out).pow(2).sum((-2, -1)).mean().item()
    assert mse_after < 0.5 * mse_before


def test_trainer_rejects_bad_input():
    from sae_lens.saes import StandardTrainingSAE, StandardTrainingSAEConfig

    with pytest.raises(TypeError, match="crosscoder training classes"):
        CrosscoderTrainer(StandardTrainingSAE(StandardTrainingSAEConfig(d_in=4, d_sae=8)), trainer_cfg())
    with pytest.raises(ValueError, match="checkpoint_dir"):
        trainer_cfg(checkpoint_every=5)
    trainer = CrosscoderTrainer(make_sae("crosscoder"), trainer_cfg())
    with pytest.raises(ValueError, match="n_snapshots=2, d_in=8"):
        trainer.step(torch.zeros(B, D, S))


def test_a_batch_that_is_not_one_trains_no_step():
    """One token ``[S, D]`` would train as a batch of one, an empty batch read as a loss gone NaN,
    and a tensor of tokens given to ``fit`` was iterated a token a step: each is refused, naming the
    shape a step takes, before a step is counted."""
    trainer = CrosscoderTrainer(make_sae("crosscoder"), trainer_cfg())
    takes = r"a step takes \[batch, n_snapshots, d_in\] with at least one token"
    with pytest.raises(ValueError, match=rf"^a training batch has shape \(2, 8\); {takes}"):
        trainer.step(torch.zeros(S, D))
    with pytest.raises(ValueError, match=rf"^a training batch has shape \(0, 2, 8\); {takes}"):
        trainer.step(torch.zeros(0, S, D))
    with pytest.raises(TypeError, match=r"^a training batch of type ndarray; pass torch.as_tensor\(batch\)"):
        trainer.step(torch.zeros(B, S, D).numpy())
    acts_NSD = torch.cat(list(itertools.islice(make_batches(), 4)))
    with pytest.raises(ValueError, match=r"^fit got one tensor of shape \(64, 2, 8\).*acts_NSD.split\(batch_size\)"):
        trainer.fit(acts_NSD)
    assert (trainer.n_steps, trainer.n_tokens) == (0, 0)
    trainer.fit(acts_NSD.split(B) * 5)  # its batches train
    assert (trainer.n_steps, trainer.n_tokens) == (20, 20 * B)


@pytest.mark.parametrize("arch", ["crosscoder", "jumprelu_crosscoder"])
def test_bfloat16_autocast_trains_float32_parameters_close_to_float32(arch):
    results = {}
    for autocast in (None, "bfloat16"):
        trainer = CrosscoderTrainer(make_sae(arch), trainer_cfg(total_steps=20, autocast_dtype=autocast))
        trainer.fit(make_batches)
        assert all(p.dtype == torch.float32 for p in trainer.sae.parameters())
        results[autocast] = trainer.sae.W_dec.detach().clone()
    start = make_sae(arch).W_dec.detach()
    moved = (results[None] - start).norm()
    # bf16 rounding changes the path a little, not the destination
    assert (results["bfloat16"] - results[None]).norm() < 0.2 * moved
    with pytest.raises(ValueError, match="loss scaling"):
        trainer_cfg(autocast_dtype="float16")
