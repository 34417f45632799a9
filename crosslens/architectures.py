"""The crosscoder architectures by name, with their training defaults and where each comes from.

The one table keyed by architecture name (:data:`TRAINING_DEFAULTS`): an architecture is its
module under ``crosslens/crosscoders/`` (its classes, math and snapshot SAE) plus its entry
here, which names that module and its defaults; :mod:`crosslens.crosscoders` imports the
modules listed and registers their classes with SAELens. Everything that needs a
default reads it here: the architectures' own configs, ``crosslens train`` and its
:class:`~crosslens.training.config.CrosscoderRunnerConfig`, the planted benchmark, the
per-snapshot SAE baselines and ``crosslens plan``. An explicit value (``--lr``,
``--sparsity``, the :class:`~crosslens.cli.demo_stages.DemoConfig`'s ``sae``) always wins. This
module imports nothing heavy, so ``crosslens --help`` can show the defaults. A recipe
(``crosslens/data/recipes/*.yaml``) reproduces a paper's run and carries that paper's
numbers (Ge et al.'s lambda 0.3 and lr 5e-5), which override this table.

Sources: Bayazit et al. (ReLU crosscoder: L1 weighted by decoder norms, lambda 2 warmed up
over 5% of steps, decoder rows at norm 0.08, Adam at 5e-5; crosslens's lambda is 1, ``RELU_L1``);
Ge et al. (JumpReLU crosscoder: tanh sparsity, lambda 0.3 at Pythia-160M's shape warmed up
over 10%, lr 5e-5); and
measurements of ours on the pico suite and the planted set. The papers' 5e-5 is for hundreds of millions of tokens; on the
pico-sized runs crosslens is tested on, 1e-3 converges in the step budget for the
TopK-style crosscoders, and the JumpReLU and ReLU crosscoders need 3e-3 to converge in it on
planted data (``JUMPRELU_LR``, ``RELU_LR``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_DECODER_INIT_NORM = 0.08
"""Norm of every decoder row at initialisation (Bayazit et al.)."""

DEFAULT_K = 32
"""Active features per token of the TopK-style architectures when none is given."""

DEFAULT_LR = 1e-3
"""The TopK and BatchTopK crosscoders' learning rate, and CrosscoderTrainerConfig's: measured to
converge within the pico demo's step budget; the papers' 5e-5 is for runs of hundreds
of millions of tokens. The JumpReLU and ReLU crosscoders have their own (``JUMPRELU_LR``,
``RELU_LR``); at 3e-3 or 1e-2 TopK still absorbs co-firing partners on the ``correlated`` planted
set as it does at 1e-3, so its rate stays."""


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
it is still converging after 3000 steps of 1024 tokens and recovers 69-90% of the features of
the planted generators (``scripts/planted_generators.py``) where the other architectures recover 85-100%;
at 3e-3 it recovers 95-100% on each generator and seed, 98-100% of them with the exact
emergence snapshot."""

RELU_LR = 3e-3
"""The ReLU crosscoder's learning rate, the JumpReLU crosscoder's value measured on its own. At
1e-3 the independent planted generator's seed 1 recovered 41 of 48 (under the 0.9 bar), its
weakest features still unlearnt after 3000 steps (45 after 6000); at 3e-3 seeds 0-5 recover
0.92-1.00 with 0.93-1.00 of them dated exactly, and ``hard``, ``zipf`` and ``wide`` 0.98-1.00
(exact 1.00). On pico (d_sae 1024, seeds 0 and 1) it fires about half as many latents per token
(mean L0 7.3 against 13.3) for 0.3 points less explained variance (98.0% against 98.3%), the
spliced models recover the same loss within the seed spread, and 544 of 1024 latents stay dead
against 150 (benchmarks/README.md, "Planted features recovered"). ``correlated`` still misses on one seed (0.80),
where latents absorb co-firing partners; 1e-2 passes it only by leaving most latents dead (923
of 1024 on pico)."""

RELU_L1 = 1.0
"""The ReLU crosscoder's lambda, half of Bayazit et al.'s 2. L1 shrinks each feature's
per-snapshot amplitude by lambda / 2, so a feature weaker than that is not worth a latent.
At 2 the weakest planted features went unrecovered. Recovered, seeds 0-2, from 2 to 1:
- ``hard``: 44, 44, 45 of 48 to 47, 46, 48;
- the independent generator (magnitudes spread 14-21x): 44, 36, 44 to 46, 41, 47;
- ``wide``: 0.94-0.96 to 1.00;
- ``zipf``: held;
- ``correlated``: 0.78-0.93 to 0.83-0.88 (mean 0.86 to 0.85). There the misses are not weak
  features but latents that also write part of a co-firing partner, which the L1 term pays
  for (``crosslens.analysis.absorption``); lambda does not move them.
On pico (d_sae 1024, lr 1e-3) explained variance went from 97.1% to 98.3%, at mean L0 12.9
against 10.4, with spliced CE recovery within 1.6 points per snapshot. The ``bayazit2025-pythia-1b``
recipe keeps the paper's 2."""

JUMPRELU_L0 = 0.45
"""The JumpReLU crosscoder's lambda per unit of ``n_snapshots * d_in / d_sae``
(:func:`sparsity_coefficient_for`). At lr 3e-3 it recovers 0.92-1.00 of the planted features
of every planted generator (five generators, seeds 0-2; the independent one also 3-5), with
0.93-1.00 of those dated exactly. The earlier 0.6, chosen at lr 1e-3, recovered 43 of 48 on
the independent generator's seed 1, under the 0.9 bar. Ge et al. use 0.3 at ratio 1."""

TOPK_L1 = 0.25
"""Weight of the TopK and BatchTopK crosscoders' L1 term on their kept codes (the ReLU
crosscoder's term, a quarter of its lambda). k fixes how many features fire per token but
nothing priced a decoder row, so a feature's rows at snapshots where it is absent fitted
whatever its tokens carried there and dated its emergence wrongly: BatchTopK had 0.86-0.91
of its recovered features with the exact emergence on ``hard`` and ``correlated``. At 0.25
BatchTopK recovers 0.94-1.00 with 0.95-1.00 exact on every planted generator and seed. 0.5
cost recovery on ``correlated`` (0.88 on one seed); 0 is plain TopK."""

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
``n_snapshots * d_in / d_sae`` where the shape-scaled default would give 0.45. At the JumpReLU
lr (3e-3), lambda 0.15 / 0.25 / 0.35 / 0.5 give mean L0 20 / 16 / 14 / 11, held-out explained
variance at the last snapshot 99.0 / 98.8 / 98.7 / 98.5%, and two seeds matching on 24 / 30 /
35 / 40% of live features at decoder cos >= 0.7 (benchmarks/README.md, "Defaults on pico"); 0.5 keeps
the most seed-stable code of those."""

ARCHITECTURE_NAMES: tuple[str, ...] = tuple(TRAINING_DEFAULTS)
"""The crosscoder architectures, by their SAELens registry names."""

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


def defaults_for(architecture: str) -> TrainingDefaults:
    """The defaults of ``architecture`` (an SAELens registry name)."""
    if architecture not in TRAINING_DEFAULTS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(TRAINING_DEFAULTS)}.")
    return TRAINING_DEFAULTS[architecture]


def sparsity_coefficient_for(architecture: str, *, n_snapshots: int, d_in: int, d_sae: int) -> float:
    """The default lambda of ``architecture`` at this shape.

    JumpReLU's tanh penalty counts firing features (``sum_i p_i (1 + p_i / q)``, growing
    with d_sae) while the reconstruction term sums squared errors over snapshots and
    dimensions (growing with ``n_snapshots * d_in`` on normalised activations), so one
    lambda cannot fit every shape: its default is ``JUMPRELU_L0 * n_snapshots * d_in / d_sae``.
    Measured points, in those units: Ge et al. use 0.3 at 32 snapshots x 768 dims x 24,576
    features (ratio 1); the pico demo's 0.5 (mean L0 23 at lr 1e-3, 11 at 3e-3,
    held-out explained variance >= 97.3%) is 0.33 at 12 x 128 / 1024; on the harder planted
    set (8 x 64 / 128, ratio 4) at lr 1e-3, lambda 0.3 fired 6x as often as the planted
    features and recovered 21-23 of 48, 1.2 recovered 36-37 and 2.5 recovered 43, so 0.6 per
    unit (2.4 there) at first; at lr 3e-3, 0.45 per unit (``JUMPRELU_L0``). On a new model
    check L0 and explained variance, and set ``--sparsity`` if they are off.
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
    "sparsity_coefficient_for",
    "uses_k",
]
