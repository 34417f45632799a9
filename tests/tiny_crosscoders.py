"""Crosscoders with seeded random weights, for tests that need any crosscoder at a hook, or one of
each architecture."""

from __future__ import annotations

import torch


def random_crosscoder(*, n_snapshots: int, d_in: int, d_sae: int, hook: str):
    """Every parameter drawn from N(0, 0.3^2) with seed 0; unit norm factors, ``hook`` recorded."""
    crosscoder, _ = random_architecture("crosscoder", d_in=d_in, d_sae=d_sae, n_snapshots=n_snapshots, seed=0)
    crosscoder.cfg.metadata.hook_name = hook
    crosscoder.cfg.metadata.activation_norm_factors = [1.0] * n_snapshots
    return crosscoder


def random_architecture(
    arch: str,
    *,
    d_in: int = 16,
    d_sae: int = 24,
    n_snapshots: int = 4,
    seed: int = 1,
    k: int = 3,
    threshold: float = 0.05,
):
    """A crosscoder of ``arch`` (TopK with ``k``) with every parameter drawn from N(0, 0.3^2) and
    JumpReLU's thresholds at ``threshold`` (0.05: gates that differ between snapshots), and the
    generator the parameters were drawn from, to draw activations from next."""
    import crosslens.crosscoders as crosscoders

    sae_cls, cfg_cls = crosscoders.ARCHITECTURES[arch][:2]
    extra = {"k": k} if arch == "topk_crosscoder" else {}
    crosscoder = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, n_snapshots=n_snapshots, **extra))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in crosscoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        if hasattr(crosscoder, "threshold"):
            crosscoder.threshold.fill_(threshold)
    return crosscoder, generator
