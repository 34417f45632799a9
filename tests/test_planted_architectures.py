"""Issue 11: every architecture, with the defaults a user gets, recovers a planted evolution.

The CI-sized version of ``scripts/planted_benchmark.py`` (whose full-size output is in
docs/notes/issue-11.md): a smaller planted set of the same kind (correlated pairs,
per-feature and per-snapshot scales, short transients, normalised batches), each
architecture trained from the runner's defaults for 3 seeds, scored against the truth.
"""

from __future__ import annotations

import pytest
import torch

from crosslens.analysis import (
    EvolutionAnalysis,
    EvolutionConfig,
    PlantedConfig,
    PlantedEvolution,
    firing_frequency,
    planted_scores,
    snapshot_firing_frequency,
)
from crosslens.training.planted import train_planted

ARCHITECTURES = ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"]
SEEDS = (0, 1, 2)
SMALL = dict(
    n_snapshots=6,
    d_in=32,
    n_features=24,
    n_initialization=6,
    n_initialization_fading=4,
    n_transient=7,
    n_correlated_pairs=3,
    firing_prob_min=0.01,
    firing_prob_max=0.06,
)
TRAINING = dict(n_steps=1000, batch_size=256, d_sae=48, k=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted():
    planted = PlantedEvolution.build(PlantedConfig.hard(seed=0, **SMALL))
    acts_NSD, _ = planted.sample(8000, torch.Generator().manual_seed(5))
    return planted, acts_NSD


def _score(planted, acts_NSD, crosscoder, presence="robust"):
    analysis = EvolutionAnalysis.from_crosscoder(
        crosscoder,
        steps=planted.steps,
        frequency=firing_frequency(acts_NSD, crosscoder),
        snapshot_frequency=snapshot_firing_frequency(acts_NSD, crosscoder),
        config=EvolutionConfig(presence=presence),
    )
    return planted_scores(analysis, planted)


def test_small_planted_set_follows_the_hard_recipe(planted):
    planted, acts_NSD = planted
    assert planted.classes.count("transient") == 7 and len(planted.pairs) == 3
    lengths = [int(planted.fade[i] - planted.emergence[i]) for i, c in enumerate(planted.classes) if c == "transient"]
    assert set(lengths) <= {2, 3}
    # Normalised like an activation store: mean norm sqrt(d_in) at every snapshot.
    assert torch.allclose(acts_NSD.norm(dim=-1).mean(0), torch.full((6,), 32**0.5), rtol=0.05)
    # Correlated pairs co-fire far above chance.
    fires = planted.sample(20_000, torch.Generator().manual_seed(1))[1] > 0
    for a, b in planted.pairs:
        both = (fires[:, a] & fires[:, b]).float().mean()
        assert both > 0.3 * fires[:, a].float().mean()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_recovers_planted_evolution_over_seeds(planted, arch):
    planted, acts_NSD = planted
    for seed in SEEDS:
        crosscoder = train_planted(planted, arch, seed=seed, **TRAINING)
        result = _score(planted, acts_NSD, crosscoder)
        summary = {k: result[k] for k in ("n_recovered", "min_mmcs", "timeline_accuracy", "sae_lens_mcc")}
        assert result["recovered_fraction"] >= 0.9, (arch, seed, summary)
        assert result["min_mmcs"] >= 0.9, (arch, seed, result["mmcs_per_snapshot"])
        assert result["timeline_accuracy"] >= 0.9, (arch, seed, result["mismatches"])
        # SAELens's mean correlation coefficient agrees with the matching.
        assert result["sae_lens_mcc"] >= 0.85, (arch, seed, summary)
