"""Sharing trained crosscoders the way SAELens shares SAEs.

- :func:`pretrained_directory`: every registered release (packaged YAML, files named by
  ``CROSSLENS_PRETRAINED``, and :func:`register_release`), like SAELens's
  ``get_pretrained_saes_directory``.
- :func:`load_pretrained`: ``load_pretrained(release, crosscoder_id)`` -> the crosscoder.
- :func:`push_to_hub`: upload a trained crosscoder in SAELens's layout with a model card,
  and get the registry entry to paste.

The registry modules import neither torch nor SAELens, so listing releases is quick.
"""

from crosslens.pretrained.load import load_pretrained
from crosslens.pretrained.registry import (
    PRETRAINED_ENV,
    PretrainedCrosscoderEntry,
    PretrainedCrosscoderRelease,
    PretrainedRegistryError,
    UnknownPretrainedError,
    pretrained_directory,
    register_release,
    unregister_release,
)


def __getattr__(name: str):
    # push pulls in torch and the analysis package; load it on first use
    if name in __all__ and name in ("push_to_hub", "LocalHubApi", "PushResult"):
        from crosslens.pretrained import push

        return getattr(push, name)
    raise AttributeError(f"module 'crosslens.pretrained' has no attribute {name!r}")


__all__ = [
    "LocalHubApi",
    "PRETRAINED_ENV",
    "PretrainedCrosscoderEntry",
    "PretrainedCrosscoderRelease",
    "PretrainedRegistryError",
    "PushResult",
    "UnknownPretrainedError",
    "load_pretrained",
    "pretrained_directory",
    "push_to_hub",
    "register_release",
    "unregister_release",
]
