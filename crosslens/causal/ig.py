"""Integrated gradients over crosscoder features and the error node, as a pure function.

For a metric ``m(f, e)`` of the feature activations ``f`` and the error term ``e``
at one hook, the indirect effect of moving from the clean point to the patch point
is split over the inputs along the straight path between them::

    IE_x = (x_patch - x_clean) * (1/n) * sum_{k=0}^{n-1} dm/dx at x_clean + (k/n) (x_patch - x_clean)

for x in {f, e}, interpolated together (left Riemann sum, ``alpha_k = k/n``, the
rule Captum calls ``riemann_left``). With ``n = 1`` this is attribution patching,
the one-gradient linear approximation. As ``n`` grows the attributions add up to
``m(patch) - m(clean)`` (completeness); the left sum's error shrinks like ``1/n``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

# metric_fn(f_K..., e_K...) -> metric_K... : inputs carry a leading axis of K path
# points; the output keeps that axis first (any trailing shape, e.g. one value per example).
PathMetric = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class IGResult:
    """Attributions with the shapes of the inputs, plus the metric along the path."""

    features: Float[torch.Tensor, "..."]
    """IE of each feature activation (same shape as ``f_clean``)."""
    error: Float[torch.Tensor, "..."] | None
    """IE of each error-term entry (same shape as ``err_clean``), or None without an error node."""
    metric_path: Float[torch.Tensor, "n_steps ..."]
    """The metric at each path point ``alpha_k = k/n``; ``metric_path[0]`` is the clean metric."""
    mean_grad_features: Float[torch.Tensor, "..."]
    """``dm/df`` averaged over the path points (``features = (f_patch - f_clean) * mean_grad_features``)."""
    mean_grad_error: Float[torch.Tensor, "..."] | None
    """``dm/de`` averaged over the path points, or None without an error node."""


def _steps_per_pass(batched: bool | int, n_steps: int) -> int:
    if batched is True:
        return n_steps
    if batched is False:
        return 1
    if isinstance(batched, int) and batched >= 1:
        return min(batched, n_steps)
    raise ValueError(f"batched must be True, False or a positive number of steps per pass, got {batched!r}")


def integrated_gradients(
    metric_fn: PathMetric,
    f_clean: Float[torch.Tensor, "..."],
    f_patch: Float[torch.Tensor, "..."],
    err_clean: Float[torch.Tensor, "..."] | None = None,
    err_patch: Float[torch.Tensor, "..."] | None = None,
    n_steps: int = 10,
    batched: bool | int = True,
) -> IGResult:
    """Integrated gradients of ``metric_fn`` from (f_clean, err_clean) to (f_patch, err_patch).

    Args:
        metric_fn: called as ``metric_fn(f_K, e_K)`` where ``f_K`` stacks K path points
            along a new leading axis (``[K, *f_clean.shape]``; ``e_K`` likewise, or None).
            Returns the metric with that leading axis, ``[K, ...]``; entries must depend
            only on their own path point (true for a model run on a batch).
        f_clean, f_patch: feature activations at the path's start and end.
        err_clean, err_patch: the error term at start and end (both or neither).
        n_steps: number of path points ``alpha_k = k/n``, k = 0..n-1 (1 = attribution patching).
        batched: True runs all steps in one forward/backward; an int runs that many steps
            per pass; False runs one step per pass (same result, more passes).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if f_clean.shape != f_patch.shape:
        raise ValueError(f"f_clean {tuple(f_clean.shape)} and f_patch {tuple(f_patch.shape)} must have one shape")
    if (err_clean is None) != (err_patch is None):
        raise ValueError("pass both err_clean and err_patch, or neither")
    if err_clean is not None and err_patch is not None and err_clean.shape != err_patch.shape:
        shapes = f"{tuple(err_clean.shape)} and {tuple(err_patch.shape)}"
        raise ValueError(f"err_clean and err_patch must have one shape, got {shapes}")
    per_pass = _steps_per_pass(batched, n_steps)

    f_clean, f_patch = f_clean.detach(), f_patch.detach()
    delta_f = f_patch - f_clean
    grad_f_sum = torch.zeros_like(f_clean)
    has_err = err_clean is not None
    if has_err:
        err_clean, err_patch = err_clean.detach(), err_patch.detach()  # type: ignore[union-attr]
        delta_e = err_patch - err_clean
        grad_e_sum = torch.zeros_like(err_clean)
    metrics = []
    alphas = torch.arange(n_steps, dtype=f_clean.dtype, device=f_clean.device) / n_steps

    for start in range(0, n_steps, per_pass):
        alpha = alphas[start : start + per_pass]
        shape_f = (-1,) + (1,) * f_clean.ndim
        f_path = (f_clean.unsqueeze(0) + alpha.view(shape_f) * delta_f.unsqueeze(0)).requires_grad_(True)
        e_path = None
        if has_err:
            shape_e = (-1,) + (1,) * err_clean.ndim  # type: ignore[union-attr]
            e_path = err_clean.unsqueeze(0) + alpha.view(shape_e) * delta_e.unsqueeze(0)  # type: ignore[union-attr]
            e_path.requires_grad_(True)
        with torch.enable_grad():
            metric = metric_fn(f_path, e_path)
            if metric.shape[:1] != alpha.shape:
                raise ValueError(
                    f"metric_fn must return the {len(alpha)} path points along its first axis, "
                    f"got shape {tuple(metric.shape)}"
                )
            inputs = [f_path] if e_path is None else [f_path, e_path]
            grads = torch.autograd.grad(metric.sum(), inputs, allow_unused=True)
        grad_f_sum += grads[0].sum(0) if grads[0] is not None else 0.0
        if has_err and grads[1] is not None:
            grad_e_sum += grads[1].sum(0)
        metrics.append(metric.detach())

    mean_grad_f = grad_f_sum / n_steps
    mean_grad_e = grad_e_sum / n_steps if has_err else None
    return IGResult(
        features=delta_f * mean_grad_f,
        error=delta_e * mean_grad_e if has_err else None,
        metric_path=torch.cat(metrics, dim=0),
        mean_grad_features=mean_grad_f,
        mean_grad_error=mean_grad_e,
    )


def attribution_patching(
    metric_fn: PathMetric,
    f_clean: Float[torch.Tensor, "..."],
    f_patch: Float[torch.Tensor, "..."],
    err_clean: Float[torch.Tensor, "..."] | None = None,
    err_patch: Float[torch.Tensor, "..."] | None = None,
) -> IGResult:
    """The one-step linear approximation ``(x_patch - x_clean) * dm/dx`` at the clean point."""
    return integrated_gradients(metric_fn, f_clean, f_patch, err_clean, err_patch, n_steps=1)
