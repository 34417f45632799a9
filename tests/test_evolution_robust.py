"""Presence that survives dips and leakage, and feature stability across seeds.

Synthetic decoder-norm trajectories with a known answer: a dip is not an emergence in
robust mode (but is in Ge et al.'s decoder-norm mode), dip-and-recover is its own pattern,
and a row that carries norm where its feature never fires is not present when per-snapshot
firing is given.
"""

from __future__ import annotations

import pytest
import torch

from crosslens.analysis import (
    EvolutionAnalysis,
    EvolutionConfig,
    PlantedConfig,
    PlantedEvolution,
    planted_scores,
)
from crosslens.analysis.absorption import ABSORBING_SHARE, absorbed_shares
from crosslens.analysis.evolution import NO_STEP, Lifetimes, feature_lifetimes, presence_strength
from crosslens.analysis.report import evolution_report
from crosslens.analysis.stability import add_stability_section, match_features, seed_stability, stable_features
from crosslens.cli.flags import field_docs
from crosslens.core.errors import CrosslensError
from crosslens.htmlreport import Report

ROBUST = EvolutionConfig(dead_threshold=0.0)
GE = EvolutionConfig(dead_threshold=0.0, presence="decoder_norm")


def test_dip_is_not_an_emergence_in_robust_mode():
    # The real-text symptom: present at step 0, dips while activation norms grow, comes back.
    norms = torch.tensor(
        [
            [0.6, 1.0, 0.1, 0.05, 0.15, 0.8, 0.9, 1.0],  # dip over snapshots 2-4, back at 5
            [0.0, 0.0, 0.5, 1.0, 0.1, 0.0, 0.6, 0.9],  # emerges at 2, dips at 4-5, back at 6
            [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.9, 0.8],  # clean late emergence: no dip
            [1.0, 0.9, 0.4, 0.1, 0.0, 0.0, 0.0, 0.0],  # fades for good: no dip
        ]
    )
    robust = feature_lifetimes(norms, ROBUST)
    ge = feature_lifetimes(norms, GE)
    assert robust.emergence.tolist() == [0, 2, 3, 0]
    assert ge.emergence.tolist() == [5, 6, 3, 0]
    for lt in (robust, ge):  # both modes record the dip and the return
        assert lt.dip.tolist() == [2, 4, NO_STEP, NO_STEP]
        assert lt.recovery.tolist() == [5, 6, NO_STEP, NO_STEP]
        assert lt.dip_and_recover.tolist() == [True, True, False, False]
        assert lt.fade.tolist() == [NO_STEP, NO_STEP, NO_STEP, 3]
    analysis = EvolutionAnalysis.from_decoder(_decoder(norms), list(range(8)), config=ROBUST)
    assert analysis.classes == ["initialization", "persistent", "persistent", "initialization"]
    assert EvolutionAnalysis.from_decoder(_decoder(norms), list(range(8)), config=GE).classes[:2] == [
        "persistent",
        "persistent",
    ]
    assert analysis.dip_and_recover_features() == [0, 1]


def test_the_lifetimes_and_the_fade_line_are_documented_as_they_are_read():
    """A dip and a return date emergence by the first on-period in robust mode (the default), and
    a norm back only between the two lines (0.25) stays faded from the turn-off: the docs of
    Lifetimes and EvolutionConfig.fade_threshold say so (they said "final stretch" and "stays below
    this value to the end")."""
    norms = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.1, 0.25, 0.25, 0.25]])
    robust, ge = feature_lifetimes(norms, ROBUST), feature_lifetimes(norms, GE)
    assert robust.emergence.tolist() == [0, 0] and ge.emergence.tolist() == [4, 0]
    assert robust.fade.tolist() == ge.fade.tolist() == [NO_STEP, 2]
    docs, config_docs = field_docs(Lifetimes), field_docs(EvolutionConfig)
    assert "first on-period" in docs["emergence"] and "final stretch" not in docs["emergence"]
    assert "last one (``decoder_norm``)" in docs["emergence"]
    assert "may come back to between the two" in docs["fade"] and "from there to the end" not in docs["fade"]
    assert "stays below this value to the end" not in config_docs["fade_threshold"]
    assert "a norm that returns only to between the two lines stays faded" in config_docs["fade_threshold"]
    page = evolution_report(EvolutionAnalysis.from_decoder(_decoder(norms), config=ROBUST)).render()
    assert "fades where it falls below 0.2 of its peak and does not climb back to 0.3 before the end" in page


def test_whole_snapshot_dip_keeps_every_feature_an_initialization_feature():
    # Every feature squeezed at snapshots 2-3 (activation norms growing fast): Ge et al.'s
    # reading would date 3 of 3 features to the return; robust presence dates none.
    base = torch.tensor([[1.0] * 6, [0.8] * 6, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    squeeze = torch.tensor([1.0, 1.0, 0.05, 0.05, 1.0, 1.0])
    norms = base * squeeze
    assert feature_lifetimes(norms, GE).emergence.tolist() == [4, 4, 4]
    robust = feature_lifetimes(norms, ROBUST)
    assert robust.emergence.tolist() == [0, 0, 0] and robust.dip.tolist() == [2, 2, 2]
    analysis = EvolutionAnalysis.from_decoder(_decoder(norms), [0, 1, 2, 4, 8, 16], config=ROBUST)
    table = analysis.snapshot_table()
    assert [r["dipping"] for r in table] == [0, 0, 3, 0, 0, 0]
    assert [r["recovering"] for r in table] == [0, 0, 0, 0, 3, 0]


def test_leaked_norm_without_firing_is_not_presence():
    # A transient planted at 1-3 learned with 0.33 of its peak left at snapshot 7 (the
    # issue's example): by norm alone it is persistent; its gate never opens at 7.
    norms = torch.tensor([[0.01, 1.0, 0.96, 0.69, 0.0, 0.0, 0.01, 0.33], [1.0, 0.9, 0.8, 0.9, 1.0, 0.9, 0.8, 0.9]])
    firing = torch.tensor([[0.0, 0.02, 0.02, 0.015, 0.0, 0.0, 0.0, 0.0005], [0.03] * 8])
    by_norm = feature_lifetimes(norms, ROBUST)
    assert (int(by_norm.emergence[0]), int(by_norm.fade[0])) == (1, NO_STEP)
    with_firing = feature_lifetimes(norms, ROBUST, snapshot_frequency=firing)
    assert (int(with_firing.emergence[0]), int(with_firing.fade[0])) == (1, 4)
    assert not bool(with_firing.dip_and_recover[0])
    strength = presence_strength(norms, ROBUST, firing)
    assert strength[0, 7] == 0 and strength[0, 3] == pytest.approx(0.69)
    # Ge et al.'s mode reads norms only, whatever firing says.
    assert torch.equal(presence_strength(norms, GE, firing), presence_strength(norms, GE))
    analysis = EvolutionAnalysis.from_decoder(_decoder(norms), list(range(8)), config=ROBUST, snapshot_frequency=firing)
    assert analysis.classes == ["transient", "initialization"]
    assert analysis.present[0].tolist() == [False, True, True, True, False, False, False, False]
    with pytest.raises(ValueError, match="one firing rate per feature and snapshot"):
        presence_strength(norms, ROBUST, firing[:, :4])
    with pytest.raises(ValueError, match="presence"):
        EvolutionConfig(presence="norm")


def test_small_norm_at_snapshot_zero_does_not_make_an_initialization_feature():
    # Features born at snapshot 1 and 4 whose learned rows keep some norm at snapshot 0:
    # below the presence line (0.25 of peak), above it without firing there (0.45), and
    # above it while firing at a tenth of the peak rate (a real but weak presence).
    norms = torch.tensor(
        [
            [0.25, 0.8, 1.0, 1.0, 0.9, 0.9],
            [0.45, 0.0, 0.0, 0.0, 0.9, 1.0],
            [0.45, 0.9, 1.0, 1.0, 0.9, 0.9],
        ]
    )
    firing = torch.tensor(
        [
            [0.001, 0.02, 0.02, 0.02, 0.02, 0.02],
            [0.0015, 0.0, 0.0, 0.0, 0.03, 0.03],
            [0.002, 0.02, 0.02, 0.02, 0.02, 0.02],
        ]
    )
    robust = feature_lifetimes(norms, ROBUST, snapshot_frequency=firing)
    assert robust.emergence.tolist() == [1, 4, 0]
    analysis = EvolutionAnalysis.from_decoder(
        _decoder(norms), [0, 1, 2, 4, 8, 16], config=ROBUST, snapshot_frequency=firing
    )
    assert analysis.classes == ["persistent", "persistent", "initialization"]
    # Norms alone read the second row as present at snapshot 0, then dipping.
    by_norm = feature_lifetimes(norms, ROBUST)
    assert by_norm.emergence.tolist() == [1, 0, 0] and by_norm.dip.tolist() == [NO_STEP, 1, NO_STEP]


def _decoder(norms: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(*norms.shape, 16, generator=gen)
    return directions / directions.norm(dim=-1, keepdim=True) * norms[..., None]


def test_seed_stability_matches_features_and_compares_their_timelines():
    planted = PlantedEvolution.build(PlantedConfig(seed=0))
    truth = planted.decoder
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    other = truth[perm].clone()
    # The second "seed" misses 4 features (random rows) and dates 2 others later.
    other[:4] = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(4))
    late = [k for k in range(4, 32) if int(planted.emergence[perm[k]]) == 0 and int(planted.fade[perm[k]]) == NO_STEP][
        :2
    ]
    other[late, 0] *= 0.2  # below the 0.3 presence line: emerges at snapshot 1
    a = EvolutionAnalysis.from_decoder(truth, planted.steps)
    b = EvolutionAnalysis.from_decoder(other, planted.steps)
    matches = match_features(a, b)
    assert len(matches) == 28 and all(int(perm[q]) == p for p, q, _ in matches)
    (row,) = seed_stability([a, b], labels=["s0", "s1"], thresholds=(0.9,))
    assert row["runs"] == "s0 vs s1" and row["matched"] == 28
    assert row["matched_fraction"] == pytest.approx(28 / 32)
    assert row["same_emergence_fraction"] == pytest.approx(26 / 28)
    assert len(seed_stability([a, b, a])) == 6  # 3 pairs at cosine 0.7 and 0.9
    with pytest.raises(ValueError, match="at least 2"):
        seed_stability([a])
    page = add_stability_section(Report("t"), [row]).render()
    assert ">Seed stability</h2>" in page and "s0 vs s1" in page


def test_seed_stability_refuses_analyses_of_other_steps_or_hooks():
    """Decoders of the same shape read at other steps (another suite, or other snapshots of it), or
    at another hook, are not seeds of one store: their emergence indices stand for other steps."""
    planted = PlantedEvolution.build(PlantedConfig(seed=0))
    a = EvolutionAnalysis.from_decoder(planted.decoder, planted.steps)
    later = [step + 1 for step in planted.steps]
    b = EvolutionAnalysis.from_decoder(planted.decoder, later)
    for compare in (seed_stability, lambda pair: stable_features(pair, 0.9), lambda pair: match_features(*pair)):
        with pytest.raises(CrosslensError, match=r"other steps .*compare crosscoders trained on the same store"):
            compare([a, b])
    hooked = {
        hook: EvolutionAnalysis.from_decoder(planted.decoder, planted.steps, metadata={"hook_name": hook})
        for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    }
    with pytest.raises(CrosslensError, match=r"other hooks \(blocks.0.hook_resid_post and blocks.1.hook_resid_post\)"):
        seed_stability(list(hooked.values()))
    # the same steps, and a hook recorded on one side only: compared, every feature matched to itself
    (row,) = seed_stability([a, hooked["blocks.0.hook_resid_post"]], thresholds=(0.9,))
    assert row["matched_fraction"] == 1.0 and row["same_emergence_fraction"] == 1.0


def test_absorbed_shares_count_the_other_planted_features_a_latent_writes():
    planted = PlantedEvolution.build(PlantedConfig.hard(seed=0))
    truth = planted.decoder.double()
    learned = truth.clone()
    # latent 0 writes feature 1 at half feature 0's strength; latent 2 adds a direction no
    # planted feature has, which is a worse latent but not an absorbing one
    learned[0] = truth[0] + 0.5 * truth[1] * truth[0].norm() / truth[1].norm()
    span = torch.linalg.qr(truth.flatten(1).T).Q
    stray = torch.randn(truth[2].numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stray = stray - span @ (span.T @ stray)
    learned[2] = truth[2] + (0.5 * truth[2].norm() / stray.norm() * stray).reshape(truth[2].shape)
    shares = absorbed_shares(learned, truth, [(0, 0), (1, 1), (2, 2), (3, 3)])
    assert shares[0] == pytest.approx(0.5, rel=1e-6)
    assert shares[1:] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert absorbed_shares(learned, truth, []) == []
    scores = planted_scores(EvolutionAnalysis.from_decoder(learned.float(), planted.steps), planted)
    assert scores["absorbing_fraction"] == pytest.approx(1 / planted.config.n_features)
    assert ABSORBING_SHARE < 0.5


def test_planted_scores_add_saelens_metrics_and_leakage():
    planted = PlantedEvolution.build(PlantedConfig.hard(seed=0))
    acts, coeff = planted.sample(4000, torch.Generator().manual_seed(0))
    ideal = EvolutionAnalysis.from_decoder(planted.decoder, planted.steps)
    scores = planted_scores(ideal, planted, codes=coeff, coefficients=coeff)
    assert scores["recovered_fraction"] == 1.0 and scores["timeline_accuracy"] == 1.0
    assert scores["sae_lens_mcc"] == pytest.approx(1.0) and scores["sae_lens_uniqueness"] == 1.0
    assert scores["sae_lens_precision"] == pytest.approx(1.0) and scores["sae_lens_recall"] == pytest.approx(1.0)
    assert scores["absent_norm"] == 0.0 and scores["absent_above_threshold"] == 0.0
    assert scores["absorbing_fraction"] == 0.0 and scores["absorbed_share_median"] == pytest.approx(0.0, abs=1e-9)
    # Leak 0.4 of each feature's peak into every absent snapshot: timelines break, MCC barely moves.
    leaky = planted.decoder.clone()
    peak = leaky.norm(dim=-1).amax(1)
    absent = ~planted.present
    leaky[absent] = planted.directions[absent] * (0.4 * peak[:, None].expand_as(absent)[absent])[:, None]
    leaked = planted_scores(EvolutionAnalysis.from_decoder(leaky, planted.steps), planted)
    assert leaked["absent_norm"] == pytest.approx(0.4, abs=1e-4) and leaked["absent_above_threshold"] == 1.0
    assert leaked["timeline_accuracy"] < 0.5 and leaked["recovered_fraction"] == 1.0
