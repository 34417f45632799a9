"""The crosscoder architectures by name, with their training defaults and where each comes from.

The one table keyed by architecture name (:data:`TRAINING_DEFAULTS`): an architecture is its
module under ``crosslens/crosscoders/`` (its classes, math and snapshot SAE) plus its entry
here, which names that module and its defaults; :mod:`crosslens.crosscoders` imports the
modules listed and registers their classes with SAELens. Everything that needs a default reads
it here, so a crosscoder trains the same whichever way it is started: the architectures' own
configs (lambda; the warm-up, once a trainer knows the run's length), a
:class:`~crosslens.training.trainer.CrosscoderTrainer` built by hand (learning rate,
resampling, warm-up), ``crosslens train`` and its
:class:`~crosslens.training.config.CrosscoderRunnerConfig`, the planted benchmark, the
per-snapshot SAE baselines and ``crosslens plan``. An explicit value (``--lr``,
``--sparsity``, the :class:`~crosslens.cli.demo_stages.DemoConfig`'s ``sae``) always wins. This
module imports nothing heavy, so ``crosslens --help`` can show the defaults. A recipe
(``crosslens/data/recipes/*.yaml``) reproduces a paper's run and carries that paper's
numbers (Ge et al.'s lambda 0.3 and lr 5e-5), which override this table.

Sources: Bayazit et al. (ReLU crosscoder: L1 weighted by decoder norms, lambda 2 warmed up
over 5% of steps, decoder rows at norm 0.08, Adam at 5e-5; crosslens's lambda is 1, ``RELU_L1``);
Ge et al. (JumpReLU crosscoder: tanh sparsity, lambda 0.3 at Pythia-160M's shape warmed up
over 10%, lr 5e-5); and crosslens's own runs on the pico suite and the planted generators,
whose figures are in ``benchmarks/README.md`` ("Why the training defaults"), each with its
command. The papers' 5e-5 is for hundreds of millions of tokens; runs of the size crosslens
is tested on converge within their steps at 1e-3 for the TopK-style crosscoders, and at 3e-3
for the JumpReLU and ReLU crosscoders (``JUMPRELU_LR``, ``RELU_LR``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_DECODER_INIT_NORM = 0.08
"""Norm of every decoder row at initialisation (Bayazit et al.)."""

DEFAULT_K = 32
"""Active features per token of the TopK-style architectures when none is given."""

DEFAULT_LR = 1e-3
"""The TopK and BatchTopK crosscoders' learning rate: it converges within the pico demo's step
budget, where the papers' 5e-5 is for runs of hundreds of millions of tokens. The JumpReLU and
ReLU crosscoders have their own (``JUMPRELU_LR``, ``RELU_LR``); a higher rate does not stop
TopK absorbing co-firing partners on the ``correlated`` planted set, so its rate stays."""


@dataclass(frozen=True)
class TrainingDefaults:
    """One architecture's defaults when the user sets nothing; a field left out of an entry of
    :data:`TRAINING_DEFAULTS` takes the value every architecture shares."""

    sparsity_coefficient: float
    """lambda of the sparsity term (for the TopK-style architectures, whose sparsity ``k``
    sets, the weight of the L1 term beside it)."""
    source: str
    """Where these numbers come from."""
    lr: float = DEFAULT_LR
    """Adam learning rate."""
    sparsity_per_shape: bool = False
    """Multiply ``sparsity_coefficient`` by ``n_snapshots * d_in / d_sae`` (see
    :func:`sparsity_coefficient_for`)."""
    sparsity_warm_up: float = 0.0
    """Fraction of training over which lambda warms up from 0."""
    decoder_init_norm: float = DEFAULT_DECODER_INIT_NORM
    """Norm of every decoder row at initialisation."""
    resample_dead: int = 0
    """Times silent latents are resampled during training (:mod:`crosslens.training.resample`)."""
    module: str = ""
    """The module holding the architecture's classes (its ``CLASSES``)."""
    k: int = DEFAULT_K
    """Active features per token for the TopK-style architectures (unused by the others)."""
    coefficient_field: str = "l1_coefficient"
    """The SAELens config field holding lambda (``l1_coefficient``, ``l0_coefficient``)."""
    warm_up_field: str = "l1_warm_up_steps"
    """The SAELens config field holding lambda's warm-up steps."""


JUMPRELU_LR = 3e-3
"""The JumpReLU crosscoder's learning rate, higher than the TopK-style crosscoders': at 1e-3
it is still converging after 3000 steps of 1024 tokens and recovers fewer of the planted
generators' features than the other architectures; at 3e-3 it meets the planted bars on every
generator and seed (``scripts/planted_generators.py``; benchmarks/README.md, "Why the
training defaults")."""

RELU_LR = 3e-3
"""The ReLU crosscoder's learning rate, the JumpReLU crosscoder's value, chosen on its own: at
1e-3 the weakest features of the independent planted generator are still unlearnt after 3000
steps, under the planted bar; at 3e-3 it meets the bars on the generators but ``correlated``,
where latents absorb co-firing partners at any rate (1e-2 passes it only by leaving most
latents dead). On pico it fires fewer latents per token than at 1e-3, for slightly
less explained variance and the same spliced loss within the seed spread
(benchmarks/README.md, "Why the training defaults")."""

RELU_L1 = 1.0
"""The ReLU crosscoder's lambda, half of Bayazit et al.'s 2. L1 shrinks each feature's
per-snapshot amplitude by lambda / 2, so a feature weaker than that is not worth a latent: at
2 the weakest planted features went unrecovered, and at 1 more of them are recovered on the
generators whose features' magnitudes spread widest. On ``correlated`` the misses are not weak
features but latents that also write part of a co-firing partner, which the L1 term pays for
(``crosslens.analysis.absorption``); lambda does not move them. On pico it explains more of
the variance at a higher L0 (benchmarks/README.md, "Why the training defaults"). The
``bayazit2025-pythia-1b`` recipe keeps the paper's 2."""

JUMPRELU_L0 = 0.45
"""The JumpReLU crosscoder's lambda per unit of ``n_snapshots * d_in / d_sae``
(:func:`sparsity_coefficient_for`), chosen at lr 3e-3 to meet the planted bars on every planted
generator and seed (benchmarks/README.md, "Why the training defaults", which also has the
line chosen at lr 1e-3). Ge et al. use 0.3 at
ratio 1."""

TOPK_L1 = 0.25
"""Weight of the TopK and BatchTopK crosscoders' L1 term on their kept codes (the ReLU
crosscoder's term, a quarter of its lambda). k fixes how many features fire per token but
nothing priced a decoder row, so without the term a feature's rows at snapshots where it is
absent fitted whatever its tokens carried there and dated its emergence wrongly. At 0.25
BatchTopK meets the planted bars on every generator and seed; 0.5 costs recovery on
``correlated`` (benchmarks/README.md, "Why the training defaults"); 0 is plain TopK."""

_TOPK = TrainingDefaults(
    sparsity_coefficient=TOPK_L1,
    source="k = 32 as SAELens's TopK default; L1 on the kept codes measured on five planted generators; lr measured on pico",
)

TRAINING_DEFAULTS: dict[str, TrainingDefaults] = {
    "crosscoder": TrainingDefaults(
        module="crosslens.crosscoders.relu_crosscoder",
        lr=RELU_LR,
        sparsity_coefficient=RELU_L1,
        sparsity_warm_up=0.05,
        source=(
            "Bayazit et al.: 5% warm-up, decoder norm 0.08; lambda 1 (theirs: 2) and lr 3e-3 measured on "
            "five planted generators and pico"
        ),
    ),
    "jumprelu_crosscoder": TrainingDefaults(
        module="crosslens.crosscoders.jumprelu_crosscoder",
        lr=JUMPRELU_LR,
        sparsity_coefficient=JUMPRELU_L0,
        sparsity_per_shape=True,
        sparsity_warm_up=0.1,
        coefficient_field="l0_coefficient",
        warm_up_field="l0_warm_up_steps",
        resample_dead=4,
        source=(
            "Ge et al.: 10% warm-up; lambda 0.45 per unit of n_snapshots*d_in/d_sae and lr 3e-3 measured "
            "on five planted generators (Ge et al.'s 0.3 sits at ratio 1); silent latents resampled 4 "
            "times, measured on the planted generators with weak, rare and late features"
        ),
    ),
    "topk_crosscoder": replace(_TOPK, module="crosslens.crosscoders.topk_crosscoder"),
    "batchtopk_crosscoder": replace(_TOPK, module="crosslens.crosscoders.batchtopk_crosscoder"),
}

PICO_DEMO_JUMPRELU_SPARSITY = 0.5
"""The demo's JumpReLU lambda on pico (12 snapshots x 128 dims, d_sae 1024): 0.33 per unit of
``n_snapshots * d_in / d_sae`` where the shape-scaled default would give 0.45. Of the lambdas
tried at the JumpReLU lr, a larger one fires fewer latents for slightly less explained
variance, and two seeds share more of their features; 0.5 keeps the most seed-stable code of
those (benchmarks/README.md, "Seed stability")."""

ARCHITECTURE_NAMES: tuple[str, ...] = tuple(TRAINING_DEFAULTS)
"""The crosscoder architectures, by their SAELens registry names."""

SPARSITY_WARM_UPS = ", ".join(f"{name} {d.sparsity_warm_up:.0%}" for name, d in TRAINING_DEFAULTS.items())
"""Each architecture's sparsity warm-up as a share of the steps, as ``train --help`` shows it."""
RESAMPLES = ", ".join(f"{name} {d.resample_dead}" for name, d in TRAINING_DEFAULTS.items())
"""Each architecture's resampling count, as ``train --help`` shows it."""

# The per-snapshot SAE baselines use the warm-up of the crosscoder they are compared with.
BASELINE_OF = {"standard": "crosscoder", "jumprelu": "jumprelu_crosscoder", "topk": "topk_crosscoder"}

SPARSITY_FIELDS: dict[str, tuple[str, str]] = {
    **{name: (d.coefficient_field, d.warm_up_field) for name, d in TRAINING_DEFAULTS.items()},
    "standard": ("l1_coefficient", "l1_warm_up_steps"),
    "jumprelu": ("l0_coefficient", "l0_warm_up_steps"),
}
"""Architecture (crosscoder or SAELens SAE) -> the config fields of its (lambda, warm-up);
absent for SAELens's ``topk`` SAE, whose sparsity is ``k`` alone."""


def uses_k(architecture: str) -> bool:
    """Whether ``architecture`` keeps a fixed number of features per token (``k``)."""
    return architecture in ("topk_crosscoder", "batchtopk_crosscoder", "topk")


def k_per_token(architecture: str) -> bool:
    """Whether ``architecture`` keeps at most ``k`` features on every token (TopK), where
    BatchTopK keeps ``k`` per token on average over a batch, so one token may take more."""
    return architecture in ("topk_crosscoder", "topk")


def defaults_for(architecture: str) -> TrainingDefaults:
    """The defaults of ``architecture`` (an SAELens registry name)."""
    if architecture not in TRAINING_DEFAULTS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(TRAINING_DEFAULTS)}.")
    return TRAINING_DEFAULTS[architecture]


def sparsity_warm_up_steps(architecture: str, total_steps: int, fraction: float | None = None) -> int:
    """Steps over which lambda rises from 0 in a run of ``total_steps``: ``fraction`` of them
    (None: the architecture's ``sparsity_warm_up``), rounded down. The runner, the planted
    benchmark and a :class:`~crosslens.training.trainer.CrosscoderTrainer` given a crosscoder
    whose warm-up is unset all count it here."""
    share = defaults_for(architecture).sparsity_warm_up if fraction is None else fraction
    return int(total_steps * share)


def sparsity_coefficient_for(architecture: str, *, n_snapshots: int, d_in: int, d_sae: int) -> float:
    """The default lambda of ``architecture`` at this shape.

    JumpReLU's tanh penalty counts firing features (``sum_i p_i (1 + p_i / q)``, growing
    with d_sae) while the reconstruction term sums squared errors over snapshots and
    dimensions (growing with ``n_snapshots * d_in`` on normalised activations), so one
    lambda cannot fit every shape: its default is ``JUMPRELU_L0 * n_snapshots * d_in / d_sae``.
    Ge et al. use 0.3 at 32 snapshots x 768 dims x 24,576 features (ratio 1); the pico demo's
    0.5 is 0.33 at 12 x 128 / 1024; on the planted sets (8 x 64 / 128, ratio 4) a lambda near
    Ge et al.'s fires far more often than the planted features and recovers too few of them
    (benchmarks/README.md, "Why the training defaults"). On a new model check L0 and explained
    variance, and set ``--sparsity`` if they are off.
    """
    defaults = defaults_for(architecture)
    base = defaults.sparsity_coefficient
    if not defaults.sparsity_per_shape:
        return base
    return base * n_snapshots * d_in / d_sae


__all__ = [
    "ARCHITECTURE_NAMES",
    "BASELINE_OF",
    "DEFAULT_DECODER_INIT_NORM",
    "DEFAULT_K",
    "DEFAULT_LR",
    "JUMPRELU_LR",
    "JUMPRELU_L0",
    "PICO_DEMO_JUMPRELU_SPARSITY",
    "RELU_L1",
    "RELU_LR",
    "SPARSITY_FIELDS",
    "TOPK_L1",
    "TRAINING_DEFAULTS",
    "TrainingDefaults",
    "defaults_for",
    "k_per_token",
    "sparsity_coefficient_for",
    "sparsity_warm_up_steps",
    "uses_k",
]
