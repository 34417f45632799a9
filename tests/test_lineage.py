"""Lineage from per-snapshot decoder directions: splits, merges, handoffs and relatives.

A decoder built by hand holds one of each event at a known snapshot beside latents that do
nothing; lineage must report exactly those events there, and the batched relatives must equal
the per-latent loop's.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from crosslens.analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import LineageConfig, LineageEvent, counts_text, lineage_of
from crosslens.analysis.relatives import nearest_relatives, per_latent_relatives, unit_rows

S, D = 8, 32
GROWING_1S1 = (1 + 0.05 * torch.arange(S))[None, :, None]
"""A little norm growth over snapshots, so no latent has equal norms at every snapshot (untouched
rows read as dead)."""


def _turned(a: torch.Tensor, b: torch.Tensor, cosine: float) -> torch.Tensor:
    """A unit vector at ``cosine`` to unit ``a``, towards ``b``."""
    b = b - (b @ a) * a
    return cosine * a + math.sqrt(1 - cosine**2) * b / b.norm()


def built_decoder() -> torch.Tensor:
    """12 latents over 8 snapshots:

    - 0, 1: one direction until snapshot 2, then each turned to cosine 0.6 from it, apart (cosine
      0.36 to each other): a split at 3;
    - 2, 3: apart until 4, one direction from 5 on (a turn of each): a merge at 5;
    - 4 fades at 4 as 5 emerges there at cosine 0.85 to 4's last row: a handoff at 4;
    - 6 fades at 6 as 7 and 8 emerge there, each at cosine 0.8: a split by succession at 6;
    - 9 fades at 3 as 10 emerges at 3, unrelated (cosine ~0): nothing;
    - 11 is present throughout, alone.
    """
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T  # orthonormal
    W = torch.zeros(12, S, D)
    W[0, :3] = W[1, :3] = u[0]
    W[0, 3:], W[1, 3:] = _turned(u[0], u[12], 0.6), _turned(u[0], u[1], 0.6)
    W[2, :5], W[3, :5] = u[2], u[3]
    W[2, 5:] = W[3, 5:] = _turned(u[2], u[3], 0.7)
    W[4, :4] = u[4]
    W[5, 4:] = _turned(u[4], u[5], 0.85)
    W[6, :6] = u[6]
    W[7, 6:], W[8, 6:] = _turned(u[6], u[7], 0.8), _turned(u[6], u[8], 0.8)
    W[9, :3], W[10, 3:] = u[9], u[10]
    W[11] = u[11]
    return W * GROWING_1S1


def test_lineage_finds_each_planted_event_at_its_snapshot():
    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    lin = lineage_of(analysis)
    assert lin.events == [
        LineageEvent("split", 3, (0, 1), (0, 1), pytest.approx(0.36, abs=1e-4), "divergence"),
        LineageEvent("handoff", 4, (4,), (5,), pytest.approx(0.85, abs=1e-4), "succession"),
        LineageEvent("merge", 5, (2, 3), (2, 3), pytest.approx(1.0, abs=1e-4), "divergence"),
        LineageEvent("split", 6, (6,), (7, 8), pytest.approx(0.8, abs=1e-4), "succession"),
    ]
    assert lin.counts() == {"split": 2, "merge": 1, "handoff": 1}
    assert [e.kind for e in lin.events_of(7)] == ["split"] and lin.events_of(11) == []
    assert lin.families() == [[6, 7, 8], [0, 1], [2, 3], [4, 5]]
    assert lin.events[3].to_dict() == {
        "kind": "split",
        "snapshot": 6,
        "before": [6],
        "after": [7, 8],
        "cosine": 0.8,
        "how": "succession",
    }
    assert LineageEvent.from_dict(lin.events[1].to_dict()) == lin.events[1]


def test_a_tighter_successor_line_drops_the_weaker_successions():
    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    lin = lineage_of(analysis, LineageConfig(successor_cosine=0.82))
    assert [(e.kind, e.snapshot) for e in lin.events] == [("split", 3), ("handoff", 4), ("merge", 5)]
    # a window of 0 snapshots still finds successions that emerge where the predecessor fades
    assert len(lineage_of(analysis, LineageConfig(successor_window=0)).events) == 4


def three_parting() -> EvolutionAnalysis:
    """Latents 0, 1 and 2 on one direction until snapshot 2, each on its own from 3 on."""
    W = built_decoder()[:3].clone()
    W[2] = W[0]
    W[2, 3:] = _turned(W[0, 3], torch.linspace(-1, 1, D), 0.2) * W[0, 3].norm()
    return EvolutionAnalysis.from_decoder(W)


def test_three_latents_that_part_together_are_one_split():
    events = lineage_of(three_parting()).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1, 2))]


def test_a_held_event_lists_no_latent_the_activations_hold_nowhere():
    """A latent whose decoder rows ride along a split that the activations never hold at any
    snapshot moves nothing of the data: the held split lists the two latents they hold. One held
    at a single snapshot, away from the split, stays listed; set aside events, and lineage without
    activations, keep every latent the decoder rows read."""
    analysis = three_parting()
    scaled_FS = torch.ones(3, S, dtype=torch.bool)
    scaled_FS[2] = False
    lin = lineage_of(analysis, scaled_present_FS=scaled_FS)
    assert [(e.kind, e.snapshot, e.before, e.after) for e in lin.events] == [("split", 3, (0, 1), (0, 1))]
    scaled_FS[2, 7] = True
    assert lineage_of(analysis, scaled_present_FS=scaled_FS).events[0].latents == (0, 1, 2)
    scaled_FS[2, 7] = False
    unheld = lineage_of(analysis, LineageConfig(held_by_activations=False), scaled_present_FS=scaled_FS)
    assert unheld.events[0].latents == (0, 1, 2)
    scaled_FS[1, 3] = False  # one of the two left, at the split: set aside, as read
    aside = lineage_of(analysis, scaled_present_FS=scaled_FS)
    assert aside.events == [] and aside.set_aside[0].latents == (0, 1, 2)


def test_relatives_are_the_nearest_present_latents_and_match_the_loop():
    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    lin = lineage_of(analysis, LineageConfig(n_relatives=3))
    assert lin.relatives.shape == (12, S, 3)
    # 0 and 1 coincide until snapshot 2: each other's nearest, at cosine 1
    assert lin.relatives[0, 0, 0] == 1 and float(lin.relative_cosine[0, 0, 0]) == pytest.approx(1.0)
    # latent 4 is absent from 4 on: no relatives there, and nobody lists it
    assert bool((lin.relatives[4, 4:] == -1).all()) and not bool((lin.relatives[:, 4:] == 4).any())
    # random directions (no ties), a third of the rows absent, chunks smaller than the dictionary
    gen = torch.Generator().manual_seed(1)
    unit = unit_rows(torch.randn(40, S, D, generator=gen))
    present = torch.rand(40, S, generator=gen) > 0.3
    batched = nearest_relatives(unit, present, 3, chunk_size=7)
    looped = per_latent_relatives(unit, present, 3)
    assert bool((batched[0][~present] == -1).all()) and bool((batched[0][present] >= 0).all())
    assert torch.equal(batched[0], looped[0]) and torch.allclose(batched[1], looped[1])


def test_the_config_is_checked():
    with pytest.raises(ValueError, match="apart < same"):
        LineageConfig(same_cosine=0.6, apart_cosine=0.7)
    with pytest.raises(ValueError, match="hold_margin=0.45: need 0 <= margin"):
        LineageConfig(hold_margin=0.45)
    with pytest.raises(ValueError, match="at least 1 relative"):
        LineageConfig(n_relatives=0)
    with pytest.raises(ValueError, match="max_shared=0"):
        LineageConfig(max_shared=0)


def test_one_snapshot_of_a_shared_direction_makes_no_event():
    """Rows of many latents that share a direction at one snapshot only (a snapshot's own artifact)
    are no event; with ``min_snapshots=1`` the one snapshot together reads as a split after it."""
    gen = torch.Generator().manual_seed(2)
    W = unit_rows(torch.randn(3, S, D, generator=gen)) * GROWING_1S1
    W[:, 3] = W[0, 3]  # every latent's row at snapshot 3 is latent 0's
    analysis = EvolutionAnalysis.from_decoder(W)
    assert lineage_of(analysis).events == []
    loose = lineage_of(analysis, LineageConfig(min_snapshots=1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in loose] == [("split", 4, (0, 1, 2))]


def duplicate_handoff_decoder() -> torch.Tensor:
    """6 latents over 8 snapshots, each event read from rows where a crosscoder's are unclear:

    - 0 and 1 (duplicates, cosine 0.85 to each other: under ``same_cosine``) fade at 4 as 2 emerges
      at cosine 0.85 and 0.72 to them: one direction handed over, a handoff at 4;
    - 3 fades at 6 as 4 settles there at cosine 0.85 to 3's last row, 4 having blipped on at
      snapshot 1 alone with another direction: a handoff at 6;
    - 5 is present throughout, alone.
    """
    gen = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(6, S, D)
    W[0, :4], W[1, :4] = u[0], _turned(u[0], u[1], 0.85)
    W[2, 4:] = _turned(u[0], u[2], 0.85)
    W[3, :6] = u[3]
    W[4, 1], W[4, 6:] = u[9], _turned(u[3], u[4], 0.85)
    W[5] = u[5]
    return W * GROWING_1S1


def test_succession_between_duplicates_and_after_a_blip_is_a_handoff():
    """Duplicates on one side count as one direction at ``successor_cosine`` (a handoff, not a
    merge), and a latent's one-snapshot blip is not where it emerges (its settled run is)."""
    analysis = EvolutionAnalysis.from_decoder(duplicate_handoff_decoder())
    assert int(analysis.lifetimes.emergence[4]) == 1  # the analysis dates 4 at its blip
    lin = lineage_of(analysis)
    assert lin.events == [
        LineageEvent("handoff", 4, (0, 1), (2,), pytest.approx(0.85, abs=1e-4), "succession"),
        LineageEvent("handoff", 6, (3,), (4,), pytest.approx(0.85, abs=1e-4), "succession"),
    ]
    # a successor line above the rows' 0.85 joins nothing
    assert lineage_of(analysis, LineageConfig(successor_cosine=0.9)).events == []


def test_latents_that_cancel_each_other_make_no_split_or_merge():
    """Two latents whose rows point opposite at some snapshot (cosine <= -``hold_cosine``) fire
    together to cancel: their parting is no split and their meeting no merge, also where the rows
    point opposite only as far as held rows point one way (-0.89, between -0.92 and -0.87). The
    same pairs without the opposite rows are a split and a merge."""
    gen = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(4, S, D)
    W[0, :3], W[1, :3] = u[0], u[0]  # one direction until 2, then each turns away: a split at 3
    W[0, 3:], W[1, 3:5] = _turned(u[0], u[4], 0.6), _turned(u[0], u[1], 0.6)
    W[1, 5:] = -W[0, 5:]  # ... and from 5 on 1 cancels 0
    W[2, :5], W[3, :3] = u[2], -u[2]  # 3 cancels 2 until 2, apart at 3-4, one direction from 5: a merge
    W[3, 3:5] = _turned(u[2], u[3], 0.2)
    W[2, 5:] = W[3, 5:] = _turned(u[2], u[5], 0.6)
    W = W * GROWING_1S1
    assert lineage_of(EvolutionAnalysis.from_decoder(W)).events == []
    W[1, 5:] = -_turned(W[0, 5] / W[0, 5].norm(), u[1], 0.89) * W[1, 5:].norm(dim=-1, keepdim=True)
    nearly = EvolutionAnalysis.from_decoder(W)
    assert lineage_of(nearly).events == []
    no_hold = lineage_of(nearly, LineageConfig(hold_margin=0.0)).events  # opposite only at -0.92
    assert [(e.kind, e.snapshot, e.latents) for e in no_hold] == [("split", 3, (0, 1))]
    W[1, 5:], W[3, :3] = (
        _turned(u[0], u[1], 0.6) * W[1, 5:].norm(dim=-1, keepdim=True),
        u[3] * W[3, :3].norm(dim=-1, keepdim=True),
    )
    events = lineage_of(EvolutionAnalysis.from_decoder(W)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1)), ("merge", 5, (2, 3))]


def test_a_pair_that_reached_one_direction_holds_it_above_the_hold_line():
    """Latents at cosine 0.95 then 0.88 (a JumpReLU crosscoder's duplicates wander so) before they
    part are a split; a pair that only wanders at 0.87, never reaching ``same_cosine``, parts with
    no event; with no ``hold_margin`` the first is lost too."""
    gen = torch.Generator().manual_seed(4)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(4, S, D)
    W[0, :3], W[2, :3] = u[0], u[2]
    W[0, 3:], W[2, 3:] = _turned(u[0], u[5], 0.6), _turned(u[2], u[6], 0.6)
    W[1, 0], W[1, 1:3] = _turned(u[0], u[1], 0.95), _turned(u[0], u[1], 0.88)
    W[3, :3] = _turned(u[2], u[3], 0.87)
    W[1, 3:], W[3, 3:] = _turned(u[0], u[1], 0.2), _turned(u[2], u[3], 0.2)
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    events = lineage_of(analysis).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1))]
    assert lineage_of(analysis, LineageConfig(hold_margin=0.0)).events == []


def test_one_direction_starts_at_the_calibrated_line_not_below_it():
    """Two latents at cosine 0.91 for three snapshots that then part carry one direction under a
    line of 0.9 (a split) but not under the default, 0.92 (no event); at 0.925 they do again."""
    gen = torch.Generator().manual_seed(5)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(2, S, D)
    W[0, :3], W[0, 3:] = u[0], _turned(u[0], u[2], 0.6)
    W[1, :3], W[1, 3:] = _turned(u[0], u[1], 0.91), _turned(u[0], u[1], 0.2)
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    assert lineage_of(analysis).events == []
    split = lineage_of(analysis, LineageConfig(same_cosine=0.9)).events
    assert [(e.kind, e.snapshot, e.latents) for e in split] == [("split", 3, (0, 1))]
    W[1, :3] = _turned(u[0], u[1], 0.925)
    again = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in again] == [("split", 3, (0, 1))]


def test_a_latent_that_leaves_a_direction_its_partner_keeps_is_no_split():
    """A split turns both latents off the direction they shared (each planted child turns from its
    parent); where one latent keeps the row it had and only the other leaves, the other changes
    what it carries (a crosscoder reuses a duplicate for another feature), and lineage reads no
    split. The same for a merge: one latent that comes to point along a partner that stays put is
    no merge; two that meet on a new direction are. A latent may turn a snapshot after its partner
    (within ``min_snapshots`` of the event)."""
    gen = torch.Generator().manual_seed(6)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(4, S, D)
    W[0], W[1, :3], W[1, 3:] = u[0], u[0], _turned(u[0], u[1], 0.2)  # 0 keeps, 1 leaves at 3
    W[2], W[3, :5], W[3, 5:] = u[2], u[3], u[2]  # 3 comes onto 2's row at 5
    assert lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events == []
    W[0, 3:] = _turned(u[0], u[4], 0.6)
    W[2, 5:] = W[3, 5:] = _turned(u[2], u[3], 0.6)
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1)), ("merge", 5, (2, 3))]
    W[0, 3] = u[0]  # 0 turns at 4, a snapshot after 1 leaves
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1)), ("merge", 5, (2, 3))]


def test_a_latent_that_drifts_off_the_shared_row_kept_it_and_one_that_turns_late_left_it():
    """A split's latents each leave the row the pair shares where the pair is first apart, or a
    snapshot later in one step. A latent still on the row there that drifts off it a little at a
    time kept the direction (its rows stay within a small step of each other), and only its partner
    left: no split. Read anywhere in the ``min_snapshots`` after the event
    (``turn_at_once=False``), the drift passes the hold line and the pair reads as a split, where the
    balance of the two turns is not asked (``turn_balance=0``). A merge
    mirrors it: a latent that arrives on the pair's row a snapshot before its partner, in one step,
    came to it (which the rows after the merge alone do not show)."""
    gen = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(4, S, D)
    W[0], W[1, :3], W[1, 3:] = u[0], u[0], _turned(u[0], u[1], 0.2)  # 1 leaves at 3 in one step
    for s, cosine in zip(range(3, S), (0.95, 0.85, 0.75, 0.65, 0.55)):
        W[0, s] = _turned(u[0], u[4], cosine)  # 0 drifts: about cosine 0.99 from one row to the next
    W[2], W[3, :5], W[3, 5:] = u[2], u[3], _turned(u[2], u[5], 0.6)  # both meet at 5 ...
    W[2, 4:] = _turned(u[2], u[5], 0.6)  # ... 2 a snapshot early, in one step
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    events = lineage_of(analysis).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("merge", 5, (2, 3))]
    # that rule alone: the drift also turns 0 less than half as far as 1 (``turn_balance``)
    events = lineage_of(analysis, LineageConfig(turn_at_once=False, turn_balance=0.0)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1))]
    assert lineage_of(analysis, LineageConfig(turn_at_once=False)).events == []
    W[0, 4:] = _turned(u[0], u[4], 0.5)  # 0 turns a snapshot after 1, in one step: a split
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 3, (0, 1)), ("merge", 5, (2, 3))]


def test_a_latent_that_drifts_while_its_partner_turns_away_kept_its_direction():
    """The pair lingers between the lines before it is apart: its partner turned off their row in
    one step, while it drifts (about 0.99 from one row to the next) and is under the hold line from
    the row they shared only by the snapshot they are apart. Drift is not leaving: no split. A
    latent that turns in one step anywhere from the shared row to that snapshot left it."""
    gen = torch.Generator().manual_seed(9)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(3, S, D)
    W[0, :2] = W[1, :2] = u[0]
    W[1, 2:4], W[1, 4:] = _turned(u[0], u[1], 0.7), _turned(u[0], u[1], 0.3)  # 1 turns at 2, apart at 4
    for s, cosine in zip(range(2, S), (0.97, 0.93, 0.86, 0.8, 0.74, 0.68)):
        W[0, s] = _turned(u[0], u[4], cosine)
    W[2] = u[2]
    assert lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events == []
    W[0, 3:] = _turned(u[0], u[4], 0.6)  # 0 turns at 3, in one step: a split
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.latents) for e in events] == [("split", (0, 1))]


def test_a_latent_absent_on_the_way_that_comes_back_turned_left_the_shared_row():
    """A latent absent at a snapshot between the shared row and the pair's first snapshot apart, back
    on another direction after it, made a jump, not a drift (whatever its absent row points at): a
    split."""
    gen = torch.Generator().manual_seed(10)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(3, S, D)
    W[0, :3] = W[1, :2] = u[0]
    W[1, 2:4], W[1, 4:] = _turned(u[0], u[1], 0.7), _turned(u[0], u[1], 0.3)
    W[0, 3:] = _turned(u[0], u[4], 0.6)  # back turned at 4, after a row at 3 too small to be present
    W[0, 3] *= 1e-3
    W[2] = u[2]
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.latents) for e in events] == [("split", 4, (0, 1))]


def test_latents_present_together_whose_rows_mix_there_hand_nothing_over():
    """Where a feature fades as a partner it fires with is born, the two latents present together at
    that snapshot each mix the other's direction into their row there (cosine 0.81 to each other,
    their other rows apart). Rows of one snapshot where both are present say nothing of a handover:
    no handoff. A successor whose rows beside that snapshot are near-parallel to the predecessor's
    is one."""
    gen = torch.Generator().manual_seed(8)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(3, S, D)
    W[0, :5], W[1, 4:] = u[0], u[1]
    W[0, 4], W[1, 4] = _turned(u[0], u[1], 0.89), _turned(u[1], u[0], 0.89)
    W[2] = u[2]
    assert float(unit_rows(W)[0, 4] @ unit_rows(W)[1, 4]) > LineageConfig().successor_cosine
    assert lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events == []
    W[1, 5:] = _turned(u[0], u[1], 0.8)
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.kind, e.snapshot, e.before, e.after) for e in events] == [("handoff", 4, (0,), (1,))]
    unit = unit_rows(W)
    assert events[0].cosine == pytest.approx(float(unit[0, 4] @ unit[1, 5]), abs=1e-4)  # not the rows of 4 alone


def test_a_crowd_that_shares_one_direction_and_scatters_makes_no_split():
    """Latents sharing one direction with more others than a concept has duplicates (``max_shared``)
    are a crowd, not a concept (TopK's auxiliary loss gathers latents that have not fired there),
    and their scattering is no split; as many as ``max_shared + 1`` latents that part together are
    one split."""
    gen = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T

    def parting(n: int) -> EvolutionAnalysis:
        """n latents on one direction until snapshot 3, each turned to its own from 4 (cosine 0.16 apart)."""
        W = torch.zeros(n, S, D)
        for i in range(n):
            W[i, :4], W[i, 4:] = u[0], _turned(u[0], u[1 + i], 0.4)
        return EvolutionAnalysis.from_decoder(W * GROWING_1S1)

    assert LineageConfig().max_shared == 6
    assert lineage_of(parting(8)).events == []  # each shares its direction with 7 others
    loose = lineage_of(parting(8), LineageConfig(max_shared=7)).events
    assert [(e.kind, e.snapshot, e.latents) for e in loose] == [("split", 4, tuple(range(8)))]
    few = lineage_of(parting(7)).events  # 6 others: a concept and its duplicates
    assert [(e.kind, e.snapshot, e.latents) for e in few] == [("split", 4, tuple(range(7)))]


def test_a_latent_born_as_another_s_copy_that_leaves_it_is_a_split():
    """A split's second child may get a latent of its own only as it splits off, born as a copy of
    the parent's latent and apart from it after, the parent's latent turning too: together at one
    snapshot, too few for a divergence. A latent born as a copy that stays one is a duplicate, one
    born as a copy that leaves a parent keeping its row is a duplicate gone on to carry another
    feature, and one whose rows lay along another's only under the presence line before it emerged
    was never that latent's copy: no split."""
    gen = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(9, S, D)
    W[0, :4], W[0, 4:] = u[0], _turned(u[0], u[8], 0.6)  # the parent, turning to the first child at 4
    W[1, 3], W[1, 4:] = u[0], _turned(u[0], u[1], 0.3)  # born at 3 as 0's copy, apart from 4
    W[2] = u[2]
    W[3, 2:4], W[3, 4:] = 0.1 * u[2], _turned(u[2], u[3], 0.2)  # along 2 under the presence line, then apart
    W[4] = u[4]
    W[5] = u[5]
    W[6, 5:] = u[5]  # born at 5 as 5's copy and staying one
    W[7] = u[9]  # keeps its row ...
    W[8, 3], W[8, 4:] = u[9], _turned(u[9], u[10], 0.3)  # ... as its copy, born at 3, leaves at 4
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    assert not analysis.present[1, :3].any() and not analysis.present[3, :4].any()
    assert lineage_of(analysis).events == [
        LineageEvent("split", 4, (0, 1), (0, 1), pytest.approx(0.18, abs=1e-4), "divergence"),
    ]
    assert lineage_of(analysis, LineageConfig(birth_splits=False)).events == []


def test_a_handover_to_or_from_a_latent_that_turns_is_a_succession_by_a_turn():
    """A direction that fades as a latent present throughout turns to a near-parallel one (or a
    latent that turns away as a new one emerges along its old direction) is handed over: the
    crosscoder reused the latent that turned, holding one direction before and another after. One
    latent turning alone, two that both turn with no presence changed, or a latent whose row
    drifts from snapshot to snapshot, hands nothing over."""
    gen = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(D, 16, generator=gen))[0].T
    W = torch.zeros(7, S, D)
    W[0, :4] = u[0]  # fades at 4 ...
    W[1, :4], W[1, 4:] = u[1], _turned(u[0], u[2], 0.85)  # ... as 1 turns to its direction
    W[2, :5], W[2, 5:] = u[3], u[5]  # turns away at 5 ...
    W[3, 5:] = _turned(u[3], u[6], 0.8)  # ... as 3 emerges along its old direction
    W[4, :3], W[4, 3:] = u[7], _turned(u[7], u[8], 0.8)  # turns alone
    W[5, :4], W[5, 4:] = u[9], u[10]  # both turn at 4, both present throughout
    W[6, :4], W[6, 4:] = u[11], _turned(u[9], u[12], 0.8)
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    assert lineage_of(analysis).events == [
        LineageEvent("handoff", 4, (0,), (1,), pytest.approx(0.85, abs=1e-4), "turn"),
        LineageEvent("handoff", 5, (2,), (3,), pytest.approx(0.8, abs=1e-4), "turn"),
    ]
    assert lineage_of(analysis, LineageConfig(turns=False)).events == []
    # a successor line above the rows' cosines hands nothing over
    assert lineage_of(analysis, LineageConfig(successor_cosine=0.9)).events == []
    # a latent whose row drifts before it reaches the fading direction turned in no one step
    W[1, 2], W[1, 3] = u[13], u[14]
    drifting = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events
    assert [(e.snapshot, e.before, e.after, e.how) for e in drifting] == [(5, (2,), (3,), "turn")]


def test_an_event_the_activations_do_not_hold_is_set_aside():
    """Given where latent scaling calls each latent present, an event stays only where its latents
    are present on their sides of it for ``min_snapshots`` snapshots (two latents for a divergence,
    one on each side for a succession); the others are set aside, and without the rule, or without
    activations, every event stays."""
    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    everywhere = torch.ones(12, S, dtype=torch.bool)
    events = lineage_of(analysis).events
    assert [(e.kind, e.snapshot) for e in events] == [("split", 3), ("handoff", 4), ("merge", 5), ("split", 6)]
    held = lineage_of(analysis, scaled_present_FS=everywhere)
    assert held.events == events and held.set_aside == []
    scaled_FS = everywhere.clone()
    scaled_FS[1, 4] = False  # a child of the split at 3, one snapshot after it
    scaled_FS[4, 2] = False  # the handoff's predecessor, two snapshots before it
    scaled_FS[7, 6] = False  # one of the two successors of the split at 6: the other still holds it
    scaled_FS[2, 2] = False  # three snapshots before the merge at 5: outside the two read
    lin = lineage_of(analysis, scaled_present_FS=scaled_FS)
    assert [(e.kind, e.snapshot) for e in lin.events] == [("merge", 5), ("split", 6)]
    assert lin.set_aside == events[:2] and lin.counts() == {"split": 1, "merge": 1, "handoff": 0}
    # as the summary and the report say the counts: a noun singular where its count is 1
    assert counts_text(lin.counts()) == "1 split, 1 merge, 0 handoffs"
    assert counts_text(lineage_of(analysis).counts(), last=" and ") == "2 splits, 1 merge and 1 handoff"
    # every snapshot missing above is the second of its side: one snapshot a side holds them all
    one = LineageConfig(min_snapshots=1)
    assert lineage_of(analysis, one, scaled_present_FS=scaled_FS).events == lineage_of(analysis, one).events
    assert lineage_of(analysis, LineageConfig(held_by_activations=False), scaled_present_FS=scaled_FS).events == events
    with pytest.raises(ValueError, match=r"shape \[12, 7\], the decoder \[12, 8\].*this crosscoder's EmergenceCheck"):
        lineage_of(analysis, scaled_present_FS=scaled_FS[:, 1:])


def test_lineage_called_by_hand_names_an_input_of_another_shape():
    """``lineage`` takes the analysis's tables one by one: one of another length reached a
    broadcasting error deep in the pairs' work."""
    from crosslens.analysis.lineage_events import lineage

    analysis = EvolutionAnalysis.from_decoder(torch.rand(6, 4, 5))
    lt = analysis.lifetimes
    tables = dict(present_FS=analysis.present, emergence_F=lt.emergence, fade_F=lt.fade, live_F=~lt.dead)
    assert lineage(analysis.W_dec, *tables.values()).events == lineage_of(analysis).events
    for name in tables:
        cut = {**tables, name: tables[name][:5]}
        with pytest.raises(
            ValueError, match=rf"^{name} has shape \[5(, 4)?\], the decoder \[6, 4\] .*the analysis's own"
        ):
            lineage(analysis.W_dec, *cut.values())
    with pytest.raises(ValueError, match=r"^W_dec_FSD has shape \[6, 20\]; a decoder is \[d_sae, n_snapshots, d_in\]$"):
        lineage(analysis.W_dec.reshape(6, 20), *tables.values())


# --------------------------------------------------------------------------- agreement
def test_another_crosscoder_that_makes_the_same_moves_agrees_with_every_event_and_one_that_does_not_refuses():
    from crosslens.analysis.agreement import lineage_agreement

    W = built_decoder()
    analysis = EvolutionAnalysis.from_decoder(W)
    lin = lineage_of(analysis)
    order = torch.randperm(len(W), generator=torch.Generator().manual_seed(1))
    noise = 0.01 * torch.randn(W.shape, generator=torch.Generator().manual_seed(2)) * (W != 0)
    same = EvolutionAnalysis.from_decoder((W + noise)[order])  # the same latents, in another order
    assert lineage_agreement(lin, analysis, same) == [pytest.approx(1.0, abs=0.02)] * 4

    # latent 1's move (the split's second child) is made by no latent there: one holds its row up to
    # the split, another the child's from it on; the best single latent is 0, which turns elsewhere
    V = W.clone()
    V[1, :3] = 0
    V = torch.cat([V, (W[1] * (torch.arange(S) < 3)[:, None])[None]])
    other = EvolutionAnalysis.from_decoder(V)
    split, handoff, merge, succession = lineage_agreement(lin, analysis, other)
    assert split == pytest.approx(0.36, abs=1e-3)  # latent 0's row at the split against 1's
    assert (handoff, merge, succession) == (pytest.approx(1.0, abs=1e-4),) * 3

    from crosslens.analysis.emergence_report import lineage_agreement_section

    steps = [10 * s for s in range(S)]
    page = lineage_agreement_section(lin, [split, handoff, merge, succession], steps, "B", 0.5).render()
    assert "3 of 4 lineage events are made too by B&#x27;s crosscoder" in page
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells[:6] == ["split", "30", "0, 1", "0, 1", "0.36", "0.36"] and cells[6] == "no"  # the least first

    # a latent scaling's presence is read beside the analysis's: with 5 absent, the handoff's successor is nowhere
    scaled = torch.ones(len(W), S, dtype=torch.bool)
    scaled[order.argsort()[5]] = False
    assert lineage_agreement(lin, analysis, same, other_present_FS=scaled)[1] < 0.2


def test_a_predecessor_faded_before_the_snapshot_before_its_successor_is_looked_for_in_the_other_crosscoder():
    """A successor emerges within ``successor_window`` of its predecessor's fade, either way: with
    the fade one snapshot before the onset, the predecessor is present at neither the event's
    snapshot nor the one before it, and is read at its last present snapshot instead."""
    from crosslens.analysis.agreement import event_agreement, lineage_agreement

    u = torch.linalg.qr(torch.randn(D, 8, generator=torch.Generator().manual_seed(0)))[0].T
    W = torch.zeros(4, S, D)
    W[0, :3] = u[0]  # present at 0-2, faded at 3
    W[1, 4:] = _turned(u[0], u[1], 0.9)  # emerges at 4 along latent 0's direction
    W[2], W[3] = u[2], u[3]
    analysis = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    lt = analysis.lifetimes
    assert (int(lt.fade[0]), int(lt.emergence[1])) == (3, 4)  # fade = onset - 1
    lin = lineage_of(analysis)
    assert [(e.kind, e.snapshot, e.before, e.after) for e in lin.events] == [("handoff", 4, (0,), (1,))]

    # the other crosscoder has nothing along u0 before 3: the successor's row is there (0.9), the
    # predecessor's nowhere, so the event is not made (latent 0 against 2 and 3 at snapshot 2)
    V = torch.zeros(3, S, D)
    V[0, :3], V[0, 3:] = u[7], u[0]
    V[1], V[2] = u[2], u[3]
    late = EvolutionAnalysis.from_decoder(V * GROWING_1S1)
    assert lineage_agreement(lin, analysis, late) == [pytest.approx(0.0, abs=1e-5)]
    # one that holds the predecessor up to 2 and the successor from 4 makes both moves
    same = EvolutionAnalysis.from_decoder(W[[3, 1, 2, 0]] * GROWING_1S1)
    assert lineage_agreement(lin, analysis, same) == [pytest.approx(1.0, abs=1e-5)]

    # a latent present nowhere on its side (the predecessor, present only after the handoff) is no
    # move made; one present at no snapshot makes no move to look for, and the others' stand; an
    # event with no latent to look for, none read
    unit, present = unit_rows(analysis.W_dec), analysis.present.clone()
    present[0] = False
    present[0, 5:] = True
    other = (unit_rows(same.W_dec), same.present)
    assert event_agreement(lin.events, unit, present, *other) == [-1.0]
    present[0] = False
    assert event_agreement(lin.events, unit, present, *other) == [pytest.approx(1.0, abs=1e-5)]
    present[1] = False
    unread = event_agreement(lin.events, unit, present, *other)
    assert math.isnan(unread[0])

    from crosslens.analysis.emergence_report import lineage_agreement_section

    page = lineage_agreement_section(lin, unread, [10 * s for s in range(S)], "B", 0.5).render()
    assert "0 of 0 lineage events are made too by B" in page
    assert " 1 more have no latent present beside their snapshot, so no agreement." in page


def test_a_turn_s_latents_are_looked_for_on_their_side_of_it():
    """In a turn, the latent that turned is the handover's fader (or successor) on its side; the
    direction it turns to is not the event's. Another crosscoder that hands the same direction from
    a latent that fades to one that emerges makes the event. A succession's fader present on both
    sides is still read by its move: its row changing there unannounced is another concept's."""
    from crosslens.analysis.agreement import event_agreement

    u = torch.linalg.qr(torch.randn(D, 8, generator=torch.Generator().manual_seed(0)))[0].T
    W = torch.zeros(2, S, D)
    W[0, :4], W[0, 4:] = u[0], u[5]  # holds u0 up to 3, then turns to u5 in one step
    W[1, 4:] = _turned(u[0], u[1], 0.9)  # emerges at 4 along u0
    present = torch.ones(2, S, dtype=torch.bool)
    present[1, :4] = False
    V = torch.zeros(2, S, D)  # the same handover, from a latent that fades to one that emerges
    V[0, :4], V[1, 4:] = u[0], W[1, 4]
    other_present = V.norm(dim=-1) > 0
    turn = LineageEvent("handoff", 4, (0,), (1,), 0.9, "turn")
    succession = LineageEvent("handoff", 4, (0,), (1,), 0.9, "succession")
    made = event_agreement([turn, succession], unit_rows(W), present, unit_rows(V), other_present)
    assert made[0] == pytest.approx(1.0, abs=1e-5)
    assert made[1] == -1.0  # no latent of the other is present at 3 and 4, to hold u0 and then u5
    # the turned latent's own side is still looked for: without u0 before the turn, none is made
    V[0, :4] = u[7]
    assert event_agreement([turn], unit_rows(W), present, unit_rows(V), other_present) == [pytest.approx(0.0, abs=1e-5)]


def test_agreement_is_refused_between_crosscoders_of_other_activations():
    from crosslens.analysis.agreement import event_agreement, lineage_agreement

    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    lin = lineage_of(analysis)
    wider = EvolutionAnalysis.from_decoder(torch.randn(4, S, D + 1))
    with pytest.raises(ValueError, match=r"read different activations: compare crosscoders trained on the same store"):
        lineage_agreement(lin, analysis, wider)
    with pytest.raises(TypeError, match=r"lineage_agreement's other is an EvolutionAnalysis"):
        lineage_agreement(lin, analysis, built_decoder())
    unit = unit_rows(built_decoder())
    assert (
        event_agreement([], unit, torch.ones(12, S, dtype=torch.bool), unit, torch.ones(12, S, dtype=torch.bool)) == []
    )


def test_a_divergence_whose_apart_latents_lie_along_the_error_alone_is_set_aside():
    """Given latent scaling's activation share, a split's children at each of the ``min_snapshots``
    snapshots from it on, and a merge's latents at each before it, must have an activation amplitude
    of at least ``own_share`` of their error amplitude: a child that only the other latents' error
    holds (TopK's latent correcting a partner) makes no split. Successions are not read by it, nor is
    a divergence's side where its latents are together."""
    analysis = EvolutionAnalysis.from_decoder(built_decoder())
    everywhere = torch.ones(12, S, dtype=torch.bool)
    events = lineage_of(analysis).events
    assert [(e.kind, e.snapshot) for e in events] == [("split", 3), ("handoff", 4), ("merge", 5), ("split", 6)]
    share_FS = torch.ones(12, S)
    assert lineage_of(analysis, scaled_present_FS=everywhere, activation_share_FS=share_FS).events == events
    share_FS[1, 4] = 0.46  # a child of the split at 3, one snapshot after it
    share_FS[0, 1] = 0.1  # the split's latents where they are together: not read
    share_FS[2, 5] = -0.3  # a latent of the merge at 5 where it is merged: not read
    share_FS[4, 3] = 0.0  # the handoff's predecessor: a succession is not read
    share_FS[3, 2] = 0.2  # three snapshots before the merge: outside the two read
    share_FS[5, 5] = share_FS[7, 6] = torch.inf  # the error holds none of them: not decided here
    lin = lineage_of(analysis, scaled_present_FS=everywhere, activation_share_FS=share_FS)
    assert [(e.kind, e.snapshot) for e in lin.events] == [("handoff", 4), ("merge", 5), ("split", 6)]
    assert lin.set_aside == events[:1]
    # the line is inclusive, and the share is read with or without latent scaling's presence
    share_FS[1, 4] = 0.5
    assert lineage_of(analysis, activation_share_FS=share_FS).events == events
    share_FS[3, 4] = 0.49  # a latent of the merge, the snapshot before it
    assert [(e.kind, e.snapshot) for e in lineage_of(analysis, activation_share_FS=share_FS).events] == [
        ("split", 3),
        ("handoff", 4),
        ("split", 6),
    ]
    assert lineage_of(analysis, LineageConfig(own_share=0.4), activation_share_FS=share_FS).events == events
    assert lineage_of(analysis, LineageConfig(held_by_activations=False), activation_share_FS=share_FS).events == events
    with pytest.raises(ValueError, match=r"own_share=-0.1"):
        LineageConfig(own_share=-0.1)
    with pytest.raises(ValueError, match=r"activation_share_FS has shape \[12, 7\].*LatentScaling.activation_share"):
        lineage_of(analysis, activation_share_FS=share_FS[:, 1:])


def test_the_activation_share_is_the_activation_amplitude_over_the_error_amplitude():
    """``LatentScaling.activation_share``: a latent the activations hold as much as the error reads
    1, one only the error holds reads its small or negative share, and one the error holds nothing of
    is not judged by it (infinite)."""
    from crosslens.analysis.scaling import LatentScaling

    amplitude = torch.tensor([[1.0, 0.3, -0.2, 0.5]])
    error = torch.tensor([[1.0, 0.9, 0.8, 0.0]])
    filler = torch.zeros(1, 4)
    scaling = LatentScaling(
        reference=torch.zeros(1, 4, dtype=torch.long),
        row_norm=filler,
        own_cosine=filler,
        own_norm=filler,
        carrier=torch.full((1, 4), -1),
        carrier_cosine=filler,
        amplitude=amplitude,
        error_amplitude=error,
        stderr=filler,
        n_fire=torch.ones(1),
        n_tokens=1,
    )
    assert scaling.activation_share.tolist() == [[1.0, pytest.approx(1 / 3), pytest.approx(-0.25), math.inf]]


def test_a_latent_that_dips_off_the_shared_row_for_one_snapshot_keeps_it():
    """Of two latents on one row, one turns away for good while the other dips under the hold line
    for one snapshot and comes back: only the first left, so the pair made no split (TopK reusing a
    duplicate for a feature born there). Where the second stays off, or without ``leave_for_good``,
    both left: a split."""
    gen = torch.Generator().manual_seed(4)
    u = torch.linalg.qr(torch.randn(D, 8, generator=gen))[0].T
    W = torch.zeros(2, S, D)
    W[0] = W[1] = u[0]
    W[1, 3:] = _turned(u[0], u[1], 0.3)  # turns away for good at 3
    W[0, 3] = _turned(u[0], u[2], 0.8)  # under the hold line (0.87) at 3 alone
    dipped = EvolutionAnalysis.from_decoder(W * GROWING_1S1)
    assert lineage_of(dipped).events == []
    assert [(e.kind, e.snapshot) for e in lineage_of(dipped, LineageConfig(leave_for_good=False)).events] == [
        ("split", 3)
    ]
    W[0, 3:] = _turned(u[0], u[2], 0.8)  # stays off
    assert [(e.kind, e.snapshot) for e in lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1)).events] == [
        ("split", 3)
    ]
