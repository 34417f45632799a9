"""The config bases every crosscoder architecture builds its two configs on.

An architecture's inference config is a :class:`CrosscoderConfig` (SAELens's
``SAEConfig`` plus the crosscoder fields) and its training config a
:class:`CrosscoderTrainingConfig` (``TrainingSAEConfig`` plus them). Each names its
architecture once, as a class keyword::

    @dataclass(kw_only=True)
    class ReLUCrosscoderConfig(CrosscoderConfig, architecture="crosscoder"): ...

and :meth:`~CrosscoderConfig.architecture` (which SAELens reads to find the classes of a
saved crosscoder) returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from crosslens.crosscoders.base import CrosscoderConfigFields, CrosscoderTrainingConfigFields


class _NamedArchitecture:
    """Holds the architecture name given as a class keyword, for SAELens's ``architecture()``."""

    _architecture: ClassVar[str]

    def __init_subclass__(cls, architecture: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if architecture is not None:
            cls._architecture = architecture

    @classmethod
    def architecture(cls) -> str:
        return cls._architecture


@dataclass(kw_only=True)
class CrosscoderConfig(_NamedArchitecture, CrosscoderConfigFields, SAEConfig):
    """Inference config of a crosscoder architecture."""


@dataclass(kw_only=True)
class CrosscoderTrainingConfig(_NamedArchitecture, CrosscoderTrainingConfigFields, TrainingSAEConfig):
    """Training config of a crosscoder architecture."""


def check_coefficient(config: Any, coefficient: str, warm_up: str) -> None:
    """Refuse a negative sparsity coefficient or warm-up (named fields of ``config``)."""
    value, steps = getattr(config, coefficient), getattr(config, warm_up)
    if value < 0 or steps < 0:
        raise ValueError(f"{coefficient} and {warm_up} must be >= 0, got {value} and {steps}.")
