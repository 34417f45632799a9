"""Lineage: how crosscoder latents split, merge and hand over to each other through training.

Read from the per-snapshot decoder directions of the live latents, where each is present
(the evolution analysis's presence: an absent row's direction is noise):

- **relatives**: each latent's nearest latents at each snapshot by decoder cosine
  (:func:`nearest_relatives`: one matmul per snapshot and chunk of latents, then top-k);
- **split / merge by divergence**: two latents whose directions coincide (cosine >=
  ``same_cosine - hold_margin`` at some snapshots, and >= :attr:`LineageConfig.same_cosine`
  at one of them at least) and are apart (<=
  :attr:`LineageConfig.apart_cosine`) from a later one to the end of their joint presence, each
  latent with a row among the first ``min_snapshots`` apart under the hold line from its row where
  they were last together: one concept became two (a split at the first snapshot they are apart);
  the reverse is a merge. Where one latent keeps its row and only the other moves, the other
  changes what it carries (a crosscoder reusing a duplicate for another feature): no concept
  split, no event; so too where one turns less than half as far as the other
  (:attr:`LineageConfig.turn_balance`). A
  pair whose rows point opposite at any snapshot (cosine <= -:attr:`LineageConfig.hold_cosine`)
  is neither: such latents fire together to cancel each other (TopK's fixed count of active
  latents makes them), and their rows carry no concept there. Nor is a pair whose direction,
  where it is together, more than :attr:`LineageConfig.max_shared` other latents share: a crowd,
  not a concept;
- **split by birth**: a latent born as another's copy (its first present row at ``same_cosine`` or
  closer to a latent present there and just before) and then apart from it for good: a split's
  second child that gets a latent of its own only as it splits off, together with the parent's
  at that one snapshot. The parent's latent turns too, as in a divergence: a newborn copy that
  leaves a parent keeping its row is a duplicate gone on to carry another feature
  (:attr:`LineageConfig.birth_splits`);
- **split by composition**: a latent that turns as latents born beside it fire with it, where its own
  row and its rows summed with theirs (each weighted by its mean code where the two fire together)
  part as a split's children do (:attr:`LineageConfig.compositions`,
  :func:`~crosslens.analysis.composition.composition_splits`): a crosscoder that carries a child
  by a sum of rows, no row of its own along it. It needs the latents' firing together, read
  beside latent scaling (:class:`~crosslens.analysis.composition.CoFiring`);
- **succession**: a latent fades as a near-parallel one emerges (the best cosine between the
  fading latent's last ``min_snapshots`` rows of a run of presence that long and the emerging
  latent's first ones, two rows of one snapshot where both are present left out, >=
  :attr:`LineageConfig.successor_cosine`, the emergence within
  :attr:`LineageConfig.successor_window` snapshots of the fade, the two present together at no
  more snapshots than that window): one latent to one is a **handoff**, the through-time face of
  Minder et al.'s Latent Decoupling; one to several a split; several to one a merge (counted in
  directions, not latents: latents whose joining rows lie at ``successor_cosine`` or closer count
  once). A latent that turns in one step between the rows read there carried that direction too
  briefly to hand it over (:attr:`LineageConfig.steady_successions`);
- **succession by a turn**: the same handover where one of the two latents is present on both
  sides of it and turns in one step, holding one direction for ``min_snapshots`` before and
  another as long after (the crosscoder reusing a latent it had for another direction): a
  direction that no present latent continues, and a near-parallel one that no present latent
  held a snapshot before (:attr:`LineageConfig.turns`). A latent whose row drifts from snapshot
  to snapshot hands nothing over.

Latents in pair events of one kind at one snapshot are joined into one event (three latents
that coincide and separate together are one split). Every event records its snapshot, the
latents before and after, and the cosine that decided it.

Where latent scaling has read activations, an event whose latents the activations do not hold on
its sides is set aside (:func:`held_by_activations`): decoder rows alone can point at a feature on
snapshots where the latent explains none of it. A split's children after it (a merge's latents
before it) must also lie along the activations themselves, not only along the error the other
latents leave (:attr:`LineageConfig.own_share`): a latent that fires beside a partner to correct it
points at no concept of the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.analysis.composition import CoFiring, Composed, composition_splits
from crosslens.analysis.divergence import birth_splits, divergence_pairs
from crosslens.analysis.relatives import nearest_relatives, unit_rows
from crosslens.analysis.succession import (
    components,
    held_presence,
    succession_events,
    turn_successions,
    turned_rows,
)

EVENT_KINDS: tuple[str, ...] = ("split", "merge", "handoff")
"""What a lineage event is; see the module docstring."""


@dataclass(frozen=True)
class LineageConfig:
    """The cosines that make two latents one concept, two concepts, or a successor."""

    n_relatives: int = 5
    """Nearest relatives kept per latent and snapshot."""
    same_cosine: float = 0.92
    """Two latents' rows at or above this cosine at a snapshot carry one direction there: the
    strictest line at which every planted split and handoff that 0.9 finds is found still, chosen
    on some seeds of the planted grid and checked on the others (benchmarks/README.md, "Is an
    emergence real?")."""
    hold_margin: float = 0.05
    """Two latents that reach ``same_cosine`` stay one direction while their rows are within this
    margin of it (:attr:`hold_cosine`): a state of two latents together needs ``min_snapshots`` at
    that line and one at ``same_cosine``. JumpReLU's duplicates of one planted feature wander
    between snapshots, so a split of such a pair would be lost to ``same_cosine`` at every
    snapshot, while TopK latents that only wander near each other never reach it and make no
    event. Rows at or below minus the hold line point opposite, as far as rows held together
    point one way: the two latents fire together to cancel each other (TopK's fixed count of
    active latents makes such pairs), and the pair makes no split or merge. A latent whose rows
    in the ``min_snapshots`` after a split or merge stay above the hold line from its row before
    keeps its direction, as far as rows held together share one, and the pair makes no event
    (benchmarks/README.md, "Is an emergence real?")."""
    apart_cosine: float = 0.5
    """At or below this cosine they carry two. Between the two lines a pair is neither, so a
    pair wandering near one line does not flicker between states. Two latents that carry one
    feature (a crosscoder's duplicates) wander well below ``same_cosine`` where one of them mixes in
    another feature at a snapshot, but not down to 0.5, which keeps that from reading as a split (benchmarks/README.md,
    "Is an emergence real?")."""
    successor_cosine: float = 0.7
    """A fading latent's last present rows and an emerging latent's first at or above this cosine
    are one direction handed over; the latents on either side of a succession whose rows lie this
    close count as one direction (so a handoff between duplicates is not read as a split or a
    merge: JumpReLU's duplicates of one planted feature lie under ``same_cosine`` but above this
    line, a planted split's children far below it; benchmarks/README.md, "Is an emergence real?")."""
    successor_window: int = 1
    """An emergence at most this many snapshots from the fade counts as its successor, and the two
    may be present together at this many snapshots at most (a latent present beside its
    would-be successor for longer is a partner or a duplicate, not a predecessor)."""
    max_shared: int = 6
    """At most this many other present latents share a concept's direction (its duplicates): where
    more lie at the hold line or closer to either latent's row at the snapshot where a pair is
    together, that direction is a crowd's, not a concept's, and the pair makes no split or merge.
    TopK's auxiliary loss pulls the latents that have not fired toward the same part of the
    residual, so such crowds of rarely firing latents form and later scatter. The line lies between
    the most that share a found event's direction on the planted grid and the fewest in the crowds
    of its false events (benchmarks/README.md, "Is an emergence real?")."""
    min_snapshots: int = 2
    """A state must hold at this many snapshots to count: two latents together (or apart) before
    and apart (together) after an event, and a predecessor and its successor present on either
    side. One snapshot whose rows share a direction across many latents (a snapshot's own
    artifact, as the pico suite has) then makes no event. A succession reads the rows of runs of
    presence this long: a latent's row where it blips on for fewer snapshots (JumpReLU latents
    cross their threshold for one snapshot before they settle) is not its direction, and of the
    ``min_snapshots`` rows at either edge the best pair decides (a JumpReLU latent's first row
    above threshold can still carry the feature it leaves), but for two rows of one snapshot
    where both latents are present: latents that fire together there (a feature fading as a
    partner it fires with is born) mix each other's direction into those rows."""
    birth_splits: bool = True
    """Also read as a split a latent born as another's copy that then leaves it (:func:`~crosslens.analysis.divergence.birth_splits`):
    such a pair is together at one snapshot, too few for a divergence. On the planted grid it finds
    the splits whose second child emerges one snapshot before the split as the parent's copy, and
    adds one false event; reading a latent's rows under the presence line before its birth as well
    found one more split but added false events on ``correlated`` (benchmarks/README.md, "Is an
    emergence real?")."""
    turns: bool = True
    """Also read a succession whose predecessor or successor is a latent present on both sides of the
    handover that turns in one step (:func:`~crosslens.analysis.succession.turn_successions`): the
    crosscoder reusing a latent it had for another direction. On the planted grid it finds a
    JumpReLU handoff the presence rule misses and adds no false event; read without the one-step
    condition, it took the pico demo's rows drifting between snapshots for handovers
    (benchmarks/README.md, "Is an emergence real?")."""
    turn_at_once: bool = True
    """Each latent of a split or merge leaves the row the pair shares (its row where they are
    together) at the first snapshot the pair is apart, turning in one step somewhere on the way
    there, or, where it reaches the new state a snapshot later than its partner, in one step
    there: a latent that drifts off the row a little at a time (as the feature it carries
    drifts, while the pair lingers between the lines) kept the direction, and only its partner
    left; the same of a split by birth's parent (``crosslens.analysis.divergence._left``). On the planted grid every
    planted event found keeps being found, and false events on the families without events go;
    False reads a turn anywhere in the ``min_snapshots`` after the event (benchmarks/README.md,
    "Is an emergence real?")."""
    leave_for_good: bool = True
    """A latent leaves the row a split's (a merge's) pair shares only where, among the
    ``min_snapshots`` after the split (before the merge), none of its present rows after the first
    under the hold line from that row is back over it: a latent back at the line within them dipped
    off the row for a snapshot and kept it, and only its partner left (TopK reusing a duplicate for a feature born there while the other dips with
    it). On the planted grid every planted split found is kept and two false events go
    (benchmarks/README.md, "Is an emergence real?"); False reads one row of those under the line as
    leaving."""
    turn_balance: float = 0.5
    """Both latents of a split (a merge) turn alike: the one that turns less, from its row where
    the pair is together to its farthest present row among the ``min_snapshots`` apart, turns at
    least this share of its partner's angle. One concept becoming two moves both latents; a
    latent that turns less than half as far as its partner kept its concept while the partner
    changed what it carries (JumpReLU reusing a duplicate for a weak feature that steps up). On
    the planted grid the planted splits and merges found turn 0.6 of their partner's angle or more,
    a false split 0.39 (benchmarks/README.md, "Is an emergence real?"); 0 reads any two latents
    that both leave the row."""
    steady_successions: bool = True
    """A succession's latents hand over (take on) a direction they held: a fading latent whose
    last ``min_snapshots`` rows of presence, or an emerging latent whose first ones, turn in one
    step between them (:func:`~crosslens.analysis.succession.turned_rows`) carried the direction
    read there for fewer than ``min_snapshots`` and hands nothing over. On the planted grid every
    planted handoff found is kept, and a false one goes, of a JumpReLU latent that turned from one
    feature to duplicate another a snapshot before it faded (benchmarks/README.md, "Is an
    emergence real?")."""
    held_by_activations: bool = True
    """Where latent scaling has read activations (:func:`lineage_of` given its presence), keep an
    event only where the activations hold its latents on their sides of it: present by latent
    scaling at each of the ``min_snapshots`` snapshots before it (a latent before) and from it on
    (a latent after). A divergence needs two latents held on both sides, a succession one on each
    side. The others are read from decoder rows that carry nothing the activations show (a latent
    whose row points at a feature on snapshots where it explains none of it) and are set aside
    (:attr:`Lineage.set_aside`). On the planted grid every planted event found is held, and most of the
    false events go (benchmarks/README.md, "Is an emergence real?"). A held event lists only the
    latents the activations hold at some snapshot: one they hold at none (a TopK latent whose rows
    ride along a split it never fires for) moves nothing of the data, on either side."""
    own_share: float = 0.5
    """Where latent scaling has read activations (:func:`lineage_of` given its activation share), a
    split's children at each of the ``min_snapshots`` snapshots from it on, and a merge's latents at
    each before it, must each have an activation amplitude of at least this share of its error
    amplitude (:attr:`~crosslens.analysis.scaling.LatentScaling.activation_share`): the activations
    lie along its row, not only the error the other latents leave. A divergence needs two such
    latents, or it is set aside (:attr:`Lineage.set_aside`). TopK makes latents that fire beside a
    partner to correct it, their rows turned against the partner's, when the partner takes on a
    feature born later; the pair reads as a split whose second child carries no concept. On the
    planted grid the children of every planted split found hold 0.66 or more, the false splits' 0.46
    or less (benchmarks/README.md, "Is an emergence real?")."""
    compositions: bool = True
    """Where the latents' firing together was read (:func:`lineage_of` given a
    :class:`~crosslens.analysis.composition.CoFiring`), also read a split whose children are the
    parent's row and its sums with latents born at the split that fire with it
    (:func:`~crosslens.analysis.composition.composition_splits`). TopK's fixed count of active
    latents makes such splits: the parent's latent turns, and latents born at the split, each
    along a child less the parent's row, fire with it on that child's tokens. On the planted
    grid it finds the three planted splits TopK carried so and no rule of rows read, and adds no
    false event (benchmarks/README.md, "Is an emergence real?")."""
    cofire_share: float = 0.5
    """A latent born at a split composes a child with the parent's latent where it fires with the
    parent's on at least this share of the tokens it fires on: most of its firing is the parent's
    concept refined, not a concept of its own."""
    chunk_size: int = 4096
    """Latents whose cosines with all others are computed at once."""

    @property
    def hold_cosine(self) -> float:
        """The line two latents that reached ``same_cosine`` stay together above."""
        return self.same_cosine - self.hold_margin

    def __post_init__(self) -> None:
        if self.n_relatives < 1:
            raise ValueError(f"n_relatives={self.n_relatives}: keep at least 1 relative.")
        if not -1.0 <= self.apart_cosine < self.same_cosine <= 1.0:
            raise ValueError(
                f"apart_cosine={self.apart_cosine}, same_cosine={self.same_cosine}: need -1 <= apart < same <= 1."
            )
        if not 0.0 <= self.hold_margin < self.same_cosine - self.apart_cosine:
            raise ValueError(
                f"hold_margin={self.hold_margin}: need 0 <= margin < same_cosine - apart_cosine "
                f"({self.same_cosine} - {self.apart_cosine}), so the hold line stays above the apart line."
            )
        if self.min_snapshots < 1:
            raise ValueError(f"min_snapshots={self.min_snapshots}: a state holds at 1 snapshot or more.")
        if self.max_shared < 1:
            raise ValueError(
                f"max_shared={self.max_shared}: a concept's direction is shared by 1 other latent or more."
            )
        if not 0.0 < self.cofire_share <= 1.0:
            raise ValueError(f"cofire_share={self.cofire_share}: a share of a latent's firing tokens, in (0, 1].")
        if not 0.0 <= self.turn_balance <= 1.0:
            raise ValueError(f"turn_balance={self.turn_balance}: a share of the partner's turn, in [0, 1].")
        if self.own_share < 0.0:
            raise ValueError(f"own_share={self.own_share}: a share of the error amplitude is 0 or more.")
        if not -1.0 <= self.successor_cosine <= 1.0 or self.successor_window < 0:
            raise ValueError("successor_cosine is a cosine in [-1, 1] and successor_window >= 0 snapshots.")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be >= 1.")


@dataclass(frozen=True)
class LineageEvent:
    """A split, merge or handoff at one snapshot."""

    kind: str
    """One of :data:`EVENT_KINDS`."""
    snapshot: int
    """The first snapshot of the new state: where the latents are first apart (split), first
    together (merge), or where the successor emerges (succession)."""
    before: tuple[int, ...]
    """Latents carrying the concept before (for a divergence, the coinciding latents)."""
    after: tuple[int, ...]
    """Latents carrying it from ``snapshot`` on."""
    cosine: float
    """The cosine that decided it: between the latents at ``snapshot`` (divergence, convergence),
    or between the predecessor's last row and the successor's first (succession, the largest)."""
    how: str
    """``divergence`` (latents present throughout that separate or come together), ``succession``
    (latents that fade as others emerge), ``turn`` (a succession whose other side is a latent
    present throughout that turns) or ``composition`` (a split whose children are sums of rows)."""
    composed: tuple[Composed, ...] = ()
    """A split by composition's children, each as ``(latent, weight)`` terms whose weighted decoder
    rows sum to its direction (:func:`~crosslens.analysis.composition.composed_rows`; a child that
    is the parent's row alone has weight 1); empty for every other event."""

    @property
    def latents(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.before) | set(self.after)))

    @property
    def order(self) -> tuple[int, int, tuple[int, ...]]:
        """Where it sorts among a lineage's events: by snapshot, then kind, then latents."""
        return (self.snapshot, EVENT_KINDS.index(self.kind), self.latents)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "snapshot": self.snapshot,
            "before": list(self.before),
            "after": list(self.after),
            "cosine": self.cosine,
            "how": self.how,
            **({"composed": [[[j, w] for j, w in child] for child in self.composed]} if self.composed else {}),
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> LineageEvent:
        return cls(
            kind=str(entry["kind"]),
            snapshot=int(entry["snapshot"]),
            before=tuple(int(x) for x in entry["before"]),
            after=tuple(int(x) for x in entry["after"]),
            cosine=float(entry["cosine"]),
            how=str(entry["how"]),
            composed=tuple(tuple((int(j), float(w)) for j, w in child) for child in entry.get("composed", ())),
        )


@dataclass(frozen=True)
class Lineage:
    """Relatives of every latent at every snapshot and the lineage events (:func:`lineage`)."""

    relatives: Int[torch.Tensor, "d_sae n_snapshots n_relatives"]
    """Nearest present latents by decoder cosine; -1 where the latent is absent or has fewer."""
    relative_cosine: Float[torch.Tensor, "d_sae n_snapshots n_relatives"]
    """Their cosines (0 where ``relatives`` is -1)."""
    events: list[LineageEvent] = field(default_factory=list)
    """Every event, by snapshot, then kind, then first latent."""
    set_aside: list[LineageEvent] = field(default_factory=list)
    """Events read from the decoder rows that the activations do not hold
    (:attr:`LineageConfig.held_by_activations`), in the same order; empty where no activations were read."""

    def counts(self) -> dict[str, int]:
        """Events per kind."""
        return {kind: sum(e.kind == kind for e in self.events) for kind in EVENT_KINDS}

    def events_of(self, latent: int) -> list[LineageEvent]:
        return [e for e in self.events if latent in e.latents]

    def families(self) -> list[list[int]]:
        """Latents joined by events (connected components), the largest first."""
        edges = [(e.latents[0], other, 0.0) for e in self.events for other in e.latents]
        return sorted((list(group) for group, _ in components(edges)), key=lambda g: (-len(g), g[0]))


# --------------------------------------------------------------------------- events
def _joined(found: list[tuple[str, int, int, int, float]]) -> list[LineageEvent]:
    """Pair events of one kind at one snapshot joined into one event per connected group."""
    groups: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    for kind, at, a, b, cosine in found:
        groups.setdefault((kind, at), []).append((a, b, cosine))
    events = []
    for (kind, at), edges in groups.items():
        for component, cosine in components(edges):
            events.append(LineageEvent(kind, at, component, component, round(cosine, 6), "divergence"))
    return events


def lineage(
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    present_FS: torch.Tensor,
    emergence_F: torch.Tensor,
    fade_F: torch.Tensor,
    live_F: torch.Tensor,
    config: LineageConfig | None = None,
    scaled_present_FS: torch.Tensor | None = None,
    activation_share_FS: torch.Tensor | None = None,
    cofiring: CoFiring | None = None,
) -> Lineage:
    """Relatives and lineage events of the live latents (see the module docstring). ``present_FS``,
    ``emergence_F``, ``fade_F`` and ``live_F`` come from the evolution analysis
    (:func:`lineage_of`); ``scaled_present_FS``, where given, is latent scaling's presence, which
    sets aside the events the activations do not hold (:func:`held_by_activations`), and
    ``activation_share_FS`` its activation share, which sets aside the divergences whose apart
    latents lie along the error alone (:attr:`LineageConfig.own_share`); ``cofiring``, where
    given, the latents' firing together, which splits by composition read
    (:attr:`LineageConfig.compositions`)."""
    config = config or LineageConfig()
    if W_dec_FSD.ndim != 3:
        raise ValueError(f"W_dec_FSD has shape {list(W_dec_FSD.shape)}; a decoder is [d_sae, n_snapshots, d_in]")
    F, S = W_dec_FSD.shape[:2]
    given = {"present_FS": present_FS, "emergence_F": emergence_F, "fade_F": fade_F, "live_F": live_F}
    for name, value in {
        **given,
        "scaled_present_FS": scaled_present_FS,
        "activation_share_FS": activation_share_FS,
    }.items():
        if value is not None and tuple(value.shape) != ((F, S) if name.endswith("FS") else (F,)):
            fix = {
                "scaled_present_FS": "this crosscoder's EmergenceCheck.present",
                "activation_share_FS": "this crosscoder's LatentScaling.activation_share",
            }.get(name, "the analysis's own")
            raise ValueError(
                f"{name} has shape {list(value.shape)}, the decoder {[F, S]} (latents, snapshots): pass {fix} "
                "(lineage_of reads them from an EvolutionAnalysis)"
            )
    unit_FSD = unit_rows(W_dec_FSD)
    present_FS = present_FS.bool() & live_F.bool()[:, None].to(present_FS.device)
    relatives, cosines = nearest_relatives(unit_FSD, present_FS, config.n_relatives, config.chunk_size)
    unit_FSD, present_FS = unit_FSD.cpu(), present_FS.cpu()  # the pairs' work below runs on the CPU
    held_FS = held_presence(present_FS, config.min_snapshots)  # runs of presence, read by three rules
    turned_FS = turned_rows(unit_FSD, present_FS, config.hold_cosine)  # one-step turns, read by three rules
    found = divergence_pairs(unit_FSD, present_FS, relatives, cosines, config, turned_FS)
    if config.birth_splits:
        seen = {(a, b) for _, _, a, b, _ in found}
        found += birth_splits(unit_FSD, present_FS, held_FS, relatives, cosines, config, turned_FS, seen)
    events = _joined(found)
    if config.compositions and cofiring is not None:
        composed = composition_splits(W_dec_FSD.float().cpu(), present_FS, turned_FS, cofiring.cpu(), config)
        events += [LineageEvent(*e[:6], composed=e[6]) for e in composed]
    successions = succession_events(
        unit_FSD, present_FS, held_FS, emergence_F.cpu(), fade_F.cpu(), live_F.cpu().bool(), config, turned_FS
    )
    if config.turns:
        joined = {(at, a, b) for _, at, a, b, _ in found}
        joined |= {
            (at, min(a, b), max(a, b)) for _, at, before, after, _, _ in successions for a in before for b in after
        }
        successions += turn_successions(unit_FSD, present_FS, held_FS, config, joined, turned_FS)
    events += [LineageEvent(*e) for e in successions]
    events.sort(key=lambda e: e.order)
    held, somewhere_F = [True] * len(events), None
    if config.held_by_activations and (scaled_present_FS is not None or activation_share_FS is not None):
        present_FS = None if scaled_present_FS is None else scaled_present_FS.bool().cpu()
        own_FS = None if activation_share_FS is None else activation_share_FS.cpu() >= config.own_share
        held = held_by_activations(events, present_FS, config.min_snapshots, own_FS)
        somewhere_F = None if present_FS is None else present_FS.any(1)
    events, held = _without_split_twice(events, held)
    kept = [e if somewhere_F is None else _held_somewhere(e, somewhere_F) for e, ok in zip(events, held) if ok]
    return Lineage(
        relatives=relatives,
        relative_cosine=cosines,
        events=kept,
        set_aside=[e for e, ok in zip(events, held) if not ok],
    )


def _without_split_twice(events: list[LineageEvent], held: list[bool]) -> tuple[list[LineageEvent], list[bool]]:
    """``events`` and their ``held`` flags without the splits by composition of a parent that a held
    split read from rows (divergence, birth) already splits within a snapshot of it: one split,
    read once."""
    read = {
        (e.snapshot + d, j)
        for e, ok in zip(events, held)
        if ok and e.kind == "split" and e.how != "composition"
        for j in e.latents
        for d in (-1, 0, 1)
    }
    keep = [e.how != "composition" or (e.snapshot, e.before[0]) not in read for e in events]
    return [e for e, k in zip(events, keep) if k], [h for h, k in zip(held, keep) if k]


def _held_somewhere(event: LineageEvent, somewhere_F: torch.Tensor) -> LineageEvent:
    """``event`` without the latents the activations hold at no snapshot: a held event keeps two on
    each side of a divergence and one on each side of a succession, all of them held somewhere. A
    split by composition keeps its latents: its children are their sums, and a newborn latent along
    a child less the parent's row can lie along little of the activations by itself."""
    if event.composed:
        return event
    before = tuple(j for j in event.before if bool(somewhere_F[j]))
    after = tuple(j for j in event.after if bool(somewhere_F[j]))
    return event if (before, after) == (event.before, event.after) else replace(event, before=before, after=after)


def held_by_activations(
    events: Sequence[LineageEvent],
    scaled_present_FS: torch.Tensor | None,
    n_snapshots: int,
    own_FS: torch.Tensor | None = None,
) -> list[bool]:
    """Whether the activations hold each event: its latents before present by latent scaling
    (``scaled_present_FS``) at each of the ``n_snapshots`` snapshots before it, its latents after
    at each from it on; two latents held on both sides for a divergence, one on each side for a
    succession (:attr:`LineageConfig.held_by_activations`). Where ``own_FS`` is given (where the
    activations lie along each latent's row, :attr:`LineageConfig.own_share`), a divergence's two
    latents must also lie so on the side where they are apart: after a split, before a merge. Either
    table may be None (not read)."""
    if scaled_present_FS is None and own_FS is None:
        return [True] * len(events)
    if scaled_present_FS is None:
        scaled_present_FS = torch.ones_like(own_FS, dtype=torch.bool)
    S = scaled_present_FS.shape[1]

    def held(latents: Sequence[int], lo: int, hi: int, table: torch.Tensor) -> set[int]:
        return {j for j in latents if bool(table[j, max(0, lo) : min(S, hi)].all())}

    out = []
    for e in events:
        before = held(e.before, e.snapshot - n_snapshots, e.snapshot, scaled_present_FS)
        after = held(e.after, e.snapshot, e.snapshot + n_snapshots, scaled_present_FS)
        if e.how != "divergence":
            out.append(bool(before) and bool(after))
            continue
        both = before & after
        if own_FS is not None:
            lo, hi = (
                (e.snapshot, e.snapshot + n_snapshots) if e.kind == "split" else (e.snapshot - n_snapshots, e.snapshot)
            )
            both &= held(e.latents, lo, hi, own_FS)
        out.append(len(both) >= 2)
    return out


def lineage_of(
    analysis: Any,
    config: LineageConfig | None = None,
    device: str | torch.device | None = None,
    scaled_present_FS: torch.Tensor | None = None,
    activation_share_FS: torch.Tensor | None = None,
    cofiring: CoFiring | None = None,
) -> Lineage:
    """:func:`lineage` of an :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`
    (its training-space decoder, presence and lifetimes); ``device`` is where the cosines are
    computed (a GPU speeds up wide dictionaries); ``scaled_present_FS``, where latent scaling
    calls each latent present (:attr:`~crosslens.analysis.emergence_check.EmergenceCheck.present`),
    sets aside the events the activations do not hold, and ``activation_share_FS`` (latent scaling's
    :attr:`~crosslens.analysis.scaling.LatentScaling.activation_share`) the divergences whose apart
    latents lie along the error alone, and ``cofiring`` (counted beside latent scaling for
    :func:`~crosslens.analysis.composition.composition_pairs`) reads splits by composition."""
    if not hasattr(analysis, "lifetimes"):
        raise TypeError(
            f"lineage_of reads an EvolutionAnalysis (EvolutionAnalysis.from_crosscoder), not {type(analysis).__name__}"
        )
    if config is not None and not isinstance(config, LineageConfig):
        raise TypeError(
            f"lineage_of's config is a LineageConfig, not {type(config).__name__} (an emergence check's presence "
            "goes in scaled_present_FS=check.present)"
        )
    W_FSD = analysis.W_dec if device is None else analysis.W_dec.to(device)
    lt = analysis.lifetimes
    return lineage(
        W_FSD,
        analysis.present,
        lt.emergence,
        lt.fade,
        ~lt.dead,
        config,
        scaled_present_FS,
        activation_share_FS,
        cofiring,
    )


def strongest_at_first_snapshot(event: LineageEvent, peak_F: torch.Tensor) -> bool:
    """Whether every latent of ``event`` has its largest decoder norm at the first snapshot
    (``peak_F``: each latent's peak snapshot, the evolution analysis's ``lifetimes.peak``; the
    browser, which runs without torch, reads the same from the database's ``peak_snapshot``). Where
    the first snapshot is a suite's step 0, those latents are strongest in the untrained model, where
    a latent carries a single token's direction, and the event follows tokens' directions as training
    reorganises them (on the pico demo, words of one grammar class coming together)."""
    return all(int(peak_F[i]) == 0 for i in event.latents)


def first_snapshot_events(events: Sequence[LineageEvent], peak_F: torch.Tensor) -> dict[str, int]:
    """Events per kind :func:`strongest_at_first_snapshot`."""
    first = [e for e in events if strongest_at_first_snapshot(e, peak_F)]
    return {kind: sum(e.kind == kind for e in first) for kind in EVENT_KINDS}


def counts_text(counts: dict[str, int], last: str = ", ") -> str:
    """Events per kind as a phrase, a noun singular where its count is 1: "1 split, 39 merges,
    5 handoffs"; ``last`` joins the final two (" and " in prose)."""
    parts = [f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in counts.items()]
    return last.join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else "".join(parts)


def event_rows(events: Sequence[LineageEvent], steps: Sequence[int]) -> list[dict[str, Any]]:
    """Events as table rows, with the snapshot's training step."""
    return [
        {
            "kind": e.kind,
            "step": steps[e.snapshot],
            "before": ", ".join(map(str, e.before)),
            "after": ", ".join(map(str, e.after)),
            "cosine": round(e.cosine, 3),
            "how": e.how,
        }
        for e in events
    ]
