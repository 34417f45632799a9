"""A released crosscoder as a run folder, so that everything that reads a finished ``crosslens
train`` run reads it too: ``crosslens dashboards RUN --stream``, ``crosslens browse RUN``,
``crosslens export RUN``, ``crosslens analyze --crosscoder RUN``.

The folder holds what a run's holds where it matters to them: ``final/`` (the converted crosscoder,
its model card and source record, sealed by a checkpoint record naming the release), ``run.json``
(which release, from where; no store, since nothing was harvested to train it) and the run's seal.
It is built under a temporary name and renamed into place, so a stopped call leaves none half-made.

A release whose source scaled activations by per-snapshot factors it did not save (Kissane's) reads
no activation until they are measured: ``store=`` (``--store``), a store of its models, measures
them (:func:`~crosslens.pretrained.measure_norm_factors`) into ``final/cfg.json``. Without one the
folder serves what needs no activation (the decoder norms' diffing classes), and the stages that
read activations refuse it, naming that command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crosslens.activations.store import ActivationStore
from crosslens.core.errors import CrosslensError, PartnerMismatchError
from crosslens.core.metadata import CFG_NAME, unmeasured_norm_factors
from crosslens.core.paths import FINAL_DIRNAME, RUN_CONFIG_NAME
from crosslens.core.staging import staged_folder
from crosslens.pretrained.convert import SOURCE_RECORD, link_or_copy, source_record
from crosslens.pretrained.norm_factors import measure_norm_factors
from crosslens.pretrained.registry import get_release
from crosslens.pretrained.releases import only_entry
from crosslens.training.records import write_record
from crosslens.training.runfolder import seal_run


def release_run(
    release: str,
    crosscoder_id: str | None = None,
    out: str | os.PathLike = "",
    *,
    store: str | os.PathLike | ActivationStore | None = None,
    overwrite: bool = False,
) -> Path:
    """A run folder at ``out`` holding the release's crosscoder (downloaded and converted on first
    use, its models checked as :func:`~crosslens.pretrained.from_pretrained` checks them), with the
    metadata the checks read: what the release says of it where its own cfg.json does not. ``store``:
    an activation store of its models, on which the per-snapshot factors a source did not save are
    measured and recorded (refused for a release that needs none, and a store of other models)."""
    from crosslens.pretrained.releases import checked_folder

    out = Path(out)
    if not str(out):
        raise CrosslensError("release_run needs out=, the folder to make the run in")
    if out.exists() and not overwrite:
        raise CrosslensError(f"{out} exists; pick another folder, or pass overwrite=True (--overwrite)")
    opened = store if isinstance(store, ActivationStore) or store is None else ActivationStore.open(store)
    lookup = get_release(release)
    entry = lookup.entry(crosscoder_id) if crosscoder_id is not None else only_entry(lookup)
    crosscoder, folder = checked_folder(lookup, entry)
    if opened is not None:
        _measure_factors(crosscoder, opened, lookup.release)
    with staged_folder(out) as scratch:
        (scratch / FINAL_DIRNAME).mkdir()
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and path.name != CFG_NAME:
                link_or_copy(path, scratch / FINAL_DIRNAME / path.name)
        _write_checked_cfg(folder / CFG_NAME, scratch / FINAL_DIRNAME / CFG_NAME, crosscoder)
        provenance = _provenance(lookup.release, entry.id, folder)
        write_record(scratch / FINAL_DIRNAME, pretrained=provenance)
        run = {"pretrained": provenance, "hook_name": entry.hook_name, "store_path": None}
        (scratch / RUN_CONFIG_NAME).write_text(json.dumps(run, indent=1, sort_keys=True))
        seal_run(scratch)
    return out


def _measure_factors(crosscoder: Any, store: ActivationStore, release: str) -> None:
    """Record on ``crosscoder`` the factors its source did not save, measured on ``store``."""
    if not unmeasured_norm_factors(crosscoder.cfg.metadata):
        raise PartnerMismatchError(
            f"release {release!r} records how its crosscoder scales activations (or reads them raw), so the store "
            f"{store.path} has nothing to measure for it; make its run without a store"
        )
    measure_norm_factors(crosscoder, store)  # refuses a store of other models, or of them in another order


def _provenance(release: str, crosscoder_id: str, folder: Path) -> dict[str, Any]:
    record = source_record(folder) if (folder / SOURCE_RECORD).is_file() else {}
    return {
        "release": release,
        "crosscoder_id": crosscoder_id,
        "source": record.get("source"),
        "key": record.get("key"),
    }


def _write_checked_cfg(source: Path, target: Path, crosscoder: Any) -> None:
    """``source`` with the checked crosscoder's metadata: its release and id, and the suite and hook
    its release gave where the file records none (what everything reading the run pairs it by)."""
    cfg = json.loads(source.read_text())
    cfg["metadata"] = crosscoder.cfg.to_dict()["metadata"]
    target.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
