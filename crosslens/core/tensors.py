"""Small tensor helpers more than one stage needs.

- :func:`row_counts`: how many entries of a bool mask are set, per row, fast on a CPU.
- :func:`mask_values`: a bool mask as 0 and 1 of a float dtype, fast on a CPU.
- :func:`one_vs_all_share`: each entry's share of its row's total magnitude (RelIE, RelDec).
- :func:`row_norms`: Euclidean norms along the last dimension with a one-pass gradient (the
  decoder norms every crosscoder's sparsity term differentiates), and
  :func:`norm_gradient_scale`, what that gradient multiplies each row by.
- :func:`host_ints`: integer scalars read to the host together, with one wait for the device.
- :class:`HostListing`: a bool vector's true entries, listed on the host from a copy queued
  early, so that reading them later does not wait for the work queued since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

WORDS_PER_LANE_SUM = 255
"""The most 64-bit words :func:`row_counts` sums at once: each of a sum's byte lanes then holds
at most 255, and no lane carries into the next."""


def row_counts(mask: Bool[torch.Tensor, "... n"]) -> Int[torch.Tensor, "..."]:
    """True entries along the last dimension, as int32. A bool tensor's ``sum`` or
    ``count_nonzero`` over a dimension first converts it to int64, and a sum of its bytes as
    int32 converts them to a ``[..., n]`` int32 tensor; either takes several times as long on a
    CPU as reading the bytes eight at a time (``benchmarks/cpu_ops.py``; benchmarks/README.md,
    "CPU arithmetic and the allocator"). Where a row's bytes lie contiguously they are summed
    as 64-bit words: a sum of words adds their eight bytes lane by lane, none of which passes
    255 over at most :data:`WORDS_PER_LANE_SUM` words and so carries into the next, and the
    eight lanes of the sum add up to the row's count."""
    bytes_ = mask.view(torch.uint8)
    whole = bytes_.shape[-1] - bytes_.shape[-1] % 8 if bytes_.dim() else 0
    if (
        bytes_.device.type != "cpu"
        or whole == 0
        or bytes_.stride(-1) != 1
        or bytes_.storage_offset() % 8
        or any(stride % 8 for stride in bytes_.stride()[:-1])
    ):
        return bytes_.sum(dim=-1, dtype=torch.int32)
    counts = bytes_[..., whole:].sum(dim=-1, dtype=torch.int32)
    for start in range(0, whole, 8 * WORDS_PER_LANE_SUM):
        words = bytes_[..., start : min(whole, start + 8 * WORDS_PER_LANE_SUM)].view(torch.int64)
        counts += words.sum(dim=-1, keepdim=True).view(torch.uint8).sum(dim=-1, dtype=torch.int32)
    return counts


def mask_values(mask: Bool[torch.Tensor, "..."], dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as 0 and 1 of ``dtype``, converted from its bytes: on a CPU faster than converting
    the bool tensor itself, and a product with it faster than one with the bool mask
    (``benchmarks/cpu_ops.py``, 1c and 1d; benchmarks/README.md, "CPU arithmetic and the allocator")."""
    return mask.view(torch.uint8).to(dtype)


def feature_index(features: Any, d_sae: int) -> Int[torch.Tensor, " n"]:
    """``features`` (indices of a dictionary's features) as a flat long tensor, refused unless each
    is in ``[0, d_sae)``: a negative index would silently count from the end."""
    index = torch.as_tensor(features, dtype=torch.long).flatten()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_sae):
        raise ValueError(f"feature indices must be in [0, {d_sae}), got min {int(index.min())}, max {int(index.max())}")
    return index


def one_vs_all_share(values: torch.Tensor) -> torch.Tensor:
    """``|v_c| / sum_c' |v_c'|`` along the last axis; rows that are all zero get ``1 / n``.

    RelIE (on indirect effects) and RelDec (on decoder norms) are both this ratio, so they
    share this one implementation.
    """
    values = torch.as_tensor(values)  # a NumPy array or a list of effects reads as its tensor
    if values.ndim < 1 or values.shape[-1] < 2:
        raise ValueError(
            f"a one-vs-all share compares at least 2 snapshots along the last axis, got shape {tuple(values.shape)}"
        )
    magnitude = values.abs().to(torch.float64)
    total = magnitude.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(magnitude, 1.0 / values.shape[-1])
    share = torch.where(total > 0, magnitude / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return share.to(values.dtype if values.is_floating_point() else torch.float32)


def norm_gradient_scale(grad: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``grad / norm``, 0 where a norm is 0: the gradient of a loss through the norms of
    the rows of ``x`` is each row times this."""
    return torch.where(norms > 0, grad / norms, 0.0)


class _RowNorms(torch.autograd.Function):
    """``||x[..., :]||`` whose backward is one pass over ``x``: ``x * (grad / norm)``
    (zero where a row is zero). Autograd's own norm backward makes four passes over
    ``x`` (divide, mask the zero rows, multiply, then accumulate), which for a crosscoder's
    decoder at Ge et al.'s shape is 2.4 GB each in float32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        norms = torch.linalg.vector_norm(x, dim=-1) if known is None else known.clone()
        ctx.save_for_backward(x, norms)
        return norms

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, norms = ctx.saved_tensors
        return x * norm_gradient_scale(grad, norms).to(x.dtype)[..., None], None


def row_norms(
    x: Float[torch.Tensor, "... d"], known: Float[torch.Tensor, "..."] | None = None
) -> Float[torch.Tensor, "..."]:
    """Euclidean norms along the last dimension, differentiable with a one-pass gradient;
    ``known``: those norms, computed already without gradient (then not computed again)."""
    return _RowNorms.apply(x, known)


def host_ints(*scalars: torch.Tensor) -> list[int]:
    """The values of integer scalar tensors as Python ints, read in one copy: on a GPU each
    read waits for every kernel queued before it, so a step that needs several counts (to
    size what it gathers) reads them together."""
    return torch.stack(scalars).tolist()


@dataclass
class HostListing:
    """The indices of a bool vector's true entries, whose count sizes later work. On a GPU a
    ``nonzero`` waits until the device has run everything queued before it, and then the device
    idles until the host queues more; instead :meth:`start` queues a copy of the vector to pinned
    host memory as soon as it is computed, and :meth:`rows` waits for that copy alone (an event),
    while the device goes on with what was queued after it. Elsewhere, the vector's ``nonzero``."""

    mask: Bool[torch.Tensor, " n"]
    host: Bool[torch.Tensor, " n"]
    copied: Any = None
    """The CUDA event recorded after the copy; None off CUDA, where ``host`` is ``mask``."""
    listed: tuple[Int[torch.Tensor, " rows"], int] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, mask: Bool[torch.Tensor, " n"]) -> HostListing:
        if mask.device.type != "cuda":
            return cls(mask, mask)
        host = torch.empty(mask.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(mask, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(mask.device))  # the copy's stream, whichever device is current
        return cls(mask, host, copied)

    def rows(self) -> tuple[Int[torch.Tensor, " rows"], int]:
        """``(indices on the mask's device, how many)``, listed once."""
        if self.listed is None:
            if self.copied is None:
                rows = self.mask.nonzero().flatten()
            else:
                self.copied.synchronize()
                # from pinned memory, so that the copy to the device is queued, not waited for
                rows = self.host.nonzero().flatten().pin_memory().to(self.mask.device, non_blocking=True)
            self.listed = (rows, rows.numel())
        return self.listed
