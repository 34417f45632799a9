"""Model diffing's classes of a two-model crosscoder's latents, by relative decoder norm.

With models A and B (a base model and its fine-tune), latent i's decoder norms ``n_A``, ``n_B`` (in
the space the crosscoder was trained in) give its relative norm difference (Minder et al. 2025,
after Lindsey et al. 2024)::

    delta_i = ((n_B - n_A) / max(n_A, n_B) + 1) / 2        0: A only ... 0.5: both alike ... 1: B only

and its class: ``A-only`` below ``only_below`` (0.1), ``B-only`` above ``only_above`` (0.9),
``shared`` between ``shared_low`` and ``shared_high`` (0.4 to 0.6), ``other`` in between, and
``dead`` where both norms are zero or the latent never fired on the tokens measured. Classes are
named with the models' labels (``gemma-2-2b-only``, ``gemma-2-2b-it-only``).

Decoder norms alone can call a latent B-only when it reconstructs B's activations better simply
because it absorbed B's share of an error (Minder et al.'s sparsity artifacts); their check is
latent scaling. :attr:`DiffingAnalysis.latent_scaling` holds its per-latent verdict beside these
classes once it is measured (None until then), and reports show both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.metadata import metadata_value
from crosslens.crosscoders.folding import training_space_decoder

MODELS_FAMILY = "models"


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
    latent_scaling: Any = None
    """Latent scaling's per-latent verdict, once measured (None: not measured)."""

    @classmethod
    def from_crosscoder(
        cls,
        crosscoder: Any,
        *,
        labels: tuple[str, str] | None = None,
        frequency: torch.Tensor | None = None,
        thresholds: DiffingThresholds | None = None,
    ) -> DiffingAnalysis:
        """The classes of ``crosscoder`` (two snapshots). ``labels``: the models' names (default:
        the revisions its metadata records). ``frequency``: each latent's firing frequency on some
        tokens, where measured (latents that never fired are ``dead``)."""
        if crosscoder.cfg.n_snapshots != 2:
            raise ValueError(
                f"diffing classes compare two models; this crosscoder reads {crosscoder.cfg.n_snapshots} snapshots"
            )
        norms_F2 = training_space_decoder(crosscoder).float().norm(dim=-1).cpu()
        return cls.from_norms(norms_F2, labels or model_labels(crosscoder), frequency, thresholds)

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
        verdict = "not measured" if self.latent_scaling is None else "measured"
        lines.append(f"  latent scaling: {verdict}")
        return lines


def is_diffing(crosscoder: Any) -> bool:
    """Whether ``crosscoder`` reads two distinct models (a diffing suite), not one model's checkpoints."""
    suite = metadata_value(crosscoder, "suite") or {}
    return suite.get("family") == MODELS_FAMILY and crosscoder.cfg.n_snapshots == 2


def model_labels(crosscoder: Any) -> tuple[str, str]:
    """The two models' labels from the crosscoder's record (``A`` and ``B`` where it records none)."""
    snapshots = (metadata_value(crosscoder, "suite") or {}).get("snapshots") or []
    labels = [str(s.get("revision")) for s in snapshots]
    return (labels[0], labels[1]) if len(labels) == 2 else ("A", "B")


def with_diffing_classes(analysis: Any, crosscoder: Any) -> Any:
    """``analysis`` (an :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`) with its
    classes replaced by the diffing classes where ``crosscoder`` reads two models: a base model and
    its fine-tune have no training order for emergence and fading to mean anything across."""
    if is_diffing(crosscoder):
        analysis.classes = DiffingAnalysis.from_crosscoder(crosscoder, frequency=analysis.frequency).classes
    return analysis


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
        f"latent {b}-only that only absorbed part of a shared one; latent scaling checks that."
    )
    total = max(1, len(diffing.classes))
    rows = [{"class": name, "latents": n, "share": n / total} for name, n in diffing.class_counts().items()]
    report.add_table(rows, title="Latents per diffing class", percent=("share",))
    verdict = "not measured" if diffing.latent_scaling is None else str(diffing.latent_scaling)
    report.add_table([{"check": "latent scaling", "verdict": verdict}], title="Beside the decoder norms")
    live = [d for d, c in zip(diffing.relative_norm.tolist(), diffing.classes) if c != "dead"]
    figure = go.Figure(go.Histogram(x=live, xbins={"start": 0, "end": 1.0001, "size": 0.02}))
    figure.update_layout(xaxis_title=f"relative norm difference (0: {a} only, 1: {b} only)", yaxis_title="latents")
    report.add_figure(figure, caption="Live latents by relative decoder norm difference")
