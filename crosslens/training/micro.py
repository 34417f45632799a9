"""Gradient accumulation: one optimizer step over a batch trained in equal micro-batches.

The activations of a crosscoder step grow with the batch (JumpReLU's per-snapshot codes are
``S B F``), the parameters, gradients and Adam state do not. Trained in ``N`` micro-batches,
each forward and backward holds a ``B / N`` share of the activations; each micro-batch's loss
is weighted by its share of the batch, so the gradients add up, in the parameters' ``.grad``,
to the whole batch's gradient, and the caller takes one optimizer step as before.

A loss that is a mean over tokens splits this way exactly. Two are not means over tokens:
JumpReLU's quadratic sparsity term ``p (1 + p / q)`` of the batch's mean score ``p``, and
BatchTopK's choice of the ``k * B`` largest scores of the batch. Their whole-batch numbers
come first, from a gradient-free forward over every micro-batch
(:meth:`~crosslens.crosscoders.base.CrosscoderTrainingMixin.begin_micro_batches`); the updates an
architecture makes once per step (the ``target_l0`` controller, BatchTopK's running
threshold) run once, on the whole batch's codes, after the last micro-batch.

The weights' gradients are not added up micro-batch by micro-batch: inside
:func:`~crosslens.kernels.weight_grads.deferred_weight_grads`, whose block the crosscoder holds
for the step and hands to its kernels, each matmul keeps its
operands (a few rows) for one matmul over the whole batch after the last, the decoder norms'
gradient is summed as a small scale, and the sparse decodes add the rows they touch to one
float32 sum, which spares a weight-sized temporary and three passes over it per micro-batch
and weight. The encoder products of the gradient-free pass are kept for the micro-batches'
passes, which take them rather than multiply again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from crosslens.crosscoders.base import CrosscoderTrainingMixin
from crosslens.kernels.weight_grads import deferred_weight_grads, kept_products
from crosslens.training.config import micro_batch_error


def split_batch(x_BSD: torch.Tensor, micro_batches: int) -> tuple[torch.Tensor, ...]:
    """``x_BSD`` as ``micro_batches`` equal chunks of its rows; an uneven split is refused."""
    if x_BSD.shape[0] % micro_batches:
        raise ValueError(micro_batch_error(x_BSD.shape[0], micro_batches))
    return x_BSD.chunk(micro_batches)


def micro_batched_pass(
    sae: CrosscoderTrainingMixin,
    x_BSD: torch.Tensor,
    micro_batches: int,
    step_input: Callable[[torch.Tensor], TrainStepInput],
    autocast: Callable[[], AbstractContextManager[Any]],
) -> TrainStepOutput:
    """Forward and backward of ``x_BSD`` in ``micro_batches`` equal parts, the gradients left
    summed in ``.grad``; returns the whole batch's output (detached): its inputs,
    reconstructions, codes, losses (the micro-batches' weighted sums) and metrics."""
    chunks = split_batch(x_BSD, micro_batches)
    outputs = []
    try:
        # the gradient-free pass too reads the block's rounded weights and decoder norms
        with deferred_weight_grads((sae.W_enc, sae.W_dec), sae) as block:  # type: ignore[attr-defined]
            with autocast(), kept_products(block):  # its encoder products are the micro-batches'
                sae.begin_micro_batches(chunks)
            for x_bSD in chunks:
                with autocast():
                    output = sae.training_forward_pass(step_input(x_bSD))  # type: ignore[attr-defined]
                (output.loss * (x_bSD.shape[0] / x_BSD.shape[0])).backward()
                outputs.append(_detached(output))
        whole = _joined(outputs)
        whole.metrics.update(sae.finish_micro_batches(whole.sae_in, whole.hidden_pre, whole.feature_acts))
    finally:
        sae.micro_step = None
    return whole


def _detached(output: TrainStepOutput) -> TrainStepOutput:
    return TrainStepOutput(
        sae_in=output.sae_in.detach(),
        sae_out=output.sae_out.detach(),
        feature_acts=output.feature_acts.detach(),
        hidden_pre=output.hidden_pre.detach(),
        loss=output.loss.detach(),
        losses={name: value.detach() for name, value in output.losses.items()},
        metrics=dict(output.metrics),
    )


def _joined(outputs: list[TrainStepOutput]) -> TrainStepOutput:
    """The micro-batches' outputs as one batch's: tensors concatenated, losses averaged with
    each micro-batch's share as weight (equal shares)."""
    n = len(outputs)
    return TrainStepOutput(
        sae_in=torch.cat([o.sae_in for o in outputs]),
        sae_out=torch.cat([o.sae_out for o in outputs]),
        feature_acts=torch.cat([o.feature_acts for o in outputs]),
        hidden_pre=torch.cat([o.hidden_pre for o in outputs]),
        loss=sum(o.loss for o in outputs) / n,  # type: ignore[arg-type]
        losses={name: sum(o.losses[name] for o in outputs) / n for name in outputs[0].losses},  # type: ignore[misc]
        metrics=dict(outputs[-1].metrics),
    )
