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
:class:`~crosslens.crosscoders.per_snapshot_sae.SnapshotCodec`), documents its layout in its module,
writes the whole folder or nothing, ends it with a manifest (``crosslens_export.json``), and
writes the same bytes for the same run. Bad input is refused before anything is written, with an
:class:`ExportError` whose one line names the fix.
"""

from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "FORMATS": "crosslens.exports.config",
    "ExportConfig": "crosslens.exports.config",
    "ExportError": "crosslens.exports.config",
    "EXPORT_MANIFEST_NAME": "crosslens.core.paths",
    "export_run": "crosslens.exports.run",
    "run_export": "crosslens.exports.run",
    "BenchSAEConfig": "crosslens.exports.saebench",
    "SnapshotBenchSAE": "crosslens.exports.saebench",
    "load_bench_sae": "crosslens.exports.saebench",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
