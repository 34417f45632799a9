"""When does each crosscoder feature exist? Emergence, peak, fade and a class per feature.

A multi-snapshot crosscoder keeps one decoder row per snapshot, ``W_dec[i, s]``. The
sparsity penalty weights each feature by its decoder norms, so a snapshot whose
activations do not contain feature ``i`` gets ``||W_dec[i, s]|| ~ 0``. The norm table
``[d_sae, n_snapshots]`` is therefore a timeline of every feature (Ge et al. 2025).

Everything here is a pure function of that table;
:class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis` bundles the table with
the snapshots' training steps and the per-feature results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

FEATURE_CLASSES: tuple[str, ...] = ("initialization", "persistent", "transient", "dead")
"""The classes :func:`classify_features` assigns, in the order reports list them.

- ``initialization``: present from snapshot 0 (step 0, when the suite starts there).
  Origin wins over fate: an initialization feature that later fades keeps this class and
  gets a fade step.
- ``persistent``: emerges after snapshot 0 and is still present at the last snapshot.
- ``transient``: emerges after snapshot 0, then fades and stays faded to the end.
- ``dead``: never carries weight at any snapshot (``EvolutionConfig.dead_threshold``), was
  never trained (every snapshot still has the same initial norm,
  ``EvolutionConfig.untouched_rtol``), or, when firing frequencies are given, (almost)
  never fires (``EvolutionConfig.dead_frequency``). Latents that stop firing early in
  training keep whatever decoder they had by then, so only the firing test catches them:
  pass frequencies whenever activations are at hand.

``persistent`` and ``transient`` together are the *emergent* features.

Orthogonal to the class, a live feature may *dip and recover*: present, then absent for a
stretch, then present again (see :data:`PRESENCE_MODES`, :attr:`Lifetimes.dip`).
"""

PRESENCE_MODES: tuple[str, ...] = ("robust", "decoder_norm")
"""How :func:`feature_lifetimes` reads presence (``EvolutionConfig.presence``).

- ``decoder_norm`` (after Ge et al. 2025, who read presence from decoder norms; the paper's
  summary gives no threshold or rule, so the two here are crosslens's): present where the
  decoder norm is at least ``emergence_threshold`` of the feature's peak; a feature emerges
  where its *last* on-period starts, so a feature that dips and comes back "emerges" at the
  return.
- ``robust`` (default): a return after a dip is not an emergence. A feature emerges
  where its *first* on-period starts; a later off-stretch followed by a return is
  recorded as a dip (:attr:`Lifetimes.dip`, :attr:`Lifetimes.recovery`), the
  *dip-and-recover* pattern. When per-snapshot firing rates are given, presence needs
  the decoder norm *and* firing: a snapshot where the feature fires on less than
  ``firing_floor`` of its peak per-snapshot rate is absent whatever its norm (a JumpReLU
  row behind a gate that never opens there carries norm but no signal).

Why not normalise by each snapshot's total dictionary mass (a feature's *share*), which
would not dip when every feature of a snapshot shrinks at once? Early snapshots hold few
features, so a share inflates any small norm there and turns growing features into
initialization ones; the first-on-period rule handles such whole-snapshot dips without
that bias, and :meth:`EvolutionAnalysis.snapshot_table` reports them (``dipping``).
"""

NO_STEP = -1
"""Index used in the emergence/fade index tensors for "never" (no emergence, no fade)."""


@dataclass(frozen=True)
class EvolutionConfig:
    """Thresholds that turn a feature's decoder-norm timeline into emergence/fade/class.

    Thresholds act on the *normalised* timeline: each feature's norms divided by its own
    maximum over snapshots, so 1.0 is the feature's peak.
    """

    emergence_threshold: float = 0.3
    """A feature is present at a snapshot once its normalised norm reaches this. Its
    emergence snapshot is the first one from which it stays present (never dropping below
    ``fade_threshold``) until it fades or training ends. 0.3 of the peak separates the
    near-zero norms the sparsity penalty leaves on absent snapshots from a real but still
    growing feature: over JumpReLU crosscoders trained at their defaults on the planted
    generators, few of a recovered feature's norms where its planted feature is absent reach
    it, and few of those where it is present fall under it (``planted_scores``'
    ``absent_above_threshold`` and ``present_below_threshold``; benchmarks/README.md, "Planted
    features recovered"). A row that keeps a small norm at snapshot 0 is dated by this line,
    and by firing where rates are given (``firing_floor``)."""

    fade_threshold: float = 0.2
    """A present feature turns off at a snapshot where its normalised norm falls below this
    value, and has faded there where it does not climb back to ``emergence_threshold`` before
    the end: a norm that returns only to between the two lines stays faded. Must be <=
    ``emergence_threshold``: the gap between the two is a hysteresis band, so a present
    feature wobbling just under the emergence line is not called faded."""

    dead_threshold: float = 0.05
    """A feature is ``dead`` when its largest raw decoder norm over snapshots is below this
    fraction of the median (over features) largest norm. Dead features get no emergence,
    peak or fade and are left out of emergence statistics."""

    untouched_rtol: float = 1e-4
    """A feature whose decoder norms agree at every snapshot to this relative tolerance is
    ``dead``: crosscoders start every row at the same norm, and only a latent that never
    fired (never got a gradient) keeps them equal. 0 disables this test; it needs at
    least 2 snapshots."""
    dead_frequency: float = 0.0
    """When firing frequencies are given, features firing on at most this fraction of the
    sampled tokens are ``dead`` too (0: dead means never fired on the sample)."""
    presence: str = "robust"
    """``robust`` or ``decoder_norm`` (after Ge et al.); see :data:`PRESENCE_MODES`."""
    firing_floor: float = 0.1
    """Robust mode with per-snapshot firing: a snapshot where the feature fires on less
    than this fraction of its peak per-snapshot firing rate counts as absent."""

    def __post_init__(self) -> None:
        if not 0.0 < self.emergence_threshold <= 1.0:
            raise ValueError(
                f"emergence_threshold={self.emergence_threshold} is a fraction of each "
                "feature's peak norm: pick a value in (0, 1], e.g. 0.3."
            )
        if not 0.0 < self.fade_threshold <= self.emergence_threshold:
            raise ValueError(
                f"fade_threshold={self.fade_threshold} must be in (0, emergence_threshold="
                f"{self.emergence_threshold}]; lower it, or raise emergence_threshold."
            )
        if not 0.0 <= self.dead_threshold < 1.0:
            raise ValueError(
                f"dead_threshold={self.dead_threshold} is a fraction of the median peak "
                "norm: pick a value in [0, 1), e.g. 0.05 (0 disables the norm test)."
            )
        if self.untouched_rtol < 0:
            raise ValueError(f"untouched_rtol={self.untouched_rtol} must be >= 0 (0 disables the test).")
        if not 0.0 <= self.dead_frequency < 1.0:
            raise ValueError(
                f"dead_frequency={self.dead_frequency} is a fraction of tokens: pick a value in [0, 1), e.g. 0."
            )
        if self.presence not in PRESENCE_MODES:
            raise ValueError(f"presence={self.presence!r}: choose one of {PRESENCE_MODES}.")
        if not 0.0 <= self.firing_floor < 1.0:
            raise ValueError(
                f"firing_floor={self.firing_floor} is a fraction of the peak firing rate: pick a value in [0, 1)."
            )


# ---------------------------------------------------------------------------
# Pure tensor functions
# ---------------------------------------------------------------------------
def decoder_norm_table(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"],
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """``||W_dec[i, s]||`` for every feature and snapshot."""
    if W_dec.ndim != 3:
        raise ValueError(
            f"W_dec has shape {tuple(W_dec.shape)}; expected [d_sae, n_snapshots, d_in] "
            "(the crosscoder parameter layout). Pass crosscoder.W_dec."
        )
    return W_dec.detach().float().norm(dim=-1)


def normalize_norms(
    norms: Float[torch.Tensor, "d_sae n_snapshots"],
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """Divide each feature's norms by its maximum over snapshots (all-zero rows stay 0)."""
    _check_norms(norms)
    peak_F1 = norms.amax(dim=1, keepdim=True)
    return torch.where(peak_F1 > 0, norms / peak_F1.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)


def dead_features(
    norms: Float[torch.Tensor, "d_sae n_snapshots"],
    dead_threshold: float = EvolutionConfig.dead_threshold,
    untouched_rtol: float = EvolutionConfig.untouched_rtol,
) -> torch.Tensor:
    """Boolean ``[d_sae]``: features whose peak norm is below ``dead_threshold`` x median peak,
    or whose norms are equal at every snapshot to ``untouched_rtol`` (never trained)."""
    _check_norms(norms)
    peak_F = norms.amax(dim=1)
    floor = dead_threshold * peak_F.median()
    dead_F = (peak_F < floor) | (peak_F <= 0)
    if untouched_rtol > 0 and norms.shape[1] > 1:
        dead_F |= (peak_F - norms.amin(dim=1)) <= untouched_rtol * peak_F
    return dead_F


def presence_strength(
    norms: Float[torch.Tensor, "d_sae n_snapshots"],
    config: EvolutionConfig | None = None,
    snapshot_frequency: Float[torch.Tensor, "d_sae n_snapshots"] | None = None,
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """The timeline presence is read from, on the scale of each feature's peak (1.0): the
    normalised decoder norm, in ``robust`` mode zeroed where the feature's per-snapshot
    firing rate (``snapshot_frequency``, optional) is below ``firing_floor`` of its peak
    rate; see :data:`PRESENCE_MODES`."""
    config = config or EvolutionConfig()
    _check_norms(norms)
    strength_FS = normalize_norms(norms)
    if config.presence == "decoder_norm" or snapshot_frequency is None:
        return strength_FS
    snapshot_frequency = torch.as_tensor(snapshot_frequency, device=norms.device).to(norms.dtype)
    if snapshot_frequency.shape != norms.shape:
        raise ValueError(
            f"snapshot_frequency has shape {tuple(snapshot_frequency.shape)} for norms of shape "
            f"{tuple(norms.shape)}; pass one firing rate per feature and snapshot "
            "(crosslens.analysis.probes.firing_frequency with per_snapshot=True)."
        )
    firing_FS = normalize_norms(snapshot_frequency)
    return torch.where(firing_FS >= config.firing_floor, strength_FS, 0.0)


@dataclass(frozen=True)
class Lifetimes:
    """Per-feature snapshot indices (``NO_STEP`` = never) from :func:`feature_lifetimes`."""

    emergence: Int[torch.Tensor, " d_sae"]
    """Where the feature's first on-period starts (``robust``, the default), or its last one
    (``decoder_norm``): a feature that dips and recovers emerges before the dip in robust mode,
    at the return in decoder_norm mode (see :data:`PRESENCE_MODES`)."""
    peak: Int[torch.Tensor, " d_sae"]
    """Snapshot of the largest decoder norm (first one on ties)."""
    fade: Int[torch.Tensor, " d_sae"]
    """Where the feature's last on-period ends: the first snapshot its normalised norm is below
    the fade threshold with no return to the emergence threshold after it (it may come back to
    between the two); ``NO_STEP`` when the feature is still present at the last snapshot."""
    dead: torch.Tensor
    """Boolean: dead features (all three indices are ``NO_STEP`` for them)."""
    dip: Int[torch.Tensor, " d_sae"] | None = None
    """First snapshot of the first absent stretch that the feature later recovers from
    (present before, absent from here, present again at ``recovery``); ``NO_STEP`` if none."""
    recovery: Int[torch.Tensor, " d_sae"] | None = None
    """Snapshot where the feature is present again after ``dip``; ``NO_STEP`` if no dip."""

    @property
    def dip_and_recover(self) -> torch.Tensor:
        """Boolean ``[d_sae]``: features that dip and recover."""
        assert self.dip is not None
        return self.dip != NO_STEP


def feature_lifetimes(
    norms: Float[torch.Tensor, "d_sae n_snapshots"],
    config: EvolutionConfig | None = None,
    frequency: Float[torch.Tensor, " d_sae"] | None = None,
    snapshot_frequency: Float[torch.Tensor, "d_sae n_snapshots"] | None = None,
) -> Lifetimes:
    """Emergence, peak, fade and dip snapshot of every feature, as snapshot indices.

    A feature's presence timeline ``n`` (:func:`presence_strength`) is read with
    hysteresis: it turns *on* at a snapshot with ``n >= emergence_threshold`` and *off* at
    a snapshot with ``n < fade_threshold``. Its fade is where its last on-period ends
    (none if it lasts to the final snapshot); a feature that dips off and wanders back
    only between the two thresholds has faded at the dip. Its emergence is where its
    first on-period starts (``robust``) or where its last one starts (``decoder_norm``,
    Ge et al.: a feature that appears, vanishes and comes back "emerges" when it comes back
    for good). Either way an off-stretch between two on-periods is recorded as a dip.

    ``frequency`` (optional, ``[d_sae]``): fraction of sampled tokens on which each feature
    fires; features at or below ``config.dead_frequency`` count as dead.
    ``snapshot_frequency`` (optional, ``[d_sae, n_snapshots]``): per-snapshot firing rates
    (robust mode only, see :data:`PRESENCE_MODES`).
    """
    config = config or EvolutionConfig()
    _check_norms(norms)
    n_snapshots = norms.shape[1]
    normalized_FS = normalize_norms(norms)
    dead_F = dead_features(norms, config.dead_threshold, config.untouched_rtol)
    if frequency is not None:
        frequency = torch.as_tensor(frequency, device=norms.device).flatten()
        if frequency.shape[0] != norms.shape[0]:
            raise ValueError(
                f"frequency has {frequency.shape[0]} entries for {norms.shape[0]} features; pass "
                "one firing frequency per feature (crosslens.analysis.probes.firing_frequency)."
            )
        dead_F = dead_F | (frequency <= config.dead_frequency)
    strength_FS = presence_strength(norms, config, snapshot_frequency)
    snapshot_idx_1S = torch.arange(n_snapshots, device=norms.device)[None, :]

    # Walk the snapshots once, all features at a time (S is small, d_sae may be large).
    d_sae = norms.shape[0]
    on_F = torch.zeros(d_sae, dtype=torch.bool, device=norms.device)
    full = torch.full((d_sae,), n_snapshots, dtype=torch.long, device=norms.device)
    first_on_F, last_on_F, fade_F, dip_F, recovery_F = (
        full.clone(),
        full.clone(),
        full.clone(),
        full.clone(),
        full.clone(),
    )
    for s in range(n_snapshots):
        n_F = strength_FS[:, s]
        turns_on_F = ~on_F & (n_F >= config.emergence_threshold)
        turns_off_F = on_F & (n_F < config.fade_threshold)
        # A turn-on after an earlier off ends a dip; the first such dip is kept.
        returns_F = turns_on_F & (fade_F < n_snapshots) & (dip_F == n_snapshots)
        dip_F = torch.where(returns_F, fade_F, dip_F)
        recovery_F = torch.where(returns_F, s, recovery_F)
        first_on_F = torch.where(turns_on_F & (first_on_F == n_snapshots), s, first_on_F)
        last_on_F = torch.where(turns_on_F, s, last_on_F)
        fade_F = torch.where(turns_on_F, n_snapshots, torch.where(turns_off_F, s, fade_F))
        on_F = (on_F | turns_on_F) & ~turns_off_F
    emergence_F = first_on_F if config.presence == "robust" else last_on_F
    # Robust mode can leave a feature absent everywhere (it never fires where it has norm).
    dead_F = dead_F | (first_on_F >= n_snapshots)
    # First snapshot at the maximum, with a float tolerance so equal norms tie.
    at_peak_FS = normalized_FS >= 1.0 - 1e-5
    peak_F = torch.where(at_peak_FS, snapshot_idx_1S, n_snapshots).amin(dim=1)

    fade_F = torch.where(fade_F >= n_snapshots, NO_STEP, fade_F)
    dip_F = torch.where(dip_F >= n_snapshots, NO_STEP, dip_F)
    recovery_F = torch.where(recovery_F >= n_snapshots, NO_STEP, recovery_F)
    never = torch.full_like(emergence_F, NO_STEP)
    return Lifetimes(
        emergence=torch.where(dead_F, never, emergence_F),
        peak=torch.where(dead_F, never, peak_F),
        fade=torch.where(dead_F, never, fade_F),
        dead=dead_F,
        dip=torch.where(dead_F, never, dip_F),
        recovery=torch.where(dead_F, never, recovery_F),
    )


def classify_features(lifetimes: Lifetimes) -> list[str]:
    """One of :data:`FEATURE_CLASSES` per feature (see there for the definitions)."""
    classes = []
    for emergence, fade, dead in zip(lifetimes.emergence.tolist(), lifetimes.fade.tolist(), lifetimes.dead.tolist()):
        if dead:
            classes.append("dead")
        elif emergence == 0:
            classes.append("initialization")
        elif fade == NO_STEP:
            classes.append("persistent")
        else:
            classes.append("transient")
    return classes


def _check_norms(norms: torch.Tensor) -> None:
    if norms.ndim != 2:
        raise ValueError(
            f"norms has shape {tuple(norms.shape)}; expected [d_sae, n_snapshots]. "
            "Build it with decoder_norm_table(W_dec) or crosscoder.decoder_norms()."
        )
    if norms.shape[0] == 0 or norms.shape[1] == 0:
        raise ValueError(f"norms has shape {tuple(norms.shape)}; it needs at least one feature and one snapshot.")
