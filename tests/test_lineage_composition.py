"""Splits read by composition: a parent latent that turns as a latent born beside it fires with it,
one child carried by the sum of their rows.

A decoder built by hand holds such a split at a known snapshot; codes built by hand say which
latents fire together. Lineage must report the split with the children's terms only where every
condition holds, the pass beside latent scaling must count what a direct count counts, and the
planted scorer must find a planted split through the children's sums, not through the rows.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_crosscoders import random_architecture

from crosslens import crosscoders
from crosslens.analysis import EvolutionAnalysis, LineageEvent, PlantedConfig, PlantedEvolution
from crosslens.analysis.agreement import lineage_agreement
from crosslens.analysis.composition import CoFiring, composed_rows, composition_pairs
from crosslens.analysis.emergence_record import compute_emergence
from crosslens.analysis.lineage_events import Lineage, LineageConfig, lineage_of
from crosslens.analysis.planted_lineage import planted_lineage_scores
from crosslens.analysis.relatives import unit_rows
from crosslens.analysis.scaling import LatentScalingConfig, codes_and_reconstruction, latent_scaling

S, D, AT = 8, 16, 4
GROWING_1S1 = (1 + 0.05 * torch.arange(S))[None, :, None]


def _turned(a: torch.Tensor, b: torch.Tensor, cosine: float) -> torch.Tensor:
    """A unit vector at ``cosine`` to unit ``a``, towards ``b``."""
    b = b - (b @ a) * a
    return cosine * a + math.sqrt(1 - cosine**2) * b / b.norm()


def split_decoder(child_b_cosine: float = 0.6, parent_turns: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Four latents over 8 snapshots, and the second child's direction:

    - 0, the parent: along u0 until 3, from 4 on along child A (cosine 0.6 to u0, towards u1);
    - 1, born at 4: its row is ``3 B - 2 A``, so that twice the parent's row plus its own is
      along child B (``child_b_cosine`` to u0, towards u2; A and B at 0.36 where it is 0.6);
    - 2 and 3: along u2 + u3 and u4, throughout, alone.
    """
    u = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0].T
    child_a = _turned(u[0], u[1], 0.6) if parent_turns else u[0]
    child_b = _turned(u[0], u[2], child_b_cosine)
    W = torch.zeros(4, S, D)
    W[0, :AT], W[0, AT:] = u[0], child_a
    W[1, AT:] = 3 * child_b - 2 * child_a
    W[2], W[3] = (u[2] + u[3]) / math.sqrt(2), u[4]
    return W * GROWING_1S1, child_b


def codes(n_apart: int = 200, n_both: int = 200, n_alone: int = 40) -> torch.Tensor:
    """Codes ``[N, 4]``: the parent alone (2), the parent (2) with the newborn (1), the newborn
    alone (1); latents 2 and 3 fire at random beside them."""
    n = n_apart + n_both + n_alone
    f_NF = torch.zeros(n, 4)
    f_NF[: n_apart + n_both, 0] = 2.0
    f_NF[n_apart:, 1] = 1.0
    gen = torch.Generator().manual_seed(1)
    f_NF[:, 2:] = (torch.rand(n, 2, generator=gen) < 0.3) * (0.5 + torch.rand(n, 2, generator=gen))
    return f_NF


def counted(analysis: EvolutionAnalysis, f_NF: torch.Tensor, config: LineageConfig | None = None) -> CoFiring:
    cofiring = CoFiring.zeros(*composition_pairs(analysis, config or LineageConfig()))
    cofiring.add(f_NF)
    return cofiring


def test_a_turning_parent_and_a_newborn_firing_with_it_split_into_their_sums():
    W, _ = split_decoder()
    analysis = EvolutionAnalysis.from_decoder(W)
    cofiring = counted(analysis, codes())
    assert cofiring.newborn_U.tolist() == [1] and cofiring.parent_V.tolist() == [0]
    assert lineage_of(analysis, cofiring=cofiring).events == [
        LineageEvent(
            "split",
            AT,
            (0,),
            (0, 1),
            pytest.approx(0.36, abs=1e-4),
            "composition",
            composed=(((0, 1.0),), ((0, 2.0), (1, 1.0))),
        )
    ]
    # held by the activations through the parent, it keeps the newborn though they hold it nowhere
    scaled_FS = torch.zeros(4, S, dtype=torch.bool)
    scaled_FS[0] = True
    held = lineage_of(analysis, scaled_present_FS=scaled_FS, cofiring=cofiring)
    assert held.events == lineage_of(analysis, cofiring=cofiring).events and held.set_aside == []
    # rows alone say nothing: the newborn's row lies along no child
    assert lineage_of(analysis).events == []
    assert lineage_of(analysis, LineageConfig(compositions=False), cofiring=cofiring).events == []


def test_a_composition_splits_only_where_the_parent_turns_and_the_children_part_around_it():
    W, _ = split_decoder()
    analysis = EvolutionAnalysis.from_decoder(W)
    # the newborn fires with the parent on 200 of its 240 tokens: under a share of 0.9, its own concept
    assert lineage_of(analysis, LineageConfig(cofire_share=0.9), cofiring=counted(analysis, codes())).events == []
    assert lineage_of(analysis, cofiring=counted(analysis, codes(n_alone=240))).events == []
    # a parent that keeps its row: the newborn refines it, no concept became two
    kept, _ = split_decoder(parent_turns=False)
    kept_analysis = EvolutionAnalysis.from_decoder(kept)
    assert lineage_of(kept_analysis, cofiring=counted(kept_analysis, codes())).events == []
    # a sum still on the parent's direction (0.8, over the successor line) is the parent's, handed on
    near, _ = split_decoder(child_b_cosine=0.8)
    near_analysis = EvolutionAnalysis.from_decoder(near)
    assert lineage_of(near_analysis, cofiring=counted(near_analysis, codes())).events == []


def test_a_child_nearer_its_sibling_than_the_parent_is_no_split_of_the_parent():
    """Children at 0.45 to each other, one at 0.3 to the parent's row: under the apart line, but
    the parent does not lie between them."""
    u = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0].T
    child_b = 0.6 * u[0] + 0.8 * u[2]
    child_a = 0.3 * u[0] + 0.3375 * u[2] + math.sqrt(1 - 0.09 - 0.3375**2) * u[3]
    assert float(child_a @ child_b) == pytest.approx(0.45, abs=1e-6)
    W = torch.zeros(4, S, D)
    W[0, :AT], W[0, AT:] = u[0], child_a
    W[1, AT:] = 3 * child_b - 2 * child_a
    W[2], W[3] = u[5], u[6]
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    assert lineage_of(analysis, cofiring=counted(analysis, codes())).events == []


@pytest.mark.parametrize("arch", ["crosscoder", "jumprelu_crosscoder", "topk_crosscoder"])
def test_the_pass_beside_latent_scaling_counts_what_a_direct_count_counts(arch):
    crosscoder, gen = random_architecture(arch)
    x_NSD = torch.randn(700, 4, 16, generator=gen)
    newborn_U, parent_V = torch.arange(0, 8), torch.arange(8, 24)
    passed = CoFiring.zeros(newborn_U, parent_V)
    latent_scaling(crosscoder, x_NSD, config=LatentScalingConfig(batch_size=64), cofiring=passed)
    with torch.no_grad():
        f_NF = codes_and_reconstruction(crosscoder, x_NSD)[0]
    on_NF = f_NF > 0
    both_UV = (on_NF[:, newborn_U, None] & on_NF[:, None, parent_V]).float()
    assert float(both_UV.sum()) > 0
    assert torch.equal(passed.n_fire_U, on_NF[:, newborn_U].float().sum(0))
    assert torch.equal(passed.both_UV, both_UV.sum(0))
    parent_code_UV = (both_UV * f_NF[:, None, parent_V]).sum(0)
    newborn_code_UV = (both_UV * f_NF[:, newborn_U, None]).sum(0)
    assert torch.allclose(passed.parent_code_UV, parent_code_UV, rtol=1e-5)
    assert torch.allclose(passed.newborn_code_UV, newborn_code_UV, rtol=1e-5)


def test_compute_emergence_reads_the_split_from_the_codes_of_its_pass():
    """A ReLU crosscoder whose decoder is the built split and whose encoder reads the codes back:
    the emergence pass counts the firing together and lineage reports the split with the codes'
    means as weights."""
    W, child_b = split_decoder()
    sae_cls, cfg_cls = crosscoders.ARCHITECTURES["crosscoder"][:2]
    crosscoder = sae_cls(cfg_cls(d_in=D, d_sae=4, n_snapshots=S))
    with torch.no_grad():
        crosscoder.W_dec.copy_(W)
        crosscoder.b_dec.zero_()
        crosscoder.b_enc.zero_()
        crosscoder.W_enc.zero_()
        crosscoder.W_enc[S - 1] = torch.linalg.pinv(W[:, S - 1])  # the last snapshot's rows read back
    f_NF = codes()
    x_NSD = torch.einsum("nf,fsd->nsd", f_NF, W)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder)
    result = compute_emergence(crosscoder, analysis, x_NSD)
    (event,) = [e for e in result.lineage.events if e.how == "composition"]
    assert (event.snapshot, event.before, event.after) == (AT, (0,), (0, 1))
    (own,), ((p, weight_p), (n, weight_n)) = event.composed
    assert own == (0, 1.0) and (p, n) == (0, 1)
    assert (weight_p, weight_n) == (pytest.approx(2.0, rel=1e-4), pytest.approx(1.0, rel=1e-4))
    child_SD = composed_rows(W, event.composed[1])
    assert float(child_SD[AT] @ child_b / child_SD[AT].norm()) == pytest.approx(1.0, abs=1e-4)
    off = compute_emergence(crosscoder, analysis, x_NSD, lineage_config=LineageConfig(compositions=False))
    assert [e.how for e in off.lineage.events + off.lineage.set_aside] == []


def test_another_crosscoder_that_splits_by_rows_makes_the_split_by_composition():
    """Agreement reads the children's sums as rows: a crosscoder whose two latents coincide on the
    parent's direction and part along the children makes every move."""
    W, child_b = split_decoder()
    analysis = EvolutionAnalysis.from_decoder(W)
    lin = lineage_of(analysis, cofiring=counted(analysis, codes()))
    unit = unit_rows(W)
    other = torch.zeros(3, S, D)
    other[0, :AT] = other[1, :AT] = unit[0, 0]
    other[0, AT:], other[1, AT:], other[2] = unit[0, AT], child_b, unit[2, 0]
    (agreement,) = lineage_agreement(lin, analysis, EvolutionAnalysis.from_decoder(other * GROWING_1S1))
    assert agreement == pytest.approx(1.0, abs=1e-4)
    # read by its rows, the newborn's (B less twice A) lies at 0.774 to the other's child B
    rows = Lineage(lin.relatives, lin.relative_cosine, [dataclasses.replace(lin.events[0], composed=())])
    (by_rows,) = lineage_agreement(rows, analysis, EvolutionAnalysis.from_decoder(other * GROWING_1S1))
    assert by_rows == pytest.approx(2.28 / math.sqrt(8.68), abs=1e-4)


def test_a_split_by_composition_round_trips_and_other_events_keep_their_record():
    event = LineageEvent("split", 4, (0,), (0, 1), 0.36, "composition", composed=(((0, 1.0),), ((0, 2.0), (1, 1.0))))
    assert LineageEvent.from_dict(event.to_dict()) == event
    plain = LineageEvent("merge", 3, (2, 3), (2, 3), 0.9, "divergence")
    assert "composed" not in plain.to_dict() and LineageEvent.from_dict(plain.to_dict()) == plain


def test_the_planted_scorer_finds_a_split_through_its_childrens_sums():
    """Child b's latent holds b less a after the split: no row carries b, the sum of a's row and
    b's does."""
    planted = PlantedEvolution.build(PlantedConfig.preset("split", seed=0))
    at, a, b = planted.event_truth.splits[0]
    W_FSD = planted.directions * (planted.magnitudes > 0)[..., None]
    W_FSD[b, at:] = planted.directions[b, at:] - planted.directions[a, at:]
    analysis = SimpleNamespace(W_dec=W_FSD, present=W_FSD.norm(dim=-1) > 0)
    by_rows = LineageEvent("split", at, (a,), (a, b), 0.36, "composition")
    by_sums = LineageEvent("split", at, (a,), (a, b), 0.36, "composition", composed=(((a, 1.0),), ((a, 1.0), (b, 1.0))))
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=[by_rows])).labels == ["false"]
    scores = planted_lineage_scores(planted, analysis, SimpleNamespace(events=[by_sums]))
    assert (scores.labels, scores.events_found) == (["planted"], 1)
