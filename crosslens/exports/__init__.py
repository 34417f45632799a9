"""Exports of a trained run that the interpretability ecosystem reads, one snapshot at a time.

:func:`export_run` (``crosslens export RUN --format F --out OUT``) writes one of:

- ``neuronpedia`` (:mod:`crosslens.exports.neuronpedia`): the batch JSON SAEDashboard writes for
  Neuronpedia, one source per snapshot (``pythia-160m@step1000``), from the feature database
  ``crosslens dashboards RUN`` writes;
- ``delphi`` (:mod:`crosslens.exports.delphi`): EleutherAI delphi's latent cache (activations,
  locations and tokens, sharded by latent), one hookpoint per snapshot, computed on the run's
  activation store;
- ``saebench`` (:mod:`crosslens.exports.saebench`): one SAEBench custom SAE per snapshot
  (:class:`SnapshotBenchSAE`: unit-norm decoder rows, the norms folded into the encoder).

Each reads the run's final crosscoder in its per-snapshot mode (snapshot s's activation alone,
:class:`~crosslens.crosscoders.snapshot_sae.SnapshotCodec`), documents its layout in its module,
writes the whole folder or nothing, ends it with a manifest (``crosslens_export.json``), and
writes the same bytes for the same run. Bad input is refused before anything is written, with an
:class:`ExportError` whose one line names the fix.
"""

from crosslens.exports.config import FORMATS, ExportConfig, ExportError
from crosslens.exports.run import MANIFEST_NAME, export_run, run_export
from crosslens.exports.saebench import BenchSAEConfig, SnapshotBenchSAE, load_bench_sae

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "BenchSAEConfig",
    "ExportConfig",
    "ExportError",
    "SnapshotBenchSAE",
    "export_run",
    "load_bench_sae",
    "run_export",
]
