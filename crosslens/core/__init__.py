"""The bottom layer: infrastructure every stage shares, each mechanism in one module.

Nothing here knows about snapshots, crosscoders or stages, and nothing here imports from
crosslens outside this package (tests/test_imports.py holds the layering). Import the
submodule you need; this package imports a submodule only when it is first named (its
``__getattr__``), so that ``crosslens --help`` stays free of torch.

- :mod:`crosslens.core.errors`: the input errors crosslens raises (``CrosslensError`` and kin)
- :mod:`crosslens.core.paths`: the home folder and the names of a run's files and folders
- :mod:`crosslens.core.hashing`: sha256 of files, JSON values and model weights
- :mod:`crosslens.core.sealed`: JSON records sealed by their own checksum, written atomically
- :mod:`crosslens.core.locks`: cross-process locks on output folders
- :mod:`crosslens.core.staging`: folders written whole or not at all (staged beside, renamed into place)
- :mod:`crosslens.core.hooks`: TransformerLens hook names: block index, validity, which hook to read
- :mod:`crosslens.core.metadata`: reading a crosscoder's metadata, whatever object holds it
- :mod:`crosslens.core.launch`: whether this process is a ``torchrun`` worker, and which one
- :mod:`crosslens.core.devices`: devices, dtypes, accelerator memory, freeing a model
- :mod:`crosslens.core.seeding`: seeding torch, numpy and random
- :mod:`crosslens.core.progress`: progress bars, each one hidden by its caller's switch or ``TQDM_DISABLE``
- :mod:`crosslens.core.units`: sizes as people read them
- :mod:`crosslens.core.documents`: text files as documents: which files, decoded strictly, split
- :mod:`crosslens.core.packing`: packing tokenized documents into fixed-length rows
- :mod:`crosslens.core.lazy`: package attributes imported on first use
- :mod:`crosslens.core.tensors`: small tensor helpers (row counts, one-vs-all shares)
- :mod:`crosslens.core.compiling`: ``torch.compile`` whose calls never meet another thread's compile
- :mod:`crosslens.core.cpu_math`: torch's CPU math library started on one thread, so that its first call is exact
- :mod:`crosslens.core.weightfiles`: a safetensors file's header: tensor shapes, whether the file is whole
- :mod:`crosslens.core.model_specs`: a diffing suite's models (``ORG/NAME[@REVISION]``) and their labels
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes

__all__ = [
    "compiling",
    "cpu_math",
    "devices",
    "documents",
    "errors",
    "hashing",
    "hooks",
    "lazy",
    "launch",
    "locks",
    "metadata",
    "model_specs",
    "packing",
    "paths",
    "progress",
    "sealed",
    "seeding",
    "staging",
    "tensors",
    "units",
    "weightfiles",
]


__getattr__ = lazy_attributes(__name__, {name: f"{__name__}.{name}" for name in __all__})
