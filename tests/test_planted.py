"""Planted ground truth: the analysis must recover a timeline we wrote down in advance.

A synthetic multi-snapshot data set (crosslens.analysis.synthetic) plants features that
exist from initialization, emerge later, or emerge and fade, with drifting directions.
A real ReLU crosscoder is trained on it with the real trainer; the analysis of its
decoder must find the planted directions, emergence snapshots and classes.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import crosslens.crosscoders  # noqa: F401  (registers the crosscoder architectures with SAELens)
from crosslens.analysis import (
    EvolutionAnalysis,
    PlantedConfig,
    PlantedEvolution,
    analyze_crosscoder,
    probe_validation,
    top_activating_contexts,
)
from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.planted_match import match_planted, planted_mmcs, planted_recovery
from crosslens.analysis.probes import firing_frequency

N_STEPS = 2000
BATCH = 256


# ---------------------------------------------------------------------------
# The generator itself
# ---------------------------------------------------------------------------
def test_planted_generator_follows_its_config():
    cfg = PlantedConfig(
        n_snapshots=5, d_in=20, n_features=16, n_initialization=3, n_initialization_fading=2, n_transient=5, seed=3
    )
    planted = PlantedEvolution.build(cfg)
    classes = planted.classes
    assert classes.count("initialization") == 5 and classes.count("transient") == 5 and classes.count("persistent") == 6
    assert planted.steps == [0, 1, 2, 4, 8]
    # Presence is exactly [emergence, fade) and magnitudes are in range where present.
    for i in range(cfg.n_features):
        e, f = int(planted.emergence[i]), int(planted.fade[i])
        expected = [e <= s and (f == NO_STEP or s < f) for s in range(cfg.n_snapshots)]
        assert planted.present[i].tolist() == expected
    mags = planted.magnitudes[planted.present]
    assert mags.min() >= cfg.magnitude_min and mags.max() <= cfg.magnitude_max
    # Transient windows lie strictly inside the timeline; init-fading features fade.
    transient = [i for i, c in enumerate(classes) if c == "transient"]
    assert all(1 <= planted.emergence[i] < planted.fade[i] <= cfg.n_snapshots - 1 for i in transient)
    assert int(((planted.emergence == 0) & (planted.fade != NO_STEP)).sum()) == 2
    # Unit directions, drifting with the configured adjacent cosine; orthonormal at snapshot 0.
    dirs = planted.directions
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(16, 5), atol=1e-5)
    adjacent = (dirs[:, 1:] * dirs[:, :-1]).sum(-1)
    assert torch.allclose(adjacent, torch.full_like(adjacent, cfg.adjacent_cosine), atol=1e-5)
    assert torch.allclose(dirs[:, 0] @ dirs[:, 0].T, torch.eye(16), atol=1e-5)


def test_planted_samples():
    planted = PlantedEvolution.build(PlantedConfig(noise_std=0.0))
    acts, coeff = planted.sample(4000, torch.Generator().manual_seed(0))
    assert acts.shape == (4000, 6, 32) and coeff.shape == (4000, 32)
    assert torch.allclose(acts, torch.einsum("nf,fsd->nsd", coeff, planted.decoder), atol=1e-5)
    rate = (coeff > 0).float().mean(0)
    assert torch.allclose(rate, planted.firing_probs, atol=0.03)
    nz = coeff[coeff > 0]
    assert nz.min() >= 0.5 and nz.max() <= 1.5
    batch = next(planted.batches(8, seed=1))
    assert batch.shape == (8, 6, 32)
    # Superposition: more features than dimensions still builds (SAELens orthogonaliser).
    wide = PlantedEvolution.build(PlantedConfig(d_in=12, n_features=20, n_initialization=4, n_transient=4))
    assert wide.directions.shape == (20, 6, 12)


def test_planted_config_validation():
    with pytest.raises(ValueError, match="n_snapshots >= 3, or n_transient=0"):
        PlantedConfig(n_snapshots=2)
    with pytest.raises(ValueError, match="2 snapshots or more"):
        PlantedConfig(n_snapshots=1, n_transient=0, transient_lengths=None)
    # two snapshots without transients: two models, each with features of its own
    two = PlantedEvolution.build(PlantedConfig(n_snapshots=2, n_transient=0, transient_lengths=None))
    present_FS = two.magnitudes > 0
    assert two.directions.shape == (32, 2, 32)
    assert int((present_FS[:, 0] & ~present_FS[:, 1]).sum()) == 2  # the fading ones: the first model's own
    assert int((~present_FS[:, 0] & present_FS[:, 1]).sum()) == 22  # the persistent ones, born in the second
    with pytest.raises(ValueError, match="exceeds n_features"):
        PlantedConfig(n_features=10)
    for empty in ({"d_in": 0}, {"n_features": 0}):  # an empty decoder was built
        with pytest.raises(ValueError, match=r"plant 1 feature or more in 1 dimension or more\.$"):
            PlantedConfig(**empty)
    with pytest.raises(ValueError, match="one step per snapshot"):
        PlantedConfig(steps=(0, 1))


def test_recovery_metrics_on_ideal_and_wrong_decoders():
    planted = PlantedEvolution.build(PlantedConfig())
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    # The ideal decoder, shuffled and padded with junk: everything recovered exactly.
    junk = 1e-4 * torch.randn(8, 6, 32)
    ideal = EvolutionAnalysis.from_decoder(torch.cat([planted.decoder[perm], junk]), planted.steps)
    report = planted_recovery(ideal, planted)
    assert report["n_recovered"] == 32 and report["mismatches"] == []
    assert report["emergence_accuracy"] == report["class_accuracy"] == report["fade_accuracy"] == 1.0
    assert min(report["mmcs_per_snapshot"]) > 0.999
    match = match_planted(ideal.W_dec, planted)
    assert sorted(match.recovered) == sorted((k, int(perm[k])) for k in range(32))
    with pytest.raises(
        ValueError,
        match=r"^the learned decoder has shape \(40, 5, 32\), the planted features \[\.\.\., n_snapshots=6, d_in=32\]",
    ):
        match_planted(ideal.W_dec[:, :5], planted)  # another snapshot count reached an einsum error
    with pytest.raises(TypeError, match=r"^the learned decoder is EvolutionAnalysis, not a tensor; pass W_dec"):
        match_planted(ideal, planted)
    with pytest.raises(ValueError, match=r"^batch_size=0: a batch holds 1 token or more$"):
        next(planted.batches(0))  # empty batches read as a loss gone NaN
    with pytest.raises(ValueError, match=r"^n=-1: sample 0 tokens or more$"):
        planted.sample(-1)
    # Right directions, wrong timing: every feature present everywhere -> classes wrong.
    wobble = 1 + 0.1 * torch.rand(32, 6, 1, generator=torch.Generator().manual_seed(1))
    flat = EvolutionAnalysis.from_decoder(planted.directions * wobble, planted.steps)
    assert planted_recovery(flat, planted)["class_accuracy"] == pytest.approx(10 / 32)  # the 8 + 2 init ones
    # Random directions: nothing recovered.
    random = torch.randn(64, 6, 32)
    assert planted_mmcs(random, planted).max() < 0.8
    assert planted_recovery(EvolutionAnalysis.from_decoder(random, planted.steps), planted)["n_recovered"] == 0


def test_matching_pairs_the_latent_that_is_silent_where_the_feature_is_absent():
    """Two features that live at different snapshots can share one latent; beside a latent
    of its own, a feature is paired with its own, and a latent whose decoder is near zero at
    most of a feature's snapshots does not recover it on its direction there."""
    planted = PlantedEvolution.build(PlantedConfig())
    early, late, everywhere = 11, 8, 9
    assert not (planted.present[early] & planted.present[late]).any() and bool(planted.present[everywhere].all())
    decoder = planted.decoder.clone()
    wobble = 0.05 * torch.randn(decoder[late].shape, generator=torch.Generator().manual_seed(3))
    decoder[late] = decoder[late] + wobble * planted.present[late][:, None]  # its own latent, not quite exact
    decoder[everywhere] = decoder[everywhere] * torch.tensor([1.0, 0.03, 0.03, 0.03, 0.03, 0.03])[:, None]
    merged = planted.decoder[early] + planted.decoder[late]  # exact where either feature lives
    analysis = EvolutionAnalysis.from_decoder(torch.cat([decoder, merged[None]]), planted.steps)
    match = match_planted(analysis.W_dec, planted)
    partner = dict((i, j) for j, i in match.recovered)
    assert partner[late] == late and partner[early] == early
    assert everywhere not in partner
    report = planted_recovery(analysis, planted)
    assert report["n_recovered"] == 31 and report["mismatches"] == []


# ---------------------------------------------------------------------------
# A real crosscoder trained by the real trainer
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    from crosslens.crosscoders import ReLUTrainingCrosscoder, ReLUTrainingCrosscoderConfig
    from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig

    planted = PlantedEvolution.build(PlantedConfig(seed=0))
    torch.manual_seed(0)
    crosscoder = ReLUTrainingCrosscoder(
        ReLUTrainingCrosscoderConfig(
            d_in=32, d_sae=64, n_snapshots=6, l1_coefficient=0.3, l1_warm_up_steps=N_STEPS // 20, decoder_init_norm=0.1
        )
    )
    trainer = CrosscoderTrainer(
        crosscoder, CrosscoderTrainerConfig(total_steps=N_STEPS, lr=3e-3, lr_decay_steps=N_STEPS // 5, seed=0)
    )
    trainer.fit(planted.batches(BATCH, seed=1))
    crosscoder.eval()
    acts, coeff = planted.sample(6000, torch.Generator().manual_seed(123))
    return SimpleNamespace(planted=planted, crosscoder=crosscoder, acts=acts, coeff=coeff)


def test_planted_directions_and_timeline_are_recovered(trained):
    planted, crosscoder = trained.planted, trained.crosscoder
    frequency = firing_frequency(trained.acts, crosscoder)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder, steps=planted.steps, frequency=frequency)
    assert analysis.norms.shape == (64, 6)
    assert torch.allclose(analysis.norms, crosscoder.decoder_norms(), atol=1e-6)

    result = planted_recovery(analysis, planted, min_cosine=0.9)
    assert min(result["mmcs_per_snapshot"]) >= 0.9, result["mmcs_per_snapshot"]
    assert result["n_recovered"] >= 0.9 * planted.config.n_features, result
    assert result["emergence_accuracy"] >= 0.9, result["mismatches"]
    assert result["class_accuracy"] >= 0.9, result["mismatches"]
    assert result["fade_accuracy"] >= 0.9, result["mismatches"]
    # Every planted class is represented among the recovered features.
    match = match_planted(analysis.W_dec, planted)
    recovered_classes = {planted.classes[i] for _, i in match.recovered}
    assert recovered_classes == {"initialization", "persistent", "transient"}
    # Recovered features fire; latents that never fire on the sample are classed dead.
    assert all(analysis.classes[j] != "dead" for j, _ in match.recovered)
    assert all(analysis.classes[j] == "dead" for j in range(64) if frequency[j] == 0)
    assert analysis.emergence_steps and all(s in planted.steps for s in analysis.emergence_steps)

    # Drift: the planted adjacent cosine (0.95) shows up in the learned decoders.
    adjacent, _ = analysis.drift()
    learned = [j for j, _ in match.recovered]
    assert torch.nanmean(adjacent[learned]).item() == pytest.approx(planted.config.adjacent_cosine, abs=0.03)


def test_probe_error_anticorrelates_with_decoder_norm(trained):
    planted, crosscoder = trained.planted, trained.crosscoder
    match = match_planted(crosscoder.W_dec.detach(), planted)
    learned = [j for j, _ in match.recovered][:16]
    result = probe_validation(trained.acts, crosscoder, features=learned, n_tokens=6000)
    assert result.pearson_r < -0.8, result.pearson_r
    planted_of = dict(match.recovered)
    present = torch.stack([planted.present[planted_of[j]] for j in learned])
    assert result.probe_error[present].mean() < 0.1
    assert result.probe_error[~present].mean() > 0.3


class _PlantedStore:
    """An activation store over planted samples: 100 sequences of 60 tokens.

    The planted activations are the normalised ones; raw activations are them divided by
    ``factors`` (what ``store.read(normalize=False)`` returns)."""

    def __init__(self, acts: torch.Tensor, factors: torch.Tensor | None = None):
        n = len(acts)
        self.n_tokens = n
        self.hooks = ["planted"]
        self.token_ids = torch.arange(n) % 97
        self.positions = torch.stack([torch.arange(n) // 60, torch.arange(n) % 60], dim=1)
        self.factors = torch.ones(acts.shape[1]) if factors is None else factors
        self._acts = acts

    def read(self, hook, idx, normalize=True):
        acts = self._acts[torch.as_tensor(idx)]
        return acts if normalize else acts / self.factors[None, :, None]


def test_top_contexts_are_tokens_carrying_the_planted_feature(trained):
    planted, crosscoder = trained.planted, trained.crosscoder
    match = match_planted(crosscoder.W_dec.detach(), planted)
    store = _PlantedStore(trained.acts)
    pairs = match.recovered[:6]
    contexts = top_activating_contexts(
        store, crosscoder, [j for j, _ in pairs], k=5, left=3, right=1, batch_size=1000, progress=False
    )
    for j, i in pairs:
        top = contexts[j]
        assert len(top) == 5
        assert [c.activation for c in top] == sorted((c.activation for c in top), reverse=True)
        assert all(trained.coeff[c.token_index, i] > 0 for c in top), (j, i)
        for c in top:
            assert c.token_ids[c.focus] == int(store.token_ids[c.token_index])
            assert (c.seq, c.pos) == (c.token_index // 60, c.token_index % 60)


def test_analyze_crosscoder_builds_the_full_report(trained, tmp_path):
    store = _PlantedStore(trained.acts)
    store.snapshots = [{"step": s, "tokens_seen": s * 1000} for s in trained.planted.steps]
    analysis, report = analyze_crosscoder(
        trained.crosscoder, store=store, n_probe_features=8, n_probe_tokens=3000, n_context_features=4, progress=False
    )
    assert analysis.steps == trained.planted.steps and analysis.tokens_seen[-1] == 16_000
    assert analysis.frequency is not None and analysis.class_counts()["dead"] > 0
    page = report.write(tmp_path / "report.html").read_text()
    for heading in ("Feature classes", "Probe validation", "Top-activating contexts", "Direction drift"):
        assert f">{heading}</h2>" in page
    assert page.count("<mark>") == 4 * 8  # 4 features x 8 contexts (k default), all firing
    assert math.isfinite(
        float(page.split("Pearson r between probe error and normalised decoder norm: ")[1].split(" ")[0])
    )


def test_saved_and_folded_crosscoder_gives_the_same_analysis(trained, tmp_path):
    """The inference crosscoder written by the trainer, loaded back and with per-snapshot
    normalisation factors folded in, must give the same timeline and the same contexts."""
    from sae_lens import SAE

    trained.crosscoder.save_inference_model(tmp_path / "final")
    loaded = SAE.load_from_disk(tmp_path / "final")
    factors = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.5, 3.0])
    loaded.fold_activation_norm_scaling_factors(factors)
    assert not torch.allclose(loaded.W_dec.norm(dim=-1), trained.crosscoder.W_dec.norm(dim=-1))

    steps = trained.planted.steps
    before = EvolutionAnalysis.from_crosscoder(trained.crosscoder, steps=steps)
    after = EvolutionAnalysis.from_crosscoder(loaded, steps=steps)
    assert torch.allclose(after.norms, before.norms, rtol=1e-5, atol=1e-6)
    assert after.classes == before.classes
    assert torch.equal(after.lifetimes.emergence, before.lifetimes.emergence)

    # The folded crosscoder reads raw activations; the store hands them over unnormalised.
    store = _PlantedStore(trained.acts, factors)
    features = [j for j, _ in match_planted(before.W_dec, trained.planted).recovered[:3]]
    kwargs = {"k": 4, "batch_size": 2000, "progress": False}
    ref = top_activating_contexts(store, trained.crosscoder, features, **kwargs)
    got = top_activating_contexts(store, loaded, features, **kwargs)
    for j in features:
        assert [c.token_index for c in got[j]] == [c.token_index for c in ref[j]]
        assert [c.activation for c in got[j]] == pytest.approx([c.activation for c in ref[j]], rel=1e-4)
    freq_ref = firing_frequency(store, trained.crosscoder, n_tokens=2000)
    assert torch.allclose(firing_frequency(store, loaded, n_tokens=2000), freq_ref, atol=2e-3)
