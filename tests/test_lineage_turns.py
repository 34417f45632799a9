"""How far each latent of an event turns: a split's (a merge's) two latents turn alike, and a
succession hands over a direction its latents held.

Decoders built by hand over 8 snapshots, as in ``test_lineage.py``: each case beside the same
rows with the one difference that makes it an event.
"""

from __future__ import annotations

import pytest
import torch
from test_lineage import GROWING_1S1, D, S, _turned

from crosslens.analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import LineageConfig, lineage_of


def _basis(seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(D, 16, generator=torch.Generator().manual_seed(seed)))[0].T


def _events(W: torch.Tensor, config: LineageConfig | None = None) -> list[tuple]:
    events = lineage_of(EvolutionAnalysis.from_decoder(W * GROWING_1S1), config).events
    return [(e.kind, e.snapshot, e.before, e.after) for e in events]


def uneven_pair() -> torch.Tensor:
    """4 latents: 0 and 1 share a row until snapshot 2, then 1 turns about 93 degrees away while 0
    turns about 32 (cosine 0.85: under the hold line, in one step); 2 and 3 lie apart until 4 and
    share a row from 5 on that lies 31 degrees from 2's row (cosine 0.86) and 90 from 3's."""
    u = _basis(11)
    W = torch.zeros(4, S, D)
    W[0, :3] = W[1, :3] = u[0]
    W[0, 3:], W[1, 3:] = _turned(u[0], u[4], 0.85), _turned(u[0], u[1], -0.05)
    W[2, :5], W[3, :5] = u[2], u[3]
    W[2, 5:] = W[3, 5:] = _turned(u[2], u[5], 0.86)
    return W


def test_a_latent_that_turns_less_than_half_as_far_as_its_partner_kept_its_concept():
    """Both latents leave the shared row, but one turns about a third as far as the other: the
    other changed what it carries, no split; the same of a merge onto a row next to one latent's.
    Turned alike (0 to 53 degrees from the shared row beside 1's 93; the merged row 53 and 37
    degrees from the two rows), the pairs split and merge; with ``turn_balance=0`` any two latents
    that leave the row do."""
    W = uneven_pair()
    assert _events(W) == []
    assert _events(W, LineageConfig(turn_balance=0.0)) == [
        ("split", 3, (0, 1), (0, 1)),
        ("merge", 5, (2, 3), (2, 3)),
    ]
    u = _basis(11)
    W[0, 3:] = _turned(u[0], u[4], 0.6)  # 53 degrees against 1's 93
    W[2, 5:] = W[3, 5:] = _turned(u[2], u[3], 0.6)  # 53 degrees from 2's row, 37 from 3's
    assert _events(W) == [("split", 3, (0, 1), (0, 1)), ("merge", 5, (2, 3), (2, 3))]


def test_the_balance_line_is_checked():
    with pytest.raises(ValueError, match="turn_balance=1.5"):
        LineageConfig(turn_balance=1.5)


def handover(fader_turns: bool, successor_turns: bool) -> torch.Tensor:
    """3 latents: 0 holds u0 until snapshot 3 and fades at 4 (``fader_turns``: it carried u9 until
    2 and turned onto u0 at 3, a snapshot before it faded); 1 is born at 4 at cosine 0.85 to u0 and
    holds that row (``successor_turns``: it turns onto u7 at 5); 2 is present throughout, alone."""
    u = _basis(12)
    W = torch.zeros(3, S, D)
    W[0, :4] = u[0]
    if fader_turns:
        W[0, :3] = u[9]
    W[1, 4:] = _turned(u[0], u[1], 0.85)
    if successor_turns:
        W[1, 5:] = u[7]
    W[2] = u[2]
    return W


def test_a_succession_hands_over_a_direction_its_latents_held():
    """A latent that turned onto a direction a snapshot before it faded held it for fewer than
    ``min_snapshots``, and a newborn that turns off its first row a snapshot after its birth takes
    on nothing it keeps: no handoff either way. Held, the direction is handed over; without
    ``steady_successions`` the turned latents hand it over too."""
    assert _events(handover(False, False)) == [("handoff", 4, (0,), (1,))]
    for turns in ((True, False), (False, True)):
        assert _events(handover(*turns)) == []
        assert _events(handover(*turns), LineageConfig(steady_successions=False)) == [("handoff", 4, (0,), (1,))]
