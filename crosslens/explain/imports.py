"""``crosslens explain RUN --import FILE``: explanations made elsewhere, into the run's explanations file.

Two layouts are read, each as its tool writes it:

* **delphi** (EleutherAI, its ``__main__``'s output): ``results/NAME/explanations/MODULE_latentN.txt``
  holds one explanation as a JSON string (what ``orjson.dumps`` writes), and
  ``results/NAME/scores/detection/MODULE_latentN.txt`` the detection scorer's samples (a JSON list
  of objects with ``activating`` and ``prediction``), from which the balanced accuracy is counted;
  ``run_config.json`` names the ``explainer_model``. MODULE is a hookpoint of the latent cache:
  ``crosslens export --format delphi`` names them ``HOOK@REVISION``, so each names a snapshot.
  An explanation delphi could not parse (``"Explanation could not be parsed."``) is skipped.
* **Neuronpedia** (its explanation export, the ``Explanation`` table's rows as its
  ``export-data.py`` dumps them to ``v1/MODEL/SOURCE/explanations/batch-N.jsonl.gz``, and as the
  earlier ``/api/explanation/export`` answered them, a JSON list): objects with ``modelId``,
  ``layer`` (the source id), ``index`` and ``description``, with ``typeName`` and
  ``explanationModelName``. ``crosslens export --format neuronpedia`` names each snapshot's source
  ``LAYER-SET__REVISION``, so each names a snapshot (a source of another layer, or of the set of
  another hook, is refused); rows of the crosscoder's own code carry a type ending in ``-code``.
  JSON lines (``.jsonl``, ``.jsonl.gz``), a JSON list, or a folder of them.

A feature index means something only for the crosscoder it was counted in. Where ``FILE`` is, lies
inside or holds a crosslens export (its ``crosslens_export.json``), the crosscoder that manifest
names must be the run's, or nothing is imported. Rows typed ``crosslens-explain`` are stored as
crosslens's own (which ``crosslens explain`` then does not ask again) only where such a manifest
vouches for them; elsewhere nothing ties them to this run's crosscoder, and they are stored as
Neuronpedia's.

An imported explanation never replaces a stored one of the same feature, reading and source, and
its detection score is stored only where the explanation kept is the one it judged.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.core.paths import EXPORT_MANIFEST_NAME, read_export_manifest
from crosslens.dashboards.explanation_schema import (
    CODE_TYPE_SUFFIX,
    NEURONPEDIA_SETS,
    neuronpedia_layer,
    neuronpedia_set,
)
from crosslens.dashboards.schema import ALL_SNAPSHOTS
from crosslens.explain.config import ExplainConfig, ExplainError
from crosslens.explain.contexts import plan_feature
from crosslens.explain.prompts import UNPARSED
from crosslens.explain.scoring import Detection, detection

DELPHI_FILE = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")
NEURONPEDIA_KEYS = ("modelId", "layer", "index", "description")


@dataclass
class Imported:
    feature: int
    snapshot: int
    source: str
    text: str
    model: str | None
    prompt: str
    detection: Detection | None = None


@dataclass
class ImportSummary:
    format: str
    read: int = 0
    added: int = 0
    kept: int = 0
    """Already stored for that feature, reading and source: kept as they were."""
    skipped: int = 0
    """Entries that hold no explanation (delphi's unparsed ones, empty descriptions)."""
    unverified: int = 0
    """Rows typed as crosslens's own that no export manifest ties to this run's crosscoder, stored as Neuronpedia's."""
    scores: int = 0
    stored: dict[str, int] = field(default_factory=dict)


class Snapshots:
    """Names of the run's snapshots as the two layouts write them."""

    def __init__(self, rows: list[tuple[int, str, str]], hook: str, n_features: int) -> None:
        self.index = {name: s for s, revision, label in rows for name in (revision, label)}
        self.hook, self.n_features = hook, n_features

    def of_revision(self, revision: str, where: str) -> int:
        if revision not in self.index:
            have = ", ".join(sorted(self.index, key=self.index.get))  # type: ignore[arg-type]
            raise ExplainError(
                f"{where}: {revision!r} is not a snapshot of this run ({have}); import explanations of this run's export"
            )
        return self.index[revision]

    def of_source(self, source: str, where: str) -> int:
        """The snapshot of Neuronpedia source id ``source``, which must be one ``crosslens export
        --format neuronpedia`` names for this run's crosscoder: ``LAYER-SET__REVISION`` with its
        hook's layer, and its hook's set unless ``--set-name`` named another."""
        source_id, at, revision = source.rpartition("__")
        if not at:
            raise ExplainError(
                f"{where}: Neuronpedia source {source!r} names no snapshot; import the explanations of "
                "sources `crosslens export RUN --format neuronpedia` made (LAYER-SET__REVISION)"
            )
        layer, own = neuronpedia_layer(self.hook), neuronpedia_set(self.hook)
        given_layer, _, given_set = source_id.partition("-")
        if given_layer != str(layer) or (given_set in NEURONPEDIA_SETS.values() and given_set != own):
            raise ExplainError(
                f"{where}: Neuronpedia source {source!r} is not of this run's crosscoder, which reads {self.hook} "
                f"(its sources are {layer}-{own}__REVISION, or {layer}-SET__REVISION where export --set-name named "
                "SET); import the explanations of this run's export"
            )
        return self.of_revision(revision, where)

    def feature(self, value: Any, where: str) -> int:
        try:
            feature = int(value)
        except (TypeError, ValueError):
            raise ExplainError(f"{where}: feature index {value!r} is not a whole number") from None
        if not 0 <= feature < self.n_features:
            raise ExplainError(f"{where}: feature {feature} is not one of this run's 0 to {self.n_features - 1}")
        return feature


def detect_format(path: Path) -> str:
    """``delphi`` or ``neuronpedia``; :class:`ExplainError` naming both layouts for anything else."""
    if not path.exists():
        raise ExplainError(f"--import {path}: no such file or folder")
    if path.is_dir() and ((path / "explanations").is_dir() or any(DELPHI_FILE.match(p.name) for p in path.iterdir())):
        return "delphi"
    first = next(neuronpedia_records(path, strict=False), None)
    if first is not None and all(key in first[1] for key in NEURONPEDIA_KEYS):
        return "neuronpedia"
    raise ExplainError(
        f"--import {path} is neither a delphi run's output (explanations/MODULE_latentN.txt) nor Neuronpedia's "
        f"explanation export (JSON objects with {', '.join(NEURONPEDIA_KEYS)}): pass one of those"
    )


def export_manifests(path: Path) -> list[tuple[Path, dict]]:
    """(file, record) of the crosslens export manifests of ``path``: the one of the folder it is or
    lies inside, and (a folder) those of the exports under it."""
    path = path.resolve()
    files = [folder / EXPORT_MANIFEST_NAME for folder in ([path] if path.is_dir() else []) + list(path.parents)]
    if path.is_dir():
        files += sorted(p for p in path.rglob(EXPORT_MANIFEST_NAME) if p.parent != path)
    records = [(file, read_export_manifest(file.parent)) for file in files]
    return [(file, record) for file, record in records if record is not None]


def vouched(path: Path, crosscoder: str | None) -> bool:
    """Whether an export manifest ties ``path``'s explanations to the run's crosscoder (weights
    sha256 ``crosscoder``); :class:`ExplainError` where one names another crosscoder."""
    manifests = export_manifests(path)
    for file, record in manifests:
        made = record.get("crosscoder_weights_sha256")
        if crosscoder is not None and made != crosscoder:
            raise ExplainError(
                f"--import {path}: {file} says this export was written from another crosscoder "
                f"({str(made)[:12]}...) than this run's ({crosscoder[:12]}...), whose feature indexes name other "
                "features; import the explanations of this run's export (crosslens export RUN --format neuronpedia)"
            )
    return bool(manifests) and crosscoder is not None


# --------------------------------------------------------------------------- delphi
def read_delphi(path: Path, names: Snapshots) -> tuple[list[Imported], int]:
    """The explanations (and detection scores) of a delphi run's output; how many were skipped."""
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    base = folder.parent if folder.name == "explanations" else folder
    model = _delphi_model(base)
    found, skipped = [], 0
    for file in sorted(folder.iterdir()):
        match = DELPHI_FILE.match(file.name)
        if match is None:
            continue
        try:
            text = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ExplainError(f"{file}: not a delphi explanation (a JSON string): {error}") from None
        if not isinstance(text, str):
            raise ExplainError(f"{file}: not a delphi explanation (a JSON string)")
        if not text.strip() or text.strip().lower().rstrip(".") in UNPARSED:
            skipped += 1
            continue
        snapshot = _delphi_snapshot(match["module"], names, file)
        feature = names.feature(match["index"], str(file))
        scores = base / "scores" / "detection" / file.name
        counts = _delphi_detection(scores) if scores.is_file() else None
        found.append(Imported(feature, snapshot, "delphi", " ".join(text.split()), model, "delphi", counts))
    return found, skipped


def _delphi_snapshot(module: str, names: Snapshots, file: Path) -> int:
    hook, at, revision = module.rpartition("@")
    if not at:
        raise ExplainError(
            f"{file}: delphi module {module!r} names no snapshot; explain the cache `crosslens export RUN --format delphi` "
            "writes, whose hookpoints are HOOK@REVISION"
        )
    if hook != names.hook:
        raise ExplainError(
            f"{file}: delphi module {module!r} reads {hook}, but this run's crosscoder reads {names.hook}"
        )
    return names.of_revision(revision, str(file))


def _delphi_model(base: Path) -> str | None:
    try:
        config = json.loads((base / "run_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(config.get("explainer_model")) if isinstance(config, dict) and config.get("explainer_model") else None


def _delphi_detection(path: Path) -> Detection | None:
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExplainError(f"{path}: not delphi's detection scores (a JSON list): {error}") from None
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "activating" in s for s in samples):
        raise ExplainError(f"{path}: not delphi's detection scores (objects with activating and prediction)")
    counts = detection([bool(s["activating"]) for s in samples], [s.get("prediction") for s in samples])
    return counts if counts.n_activating and counts.n_non_activating else None


# --------------------------------------------------------------------------- Neuronpedia
def neuronpedia_records(path: Path, strict: bool = True) -> Iterator[tuple[str, dict]]:
    """(where, object) of every record in a Neuronpedia export file or folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        name = file.name.lower()
        if not name.endswith((".jsonl", ".jsonl.gz", ".json")):
            continue
        try:
            yield from _records_of(file)
        except (OSError, ValueError, EOFError) as error:
            if strict:
                raise ExplainError(f"{file}: not JSON lines or a JSON list ({error})") from None
            return


def _records_of(file: Path) -> Iterator[tuple[str, dict]]:
    opener: Callable[..., Any] = gzip.open if file.name.lower().endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8") as handle:
        if file.name.lower().endswith(".json"):
            value = json.load(handle)
            items = value.get("explanations", []) if isinstance(value, dict) else value
            for k, item in enumerate(items if isinstance(items, list) else []):
                if isinstance(item, dict):
                    yield f"{file}[{k}]", item
            return
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                item = json.loads(line)
                if isinstance(item, dict):
                    yield f"{file}:{line_number}", item


def read_neuronpedia(path: Path, names: Snapshots, own: bool = False) -> tuple[list[Imported], int]:
    """The explanations of a Neuronpedia export; how many were skipped (no description). Rows typed
    ``crosslens-explain`` keep source ``crosslens`` only where ``own`` (an export manifest vouches
    that they describe the run's crosscoder)."""
    found, skipped, code_seen = [], 0, set()
    for where, row in neuronpedia_records(path):
        if not all(key in row for key in NEURONPEDIA_KEYS):
            raise ExplainError(f"{where}: a Neuronpedia explanation has {', '.join(NEURONPEDIA_KEYS)}")
        text = " ".join(str(row.get("description") or "").split())
        if not text:
            skipped += 1
            continue
        type_name = str(row.get("typeName") or "neuronpedia")
        feature = names.feature(row["index"], where)
        snapshot = names.of_source(str(row["layer"]), where)  # of this hook's layer and set, and a snapshot of the run
        if type_name.endswith(CODE_TYPE_SUFFIX):
            snapshot = ALL_SNAPSHOTS
            if (feature, text) in code_seen:
                continue  # every snapshot's source carries the crosscoder's own code explanation
            code_seen.add((feature, text))
        source = "crosslens" if own and type_name.startswith("crosslens-explain") else "neuronpedia"
        model = row.get("explanationModelName")
        found.append(Imported(feature, snapshot, source, text, str(model) if model else None, type_name))
    return found, skipped


def import_explanations(run_dir: str | Path, path: str | Path, config: ExplainConfig) -> ImportSummary:
    """Store the explanations (and delphi's detection scores) of ``path`` in ``RUN/explanations.sqlite``,
    with the phases of the features they describe and their drift; returns what was read and kept."""
    from crosslens.explain.run import Explainer
    from crosslens.explain.store import ExplanationStore

    path = Path(path)
    explainer = Explainer(run_dir, config)
    try:
        fmt = detect_format(path)
        own = vouched(path, explainer.crosscoder)
        meta = explainer.database.execute("SELECT value FROM meta WHERE key = 'crosscoder'").fetchone()
        hook = str((json.loads(meta[0]) if meta else {}).get("hook_name") or "")
        rows = explainer.database.execute("SELECT snapshot, revision, label FROM snapshots").fetchall()
        names = Snapshots(rows, hook, explainer.n_features)
        found, skipped = read_delphi(path, names) if fmt == "delphi" else read_neuronpedia(path, names, own)
        summary = ImportSummary(fmt, read=len(found) + skipped, skipped=skipped)
        if fmt == "neuronpedia" and not own:
            summary.unverified = sum(item.prompt.startswith("crosslens-explain") for item in found)
        store = ExplanationStore(explainer.run_dir, explainer.binding, overwrite=config.overwrite)
        try:
            store.set_drift_rule(explainer.rule)
            _store_all(store, found, summary)
            touched = sorted({item.feature for item in found})
            stored = store.explanations(touched)
            emerge = dict(
                (f, (e, p))
                for f, e, p in explainer.database.execute(
                    "SELECT feature, emergence_snapshot, peak_snapshot FROM features"
                )
            )
            for feature in touched:
                extra = sorted({s for s, _ in stored.get(feature, {})})
                store.set_phases(plan_feature(explainer.contexts, feature, *emerge[feature], config.phases, extra))
            store.update_drift(touched, explainer.rule)
            store.commit()
            summary.stored = store.counts()
        finally:
            store.close(compact=True)
        return summary
    finally:
        explainer.close()


def _store_all(store: Any, found: list[Imported], summary: ImportSummary) -> None:
    for item in found:
        row_id, added = store.add_explanation(
            item.feature, item.snapshot, item.source, item.text, model=item.model, prompt=item.prompt
        )
        summary.added += added
        summary.kept += not added
        if item.detection is None or not (added or store.text(row_id) == item.text):
            continue  # a score of another text than the one kept says nothing of the one kept
        if store.add_score(
            row_id, item.feature, item.snapshot, item.detection, model=item.model, prompt="delphi-detection"
        ):
            summary.scores += 1
