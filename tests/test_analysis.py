"""Unit tests for crosslens.analysis on hand-made decoders (fast: no training)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch

from crosslens.analysis import (
    EvolutionAnalysis,
    EvolutionConfig,
    direction_drift,
    evolution_report,
    feature_dimensionality,
    probe_validation,
    rel_dec,
    top_activating_contexts,
)
from crosslens.analysis.evolution import NO_STEP, decoder_norm_table, feature_lifetimes, normalize_norms
from crosslens.analysis.geometry import pairwise_rel_dec, total_dimensionality, turning_point
from crosslens.analysis.plots import (
    drift_curve,
    emergence_histogram,
    evolution_heatmap,
    feature_trajectories,
    probe_scatter,
)
from crosslens.htmlreport import Report

# Normalised timelines (each row's peak is 1) with the expected (emergence, peak, fade, class)
# under the default thresholds (emergence 0.3, fade 0.2) in Ge et al.'s decoder-norm mode;
# ROBUST_CASES gives the robust mode's answer where it differs.
CASES = [
    ([1.0, 1.0, 0.9, 1.0, 1.0, 1.0], (0, 0, NO_STEP, "initialization")),
    ([1.0, 0.9, 0.1, 0.05, 0.0, 0.0], (0, 0, 2, "initialization")),  # init feature that fades
    ([0.0, 0.0, 0.5, 1.0, 1.0, 1.0], (2, 3, NO_STEP, "persistent")),
    ([0.0, 0.4, 1.0, 0.5, 0.1, 0.0], (1, 2, 4, "transient")),
    ([0.5, 0.1, 0.6, 1.0, 0.9, 0.8], (2, 3, NO_STEP, "persistent")),  # dip: emerges when it returns
    ([0.0, 0.5, 1.0, 0.25, 0.8, 0.9], (1, 2, NO_STEP, "persistent")),  # 0.25 is in the hysteresis band
    ([0.0, 0.1, 0.2, 0.31, 0.6, 1.0], (3, 5, NO_STEP, "persistent")),  # slow rise
    ([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], (5, 5, NO_STEP, "persistent")),  # emerges at the last snapshot
    ([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (2, 2, 3, "transient")),
]
STEPS = [0, 10, 100, 1000, 10_000, 100_000]
# Robust presence: a return after a dip is not an emergence; the dip is recorded instead.
ROBUST_CASES = {4: (0, 3, NO_STEP, "initialization")}


def _case_norms() -> torch.Tensor:
    rows = torch.tensor([timeline for timeline, _ in CASES])
    # Different peak scales per feature: the analysis must not care.
    scales = torch.linspace(0.5, 3.0, len(CASES))[:, None]
    dead = torch.full((2, 6), 1e-4)
    return torch.cat([rows * scales, dead])


def _decoder_from_norms(norms: torch.Tensor, d_in: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(norms.shape[0], norms.shape[1], d_in, generator=gen)
    return directions / directions.norm(dim=-1, keepdim=True) * norms[..., None]


# ---------------------------------------------------------------------------
# evolution
# ---------------------------------------------------------------------------
def test_norm_table_and_normalisation():
    W = torch.zeros(2, 3, 4)
    W[0, 0, 0], W[0, 1, 1], W[0, 2] = 3.0, 4.0, torch.tensor([1.0, 1.0, 1.0, 1.0])
    norms = decoder_norm_table(W)
    assert torch.allclose(norms, torch.tensor([[3.0, 4.0, 2.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(normalize_norms(norms), torch.tensor([[0.75, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="d_sae, n_snapshots, d_in"):
        decoder_norm_table(torch.zeros(3, 4))


@pytest.mark.parametrize("presence", ["decoder_norm", "robust"])
def test_lifetimes_and_classes_on_hand_made_timelines(presence):
    config = EvolutionConfig(presence=presence)
    analysis = EvolutionAnalysis.from_decoder(_decoder_from_norms(_case_norms()), STEPS, config=config)
    lt = analysis.lifetimes
    for i, (_, expected) in enumerate(CASES):
        if presence == "robust":
            expected = ROBUST_CASES.get(i, expected)
        got = (int(lt.emergence[i]), int(lt.peak[i]), int(lt.fade[i]), analysis.classes[i])
        assert got == expected, f"case {i}: {CASES[i][0]}"
    # Both modes see case 4's dip (off at 1, back at 2); 0.25 in case 5 is no dip.
    assert analysis.dip_and_recover_features() == [4]
    assert (analysis.dip_step(4), analysis.recovery_step(4)) == (10, 100)
    n = len(CASES)
    assert analysis.classes[n:] == ["dead", "dead"]
    assert lt.dead.tolist() == [False] * n + [True, True]
    assert (lt.emergence[n:] == NO_STEP).all() and (lt.fade[n:] == NO_STEP).all()
    # Steps, not indices, through the step helpers.
    assert analysis.emergence_step(2) == 100 and analysis.fade_step(3) == 10_000 and analysis.fade_step(0) is None
    assert analysis.emergence_step(n) is None
    expected_emergence = [ROBUST_CASES.get(i, c)[0] if presence == "robust" else c[0] for i, (_, c) in enumerate(CASES)]
    assert sorted(analysis.emergence_steps) == sorted(STEPS[e] for e in expected_emergence)
    if presence == "robust":
        assert analysis.class_counts() == {"initialization": 3, "persistent": 4, "transient": 2, "dead": 2}
    else:
        assert analysis.class_counts() == {"initialization": 2, "persistent": 5, "transient": 2, "dead": 2}


def test_thresholds_change_the_answer():
    norms = torch.tensor([[0.0, 0.25, 1.0, 1.0], [1.0, 1.0, 0.25, 0.25]])
    default = feature_lifetimes(norms, EvolutionConfig(dead_threshold=0.0))
    assert default.emergence.tolist() == [2, 0] and default.fade.tolist() == [NO_STEP, NO_STEP]
    low = feature_lifetimes(norms, EvolutionConfig(emergence_threshold=0.2, fade_threshold=0.2, dead_threshold=0.0))
    assert low.emergence.tolist() == [1, 0]
    high_fade = feature_lifetimes(
        norms, EvolutionConfig(emergence_threshold=0.5, fade_threshold=0.3, dead_threshold=0.0)
    )
    assert high_fade.fade.tolist() == [NO_STEP, 2]


def test_dead_floor_is_relative_to_median_peak():
    # Median peak norm is 2, so the floor is 0.1: 0.15 is alive, 0.05 is dead.
    norms = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.5, 2.0], [0.0, 0.15], [0.0, 0.05]])
    lt = feature_lifetimes(norms, EvolutionConfig(dead_threshold=0.05))
    assert lt.dead.tolist() == [False, False, False, False, True]
    assert feature_lifetimes(norms, EvolutionConfig(dead_threshold=0.1)).dead.tolist() == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert not feature_lifetimes(norms, EvolutionConfig(dead_threshold=0.0)).dead.any()


def test_a_firing_rate_of_no_tokens_is_refused_at_every_snapshot():
    """JumpReLU's per-snapshot rate over no tokens was a table of zeros, every latent 'never firing';
    a negative ``n_tokens`` sliced all but that many tokens off the sample."""
    import crosslens.crosscoders as crosscoders
    from crosslens.analysis import firing_frequency

    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["jumprelu_crosscoder"][:2]
    jumprelu = sae_cls(cfg_cls(d_in=8, d_sae=16, n_snapshots=3))
    for per_snapshot in (False, True):
        with pytest.raises(ValueError, match=r"^no activations to count firing on; pass a non-empty source\.$"):
            firing_frequency(torch.zeros(0, 3, 8), jumprelu, per_snapshot=per_snapshot)
    for sizes in ({"n_tokens": -5}, {"n_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=r"^n_tokens=-?\d+, batch_size=\d+: both are at least 1$"):
            firing_frequency(torch.randn(20, 3, 8), jumprelu, **sizes)
    assert firing_frequency(torch.randn(20, 3, 8), jumprelu, per_snapshot=True).shape == (16, 3)


def test_untouched_and_never_firing_features_are_dead():
    # Row 1 still has its initial norm at every snapshot (never got a gradient).
    norms = torch.tensor([[0.0, 1.0, 2.0], [0.08, 0.08, 0.08], [1.0, 0.5, 1.5], [2.0, 2.0, 2.0 + 1e-3]])
    assert feature_lifetimes(norms).dead.tolist() == [False, True, False, False]
    assert not feature_lifetimes(norms, EvolutionConfig(untouched_rtol=0.0)).dead.any()
    assert feature_lifetimes(norms, EvolutionConfig(untouched_rtol=1e-3)).dead.tolist() == [False, True, False, True]
    # With firing frequencies, latents that never fire are dead whatever their norms.
    frequency = torch.tensor([0.1, 0.2, 0.0, 0.05])
    lt = feature_lifetimes(norms, frequency=frequency)
    assert lt.dead.tolist() == [False, True, True, False]
    assert feature_lifetimes(norms, EvolutionConfig(dead_frequency=0.06), frequency).dead.tolist() == [
        False,
        True,
        True,
        True,
    ]
    analysis = EvolutionAnalysis.from_decoder(_decoder_from_norms(norms), frequency=frequency)
    assert analysis.classes == ["persistent", "dead", "dead", "initialization"]
    assert analysis.feature_table([0])[0]["frequency"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one firing frequency per feature"):
        feature_lifetimes(norms, frequency=torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"emergence_threshold": 0.0}, "emergence_threshold"),
        ({"emergence_threshold": 1.5}, "emergence_threshold"),
        ({"fade_threshold": 0.5}, "fade_threshold"),
        ({"dead_threshold": 1.0}, "dead_threshold"),
        ({"untouched_rtol": -1.0}, "untouched_rtol"),
        ({"dead_frequency": 1.0}, "dead_frequency"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvolutionConfig(**kwargs)


def test_analysis_input_errors():
    W = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="steps has 2 entries"):
        EvolutionAnalysis.from_decoder(W, [0, 1])
    with pytest.raises(ValueError, match="not sorted"):
        EvolutionAnalysis.from_decoder(W, [0, 10, 5])
    with pytest.raises(ValueError, match="tokens_seen"):
        EvolutionAnalysis.from_decoder(W, [0, 1, 2], tokens_seen=[0])
    with pytest.raises(ValueError, match="no W_dec"):
        EvolutionAnalysis.from_crosscoder(object())


def test_from_crosscoder_reads_provenance():
    W = _decoder_from_norms(_case_norms())
    snapshots = [{"revision": f"step{s}", "step": s, "tokens_seen": s * 1024} for s in STEPS]
    fake = SimpleNamespace(
        W_dec=torch.nn.Parameter(W), cfg=SimpleNamespace(metadata={"suite": {"snapshots": snapshots}, "hook": "h"})
    )
    analysis = EvolutionAnalysis.from_crosscoder(fake)
    assert analysis.steps == STEPS and analysis.tokens_seen == [s * 1024 for s in STEPS]
    assert analysis.metadata["hook"] == "h"
    assert not analysis.W_dec.requires_grad
    # Without metadata: snapshot indices.
    plain = EvolutionAnalysis.from_crosscoder(SimpleNamespace(W_dec=W, cfg=SimpleNamespace(metadata=None)))
    assert plain.steps == list(range(6)) and plain.tokens_seen == [None] * 6


def test_emergence_order_and_tables():
    analysis = EvolutionAnalysis.from_decoder(_decoder_from_norms(_case_norms()), STEPS)
    order = analysis.emergence_order()
    assert sorted(order) == list(range(analysis.d_sae))
    emergences = [int(analysis.lifetimes.emergence[i]) for i in order[: len(CASES)]]
    assert emergences == sorted(emergences)
    assert order[-2:] == [len(CASES), len(CASES) + 1]  # dead last
    row = analysis.feature_table([3])[0]
    assert row == {
        "feature": 3,
        "class": "transient",
        "emergence_step": 10,
        "peak_step": 100,
        "fade_step": 10_000,
        "dip_step": None,
        "recovery_step": None,
        "peak_norm": pytest.approx(float(analysis.norms[3].max()), abs=1e-4),
    }
    assert analysis.feature_table([4])[0]["dip_step"] == 10
    snaps = analysis.snapshot_table()
    assert [r["step"] for r in snaps] == STEPS
    assert sum(r["emerging"] for r in snaps) == len(CASES)
    assert sum(r["fading"] for r in snaps) == 3
    assert [r["dipping"] for r in snaps] == [0, 1, 0, 0, 0, 0]
    assert [r["recovering"] for r in snaps] == [0, 0, 1, 0, 0, 0]
    assert snaps[0]["present"] == int(analysis.present[:, 0].sum()) == 3


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------
def test_direction_drift():
    W = torch.zeros(2, 3, 2)
    W[0, 0] = torch.tensor([2.0, 0.0])
    W[0, 1] = torch.tensor([1.0, 0.0])
    W[0, 2] = torch.tensor([0.5, math.sqrt(3) / 2])  # 60 degrees
    W[1, 1] = torch.tensor([0.0, 1.0])  # absent at snapshots 0 and 2
    adjacent, to_final = direction_drift(W)
    assert torch.allclose(adjacent[0], torch.tensor([1.0, 0.5]), atol=1e-6)
    assert torch.allclose(to_final[0], torch.tensor([0.5, 0.5, 1.0]), atol=1e-6)
    assert torch.isnan(adjacent[1]).all() and torch.isnan(to_final[1, [0, 2]]).all()


def test_analysis_drift_masks_absent_snapshots():
    norms = torch.tensor([[1.0, 0.9, 1.0], [0.01, 1.0, 1.0]])
    analysis = EvolutionAnalysis.from_decoder(_decoder_from_norms(norms, d_in=4), [0, 1, 2])
    adjacent, to_final = analysis.drift()
    assert not torch.isnan(adjacent[0]).any()
    assert torch.isnan(adjacent[1, 0]) and not torch.isnan(adjacent[1, 1])
    assert torch.isnan(to_final[1, 0]) and to_final[1, 2] == pytest.approx(1.0)


def test_rel_dec_one_vs_all_and_pairwise():
    W = torch.zeros(2, 3, 2)
    W[0, 0, 0], W[0, 1, 1], W[0, 2, 0] = 1.0, 3.0, 0.0
    one_vs_all = rel_dec(W)
    assert torch.allclose(one_vs_all[0], torch.tensor([0.25, 0.75, 0.0]))
    assert torch.allclose(one_vs_all[1], torch.full((3,), 1 / 3))
    assert torch.allclose(one_vs_all.sum(1), torch.ones(2))
    pair = pairwise_rel_dec(W)
    assert pair.shape == (2, 3, 3)
    assert pair[0, 0, 1] == pytest.approx(0.25) and pair[0, 1, 0] == pytest.approx(0.75)
    assert pair[0, 1, 2] == pytest.approx(1.0) and pair[0, 2, 1] == pytest.approx(0.0)
    assert torch.allclose(pair + pair.transpose(1, 2), torch.ones(2, 3, 3))
    assert torch.allclose(pair[1], torch.full((3, 3), 0.5))


def test_feature_dimensionality_known_configurations():
    # Snapshot 0: 3 orthogonal features in 3-d -> D = 1 each.
    # Snapshot 1: 3 equal-norm features at 120 degrees in a plane -> D = 2/3 each, total 2.
    # Snapshot 2: features 0 and 1 antipodal, feature 2 zero -> D = 1/2, 1/2, 0.
    W = torch.zeros(3, 3, 3)
    W[:, 0] = 2.0 * torch.eye(3)
    for k in range(3):
        angle = 2 * math.pi * k / 3
        W[k, 1] = torch.tensor([math.cos(angle), math.sin(angle), 0.0])
    W[0, 2], W[1, 2] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 0.0, 0.0])
    dims = feature_dimensionality(W)
    assert torch.allclose(dims[:, 0], torch.ones(3), atol=1e-6)
    assert torch.allclose(dims[:, 1], torch.full((3,), 2 / 3), atol=1e-6)
    assert torch.allclose(dims[:, 2], torch.tensor([0.5, 0.5, 0.0]), atol=1e-6)
    assert torch.allclose(total_dimensionality(dims), torch.tensor([3.0, 2.0, 1.0]), atol=1e-5)
    W_random = torch.randn(37, 4, 6)
    assert torch.allclose(feature_dimensionality(W_random, chunk_size=5), feature_dimensionality(W_random), atol=1e-5)
    with pytest.raises(ValueError, match=r"^chunk_size=0 must be >= 1\.$"):
        feature_dimensionality(W_random, chunk_size=0)


def test_analysis_dimensionality_ignores_dead_features():
    W = torch.zeros(3, 2, 2)
    W[0, 0, 0], W[0, 1, 0] = 1.0, 1.5
    W[1, 0, 0], W[1, 1, 1] = 1.0, 2.0  # shares snapshot 0's dimension with feature 0
    W[2] = 0.08 * torch.tensor([0.6, 0.8])  # untrained: the same norm at both snapshots
    analysis = EvolutionAnalysis.from_decoder(W)
    assert analysis.classes[2] == "dead"
    dims = analysis.dimensionality()
    assert torch.allclose(dims, torch.tensor([[0.5, 1.0], [0.5, 1.0], [0.0, 0.0]]), atol=1e-6)
    assert (analysis.dimensionality(include_dead=True)[2] > 0).all()


def test_turning_point():
    assert turning_point(torch.tensor([5.0, 3.0, 2.0, 4.0, 6.0])) == 2
    assert turning_point(torch.tensor([5.0, 4.0, 3.0])) is None
    assert turning_point(torch.tensor([1.0, 2.0, 3.0])) is None


# ---------------------------------------------------------------------------
# probes and contexts
# ---------------------------------------------------------------------------
class _OracleCrosscoder(torch.nn.Module):
    """Encodes with the pseudo-inverse of a known decoder: exact labels for planted data."""

    def __init__(self, W_dec: torch.Tensor, threshold: float = 0.25):
        super().__init__()
        self.W_dec = torch.nn.Parameter(W_dec.clone())
        self.register_buffer("pinv", torch.linalg.pinv(W_dec.flatten(1)))
        self.threshold = threshold

    def encode(self, x_BSD: torch.Tensor) -> torch.Tensor:
        return torch.relu(x_BSD.flatten(1) @ self.pinv - self.threshold)


def test_probe_error_tracks_decoder_norm_on_planted_data():
    from crosslens.analysis.synthetic import PlantedConfig, PlantedEvolution

    planted = PlantedEvolution.build(
        PlantedConfig(n_features=16, d_in=24, n_initialization=4, n_initialization_fading=2, n_transient=4, seed=1)
    )
    acts, coeff = planted.sample(3000, torch.Generator().manual_seed(0))
    oracle = _OracleCrosscoder(planted.decoder)
    assert ((oracle.encode(acts) > 0) == (coeff > 0)).float().mean() > 0.99

    result = probe_validation(acts, oracle, n_features=10, min_positives=20, seed=0)
    assert len(result.features) == 10 and result.probe_error.shape == (10, 6)
    present = planted.present[result.features]
    assert result.probe_error[present].mean() < 0.05
    assert result.probe_error[~present].mean() > 0.3
    assert result.pearson_r < -0.8 and result.pearson_r_raw < -0.7
    assert torch.allclose(result.decoder_norm, planted.magnitudes[result.features], atol=1e-5)
    assert len(result.rows()) == 60

    explicit = probe_validation(acts, oracle, features=[0, 1], n_tokens=1000)
    assert explicit.features == [0, 1] and explicit.n_tokens == 1000


def test_probe_validation_errors():
    oracle = _OracleCrosscoder(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="n_tokens, n_snapshots, d_in"):
        probe_validation(torch.randn(10, 8), oracle)
    with pytest.raises(ValueError, match="min_positives"):
        probe_validation(torch.zeros(50, 2, 4), oracle)
    with pytest.raises(ValueError, match="train_fraction"):
        probe_validation(torch.randn(50, 2, 4), oracle, train_fraction=1.0)


class _FakeStore:
    """Two sequences of 6 tokens each, stored in a scrambled order; position 0 (BOS) left out."""

    def __init__(self):
        seqs, poss = torch.meshgrid(torch.arange(2), torch.arange(1, 7), indexing="ij")
        positions = torch.stack([seqs.flatten(), poss.flatten()], dim=1)
        order = torch.tensor([5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6])
        self.positions = positions[order]
        self.token_ids = 100 * self.positions[:, 0] + self.positions[:, 1]  # id encodes (seq, pos)
        self.n_tokens = len(order)
        self.hooks = ["blocks.0.hook_resid_post"]
        # Feature 0 fires with strength pos at seq 1; feature 1 only on (seq 0, pos 3).
        acts = torch.zeros(self.n_tokens, 2, 3)
        acts[:, 0, 0] = torch.where(self.positions[:, 0] == 1, self.positions[:, 1].float(), 0.0)
        acts[:, 1, 1] = ((self.positions[:, 0] == 0) & (self.positions[:, 1] == 3)).float() * 2.0
        self._acts = acts

    def read(self, hook, idx, normalize=True):
        assert hook == self.hooks[0] and normalize
        return self._acts[idx]


class _SliceCrosscoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.ones(2, 2, 3))

    def encode(self, x_BSD):
        return torch.stack([x_BSD[:, 0, 0], x_BSD[:, 1, 1]], dim=1)


def test_top_activating_contexts_windows():
    store = _FakeStore()
    tokenizer = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    contexts = top_activating_contexts(
        store, _SliceCrosscoder(), [0, 1], k=3, left=2, right=1, tokenizer=tokenizer, batch_size=5, progress=False
    )
    top0 = contexts[0]
    assert [c.activation for c in top0] == [6.0, 5.0, 4.0]
    assert [(c.seq, c.pos) for c in top0] == [(1, 6), (1, 5), (1, 4)]
    assert top0[0].token_ids == [104, 105, 106] and top0[0].focus == 2  # nothing to the right of the end
    assert top0[1].token_ids == [103, 104, 105, 106] and top0[1].focus == 2
    assert store.token_ids[top0[1].token_index] == 105
    assert top0[1].text() == "<103><104>[[<105>]]<106>"
    assert "<mark>&lt;105&gt;</mark>" in top0[1].html()
    # Feature 1 fires once: zero activations are not contexts. BOS (pos 0) is not in the store.
    (only,) = contexts[1]
    assert (only.seq, only.pos, only.activation) == (0, 3, 2.0)
    assert only.token_ids == [1, 2, 3, 4] and only.focus == 2
    assert top_activating_contexts(store, _SliceCrosscoder(), [], progress=False) == {}
    for wrong in ([2], [-1]):  # not a feature of the two: refused, not an IndexError or the last feature
        with pytest.raises(ValueError, match=r"feature indices must be in \[0, 2\)"):
            top_activating_contexts(store, _SliceCrosscoder(), wrong, progress=False)


# ---------------------------------------------------------------------------
# plots and report
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case_analysis():
    return EvolutionAnalysis.from_decoder(
        _decoder_from_norms(_case_norms()), STEPS, metadata={"hook": "blocks.0.hook_resid_post"}
    )


def test_plots_show_the_analysis(case_analysis):
    heat = evolution_heatmap(case_analysis)
    assert isinstance(heat, go.Figure)
    z = heat.data[0].z
    assert len(z) == len(CASES)  # dead rows left out
    expected = case_analysis.normalized[
        [i for i in case_analysis.emergence_order() if case_analysis.classes[i] != "dead"]
    ]
    assert torch.allclose(torch.tensor(z, dtype=torch.float32), expected)
    assert list(heat.layout.xaxis.ticktext) == ["0", "10", "100", "1k", "10k", "100k"]
    assert len(evolution_heatmap(case_analysis, include_dead=True, max_features=4).data[0].z) == 4

    with pytest.raises(ValueError, match="tokens_seen is unknown"):
        evolution_heatmap(case_analysis, x="tokens")
    with_tokens = EvolutionAnalysis.from_decoder(case_analysis.W_dec, STEPS, tokens_seen=[s * 2048 for s in STEPS])
    assert list(feature_trajectories(with_tokens, [0], x="tokens").layout.xaxis.ticktext)[-1] == "204.8M"
    assert evolution_heatmap(with_tokens, x="tokens").layout.xaxis.title.text == "training tokens"

    hist = emergence_histogram(case_analysis)
    assert hist.layout.xaxis.type == "log"
    by_name = {t.name: dict(zip(t.x, t.y)) for t in hist.data}
    # Robust presence (the default): case 4 dips and recovers, so it is an initialization feature.
    assert by_name["persistent"] == {100: 1, 1000: 1, 10: 1, 100_000: 1}
    assert by_name["transient"] == {10: 1, 100: 1}
    assert (
        "(3 initialization features, present from random initialization (step 0), not shown)" in hist.layout.title.text
    )

    traj = feature_trajectories(case_analysis, [3, 0])
    lines = [t for t in traj.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["#3 (transient)", "#0 (initialization)"]
    markers = [t for t in traj.data if t.mode == "markers"]
    assert [m.x[0] for m in markers] == [1, 4, 0]  # feature 3 emerges at 1, fades at 4; feature 0 never fades


def test_drift_and_probe_plots():
    adjacent = torch.tensor([[1.0, 0.5], [float("nan"), 0.7]])
    to_final = torch.tensor([[0.5, 0.5, 1.0], [float("nan"), 0.7, 1.0]])
    fig = drift_curve(adjacent, to_final, [0, 1, 2])
    assert list(fig.data[0].y) == pytest.approx([1.0, 0.6])
    assert list(fig.data[1].y) == pytest.approx([0.5, 0.6, 1.0])

    from crosslens.analysis.probes import ProbeValidation

    probes = ProbeValidation(
        features=[4, 7],
        probe_error=torch.tensor([[0.5, 0.1], [0.4, 0.0]]),
        decoder_norm=torch.tensor([[0.0, 2.0], [0.5, 1.0]]),
        firing_rate=torch.tensor([0.1, 0.2]),
        n_tokens=100,
    )
    assert probes.pearson_r < -0.9
    scatter = probe_scatter(probes)
    assert list(scatter.data[0].x) == pytest.approx([0.0, 1.0, 0.5, 1.0])
    assert f"{probes.pearson_r:.3f}" in scatter.layout.title.text


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)


def test_report_builder(tmp_path):
    report = Report("A <title>", subtitle="sub")
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    report.add_heading("First").add_text("a < b\n\nsecond paragraph").add_table(
        [{"name": "x", "value": 1.23456, "missing": None}, {"name": "y", "value": 2}], title="T", max_rows=1
    )
    report.add_heading("First").add_figure(fig, caption="cap")
    other = Report("other").add_heading("Attribution").add_figure(fig).add_heading("First")
    report.extend(other)
    path = report.write(tmp_path / "sub" / "r.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>A &lt;title&gt;</title>" in page
    assert "<p>a &lt; b</p><p>second paragraph</p>" in page
    assert '<td class="">1.235</td>' in page and "&mdash;" in page and "showing 1 of 2 rows" in page
    assert 'id="first"' in page and 'id="first-2"' in page and 'href="#attribution"' in page
    assert 'id="first-3"' in page and 'href="#first-3"' in page  # re-anchored by extend()
    assert page.index('id="other"') < page.index('id="attribution"')  # the appended report under its title
    # plotly.js once, in the head; one div per figure, ids unique after extend().
    bundles = [k for k, script in enumerate(_scripts(page)) if len(script) > 1_000_000]
    assert len(bundles) == 1 and len(_scripts(page[: page.index("</head>")])) == 1
    assert page.count('id="figure-1"') == 1 and page.count('id="figure-2"') == 1
    assert len(_scripts(page)) == 3  # the bundle + one newPlot call per figure
    assert not re.search(r"<script[^>]*src=", page)  # nothing fetched from the network
    with pytest.raises(ValueError, match="go.Figure"):
        report.add_figure({"data": []})
    assert "<script" not in Report("plain").add_text("no figures").render()
    flags = Report("flags").add_table([{"classed": True}, {"classed": False}]).render()
    assert '<td class="text">yes</td>' in flags and '<td class="text">no</td>' in flags


def test_a_suite_without_step_0_names_its_first_step_for_initialization_features(case_analysis, tmp_path):
    """Ge et al.'s initialization features exist from random initialization; a suite whose first
    snapshot is later (Bayazit et al.'s Pythia steps start at 64) can only say present by then."""
    late = EvolutionAnalysis.from_decoder(case_analysis.W_dec, [step + 64 for step in STEPS])
    assert late.features_of_class("initialization") == case_analysis.features_of_class("initialization")
    title = emergence_histogram(late).layout.title.text
    assert (
        "(3 initialization features, present from the first snapshot, step 64 (some may have formed by then), not shown)"
        in title
    )
    page = evolution_report(late).write(tmp_path / "late.html").read_text()
    assert "initialization: present from the first snapshot, step 64 (some may have formed by then)" in page
    assert (
        "present from random initialization (step 0)"
        in evolution_report(case_analysis).write(tmp_path / "zero.html").read_text()
    )
    # no steps recorded: the indices stand in for them, and step 0 says nothing of initialization
    unknown = EvolutionAnalysis.from_decoder(case_analysis.W_dec)
    assert unknown.steps[0] == 0 and unknown.steps_are_indices and not case_analysis.steps_are_indices
    assert unknown.initialization_words() == "from the first snapshot (no training steps recorded)"


def test_evolution_report_sections(case_analysis, tmp_path):
    from crosslens.analysis.contexts import Context

    contexts = {3: [Context(3, 1.5, 0, 0, 2, [1, 2, 3], 1, ["a", "<b>", "c"])]}
    report = evolution_report(case_analysis, contexts=contexts)
    path = report.write(tmp_path / "report.html")
    page = path.read_text()
    for heading in (
        "Overview",
        "Feature classes",
        "Decoder-norm heatmap",
        "Emergence",
        "Trajectories",
        "Dip and recover",
        "Feature dimensionality",
        "Direction drift",
        "Features",
        "Top-activating contexts",
    ):
        assert f">{heading}</h2>" in page, heading
    assert "Probe validation" not in page
    assert "<mark>&lt;b&gt;</mark>" in page
    # heatmap, histogram, trajectories, dip-and-recover trajectories, dimensionality, drift
    assert page.count('class="plotly-graph-div"') == 6
    # Case 4 dips at step 10 and returns at 100: robust emergence 0, Ge et al.'s reading 100.
    assert "1 of 9 live features dip below 0.2" in page
    dip_table = page.split("strongest dip-and-recover features</caption>")[1].split("</table>")[0]
    assert "emergence_<wbr>step (decoder_<wbr>norm)" in dip_table and dip_table.endswith(
        '<td class="">100</td></tr></tbody>'
    )
    assert "blocks.0.hook_resid_post" in page
    from crosslens.analysis.probes import ProbeValidation

    probes = ProbeValidation(
        [0], torch.tensor([[0.5, 0.0, 0.1, 0.4, 0.5, 0.5]]), case_analysis.norms[[0]], torch.tensor([0.1]), 50
    )
    with_probes = evolution_report(case_analysis, probes=probes).render()
    assert ">Probe validation</h2>" in with_probes and with_probes.count('class="plotly-graph-div"') == 7
    # The report is extensible by later stages.
    report.add_heading("Attribution").add_text("added later")
    assert ">Attribution</h2>" in report.render()

    if shutil.which("node"):
        # Every inline script must at least parse (the lead checks rendering with Chromium).
        for k, script in enumerate(_scripts(page)):
            js = tmp_path / f"s{k}.js"
            js.write_text(script)
            done = subprocess.run(["node", "--check", str(js)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[:500]


def test_feature_that_dips_and_wanders_between_thresholds_has_faded():
    # [0.41, 1.0, 0.19, 0.22]: on at 0, off at the dip (2); 0.22 never reaches the
    # emergence threshold again, so the feature faded at snapshot 2.
    from crosslens.analysis import EvolutionAnalysis

    W_dec = torch.zeros(2, 4, 8)
    W_dec[:, :, 0] = torch.tensor([[0.41, 1.0, 0.19, 0.22], [0.1, 1.0, 0.25, 0.5]])
    analysis = EvolutionAnalysis.from_decoder(W_dec, steps=[0, 10, 20, 30])
    assert analysis.lifetimes.emergence.tolist() == [0, 1]
    assert analysis.lifetimes.fade.tolist() == [2, -1]
    assert analysis.classes == ["initialization", "persistent"]
    rows = analysis.feature_table()  # used to raise IndexError on the first feature
    assert len(rows) == 2
