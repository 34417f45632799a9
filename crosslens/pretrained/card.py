"""The model card of a converted crosscoder: where it came from, under which licence, what the
conversion did, and how to load it (written beside the weights, as ``README.md``); and the parts
cards share: front matter, the loading snippet, a two-model crosscoder's diffing section and a
multi-snapshot crosscoder's emergence check; and what of a crosscoder's metadata names this machine's
files, as it is published (their names, not their paths)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from crosslens.activations.config import DATASET_PATH_SEPARATOR
from crosslens.pretrained.formats import FORMATS

NO_LICENCE = (
    "The source states no licence for these weights that crosslens could find; ask its authors before "
    "redistributing them."
)


def front_matter(front: dict[str, Any]) -> list[str]:
    """A model card's Hugging Face front matter (the YAML between ``---`` lines), then a blank line."""
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]


def converted_card(record: dict[str, Any]) -> str:
    """Markdown (with Hugging Face front matter) for the source record of a converted folder."""
    source, sizes = record["source"], record["sizes"]
    suite = record.get("suite") or {}
    models = [m["model_id"] for m in suite.get("models") or []] or [suite.get("model_id")] * bool(suite.get("model_id"))
    front: dict[str, Any] = {"library_name": "saelens", "tags": ["crosslens", "crosscoder", "converted"]}
    if record.get("license"):
        front["license"] = record["license"]
    if models:
        front["base_model"] = sorted(set(models))
    where = f"`{source['repo_id']}`" if source.get("repo_id") else f"the folder `{source.get('path')}`"
    folder = f", folder `{source['path']}`" if source.get("repo_id") and source.get("path") else ""
    commit = f" at commit `{source['revision']}`" if source.get("revision") else ""
    name = record.get("release") or source.get("repo_id") or "local"
    lines = [
        *front_matter(front),
        f"# {name}: {record['architecture']} converted by crosslens",
        "",
        f"Converted from {where}{folder}{commit}, saved in the {_format_name(source['format'])} format, "
        f"into crosslens's `{record['architecture']}` (SAELens layout): {sizes['d_sae']} latents reading "
        f"{sizes['n_snapshots']} {'models' if suite.get('family') == 'models' else 'snapshots'} of width "
        f"{sizes['d_in']}" + (f" at `{record['hook_name']}`" if record.get("hook_name") else "") + ".",
        "",
        "## Licence",
        "",
        f"`{record['license']}`, as the source states." if record.get("license") else NO_LICENCE,
    ]
    if record.get("license_note"):
        lines += ["", record["license_note"]]
    lines += ["", "## Source files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {n} | {f['bytes']} | `{f['sha256']}` |" for n, f in sorted(source["files"].items())]
    lines += _reads(suite) + _quirks(record) + _credits(record) + _load(record)
    return "\n".join(lines) + "\n"


def _format_name(name: str) -> str:
    module = FORMATS.get(name)
    return module.SOURCE if module is not None else name


def _reads(suite: dict[str, Any]) -> list[str]:
    if not suite:
        return []
    lines = ["", "## What it reads", "", "| position | model | revision |", "|---|---|---|"]
    entries = suite.get("models") or [
        {"model_id": suite.get("model_id"), "revision": s.get("revision")} for s in suite.get("snapshots") or []
    ]
    lines += [f"| {i} | {e.get('model_id')} | {e.get('revision') or 'main'} |" for i, e in enumerate(entries)]
    processing = suite.get("processing")
    if processing:
        flags = ", ".join(f"{k}={v}" for k, v in sorted(processing.items()))
        lines += [
            "",
            f"The models load with TransformerLens's weight processing set to {flags}, as the source read them.",
        ]
    return lines


def _quirks(record: dict[str, Any]) -> list[str]:
    quirks = record.get("quirks") or []
    if not quirks:
        return []
    return ["", "## What the conversion did", "", *(f"- {quirk}" for quirk in quirks)]


def _credits(record: dict[str, Any]) -> list[str]:
    lines = []
    for label, key in (("Paper", "paper"), ("Code", "code"), ("Confirmed by", "confirmed_by")):
        if record.get(key):
            lines.append(f"- {label}: {record[key]}")
    return ["", "## Credit", "", *lines] if lines else []


def load_section(code: list[str]) -> list[str]:
    """A model card's "Load" section: ``import crosslens``, then ``code``, as a Python block."""
    return ["", "## Load", "", "```python", "import crosslens", "", *code, "```"]


def saelens_load_section(repo_id: str, crosscoder_id: str) -> list[str]:
    """How SAELens alone loads a pushed crosscoder, by repo id, as a Python block of its own.
    ``import crosslens.crosscoders`` is in it because that import registers the architectures
    with SAELens; ``import crosslens`` alone imports nothing until a name is used."""
    return [
        "",
        "With SAELens alone, by repo id:",
        "",
        "```python",
        "import crosslens.crosscoders  # registers the crosscoder architectures with SAELens",
        "from sae_lens import SAE",
        "",
        f'crosscoder = SAE.from_pretrained("{repo_id}", "{crosscoder_id}")',
        "```",
    ]


def _load(record: dict[str, Any]) -> list[str]:
    if not record.get("release"):
        return []
    return load_section(
        [f'crosscoder, suite = crosslens.from_pretrained("{record["release"]}", "{record["crosscoder_id"]}")']
    )


def saved_emergence(folder: Path) -> Any:
    """The emergence check ``crosslens analyze`` saved beside the run of the crosscoder in ``folder``,
    for these very weights; None where the run has none, and where it is of other weights (a
    checkpoint's, or a run trained again), which a note says."""
    from crosslens.analysis.agreement import holding_agreement
    from crosslens.analysis.emergence_record import EmergenceRecordError, read_emergence
    from crosslens.core.hashing import remembered_file_sha256
    from crosslens.core.metadata import WEIGHTS_NAME
    from crosslens.core.paths import EMERGENCE_NAME
    from crosslens.training.runfolder import run_folder

    run = run_folder(folder)
    if run is None or not (run / EMERGENCE_NAME).is_file():
        return None
    try:
        result = read_emergence(run, remembered_file_sha256(folder / WEIGHTS_NAME))
    except EmergenceRecordError as error:
        print(f"note: the card leaves out the check `crosslens analyze` saved: {error}")
        return None
    return holding_agreement(result, run, "the card")[0]


def run_diffing(crosscoder: Any, folder: Path, frequency: Any = None) -> Any:
    """The diffing classes of a two-model crosscoder (its ``folder``), for its card, with latent
    scaling's verdict where ``crosslens analyze`` saved it beside the run for these very weights
    (:func:`saved_emergence`)."""
    from crosslens.analysis.diffing import DiffingAnalysis

    return DiffingAnalysis.with_emergence(crosscoder, saved_emergence(folder), frequency)


def emergence_section(result: Any) -> list[str]:
    """A multi-snapshot crosscoder card's section: how many of its emergences latent scaling contests,
    its lineage events, and how many of them a crosscoder of another run on the same activations
    makes too, from the check ``crosslens analyze`` saved (``result``, or None: not checked)."""
    from crosslens.analysis.agreement import agreement_text
    from crosslens.analysis.lineage_events import counts_text

    lines = ["## Is this emergence real?", ""]
    if result is None:
        return [
            *lines,
            "Not checked: `crosslens analyze --crosscoder RUN --store STORE` before pushing saves the emergence "
            "check (latent scaling per checkpoint, and lineage) that this section reports.",
            "",
        ]
    if result.check is None:
        text = "Latent scaling was not run (no activation store was given to `crosslens analyze`)."
    else:
        c = result.check.counts()
        text = (
            f"Latent scaling (Minder et al. 2025) on {result.scaling.n_tokens:,} tokens dates each feature's "
            f"emergence beside its decoder norm: {c['contested']} of {c['measured']} measured emergences are "
            f"contested ({c['earlier']} present earlier by latent scaling, {c['later']} later)."
        )
    text += f" Lineage through training (from per-checkpoint decoder directions): {counts_text(result.lineage.counts(), ' and ')}."
    agreement = result.agreement
    if agreement is not None:
        text += (
            f" A crosscoder of another training run on the same activations (`{Path(agreement.against).name}`) makes "
            f"{agreement_text(result.lineage.events, agreement.agreement, agreement.line)} too "
            f"(agreement {agreement.line} or more); an event of the model, not of one crosscoder's training, is made by both."
        )
    return [*lines, text, ""]


def diffing_section(diffing: Any) -> list[str]:
    """A two-model crosscoder card's section: its diffing classes and latent scaling's verdict on them."""
    t, (a, b) = diffing.thresholds, diffing.models
    counts = ", ".join(f"{name} {n}" for name, n in diffing.class_counts().items())
    lines = [
        "## Model diffing",
        "",
        f"By relative decoder norm ({a}-only under {t.only_below}, shared {t.shared_low}-{t.shared_high}, "
        f"{b}-only over {t.only_above}; Minder et al. 2025): {counts}.",
        "",
    ]
    if diffing.latent_scaling is None:
        return lines + [
            "Latent scaling: not measured (`crosslens analyze` with a store of both models' activations saves it "
            "beside the run).",
            "",
        ]
    lines += [
        f"Latent scaling on {diffing.latent_scaling.n_tokens:,} tokens, of the one-model-only latents:",
        "",
        "| class | latents | specific | in the other model's error (Complete Shrinkage) | reconstructed there "
        "by other latents (Latent Decoupling) | not measured |",
        "|---|---|---|---|---|---|",
    ]
    for name, counts in diffing.verdict_counts().items():  # in DIFFING_VERDICTS' order, as the header
        lines.append(f"| {name} | {sum(counts.values())} | {' | '.join(map(str, counts.values()))} |")
    return lines + [""]


def public_dataset_path(value: Any) -> tuple[str | None, bool]:
    """A crosscoder's ``dataset_path`` as it is published: each local file's absolute path as its
    file name (several joined by ", ", a list as runs before one string recorded), and whether it
    named local files; a hub dataset's id as it is."""
    if value is None:
        return None, False
    parts = [str(p) for p in value] if isinstance(value, (list, tuple)) else str(value).split(DATASET_PATH_SEPARATOR)
    names = [_local_name(part) for part in parts]
    return DATASET_PATH_SEPARATOR.join(name or part for name, part in zip(names, parts)), any(names)


def publish_local_paths(metadata: Any) -> None:
    """Give ``metadata`` (a crosscoder's, about to be uploaded) the names of this machine's files it
    names, not their paths: ``dataset_path``'s local files and a local suite's ``root``."""
    if metadata.get("dataset_path") is not None:
        metadata.dataset_path = public_dataset_path(metadata.dataset_path)[0]
    suite = metadata.get("suite")
    if isinstance(suite, dict) and suite.get("root"):
        metadata.suite = {**suite, "root": _local_name(str(suite["root"])) or suite["root"]}


def _local_name(text: str) -> str | None:
    """The file name of an absolute local path (POSIX or Windows); None for anything else."""
    for path in (PurePosixPath(text), PureWindowsPath(text)):
        if path.is_absolute():
            return path.name
    return None
