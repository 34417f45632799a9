"""The layout of a ``crosslens train`` run folder as the commands read it: the saved
crosscoder, the store it trained on (from ``run.json``), the held-out store beside a store,
the suite it was trained on, and report sections other commands save into the folder.

Every reader here refuses a run folder that is being written, or whose run.json, final/ and
quality.json are not the sealed set of one finished run (``crosslens.training.runfolder``),
naming the file at fault."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from crosslens.core.paths import FINAL_DIRNAME, HELDOUT_SUFFIX, RUN_CONFIG_NAME, SECTIONS_DIR


def heldout_store_path(store_path: str | Path) -> Path:
    """Where ``crosslens harvest`` puts the held-out activations of the store at ``store_path``."""
    path = Path(store_path)
    return path.with_name(path.name + HELDOUT_SUFFIX)


def crosscoder_folder(path: str | Path) -> Path:
    """The saved crosscoder inside a ``crosslens train`` run folder (``RUN_DIR/final``), or ``path``
    itself when it holds one (``cfg.json``); a run's crosscoder only once the run is sealed."""
    from crosslens.training.runfolder import check_run, enclosing_run, is_run_folder

    path = Path(path)
    if (path / FINAL_DIRNAME / "cfg.json").is_file() or is_run_folder(path):
        check_run(path)
        return path / FINAL_DIRNAME
    if (path / "cfg.json").is_file():
        run = enclosing_run(path)
        if run is not None:
            check_run(run)
        return path
    raise FileNotFoundError(
        f"{path} holds no trained crosscoder (no cfg.json, nor final/cfg.json); pass the --out folder of "
        "`crosslens train` or its final/ folder"
    )


def run_folder(crosscoder_path: str | Path) -> Path | None:
    """The ``crosslens train`` run folder a crosscoder folder belongs to (None if it is not in one),
    once its seal verifies."""
    from crosslens.training.runfolder import check_run, is_run_folder

    path = Path(crosscoder_path)
    for candidate in (path, path.parent):
        if is_run_folder(candidate):
            check_run(candidate)
            return candidate
    return None


def is_final_crosscoder(folder: str | Path, run_dir: Path) -> bool:
    """Whether ``folder`` is the final crosscoder of the run in ``run_dir`` (not one of its
    checkpoints): the one the run's report and its saved sections describe."""
    return Path(folder).resolve() == (run_dir / FINAL_DIRNAME).resolve()


def run_store(run_dir: Path | None) -> str | None:
    """The activation store a run trained on, from its run.json (None when it names none, or the
    store is gone). The store found there must carry the seal run.json recorded: a path alone
    (another store written there since, a relative path read from another folder) decides nothing."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import store_seal
    from crosslens.core.errors import PartnerMismatchError
    from crosslens.training.config import RUN_STORE_SEAL
    from crosslens.training.runfolder import check_run

    if run_dir is None:
        return None
    check_run(run_dir)
    try:
        values = json.loads((run_dir / RUN_CONFIG_NAME).read_text())
        store, sealed = values.get("store_path"), values.get(RUN_STORE_SEAL)
    except (OSError, ValueError, AttributeError):
        return None
    if not store or not Path(store).exists():
        return None
    fix = "pass --store with the store it was trained on"
    if not sealed:
        raise PartnerMismatchError(
            f"{run_dir / RUN_CONFIG_NAME} names the store {store} but records no seal for it, so it cannot be told from "
            f"another store at that path; {fix}"
        )
    found = store_seal(ActivationStore.open(store, verify="none"))
    if found != sealed:
        raise PartnerMismatchError(
            f"the store at {store} is not the one the run {run_dir} trained on (content {found['content_sha256'][:12]}... "
            f"vs {str(sealed.get('content_sha256'))[:12]}... recorded in {RUN_CONFIG_NAME}); {fix}"
        )
    return store


def recorded_store(run_dir: Path | None) -> str | None:
    """The store path a run's run.json names, whether or not anything is there now."""
    try:
        return json.loads((run_dir / RUN_CONFIG_NAME).read_text()).get("store_path") or None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def streamed_store_command(run_dir: Path | None) -> str | None:
    """For a run trained with ``train --stream`` (its run.json's ``stream`` entry), the ``crosslens
    harvest`` command that writes a store of the tokens it trained on, from the same snapshots at
    the same hook, beside the run folder; None for a run trained on a store. The snapshot models
    run in float32 there whatever ``--dtype`` the run gave them: the run recorded their float32
    weights (the resident models are loaded so, then cast), which the store must match."""
    import shlex

    from crosslens.activations.partners import harvest_words

    try:
        stream = json.loads((run_dir / RUN_CONFIG_NAME).read_text())["stream"]  # type: ignore[operator]
        suite, tokens = stream["suite"], stream["tokens"]
        words = harvest_words(suite, suite.get("revisions") or [], suite["steps"], str(stream["hook"]))
        words += ["--n-tokens", str(int(stream["n_tokens"])), "--seq-len", str(int(stream["seq_len"]))]
        words += ["--heldout-tokens", str(int(stream["heldout_tokens"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if tokens.get("kind") == "text":
        words += ["--text", *map(str, tokens["source"])]
        if tokens.get("encoding") is not None:
            words += ["--encoding", str(tokens["encoding"])]
    elif tokens.get("kind") == "dataset":
        words += ["--dataset", str(tokens["source"])]
    words += ["--out", str(Path(run_dir).resolve().with_name(Path(run_dir).resolve().name + "-store"))]  # type: ignore[arg-type]
    return shlex.join(words)


def kept_quality_table(runner: Any, eval_store: str | None) -> Path | None:
    """The quality table of a finished run that --resume found, which the run keeps unless
    --eval-store names where to measure it again; None when one is to be measured."""
    from crosslens.core.paths import QUALITY_NAME

    quality = Path(runner.out_dir) / QUALITY_NAME
    return quality if runner.finished_before and eval_store is None and quality.is_file() else None


def open_heldout(store_path: str | Path) -> Any:
    """The held-out store ``crosslens harvest`` wrote beside ``store_path``, re-hashed and checked
    to be split from that store (None when there is none)."""
    from crosslens.activations import ActivationStore
    from crosslens.activations.partners import check_heldout

    path = heldout_store_path(store_path)
    if not path.exists():
        return None
    heldout = ActivationStore.open(path, verify="full")
    check_heldout(ActivationStore.open(store_path, verify="none"), heldout)
    return heldout


def crosscoder_suite_record(crosscoder_path: str | Path) -> dict[str, Any]:
    """The suite provenance saved with a crosscoder (family, model_id, root, snapshots), or {}."""
    try:
        cfg = json.loads((Path(crosscoder_path) / "cfg.json").read_text())
    except (OSError, ValueError):
        return {}
    suite = (cfg.get("metadata") or {}).get("suite")
    return suite if isinstance(suite, dict) else {}


def suite_title(record: dict[str, Any], hook: str | None = None) -> str:
    """A report title naming the suite: its folder for local suites (every pico build has the
    model id crosslens/pico), else its model id."""
    name = record.get("model_id") or "crosscoder"
    if record.get("root"):
        name = f"{Path(record['root']).name} ({name})" if name != Path(record["root"]).name else name
    return f"crosslens: {name}" + (f", {hook}" if hook else "")


def suite_tokenizer(record: dict[str, Any]) -> Any:
    """The tokenizer of the suite a crosscoder was trained on, for decoding contexts (None if unreachable)."""
    from crosslens.checkpoints import CheckpointSuite

    try:
        if record.get("root") and Path(record["root"]).is_dir():
            return CheckpointSuite.local(record["root"]).tokenizer()
        if record.get("model_id"):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(record["model_id"])
    except Exception:  # noqa: BLE001 - contexts then show token ids, and say so
        return None
    return None


def save_section(report: Any, run_dir: Path, name: str) -> Path:
    """Save a report section into ``run_dir/sections/NAME.json`` for ``crosslens report`` to merge."""
    path = run_dir / SECTIONS_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict()))
    return path


def saved_sections(run_dir: Path | None) -> list[Any]:
    """The report sections saved in a run folder, in name order."""
    from crosslens.analysis.report import Report

    if run_dir is None or not (run_dir / SECTIONS_DIR).is_dir():
        return []
    return [Report.from_dict(json.loads(p.read_text())) for p in sorted((run_dir / SECTIONS_DIR).glob("*.json"))]
