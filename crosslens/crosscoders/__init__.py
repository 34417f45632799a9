"""Multi-snapshot crosscoders as SAELens architectures.

Importing this package registers the architectures :data:`crosslens.architectures.TRAINING_DEFAULTS`
lists with SAELens, so ``SAE.from_dict``, ``SAE.load_from_disk``, ``TrainingSAE.load_from_disk``
and SAELens's ``SAETrainer`` accept them. Each is one module here (its configs, its inference
and training classes as ``CLASSES``, its math, the fast paths of its training step by the run's
:class:`~crosslens.kernels.plan.KernelPlan`, and its snapshot SAE's gate) and that one entry:

- ``crosscoder`` (module ``relu_crosscoder``): ReLU, decoder-norm-weighted L1 (Anthropic; Bayazit et al.)
- ``jumprelu_crosscoder``: per-snapshot JumpReLU gate, tanh sparsity loss (Ge et al.)
- ``topk_crosscoder``: top-k of ReLU(h) * sum_s ||W_dec[i, s]||, auxiliary-k loss
- ``batchtopk_crosscoder``: batch top-k in training, a fixed threshold for inference

One snapshot of a crosscoder is :class:`crosslens.crosscoders.per_snapshot_sae.SnapshotCodec`
(on the model's own activation scale; exported as ``crosslens.causal.SnapshotCodec``), or
:func:`snapshot_sae` (the same view as a plain SAELens SAE, for ``HookedSAETransformer``). Attaching a whole crosscoder to a ``HookedSAETransformer`` raises
an error that says so (:class:`crosslens.crosscoders.config.CrosscoderMetadata`).
"""

from importlib import import_module

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from crosslens.architectures import TRAINING_DEFAULTS
from crosslens.crosscoders.base import CrosscoderMixin, CrosscoderTrainingMixin
from crosslens.crosscoders.batchtopk_crosscoder import (
    BatchTopKCrosscoder,
    BatchTopKCrosscoderConfig,
    BatchTopKTrainingCrosscoder,
    BatchTopKTrainingCrosscoderConfig,
)
from crosslens.crosscoders.jumprelu_crosscoder import (
    JumpReLUCrosscoder,
    JumpReLUCrosscoderConfig,
    JumpReLUTrainingCrosscoder,
    JumpReLUTrainingCrosscoderConfig,
)
from crosslens.crosscoders.per_snapshot_sae import as_hooked_sae_transformer, snapshot_sae
from crosslens.crosscoders.relu_crosscoder import (
    ReLUCrosscoder,
    ReLUCrosscoderConfig,
    ReLUTrainingCrosscoder,
    ReLUTrainingCrosscoderConfig,
)
from crosslens.crosscoders.topk_crosscoder import (
    TopKCrosscoder,
    TopKCrosscoderConfig,
    TopKTrainingCrosscoder,
    TopKTrainingCrosscoderConfig,
)

ARCHITECTURES = {name: import_module(entry.module).CLASSES for name, entry in TRAINING_DEFAULTS.items()}
"""Architecture -> (inference class, inference config, training class, training config): each
module :data:`crosslens.architectures.TRAINING_DEFAULTS` lists, by its ``CLASSES``."""


def _register() -> None:
    # Idempotent for our own classes (re-importing, importlib.reload), but an
    # architecture name another class already holds is refused: skipping it would
    # leave SAE.load_from_disk building the other class from a crosscoder's cfg.json.
    for arch, (sae_cls, cfg_cls, train_cls, train_cfg_cls) in ARCHITECTURES.items():
        for registry, register, cls, cfg in (
            (SAE_CLASS_REGISTRY, register_sae_class, sae_cls, cfg_cls),
            (SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class, train_cls, train_cfg_cls),
        ):
            if arch not in registry:
                register(arch, cls, cfg)
            elif not _same_class(registry[arch][0], cls):
                taken = registry[arch][0]
                raise RuntimeError(
                    f"SAELens architecture {arch!r} is already registered to "
                    f"{taken.__module__}.{taken.__qualname__}, so crosslens cannot register "
                    f"{cls.__qualname__} under it; remove that registration (or the package "
                    "making it) before importing crosslens."
                )


def _same_class(a: type, b: type) -> bool:
    # after importlib.reload the class objects differ but name the same class
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


_register()

__all__ = [
    "ARCHITECTURES",
    "BatchTopKCrosscoder",
    "BatchTopKCrosscoderConfig",
    "BatchTopKTrainingCrosscoder",
    "BatchTopKTrainingCrosscoderConfig",
    "CrosscoderMixin",
    "CrosscoderTrainingMixin",
    "JumpReLUCrosscoder",
    "JumpReLUCrosscoderConfig",
    "JumpReLUTrainingCrosscoder",
    "JumpReLUTrainingCrosscoderConfig",
    "ReLUCrosscoder",
    "ReLUCrosscoderConfig",
    "ReLUTrainingCrosscoder",
    "ReLUTrainingCrosscoderConfig",
    "TopKCrosscoder",
    "TopKCrosscoderConfig",
    "TopKTrainingCrosscoder",
    "TopKTrainingCrosscoderConfig",
    "as_hooked_sae_transformer",
    "snapshot_sae",
]
