"""Resampling silent latents: which latents, where they are pointed, how they start firing,
what state is cleared, and that a resumed run resamples the same way."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file

import crosslens.crosscoders as cc
import crosslens.training.resample as resample_module
from crosslens.architectures import defaults_for
from crosslens.crosscoders.base import CrosscoderStepInput
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig, latest_checkpoint
from crosslens.training.config import ArchitectureConfig
from crosslens.training.resample import (
    clear_adam_rows,
    resample_latents,
    resample_steps,
    silent_latents,
    token_draw_generator,
)

S, D, F, B = 2, 8, 16, 256
DIRECTIONS = torch.randn(6, S, D, generator=torch.Generator().manual_seed(0))


def batches(start_step: int = 0):
    for step in itertools.count(start_step):
        gen = torch.Generator().manual_seed(500 + step)
        active = (torch.rand(B, 6, generator=gen) < 0.2).float()
        yield torch.einsum("bk,ksd->bsd", active * (0.5 + torch.rand(B, 6, generator=gen)), DIRECTIONS) * 3


def jumprelu(seed: int = 0):
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES["jumprelu_crosscoder"]
    torch.manual_seed(seed)
    return train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, l0_coefficient=0.05))


def test_resampling_steps_fill_the_first_two_thirds():
    assert resample_steps(3000, 4) == (500, 1000, 1500, 2000)
    assert resample_steps(6, 4) == (1, 2, 3, 4)
    assert resample_steps(3, 4) == (1, 2)  # steps that round to 0 or coincide are dropped
    assert resample_steps(1000, 0) == ()
    with pytest.raises(ValueError, match="resample_dead must be >= 0"):
        resample_steps(100, -1)


def test_silent_means_under_a_share_of_the_mean_latents_rate():
    counts = torch.tensor([0, 1, 5, 100, 100])  # mean rate 41.2 / 1000
    assert silent_latents(counts, 1000, 0.1).tolist() == [True, True, False, False, False]
    assert silent_latents(counts, 1000, 0.01).tolist() == [True, False, False, False, False]
    assert not silent_latents(counts, 0, 0.1).any()


def test_a_resampled_latent_points_at_a_residual_and_fires_at_the_median_rate():
    sae = jumprelu()
    x_NSD = next(batches())
    with torch.no_grad():
        sae.threshold.data.fill_(0.3)  # as if trained: resampling puts it back at its initial value
        residual_NSD = x_NSD - sae(x_NSD)
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    silent = torch.zeros(F, dtype=torch.bool)
    silent[[2, 5, 11]] = True
    rate = torch.full((F,), 0.05, dtype=torch.float64)
    rate[7] = 0.2
    idx = resample_latents(sae, x_NSD, silent, rate, token_draw_generator(0, 10))
    assert idx.tolist() == [2, 5, 11]
    live = ~silent
    for name, p in sae.named_parameters():  # only the silent latents' slices moved
        axis = 2 if name == "W_enc" else 0
        if p.shape[axis] == F:
            assert torch.equal(
                p.detach().index_select(axis, live.nonzero().flatten()),
                before[name].index_select(axis, live.nonzero().flatten()),
            ), name
    flat_residual = torch.nn.functional.normalize(residual_NSD.flatten(1), dim=1)
    dec_median = before["W_dec"][live].flatten(1).norm(dim=1).median()
    enc_median = before["W_enc"][:, :, live].flatten(0, 1).norm(dim=0).median()
    for i in idx.tolist():
        row = sae.W_dec[i].detach().flatten()
        assert float(row.norm()) == pytest.approx(float(dec_median), rel=1e-5)
        # parallel to the residual of one token of the batch
        assert float((flat_residual @ (row / row.norm())).max()) == pytest.approx(1.0, abs=1e-5)
        column = sae.W_enc[:, :, i].detach().flatten()
        assert float(column.norm()) == pytest.approx(float(enc_median), rel=1e-5)
        assert torch.allclose(column / column.norm(), row / row.norm(), atol=1e-6)
        assert float(sae.threshold[i].detach()) == pytest.approx(sae.cfg.jumprelu_init_threshold)
        # the bias lets it through on the median live rate's share of the batch (5% of 256: 13 tokens)
        with torch.no_grad():
            h = sae.hidden_pre(x_NSD)[:, i]
        assert int((h >= 0).sum()) == round(0.05 * B)
    # the same draw from the same generator; another step's draw differs
    again = jumprelu()
    with torch.no_grad():
        again.threshold.data.fill_(0.3)
    resample_latents(again, x_NSD, silent, rate, token_draw_generator(0, 10))
    assert torch.equal(again.W_dec, sae.W_dec)
    other = jumprelu()
    resample_latents(other, x_NSD, silent, rate, token_draw_generator(0, 11))
    assert not torch.equal(other.W_dec, sae.W_dec)


def test_a_resampled_jumprelu_latent_opens_on_fewer_tokens_than_its_bias_lets_through():
    """The bias sets h + b >= 0 on the median live rate's share of the batch (13 of 256 tokens); the gate
    (h + b) ||W_dec[i, s]|| > t is strict and above the initial threshold, so the latent fires on fewer,
    as the module docstring's step 4 says (it promised the median rate itself)."""
    sae = jumprelu()
    x_NSD = next(batches())
    silent = torch.zeros(F, dtype=torch.bool)
    silent[[2, 5, 11]] = True
    rate = torch.full((F,), 0.05, dtype=torch.float64)
    idx = resample_latents(sae, x_NSD, silent, rate, token_draw_generator(0, 10))
    with torch.no_grad():
        h_NL = sae.hidden_pre(x_NSD)[:, idx]
        fired_L = (sae.encode(x_NSD)[:, idx] != 0).sum(dim=0)
    n_firing = round(0.05 * B)
    assert (h_NL >= 0).sum(dim=0).tolist() == [n_firing] * 3
    assert (h_NL > 0).sum(dim=0).tolist() == [n_firing - 1] * 3  # the last one sits at 0
    assert fired_L.tolist() == [9, 8, 11]  # and the threshold shuts a few more
    step_4 = resample_module.__doc__.split("\n4. ")[1].split("\n5. ")[0]
    assert "fire on the batch at the median firing rate" not in step_4
    assert "Its gate opens on fewer of" in step_4 and "at most\n   at the median rate" in step_4


def test_nothing_is_resampled_without_silent_latents_or_live_ones():
    sae = jumprelu()
    x_NSD = next(batches())
    rate = torch.full((F,), 0.05, dtype=torch.float64)
    before = sae.W_dec.detach().clone()
    for silent in (torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)):
        assert len(resample_latents(sae, x_NSD, silent, rate, token_draw_generator(0, 1))) == 0
    assert torch.equal(sae.W_dec, before)


def test_clearing_adam_rows_zeroes_the_latents_slices_of_each_moment():
    sae = jumprelu()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x_NSD = next(batches())
    sae.training_forward_pass(
        CrosscoderStepInput(
            sae_in=x_NSD,
            coefficients={"l0": 0.05},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    ).loss.backward()
    optimizer.step()
    idx = torch.tensor([1, 4])
    clear_adam_rows(optimizer, sae.latent_rows(), idx)
    for param, axis in sae.latent_rows():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[param][key]
            assert not moment.index_select(axis, idx).any()
            assert moment.index_select(axis, torch.tensor([0, 2, 3])).any()
    assert sae.latent_rows()[-1][0] is sae.threshold


def _trainer_cfg(**kw) -> CrosscoderTrainerConfig:
    base = dict(
        total_steps=24, lr=3e-3, lr_decay_steps=4, resample_dead=2, save_final=False, activation_scale_check="off"
    )
    return CrosscoderTrainerConfig(**{**base, **kw})


def test_training_resamples_silent_latents_and_a_resumed_run_does_the_same(tmp_path):
    # a latent that never fires: resampled at step 6 and given a chance
    sae = jumprelu()
    with torch.no_grad():
        sae.b_enc[3] = -1e3
    trainer = CrosscoderTrainer(sae, _trainer_cfg())
    assert trainer.resample_at == (6, 12)
    trainer.fit(batches())
    assert trainer.resampled.get(6, 0) >= 1
    assert float(trainer.sae.b_enc[3].detach()) > -10
    # killed after step 9, between the two resamplings, and resumed: the same bytes
    first = jumprelu()
    with torch.no_grad():
        first.b_enc[3] = -1e3
    cfg = _trainer_cfg(checkpoint_dir=str(tmp_path), checkpoint_every=9)
    with pytest.raises(ValueError, match="ran out after 9"):
        CrosscoderTrainer(first, cfg).fit(itertools.islice(batches(), 9))
    resumed = CrosscoderTrainer.from_checkpoint(latest_checkpoint(tmp_path))
    resumed.fit(batches)
    assert resumed.resampled == trainer.resampled
    for name, value in trainer.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], value), name


def test_resampling_is_on_by_default_for_jumprelu_alone():
    assert (
        ArchitectureConfig(architecture="jumprelu_crosscoder").resample_dead
        == defaults_for("jumprelu_crosscoder").resample_dead
        == 4
    )
    for arch in ("crosscoder", "topk_crosscoder", "batchtopk_crosscoder"):
        assert ArchitectureConfig(architecture=arch).resample_dead == 0
    assert ArchitectureConfig(architecture="crosscoder", resample_dead=3).resample_dead == 3
    # a trainer built by hand resamples as the runner does: the architecture's default
    for arch in ("jumprelu_crosscoder", "crosscoder", "topk_crosscoder", "batchtopk_crosscoder"):
        hand_built = CrosscoderTrainerConfig(total_steps=10).for_architecture(arch)
        assert hand_built.resample_dead == ArchitectureConfig(architecture=arch).resample_dead
    assert (
        CrosscoderTrainerConfig(total_steps=10, resample_dead=0).for_architecture("jumprelu_crosscoder").resample_dead
        == 0
    )
    with pytest.raises(ValueError, match="resample_below_share"):
        CrosscoderTrainerConfig(total_steps=10, resample_below_share=0)


def test_the_saved_jumprelu_crosscoder_keeps_its_thresholds_at_or_above_zero(tmp_path):
    # training projects the threshold before each pass; the last step's update has none after it
    sae = jumprelu()
    with torch.no_grad():
        sae.threshold[:2] = -1e-28
        sae.threshold[2] = 0.2
    sae.save_inference_model(tmp_path)
    saved = load_file(str(tmp_path / "sae_weights.safetensors"))["threshold"]
    assert saved[:2].tolist() == [0.0, 0.0] and float(saved[2]) == pytest.approx(0.2)
    assert float(sae.threshold[0].detach()) < 0  # the training crosscoder itself is left as it was
