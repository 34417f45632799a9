"""The reconstruction errors (and TopK's auxiliary error beside them) compiled, as CUDA runs them
by default, against their eager twin: the per-token errors, the gradients, and 20 Adam steps of
the crosscoders that use them, in float32, on a CPU here and on CUDA where there is one."""

from __future__ import annotations

import os

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

import crosslens.crosscoders as cc
from crosslens.crosscoders.base import reconstruction_errors, squared_errors
from crosslens.kernels.plan import KernelPlan

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
S, D, F = 3, 8, 64


def errors_and_grads(
    compiled: bool, recon0: torch.Tensor, x: torch.Tensor, aux0: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """The two errors and, for the loss ``sum(sq) + 3 sum(aux)``, the gradients of the
    reconstruction and of the auxiliary reconstruction."""
    plan = KernelPlan.resolve(x.device, compile=compiled)
    recon = recon0.clone().requires_grad_()
    aux = None if aux0 is None else aux0.clone().requires_grad_()
    sq_N, aux_N = reconstruction_errors(recon, x, aux, plan)
    loss = sq_N.sum() if aux_N is None else sq_N.sum() + 3 * aux_N.sum()
    loss.backward()
    if aux is None:
        return sq_N.detach(), recon.grad
    return sq_N.detach(), recon.grad, aux_N.detach(), aux.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("x_dtype", "with_aux"), [(torch.float32, True), (torch.bfloat16, False)])
def test_compiled_errors_equal_the_eager_ones(device, x_dtype, with_aux):
    gen = torch.Generator().manual_seed(4)
    recon = torch.randn(37, S, D, generator=gen).to(device)
    x = torch.randn(37, S, D, generator=gen).to(device, x_dtype)
    aux = torch.randn(37, S, D, generator=gen).to(device) if with_aux else None
    fast = errors_and_grads(True, recon, x, aux)
    eager = errors_and_grads(False, recon, x, aux)
    for name, a, b in zip(("errors", "recon grad", "aux errors", "aux grad"), fast, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    # the eager twin is the arithmetic written out: x in x_hat's dtype, squares summed per token
    diff = recon - x.float()
    torch.testing.assert_close(eager[0], diff.pow(2).sum(dim=(1, 2)), rtol=0, atol=0)
    torch.testing.assert_close(eager[1], 2 * diff, rtol=0, atol=0)
    if with_aux:
        torch.testing.assert_close(eager[2], (aux + diff).pow(2).sum(dim=(1, 2)), rtol=0, atol=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_auxiliary_error_trains_the_auxiliary_reconstruction_alone(compiled):
    """The residual it is compared with is detached: the reconstruction gets no gradient from it."""
    gen = torch.Generator().manual_seed(5)
    recon, x, aux = (torch.randn(9, S, D, generator=gen) for _ in range(3))
    recon.requires_grad_(), aux.requires_grad_()
    _, aux_N = reconstruction_errors(recon, x, aux, KernelPlan.resolve("cpu", compile=compiled))
    aux_N.sum().backward()
    assert recon.grad is None or not recon.grad.any()
    torch.testing.assert_close(aux.grad, 2 * (aux - (x - recon)).detach(), rtol=1e-6, atol=1e-6)


def test_the_errors_compile_where_the_plan_says():
    """Eager on a CPU by default, bit for bit the eager function; compiled where asked."""
    gen = torch.Generator().manual_seed(6)
    recon, x, aux = (torch.randn(5, S, D, generator=gen) for _ in range(3))
    assert not KernelPlan.resolve("cpu").compile or os.environ.get("CROSSLENS_COMPILE_KERNELS") == "1"
    for a, b in zip(reconstruction_errors(recon, x, aux), squared_errors(recon, x, aux)):
        assert torch.equal(a, b)
    assert KernelPlan.resolve("cpu", compile=True).compile and KernelPlan.resolve("cuda", compile=True).compile
    assert not KernelPlan.resolve("cuda", compile=False).compile


def twenty_steps(
    arch: str, device: str, compiled: bool
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """20 float32 Adam steps of ``arch`` with a quarter of its features dead (TopK's auxiliary
    loss on): the losses of each step, the first step's gradients and the last parameters."""
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    extra = {"l1_coefficient": 0.05} if arch == "crosscoder" else {"k": 4, "aux_k": 6}
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(32, S, D, generator=gen).to(device) for _ in range(20)]
    dead_F = torch.zeros(F, dtype=torch.bool, device=device)
    dead_F[::4] = True
    torch.manual_seed(0)
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, device=device, **extra))
    sae.use_kernel_plan(KernelPlan.resolve(device, compile=compiled))
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses, first_grads = [], {}
    for x in batches:
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={"l1": 0.1},
                dead_neuron_mask=dead_F,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        optimizer.zero_grad()
        out.loss.backward()
        first_grads = first_grads or {name: p.grad.clone() for name, p in sae.named_parameters()}
        optimizer.step()
        losses.append({name: value.item() for name, value in out.losses.items()})
    return losses, first_grads, {name: p.detach().clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["crosscoder", "topk_crosscoder", "batchtopk_crosscoder"])
def test_steps_with_compiled_errors_follow_the_eager_steps(arch, device):
    fast_losses, fast_grads, fast_params = twenty_steps(arch, device, compiled=True)
    losses, grads, params = twenty_steps(arch, device, compiled=False)
    if arch != "crosscoder":
        assert all(step["auxiliary_reconstruction_loss"] > 0 for step in losses), "the auxiliary loss is on"
    for fast, eager in zip(fast_losses, losses):
        assert fast == pytest.approx(eager, rel=1e-5, abs=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
    for name, p in params.items():
        torch.testing.assert_close(fast_params[name], p, rtol=1e-5, atol=1e-6, msg=name)
