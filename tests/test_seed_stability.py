"""Seed stability at both thresholds, the seed-stable causal claims, and their determinism."""

from __future__ import annotations

import math

import pytest
import torch
from trust_fixtures import harvest, train, write_suite

from crosslens.analysis import EvolutionAnalysis
from crosslens.analysis.stability import (
    format_stability,
    match_features,
    seed_stability,
    stability_summary,
    stable_features,
)
from crosslens.causal.claims import (
    format_stable_claims,
    keep_only_area,
    stable_claims_over_seeds,
    stable_ks,
    stable_ranking_ie,
)

D = 8


def _unit(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def _decoder(directions: list[torch.Tensor]) -> torch.Tensor:
    """Two snapshots, the second at half the first's norm, so no feature is read as untouched."""
    return torch.stack([torch.stack([d, 0.5 * d]) for d in directions])


def _pair(cosines: list[float], order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a's feature i is e_i; run b's feature order[i] has cosine cosines[i] with it."""
    a = [_unit(i) for i in range(len(cosines))]
    b: list[torch.Tensor] = [torch.zeros(D)] * len(cosines)
    for i, c in enumerate(cosines):
        b[order[i]] = c * _unit(i) + math.sqrt(1 - c * c) * _unit(i + 4)
    return _decoder(a), _decoder(b)


def _analysis(W_dec: torch.Tensor, frequency: list[float] | None = None) -> EvolutionAnalysis:
    return EvolutionAnalysis.from_decoder(
        W_dec, [0, 10], frequency=None if frequency is None else torch.tensor(frequency)
    )


def test_matching_at_both_thresholds_on_crafted_decoders():
    W_a, W_b = _pair([1.0, 0.95, 0.8, 0.5], order=[2, 0, 3, 1])
    # a fifth latent in a never fires: its decoder is as good as any but it is no feature
    W_a = torch.cat([W_a, _decoder([_unit(3)])])
    a = _analysis(W_a, frequency=[0.1, 0.1, 0.1, 0.1, 0.0])
    b = _analysis(W_b)
    assert [(p, q) for p, q, _ in match_features(a, b, 0.7)] == [(0, 2), (1, 0), (2, 3)]
    assert [round(c, 6) for _, _, c in match_features(a, b, 0.7)] == [1.0, 0.95, 0.8]
    rows = seed_stability([a, b], labels=["s0", "s1"])
    assert [(r["min_cosine"], r["matched"], r["live_features"]) for r in rows] == [(0.7, 3, "4 / 4"), (0.9, 2, "4 / 4")]
    assert [r["matched_fraction"] for r in rows] == [0.75, 0.5]
    summary = stability_summary(seed_stability([a, b, b], labels=["s0", "s1", "s1'"]))
    # pairs: a-b 3/4 and 2/4, a-b' the same, b-b' 4/4 at both thresholds
    assert [(s["min_cosine"], s["pairs"]) for s in summary] == [(0.7, 3), (0.9, 3)]
    assert summary[0]["mean"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert summary[1]["mean"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert summary[1]["sd"] == pytest.approx(math.sqrt(((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2))
    text = format_stability(rows)
    assert text.splitlines()[0] == "  decoder cos >= 0.7: 75.0% of live features matched (one pair of seeds: no spread)"
    three = format_stability(seed_stability([a, b, b], labels=["s0", "s1", "s1'"]))
    assert three.splitlines()[0].endswith("of live features matched (mean +/- sd over 3 pairs of seeds)")
    assert "s0 vs s1 at cos >= 0.9: 2 of 4 / 4 live features matched (50.0%)" in text
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        seed_stability([a, b], thresholds=(1.5,))


def test_stable_features_need_a_match_in_every_other_seed():
    W_a, W_b = _pair([1.0, 0.95, 0.8, 0.5], order=[0, 1, 2, 3])
    _, W_c = _pair([0.9, 0.6, 0.99, 0.95], order=[3, 2, 1, 0])
    a, b, c = _analysis(W_a), _analysis(W_b), _analysis(W_c)
    # b's and c's features of a_i meet at cosine 0.9, 0.82, 0.877, 0.745 (i = 0..3); c's feature
    # of a_i is c's 3 - i. At 0.7: a-b match a's 0, 1, 2 and a-c a's 0, 2, 3; b-c match all four.
    assert stable_features([a, b, c], 0.7) == [[0, 2], [0, 1, 2], [0, 1, 3]]
    # At 0.85: a-b keep a's 0, 1; a-c a's 0, 2, 3; b-c b's 0, 2 (c's 3, 1).
    assert stable_features([a, b, c], 0.85) == [[0], [0], [1, 3]]
    with pytest.raises(ValueError, match="at least 2"):
        stable_features([a], 0.7)


def _curve(snapshot: int, clean: float, ablated: dict[int, float], restored: dict[int, float]) -> list[dict]:
    rows = [{"snapshot": snapshot, "k": 0, "selection": "none", "keep_only": False, "metric": clean}]
    rows += [
        {"snapshot": snapshot, "k": k, "selection": "top", "keep_only": False, "metric": m} for k, m in ablated.items()
    ]
    rows += [{"snapshot": snapshot, "k": 0, "selection": "all", "keep_only": True, "metric": 0.0}]
    rows += [
        {"snapshot": snapshot, "k": k, "selection": "top", "keep_only": True, "metric": 0.0, "restored": r}
        for k, r in restored.items()
    ]
    return rows


def test_keep_only_area_is_the_mean_height_on_a_log_k_axis():
    rows = _curve(3, -2.0, {}, {1: 0.0, 10: 1.0, 100: 1.0})
    assert keep_only_area(rows, 3) == pytest.approx(0.75)  # (0.5 + 1.0) / 2 over two equal log-k steps
    assert keep_only_area(_curve(3, -2.0, {}, {5: 0.4}), 3) == pytest.approx(0.4)
    assert keep_only_area(rows, 2) is None


def test_the_stable_claims_rank_only_stable_features_and_give_their_spread():
    ie_F = torch.tensor([5.0, -4.0, 3.0, 0.0, 1.0, -2.0])
    ranked_F, n = stable_ranking_ie(ie_F, [1, 3, 4])
    assert ranked_F.tolist() == [0.0, -4.0, 0.0, 0.0, 1.0, 0.0] and n == 2  # feature 3 has no effect
    assert stable_ks((1, 2, 5, 10, 20), [12, 7, 30]) == [1, 2, 5]
    assert stable_ks((1, 2), [0, 5]) == []

    seeds = [
        _curve(11, -4.0, {1: -3.0, 5: -1.0}, {1: 0.2, 5: 0.6}),
        _curve(11, -4.0, {1: -2.0, 5: 0.0}, {1: 0.4, 5: 0.8}),
        _curve(11, -4.0, {1: -4.0, 5: -3.0}, {1: 0.0, 5: 0.4}),
    ]
    summary = stable_claims_over_seeds(seeds, 11, [1, 5], [7, 9, 8], ["s0", "s1", "s2"], min_cosine=0.7)
    assert summary["ablate_k"] == 5
    # shifts (ablated - clean) / (0 - clean): 0.75, 1.0, 0.25
    assert summary["ablation_shift"]["mean"] == pytest.approx(2 / 3)
    assert summary["ablation_shift"]["sd"] == pytest.approx(0.381881, rel=1e-5)
    assert summary["ablation_claim"] == "holds for 2 of 3 seeds"
    assert summary["keep_only_area"] == pytest.approx({"mean": 0.4, "sd": 0.2, "n": 3, "min": 0.2, "max": 0.6})
    lines = format_stable_claims(summary, "step640").splitlines()
    assert lines == [
        "causal claims at step640 over 3 crosscoder seeds, counting only features with a match (decoder cos >= 0.7) "
        "in every other seed (7/9/8 such features by seed):",
        "  ablating the top-5 stable features moves the metric by 67% +/- 38% of its clean-vs-chance gap "
        "(claim >= 50%: holds for 2 of 3 seeds)",
        "  keeping only the top-k stable features (k = 1..5) restores 40% +/- 20% of the clean-vs-all-ablated gap "
        "on average over k (area under the keep-only curve, log k; seeds range 20% to 60%)",
    ]
    empty = stable_claims_over_seeds([[], []], 11, [], [0, 3], ["s0", "s1"], min_cosine=0.7)
    assert format_stable_claims(empty).endswith("none: too few seed-stable features to rank")


def _stability_lines(store, root, seeds) -> str:
    from crosslens.activations import ActivationStore
    from crosslens.cli.demo_stages import stability_analyses

    crosscoders = [
        train(store, root / f"seed{seed}", seed=seed, architecture="jumprelu_crosscoder", sparsity_coefficient=0.05)
        for seed in seeds
    ]
    analyses, l0 = stability_analyses(crosscoders, ActivationStore.open(store))
    return format_stability(seed_stability(analyses)) + f"\nL0 {l0}"


def test_the_printed_stability_lines_are_the_same_on_a_second_fresh_run(tmp_path):
    suite = write_suite(tmp_path / "suite")
    store = harvest(suite, tmp_path / "store").path
    first = _stability_lines(store, tmp_path / "first", (0, 1, 2))
    second = _stability_lines(store, tmp_path / "second", (0, 1, 2))
    assert first == second
    assert first.count("decoder cos >= ") == 2 and first.count(" vs ") == 6
