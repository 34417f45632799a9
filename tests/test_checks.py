"""The un-normalised-batch check: raw activations must not train silently."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from crosslens.crosscoders import ReLUTrainingCrosscoder, ReLUTrainingCrosscoderConfig
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig
from crosslens.training.checks import UnnormalizedActivationsWarning, check_activation_scale


def _batch(scales, n=512, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(scales), d, generator=gen)
    x = x / x.norm(dim=-1).mean(dim=0)[None, :, None] * math.sqrt(d)
    return x * torch.tensor(scales)[None, :, None]


def test_normalised_batch_passes_and_ratios_are_measured():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratios = check_activation_scale(_batch([1.0, 1.5, 0.6]), mode="error")
    assert ratios == pytest.approx([1.0, 1.5, 0.6], rel=1e-5)


def test_raw_batch_warns_or_refuses_naming_the_store_option():
    raw = _batch([1.0, 0.125, 60.0])
    with pytest.warns(UnnormalizedActivationsWarning, match=r"snapshots \[1, 2\].*normalize=True"):
        check_activation_scale(raw)
    with pytest.raises(ValueError, match="ActivationProvider\\(store, hook, normalize=True\\)"):
        check_activation_scale(raw, mode="error")
    assert check_activation_scale(raw, mode="off") == []
    with pytest.raises(ValueError, match="choose one of"):
        check_activation_scale(raw, mode="loud")
    with pytest.raises(ValueError, match="activation_scale_check"):
        CrosscoderTrainerConfig(total_steps=1, activation_scale_check="loud")


def _trainer(check: str) -> CrosscoderTrainer:
    torch.manual_seed(0)
    sae = ReLUTrainingCrosscoder(ReLUTrainingCrosscoderConfig(d_in=16, d_sae=8, n_snapshots=3))
    return CrosscoderTrainer(sae, CrosscoderTrainerConfig(total_steps=3, activation_scale_check=check))


def test_trainer_checks_the_first_batch_only():
    raw = _batch([0.1, 0.1, 0.1], n=32)
    trainer = _trainer("warn")
    with pytest.warns(UnnormalizedActivationsWarning):
        trainer.step(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.step(raw)  # checked once, not every step
    with pytest.raises(ValueError, match="normalize=True"):
        _trainer("error").fit([raw] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer("error").fit([_batch([1.0, 1.0, 1.0], n=32)] * 3)
        _trainer("off").fit([raw] * 3)
