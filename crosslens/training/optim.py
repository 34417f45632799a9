"""The trainer's optimizer step: Adam, the gradient clip folded into it, and Adam with its
moments stored in bfloat16 for dictionaries whose float32 state does not fit.

With float32 moments, where the run's plan says so (CUDA with triton installed, by default:
:class:`~crosslens.crosscoders.kernel_plan.KernelPlan`'s ``adam``), the step is crosslens's own
pass over each parameter (:class:`KernelAdam`, one Triton kernel,
:mod:`crosslens.training.triton_adam`), which reads and writes what torch's fused Adam does and,
where the trainer asks by argument (``step(writes=...)``,
:class:`~crosslens.crosscoders.weight_grads.WeightWrites`), also writes what the next step would
otherwise make by reading a float32 weight once more: under bfloat16 autocast the new weights
rounded to bfloat16, the copies the next step's matmuls read, and (the Triton pass) the norms of
the decoder's rows, which every sparsity term reads. It returns what it wrote
(:class:`~crosslens.crosscoders.weight_grads.PreparedWeights`). :class:`BFloat16StateAdam` writes
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
update in one pass (:mod:`crosslens.training.triton_adam`), where the eager ops make about a
dozen. The moments are stored with stochastic rounding: bfloat16 has 8 significant bits, so
a plain round-to-nearest of ``0.999 * v`` returns ``v`` and the second moment would never
decay. The rounding noise is a function of the run's seed, the step, the parameter and the
element (:func:`rounding_noise`, SplitMix64 over a counter), so the Triton kernel draws it in
registers rather than reading two noise tensors written beforehand (16 of the pass's 38 bytes an
element), and a run and its resume give the same bytes with nothing saved but the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Int
from torch import nn

from crosslens.crosscoders.collectives import LocalCollectives
from crosslens.crosscoders.kernel_plan import KernelPlan
from crosslens.crosscoders.prepared_weights import PreparedWeights, WeightWrites
from crosslens.distributed.sharding import clip_coefficient, clip_grad_norm, grad_norm
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


def row_norms_of_the_pass(plan: KernelPlan) -> Any:
    """How the optimizer's pass sums the row norms it writes, for a step that finds none written
    to sum them the same way (:attr:`~crosslens.crosscoders.weight_grads.StepWeights.norms_of`):
    the Triton kernel's order where the pass is the kernel, else None
    (``torch.linalg.vector_norm``, the eager pass's)."""
    if plan.adam_backend != "triton":
        return None
    from crosslens.training import triton_adam  # triton is needed only where it runs

    return triton_adam.row_norms


Hyper = tuple[float, float, float, float, float]
"""``(beta1, beta2, step_size, root_bc2, eps)``: one step's Adam constants,
``step_size = lr / (1 - beta1^t)`` and ``root_bc2 = sqrt(1 - beta2^t)``."""


MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
"""SplitMix64's increment (2^64 over the golden ratio, odd): its counter's step."""
MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""SplitMix64's two multipliers; its shifts are 30, 27 and 31."""


def _mix64(z: int) -> int:
    """SplitMix64's finaliser of one 64-bit value, in Python's integers."""
    z = ((z ^ (z >> 30)) * MIX[0]) & MASK64
    z = ((z ^ (z >> 27)) * MIX[1]) & MASK64
    return z ^ (z >> 31)


def _as_int64(x: int) -> int:
    """A 64-bit pattern as the signed integer that torch's int64 and a kernel's argument hold."""
    return x - (1 << 64) if x >> 63 else x


def noise_key(seed: int, step: int, index: int) -> int:
    """The key of the rounding noise of parameter ``index`` (its place among the optimizer's
    parameters) at Adam step ``step`` of a run seeded ``seed``, as a signed 64-bit integer. Each
    part goes into a bijective mix of the parts before it, so keys whose earlier parts agree never
    meet; others meet only where two 64-bit mixes differ by exactly the XOR of their later parts
    (for two seeds over a million steps, a chance of about 2^-44)."""
    z = seed & MASK64
    for part in (step, index):
        z = _mix64(((_mix64(z) ^ (part & MASK64)) + GOLDEN) & MASK64)
    return _as_int64(z)


def rounding_noise(
    key: int, start: int, n: int, device: torch.device | str = "cpu", block: int = 1 << 16
) -> tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]]:
    """The rounding noise of elements ``start .. start + n`` of one parameter, drawn with
    ``key`` (:func:`noise_key`): int32 in ``[0, 2^16)``, one tensor for each moment, the part
    below bfloat16's last bit that :func:`round_stochastic` adds before truncating. Element ``e``
    takes SplitMix64's output for counter ``key + (e + 1) * GOLDEN`` (the generator's ``e``-th
    draw), the first moment its bits 32-47, the second its bits 48-63; int64 arithmetic wraps as
    the unsigned arithmetic does, so these are the Triton kernel's draws to the bit
    (:func:`crosslens.training.triton_adam.noise`). On a CPU ``block`` elements are mixed at a
    time (the plan's ``noise_block``: its two int64 buffers stay in cache through the dozen
    passes); an accelerator mixes a chunk whole (a block would cost a dozen launches)."""
    block = block if torch.device(device).type == "cpu" else max(n, 1)
    noise_m, noise_v = (torch.empty(n, dtype=torch.int32, device=device) for _ in range(2))
    z_all, scratch_all = (torch.empty(min(n, block), dtype=torch.int64, device=device) for _ in range(2))
    for first in range(0, n, block):
        size = min(block, n - first)
        z, scratch = z_all[:size], scratch_all[:size]
        torch.arange(start + first + 1, start + first + size + 1, out=z)
        z.mul_(_as_int64(GOLDEN)).add_(key)
        for bits, factor in ((30, MIX[0]), (27, MIX[1]), (31, None)):
            # z ^= z >> bits, the shift unsigned (torch's copies the sign bit, hence the mask)
            torch.bitwise_right_shift(z, bits, out=scratch).bitwise_and_((1 << (64 - bits)) - 1)
            z.bitwise_xor_(scratch)
            if factor is not None:
                z.mul_(_as_int64(factor))
        z.bitwise_right_shift_(32)  # bits 32-63 at the bottom (the sign's copies above them are masked off)
        noise_m[first : first + size] = torch.bitwise_and(z, 0xFFFF, out=scratch)
        noise_v[first : first + size] = z.bitwise_right_shift_(16).bitwise_and_(0xFFFF)
    return noise_m, noise_v


def round_stochastic(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to bfloat16 down, or up where the ``noise`` carries it over:
    with uniform noise (:func:`rounding_noise`), up in proportion to the distance from the lower neighbour,
    so unbiased, and small repeated updates survive on average."""
    bits = (x.contiguous().view(torch.int32) + noise) & -65536  # keep the top 16 bits
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def eager_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad_scale: torch.Tensor | None,
    hyper: Hyper,
    copy: torch.Tensor | None = None,
    norms: torch.Tensor | None = None,
) -> None:
    """Adam's update of one parameter in place: ``p``, ``m`` and ``v`` float32, ``g`` its
    gradient, ``grad_scale`` a divisor of ``g``; ``copy`` receives the new ``p`` rounded to its
    dtype, ``norms`` the norms of its rows along the last dimension. The twin of
    :func:`crosslens.training.triton_adam.update`."""
    beta1, beta2, step_size, root_bc2, eps = hyper
    g = g.float() if grad_scale is None else g.float() / grad_scale
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)
    if copy is not None:
        copy.copy_(p)
    if norms is not None:
        torch.linalg.vector_norm(p, dim=-1, out=norms)


def eager_chunk_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    key: int,
    start: int,
    grad_scale: torch.Tensor | None,
    hyper: Hyper,
    copy: torch.Tensor | None = None,
    noise_block: int = 1 << 16,
) -> None:
    """Adam's update of one chunk in place, in float32 temporaries: ``p`` float32, ``g`` its
    gradient, ``m`` and ``v`` the bfloat16 moments, stored with the rounding noise of ``key``
    (:func:`noise_key`) at the chunk's elements (it starts at element ``start`` of its
    parameter), ``grad_scale`` a divisor of ``g``; ``copy`` receives the new ``p`` rounded. The
    twin of :func:`crosslens.training.triton_adam.chunk_update`."""
    noise_m, noise_v = rounding_noise(
        key, start, p.numel(), p.device, noise_block
    )  # drawn first: fewer temporaries at once
    m_new, v_new = m.float(), v.float()
    eager_update(p, g, m_new, v_new, grad_scale, hyper, copy)
    m.copy_(round_stochastic(m_new, noise_m))
    v.copy_(round_stochastic(v_new, noise_v))


def _update_for(plan: KernelPlan, *, chunked: bool) -> Any:
    """The update the plan's ``adam_backend`` names: the Triton kernel's wrapper, else its eager
    twin; ``chunked``: for bfloat16 moments, a chunk at a time (:func:`eager_chunk_update`'s
    signature), else float32 moments (:func:`eager_update`'s)."""
    if plan.adam_backend == "triton":
        from crosslens.training import triton_adam  # triton is needed only where it runs

        return triton_adam.chunk_update if chunked else triton_adam.update
    return eager_chunk_update if chunked else eager_update


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
    the Triton kernel or :func:`eager_update`, as the plan's ``adam_backend`` says. Its state and
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
        update = _update_for(self.plan, chunked=False)
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
    whose noise :func:`rounding_noise` draws from ``seed``; float32 parameters. For each weight
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
        update = _update_for(self.plan, chunked=True)
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
