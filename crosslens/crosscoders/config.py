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

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sae_lens.saes.sae import SAEConfig, SAEMetadata, TrainCoefficientConfig, TrainingSAEConfig

from crosslens.architectures import DEFAULT_DECODER_INIT_NORM, defaults_for
from crosslens.core.errors import CrosslensError
from crosslens.core.metadata import TRAINING_DETAILS_KEY


class CrosscoderMetadata(SAEMetadata):
    """A crosscoder's ``SAEMetadata``, saved and loaded like any SAE's, with no single output hook.

    Code that attaches an SAE at one hook of one model (SAELens's
    ``HookedSAETransformer.add_sae``, hence ``run_with_saes``, ``run_with_cache_with_saes``
    and ``saes()``; its ``SAETransformerBridge``) asks the SAE where it writes,
    ``cfg.metadata.hook_name_out``, before attaching anything. A crosscoder has no such hook:
    the hook hands it ``[batch, pos, d_model]`` from one model, and it would read the
    positions as its snapshots (silently, when there are as many positions as snapshots).
    So the question is answered with an error that names the fix, ``snapshot_sae(s)``.
    """

    __slots__ = ("_attached_as",)  # a slot, not an attribute: it stays out of cfg.json

    @property
    def hook_name_out(self) -> str:
        architecture, n = getattr(self, "_attached_as", None) or ("crosscoder", "n_snapshots")
        raise ValueError(
            f"cannot attach a {architecture} to a HookedSAETransformer: a hook gives "
            f"[batch, pos, d_model] from one model, and the crosscoder would read the positions "
            f"as its {n} snapshots. Attach one snapshot instead: "
            f"model.add_sae(crosscoder.snapshot_sae(s)) with s in [0, {n}) the snapshot this "
            "model is (crosscoder.cfg.metadata.suite['snapshots'][s]['revision']); "
            "crosslens.crosscoders.as_hooked_sae_transformer(model) makes a suite's model one."
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> CrosscoderMetadata:
        copied = CrosscoderMetadata(**copy.deepcopy(self.__dict__, memo))
        copied.__setstate__((copied.__dict__, getattr(self, "_attached_as", None)))
        return copied

    def __getstate__(self) -> tuple[dict[str, Any], Any]:  # type: ignore[override]
        return self.__dict__, getattr(self, "_attached_as", None)

    def __setstate__(self, state: tuple[dict[str, Any], Any]) -> None:  # type: ignore[override]
        self.__dict__.update(state[0])
        self._attached_as = state[1]


@dataclass(kw_only=True)
class CrosscoderConfigFields:
    """Fields every crosscoder config adds to SAELens's ``SAEConfig``.

    ``d_in`` (from SAEConfig) is the width of one snapshot's activation.
    """

    if TYPE_CHECKING:  # SAEConfig's fields, for the checks below
        d_in: int
        d_sae: int
        normalize_activations: str
        reshape_activations: str

    n_snapshots: int
    """Number of training snapshots S read per token; inputs are [..., S, d_in]."""
    apply_b_dec_to_input: bool = False
    """Subtract b_dec from the input before encoding (off, as in Anthropic's crosscoders)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # SAELens builds plain SAEMetadata (from_dict, deepcopy, inference configs); whatever
        # metadata a crosscoder config is given becomes a CrosscoderMetadata.
        if name == "metadata" and not isinstance(value, CrosscoderMetadata):
            value = CrosscoderMetadata(**(value.to_dict() if isinstance(value, SAEMetadata) else dict(value)))
        super().__setattr__(name, value)
        if name in ("metadata", "n_snapshots") and isinstance(self.__dict__.get("metadata"), CrosscoderMetadata):
            self.metadata._attached_as = (self.architecture(), self.__dict__.get("n_snapshots", "n_snapshots"))  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        if not isinstance(self.n_snapshots, int) or self.n_snapshots < 1:
            raise ValueError(
                f"n_snapshots must be a positive int, got {self.n_snapshots!r}; "
                "set it to the number of snapshots stacked in each batch."
            )
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}.")
        if self.normalize_activations != "none":
            raise ValueError(
                "crosscoders need normalize_activations='none', got "
                f"{self.normalize_activations!r}: normalise each snapshot in the "
                "activation store and fold the factors afterwards with "
                "fold_activation_norm_scaling_factors(factors_S)."
            )
        if self.reshape_activations != "none":
            raise ValueError(
                "crosscoders need reshape_activations='none', got "
                f"{self.reshape_activations!r}: flatten hook_z heads before stacking "
                "snapshots."
            )
        super().__post_init__()  # type: ignore[misc]


@dataclass(kw_only=True)
class CrosscoderTrainingConfigFields(CrosscoderConfigFields):
    """Fields every crosscoder training config adds to SAELens's ``TrainingSAEConfig``."""

    decoder_init_norm: float = DEFAULT_DECODER_INIT_NORM  # type: ignore[assignment]
    """Initial norm of every (feature, snapshot) decoder row W_dec[i, s]."""

    def __post_init__(self) -> None:
        if self.decoder_init_norm is None or not self.decoder_init_norm > 0:
            raise ValueError(f"decoder_init_norm must be > 0, got {self.decoder_init_norm}; Bayazit et al. use 0.08.")
        super().__post_init__()


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

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> Any:
        """SAELens's ``from_dict``, refusing a crosscoder saved for inference (a run's ``final/``):
        its cfg.json keeps the training fields only as ``metadata.training_architecture_details``,
        and the training config would take defaults for them."""
        details = (config_dict.get("metadata") or {}).get(TRAINING_DETAILS_KEY) or {}
        missing = sorted(set(details) - set(config_dict))
        if missing:
            raise saved_for_inference_error(config_dict.get("architecture", cls.architecture()), missing)
        return super().from_dict(config_dict)


def saved_for_inference_error(architecture: str, missing: list[str]) -> CrosslensError:
    """Why a crosscoder saved for inference is not loaded as a training one, and what to load instead."""
    named = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
    return CrosslensError(
        f"this folder holds a {architecture} saved for inference, without what its training kept "
        f"({named}); loaded as a training crosscoder it would train on with guessed ones. Load it with "
        "SAE.load_from_disk, or load a training checkpoint (one of the run's step_* folders) with "
        "TrainingSAE.load_from_disk to train on"
    )


def check_coefficient(config: Any, coefficient: str, warm_up: str) -> None:
    """Refuse a negative sparsity coefficient or warm-up (named fields of ``config``). A warm-up
    left None is the architecture's share of the run, which the trainer counts in steps once it
    knows the run's length; where that share is 0 it is 0 steps at once."""
    if getattr(config, warm_up) is None and not defaults_for(config.architecture()).sparsity_warm_up:
        setattr(config, warm_up, 0)
    value, steps = getattr(config, coefficient), getattr(config, warm_up)
    if value < 0 or (steps is not None and steps < 0):
        raise ValueError(f"{coefficient} and {warm_up} must be >= 0, got {value} and {steps}.")


def coefficient_schedule(config: Any, coefficient: str, warm_up: str) -> TrainCoefficientConfig:
    """The sparsity coefficient named ``coefficient`` of ``config`` and its warm-up, as SAELens's
    trainers schedule it (``get_coefficients``). A warm-up left None is set by crosslens's
    ``CrosscoderTrainer``; another trainer is told to set it."""
    steps = getattr(config, warm_up)
    if steps is None:
        share = defaults_for(config.architecture()).sparsity_warm_up
        raise ValueError(
            f"{warm_up} is None, which crosslens's CrosscoderTrainer sets to {share:.0%} of the run's steps; "
            f"to train with another trainer, set it in steps ({warm_up}=int({share} * total_steps))."
        )
    return TrainCoefficientConfig(value=getattr(config, coefficient), warm_up_steps=steps)
