"""Every architecture, with the defaults a user gets, recovers a planted evolution.

The planted set is the issue's (``PlantedConfig.hard()``: 8 snapshots, d_in 64, 48
features with correlated pairs, per-feature and per-snapshot scales, 2-3 snapshot
transients, normalised batches); every architecture trains with the runner's defaults
through :func:`crosslens.training.planted.train_planted`.

- ``test_planted_targets_over_three_seeds`` (slow, about 20 CPU-minutes): the full
  configuration of ``scripts/planted_benchmark.py`` (6000 steps of 512 tokens) and the
  issue's targets for each of 3 seeds: >= 90% recovered at decoder cosine >= 0.9, mean
  max-cosine >= 0.9 at every snapshot, emergence snapshot and class exact for >= 90% of the
  recovered. The numbers are in benchmarks/README.md ("Planted features recovered").
- ``test_planted_recovery_short_run`` (CI, about 80 CPU-seconds): one seed, 3000 steps of 256
  tokens. Recovery is still climbing at that length, so the bars are 80% recovered and 85%
  exact timelines (the old JumpReLU default recovered 52-54% even with the full run); the
  direction bar (mean max-cosine >= 0.9 at every snapshot) is the issue's.
"""

from __future__ import annotations

import os

import pytest
import torch

from crosslens.analysis import EvolutionAnalysis, PlantedConfig, PlantedEvolution, planted_scores
from crosslens.analysis.probes import firing_frequency
from crosslens.training.planted import train_planted

ARCHITECTURES = ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"]
K = 2  # about 1.5x the planted mean L0 (1.3), as in scripts/planted_benchmark.py


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    yield
    if old is None:
        os.environ.pop("TQDM_DISABLE", None)
    else:
        os.environ["TQDM_DISABLE"] = old


@pytest.fixture(scope="module")
def planted():
    planted = PlantedEvolution.build(PlantedConfig.hard(seed=0))
    acts_NSD, _ = planted.sample(8000, torch.Generator().manual_seed(5))
    return planted, acts_NSD


def _score(planted, acts_NSD, crosscoder):
    analysis = EvolutionAnalysis.from_crosscoder(
        crosscoder,
        steps=planted.steps,
        frequency=firing_frequency(acts_NSD, crosscoder),
        snapshot_frequency=firing_frequency(acts_NSD, crosscoder, per_snapshot=True),
    )
    return planted_scores(analysis, planted)


def _check(planted, acts_NSD, arch, seed, min_recovered, min_timeline, **training):
    crosscoder = train_planted(planted, arch, seed=seed, k=K, d_sae=128, **training)
    result = _score(planted, acts_NSD, crosscoder)
    summary = {k: result[k] for k in ("n_recovered", "min_mmcs", "timeline_accuracy", "sae_lens_mcc")}
    assert result["recovered_fraction"] >= min_recovered, (arch, seed, summary)
    assert result["min_mmcs"] >= 0.9, (arch, seed, result["mmcs_per_snapshot"])
    assert result["timeline_accuracy"] >= min_timeline, (arch, seed, result["mismatches"])
    # SAELens's mean correlation coefficient agrees with the matching.
    assert result["sae_lens_mcc"] >= min_recovered, (arch, seed, summary)


def test_hard_planted_set_follows_the_issue(planted):
    planted, acts_NSD = planted
    classes = planted.classes
    assert planted.config.n_features == 48 and planted.config.n_snapshots == 8 and planted.config.d_in == 64
    assert classes.count("transient") == 14 and len(planted.pairs) == 6
    lengths = [int(planted.fade[i] - planted.emergence[i]) for i, c in enumerate(classes) if c == "transient"]
    assert set(lengths) <= {2, 3}
    assert 0.005 <= float(planted.firing_probs.min()) and float(planted.firing_probs.max()) <= 0.05
    # Normalised like an activation store: mean norm sqrt(d_in) at every snapshot.
    assert torch.allclose(acts_NSD.norm(dim=-1).mean(0), torch.full((8,), 8.0), rtol=0.05)
    # Correlated pairs co-fire far above chance, each keeping its own rate.
    fires = planted.sample(40_000, torch.Generator().manual_seed(1))[1] > 0
    for a, b in planted.pairs:
        both = (fires[:, a] & fires[:, b]).float().mean()
        assert both > 0.3 * fires[:, a].float().mean()
        assert float(fires[:, b].float().mean()) == pytest.approx(float(planted.firing_probs[b]), rel=0.25)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_planted_recovery_short_run(planted, arch):
    planted, acts_NSD = planted
    _check(planted, acts_NSD, arch, seed=0, min_recovered=0.8, min_timeline=0.85, n_steps=3000, batch_size=256)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_planted_targets_over_three_seeds(planted, arch):
    planted, acts_NSD = planted
    for seed in (0, 1, 2):
        _check(planted, acts_NSD, arch, seed=seed, min_recovered=0.9, min_timeline=0.9, n_steps=6000, batch_size=512)


@pytest.mark.parametrize(
    ("arch", "field"), [("jumprelu_crosscoder", "l0_warm_up_steps"), ("crosscoder", "l1_warm_up_steps")]
)
def test_the_sparsity_warm_up_share_reaches_the_crosscoder(planted, arch, field):
    from crosslens.architectures import defaults_for

    planted_set, _ = planted
    default = train_planted(planted_set, arch, n_steps=20, batch_size=64)
    ramped = train_planted(planted_set, arch, n_steps=20, batch_size=64, sparsity_warm_up=0.5)
    assert getattr(default.cfg, field) == int(20 * defaults_for(arch).sparsity_warm_up)
    assert getattr(ramped.cfg, field) == 10
