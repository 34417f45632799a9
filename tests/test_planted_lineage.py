"""Lineage events scored against planted splits, merges and handoffs, on a crosscoder that is the planted truth."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from crosslens.analysis import LineageEvent, PlantedConfig, PlantedEvents, PlantedEvolution
from crosslens.analysis.planted_lineage import carried_feature, carries, planted_lineage_scores
from crosslens.analysis.relatives import unit_rows


def perfect_decoder(planted: PlantedEvolution, duplicate: int) -> SimpleNamespace:
    """An analysis whose latent i is planted feature i (its row zero where the feature is absent), and
    whose last latent is a second copy of feature ``duplicate``."""
    W_FSD = planted.directions * (planted.magnitudes > 0)[..., None]
    W_FSD = torch.cat([W_FSD, W_FSD[duplicate : duplicate + 1]])
    return SimpleNamespace(W_dec=W_FSD, present=W_FSD.norm(dim=-1) > 0)


def untouched(planted: PlantedEvolution) -> list[int]:
    """Planted features in no planted event, present at every snapshot."""
    truth = planted.event_truth
    used = {i for _, a, b in truth.paired + truth.handoffs for i in (a, b)}
    return [i for i in range(planted.config.n_features) if i not in used and bool((planted.magnitudes[i] > 0).all())]


def test_planted_splits_are_found_and_the_other_events_named() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("split", seed=0))
    truth = planted.event_truth.splits
    (at_0, a_0, b_0), (at_1, a_1, b_1) = truth[0], truth[1]
    c, d = untouched(planted)[:2]
    analysis = perfect_decoder(planted, duplicate=c)
    twin = analysis.W_dec.shape[0] - 1
    events = [
        LineageEvent("split", at_0, (a_0, b_0), (a_0, b_0), -0.1, "divergence"),  # at the planted step
        LineageEvent("split", at_1 + 1, (a_1, b_1), (a_1, b_1), -0.1, "divergence"),  # a snapshot late
        LineageEvent("split", 6, (c, d), (c, d), 0.0, "divergence"),  # two unrelated features
        LineageEvent("merge", 6, (c, twin), (c, twin), 1.0, "divergence"),  # one feature on two latents
        LineageEvent("merge", at_0, (a_0, b_0), (a_0, b_0), 0.9, "divergence"),  # the wrong kind
    ]
    scores = planted_lineage_scores(planted, analysis, SimpleNamespace(events=events))
    assert scores.labels == ["planted", "planted", "false", "decoupling", "false"]
    assert (scores.planted_events, scores.events_found) == (len(truth), 2)
    # every child has a latent of its own here, so every planted split is carried
    assert (scores.events_carried, scores.events_found_carried) == (len(truth), 2)
    assert scores.to_dict() == {
        "planted_events": len(truth),
        "events_found": 2,
        "events_carried": len(truth),
        "events_found_carried": 2,
        "events": 5,
        "decoupling_events": 1,
        "false_events": 2,
    }
    # two snapshots late is not found
    late = [LineageEvent("split", at_0 + 2, (a_0, b_0), (a_0, b_0), -0.1, "divergence")]
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=late)).events_found == 0


def test_a_handoff_is_found_from_its_predecessor_to_its_successor_only() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("handoff", seed=0))
    at, old, new = planted.event_truth.handoffs[0]
    analysis = perfect_decoder(planted, duplicate=untouched(planted)[0])
    forward = LineageEvent("handoff", at, (old,), (new,), 0.9, "succession")
    backward = LineageEvent("handoff", at, (new,), (old,), 0.9, "succession")
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=[forward])).labels == ["planted"]
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=[backward])).events_found == 0


def test_a_planted_merge_is_two_directions_that_become_one() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("merge", seed=0))
    truth = planted.event_truth
    assert (truth.splits, truth.handoffs, len(truth.merges)) == ([], [], 5)
    assert truth.to_dict()["merges"] == [list(e) for e in truth.merges]
    for at, a, b in truth.merges:
        cos_S = (planted.directions[a] * planted.directions[b]).sum(-1)
        assert bool((cos_S[at:] > 0.999).all()) and bool((cos_S[:at] < 0.9).all())
        # just before the merge each lies at the planted cosine to the merged direction
        for f in (a, b):
            assert float(planted.directions[f, at - 1] @ planted.directions[a, at]) == pytest.approx(0.6, abs=1e-5)
        # both are present throughout
        assert bool(planted.present[a].all()) and bool(planted.present[b].all())
    # beside splits and handoffs in one set, every event takes features of its own
    events = PlantedEvents(n_splits=2, n_handoffs=1, n_merges=2)
    mixed = PlantedEvolution.build(dataclasses.replace(PlantedConfig.preset("merge", seed=0), events=events))
    truth = mixed.event_truth
    used = [i for _, a, b in truth.splits + truth.handoffs + truth.merges for i in (a, b)]
    assert len(used) == len(set(used)) == 10
    assert [at for at, _, _ in truth.splits + truth.handoffs + truth.merges] == [2, 3, 4, 5, 2]


def test_a_planted_merge_is_found_from_both_its_features_before_it() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("merge", seed=0))
    merges = planted.event_truth.merges
    (at_0, a_0, b_0), (at_1, a_1, b_1), (at_2, a_2, b_2) = merges[:3]
    c = untouched(planted)[0]
    analysis = perfect_decoder(planted, duplicate=c)
    events = [
        LineageEvent("merge", at_0, (a_0, b_0), (a_0, b_0), 1.0, "divergence"),  # at the planted step
        LineageEvent("merge", at_1 - 1, (a_1, b_1), (a_1, b_1), 1.0, "divergence"),  # a snapshot early
        LineageEvent("split", at_2, (a_2, b_2), (a_2, b_2), 0.4, "divergence"),  # the wrong kind
        LineageEvent("merge", at_2, (a_2, c), (a_2, c), 1.0, "divergence"),  # one of its features only
    ]
    scores = planted_lineage_scores(planted, analysis, SimpleNamespace(events=events))
    assert scores.labels == ["planted", "planted", "false", "false"]
    assert (scores.planted_events, scores.events_found, scores.events_carried) == (5, 2, 5)
    late = [LineageEvent("merge", at_0 + 2, (a_0, b_0), (a_0, b_0), 1.0, "divergence")]
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=late)).events_found == 0
    # after the merge one latent carries both features; before it, where b_0 has no latent of its
    # own, merge 0 is not carried
    present = analysis.present.clone()
    present[b_0] = False
    lagging = SimpleNamespace(W_dec=analysis.W_dec, present=present)
    assert planted_lineage_scores(planted, lagging, SimpleNamespace(events=events)).events_carried == 4


def test_a_row_carries_the_nearest_planted_feature_above_the_line_only() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("split", seed=0))
    c = untouched(planted)[0]
    analysis = perfect_decoder(planted, duplicate=c)
    unit = unit_rows(analysis.W_dec)
    assert carried_feature(unit, planted, c, 0) == c
    # a row half-way to a direction orthogonal to every planted one carries nothing
    away = torch.linalg.svd(planted.directions[:, 0]).Vh[-1]  # orthogonal to the 24 planted rows in 32 dims
    unit[c, 0] = (unit[c, 0] + 1.2 * away) / (unit[c, 0] + 1.2 * away).norm()
    assert carried_feature(unit, planted, c, 0) is None


def test_one_reported_event_finds_one_planted_event_at_most() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("split", seed=0))
    splits = planted.event_truth.splits
    (at_0, a_0, b_0), (at_4, a_4, b_4) = splits[0], splits[4]
    assert at_0 == at_4  # two splits planted at one snapshot
    both = (a_0, b_0, a_4, b_4)
    analysis = perfect_decoder(planted, duplicate=untouched(planted)[0])
    over_both = LineageEvent("split", at_0, both, both, -0.1, "divergence")
    one = planted_lineage_scores(planted, analysis, SimpleNamespace(events=[over_both]))
    assert (one.events_found, one.events_found_carried, one.labels) == (1, 1, ["planted"])
    # beside an event of split 0's alone, the event over both finds split 4: two found, by two events
    first = LineageEvent("split", at_0, (a_0, b_0), (a_0, b_0), -0.1, "divergence")
    two = planted_lineage_scores(planted, analysis, SimpleNamespace(events=[over_both, first]))
    assert (two.events_found, two.labels) == (2, ["planted", "planted"])
    # a second report of split 0 is still its report, but finds nothing more
    again = planted_lineage_scores(planted, analysis, SimpleNamespace(events=[first, first]))
    assert (again.events_found, again.labels) == (1, ["planted", "planted"])
    # where split 0's child b_0 has no live latent, split 0 is not carried: the one event goes to
    # split 4, which is, so that the events found among those carried are as many as can be
    present = analysis.present.clone()
    present[b_0] = False
    lagging = SimpleNamespace(W_dec=analysis.W_dec, present=present)
    scores = planted_lineage_scores(planted, lagging, SimpleNamespace(events=[over_both]))
    assert (scores.events_carried, scores.events_found, scores.events_found_carried) == (len(splits) - 1, 1, 1)


def test_a_row_along_an_absent_feature_carries_nothing() -> None:
    planted = PlantedEvolution.build(PlantedConfig.preset("late", seed=0))
    late = int((planted.emergence == 5).nonzero()[0])
    assert planted.present[late].tolist() == [False] * 5 + [True, True, False]
    W_FSD = planted.directions[late].expand(2, -1, -1).clone()  # two latents along it at every snapshot
    unit = unit_rows(W_FSD)
    assert carried_feature(unit, planted, 0, 5) == late
    assert carried_feature(unit, planted, 0, 2) is None  # not yet born: no feature there to carry
    # a split of the two latents before the feature is born is of no planted feature: false
    analysis = SimpleNamespace(W_dec=W_FSD, present=torch.ones(2, planted.config.n_snapshots, dtype=torch.bool))
    split = LineageEvent("split", 3, (0, 1), (0, 1), 0.3, "divergence")
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=[split])).labels == ["false"]
    born = LineageEvent("split", 6, (0, 1), (0, 1), 0.3, "divergence")
    assert planted_lineage_scores(planted, analysis, SimpleNamespace(events=[born])).labels == ["decoupling"]
    # a set without planted events (no event_truth at all) is read feature by feature
    bare = SimpleNamespace(directions=planted.directions, present=planted.present)
    assert carries(unit, bare, [0, 1], [5], late) and not carries(unit, bare, [0, 1], [2], late)
