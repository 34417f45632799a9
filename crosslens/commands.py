"""What the ``crosslens`` commands do between parsing flags and calling a stage.

Kept out of ``crosslens.cli`` so the parser stays import-light (``crosslens --help``
imports neither torch nor TransformerLens) and so these steps can be tested alone:
token tables from text files, the held-out split, hook names checked before any model
loads, run folders, the quality table and the report rebuilt from disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

HELDOUT_SUFFIX = "-heldout"
"""``harvest --out STORE`` also writes held-out activations to ``STORE-heldout``; ``train`` reads them."""
SECTIONS_DIR = "sections"
"""Report sections other stages add to a run folder (``crosslens attribute``), merged by ``crosslens report``."""

# TransformerLens hook names: global ones and per-block ones (blocks.{layer}.<suffix>).
_GLOBAL_HOOKS = {"hook_embed", "hook_pos_embed", "hook_tokens", "ln_final.hook_scale", "ln_final.hook_normalized"}
_BLOCK_HOOKS = {
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_attn_in",
    "hook_mlp_in", "hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_z", "attn.hook_pattern", "attn.hook_attn_scores", "attn.hook_result", "attn.hook_rot_q",
    "attn.hook_rot_k", "mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear", "ln1.hook_scale",
    "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized",
}  # fmt: skip
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def hook_problem(hook: str, n_layers: int | None) -> str | None:
    """Why ``hook`` is not a TransformerLens hook of a model with ``n_layers`` blocks (None: it is).

    ``n_layers`` None checks the name only."""
    if hook in _GLOBAL_HOOKS:
        return None
    match = _BLOCK.fullmatch(hook)
    if match is None or match.group(2) not in _BLOCK_HOOKS:
        return f"{hook!r} is not a TransformerLens hook name; use e.g. blocks.0.hook_resid_post"
    layer = int(match.group(1))
    if n_layers is not None and layer >= n_layers:
        return f"{hook!r} names block {layer}, but the model has blocks 0..{n_layers - 1}"
    return None


def suite_n_layers(suite: Any) -> int | None:
    """The number of transformer blocks of ``suite``'s first snapshot, read from its config.json
    on this machine (None when no config is at hand, e.g. a hub model not yet downloaded)."""
    from crosslens.checkpoints.suite import snapshot_folder

    try:
        folder = snapshot_folder(suite, suite.snapshots[0])
    except Exception:  # noqa: BLE001 - no local copy: the name check alone applies
        return None
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    config = json.loads((Path(folder) / "config.json").read_text())
    for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def text_documents(paths: Sequence[str | Path]) -> list[str]:
    """The documents of text files and folders of ``*.txt`` files, split as the pico build splits them."""
    from crosslens.pico.corpus import split_documents, text_files

    documents: list[str] = []
    for path in text_files(list(paths)):
        documents += split_documents(path.read_text(encoding="utf-8", errors="replace"))
    if not documents:
        raise ValueError(f"the text files {[str(p) for p in paths]} hold no text")
    return documents


def split_rows(
    tokens_NL: Int[torch.Tensor, "n seq"], n_heldout: int, seed: int
) -> tuple[Int[torch.Tensor, "n_train seq"], Int[torch.Tensor, "n_heldout seq"]]:
    """A seeded random ``n_heldout`` rows held out; the rest, in their original order, for training."""
    if n_heldout <= 0:
        return tokens_NL, tokens_NL[:0]
    if n_heldout >= len(tokens_NL):
        raise ValueError(f"cannot hold out {n_heldout} of {len(tokens_NL)} rows; lower the held-out share")
    order = torch.randperm(len(tokens_NL), generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(len(tokens_NL), dtype=torch.bool)
    held[order[:n_heldout]] = True
    return tokens_NL[~held], tokens_NL[held]


def heldout_store_path(store_path: str | Path) -> Path:
    """Where ``crosslens harvest`` puts the held-out activations of the store at ``store_path``."""
    path = Path(store_path)
    return path.with_name(path.name + HELDOUT_SUFFIX)


def crosscoder_folder(path: str | Path) -> Path:
    """The saved crosscoder inside a ``crosslens train`` run folder (``RUN_DIR/final``), or ``path``
    itself when it holds one (``cfg.json``)."""
    path = Path(path)
    if (path / "final" / "cfg.json").is_file():
        return path / "final"
    if (path / "cfg.json").is_file():
        return path
    raise FileNotFoundError(
        f"{path} holds no trained crosscoder (no cfg.json, nor final/cfg.json); pass the --out folder of "
        "`crosslens train` or its final/ folder"
    )


def run_folder(crosscoder_path: str | Path) -> Path | None:
    """The ``crosslens train`` run folder a crosscoder folder belongs to (None if it is not in one)."""
    path = Path(crosscoder_path)
    for candidate in (path, path.parent):
        if (candidate / "run.json").is_file():
            return candidate
    return None


def run_store(run_dir: Path | None) -> str | None:
    """The activation store a run trained on, from its run.json (None when unknown or gone)."""
    if run_dir is None:
        return None
    try:
        store = json.loads((run_dir / "run.json").read_text()).get("store_path")
    except (OSError, ValueError):
        return None
    return store if store and Path(store).exists() else None


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


def quality_rows(crosscoder: Any, eval_store: Any, hook: str | None = None) -> tuple[list[dict], dict]:
    """:func:`quality_table` rows (explained variance per snapshot, mean L0, d_sae) and the raw
    evaluation (with ``dead_features``) of ``crosscoder`` on ``eval_store``."""
    from crosslens.training.comparison import quality_table
    from crosslens.training.runner import evaluate_crosscoder

    result = evaluate_crosscoder(crosscoder, eval_store, hook)
    steps = [int(s.get("step", i)) for i, s in enumerate(eval_store.snapshots)]
    return quality_table(result, {}, steps, d_sae=int(crosscoder.cfg.d_sae)), result


def format_quality(rows: list[dict], result: dict, where: str) -> str:
    """The quality table with a line saying which tokens it was measured on and the dead features."""
    from crosslens.training.comparison import format_quality_table

    d_sae = next(r["crosscoder"] for r in rows if r["kind"] == "d_sae")
    return (
        f"explained variance per snapshot on {where} ({result['n_tokens']} tokens):\n"
        + format_quality_table(rows)
        + f"\ndead features (never fire on these tokens): {result['dead_features']} of {d_sae}"
    )


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
