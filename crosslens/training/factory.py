"""Fresh training models, crosscoders and per-snapshot SAEs alike, built one way.

SAELens configs name the sparsity term after its loss (``l1_coefficient`` for ReLU/standard
and the TopK-style crosscoders' L1 term, ``l0_coefficient`` for JumpReLU), and TopK-style
ones take ``k`` as well (SAELens's ``topk`` SAE ``k`` alone); crosslens's
callers say ``sparsity_coefficient`` and ``sparsity_warm_up_steps`` whatever the loss.
:func:`build_training_model` does that translation for both families.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from crosslens.architectures import (
    DEFAULT_DECODER_INIT_NORM,
    DEFAULT_K,
    SPARSITY_FIELDS,
    sparsity_warm_up_steps,
    uses_k,
)


def build_training_model(
    train_cls: type,
    cfg_cls: type,
    architecture: str,
    *,
    sparsity_coefficient: float | None,
    sparsity_warm_up_steps: int | None,
    k: int | None,
    **config: Any,
) -> Any:
    """``train_cls(cfg_cls(**config, <sparsity fields>))``: the coefficient and warm-up under
    the architecture's own field names, and ``k`` for the TopK-style architectures. Either
    sparsity setting left None takes the config's own default.

    ``config`` holds the shape and anything else the config takes; it is applied last, so
    it may also override a sparsity field by its SAELens name.
    """
    kwargs: dict[str, Any] = {}
    if architecture in SPARSITY_FIELDS:
        coefficient_field, warm_up_field = SPARSITY_FIELDS[architecture]
        if sparsity_warm_up_steps is not None:
            kwargs[warm_up_field] = sparsity_warm_up_steps
        if sparsity_coefficient is not None:
            kwargs[coefficient_field] = sparsity_coefficient
    if uses_k(architecture):
        kwargs.update(k=k)
    kwargs.update(config)
    return train_cls(cfg_cls(**kwargs))


def build_training_crosscoder(
    architecture: str,
    *,
    d_in: int,
    n_snapshots: int,
    d_sae: int,
    k: int = DEFAULT_K,
    sparsity_coefficient: float | None = None,
    sparsity_warm_up_steps: int | None = None,
    decoder_init_norm: float = DEFAULT_DECODER_INIT_NORM,
    device: str = "cpu",
    **extra: Any,
):
    """A freshly initialised training crosscoder of ``architecture`` (SAELens registry name).
    ``sparsity_coefficient`` None: the architecture's (shape-scaled for JumpReLU);
    ``sparsity_warm_up_steps`` None: the architecture's share of the run, which the trainer
    fills in (:func:`fill_sparsity_warm_up`)."""
    from crosslens.crosscoders import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}.")
    _, _, train_cls, train_cfg_cls = ARCHITECTURES[architecture]
    return build_training_model(
        train_cls,
        train_cfg_cls,
        architecture,
        sparsity_coefficient=sparsity_coefficient,
        sparsity_warm_up_steps=sparsity_warm_up_steps,
        k=k,
        d_in=d_in,
        d_sae=d_sae,
        n_snapshots=n_snapshots,
        decoder_init_norm=decoder_init_norm,
        device=device,
        **extra,
    )


def changed_training_fields(saved: Mapping[str, Any], built: Any) -> list[str]:
    """The training fields (a training config's fields that its inference config lacks) in which a
    crosscoder saved earlier differs from the config ``built`` now, a field either lacks included:
    a default or a name changed in the code since. ``saved`` is the whole training config it was
    saved with (its ``to_dict()``) or what an inference save keeps of it
    (:data:`~crosslens.core.metadata.TRAINING_DETAILS_KEY`)."""
    other = {f.name for f in dataclasses.fields(built.get_inference_config_class())} | {"architecture", "metadata"}
    was, now = (
        json.loads(json.dumps({name: value for name, value in fields.items() if name not in other}))
        for fields in (saved, built.get_training_architecture_details())
    )
    return sorted(name for name in was.keys() | now.keys() if was.get(name) != now.get(name))


def fill_sparsity_warm_up(config: Any, total_steps: int) -> None:
    """Set the sparsity warm-up of a crosscoder training ``config``, where it is None, to its
    architecture's share of a run of ``total_steps``
    (:func:`~crosslens.architectures.sparsity_warm_up_steps`), in place."""
    architecture = config.architecture()
    _, warm_up_field = SPARSITY_FIELDS[architecture]
    if getattr(config, warm_up_field) is None:
        setattr(config, warm_up_field, sparsity_warm_up_steps(architecture, total_steps))
