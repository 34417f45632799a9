"""Checks and preparation of a command's inputs before any model loads: the model's depth, the
documents of text files, and the held-out split of a token table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite

def suite_n_layers(suite: CheckpointSuite) -> int | None:
    """The number of transformer blocks of ``suite``'s first snapshot, read from its config.json
    on this machine (None when no config is at hand, e.g. a hub model not yet downloaded)."""
    try:
        folder = suite.snapshot_folder(suite.snapshots[0])
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
