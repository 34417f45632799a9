"""Train a crosscoder on planted data with the defaults ``crosslens train`` would use.

The planted benchmark (``scripts/planted_benchmark.py``) and its CI variant
(``tests/test_planted_architectures.py``) train every architecture through this one
function, so they measure the settings a user gets: sparsity coefficient
(:func:`~crosslens.architectures.sparsity_coefficient_for`), warm-up, learning rate and
resampling from :mod:`crosslens.architectures` (the trainer fills in what is left None),
linear decay over the last :data:`~crosslens.training.config.LR_DECAY_FRACTION` of steps,
decoder rows initialised at norm 0.08.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from crosslens.architectures import (
    defaults_for,
    k_per_token,
    sparsity_coefficient_for,
    sparsity_warm_up_steps,
    uses_k,
)
from crosslens.kernels.plan import KernelPlan
from crosslens.training.config import LR_DECAY_FRACTION, CrosscoderRunnerConfig, CrosscoderTrainerConfig
from crosslens.training.factory import build_training_crosscoder
from crosslens.training.trainer import CrosscoderTrainer

if TYPE_CHECKING:  # a type only: any object with .config and .batches() trains; training needs no analysis code
    from crosslens.analysis.synthetic import PlantedEvolution


def train_planted(
    planted: PlantedEvolution,
    architecture: str,
    *,
    seed: int = 0,
    n_steps: int = CrosscoderRunnerConfig.n_steps,
    batch_size: int = CrosscoderRunnerConfig.train_batch_size_tokens,
    d_sae: int = 128,
    k: int | None = None,
    lr: float | None = None,
    sparsity_coefficient: float | None = None,
    sparsity_warm_up: float | None = None,
    lr_decay_fraction: float = LR_DECAY_FRACTION,
    dead_feature_window_tokens: int | None = None,
    resample_dead: int | None = None,
    init: Callable[[Any], None] | None = None,
    plan: KernelPlan | None = None,
    **crosscoder_overrides: Any,
):
    """A crosscoder of ``architecture`` trained on ``planted``'s batches for ``n_steps``.

    ``seed`` seeds the crosscoder's initialisation and the batch stream (the planted set
    itself is fixed by its own config seed). Anything left ``None`` takes the runner's
    per-architecture default, but for ``k``: TopK/BatchTopK's active latents per token is
    a sparsity level chosen for the data, and the runner's ``DEFAULT_K`` (32) is sized for
    real models' dictionaries, 20 times what planted sets fire; ``None`` here takes
    :func:`planted_k`.
    A planted set without ``mean_l0`` must be given ``k`` for the TopK-style architectures.
    ``sparsity_warm_up`` is the share of ``n_steps`` over which the sparsity coefficient ramps
    from 0 (None: the architecture's default, :func:`crosslens.architectures.defaults_for`);
    ``dead_feature_window_tokens`` is the trainer's (None: its default for the run's length);
    ``resample_dead``: times silent latents are resampled (None: the architecture's default);
    ``init``, when given, is called on the built crosscoder before training and may set
    its weights in place (``scripts/planted_objective.py`` starts from the planted code);
    ``plan``: the kernels the step runs (the device's default plan where None);
    ``crosscoder_overrides`` go to the crosscoder's config.
    """
    resolved = planted_training_arguments(
        planted,
        architecture,
        d_sae=d_sae,
        k=k,
        lr=lr,
        sparsity_coefficient=sparsity_coefficient,
        sparsity_warm_up=sparsity_warm_up,
        resample_dead=resample_dead,
    )
    torch.manual_seed(seed)
    crosscoder = planted_crosscoder(
        architecture,
        resolved,
        d_in=planted.config.d_in,
        n_snapshots=planted.config.n_snapshots,
        n_steps=n_steps,
        **crosscoder_overrides,
    )
    if init is not None:
        with torch.no_grad():
            init(crosscoder)
    trainer = CrosscoderTrainer(
        crosscoder,
        CrosscoderTrainerConfig(
            total_steps=n_steps,
            lr=resolved["lr"],
            lr_decay_steps=int(n_steps * lr_decay_fraction),
            seed=seed,
            dead_feature_window_tokens=dead_feature_window_tokens,
            resample_dead=resolved["resample_dead"],
            save_final=False,
        ),
        plan=plan,
    )
    trainer.fit(planted.batches(batch_size, seed=1000 + seed))
    crosscoder.eval()
    return crosscoder


def planted_crosscoder(
    architecture: str,
    resolved: dict[str, Any],
    *,
    d_in: int,
    n_snapshots: int,
    n_steps: int,
    device: str = "cpu",
    **crosscoder_overrides: Any,
):
    """The untrained crosscoder :func:`train_planted` trains, from its ``resolved`` arguments
    (:func:`planted_training_arguments`: ``d_sae``, ``k``, the sparsity coefficient and warm-up
    share), its weights drawn from torch's generator as it stands. On ``device="meta"`` it allocates
    no weights: what a cache of crosscoders trained earlier compares their training fields with."""
    return build_training_crosscoder(
        architecture,
        d_in=d_in,
        n_snapshots=n_snapshots,
        d_sae=resolved["d_sae"],
        k=resolved["k"],
        sparsity_coefficient=resolved["sparsity_coefficient"],
        sparsity_warm_up_steps=sparsity_warm_up_steps(architecture, n_steps, resolved["sparsity_warm_up"]),
        device=device,
        **crosscoder_overrides,
    )


def planted_training_arguments(
    planted: PlantedEvolution,
    architecture: str,
    *,
    d_sae: int,
    k: int | None = None,
    lr: float | None = None,
    sparsity_coefficient: float | None = None,
    sparsity_warm_up: float | None = None,
    resample_dead: int | None = None,
    **others: Any,
) -> dict[str, Any]:
    """The keywords :func:`train_planted` trains ``architecture`` on ``planted`` with, those left
    None resolved: ``k`` (:func:`planted_k`), the sparsity coefficient
    (:func:`~crosslens.architectures.sparsity_coefficient_for` at ``d_sae``), and the learning
    rate, warm-up share and resampling the architecture defaults to
    (:func:`~crosslens.architectures.defaults_for`). ``others`` come back as given."""
    defaults = defaults_for(architecture)
    if sparsity_coefficient is None:
        sparsity_coefficient = sparsity_coefficient_for(
            architecture, n_snapshots=planted.config.n_snapshots, d_in=planted.config.d_in, d_sae=d_sae
        )
    return {
        **others,
        "d_sae": d_sae,
        "k": planted_k(planted, architecture) if k is None else k,
        "lr": defaults.lr if lr is None else lr,
        "sparsity_coefficient": sparsity_coefficient,
        "sparsity_warm_up": defaults.sparsity_warm_up if sparsity_warm_up is None else sparsity_warm_up,
        "resample_dead": defaults.resample_dead if resample_dead is None else resample_dead,
    }


def planted_k(planted: PlantedEvolution, architecture: str) -> int:
    """TopK's and BatchTopK's active latents per token for ``planted``: 1.5 times its mean L0,
    rounded, and at least 2 where every token keeps at most ``k``
    (:func:`~crosslens.architectures.k_per_token`): at ``k`` 1 TopK reconstructs each token from
    one latent, so a token where two planted features fire loses one of them, while BatchTopK's
    ``k`` is a mean over the batch and 1 still lets a token take two."""
    mean_l0 = getattr(planted, "mean_l0", None)
    if mean_l0 is None and uses_k(architecture):
        raise ValueError(
            f"train_planted({architecture!r}) needs k: the planted set has no mean_l0 to derive TopK's "
            f"active latents per token from; pass k= (about 1.5 times the planted features firing per token)."
        )
    if mean_l0 is None:
        return defaults_for(architecture).k
    return max(2 if k_per_token(architecture) else 1, round(1.5 * mean_l0))
