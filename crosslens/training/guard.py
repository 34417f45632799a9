"""Stop training at the first non-finite loss, and before a checkpoint of non-finite weights.

``check_finite_step(trainer, loss)`` runs after every optimizer step. On the CPU it reads
the loss at once; on an accelerator it keeps the first bad step in a device tensor and
reads it every ``SYNC_EVERY`` steps, so the step loop does not wait on the device. Before
any step that saves (a checkpoint step, the last step) it also checks every parameter,
so no checkpoint, and no final crosscoder, ever holds NaN or inf: the last good
checkpoint stays the newest one on disk.
"""

from __future__ import annotations

from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import NonFiniteTrainingError
from crosslens.core.paths import latest_checkpoint

SYNC_EVERY = 50
"""Steps between reads of the non-finite flag on an accelerator."""


class _FiniteState:
    def __init__(self, device: torch.device) -> None:
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_bad_loss = torch.zeros((), dtype=torch.float32, device=device)


def _last_good_checkpoint(trainer: Any) -> str:
    if trainer.cfg.checkpoint_dir is None or not trainer.cfg.checkpoint_every:
        return "no checkpoint is kept (checkpoint_every=0)"
    latest = latest_checkpoint(trainer.cfg.checkpoint_dir)
    return f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was saved before it"


def _advice(trainer: Any) -> str:
    return (
        f"Nothing later was saved: {_last_good_checkpoint(trainer)}. Usual causes: a learning rate too high "
        "for these activations (start a new run with a lower --lr / lr), or activations holding inf or NaN "
        "(open the store with verification on: the default, without --no-verify)."
    )


def _raise_loss(trainer: Any, step: int, value: float) -> None:
    raise NonFiniteTrainingError(f"training stopped: the loss became {value} at step {step}. {_advice(trainer)}")


def _saves_after(trainer: Any, step: int) -> bool:
    cfg = trainer.cfg
    return step >= cfg.total_steps or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)


@torch.no_grad()
def check_parameters(trainer: Any, step: int) -> None:
    """Raise `NonFiniteTrainingError` if any parameter holds NaN or inf after ``step``."""
    bad = [name for name, p in trainer.sae.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteTrainingError(
            f"training stopped at step {step}: parameter(s) {', '.join(bad)} hold NaN or inf. {_advice(trainer)}"
        )


@torch.no_grad()
def check_finite_step(trainer: Any, loss: torch.Tensor) -> None:
    """Called after each optimizer step (``trainer.n_steps`` already counts it)."""
    step = int(trainer.n_steps)
    loss = loss.detach()
    if loss.device.type == "cpu":
        value = float(loss)
        if not torch.isfinite(loss):
            _raise_loss(trainer, step, value)
    else:
        state = getattr(trainer, "_finite_state", None)
        if state is None:
            state = trainer._finite_state = _FiniteState(loss.device)
        newly_bad = (~torch.isfinite(loss)) & (state.first_bad_step < 0)
        state.first_bad_step = torch.where(newly_bad, torch.full_like(state.first_bad_step, step), state.first_bad_step)
        state.first_bad_loss = torch.where(newly_bad, loss.float(), state.first_bad_loss)
        if step % SYNC_EVERY == 0 or _saves_after(trainer, step):
            first_bad = int(state.first_bad_step)
            if first_bad >= 0:
                _raise_loss(trainer, first_bad, float(state.first_bad_loss))
    if _saves_after(trainer, step):
        check_parameters(trainer, step)
