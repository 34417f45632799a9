"""Progress bars: a caller's switch hides its bar, and so does tqdm's own TQDM_DISABLE.

Scripts that run many trainings in parallel (the planted grids) set ``TQDM_DISABLE=1`` after
their imports to keep their logs readable. tqdm reads the variable only when it is imported,
and not at all under an explicit ``disable=False``; every crosslens bar comes from
:func:`crosslens.core.progress.progress_bar`, which reads it when the bar is made.
"""

from __future__ import annotations

import io

import torch

from crosslens.core.progress import progress_bar
from crosslens.crosscoders import ReLUTrainingCrosscoder, ReLUTrainingCrosscoderConfig
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig


def _drawn(monkeypatch, *, show: bool, env: str | None) -> str:
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    out = io.StringIO()
    for _ in progress_bar(range(3), show=show, desc="counting", file=out):
        pass
    return out.getvalue()


def test_the_callers_switch_and_the_environment_each_hide_the_bar(monkeypatch):
    assert "counting: 100%" in _drawn(monkeypatch, show=True, env=None)
    assert _drawn(monkeypatch, show=False, env=None) == ""
    assert _drawn(monkeypatch, show=True, env="1") == ""


def _fit_three_steps() -> None:
    torch.manual_seed(0)
    sae = ReLUTrainingCrosscoder(ReLUTrainingCrosscoderConfig(d_in=8, d_sae=8, n_snapshots=2))
    trainer = CrosscoderTrainer(sae, CrosscoderTrainerConfig(total_steps=3, activation_scale_check="off"))
    trainer.fit([torch.randn(16, 2, 8)] * 3)


def test_trainer_bar_shows_unless_tqdm_disable_is_set(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _fit_three_steps()
    assert "Training crosscoder" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _fit_three_steps()
    assert "Training crosscoder" not in capsys.readouterr().err


def test_trainer_bar_shows_the_loss_and_l0_once_a_log_interval_without_wandb(monkeypatch, capsys):
    """A run without W&B still sees how its loss and sparsity go (a JumpReLU run's L0 also says
    whether its step runs from the active pairs), read from the device once a log interval."""
    from crosslens.training.config import LoggingConfig

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    torch.manual_seed(0)
    sae = ReLUTrainingCrosscoder(ReLUTrainingCrosscoderConfig(d_in=8, d_sae=8, n_snapshots=2))
    cfg = CrosscoderTrainerConfig(
        total_steps=4, activation_scale_check="off", logger=LoggingConfig(wandb_log_frequency=2)
    )
    trainer = CrosscoderTrainer(sae, cfg)
    trainer.fit([torch.randn(16, 2, 8)] * 4)
    err = capsys.readouterr().err
    shown = err.rsplit("Training crosscoder", 1)[1]
    assert f"l0={float(trainer.last_l0):.1f}" in shown and "loss=" in shown
    assert not trainer.cfg.logger.log_to_wandb
