"""Model diffing's classes of a two-model crosscoder's latents, by relative decoder norm.

With models A and B (a base model and its fine-tune), latent i's decoder norms ``n_A``, ``n_B`` (in
the space the crosscoder was trained in) give its relative norm difference (Minder et al. 2025,
after Lindsey et al. 2024)::

    delta_i = ((n_B - n_A) / max(n_A, n_B) + 1) / 2        0: A only ... 0.5: both alike ... 1: B only

and its class: ``A-only`` below ``only_below`` (0.1), ``B-only`` above ``only_above`` (0.9),
``shared`` between ``shared_low`` and ``shared_high`` (0.4 to 0.6), ``other`` in between, and
``dead`` where both norms are zero or the latent never fired on the tokens measured. Classes are
named with the models' labels (``gemma-2-2b-only``, ``gemma-2-2b-it-only``).

Decoder norms alone can call a latent B-only when A's activations hold it too (Minder et al.'s
sparsity artifacts): the penalty shrank A's row of a concept weaker there to zero (*Complete
Shrinkage*), or other latents carry the concept in A (*Latent Decoupling*). Their check is latent
scaling (:mod:`crosslens.analysis.scaling`), read here as the emergence check reads it
through training (:func:`~crosslens.analysis.emergence_check.scaled_presence`, the same lines):
a one-model-only latent is *present in the other model* where its latent-scaled presence there
reaches the presence line. :func:`diffing_scaling` gives each such latent a verdict
(:data:`DIFFING_VERDICTS`) and Minder et al.'s ratios, ``nu_error`` (the other model's error
target over the latent's own model's) and ``nu_reconstruction`` (the same for what other latents
reconstruct); :attr:`DiffingAnalysis.latent_scaling` holds them where activations were read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from crosslens.analysis.emergence_check import EmergenceCheckConfig, carried, scaled_presence
from crosslens.analysis.scaling import LatentScaling
from crosslens.core.metadata import metadata_value
from crosslens.core.model_specs import check_model_pair, is_models_suite
from crosslens.crosscoders.folding import training_space_decoder

DIFFING_VERDICTS: tuple[str, ...] = ("specific", "shrinkage", "decoupling", "not measured")
"""Latent scaling's verdict on a latent the decoder norms give one model only: ``specific`` (the
other model's activations do not hold it), ``shrinkage`` (they do, in the error that model's
reconstruction leaves: Complete Shrinkage), ``decoupling`` (they do, reconstructed there by other
latents: Latent Decoupling), ``not measured`` (it fires on too few of the tokens read)."""


@dataclass(frozen=True)
class DiffingThresholds:
    """Where the classes split the relative norm difference (Minder et al.'s values by default)."""

    only_below: float = 0.1
    """A latent below this is the first model's only."""
    only_above: float = 0.9
    """A latent above this is the second model's only."""
    shared_low: float = 0.4
    """A latent from here ..."""
    shared_high: float = 0.6
    """... to here is shared."""

    def __post_init__(self) -> None:
        if not 0 <= self.only_below <= self.shared_low <= self.shared_high <= self.only_above <= 1:
            raise ValueError(
                "diffing thresholds must satisfy 0 <= only_below <= shared_low <= shared_high <= only_above <= 1, "
                f"got {self}"
            )


@dataclass
class DiffingAnalysis:
    """The diffing classes of a two-model crosscoder (see the module docstring)."""

    models: tuple[str, str]
    """The two models' labels, in the crosscoder's order (A, B)."""
    norms: Float[torch.Tensor, "d_sae 2"]
    """Each latent's decoder norm at each model, in the space it was trained in."""
    relative_norm: Float[torch.Tensor, " d_sae"]
    """delta_i in [0, 1]: 0 where only A's decoder is non-zero, 1 where only B's is."""
    classes: list[str]
    """Each latent's class: ``shared``, ``<A>-only``, ``<B>-only``, ``other`` or ``dead``."""
    thresholds: DiffingThresholds
    latent_scaling: DiffingScaling | None = None
    """Latent scaling's verdict on the one-model-only latents (None: no activations were read)."""

    @classmethod
    def from_crosscoder(
        cls,
        crosscoder: Any,
        *,
        labels: tuple[str, str] | None = None,
        frequency: torch.Tensor | None = None,
        thresholds: DiffingThresholds | None = None,
        scaling: LatentScaling | None = None,
        check_config: EmergenceCheckConfig | None = None,
    ) -> DiffingAnalysis:
        """The classes of ``crosscoder`` (two snapshots). ``labels``: the models' names (default:
        the revisions its metadata records). ``frequency``: each latent's firing frequency on some
        tokens, where measured (latents that never fired are ``dead``). ``scaling``: the
        crosscoder's latent scaling, where measured, for :func:`diffing_scaling` (with the
        presence lines of ``check_config``)."""
        if crosscoder.cfg.n_snapshots != 2:
            raise ValueError(
                f"diffing classes compare two models; this crosscoder reads {crosscoder.cfg.n_snapshots} snapshots"
            )
        norms_F2 = training_space_decoder(crosscoder).float().norm(dim=-1).cpu()
        diffing = cls.from_norms(norms_F2, labels or model_labels(crosscoder), frequency, thresholds)
        if scaling is not None:
            diffing.latent_scaling = diffing_scaling(diffing, scaling, check_config)
        return diffing

    @classmethod
    def with_emergence(cls, crosscoder: Any, emergence: Any, frequency: torch.Tensor | None = None) -> DiffingAnalysis:
        """The classes of ``crosscoder`` with the latent scaling of its ``emergence`` (an
        :class:`~crosslens.analysis.emergence_record.EmergenceResult`, or None), read at its
        check's lines."""
        check = None if emergence is None else emergence.check
        return cls.from_crosscoder(
            crosscoder,
            frequency=frequency,
            scaling=None if emergence is None else emergence.scaling,
            check_config=None if check is None else check.config,
        )

    @classmethod
    def from_norms(
        cls,
        norms_F2: Float[torch.Tensor, "d_sae 2"],
        labels: tuple[str, str],
        frequency: torch.Tensor | None = None,
        thresholds: DiffingThresholds | None = None,
    ) -> DiffingAnalysis:
        thresholds = thresholds or DiffingThresholds()
        a, b = norms_F2[:, 0].double(), norms_F2[:, 1].double()
        largest = torch.maximum(a, b)
        delta = torch.where(largest > 0, ((b - a) / largest.clamp(min=1e-300) + 1) / 2, 0.5).float()
        dead = largest == 0
        if frequency is not None:
            dead |= frequency.cpu() <= 0
        names = {"a": f"{labels[0]}-only", "b": f"{labels[1]}-only"}
        classes = []
        for d, is_dead in zip(delta.tolist(), dead.tolist()):
            if is_dead:
                classes.append("dead")
            elif d < thresholds.only_below:
                classes.append(names["a"])
            elif d > thresholds.only_above:
                classes.append(names["b"])
            elif thresholds.shared_low <= d <= thresholds.shared_high:
                classes.append("shared")
            else:
                classes.append("other")
        return cls(tuple(labels), norms_F2.float(), delta, classes, thresholds)

    def class_counts(self) -> dict[str, int]:
        """Latents per class, in the order shared, A-only, B-only, other, dead."""
        counts = Counter(self.classes)
        order = ("shared", f"{self.models[0]}-only", f"{self.models[1]}-only", "other", "dead")
        return {name: counts.get(name, 0) for name in order}

    def summary_lines(self) -> list[str]:
        """The counts, the thresholds and latent scaling's state, as lines for a terminal or report."""
        t = self.thresholds
        lines = [
            f"model diffing ({self.models[0]} vs {self.models[1]}), by relative decoder norm "
            f"(A-only < {t.only_below}, shared {t.shared_low}-{t.shared_high}, B-only > {t.only_above}):",
            "  " + ", ".join(f"{name} {count}" for name, count in self.class_counts().items()),
        ]
        if self.latent_scaling is None:
            lines.append("  latent scaling: not measured (it reads the models' activations: give a store)")
            return lines
        lines.append(f"  latent scaling on {self.latent_scaling.n_tokens:,} tokens, of the latents one model only:")
        for name, counts in self.verdict_counts().items():
            lines.append(f"    {name} {sum(counts.values())}: " + self._verdict_words(name, counts))
        return lines

    def only_classes(self) -> tuple[str, str]:
        """The two one-model-only classes' names, in the models' order."""
        return f"{self.models[0]}-only", f"{self.models[1]}-only"

    def verdict_counts(self) -> dict[str, dict[str, int]]:
        """For each one-model-only class, its latents per latent-scaling verdict ({} unmeasured)."""
        if self.latent_scaling is None:
            return {}
        counts = Counter(zip(self.classes, self.latent_scaling.verdicts))
        return {name: {v: counts[name, v] for v in DIFFING_VERDICTS} for name in self.only_classes()}

    def _verdict_words(self, name: str, counts: dict[str, int]) -> str:
        other = self.models[1] if name == self.only_classes()[0] else self.models[0]
        return (
            f"{counts['specific']} specific, {counts['shrinkage']} in {other}'s error (Complete Shrinkage), "
            f"{counts['decoupling']} reconstructed in {other} by other latents (Latent Decoupling), "
            f"{counts['not measured']} not measured"
        )


@dataclass(frozen=True)
class DiffingScaling:
    """Latent scaling's reading of a two-model crosscoder's one-model-only latents (:func:`diffing_scaling`)."""

    verdicts: list[str | None]
    """Each latent's verdict (:data:`DIFFING_VERDICTS`); None for a latent of no one-model class."""
    presence_elsewhere: Float[torch.Tensor, " d_sae"]
    """Its latent-scaled presence in the model its decoder leaves out (a share of its largest; NaN: no verdict)."""
    nu_error: Float[torch.Tensor, " d_sae"]
    """Minder et al.'s nu on the error target: its amplitude in that model's reconstruction error
    without it over the same in its own model (NaN: no verdict, or no amplitude in its own)."""
    nu_reconstruction: Float[torch.Tensor, " d_sae"]
    """The same on what other latents reconstruct along its direction."""
    n_tokens: int
    """Tokens latent scaling read."""


def diffing_scaling(
    diffing: DiffingAnalysis, scaling: LatentScaling, config: EmergenceCheckConfig | None = None
) -> DiffingScaling:
    """Latent scaling's verdict on each one-model-only latent of ``diffing``: present in the other
    model where its latent-scaled presence there (:func:`scaled_presence`, ``config``'s lines)
    reaches ``presence_threshold``, in that model's error where its error-target amplitude there
    is at least what other latents reconstruct, counted only where a partner carries its direction
    (as the emergence check places an early presence), and measured where it fires on ``min_fire``
    of the tokens read."""
    config = config or EmergenceCheckConfig()
    if scaling.amplitude.shape != diffing.norms.shape:
        raise ValueError(
            f"the latent scaling has shape {list(scaling.amplitude.shape)} and the diffing classes "
            f"{list(diffing.norms.shape)}: compute both from the same two-model crosscoder."
        )
    first_only, second_only = diffing.only_classes()
    own_F = torch.tensor([{first_only: 0, second_only: 1}.get(c, -1) for c in diffing.classes])
    only_F = own_F >= 0
    other_F1 = (1 - own_F).clamp(0, 1)[:, None]
    elsewhere_F = scaled_presence(scaling, config).gather(1, other_F1)[:, 0]
    others_FS = scaling.reconstruction_amplitude * carried(scaling, config)
    in_error_F = (scaling.error_amplitude >= others_FS).gather(1, other_F1)[:, 0]
    measured_F = scaling.n_fire >= config.min_fire

    def nu(target: str) -> torch.Tensor:
        ratio_F = torch.where(own_F == 1, scaling.ratio(0, 1, target), scaling.ratio(1, 0, target))
        return torch.where(only_F, ratio_F, torch.nan)

    verdicts: list[str | None] = []
    for only, measured, present, in_error in zip(
        only_F.tolist(), measured_F.tolist(), (elsewhere_F >= config.presence_threshold).tolist(), in_error_F.tolist()
    ):
        if not only:
            verdicts.append(None)
        elif not measured:
            verdicts.append("not measured")
        else:
            verdicts.append(("shrinkage" if in_error else "decoupling") if present else "specific")
    return DiffingScaling(
        verdicts=verdicts,
        presence_elsewhere=torch.where(only_F, elsewhere_F, torch.nan),
        nu_error=nu("error"),
        nu_reconstruction=nu("reconstruction"),
        n_tokens=scaling.n_tokens,
    )


def is_diffing(crosscoder: Any, where: str = "model diffing") -> bool:
    """Whether ``crosscoder`` reads distinct models (the family its suite record names), not one
    model's checkpoints, whatever their number. Distinct models have no training order, and model
    diffing compares two: a crosscoder of another number of them is refused, the message beginning
    with ``where`` (:func:`~crosslens.core.model_specs.check_model_pair`)."""
    suite = metadata_value(crosscoder, "suite")
    check_model_pair(suite, int(crosscoder.cfg.n_snapshots), where)
    return is_models_suite(suite)


def set_diffing_classes(analysis: Any, crosscoder: Any, emergence: Any = None) -> DiffingAnalysis | None:
    """For a crosscoder of two models, its diffing classes (with the latent scaling of its
    ``emergence``, where it holds one), kept as ``analysis.diffing`` and put in place of the
    classes through time of ``analysis`` (an
    :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`), which read the two models
    as a training order; None, and ``analysis`` as it was, for one model's checkpoints."""
    if not is_diffing(crosscoder):
        return None
    analysis.diffing = DiffingAnalysis.with_emergence(crosscoder, emergence, analysis.frequency)
    analysis.classes = list(analysis.diffing.classes)
    return analysis.diffing


def model_labels(crosscoder: Any) -> tuple[str, str]:
    """The two models' labels from the crosscoder's record (``A`` and ``B`` where it records none)."""
    snapshots = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    labels = [str(s.get("revision")) for s in snapshots]
    return (labels[0], labels[1]) if len(labels) == 2 else ("A", "B")


def add_diffing_section(report: Any, diffing: DiffingAnalysis) -> None:
    """The report's model-diffing section: the classes, their thresholds, latent scaling's verdict."""
    import plotly.graph_objects as go

    a, b = diffing.models
    t = diffing.thresholds
    report.add_heading("Model diffing")
    report.add_text(
        f"The crosscoder reads {a} and {b}. Each latent's relative decoder norm difference, "
        f"((||d_{b}|| - ||d_{a}||) / max + 1) / 2, is 0 where only {a}'s decoder writes it and 1 where only "
        f"{b}'s does; below {t.only_below} a latent is {a}-only, above {t.only_above} {b}-only, from "
        f"{t.shared_low} to {t.shared_high} shared (Minder et al. 2025's thresholds). Decoder norms can call a "
        f"latent {b}-only that {a}'s activations hold too; latent scaling checks that."
    )
    total = max(1, len(diffing.classes))
    rows = [{"class": name, "latents": n, "share": n / total} for name, n in diffing.class_counts().items()]
    report.add_table(rows, title="Latents per diffing class", percent=("share",))
    live = [d for d, c in zip(diffing.relative_norm.tolist(), diffing.classes) if c != "dead"]
    figure = go.Figure(go.Histogram(x=live, xbins={"start": 0, "end": 1.0001, "size": 0.02}))
    figure.update_layout(xaxis_title=f"relative norm difference (0: {a} only, 1: {b} only)", yaxis_title="latents")
    report.add_figure(figure, caption="Live latents by relative decoder norm difference")
    _add_scaling_verdicts(report, diffing)


def _add_scaling_verdicts(report: Any, diffing: DiffingAnalysis) -> None:
    """Latent scaling's verdicts on the one-model-only latents, and their ratios as Minder et al. plot them."""
    import plotly.graph_objects as go

    scaling = diffing.latent_scaling
    if scaling is None:
        report.add_text("Latent scaling: not measured (it reads the models' activations: analyze with a store).")
        return
    rows = [{"class": name, **counts} for name, counts in diffing.verdict_counts().items()]
    report.add_table(rows, title=f"Latent scaling on {scaling.n_tokens:,} tokens, one-model-only latents")
    figure = go.Figure()
    for name in diffing.only_classes():
        chosen = [
            i for i, (c, v) in enumerate(zip(diffing.classes, scaling.verdicts)) if c == name and v != "not measured"
        ]
        figure.add_trace(
            go.Scatter(
                x=scaling.nu_error[chosen].tolist(),
                y=scaling.nu_reconstruction[chosen].tolist(),
                mode="markers",
                name=name,
                text=[f"latent {i}: {scaling.verdicts[i]}" for i in chosen],
            )
        )
    figure.update_layout(
        xaxis_title="nu, error target (other model over own)",
        yaxis_title="nu, other latents' reconstruction",
        xaxis_range=[-0.1, 1.1],
        yaxis_range=[-0.1, 1.1],
    )
    report.add_figure(
        figure,
        caption=(
            "Each measured one-model-only latent's ratios: near 0 on both, the other model holds none of it; "
            "high on the error target, its decoder there shrank (Complete Shrinkage); high on the "
            "reconstruction, other latents carry it there (Latent Decoupling)."
        ),
    )
