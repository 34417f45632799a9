"""Latent scaling per snapshot and the emergence check built on it.

Exact answers on constructed data: a crosscoder whose code reproduces the planted coefficients,
activations whose every latent has a planted scale per snapshot and decoder rows that shrink
where the latent is weak (Complete Shrinkage) or hand the early part to a partner latent
(Latent Decoupling). Latent scaling must recover the planted scales to float precision; the
batched pass must agree with the per-latent loop on every architecture; folding must not change
a number; and the check must contest exactly the latents whose decoder hides an early presence.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_crosscoders import random_architecture

import crosslens.crosscoders as crosscoders
from crosslens.analysis import EvolutionAnalysis
from crosslens.analysis.emergence_check import EmergenceCheckConfig, check_emergence, scaled_presence
from crosslens.analysis.evolution import NO_STEP, EvolutionConfig
from crosslens.analysis.scaling import (
    LatentScaling,
    LatentScalingConfig,
    NoSnapshotDecodersError,
    ScalingSums,
    carriers,
    latent_scaling,
    per_latent_scaling,
    reference_rows,
)

S, D, F = 6, 12, 6
# the scale of each latent's direction in each snapshot's activations (the planted betas)
DATA_BETA = torch.tensor(
    [
        [0.2, 0.2, 0.2, 1.0, 1.0, 1.0],  # weak early, present from 0
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # truly born at 3
        [0.9, 1.0, 1.0, 1.0, 1.0, 1.0],  # always there
        [0.25, 0.25, 1.0, 1.0, 1.0, 1.0],  # weak early, carried early by latent 5 (decoupling)
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # fades at 3
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # latent 5 has no direction of its own
    ]
)
# what the crosscoder's decoder rows hold: the weak parts shrunk to zero, latent 3's early part in latent 5
DECODER_GAMMA = torch.tensor(
    [
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        [0.9, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.25, 0.25, 0.0, 0.0, 0.0, 0.0],
    ]
)


def constructed(n_tokens: int = 3000, seed: int = 0, noise: float = 0.0):
    """A ReLU crosscoder and activations ``x_s = sum_j c_j beta_js u_j``: orthonormal ``u_j``,
    latent 5 firing exactly with latent 3 and writing its early part; the encoder reads each
    coefficient back from the last snapshot (where latents 0-3 have beta 1) or, for latent 4, the
    first, so the code is the coefficients."""
    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["crosscoder"][:2]
    crosscoder = sae_cls(cfg_cls(d_in=D, d_sae=F, n_snapshots=S))
    gen = torch.Generator().manual_seed(seed)
    u_FD = torch.linalg.qr(torch.randn(D, F, generator=gen))[0].T
    direction_FD = u_FD.clone()
    direction_FD[5] = u_FD[3]
    with torch.no_grad():
        crosscoder.W_dec.copy_(DECODER_GAMMA[..., None] * direction_FD[:, None, :])
        crosscoder.b_dec.zero_()
        crosscoder.b_enc.zero_()
        crosscoder.W_enc.zero_()
        for j, s in ((0, S - 1), (1, S - 1), (2, S - 1), (3, S - 1), (4, 0), (5, S - 1)):
            crosscoder.W_enc[s, :, j] = u_FD[j if j != 5 else 3]
    fires_NF = torch.rand(n_tokens, F, generator=gen) < 0.2
    fires_NF[:, 5] = fires_NF[:, 3]
    c_NF = (0.5 + torch.rand(n_tokens, F, generator=gen)) * fires_NF
    c_NF[:, 5] = c_NF[:, 3]
    x_NSD = torch.einsum("nf,fs,fd->nsd", c_NF[:, :5], DATA_BETA[:5], u_FD[:5])
    x_NSD = x_NSD + noise * torch.randn(x_NSD.shape, generator=gen)
    return crosscoder, x_NSD, c_NF


def test_latent_scaling_recovers_the_planted_betas_exactly():
    crosscoder, x_NSD, c_NF = constructed()
    with torch.no_grad():
        assert torch.allclose(crosscoder.encode(x_NSD), c_NF, atol=1e-5)  # the code is the coefficients
    scaling = latent_scaling(crosscoder, x_NSD, config=LatentScalingConfig(batch_size=256))
    # activation target: the planted scale, also where the decoder row shrank to zero
    assert torch.allclose(scaling.amplitude[:5], DATA_BETA[:5], atol=1e-5)
    # shrunk rows are scored with the nearest row the decoder trusts (the later one on a tie)
    assert scaling.reference[0].tolist() == [3, 3, 3, 3, 4, 5]
    assert scaling.reference[4].tolist() == [0, 1, 2, 2, 2, 2]
    assert scaling.reference[5].tolist() == [0, 1, 1, 1, 1, 1]
    # beta is the scale of the (reference) row itself: the planted scale over the row's norm
    assert torch.allclose(scaling.beta[:5], DATA_BETA[:5] / scaling.row_norm[:5], atol=1e-5)
    assert torch.allclose(scaling.beta[0], DATA_BETA[0], atol=1e-5) and torch.allclose(scaling.beta[2], torch.ones(S))
    # error target, the latent removed: latent 0's early part is all in the error (shrinkage) ...
    assert torch.allclose(scaling.error_amplitude[0], DATA_BETA[0], atol=1e-5)
    # ... latent 3's early part is in latent 5's reconstruction (decoupling), none in the error
    assert torch.allclose(scaling.error_amplitude[3, :2], torch.zeros(2), atol=1e-5)
    assert torch.allclose(scaling.reconstruction_amplitude[3, :2], torch.full((2,), 0.25), atol=1e-5)
    # noiseless: every fit is exact up to float rounding, so a nonzero amplitude is far above its error
    assert float(scaling.t_value[0].min()) > 1e4 and float(scaling.amplitude[1, :3].abs().max()) < 1e-5
    assert scaling.n_tokens == len(x_NSD) and torch.equal(scaling.n_fire[3], scaling.n_fire[5])
    # Minder et al.'s nu: snapshot 0 over snapshot 5 on the error target
    assert float(scaling.ratio(0, 5)[0]) == pytest.approx(0.2, abs=1e-5)


def test_noise_gives_standard_errors_that_shrink_with_tokens():
    few = latent_scaling(*constructed(500, noise=0.05)[:2])
    many = latent_scaling(*constructed(8000, noise=0.05)[:2])
    # the noise reaches the code too (errors in the regressor): the scales come out a little low
    assert torch.allclose(many.amplitude[:5], DATA_BETA[:5], atol=0.02)
    # (at the snapshot the encoder reads a coefficient from, the code is the projection: no residual)
    ratio = float((few.stderr[:5, 1:5] / many.stderr[:5, 1:5]).median())
    assert ratio == pytest.approx(4.0, rel=0.25)  # sqrt(8000 / 500)
    assert float(many.t_value[1, 0].abs()) < 4 < float(many.t_value[0, 0])


@pytest.mark.parametrize("arch", ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"])
def test_the_batched_pass_agrees_with_the_per_latent_loop(arch):
    crosscoder, gen = random_architecture(arch)  # JumpReLU: gates that differ between snapshots
    with torch.no_grad():
        crosscoder.W_dec[:6, 0] *= 0.05  # shrunk rows: scored with another snapshot's row
    x_NSD = torch.randn(700, 4, 16, generator=gen)
    config = LatentScalingConfig(batch_size=64)
    batched, looped = (
        latent_scaling(crosscoder, x_NSD, config=config),
        per_latent_scaling(crosscoder, x_NSD, config=config),
    )
    assert int(batched.n_fire.sum()) > 0 and bool((batched.reference[:6, 0] != 0).all())
    names = ("amplitude", "error_amplitude", "stderr", "row_norm", "own_cosine", "own_norm", "carrier_cosine", "n_fire")
    for name in names:
        assert torch.allclose(getattr(batched, name), getattr(looped, name), atol=1e-5, rtol=1e-4), name
    assert torch.equal(batched.reference, looped.reference) and torch.equal(batched.carrier, looped.carrier)
    if arch == "jumprelu_crosscoder":  # a closed gate leaves the latent out of that snapshot's reconstruction
        gated = latent_scaling(crosscoder, x_NSD.split(64), config=config)  # and a stream of batches reads alike
        assert torch.allclose(gated.error_amplitude, batched.error_amplitude, atol=1e-6)


def test_a_stream_is_read_up_to_n_tokens_as_a_tensor_is():
    crosscoder, x_NSD, _ = constructed(noise=0.02)
    config = LatentScalingConfig(n_tokens=120, batch_size=50)
    from_tensor = latent_scaling(crosscoder, x_NSD, config=config)
    from_stream = latent_scaling(crosscoder, iter(x_NSD.split(50)), config=config)  # 50 + 50 + 20 of the third
    assert from_tensor.n_tokens == from_stream.n_tokens == 120
    for name in ("amplitude", "error_amplitude", "stderr", "n_fire"):
        assert torch.allclose(getattr(from_stream, name), getattr(from_tensor, name), atol=1e-6), name
    pulled = []

    def endless():
        while len(pulled) < 100:
            pulled.append(1)
            yield torch.randn(50, S, D)

    assert latent_scaling(crosscoder, endless(), config=config).n_tokens == 120 and len(pulled) == 3


def test_folded_factors_change_no_number():
    crosscoder, x_NSD, _ = constructed(noise=0.02)
    unfolded = latent_scaling(crosscoder, x_NSD)
    factors_S = torch.tensor([0.5, 0.8, 1.0, 1.5, 2.0, 3.0])
    crosscoder.fold_activation_norm_scaling_factors(factors_S)
    folded = latent_scaling(crosscoder, x_NSD / factors_S[None, :, None])  # a folded crosscoder reads raw activations
    for name in ("amplitude", "error_amplitude", "stderr", "beta", "row_norm"):
        assert torch.allclose(getattr(unfolded, name), getattr(folded, name), atol=1e-5), name


def test_sums_merge_over_token_shards_and_tables_round_trip():
    crosscoder, x_NSD, _ = constructed(noise=0.02)
    reference_FS = reference_rows(crosscoder.W_dec.norm(dim=-1))
    from crosslens.analysis.scaling import scaling_sums

    whole = scaling_sums(crosscoder, [x_NSD], reference_FS)
    halves = scaling_sums(crosscoder, [x_NSD[:1000]], reference_FS).merge(
        scaling_sums(crosscoder, [x_NSD[1000:]], reference_FS)
    )
    assert isinstance(halves, ScalingSums) and halves.n_tokens == whole.n_tokens
    # each batch is summed in float32 before it joins the float64 totals (a float64 copy of a
    # batch's products would double the pass's memory), so shards agree to float32 sums of 1000s of terms
    assert torch.allclose(halves.fx, whole.fx, rtol=1e-4) and torch.allclose(halves.xx, whole.xx, rtol=1e-4)
    scaling = latent_scaling(crosscoder, x_NSD)
    again = LatentScaling.from_tensors(scaling.tensors(), scaling.n_tokens)
    assert torch.equal(again.amplitude, scaling.amplitude) and torch.equal(again.reference, scaling.reference)


def test_a_model_without_a_decoder_per_snapshot_is_refused():
    class PlainSAE:
        W_dec = torch.zeros(8, 4)

    with pytest.raises(NoSnapshotDecodersError, match=r"W_dec of shape \[8, 4\].*train one with `crosslens train`"):
        latent_scaling(PlainSAE(), torch.zeros(10, 1, 4))
    one = crosscoders.ARCHITECTURES["crosscoder"][0](
        crosscoders.ARCHITECTURES["crosscoder"][1](d_in=4, d_sae=8, n_snapshots=1)
    )
    with pytest.raises(NoSnapshotDecodersError, match="n_snapshots >= 2"):
        latent_scaling(one, torch.zeros(10, 1, 4))


def test_analyze_refuses_a_one_snapshot_crosscoder_before_it_reads_the_store():
    """Firing frequencies, probes and top contexts read the store first; the refusal comes before
    them, naming the fix that helps (a store of two or more snapshots), not the training command."""
    from crosslens.analysis import analyze_crosscoder

    one = crosscoders.ARCHITECTURES["crosscoder"][0](
        crosscoders.ARCHITECTURES["crosscoder"][1](d_in=4, d_sae=8, n_snapshots=1)
    )
    touched = []

    class Store:
        def __getattr__(self, name):
            touched.append(name)
            raise AttributeError(name)

    with pytest.raises(NoSnapshotDecodersError, match=r"harvest two or more snapshots \(`crosslens harvest --steps"):
        analyze_crosscoder(one, store=Store(), progress=False)
    assert touched == []
    with pytest.raises(NoSnapshotDecodersError, match="and train on that store"):
        latent_scaling(one, torch.zeros(10, 1, 4))


def test_the_check_contests_exactly_the_hidden_early_presences():
    crosscoder, x_NSD, _ = constructed(noise=0.01)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder)
    check = check_emergence(analysis, latent_scaling(crosscoder, x_NSD))
    # decoder norms: latents 0 and 1 emerge at 3, latent 3 at 2; latent scaling sees 0 and 3 from 0
    assert analysis.lifetimes.emergence[:5].tolist() == [3, 3, 0, 2, 0]
    assert check.scaled_emergence[:5].tolist() == [0, 3, 0, 0, 0]
    assert check.contested.tolist() == [True, False, False, True, False, False]
    assert check.direction(0) == "earlier" and check.direction(1) is None
    assert check.early_presence[0] == "error" and check.early_presence[3] == "reconstruction"
    assert check.reported_emergence[:5].tolist() == [0, 3, 0, 0, 0]
    assert check.counts() == {
        "live": 6,
        "measured": 6,
        "contested": 2,
        "earlier": 2,
        "later": 0,
        "in_error": 1,
        "in_reconstruction": 1,
    }
    # latent 4 fades at 3 by both readings; latent 5 (latent 3's early part) fades at 2 by its decoder,
    # but its direction stays in the activations on its tokens: latent scaling sees it throughout
    assert int(check.scaled.fade[4]) == 3 == int(analysis.lifetimes.fade[4])
    assert int(analysis.lifetimes.fade[5]) == 2 and int(check.scaled.fade[5]) == NO_STEP
    # a margin of 3 snapshots contests only latent 0 (3 apart), not latent 3 (2 apart)
    wide = check_emergence(analysis, latent_scaling(crosscoder, x_NSD), EmergenceCheckConfig(contested_margin=3))
    assert wide.contested_features() == [0]
    # presence: amplitude over the latent's largest, zero where not significant
    presence = scaled_presence(latent_scaling(crosscoder, x_NSD))
    assert torch.allclose(presence[0], DATA_BETA[0], atol=0.02) and float(presence[1, :3].max()) == 0.0


def test_carrier_cosines_read_only_partners_present_and_firing_at_the_snapshot():
    a, b = torch.eye(4)[0], torch.eye(4)[1]
    W_FSD = torch.zeros(4, 3, 4)
    W_FSD[0, 1:] = 2 * a  # shrunk at 0: scored there with its row at 1
    W_FSD[1, 0] = a  # carries direction a at snapshot 0 only
    W_FSD[2] = 0.6 * a + 0.8 * b  # cosine 0.6 with a, everywhere
    W_FSD[3] = a  # never fires: carries nothing
    reference_FS = reference_rows(W_FSD.norm(dim=-1))
    fires_F = torch.tensor([True, True, True, False])
    carrier_FS, cosine_FS = carriers(W_FSD, reference_FS, fires_F)
    expected = [[1.0, 0.6, 0.6], [0.6, 1.0, 1.0], [0.6, 0.6, 0.6], [1.0, 1.0, 1.0]]
    assert torch.allclose(cosine_FS, torch.tensor(expected), atol=1e-6)
    assert carrier_FS.tolist() == [[1, 2, 2], [2, 0, 0], [1, 0, 0], [1, 0, 0]]
    alone_FS, alone_cos_FS = carriers(W_FSD, reference_FS, torch.tensor([True, False, False, False]))
    assert alone_FS[0].tolist() == [-1, -1, -1] and alone_cos_FS[0].tolist() == [-1.0, -1.0, -1.0]


def test_other_latents_lend_presence_only_where_a_partner_carries_the_direction():
    crosscoder, x_NSD, _ = constructed(noise=0.01)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder)
    scaling = latent_scaling(crosscoder, x_NSD)
    # latent 5 writes latent 3's early part along latent 3's own direction
    assert torch.allclose(scaling.carrier_cosine[3, :2], torch.ones(2), atol=1e-5)
    assert scaling.carrier[3, :2].tolist() == [5, 5]
    # the same numbers with latent 3's partner pointing elsewhere: what others reconstruct along its
    # direction is no longer its presence, and only latent 0 (early presence in the error) is contested
    elsewhere = dataclasses.replace(scaling, carrier_cosine=torch.where(torch.arange(F)[:, None] == 3, 0.3, 1.0))
    check = check_emergence(analysis, elsewhere)
    assert check.contested_features() == [0] and int(check.scaled_emergence[3]) == 2
    # and a line at 0.3 counts that partner again
    assert check_emergence(analysis, elsewhere, EmergenceCheckConfig(carrier_cosine=0.3)).contested_features() == [0, 3]
    # -1 counts every other latent: the activation target everywhere
    everywhere = scaled_presence(dataclasses.replace(scaling, carrier_cosine=torch.ones(F, S)))
    assert torch.equal(scaled_presence(elsewhere, EmergenceCheckConfig(carrier_cosine=-1.0)), everywhere)
    with pytest.raises(ValueError, match=r"carrier_cosine=1.5 is a cosine: pick \[-1, 1\]"):
        EmergenceCheckConfig(carrier_cosine=1.5)


def test_an_early_presence_read_from_the_error_alone_lives_in_the_error():
    """Where no partner carries a latent's direction its presence is read from the error target
    alone, so what co-firing latents reconstruct there does not say where an early presence lives;
    it counts only at the snapshots where a partner reaches the carrier line."""
    W = torch.zeros(2, S, D)
    W[0, :, 0] = torch.tensor([0.01, 0.01, 0.01, 0.01, 1.0, 1.0])  # emerges at 4 by its decoder norm
    W[1, :, 1] = 1.0
    analysis = EvolutionAnalysis.from_decoder(W)
    ones = torch.ones(2, S)
    scaling = LatentScaling(
        reference=torch.tensor([[4, 4, 4, 4, 4, 5], list(range(S))]).int(),
        row_norm=ones,
        own_cosine=ones,
        own_norm=analysis.norms.clone(),
        carrier=torch.ones(2, S, dtype=torch.int32),
        carrier_cosine=torch.full((2, S), 0.1),  # no partner points latent 0's way
        amplitude=torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0, 2.0], [1.0] * S]),  # others reconstruct 1.5 early
        error_amplitude=torch.tensor([[0.0, 0.5, 0.5, 0.5, 1.0, 1.0], [1.0] * S]),
        stderr=torch.full((2, S), 0.01),
        n_fire=torch.tensor([500.0, 500.0]),
        n_tokens=1000,
    )
    check = check_emergence(analysis, scaling)
    assert check.presence[0].tolist() == [0.0, 0.5, 0.5, 0.5, 1.0, 1.0]  # the error target's, over its peak
    assert int(check.scaled_emergence[0]) == 1 and check.direction(0) == "earlier"
    assert check.early_presence[0] == "error"
    assert (check.counts()["in_error"], check.counts()["in_reconstruction"]) == (1, 0)
    # a partner at the line at snapshots 1 and 2 lends its reconstruction there: 2 x 1.5 against the
    # error's 3 x 0.5 over snapshots 1-3, so the early presence is carried by others
    partnered = scaling.carrier_cosine.clone()
    partnered[0, 1:3] = 0.9
    carried = check_emergence(analysis, dataclasses.replace(scaling, carrier_cosine=partnered))
    assert carried.presence[0].tolist() == [0.0, 1.0, 1.0, 0.25, 0.5, 0.5]
    assert carried.early_presence[0] == "reconstruction"
    assert (carried.counts()["in_error"], carried.counts()["in_reconstruction"]) == (0, 1)
    # at one such snapshot, 1.5 against 1.5: the error's, ties going to it
    partnered[0, 2] = 0.1
    assert (
        check_emergence(analysis, dataclasses.replace(scaling, carrier_cosine=partnered)).early_presence[0] == "error"
    )


def test_the_check_refuses_an_analysis_of_another_crosscoder():
    crosscoder, x_NSD, _ = constructed()
    other = EvolutionAnalysis.from_decoder(torch.rand(F + 1, S, D))
    with pytest.raises(ValueError, match="compute both from the same crosscoder"):
        check_emergence(other, latent_scaling(crosscoder, x_NSD))


def test_the_check_refuses_a_latent_scaling_of_another_crosscoder_of_the_same_shape():
    from crosslens.analysis.emergence_record import compute_emergence
    from crosslens.core.errors import CrosslensError

    crosscoder, x_NSD, _ = constructed(noise=0.01)
    other = crosscoders.ARCHITECTURES["crosscoder"][0](
        crosscoders.ARCHITECTURES["crosscoder"][1](d_in=D, d_sae=F, n_snapshots=S)
    )
    with torch.no_grad():
        other.W_dec.copy_(crosscoder.W_dec.flip(0))  # the same rows, other latents: same shape, other norms
    scaling, other_analysis = latent_scaling(crosscoder, x_NSD), EvolutionAnalysis.from_crosscoder(other)
    assert other_analysis.norms.shape == scaling.own_norm.shape
    with pytest.raises(CrosslensError, match=r"other decoder rows .*: compute both from the same crosscoder\.$"):
        check_emergence(other_analysis, scaling)
    with pytest.raises(CrosslensError, match="compute both from the same crosscoder"):
        compute_emergence(crosscoder, other_analysis, x_NSD)
    # the crosscoder's own analysis is read, its norms equal to the scaling's own_norm
    assert check_emergence(EvolutionAnalysis.from_crosscoder(crosscoder), scaling).contested_features() == [0, 3]


def test_the_scaled_timeline_is_read_in_the_analysis_presence_mode():
    """A latent whose decoder norm and activations dip and recover alike ([1, 1, 0, 0, 1, 1]) emerges
    at the same snapshot by both readings: the first on-period in robust mode, the last in decoder_norm mode."""
    timeline_S = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    u_FD = torch.linalg.qr(torch.randn(D, F, generator=torch.Generator().manual_seed(0)))[0].T
    W_FSD = u_FD[:, None, :].expand(F, S, D).clone()
    W_FSD[0] = u_FD[0][None, :] * timeline_S[:, None]
    amplitude_FS = torch.ones(F, S)
    amplitude_FS[0] = timeline_S
    for mode, emergence in (("robust", 0), ("decoder_norm", 4)):
        analysis = EvolutionAnalysis.from_decoder(W_FSD, config=EvolutionConfig(presence=mode))
        scaling = LatentScaling.from_tensors(
            {
                "reference": torch.zeros(F, S, dtype=torch.int32),
                "row_norm": torch.ones(F, S),
                "own_cosine": torch.ones(F, S),
                "own_norm": analysis.norms,
                "carrier": -torch.ones(F, S, dtype=torch.int32),
                "carrier_cosine": -torch.ones(F, S),
                "amplitude": amplitude_FS,
                "error_amplitude": amplitude_FS,
                "stderr": torch.full((F, S), 1e-3),
                "n_fire": torch.full((F,), 1000.0),
            },
            10_000,
        )
        check = check_emergence(analysis, scaling)
        assert int(analysis.lifetimes.emergence[0]) == emergence == int(check.scaled_emergence[0]), mode
        assert check.contested_features() == [] and check.direction(0) is None, mode


def test_arguments_in_the_wrong_slot_are_named_by_what_each_slot_takes():
    """Swapped, each reached an AttributeError inside (``'EvolutionAnalysis' object has no attribute
    'amplitude'``, ``'ReLUCrosscoder' object has no attribute 'lifetimes'``)."""
    from crosslens.analysis import lineage_of

    crosscoder, x_NSD, _ = constructed()
    analysis, scaling = EvolutionAnalysis.from_crosscoder(crosscoder), latent_scaling(crosscoder, x_NSD)
    check = check_emergence(analysis, scaling)
    with pytest.raises(
        TypeError, match=r"^check_emergence\(analysis, scaling\) takes .*; got \(LatentScaling, EvolutionAnalysis\)$"
    ):
        check_emergence(scaling, analysis)
    with pytest.raises(TypeError, match=r"^lineage_of reads an EvolutionAnalysis .*, not ReLUCrosscoder$"):
        lineage_of(crosscoder)
    with pytest.raises(
        TypeError, match=r"^lineage_of's config is a LineageConfig, not EmergenceCheck .*check\.present\)$"
    ):
        lineage_of(analysis, check)
    assert lineage_of(analysis, scaled_present_FS=check.present).events is not None
