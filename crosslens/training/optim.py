"""The trainer's optimizer step: Adam, the gradient clip folded into it, and Adam with its
moments stored in bfloat16 for dictionaries whose float32 state does not fit.

With float32 moments, where the run's plan says so (CUDA with triton installed, by default:
:class:`~crosslens.kernels.plan.KernelPlan`'s ``adam``), the step is crosslens's own
pass over each parameter (:class:`KernelAdam`, one Triton kernel,
:mod:`crosslens.kernels.triton_adam`, or its eager twin in :mod:`crosslens.kernels.adam`), which
reads and writes what torch's fused Adam does and, where the trainer asks by argument
(``step(writes=...)``, :class:`~crosslens.kernels.step_weights.WeightWrites`), also writes what
the next step would otherwise make by reading a float32 weight once more: under bfloat16 autocast
the new weights rounded to bfloat16, the copies the next step's matmuls read, and (the Triton
pass) the norms of the decoder's rows, which every sparsity term reads. It returns what it wrote
(:class:`~crosslens.kernels.step_weights.PreparedWeights`). :class:`BFloat16StateAdam` writes
them too.

Clipping costs a read of every gradient for the global norm; torch's ``clip_grad_norm_``
then reads and writes every gradient again to scale it before Adam reads it a third time.
:func:`clipped_step` computes the norm in one read and hands the clip coefficient to Adam
as its ``grad_scale`` (the divisor torch's fused Adam applies inside its kernel, the hook
``GradScaler`` uses), so the scaling costs no pass of its own. Dividing by ``1 / c`` rounds
differently from multiplying by ``c`` in the last bit, so the result equals the eager
clip-then-Adam path to float32 rounding, and bitwise on steps the clip leaves alone.

:class:`BFloat16StateAdam` keeps ``exp_avg`` and ``exp_avg_sq`` in bfloat16 (half of
Adam's float32 state) and does its arithmetic in float32, a chunk of each parameter at a
time so that the float32 temporaries stay small; on CUDA one Triton kernel does a chunk's
update in one pass, where the eager ops make about a dozen. The moments are stored with
stochastic rounding whose noise is a function of the run's seed, the step, the parameter and
the element (:func:`~crosslens.kernels.adam.rounding_noise`), so a run and its resume give the
same bytes with nothing saved but the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from crosslens.crosscoders.collectives import LocalCollectives
from crosslens.distributed.sharding import clip_coefficient, clip_grad_norm, grad_norm
from crosslens.kernels.adam import Hyper, adam_update, noise_key, row_norms_of_the_pass
from crosslens.kernels.plan import KernelPlan
from crosslens.kernels.step_weights import PreparedWeights, StepWeights, WeightWrites
from crosslens.training.memory import CHUNK

FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""Devices on which Adam runs fused: one kernel over each parameter instead of a dozen
passes, several times faster for a crosscoder's large weight tensors. It is
deterministic, but its rounding differs from the unfused Adam's."""


def writes_row_norms(state_dtype: str, plan: KernelPlan) -> bool:
    """Whether the trainer's Adam with ``state_dtype`` moments writes the norms of the rows of the
    weights whose norms a step reads (the decoder's), for the next step to take: where the plan
    asks for it and the pass is the Triton kernel, which sums them as it writes each row. An eager
    pass would read the weight once more for them, as the step does, so it leaves them to the
    step."""
    kernel = state_dtype == "bfloat16" or plan.adam == "kernel"
    return plan.handoff_norms and kernel and plan.adam_backend == "triton"


def step_weights_for(state_dtype: str, autocast_dtype: str | None, plan: KernelPlan) -> StepWeights:
    """What the trainer's Adam with ``state_dtype`` moments is asked to write for the next step
    (:class:`~crosslens.kernels.step_weights.StepWeights`): under bfloat16 autocast the weights
    rounded for its matmuls (crosslens's Adam and the bfloat16-state Adam), and where its pass is
    the Triton kernel the decoder's row norms (:func:`writes_row_norms`); torch's Adam writes
    neither."""
    copy_dtype = torch.bfloat16 if autocast_dtype == "bfloat16" else None
    norms = writes_row_norms(state_dtype, plan)
    return StepWeights(copy_dtype, norms, row_norms_of_the_pass(plan) if norms else None)


def _advance(state: dict[str, Any], group: dict[str, Any]) -> Hyper:
    """Count one more step in ``state`` (its ``step`` a host tensor, as torch's unfused Adam keeps
    it: reading it waits for no device) and return that step's constants. The count is float64
    (torch's Adam keeps float32, whose ``+ 1`` stops counting at 2^24 steps, from where every
    step would draw the same rounding noise); a float32 count saved by torch's Adam is widened."""
    step_t = state["step"] = state["step"].cpu().double() + 1
    step = int(step_t.item())
    # a kernel takes numbers, not tensors: an lr or betas given as tensors are read here
    lr, beta1, beta2, eps = (float(x) for x in (group["lr"], *group["betas"], group["eps"]))
    return beta1, beta2, lr / (1 - beta1**step), math.sqrt(1 - beta2**step), eps


def _updates(
    optimizer: KernelAdam | BFloat16StateAdam,
    moments: torch.dtype,
    writes: WeightWrites | None,
    prepared: PreparedWeights,
) -> Iterator[tuple[int, torch.Tensor, dict[str, Any], Hyper, torch.Tensor | None, torch.Tensor | None]]:
    """Each parameter of ``optimizer`` with a gradient, for its update: its place among the
    optimizer's parameters, the parameter, its state (made on its first step, the moments zeros in
    ``moments``), the step's constants, and where its rounded copy and its rows' norms go (None
    where ``writes`` does not ask for them). After each update, the write is counted in the
    parameter's version (a kernel's store is invisible to autograd) and what was written beside
    it, made from that version, goes into ``prepared``."""
    pairs = [(group, p) for group in optimizer.param_groups for p in group["params"]]
    for place, (group, p) in enumerate(pairs):
        if p.grad is None:
            continue
        state = optimizer.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p, dtype=moments, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments, memory_format=torch.contiguous_format)
        copy, norms = (None, None) if writes is None else (writes.copy_of(p), writes.norms_of(p))
        yield place, p, state, _advance(state, group), copy, norms
        torch.autograd.graph.increment_version(p)
        prepared.put(p, copy, norms)


class KernelAdam(torch.optim.Adam):
    """torch's Adam (no weight decay, no amsgrad), whose step is one pass over each parameter:
    the Triton kernel or :func:`~crosslens.kernels.adam.eager_update`, as the plan's ``adam_backend`` says. Its state and
    hyperparameters are torch's, so a checkpoint moves between the two. Like torch's fused
    Adam it divides the gradients by ``grad_scale``; for each weight ``writes`` asks for, it also
    writes the new weight rounded, or its rows' norms (see the module docstring)."""

    def __init__(self, params: Any, lr: float, betas: tuple[float, float], eps: float = 1e-8, *, plan: KernelPlan):
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.grad_scale: torch.Tensor | None = None
        """A divisor of every gradient, as torch's fused Adam takes it (the clip's 1 / c)."""
        self.plan = plan

    @torch.no_grad()
    def step(self, closure: Any = None, *, writes: WeightWrites | None = None) -> PreparedWeights:  # type: ignore[override]
        assert closure is None, "KernelAdam takes no closure"
        self._check()
        prepared = PreparedWeights()
        update = adam_update(self.plan, chunked=False)
        for _, p, state, hyper, copy, norms in _updates(self, torch.float32, writes, prepared):
            moments = (state["exp_avg"], state["exp_avg_sq"])
            update(p, p.grad.contiguous(), *moments, self.grad_scale, hyper, copy, norms)
        return prepared

    def _check(self) -> None:
        """Refuse, before any parameter moves, what this Adam does not do."""
        for group in self.param_groups:
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("KernelAdam has no weight decay, amsgrad or maximize; use torch.optim.Adam for those.")
            for p in group["params"]:
                state = self.state.get(p, {})
                moments = [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state]
                if p.dtype != torch.float32 or not all(
                    t.is_contiguous() and t.dtype == torch.float32 for t in (p, *moments)
                ):
                    raise ValueError(
                        f"KernelAdam updates contiguous float32 parameters and moments; got a parameter of dtype "
                        f"{p.dtype}, shape {tuple(p.shape)} and strides {p.stride()} (use torch.optim.Adam for others)."
                    )


class BFloat16StateAdam(torch.optim.Optimizer):
    """Adam (no weight decay, no amsgrad) with bfloat16 moments, stored with stochastic rounding
    whose noise :func:`~crosslens.kernels.adam.rounding_noise` draws from ``seed``; float32 parameters. For each weight
    ``writes`` asks for, it also writes the new weight rounded, or its rows' norms (see the module
    docstring)."""

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float],
        eps: float = 1e-8,
        *,
        seed: int,
        plan: KernelPlan,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.seed = seed
        self.grad_scale: torch.Tensor | None = None
        """A divisor of every gradient, as torch's fused Adam takes it (the clip's 1 / c)."""
        self.plan = plan

    @torch.no_grad()
    def step(self, closure: Any = None, *, writes: WeightWrites | None = None) -> PreparedWeights:  # type: ignore[override]
        assert closure is None, "BFloat16StateAdam takes no closure"
        prepared = PreparedWeights()
        kernel = self.plan.adam_backend == "triton"
        update = adam_update(self.plan, chunked=True)
        for place, p, state, hyper, copy, norms in _updates(self, torch.bfloat16, writes, prepared):
            key = noise_key(self.seed, int(state["step"].item()), place)
            if kernel:  # the kernel holds no temporaries: the whole parameter at once
                grad = p.grad.contiguous()
                update(p, grad, state["exp_avg"], state["exp_avg_sq"], key, 0, self.grad_scale, hyper, copy, norms)
                continue
            # the eager ops hold float32 temporaries of what they update: a chunk at a time
            flats = (p.view(-1), p.grad.view(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1))
            for start in range(0, p.numel(), CHUNK):
                p_c, g_c, m_c, v_c = (t[start : start + CHUNK] for t in flats)
                copy_c = None if copy is None else copy.view(-1)[start : start + CHUNK]
                update(p_c, g_c, m_c, v_c, key, start, self.grad_scale, hyper, copy_c, self.plan.noise_block)
            if norms is not None:
                torch.linalg.vector_norm(p, dim=-1, out=norms)
        return prepared

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rounding_seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        seed = state_dict.pop("rounding_seed", None)
        if seed is None:
            saved_by = (
                "an earlier crosslens, whose rounding noise came from a saved generator"
                if "rounding_generator" in state_dict
                else "float32 Adam"
            )
            raise ValueError(
                f"this optimizer state has no rounding seed: it was saved by {saved_by}; resume with the "
                "optimizer state dtype and the crosslens version the run started with."
            )
        super().load_state_dict(state_dict)
        for per_param in self.state.values():  # torch casts loaded state to the parameters' dtype
            for key in ("exp_avg", "exp_avg_sq"):
                per_param[key] = per_param[key].to(torch.bfloat16)
        self.seed = int(seed)


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")
"""Keys of torch's Adam's parameter groups that say how this process runs the step, not what
the step computes: kept as the optimizer was made when a checkpoint's groups are loaded."""


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state_dict)``, keeping the optimizer's own
    :data:`IMPLEMENTATION_FLAGS`: torch copies a saved group whole, so a checkpoint written by
    :class:`KernelAdam` (``fused`` None) would otherwise turn torch's fused Adam into its slower
    unfused loop, and one written by fused Adam would mark a :class:`KernelAdam` fused."""
    own = [{key: group[key] for key in IMPLEMENTATION_FLAGS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, flags in zip(optimizer.param_groups, own, strict=True):
        group.update(flags)


def make_optimizer(
    param_groups: list[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float],
    state_dtype: str,
    seed: int,
    device: torch.device,
    plan: KernelPlan,
) -> torch.optim.Optimizer:
    """The trainer's Adam: with bfloat16 moments, or with float32 ones :class:`KernelAdam` where
    the plan says (``adam``), else torch's, fused where the device has the kernel (torch's Adam
    writes nothing beside the weights)."""
    if state_dtype == "bfloat16":
        return BFloat16StateAdam(param_groups, lr=lr, betas=betas, seed=seed, plan=plan)
    if plan.adam == "kernel":
        return KernelAdam(param_groups, lr=lr, betas=betas, plan=plan)
    return torch.optim.Adam(param_groups, lr=lr, betas=betas, fused=device.type in FUSED_ADAM_DEVICES or None)


def takes_grad_scale(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` divides the gradients by ``optimizer.grad_scale`` itself."""
    if isinstance(optimizer, (BFloat16StateAdam, KernelAdam)):
        return True
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)


def _step(optimizer: torch.optim.Optimizer, writes: WeightWrites | None) -> PreparedWeights | None:
    """``optimizer.step``, asking crosslens's Adams for ``writes``; what they wrote, else None."""
    if isinstance(optimizer, (BFloat16StateAdam, KernelAdam)):
        return optimizer.step(writes=writes)
    optimizer.step()
    return None


def clipped_step(
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    collectives: LocalCollectives,
    max_norm: float | None,
    *,
    fused: bool,
    writes: WeightWrites | None = None,
) -> PreparedWeights | None:
    """Clip the gradient's global norm to ``max_norm`` (None: no clip) and take Adam's step;
    ``fused``: the clip coefficient goes into Adam's own pass (see the module docstring),
    else torch's ``clip_grad_norm_`` scales the gradients first. ``writes``: what the pass is to
    write beside the weights for the next step; returns what it wrote (None: torch's Adam)."""
    if max_norm is None:
        return _step(optimizer, writes)
    if not fused:
        clip_grad_norm(module, max_norm, collectives)
        return _step(optimizer, writes)
    coef = clip_coefficient(grad_norm(module, collectives), max_norm)
    if not takes_grad_scale(optimizer):
        torch._foreach_mul_([p.grad for p in module.parameters() if p.grad is not None], coef)
        return _step(optimizer, writes)
    optimizer.grad_scale = coef.reciprocal()  # type: ignore[attr-defined]
    try:
        return _step(optimizer, writes)
    finally:
        optimizer.grad_scale = None  # type: ignore[attr-defined]
