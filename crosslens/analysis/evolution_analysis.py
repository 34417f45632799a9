"""The bundle a researcher works with: a crosscoder's decoder-norm timeline, the
snapshots' training steps and every per-feature result of :mod:`crosslens.analysis.evolution`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from crosslens.analysis.evolution import (
    FEATURE_CLASSES,
    NO_STEP,
    EvolutionConfig,
    Lifetimes,
    classify_features,
    decoder_norm_table,
    feature_lifetimes,
    normalize_norms,
    presence_strength,
)
from crosslens.analysis.geometry import direction_drift, feature_dimensionality, rel_dec
from crosslens.crosscoders.folding import training_space_decoder

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


@dataclass
class EvolutionAnalysis:
    """Decoder-norm timeline of every feature, with emergence/peak/fade and a class.

    Build with :meth:`from_decoder` (a ``W_dec`` tensor) or :meth:`from_crosscoder`. Indices
    are snapshot indices; the ``*_step`` helpers translate them to training steps.
    """

    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"] = field(repr=False)
    """Decoder weights, detached, float32, on CPU."""
    steps: list[int]
    """Training step of each snapshot (x axis)."""
    tokens_seen: list[int | None]
    """Training tokens seen at each snapshot, ``None`` where the family does not say."""
    config: EvolutionConfig = field(default_factory=EvolutionConfig)
    """Thresholds used for emergence/fade/classes."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance carried from the crosscoder (suite, hook, ...), for the report."""
    frequency: Float[torch.Tensor, " d_sae"] | None = field(default=None, repr=False)
    """Optional firing frequency of each feature on sampled tokens; never-firing features are
    then classed ``dead`` (see :func:`~crosslens.analysis.probes.firing_frequency`)."""
    snapshot_frequency: Float[torch.Tensor, "d_sae n_snapshots"] | None = field(default=None, repr=False)
    """Optional per-snapshot firing rate of each feature (robust presence, see
    :func:`~crosslens.analysis.probes.firing_frequency` with ``per_snapshot=True``)."""
    steps_are_indices: bool = False
    """True when no training steps were known and the snapshot indices stand in for them."""
    emergence: Any = field(default=None, repr=False)
    """The emergence check (latent scaling) and lineage of the crosscoder, where computed
    (:func:`~crosslens.analysis.analyze.analyze_crosscoder` sets it: an
    :class:`~crosslens.analysis.emergence_record.EmergenceResult`)."""
    diffing: Any = field(default=None, repr=False)
    """The model-diffing classes and latent scaling's verdict on them, where the crosscoder reads
    two models (:func:`~crosslens.analysis.analyze.analyze_crosscoder` sets it: a
    :class:`~crosslens.analysis.diffing.DiffingAnalysis`)."""
    norms: Float[torch.Tensor, "d_sae n_snapshots"] = field(init=False, repr=False)
    """Raw decoder norms."""
    normalized: Float[torch.Tensor, "d_sae n_snapshots"] = field(init=False, repr=False)
    """Norms divided by each feature's peak."""
    strength: Float[torch.Tensor, "d_sae n_snapshots"] = field(init=False, repr=False)
    """The timeline presence is read from (:func:`presence_strength`; equals ``normalized``
    in ``decoder_norm`` mode)."""
    lifetimes: Lifetimes = field(init=False, repr=False)
    """Emergence/peak/fade snapshot indices and the dead mask."""
    classes: list[str] = field(init=False, repr=False)
    """One of :data:`FEATURE_CLASSES` per feature."""

    def __post_init__(self) -> None:
        self.W_dec = self.W_dec.detach().float().cpu()
        self.norms = decoder_norm_table(self.W_dec)
        n_snapshots = self.norms.shape[1]
        self.steps = [int(s) for s in self.steps]
        if len(self.steps) != n_snapshots:
            raise ValueError(
                f"steps has {len(self.steps)} entries but W_dec has {n_snapshots} snapshots; "
                "pass one training step per snapshot, in the crosscoder's snapshot order."
            )
        if any(b < a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"steps {self.steps} are not sorted; snapshots must be in training order.")
        self.tokens_seen = list(self.tokens_seen) if self.tokens_seen else [None] * n_snapshots
        if len(self.tokens_seen) != n_snapshots:
            raise ValueError(
                f"tokens_seen has {len(self.tokens_seen)} entries for {n_snapshots} snapshots; "
                "pass one per snapshot (None where unknown) or leave it empty."
            )
        self.normalized = normalize_norms(self.norms)
        if self.frequency is not None:
            self.frequency = torch.as_tensor(self.frequency).detach().float().cpu().flatten()
        if self.snapshot_frequency is not None:
            self.snapshot_frequency = torch.as_tensor(self.snapshot_frequency).detach().float().cpu()
        self.lifetimes = feature_lifetimes(self.norms, self.config, self.frequency, self.snapshot_frequency)
        self.strength = presence_strength(self.norms, self.config, self.snapshot_frequency)
        self.classes = classify_features(self.lifetimes)

    # -- constructors -------------------------------------------------------
    @classmethod
    def from_decoder(
        cls,
        W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"],
        steps: Sequence[int] | None = None,
        tokens_seen: Sequence[int | None] | None = None,
        config: EvolutionConfig | None = None,
        metadata: dict[str, Any] | None = None,
        frequency: Float[torch.Tensor, " d_sae"] | None = None,
        snapshot_frequency: Float[torch.Tensor, "d_sae n_snapshots"] | None = None,
    ) -> EvolutionAnalysis:
        """Analyse a raw decoder tensor; ``steps`` defaults to the snapshot indices."""
        if W_dec.ndim != 3:
            raise ValueError(f"W_dec has shape {tuple(W_dec.shape)}; expected [d_sae, n_snapshots, d_in].")
        return cls(
            W_dec=W_dec,
            steps=list(steps) if steps is not None else list(range(W_dec.shape[1])),
            steps_are_indices=steps is None,
            tokens_seen=list(tokens_seen) if tokens_seen is not None else [],
            config=config or EvolutionConfig(),
            metadata=dict(metadata or {}),
            frequency=frequency,
            snapshot_frequency=snapshot_frequency,
        )

    @classmethod
    def from_crosscoder(
        cls,
        crosscoder: Crosscoder,
        steps: Sequence[int] | None = None,
        tokens_seen: Sequence[int | None] | None = None,
        config: EvolutionConfig | None = None,
        frequency: Float[torch.Tensor, " d_sae"] | None = None,
        snapshot_frequency: Float[torch.Tensor, "d_sae n_snapshots"] | None = None,
    ) -> EvolutionAnalysis:
        """Analyse a trained crosscoder (anything with ``W_dec [F, S, D]``).

        Decoder rows are multiplied by the crosscoder's ``folded_norm_factors`` when it has
        them, so norms match ``crosscoder.decoder_norms()`` (the training space).

        Steps and tokens default to the suite provenance in ``crosscoder.cfg.metadata``
        (``{"suite": {"snapshots": [{"step": ..., "tokens_seen": ...}, ...]}}`` or a top-level
        ``"snapshots"`` list); without either, snapshot indices are used as steps.
        """
        W_dec = getattr(crosscoder, "W_dec", None)
        if W_dec is None:
            raise ValueError(
                f"{type(crosscoder).__name__} has no W_dec; pass a crosslens crosscoder or use "
                "EvolutionAnalysis.from_decoder(W_dec, steps)."
            )
        # Norms are compared in the normalised space the crosscoder was trained in: once
        # per-snapshot normalisation factors are folded into W_dec, its raw norms carry
        # each snapshot's activation scale, which would distort every feature's timeline.
        W_dec = training_space_decoder(crosscoder)
        metadata = metadata_dict(crosscoder)
        snapshots = snapshots_from_metadata(metadata)
        if steps is None and snapshots:
            steps = [int(s["step"]) for s in snapshots]
        if tokens_seen is None and snapshots:
            tokens_seen = [s.get("tokens_seen") for s in snapshots]
        return cls.from_decoder(W_dec, steps, tokens_seen, config, metadata, frequency, snapshot_frequency)

    # -- shape --------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        return self.norms.shape[0]

    @property
    def n_snapshots(self) -> int:
        return self.norms.shape[1]

    # -- per-feature results as steps ----------------------------------------
    def _index_to_step(self, index: int) -> int | None:
        return None if index == NO_STEP else self.steps[index]

    def emergence_step(self, feature: int) -> int | None:
        return self._index_to_step(int(self.lifetimes.emergence[feature]))

    def peak_step(self, feature: int) -> int | None:
        return self._index_to_step(int(self.lifetimes.peak[feature]))

    def fade_step(self, feature: int) -> int | None:
        return self._index_to_step(int(self.lifetimes.fade[feature]))

    @property
    def emergence_steps(self) -> list[int]:
        """Emergence step of every live (non-dead) feature, for histograms."""
        return [self.steps[e] for e in self.lifetimes.emergence.tolist() if e != NO_STEP]

    @property
    def present(self) -> torch.Tensor:
        """Boolean ``[d_sae, n_snapshots]``: live feature whose presence strength
        (:attr:`strength`) is at or above the emergence threshold."""
        return (self.strength >= self.config.emergence_threshold) & ~self.lifetimes.dead[:, None]

    def dip_step(self, feature: int) -> int | None:
        return self._index_to_step(int(self.lifetimes.dip[feature]))

    def recovery_step(self, feature: int) -> int | None:
        return self._index_to_step(int(self.lifetimes.recovery[feature]))

    def dip_and_recover_features(self) -> list[int]:
        """Live features that are present, then absent for a stretch, then present again."""
        return [int(i) for i in torch.nonzero(self.lifetimes.dip_and_recover).flatten()]

    def drift(
        self,
    ) -> tuple[Float[torch.Tensor, "d_sae n_snapshots_minus_1"], Float[torch.Tensor, "d_sae n_snapshots"]]:
        """:func:`~crosslens.analysis.geometry.direction_drift`, NaN wherever the feature is
        absent at either snapshot of the pair (an absent feature's direction is noise)."""
        adjacent_FS, to_final_FS = direction_drift(self.W_dec)
        present_FS = self.present
        adjacent_FS = adjacent_FS.masked_fill(~(present_FS[:, :-1] & present_FS[:, 1:]), torch.nan)
        to_final_FS = to_final_FS.masked_fill(~(present_FS & present_FS[:, -1:]), torch.nan)
        return adjacent_FS, to_final_FS

    def rel_dec(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """One-vs-all RelDec, see :func:`~crosslens.analysis.geometry.rel_dec`."""
        return rel_dec(self.W_dec)

    def dimensionality(
        self,
        include_dead: bool = False,
        chunk_size: int = 4096,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """Per-snapshot feature dimensionality (see
        :func:`~crosslens.analysis.geometry.feature_dimensionality`). Dead features are
        zeroed first unless ``include_dead``: untrained latents are random directions and
        would count as interference. ``device="cuda"`` speeds up wide dictionaries."""
        W_FSD = self.W_dec if include_dead else self.W_dec * ~self.lifetimes.dead[:, None, None]
        if device is not None:
            W_FSD = W_FSD.to(device)
        return feature_dimensionality(W_FSD, chunk_size=chunk_size, progress=progress).cpu()

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.classes)
        return {name: counts.get(name, 0) for name in FEATURE_CLASSES}

    def initialization_words(self) -> str:
        """When the ``initialization`` class's features are known to be present: from random
        initialization (Ge et al.'s meaning) only where the first snapshot is step 0."""
        if self.steps_are_indices:
            return "from the first snapshot (no training steps recorded)"
        if self.steps[0] == 0:
            return "from random initialization (step 0)"
        return f"from the first snapshot, step {self.steps[0]:,} (some may have formed by then)"

    def features_of_class(self, name: str) -> list[int]:
        if name not in FEATURE_CLASSES:
            raise ValueError(f"unknown class {name!r}; choose one of {FEATURE_CLASSES}.")
        return [i for i, c in enumerate(self.classes) if c == name]

    def emergence_order(self) -> list[int]:
        """Live features sorted by emergence, then peak, then fade (never-fading last);
        dead features at the end. The row order of the evolution heatmap."""
        live = [i for i in range(self.d_sae) if not self.lifetimes.dead[i]]
        dead = [i for i in range(self.d_sae) if self.lifetimes.dead[i]]
        lt = self.lifetimes

        def key(i: int) -> tuple[int, int, int]:
            fade = int(lt.fade[i])
            return (int(lt.emergence[i]), int(lt.peak[i]), self.n_snapshots if fade == NO_STEP else fade)

        return sorted(live, key=key) + dead

    def feature_table(self, features: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One row per feature: class, emergence/peak/fade steps, peak norm."""
        features = range(self.d_sae) if features is None else features
        peak_norm_F = self.norms.amax(dim=1)
        return [
            {
                "feature": int(i),
                "class": self.classes[i],
                "emergence_step": self.emergence_step(i),
                "peak_step": self.peak_step(i),
                "fade_step": self.fade_step(i),
                "dip_step": self.dip_step(i),
                "recovery_step": self.recovery_step(i),
                "peak_norm": round(float(peak_norm_F[i]), 4),
                **({"frequency": float(self.frequency[i])} if self.frequency is not None else {}),
            }
            for i in features
        ]

    def snapshot_table(self) -> list[dict[str, Any]]:
        """One row per snapshot: step, tokens, how many features are present / emerge / fade."""
        present_S = self.present.sum(0)
        rows = []
        for s in range(self.n_snapshots):
            rows.append(
                {
                    "snapshot": s,
                    "step": self.steps[s],
                    "tokens_seen": self.tokens_seen[s],
                    "present": int(present_S[s]),
                    "emerging": int((self.lifetimes.emergence == s).sum()),
                    "fading": int((self.lifetimes.fade == s).sum()),
                    "dipping": int((self.lifetimes.dip == s).sum()),
                    "recovering": int((self.lifetimes.recovery == s).sum()),
                }
            )
        return rows


def metadata_dict(crosscoder: Crosscoder) -> dict[str, Any]:
    cfg = getattr(crosscoder, "cfg", None)
    metadata = getattr(cfg, "metadata", None)
    if metadata is None:
        return {}
    if isinstance(metadata, dict):
        return dict(metadata)
    for attr in ("to_dict", "model_dump"):
        if hasattr(metadata, attr):
            try:
                return dict(getattr(metadata, attr)())
            except TypeError:
                pass
    return {k: v for k, v in vars(metadata).items() if not k.startswith("_")}


def snapshots_from_metadata(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Find the snapshot list in the provenance, wherever the crosscoder keeps it."""
    for holder in (metadata, metadata.get("suite"), metadata.get("provenance"), metadata.get("suite_provenance")):
        if isinstance(holder, dict) and isinstance(holder.get("snapshots"), list):
            snapshots = holder["snapshots"]
            if all(isinstance(s, dict) and "step" in s for s in snapshots):
                return snapshots
    return []
