"""Sharing trained crosscoders the way SAELens shares SAEs.

- :func:`pretrained_directory`: every registered release (packaged YAML, files named by
  ``CROSSLENS_PRETRAINED``, and :func:`register_release`), like SAELens's
  ``get_pretrained_saes_directory``.
- :func:`from_pretrained`: ``crosscoder, suite = from_pretrained(release, crosscoder_id)``: a
  release in any format crosslens reads (SAELens's, Kissane/Nanda's, dictionary_learning's,
  Llamascopium's), converted once into crosslens's cache, with the suite of models it reads.
- :func:`load_pretrained`: ``load_pretrained(release, crosscoder_id)`` -> the crosscoder (SAELens layout).
- :func:`release_run`: a release's crosscoder as a run folder, for dashboards, browse and export.
- :func:`push_to_hub`: upload a trained crosscoder in SAELens's layout with a model card,
  and get the registry entry to paste.

The registry modules import neither torch nor SAELens, so listing releases is quick.
"""

from crosslens.core.lazy import lazy_attributes
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

# these pull in torch (push also the analysis package): imported on first use
__getattr__ = lazy_attributes(
    __name__,
    {
        "push_to_hub": "crosslens.pretrained.push",
        "LocalHubApi": "crosslens.pretrained.local_hub",
        "PushResult": "crosslens.pretrained.push",
        "from_pretrained": "crosslens.pretrained.releases",
        "Pretrained": "crosslens.pretrained.releases",
        "measure_norm_factors": "crosslens.pretrained.norm_factors",
        "release_run": "crosslens.pretrained.run_folder",
    },
)


__all__ = [
    "LocalHubApi",
    "Pretrained",
    "from_pretrained",
    "measure_norm_factors",
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
    "release_run",
    "unregister_release",
]
