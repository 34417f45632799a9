"""Causal claims that survive a reseed, IE confidence intervals and the RelIE floor."""

from __future__ import annotations

import pytest
import torch

from crosslens.causal.claims import causal_claims, claims_over_seeds, format_claims
from crosslens.causal.relative_ie import (
    BELOW_FLOOR,
    bootstrap_ie_ci,
    class_counts,
    classify_relie,
    relie,
    relie_floor_mask,
)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_examples():
    gen = torch.Generator().manual_seed(0)
    small = 0.5 + torch.randn(16, 3, generator=gen)
    large = 0.5 + torch.randn(1024, 3, generator=gen)
    low_s, high_s = bootstrap_ie_ci(small, n_boot=2000, seed=1)
    low_l, high_l = bootstrap_ie_ci(large, n_boot=2000, seed=1)
    assert bool((low_s <= small.mean(0)).all() and (small.mean(0) <= high_s).all())
    # Width ~ 2 * 1.96 / sqrt(n): 8x more examples, about sqrt(64) = 8x narrower.
    ratio = (high_s - low_s) / (high_l - low_l)
    assert bool(((ratio > 5) & (ratio < 12)).all()), ratio
    assert torch.allclose(high_l - low_l, torch.full((3,), 2 * 1.96 / 1024**0.5), rtol=0.2)
    # Seeded: the same interval twice; the shape of the trailing axes is kept.
    assert torch.equal(bootstrap_ie_ci(small, seed=3)[0], bootstrap_ie_ci(small, seed=3)[0])
    assert bootstrap_ie_ci(torch.zeros(5, 2, 4))[0].shape == (2, 4)
    with pytest.raises(ValueError, match="at least 2 examples"):
        bootstrap_ie_ci(torch.zeros(1, 3))


def test_relie_is_not_classed_below_the_effect_floor():
    # Feature 0: real, specific to snapshot 1. Feature 1: a total effect of 0.02 whose ratio
    # also reads "specific" - the symptom. Feature 2: large but indistinguishable from 0.
    ie = torch.tensor([[0.05, 0.9, 0.05], [0.001, 0.018, 0.001], [0.3, 0.3, 0.3]])
    low = torch.tensor([[-0.01, 0.6, -0.02], [-0.01, 0.01, -0.01], [-0.2, -0.2, -0.2]])
    high = torch.tensor([[0.1, 1.2, 0.1], [0.01, 0.03, 0.01], [0.8, 0.8, 0.8]])
    unfloored = classify_relie(relie(ie))
    assert unfloored[1, 1] == "specific"
    classed = relie_floor_mask(ie, floor=0.1, ci_low=low, ci_high=high)
    assert classed.tolist() == [[True] * 3, [False] * 3, [False] * 3]
    labels = classify_relie(relie(ie), classed=classed)
    assert labels[0].tolist() == ["other", "specific", "other"]
    assert labels[1].tolist() == [BELOW_FLOOR] * 3 and labels[2].tolist() == [BELOW_FLOOR] * 3
    assert class_counts(labels)["specific"].tolist() == [0, 1, 0]
    # Without intervals only the floor applies.
    assert relie_floor_mask(ie, floor=0.1)[:, 0].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="must match"):
        classify_relie(relie(ie), classed=classed[:, :2])


def _rows(clean, ablated10, restored100, snapshot=5):
    return [
        {"snapshot": snapshot, "k": 0, "selection": "none", "keep_only": False, "metric": clean},
        {"snapshot": snapshot, "k": 10, "selection": "top", "keep_only": False, "metric": ablated10},
        {"snapshot": snapshot, "k": 10, "selection": "random", "keep_only": False, "metric": clean},
        {"snapshot": snapshot, "k": 100, "selection": "top", "keep_only": True, "metric": 0.0, "restored": restored100},
        {"snapshot": 0, "k": 0, "selection": "none", "keep_only": False, "metric": 9.9},
    ]


def test_claims_from_ablation_rows_and_over_seeds():
    one = causal_claims(_rows(clean=-2.0, ablated10=-0.8, restored100=0.95), snapshot=5)
    assert one["ablation_shift"] == pytest.approx(0.6) and one["ablation_claim"] is True
    assert one["keep_only_restored"] == 0.95 and one["keep_only_claim"] is True
    two = causal_claims(_rows(clean=-2.0, ablated10=-1.4, restored100=0.97), snapshot=5)
    three = causal_claims(_rows(clean=-1.0, ablated10=-0.3, restored100=0.80), snapshot=5)
    assert two["ablation_claim"] is False and three["keep_only_claim"] is False
    summary = claims_over_seeds([one, two, three], labels=["s0", "s1", "s2"])
    assert summary["ablation_shift"]["mean"] == pytest.approx((0.6 + 0.3 + 0.7) / 3)
    assert summary["ablation_shift"]["sd"] == pytest.approx(0.2081666, rel=1e-5)
    assert summary["ablation_claim"] == "holds for 2 of 3 seeds"
    assert summary["keep_only_claim"] == "holds for 2 of 3 seeds"
    assert claims_over_seeds([one, one])["keep_only_claim"] == "holds for every seed"
    text = format_claims(summary, "step640")
    assert "53% +/- 21%" in text and "over 3 seeds" in text and "at step640" in text
    with pytest.raises(ValueError, match="no unablated"):
        causal_claims(_rows(-1.0, -0.5, 0.9), snapshot=3)
